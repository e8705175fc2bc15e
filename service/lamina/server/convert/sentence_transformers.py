"""The semantic embedding a sentence-transformers folder declares: its modules (`modules.json`),
the pooling module's config, Dense modules after it (weights from their folder's
`model.safetensors`), a final Normalize module, and from `config_sentence_transformers.json` the
prompts and `truncate_dim`; Matryoshka sizes where `config.json` declares them
(`matryoshka_dimensions`, as vLLM reads them).

What Lamina cannot serve exactly (a module it does not have, pooling modes it has no formula
for, a Dense module whose weights are only a pickle, prompts kept out of the pooling) leaves the
model without a semantic embedding, and the conversion says why: its hidden states still serve.
A folder whose files are malformed is a ValueError naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save

from lamina.server.convert.converted import Progress
from lamina.server.domain import Pooling, Representation
from lamina.server.repository.manifest import DENSE_ACTIVATIONS, DenseLayer, SemanticConfig

_PACKAGE = "sentence_transformers."
# sentence-transformers' pooling modes (6.x names; older configs set one boolean per mode) ->
# Lamina's poolings with the same formula.
_POOLING_MODES = {
    "mean": Pooling.MEAN,
    "max": Pooling.MAX,
    "weightedmean": Pooling.WEIGHTED_MEAN,  # weights 1..n from the first token, as ours
    "lasttoken": Pooling.LAST_TOKEN,
    "cls": Pooling.FIRST_TOKEN,  # the first token's vector: [CLS] under a BERT template
}
_LEGACY_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# torch.nn activation classes (as Dense saves them: torch.nn.modules.activation.Tanh) -> ours.
_ACTIVATIONS = {
    "Identity": "identity",
    "Tanh": "tanh",
    "ReLU": "relu",
    "GELU": "gelu",
    "Sigmoid": "sigmoid",
    "SiLU": "silu",
}
assert set(_ACTIVATIONS.values()) == set(DENSE_ACTIVATIONS)
_DENSE_KEYS = {"in_features", "out_features", "bias", "activation_function"}
_EMBEDDING = "sentence_embedding"  # the feature a Dense or Normalize module must work on
# Where sentence-transformers' encode_document looks for its prompt, in this order.
_DOCUMENT_PROMPTS = ("document", "passage", "corpus")


@dataclass(frozen=True)
class SemanticModules:
    """The semantic section, and the files it names for the version folder."""

    semantic: SemanticConfig
    files: dict[str, bytes] = field(default_factory=dict)  # file -> contents: Dense weights


class NotServed(Exception):
    """The modules are well formed, but Lamina cannot compute them exactly."""


def read_semantic(folder: Path, progress: Progress) -> SemanticConfig | None:
    """The semantic section alone (see read_sentence_transformers)."""
    modules = read_sentence_transformers(folder, progress)
    return modules.semantic if modules is not None else None


def read_sentence_transformers(folder: Path, progress: Progress) -> SemanticModules | None:
    """None where the folder has no `modules.json`, or declares what Lamina does not serve (then
    `progress` says why)."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = _read_modules(folder, progress)
    except NotServed as reason:
        progress(f"no semantic embedding: {reason}")
        return None
    semantic = modules.semantic
    said = [f"semantic embedding: {semantic.pooling.value} of the last layer"]
    said += [f"Dense to {d.out_features} ({d.activation})" for d in semantic.dense]
    if semantic.dimensions is not None:
        said.append(f"truncated to {semantic.dimensions}")
    if semantic.normalize:
        said.append("normalised")
    if semantic.matryoshka_dimensions:
        said.append(f"Matryoshka sizes {list(semantic.matryoshka_dimensions)}")
    progress(", ".join(said))
    return modules


def _read_modules(folder: Path, progress: Progress) -> SemanticModules:
    modules = _json(folder / "modules.json")
    if not isinstance(modules, list) or not all(
        isinstance(m, dict) and isinstance(m.get("type"), str) for m in modules
    ):
        raise ValueError(f"{folder / 'modules.json'}: expected a list of objects with a 'type'")
    kinds = [_kind(m["type"]) for m in modules]
    # Between Pooling and an optional final Normalize, only Dense modules.
    between = kinds[2:-1] if kinds[2:] and kinds[-1] == "Normalize" else kinds[2:]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Dense" for k in between):
        raise NotServed(
            f"sentence-transformers modules {kinds} are not served (Transformer, Pooling, any "
            "number of Dense, and Normalize last)"
        )
    paths = [folder / str(m.get("path", "")) for m in modules]
    if any(not p.resolve().is_relative_to(folder.resolve()) for p in paths):
        raise ValueError(f"{folder / 'modules.json'}: a module path leaves the folder")
    if paths[0].resolve() != folder.resolve():  # the hidden states served are the folder's own
        raise NotServed(f"the Transformer module is in {paths[0].name}, not the folder converted")
    options = _options(folder / "config_sentence_transformers.json")
    _check_transformer(paths[0], progress)
    pooling, width, include_prompt = _pooling(paths[1] / "config.json")
    representations = _instructions(options)
    if not include_prompt and any(representations.values()):
        raise NotServed(
            "the pooling keeps the prompt's tokens out (include_prompt false), which Lamina's "
            "instructions, pooled with the rest, cannot do"
        )
    dense: list[DenseLayer] = []
    files: dict[str, bytes] = {}
    for index, kind in enumerate(kinds[2:], start=2):
        if kind == "Normalize":
            _check_normalize(paths[index])
            continue
        layer, contents = _dense(paths[index], len(dense), width)
        dense.append(layer)
        files[layer.file] = contents
        width = layer.out_features
    dimensions = options.get("truncate_dim")
    if dimensions is not None and (type(dimensions) is not int or not 1 <= dimensions <= width):
        raise ValueError(
            f"config_sentence_transformers.json: truncate_dim {dimensions!r} is not an integer "
            f"in 1..{width}"
        )
    semantic = SemanticConfig(
        layer=-1,  # the Transformer module's output is the last hidden state
        pooling=pooling,
        normalize=kinds[-1] == "Normalize",
        representations=representations,
        dense=tuple(dense),
        dimensions=dimensions,
        matryoshka_dimensions=_matryoshka(folder / "config.json", dimensions or width, progress),
    )
    return SemanticModules(semantic, files)


def _kind(module_type: str) -> str:
    """`sentence_transformers.models.Dense` (before 5.x) and
    `sentence_transformers.base.modules.dense.Dense` (6.x) alike are `Dense`; a module of
    another package (remote code) keeps its whole name, which no check accepts."""
    return module_type.rsplit(".", 1)[-1] if module_type.startswith(_PACKAGE) else module_type


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NotServed(f"{path} is missing") from None
    except (ValueError, OSError) as error:
        raise ValueError(f"{path}: {error}") from None


def _options(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    options = _json(path)
    if not isinstance(options, dict):
        raise ValueError(f"{path}: expected an object")
    return options


def _check_transformer(path: Path, progress: Progress) -> None:
    """sentence_bert_config.json: sentence-transformers cuts inputs to max_seq_length tokens,
    Lamina never cuts (a longer prompt fits the model's context or is refused): said, not
    refused, since both agree on every input up to that length."""
    config_path = path / "sentence_bert_config.json"
    if not config_path.is_file():
        return
    config = _json(config_path)
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected an object")
    # 6.x names what the module hands on: anything but the last hidden state is not served.
    modality = config.get("modality_config") or {}
    text = (modality.get("text") if isinstance(modality, dict) else None) or {}
    output = text.get("method_output_name", "last_hidden_state") if isinstance(text, dict) else "?"
    if output != "last_hidden_state" or config.get("module_output_name", "token_embeddings") != (
        "token_embeddings"
    ):
        raise NotServed(f"the Transformer module hands on {output!r}, not the last hidden state")
    if config.get("do_lower_case") is True and not _lowercases(path / "tokenizer.json"):
        raise NotServed(
            "sentence-transformers lowercases the input (do_lower_case), the tokenizer does not"
        )
    if isinstance(config.get("max_seq_length"), int):
        progress(
            f"note: sentence-transformers truncates inputs to {config['max_seq_length']} tokens; "
            "Lamina embeds up to the model's context and never truncates"
        )


def _lowercases(path: Path) -> bool:
    """Whether tokenizer.json's normalizer lowercases (BERT's does, where `lowercase`)."""
    tokenizer = _json(path) if path.is_file() else {}
    pending = [tokenizer.get("normalizer") if isinstance(tokenizer, dict) else None]
    while pending:
        normalizer = pending.pop()
        if not isinstance(normalizer, dict):
            continue
        kind = normalizer.get("type")
        if kind == "Lowercase" or (kind == "BertNormalizer" and normalizer.get("lowercase")):
            return True
        pending.extend(normalizer.get("normalizers") or [])
    return False


def _pooling(path: Path) -> tuple[Pooling, int, bool]:
    """(pooling, the embedding width it takes, include_prompt)."""
    config = _json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected an object")
    mode = config.get("pooling_mode")
    if mode is None:  # the boolean flags of configs before 5.x; none set means mean
        modes = [name for key, name in _LEGACY_MODES.items() if config.get(key) is True] or ["mean"]
    else:
        modes = [mode] if isinstance(mode, str) else mode
    if not isinstance(modes, list) or len(modes) != 1 or modes[0] not in _POOLING_MODES:
        raise NotServed(
            f"sentence-transformers pooling {modes} is not served (one of "
            f"{', '.join(_POOLING_MODES)})"
        )
    width = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    include_prompt = config.get("include_prompt", True)
    if type(width) is not int or width < 1 or not isinstance(include_prompt, bool):
        raise ValueError(
            f"{path}: expected an integer embedding_dimension, a boolean include_prompt"
        )
    return _POOLING_MODES[modes[0]], width, include_prompt


def _check_normalize(path: Path) -> None:
    config = _json(path / "config.json") if (path / "config.json").is_file() else {}
    if not isinstance(config, dict):
        raise ValueError(f"{path / 'config.json'}: expected an object")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, _EMBEDDING) not in (_EMBEDDING, None):
            raise NotServed(f"Normalize of {config[key]!r} is not served (only {_EMBEDDING!r})")


def _dense(path: Path, index: int, width: int) -> tuple[DenseLayer, bytes]:
    """A Dense module's layer and its weights as the version folder keeps them."""
    config = _json(path / "config.json")
    if not isinstance(config, dict):
        raise ValueError(f"{path / 'config.json'}: expected an object")
    where = f"Dense module {path.name}"
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, _EMBEDDING) not in (_EMBEDDING, None):
            raise NotServed(f"{where} on {config[key]!r} is not served (only {_EMBEDDING!r})")
    if config.get("use_residual", False) is not False:
        raise NotServed(f"{where}: use_residual is not served")
    unknown = (
        set(config) - _DENSE_KEYS - {"module_input_name", "module_output_name", "use_residual"}
    )
    if unknown:
        raise NotServed(f"{where}: options {sorted(unknown)} are not served")
    in_features, out_features = config.get("in_features"), config.get("out_features")
    bias = config.get("bias", True)
    if type(in_features) is not int or type(out_features) is not int or not isinstance(bias, bool):
        raise ValueError(f"{path / 'config.json'}: expected integer in_features, out_features")
    if in_features != width:
        raise ValueError(f"{where}: in_features {in_features} but it is given {width} values")
    activation = _activation(config.get("activation_function"), where)
    weights = path / "model.safetensors"
    if not weights.is_file():
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(
            p.name for p in path.glob("*.pt")
        )
        if pickles:
            raise NotServed(
                f"{where} has its weights only as a pickle ({', '.join(pickles)}), which Lamina "
                "does not load (unpickling runs code); save them as model.safetensors"
            )
        raise NotServed(f"{where} has no model.safetensors")
    tensors = load_file(str(weights))
    expected: dict[str, tuple[int, ...]] = {"linear.weight": (out_features, in_features)}
    if bias:
        expected["linear.bias"] = (out_features,)
    for name, shape in expected.items():
        if name not in tensors or tensors[name].shape != shape:
            found = {k: list(v.shape) for k, v in tensors.items()}
            raise ValueError(f"{weights}: expected {name} of shape {list(shape)}, found {found}")
    layer = DenseLayer(
        file=f"semantic_dense_{index}.safetensors",
        in_features=in_features,
        out_features=out_features,
        bias=bias,
        activation=activation,
    )
    kept = {"weight": tensors["linear.weight"]}
    if bias:
        kept["bias"] = tensors["linear.bias"]
    return layer, save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in kept.items()})


def _activation(name: Any, where: str) -> str:
    """sentence-transformers' activation_function: a torch.nn class by import path; absent means
    Tanh (Dense's default)."""
    if name is None:
        return "tanh"
    served = ", ".join(f"torch.nn.{n}" for n in _ACTIVATIONS)
    if not isinstance(name, str) or not name.startswith("torch.nn."):
        raise NotServed(f"{where}: activation_function {name!r} is not served ({served})")
    activation = _ACTIVATIONS.get(name.rsplit(".", 1)[-1])
    if activation is None:
        raise NotServed(f"{where}: activation_function {name!r} is not served ({served})")
    return activation


def _instructions(options: dict[str, Any]) -> dict[Representation, str]:
    """sentence-transformers' prompts, as its encode methods pick them: `query` for a query,
    the first of document, passage, corpus for a document, each falling back to the default
    prompt (if any), which is also the symmetric one."""
    prompts: dict[str, str] = options.get("prompts") or {}
    default = options.get("default_prompt_name")
    if not isinstance(prompts, dict) or not all(isinstance(p, str) for p in prompts.values()):
        raise ValueError("config_sentence_transformers.json: prompts is not an object of strings")
    if default is not None and default not in prompts:
        raise ValueError(
            f"config_sentence_transformers.json: default_prompt_name {default!r} is none of the "
            f"prompts {sorted(prompts)}"
        )
    fallback = prompts[default] if default is not None else ""
    document = next((prompts[n] for n in _DOCUMENT_PROMPTS if n in prompts), fallback)
    return {
        Representation.SYMMETRIC: fallback,
        Representation.DOCUMENT: document,
        Representation.QUERY: prompts.get("query", fallback),
    }


def _matryoshka(config_path: Path, largest: int, progress: Progress) -> tuple[int, ...]:
    """The sizes `config.json` declares (`matryoshka_dimensions`) up to the vector's own."""
    config = _json(config_path) if config_path.is_file() else {}
    declared = config.get("matryoshka_dimensions") if isinstance(config, dict) else None
    if declared is None:
        if isinstance(config, dict) and config.get("is_matryoshka"):
            progress("note: is_matryoshka without matryoshka_dimensions gives no compress sizes")
        return ()
    if not isinstance(declared, list) or not all(type(d) is int and d > 0 for d in declared):
        raise ValueError(f"{config_path}: matryoshka_dimensions is not a list of positive integers")
    return tuple(sorted({d for d in declared if d <= largest}))

"""The Aleph Alpha JSON shapes <-> domain objects: the HTTP edge's one conversion each way.

Reading a body checks its JSON types (every error names the field as the caller wrote it, e.g.
`prompt[0].controls[1].factor`: gateway/errors.py renders the domain's field paths so) and asks the
shared field rules (fields.py) what each value means, exactly as the gRPC edge does.

JSON `null` means unset, exactly like a missing field. `nice` is not a body field: it comes from
the query string (`?nice=true`), as the official client sends it.

Whatever the body holds, reading it ends in a domain request or an InvalidArgument, never another
exception: bytes that are not UTF-8, JSON nested deeper than Python's parser goes, NaN and
Infinity (which Python's json reads, JSON has not), lone surrogates (valid `\\ud800` escapes that
are no Unicode text) and numbers beyond a field's range (the API's integer widths) are all refused
here, with the field named. Error messages quote a caller's strings cut short (`shown`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from lamina.server import domain, fields
from lamina.server.errors import INPUT, FieldPath, InvalidArgument, shown

T = TypeVar("T")

# Sent by the official client when its caller sets them; they mean nothing to Lamina.
IGNORED_FIELDS = frozenset({"tags"})

# JSON values one body may hold at most, counted by its commas and brackets before parsing: above
# any request the default limits let through (every token id one value; a Detokenize of 1,000,000
# ids), and far below what would hold the event loop (json.loads keeps the GIL) or memory (each
# value a Python object) for long: 64 MiB of `[{},{},...]` would be 22 million dicts, 4 s and
# 1.8 GB to parse.
MAX_JSON_VALUES = 2**20
# A JSON string (escapes included), to leave the commas and brackets of text out of that count.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)

INT32 = (-(2**31), 2**31 - 1)
UINT32 = (0, 2**32 - 1)
INT64 = (-(2**63), 2**63 - 1)

_EMBEDDING_FIELDS = (
    "model",
    "hosting",
    "normalize",
    "contextual_control_threshold",
    "control_log_additive",
)
_SEMANTIC_FIELDS = (*_EMBEDDING_FIELDS, "representation", "compress_to_size")


class _Constant:
    """NaN, Infinity or -Infinity: Python's json reads them, but JSON has no such numbers, so no
    accessor takes one (each names the field instead)."""

    def __init__(self, name: str) -> None:
        self.name = name


def parse(raw: bytes) -> object:
    """A request body as JSON: UTF-8 (a leading byte order mark ignored), any other failure an
    InvalidArgument on `body`."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidArgument(
            ("body",), f"not valid UTF-8 (byte {error.object[error.start]:#04x} at {error.start})"
        ) from None
    if _values(raw) > MAX_JSON_VALUES and _values(_STRING.sub(b'""', raw)) > MAX_JSON_VALUES:
        raise InvalidArgument(("body",), f"more than {MAX_JSON_VALUES} JSON values")
    try:
        return json.loads(text, parse_constant=_Constant)
    except RecursionError:
        raise InvalidArgument(("body",), "not valid JSON (nested too deeply)") from None
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno} (char {error.pos})"
        raise InvalidArgument(("body",), f"not valid JSON ({error.msg}: {where})") from None
    except ValueError:
        # The one other failure of json.loads: an integer of more than sys.int_info's digits.
        raise InvalidArgument(
            ("body",), "not valid JSON (an integer with too many digits)"
        ) from None


def _values(raw: bytes) -> int:
    """The JSON values in `raw` but the outermost (each value but a container's last is followed
    by a comma, and each container has its bracket): exact once the strings are taken out, more
    before (their text counts too), and quick either way (bytes.count)."""
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{")


class _Object:
    """A JSON object at a field path; each accessor returns None for a missing or null field."""

    def __init__(self, value: object, path: FieldPath, names: tuple[str, ...]) -> None:
        if not isinstance(value, dict):
            raise InvalidArgument(path or ("body",), f"expected a JSON object, got {_kind(value)}")
        self.path = path
        known = {*names, *IGNORED_FIELDS}
        unknown = [key for key in value if key not in known]
        if unknown:
            more = f" (and {len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""
            raise InvalidArgument(
                self._at(min(unknown)), f"unknown field; expected {', '.join(names)}{more}"
            )
        self.values: Mapping[str, object] = value

    def _at(self, key: str) -> FieldPath:
        """The path of a key; one that is no plain name (a caller's unknown key) quoted, cut."""
        name = key if key.isidentifier() and len(key) <= 64 else shown(key)
        return (*self.path, name)

    def _get(self, key: str, check: Callable[[object, FieldPath], T]) -> T | None:
        value = self.values.get(key)
        return None if value is None else check(value, self._at(key))

    def string(self, key: str) -> str | None:
        return self._get(key, _string)

    def bool(self, key: str) -> bool | None:
        return self._get(key, _bool)

    def integer(self, key: str, bounds: tuple[int, int]) -> int | None:
        return self._get(key, lambda value, path: _integer(value, path, bounds))

    def number(self, key: str) -> float | None:
        return self._get(key, _number)

    def integers(self, key: str, bounds: tuple[int, int]) -> list[int]:
        """A list of integers (token ids, layers), in one pass when all are plain and in range."""
        values = self._get(key, _list) or []
        low, high = bounds
        if all(type(v) is int and low <= v <= high for v in values):
            return values  # type: ignore[return-value]
        return self.list(key, lambda value, path: _integer(value, path, bounds))

    def list(self, key: str, item: Callable[[object, FieldPath], T]) -> list[T]:
        values = self._get(key, _list) or []
        path = self._at(key)
        return [item(value, (*path, i)) for i, value in enumerate(values)]

    def object(self, key: str, names: tuple[str, ...]) -> _Object | None:
        value = self.values.get(key)
        return None if value is None else _Object(value, self._at(key), names)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return "a number beyond the range of a double"  # 1e400 reads as inf
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, _Constant):
        return f"{value.name}, which is not a JSON number"
    return "a list" if isinstance(value, list) else "an object"


def _string(value: object, path: FieldPath) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(path, f"expected a string, got {_kind(value)}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            # A `\ud800` escape reads as a lone surrogate, which is no Unicode text.
            lone = f"\\u{ord(value[error.start]):04x}"
            raise InvalidArgument(
                path, f"not valid Unicode (a lone surrogate {lone} at character {error.start})"
            ) from None
    return value


def _bool(value: object, path: FieldPath) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(path, f"expected true or false, got {_kind(value)}")
    return value


def _integer(value: object, path: FieldPath, bounds: tuple[int, int]) -> int:
    # JSON has one number type: 3.0 is the integer 3, 3.5 is not an integer.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(path, f"expected an integer, got {_kind(value)}")
    low, high = bounds
    if not low <= value <= high:
        digits = len(str(abs(value)))  # within the 4300 digits json.loads reads
        number = str(value) if digits <= 24 else f"an integer of {digits} digits"
        raise InvalidArgument(path, f"{number} is outside {low}..{high}")
    return value


def _number(value: object, path: FieldPath) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(path, f"expected a number, got {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a double
        number = math.inf
    if not math.isfinite(number):
        raise InvalidArgument(path, _kind(number))
    return number


def _list(value: object, path: FieldPath) -> list[object]:
    if not isinstance(value, list):
        raise InvalidArgument(path, f"expected a list, got {_kind(value)}")
    return value


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class TokenizeBody:
    model: str
    text: str
    tokens: bool  # answer the pieces
    token_ids: bool  # answer the ids


@dataclass(frozen=True)
class DetokenizeBody:
    model: str
    token_ids: list[int]


def embed_request(body: object, nice: bool) -> domain.EmbedRequest:
    # Every JSON type first, then what the values mean, in the gRPC edge's order.
    o = _Object(body, (), (*_EMBEDDING_FIELDS, "prompt", "layers", "pooling", "tokens", "type"))
    prompt = _prompt(o.values.get("prompt"), ("prompt",))
    layers = tuple(o.integers("layers", INT32))
    pooling = o.list("pooling", _string)
    tokens = bool(o.bool("tokens"))
    o.string("type")  # sent by the official client; one kind of embedding only
    common = _common(o)
    return domain.EmbedRequest(
        model=fields.model(common.model),
        prompt=_nonempty(prompt, ("prompt",)),
        layers=layers,
        pooling=tuple(fields.pooling(name, i) for i, name in enumerate(pooling)),
        normalize=bool(common.normalize),
        tokens=tokens,
        hosting=fields.hosting(common.hosting),
        nice=nice,
        contextual_control_threshold=fields.threshold(common.threshold),
        control_log_additive=common.control_log_additive,
    )


def semantic_embed_request(body: object, nice: bool) -> domain.SemanticEmbedRequest:
    o = _Object(body, (), (*_SEMANTIC_FIELDS, "prompt"))
    prompt = _prompt(o.values.get("prompt"), ("prompt",))
    return _semantic(o, [prompt], nice, batch=False)


def batch_semantic_embed_request(body: object, nice: bool) -> domain.SemanticEmbedRequest:
    o = _Object(body, (), (*_SEMANTIC_FIELDS, "prompts"))
    return _semantic(o, o.list("prompts", _prompt), nice, batch=True)


def instructable_embed_request(body: object, nice: bool) -> domain.InstructableEmbedRequest:
    """The official client's InstructableEmbeddingRequest: `input` (a prompt), `instruction`,
    `normalize` (null: false) and the two control fields."""
    o = _Object(body, (), (*_EMBEDDING_FIELDS, "input", "instruction"))
    prompt = _prompt(o.values.get("input"), (INPUT,))
    instruction = o.string("instruction") or ""
    common = _common(o)
    return domain.InstructableEmbedRequest(
        model=fields.model(common.model),
        input=_nonempty(prompt, (INPUT,)),
        instruction=instruction,
        normalize=bool(common.normalize),
        hosting=fields.hosting(common.hosting),
        nice=nice,
        contextual_control_threshold=fields.threshold(common.threshold),
        control_log_additive=common.control_log_additive,
    )


def tokenize_request(body: object) -> TokenizeBody:
    o = _Object(body, (), ("model", "prompt", "tokens", "token_ids"))
    return TokenizeBody(
        model=o.string("model") or "",
        text=o.string("prompt") or "",
        tokens=bool(o.bool("tokens")),
        token_ids=bool(o.bool("token_ids")),
    )


def detokenize_request(body: object) -> DetokenizeBody:
    o = _Object(body, (), ("model", "token_ids"))
    return DetokenizeBody(model=o.string("model") or "", token_ids=o.integers("token_ids", INT64))


@dataclass(frozen=True)
class _Common:
    """The fields every embedding request has, as JSON typed them."""

    model: str
    hosting: str | None
    normalize: bool | None
    threshold: float | None
    control_log_additive: bool


def _common(o: _Object) -> _Common:
    model = o.string("model") or ""
    hosting = o.string("hosting")
    normalize = o.bool("normalize")
    threshold = o.number("contextual_control_threshold")
    log_additive = o.bool("control_log_additive")
    # Unset means true (docs/api.md).
    log_additive = True if log_additive is None else log_additive
    return _Common(model, hosting, normalize, threshold, log_additive)


def _semantic(
    o: _Object,
    prompts: list[tuple[domain.PromptItem, ...] | None],
    nice: bool,
    *,
    batch: bool,
) -> domain.SemanticEmbedRequest:
    representation = o.string("representation") or ""
    compress = o.integer("compress_to_size", UINT32)
    common = _common(o)
    model = fields.model(common.model)
    if batch:
        fields.batch_size(len(prompts))
    paths: list[FieldPath] = (
        [("prompts", i) for i in range(len(prompts))] if batch else [("prompt",)]
    )
    return domain.SemanticEmbedRequest(
        model=model,
        prompts=tuple(_nonempty(p, path) for p, path in zip(prompts, paths, strict=True)),
        representation=fields.representation(representation),
        batch=batch,
        compress_to_size=fields.compress_to_size(compress),
        normalize=common.normalize,  # unset: the model's own default
        hosting=fields.hosting(common.hosting),
        nice=nice,
        contextual_control_threshold=fields.threshold(common.threshold),
        control_log_additive=common.control_log_additive,
    )


def _prompt(value: object, path: FieldPath) -> tuple[domain.PromptItem, ...] | None:
    """A plain string is one text item; otherwise a list of typed items. None when unset."""
    if value is None:
        return None
    if isinstance(value, str):
        return (domain.TextItem(data=_string(value, path)),)
    items = _list(value, path)
    return tuple(_item(item, (*path, i)) for i, item in enumerate(items))


def _nonempty(
    prompt: tuple[domain.PromptItem, ...] | None, path: FieldPath
) -> tuple[domain.PromptItem, ...]:
    if not prompt:
        raise InvalidArgument(path, fields.EMPTY_PROMPT)
    return prompt


def _item(value: object, path: FieldPath) -> domain.PromptItem:
    kind = _Object(value, path, ("type", "data", "controls", "x", "y", "size")).string("type")
    if kind == "text":
        o = _Object(value, (*path, "text"), ("type", "data", "controls"))
        return domain.TextItem(
            data=o.string("data") or "", controls=tuple(o.list("controls", _text_control))
        )
    if kind == "token_ids":
        o = _Object(value, (*path, "token_ids"), ("type", "data", "controls"))
        return domain.TokenIdsItem(
            data=tuple(o.integers("data", INT64)),
            controls=tuple(o.list("controls", _token_control)),
        )
    if kind == "image":
        o = _Object(value, (*path, "image"), ("type", "data", "controls", "x", "y", "size"))
        data = _base64(o.string("data") or "", (*path, "image", "data"))
        controls = tuple(o.list("controls", _image_control))
        x, y, size = (o.integer(name, UINT32) for name in ("x", "y", "size"))
        given = any(v is not None for v in (x, y, size))
        return domain.ImageItem(
            data=data,
            crop=fields.crop(x, y, size, (*path, "image", "crop")) if given else None,
            controls=controls,
        )
    named = "None" if kind is None else shown(kind)
    raise InvalidArgument(
        (*path, "type"), f"unknown item type {named}; expected text, image or token_ids"
    )


def _base64(text: str, path: FieldPath) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(path, "not valid base64") from None


def _text_control(value: object, path: FieldPath) -> domain.TextControl:
    o = _Object(value, path, ("start", "length", "factor", "token_overlap"))
    start = o.integer("start", UINT32) or 0
    length = o.integer("length", UINT32) or 0
    factor = _required(o.number("factor"), (*path, "factor"))
    overlap = o.string("token_overlap")
    return domain.TextControl(
        start=start,
        length=length,
        factor=fields.factor(factor, (*path, "factor")),
        token_overlap=fields.token_overlap(overlap, (*path, "token_overlap")),
    )


def _token_control(value: object, path: FieldPath) -> domain.TokenControl:
    o = _Object(value, path, ("index", "factor"))
    index = o.integer("index", UINT32) or 0
    factor = _required(o.number("factor"), (*path, "factor"))
    return domain.TokenControl(index=index, factor=fields.factor(factor, (*path, "factor")))


def _image_control(value: object, path: FieldPath) -> domain.ImageControl:
    o = _Object(value, path, ("rect", "factor", "token_overlap"))
    rect = o.object("rect", ("left", "top", "width", "height"))
    if rect is None:
        raise InvalidArgument((*path, "rect"), "required: left, top, width and height in 0..1")
    corners = [
        _required(rect.number(name), (*path, "rect", name))
        for name in ("left", "top", "width", "height")
    ]
    factor = _required(o.number("factor"), (*path, "factor"))
    overlap = o.string("token_overlap")
    return domain.ImageControl(
        rect=domain.Rect(*corners),
        factor=fields.factor(factor, (*path, "factor")),
        token_overlap=fields.token_overlap(overlap, (*path, "token_overlap")),
    )


def _required(value: T | None, path: FieldPath) -> T:
    # Where a default would be a silent, different request (factor 0 masks), say so.
    if value is None:
        raise InvalidArgument(path, "required")
    return value


# ---------------------------------------------------------------------------------------------
# Replies


def _floats(vector: np.ndarray) -> list[float]:
    # float32, as the gRPC reply carries them: the two edges answer the same numbers.
    return np.asarray(vector, dtype=np.float32).tolist()  # type: ignore[no-any-return]


def embed_response(result: domain.EmbedResult) -> dict[str, object]:
    embeddings = {
        f"layer_{layer}": {pooling.value: _floats(v) for pooling, v in vectors.items()}
        for layer, vectors in result.embeddings.items()
    }
    return {
        "model_version": result.model_version,
        "embeddings": dict(sorted(embeddings.items())),
        "tokens": None if result.tokens is None else list(result.tokens),
        "num_tokens_prompt_total": result.num_tokens_prompt_total,
        "timing": _timing(result.timing),
    }


def semantic_embed_response(result: domain.SemanticEmbedResult) -> dict[str, object]:
    (embedding,) = result.embeddings
    return {
        "model_version": result.model_version,
        "embedding": _floats(embedding),
        "num_tokens_prompt_total": result.num_tokens_prompt_total,
        "timing": _timing(result.timing),
    }


def batch_semantic_embed_response(result: domain.SemanticEmbedResult) -> dict[str, object]:
    return {
        "model_version": result.model_version,
        "embeddings": [_floats(e) for e in result.embeddings],
        "num_tokens_prompt_total": result.num_tokens_prompt_total,
        "timing": _timing(result.timing),
    }


def instructable_embed_response(result: domain.InstructableEmbedResult) -> dict[str, object]:
    return {
        "model_version": result.model_version,
        "embedding": _floats(result.embedding),
        "num_tokens_prompt_total": result.num_tokens_prompt_total,
        "timing": _timing(result.timing),
    }


def tokenize_response(body: TokenizeBody, pieces: list[str], ids: list[int]) -> dict[str, object]:
    # null, not [], for what was not asked for: an empty list would be an (empty) answer.
    return {
        "tokens": pieces if body.tokens else None,
        "token_ids": ids if body.token_ids else None,
    }


def detokenize_response(text: str) -> dict[str, object]:
    return {"result": text}


def model_info(model: domain.ModelDescription) -> dict[str, object]:
    versions = [
        {"version": s.version, "state": s.state.value, "reason": s.reason} for s in model.versions
    ]
    return {**model.api_fields(), "versions": versions}


def version_states(states: Iterable[domain.ModelVersionState]) -> list[dict[str, object]]:
    """GET /model_versions: every version the registry knows, of every model (reason null but
    for a failed version, or a serving one whose changed files failed)."""
    return [
        {"model": s.model, "version": s.version, "state": s.state.value, "reason": s.reason}
        for s in states
    ]


def _timing(timing: domain.Timing) -> dict[str, float]:
    return {
        "queue_seconds": timing.queue_seconds,
        "tokenization_seconds": timing.tokenization_seconds,
        "inference_seconds": timing.inference_seconds,
        "parked_seconds": timing.parked_seconds,
    }

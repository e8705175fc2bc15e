"""The Aleph Alpha JSON shapes <-> Lamina's protobuf messages.

Requests become the very messages a gRPC caller sends, so api/wire.py and the engine see one
kind of request whichever edge it came through; replies are read back out of the protobuf replies.
Only JSON types are checked here (every error names the field as the caller wrote it, e.g.
`prompt[0].controls[1].factor`); what the values mean is checked below, as for gRPC.

JSON `null` means unset, exactly like a missing field. `nice` is not a body field: it comes from
the query string (`?nice=true`), as the official client sends it.

Whatever the body holds, reading it ends in a message or an InvalidArgument, never another
exception: bytes that are not UTF-8, JSON nested deeper than Python's parser goes, NaN and
Infinity (which Python's json reads, JSON has not), lone surrogates (valid `\\ud800` escapes that
no protobuf string can hold) and numbers beyond a field's protobuf range are all refused here, with
the field named. Error messages quote a caller's strings cut short (`shown`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from lamina.server.errors import InvalidArgument, shown
from lamina.v1 import embed_pb2 as pb

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
            "body", f"not valid UTF-8 (byte {error.object[error.start]:#04x} at {error.start})"
        ) from None
    if _values(raw) > MAX_JSON_VALUES and _values(_STRING.sub(b'""', raw)) > MAX_JSON_VALUES:
        raise InvalidArgument("body", f"more than {MAX_JSON_VALUES} JSON values")
    try:
        return json.loads(text, parse_constant=_Constant)
    except RecursionError:
        raise InvalidArgument("body", "not valid JSON (nested too deeply)") from None
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno} (char {error.pos})"
        raise InvalidArgument("body", f"not valid JSON ({error.msg}: {where})") from None
    except ValueError:
        # The one other failure of json.loads: an integer of more than sys.int_info's digits.
        raise InvalidArgument("body", "not valid JSON (an integer with too many digits)") from None


def _values(raw: bytes) -> int:
    """The JSON values in `raw` but the outermost (each value but a container's last is followed
    by a comma, and each container has its bracket): exact once the strings are taken out, more
    before (their text counts too), and quick either way (bytes.count)."""
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{")


class _Object:
    """A JSON object at a field path; each accessor returns None for a missing or null field."""

    def __init__(self, value: object, path: str, fields: tuple[str, ...]) -> None:
        if not isinstance(value, dict):
            raise InvalidArgument(path or "body", f"expected a JSON object, got {_kind(value)}")
        self.path = path
        known = {*fields, *IGNORED_FIELDS}
        unknown = [key for key in value if key not in known]
        if unknown:
            more = f" (and {len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""
            raise InvalidArgument(
                self._at(min(unknown)), f"unknown field; expected {', '.join(fields)}{more}"
            )
        self.values: Mapping[str, object] = value

    def _at(self, key: str) -> str:
        """The path of a key; one that is no plain name (a caller's unknown key) quoted, cut."""
        name = key if key.isidentifier() and len(key) <= 64 else shown(key)
        return f"{self.path}.{name}" if self.path else name

    def _get(self, key: str, check: Callable[[object, str], T]) -> T | None:
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

    def list(self, key: str, item: Callable[[object, str], T]) -> list[T]:
        values = self._get(key, _list) or []
        path = self._at(key)
        return [item(value, f"{path}[{i}]") for i, value in enumerate(values)]

    def object(self, key: str, fields: tuple[str, ...]) -> _Object | None:
        value = self.values.get(key)
        return None if value is None else _Object(value, self._at(key), fields)


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


def _string(value: object, path: str) -> str:
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


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(path, f"expected true or false, got {_kind(value)}")
    return value


def _integer(value: object, path: str, bounds: tuple[int, int]) -> int:
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


def _number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(path, f"expected a number, got {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a double
        number = math.inf
    if not math.isfinite(number):
        raise InvalidArgument(path, _kind(number))
    return number


def _list(value: object, path: str) -> list[object]:
    if not isinstance(value, list):
        raise InvalidArgument(path, f"expected a list, got {_kind(value)}")
    return value


# ---------------------------------------------------------------------------------------------
# Requests


def embed_request(body: object, nice: bool) -> pb.EmbedRequest:
    fields = (*_EMBEDDING_FIELDS, "prompt", "layers", "pooling", "tokens", "type")
    o = _Object(body, "", fields)
    request = pb.EmbedRequest(
        prompt=_prompt(o.values.get("prompt"), "prompt"),
        layers=o.integers("layers", INT32),
        pooling=o.list("pooling", _string),
        nice=nice,
    )
    _set(request, "tokens", o.bool("tokens"))
    _set(request, "type", o.string("type"))
    _common(o, request)
    return request


def semantic_embed_request(body: object, nice: bool) -> pb.SemanticEmbedRequest:
    o = _Object(body, "", (*_SEMANTIC_FIELDS, "prompt"))
    request = pb.SemanticEmbedRequest(prompt=_prompt(o.values.get("prompt"), "prompt"), nice=nice)
    _semantic(o, request)
    return request


def batch_semantic_embed_request(body: object, nice: bool) -> pb.BatchSemanticEmbedRequest:
    o = _Object(body, "", (*_SEMANTIC_FIELDS, "prompts"))
    request = pb.BatchSemanticEmbedRequest(
        prompts=o.list("prompts", lambda v, p: _prompt(v, p) or pb.Prompt()), nice=nice
    )
    _semantic(o, request)
    return request


def tokenize_request(body: object) -> pb.TokenizeRequest:
    o = _Object(body, "", ("model", "prompt", "tokens", "token_ids"))
    return pb.TokenizeRequest(
        model=o.string("model") or "",
        prompt=o.string("prompt") or "",
        tokens=bool(o.bool("tokens")),
        token_ids=bool(o.bool("token_ids")),
    )


def detokenize_request(body: object) -> pb.DetokenizeRequest:
    o = _Object(body, "", ("model", "token_ids"))
    return pb.DetokenizeRequest(
        model=o.string("model") or "",
        token_ids=o.integers("token_ids", INT64),
    )


def _semantic(o: _Object, request: pb.SemanticEmbedRequest | pb.BatchSemanticEmbedRequest) -> None:
    request.representation = o.string("representation") or ""
    _set(request, "compress_to_size", o.integer("compress_to_size", UINT32))
    _common(o, request)


def _common(
    o: _Object, request: pb.EmbedRequest | pb.SemanticEmbedRequest | pb.BatchSemanticEmbedRequest
) -> None:
    request.model = o.string("model") or ""
    _set(request, "hosting", o.string("hosting"))
    _set(request, "normalize", o.bool("normalize"))
    _set(request, "contextual_control_threshold", o.number("contextual_control_threshold"))
    _set(request, "control_log_additive", o.bool("control_log_additive"))


def _set(message: Any, field: str, value: object) -> None:
    """Sets an optional field only when given: unset keeps its own meaning."""
    if value is not None:
        setattr(message, field, value)


def _prompt(value: object, path: str) -> pb.Prompt | None:
    """A plain string is one text item; otherwise a list of typed items."""
    if value is None:
        return None
    if isinstance(value, str):
        return pb.Prompt(items=[pb.PromptItem(text=pb.TextItem(data=_string(value, path)))])
    items = _list(value, path)
    return pb.Prompt(items=[_item(item, f"{path}[{i}]") for i, item in enumerate(items)])


def _item(value: object, path: str) -> pb.PromptItem:
    kind = _Object(value, path, ("type", "data", "controls", "x", "y", "size")).string("type")
    if kind == "text":
        o = _Object(value, path, ("type", "data", "controls"))
        return pb.PromptItem(
            text=pb.TextItem(
                data=o.string("data") or "", controls=o.list("controls", _text_control)
            )
        )
    if kind == "token_ids":
        o = _Object(value, path, ("type", "data", "controls"))
        return pb.PromptItem(
            token_ids=pb.TokenIdsItem(
                data=o.integers("data", INT64),
                controls=o.list("controls", _token_control),
            )
        )
    if kind == "image":
        o = _Object(value, path, ("type", "data", "controls", "x", "y", "size"))
        image = pb.ImageItem(
            data=_base64(o.string("data") or "", f"{path}.data"),
            controls=o.list("controls", _image_control),
        )
        corner = {name: o.integer(name, UINT32) for name in ("x", "y", "size")}
        if any(v is not None for v in corner.values()):
            # Partial crops reach convert.py, which names what is missing.
            image.crop.SetInParent()
            for name, number in corner.items():
                _set(image.crop, name, number)
        return pb.PromptItem(image=image)
    named = "None" if kind is None else shown(kind)
    raise InvalidArgument(
        f"{path}.type", f"unknown item type {named}; expected text, image or token_ids"
    )


def _base64(text: str, path: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(path, "not valid base64") from None


def _text_control(value: object, path: str) -> pb.TextControl:
    o = _Object(value, path, ("start", "length", "factor", "token_overlap"))
    control = pb.TextControl(
        start=o.integer("start", UINT32) or 0,
        length=o.integer("length", UINT32) or 0,
        factor=_required(o.number("factor"), f"{path}.factor"),
    )
    _set(control, "token_overlap", o.string("token_overlap"))
    return control


def _token_control(value: object, path: str) -> pb.TokenControl:
    o = _Object(value, path, ("index", "factor"))
    return pb.TokenControl(
        index=o.integer("index", UINT32) or 0,
        factor=_required(o.number("factor"), f"{path}.factor"),
    )


def _image_control(value: object, path: str) -> pb.ImageControl:
    o = _Object(value, path, ("rect", "factor", "token_overlap"))
    rect = o.object("rect", ("left", "top", "width", "height"))
    if rect is None:
        raise InvalidArgument(f"{path}.rect", "required: left, top, width and height in 0..1")
    control = pb.ImageControl(
        rect=pb.Rect(
            left=_required(rect.number("left"), f"{path}.rect.left"),
            top=_required(rect.number("top"), f"{path}.rect.top"),
            width=_required(rect.number("width"), f"{path}.rect.width"),
            height=_required(rect.number("height"), f"{path}.rect.height"),
        ),
        factor=_required(o.number("factor"), f"{path}.factor"),
    )
    _set(control, "token_overlap", o.string("token_overlap"))
    return control


def _required(value: T | None, path: str) -> T:
    # Where protobuf's zero would be a silent, different request (factor 0 masks), say so.
    if value is None:
        raise InvalidArgument(path, "required")
    return value


# ---------------------------------------------------------------------------------------------
# Replies


def embed_response(reply: pb.EmbedResponse) -> dict[str, object]:
    return {
        "model_version": reply.model_version,
        "embeddings": {
            layer: {pooling: list(vector.values) for pooling, vector in entry.pooling.items()}
            for layer, entry in sorted(reply.embeddings.items())
        },
        "tokens": list(reply.tokens.tokens) if reply.HasField("tokens") else None,
        "num_tokens_prompt_total": reply.num_tokens_prompt_total,
        "timing": _timing(reply.timing),
    }


def semantic_embed_response(reply: pb.SemanticEmbedResponse) -> dict[str, object]:
    return {
        "model_version": reply.model_version,
        "embedding": list(reply.embedding),
        "num_tokens_prompt_total": reply.num_tokens_prompt_total,
        "timing": _timing(reply.timing),
    }


def batch_semantic_embed_response(reply: pb.BatchSemanticEmbedResponse) -> dict[str, object]:
    return {
        "model_version": reply.model_version,
        "embeddings": [list(vector.values) for vector in reply.embeddings],
        "num_tokens_prompt_total": reply.num_tokens_prompt_total,
        "timing": _timing(reply.timing),
    }


def tokenize_response(reply: pb.TokenizeResponse) -> dict[str, object]:
    # null, not [], for what was not asked for: an empty list would be an (empty) answer.
    return {
        "tokens": list(reply.tokens.tokens) if reply.HasField("tokens") else None,
        "token_ids": list(reply.token_ids.ids) if reply.HasField("token_ids") else None,
    }


def detokenize_response(reply: pb.DetokenizeResponse) -> dict[str, object]:
    return {"result": reply.result}


def model_info(info: pb.ModelInfo) -> dict[str, object]:
    return {
        "name": info.name,
        "description": info.description,
        "max_context_size": info.max_context_size,
        "hostings": list(info.hostings),
        "image_support": info.image_support,
        "embedding_types": list(info.embedding_types),
        "version": info.version,
        "num_layers": info.num_layers,
        "hidden_size": info.hidden_size,
        "architecture": info.architecture,
        "untrained": info.untrained,
    }


def _timing(timing: pb.RequestTiming) -> dict[str, float]:
    return {
        "queue_seconds": timing.queue_seconds,
        "tokenization_seconds": timing.tokenization_seconds,
        "inference_seconds": timing.inference_seconds,
    }

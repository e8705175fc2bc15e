"""OpenAI's embeddings JSON <-> domain objects, for POST /embeddings (what the official Aleph
Alpha client's `embeddings` calls) and /v1/embeddings (the `openai` client with base_url .../v1):
the HTTP edge's one conversion each way, and the errors of these routes in OpenAI's shape.

`input` is a string, a list of strings, a list of token ids (one input) or a list of lists of
token ids; the JSON types are checked here with json_api's readers, so every error names the field
as the caller wrote it (`input[3]`, `input[2][7]`, `dimensions`). `nice` and `hosting` are
Lamina's extensions: `nice` in the query string (`?nice=true`) or the body, `hosting` in the body.
`user` (OpenAI's end-user id) and `tags` (sent by the Aleph Alpha client) are accepted and ignored.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np
from starlette.responses import JSONResponse

from lamina.server import domain, embeddings, fields
from lamina.server.errors import (
    FieldPath,
    HostingUnavailable,
    InvalidArgument,
    LaminaError,
    ModelNotFound,
)
from lamina.server.gateway.errors import json_field

# json_api's JSON readers, shared so both bodies refuse a bad value alike.
from lamina.server.gateway.json_api import (
    INT64,
    UINT32,
    _floats,
    _integer,
    _kind,
    _list,
    _Object,
    _string,
)

FIELDS = ("model", "input", "dimensions", "encoding_format", "user", "hosting", "nice")
INPUT_SHAPES = "a string, a list of strings, a list of token ids or a list of lists of token ids"
# OpenAI's error `type` for each status the gateway answers; `code` stays the gRPC status name
# that the rest of the gateway sends.
_TYPES = {
    401: "authentication_error",
    408: "timeout_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}
# Headers the gateway's own error response carries that a reshaped one keeps.
_KEPT_HEADERS = ("retry-after", "www-authenticate", "allow")


@dataclass(frozen=True)
class EmbeddingsBody:
    request: domain.EmbeddingsRequest
    encoding_format: str  # "float" or "base64": how each vector is written back


def embeddings_request(body: object, nice: bool) -> EmbeddingsBody:
    """`nice`: the query string's; the body's `nice: true` sets it too."""
    o = _Object(body, (), FIELDS)
    model = fields.model(o.string("model") or "")
    inputs, listed = _inputs(o.values.get("input"))
    dimensions = o.integer("dimensions", (1, UINT32[1]))
    encoding = embeddings.encoding_format(o.string("encoding_format"))
    o.string("user")  # checked as a string, then ignored
    return EmbeddingsBody(
        request=domain.EmbeddingsRequest(
            model=model,
            inputs=inputs,
            listed=listed,
            dimensions=dimensions,
            hosting=fields.hosting(o.string("hosting")),
            nice=nice or bool(o.bool("nice")),
        ),
        encoding_format=encoding,
    )


def _inputs(value: object) -> tuple[tuple[domain.EmbeddingsInput, ...], bool]:
    """The inputs, and whether `input` listed several (False: one string or one token list)."""
    path: FieldPath = ("input",)
    if value is None:
        raise InvalidArgument(path, f"required: {INPUT_SHAPES}")
    if isinstance(value, str):
        return (_string(value, path),), False
    items = _list(value, path)
    if items and _is_number(items[0]):  # [1, 2, 3]: one input of token ids
        return (_token_ids(items, path),), False
    embeddings.input_count(len(items))
    first = items[0]
    if isinstance(first, str):
        return tuple(_text(v, (*path, i)) for i, v in enumerate(items)), True
    if isinstance(first, list):
        return tuple(_token_list(v, (*path, i)) for i, v in enumerate(items)), True
    raise InvalidArgument((*path, 0), f"expected a string or token ids, got {_kind(first)}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# The inputs of one list are all texts or all token lists, as the first one sets.
def _text(value: object, path: FieldPath) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(path, f"expected a string like input[0], got {_kind(value)}")
    return _string(value, path)


def _token_list(value: object, path: FieldPath) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise InvalidArgument(path, f"expected token ids like input[0], got {_kind(value)}")
    return _token_ids(value, path)


def _token_ids(value: object, path: FieldPath) -> tuple[int, ...]:
    values = _list(value, path)
    low, high = INT64
    plain = [
        v for v in values if isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
    ]
    if len(plain) == len(values):  # in one pass when all are plain and in range
        return tuple(plain)
    return tuple(_integer(v, (*path, k), INT64) for k, v in enumerate(values))


# ---------------------------------------------------------------------------------------------
# Replies


def embeddings_response(
    model: str, result: domain.SemanticEmbedResult, encoding_format: str
) -> dict[str, object]:
    tokens = result.num_tokens_prompt_total
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encoded(v, encoding_format)}
            for i, v in enumerate(result.embeddings)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # Little-endian float32, as OpenAI sends it (its clients decode with numpy's "<f4").
        raw = np.asarray(vector, dtype="<f4").tobytes()
        return base64.b64encode(raw).decode("ascii")
    return _floats(vector)


def error_shape(response: JSONResponse, error: LaminaError | None) -> JSONResponse:
    """The gateway's error response (gateway/errors.py: status, message, code, Retry-After) in
    OpenAI's shape `{"error": {"message", "type", "param", "code"}}`, `param` the field at
    fault."""
    written = json.loads(bytes(response.body))
    status = response.status_code
    body = {
        "error": {
            "message": written["error"],
            "type": _TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            "param": _param(error),
            "code": written["code"],
        }
    }
    shaped = JSONResponse(body, status_code=status)
    for name in _KEPT_HEADERS:
        if name in response.headers:
            shaped.headers[name] = response.headers[name]
    return shaped


def _param(error: LaminaError | None) -> str | None:
    if isinstance(error, InvalidArgument):
        return json_field(error.field)
    if isinstance(error, ModelNotFound):
        return "model"
    if isinstance(error, HostingUnavailable):
        return "hosting"
    return None

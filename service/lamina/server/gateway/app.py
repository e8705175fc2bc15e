"""The HTTP routes: the Aleph Alpha REST API over the same calls as gRPC.

Each POST route reads its JSON into the domain request (gateway/json_api.py), runs it through
calls.py exactly as api/servicer.py does, and writes the domain result back as JSON. The
gates are the gRPC ones too: the bearer token (TokenFile), then the serving state (503 while
starting or draining), and every answered request is counted under its gRPC method name.

Every answer but a success is the `{"error", "code"}` body: a body the reader cannot take is 400
(json_api.py checks its every shape; what still slips through a check, an error from protobuf
is 400 too and logged as a warning), and only a fault of the server's own is 500 INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from lamina.server.calls import CallRecord, Calls
from lamina.server.errors import InvalidArgument, LaminaError, Unavailable, shown
from lamina.server.gateway import json_api, openai_api
from lamina.server.gateway.errors import (
    HTTP_STATUS_BY_NAME,
    INVALID_ARGUMENT,
    UNAUTHENTICATED,
    BodyTooLarge,
    NoTokenizer,
    error_body,
    error_response,
    internal_error,
)
from lamina.server.observability import tracing
from lamina.server.observability.requests import REQUEST_ID_HEADER, Incoming, request_id_from
from lamina.server.security import TokenFile, bearer_problem

# The Aleph Alpha API version whose embedding routes the gateway serves: the official client's
# validate_version() wants 1.x at or above its MIN_API_VERSION (1.19.0 in aleph-alpha-client 11).
API_VERSION = "1.19.0"
# A caller's deadline, in seconds, as gRPC callers send theirs: a request still queued when it
# passes fails with 408 instead of running.
TIMEOUT_HEADER = "X-Lamina-Timeout-Seconds"
# How often a waiting request checks that its caller is still connected.
DISCONNECT_POLL_SECONDS = 0.1
OPENAPI = resources.files("lamina.server.gateway").joinpath("openapi.json")

Answer = Callable[[CallRecord], Awaitable[object]]
# A route's writer of its error responses, given the gateway's own and the error, if any.
Shape = Callable[[JSONResponse, LaminaError | None], Response]
M = TypeVar("M")
log = logging.getLogger(__name__)


def _as_is(response: JSONResponse, error: LaminaError | None) -> Response:
    return response


class Gateway:
    def __init__(
        self,
        calls: Calls,
        *,
        tokens: TokenFile | None = None,
        max_body_bytes: int | None = None,
    ) -> None:
        self.calls = calls
        self.tokens = tokens
        self.max_body_bytes = max_body_bytes

    def app(self) -> Starlette:
        """Every route at the root and again under /v1/, as the official client may be pointed
        at either."""
        routes: list[BaseRoute] = [
            Route("/embed", self._post("Embed", self._embed), methods=["POST"]),
            Route(
                "/semantic_embed",
                self._post("SemanticEmbed", self._semantic_embed),
                methods=["POST"],
            ),
            Route(
                "/batch_semantic_embed",
                self._post("BatchSemanticEmbed", self._batch_semantic_embed),
                methods=["POST"],
            ),
            Route(
                "/instructable_embed",
                self._post("InstructableEmbed", self._instructable_embed),
                methods=["POST"],
            ),
            Route("/tokenize", self._post("Tokenize", self._tokenize), methods=["POST"]),
            Route("/detokenize", self._post("Detokenize", self._detokenize), methods=["POST"]),
            # OpenAI's embeddings (POST /v1/embeddings for the openai client), in its error shape.
            Route(
                "/embeddings",
                self._post("Embeddings", self._embeddings, shape=openai_api.error_shape),
                methods=["POST"],
            ),
            Route("/models_available", self._models_available, methods=["GET"]),
            Route("/model_versions", self._model_versions, methods=["GET"]),
            Route("/models/{model}/tokenizer", self._tokenizer, methods=["GET"]),
            Route("/version", self._version, methods=["GET"]),
            Route("/health", self._health, methods=["GET"]),
            Route("/openapi.json", self._openapi, methods=["GET"]),
        ]
        return Starlette(
            routes=[*routes, Mount("/v1", routes=routes)],
            exception_handlers={HTTPException: _http_error, Exception: _server_fault},
        )

    # -- routes ---------------------------------------------------------------------------------

    async def _embed(self, request: Request, record: CallRecord) -> object:
        nice = _nice(request)
        embed = await self._read(request, lambda body: json_api.embed_request(body, nice))
        record.set_labels(embed.model, embed.nice, embed.hosting)
        result = await self.calls.embed(embed, _timeout(request))
        return json_api.embed_response(result)

    async def _semantic_embed(self, request: Request, record: CallRecord) -> object:
        nice = _nice(request)
        semantic = await self._read(
            request, lambda body: json_api.semantic_embed_request(body, nice)
        )
        record.set_labels(semantic.model, semantic.nice, semantic.hosting)
        result = await self.calls.semantic_embed(semantic, _timeout(request))
        return json_api.semantic_embed_response(result)

    async def _batch_semantic_embed(self, request: Request, record: CallRecord) -> object:
        nice = _nice(request)
        semantic = await self._read(
            request, lambda body: json_api.batch_semantic_embed_request(body, nice)
        )
        record.set_labels(semantic.model, semantic.nice, semantic.hosting)
        result = await self.calls.semantic_embed(semantic, _timeout(request))
        return json_api.batch_semantic_embed_response(result)

    async def _instructable_embed(self, request: Request, record: CallRecord) -> object:
        nice = _nice(request)
        instructable = await self._read(
            request, lambda body: json_api.instructable_embed_request(body, nice)
        )
        record.set_labels(instructable.model, instructable.nice, instructable.hosting)
        result = await self.calls.instructable_embed(instructable, _timeout(request))
        return json_api.instructable_embed_response(result)

    async def _tokenize(self, request: Request, record: CallRecord) -> object:
        body = await self._read(request, json_api.tokenize_request)
        record.set_labels(body.model)
        pieces, ids = await self.calls.tokenize(body.model, body.text)
        return json_api.tokenize_response(body, pieces, ids)

    async def _detokenize(self, request: Request, record: CallRecord) -> object:
        body = await self._read(request, json_api.detokenize_request)
        record.set_labels(body.model)
        text = await self.calls.detokenize(body.model, body.token_ids)
        return json_api.detokenize_response(text)

    async def _embeddings(self, request: Request, record: CallRecord) -> object:
        nice = _nice(request)
        body = await self._read(request, lambda raw: openai_api.embeddings_request(raw, nice))
        embeddings = body.request
        record.set_labels(embeddings.model, embeddings.nice, embeddings.hosting)
        result = await self.calls.embeddings(embeddings, _timeout(request))
        return openai_api.embeddings_response(embeddings.model, result, body.encoding_format)

    async def _models_available(self, request: Request) -> Response:
        async def answer(record: CallRecord) -> object:
            return [json_api.model_info(m) for m in self.calls.models()]

        return await self._serve("ModelsAvailable", request, answer)

    async def _model_versions(self, request: Request) -> Response:
        """Every version the registry knows, of every model: loading, serving, failed (and why),
        retired. Behind the bearer token, but not the serving state: it answers while starting
        up (what is loading, what failed) and draining. Not a gRPC call: not counted as one."""
        refused = self._refusal(request)
        if refused is not None:
            return refused
        states = self.calls.version_states()
        return JSONResponse({"versions": json_api.version_states(states)})

    async def _tokenizer(self, request: Request) -> Response:
        model = request.path_params["model"]

        async def answer(record: CallRecord) -> object:
            record.set_labels(model)
            text = await self.calls.tokenizer_json(model)
            if text is None:
                raise NoTokenizer(model)
            return PlainTextResponse(text, media_type="application/json")

        return await self._serve("Tokenizer", request, answer)

    async def _version(self, request: Request) -> Response:
        # Open, like health: it tells nothing about the models or the traffic.
        return PlainTextResponse(API_VERSION)

    async def _health(self, request: Request) -> Response:
        """200 while serving; 503 while starting up or draining (open, for load balancers)."""
        reason = self.calls.state.reason
        if reason is not None:
            return error_response(Unavailable(reason))
        return JSONResponse({"status": "SERVING"})

    async def _openapi(self, request: Request) -> Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        return PlainTextResponse(OPENAPI.read_text(), media_type="application/json")

    # -- the gates, metrics and errors, shared by the routes ----------------------------------

    def _post(
        self,
        method: str,
        handler: Callable[[Request, CallRecord], Awaitable[object]],
        shape: Shape = _as_is,
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await self._serve(
                method, request, lambda record: handler(request, record), shape
            )

        return endpoint

    async def _serve(
        self, method: str, request: Request, answer: Answer, shape: Shape = _as_is
    ) -> Response:
        """`shape` writes every error response of the route (e.g. in OpenAI's shape)."""
        incoming = _incoming(request)
        response = await self._answered(method, request, answer, shape, incoming)
        response.headers[REQUEST_ID_HEADER] = incoming.request_id
        return response

    async def _answered(
        self, method: str, request: Request, answer: Answer, shape: Shape, incoming: Incoming
    ) -> Response:
        # As gRPC's interceptor: a refused call never reaches the serving state nor the counts.
        refused = self._refusal(request)
        if refused is not None:
            return shape(refused, None)
        record = CallRecord(method)
        work: asyncio.Future[object] | None = None
        try:
            with self.calls.answering(record, incoming):
                # Started inside the call's scope, so that it runs with the request's id and span.
                work = asyncio.ensure_future(answer(record))
                reply = await _unless_disconnected(request, work)
                if isinstance(reply, Response):
                    return reply
                # A reply JSON cannot carry (a NaN) fails inside the scope: INTERNAL, logged.
                with tracing.child("reply"):
                    return JSONResponse(reply)
        except LaminaError as error:
            return shape(error_response(error), error)
        except asyncio.CancelledError:
            this = asyncio.current_task()
            if work is None or not work.cancelled() or (this is not None and this.cancelling()):
                raise  # the server itself is stopping this request
            return Response(status_code=499)  # the caller hung up: nobody reads this

    async def _read(self, request: Request, reader: Callable[[object], M]) -> M:
        """The body read into a domain request by `reader` (a json_api function)."""
        raw = await self._body(request)
        try:
            return reader(json_api.parse(raw))
        except LaminaError:
            raise
        except (ValueError, TypeError, OverflowError, RecursionError) as error:
            # A shape the reader does not check yet: still the caller's to fix, not a server
            # fault, but worth a line to make the reader check it.
            kind = type(error).__name__
            log.warning("%s: a body refused by %s: %.200s", request.url.path, kind, error)
            raise InvalidArgument(("body",), f"could not be read ({kind})") from None

    async def _body(self, request: Request) -> bytes:
        """The raw body, read no further than --max-message-mb."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length", "")
        if limit is not None and declared.isdecimal() and int(declared) > limit:
            raise BodyTooLarge(int(declared), limit)
        raw = bytearray()
        try:
            async for chunk in request.stream():
                raw += chunk
                if limit is not None and len(raw) > limit:
                    raise BodyTooLarge(len(raw), limit)
        except ClientDisconnect:
            # Gone before its body was in (or closed by the listener's body timeout): as when
            # it hangs up later, nothing to answer or log.
            raise asyncio.CancelledError from None
        request.state.body_read = True  # from now on, only a disconnect can arrive
        return bytes(raw)

    def _refusal(self, request: Request) -> JSONResponse | None:
        if self.tokens is None:
            return None
        problem = bearer_problem(self.tokens, request.headers.get("authorization"))
        if problem is None:
            return None
        self.calls.metrics.auth_refused.inc()
        return error_body(401, UNAUTHENTICATED, problem)


async def _unless_disconnected(request: Request, work: asyncio.Future[object]) -> object:
    """The work's result, or CancelledError once the caller has hung up, so a request still
    queued costs no compute, as with a cancelled gRPC call. The connection is watched only once
    the body has been read (or for a GET), since watching reads from the same stream."""
    try:
        while True:
            done, _ = await asyncio.wait({work}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return work.result()
            readable = request.method == "GET" or getattr(request.state, "body_read", False)
            if readable and await request.is_disconnected():
                work.cancel()
                return await work  # raises CancelledError, once the work has let go
    finally:
        work.cancel()  # a no-op once done; stops it when this wait itself is cancelled


def _nice(request: Request) -> bool:
    value = request.query_params.get("nice")
    if value is None:
        return False
    if value.lower() not in ("true", "false"):
        raise InvalidArgument(("nice",), f"expected true or false, got {shown(value)}")
    return value.lower() == "true"


def _timeout(request: Request) -> float | None:
    value = request.headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidArgument((TIMEOUT_HEADER,), f"expected seconds > 0, got {shown(value)}")
    return seconds


def _incoming(request: Request) -> Incoming:
    """The call as the request scope sees it, its span named and described by OpenTelemetry's
    HTTP server conventions."""
    headers = {key.lower(): value for key, value in request.headers.items()}
    return Incoming(
        "http",
        request_id_from(headers),
        headers,
        span_name=f"{request.method} {request.url.path}",
        attributes={
            "http.request.method": request.method,
            "url.path": request.url.path,
            "url.scheme": request.url.scheme,
        },
        status_attributes=_http_status,
    )


def _http_status(name: str) -> dict[str, str | int]:
    return {"http.response.status_code": HTTP_STATUS_BY_NAME.get(name, 500)}


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method) in the same body."""
    assert isinstance(error, HTTPException)
    codes = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}
    code = codes.get(error.status_code, INVALID_ARGUMENT)
    path = request.url.path
    named = path if len(path) <= 64 and path.isprintable() else shown(path)
    response = error_body(error.status_code, code, f"{named}: {error.detail}")
    response.headers.update(error.headers or {})  # e.g. Allow on 405
    return _shaped_for(request, response)


async def _server_fault(request: Request, error: Exception) -> Response:
    """Anything else that escaped a route: a fault of the server's own, in the same body
    (Starlette logs it with its traceback)."""
    return _shaped_for(request, internal_error())


def _shaped_for(request: Request, response: JSONResponse) -> Response:
    """An error outside any route's own handling, in the OpenAI shape on its routes."""
    if request.url.path.rstrip("/").endswith("/embeddings"):
        return openai_api.error_shape(response, None)
    return response

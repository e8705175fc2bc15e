"""The fuzz harness: calls to the one real server of the session, over gRPC and HTTP, and the
properties every answer must have.

- Its status is one of the documented table (gRPC: OK, INVALID_ARGUMENT, NOT_FOUND,
  FAILED_PRECONDITION, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED; HTTP: 200, 400, 404, 408, 413, 429
  with a `{"error", "code"}` JSON body whose code agrees with the status). UNKNOWN, INTERNAL, 500,
  anything else, or no answer at all fail; so do UNAVAILABLE / 503 (the server is serving the
  whole session), 401 (no tokens are configured) and a deadline nobody asked for.
- An OK answer holds finite numbers only and every field the API promises: `model_version` of the
  model asked, `num_tokens_prompt_total`, exactly the layers and poolings asked, vectors of the
  model's hidden size, unit length when normalised, tokens when (and only when) asked; a prompt
  of token ids (and images) only is used as given (no special tokens added).
- An error message is shorter than MAX_ERROR_BYTES, and an error comes within ERROR_SECONDS
  (rejecting a request must not cost the work it was rejected for); nothing takes longer than
  STALL_SECONDS.
- Answering grows the server (it runs in this process) by less than MEMORY_GROWTH_BYTES; past
  MEMORY_CAP_GB the run stops at once, naming the request in flight.
- Afterwards the server still answers a good request with the vector it gave at the start.

An INTERNAL answer's failure is named after the exception the server logged for it, so that each
cause is reported (and shrunk) on its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import requests
from google.protobuf.message import DecodeError, Message

from lamina.v1 import embed_pb2 as pb
from tests.conftest import MINILM
from tests.fuzz.profiles import KEEP_GOING_LOG
from tests.gateway.support import Gateway

OK = grpc.StatusCode.OK
ALLOWED_GRPC = frozenset(
    {
        OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
    }
)
ALLOWED_HTTP = frozenset({200, 400, 401, 404, 408, 413, 429, 503})
# The documented code of each HTTP error status (docs/http-gateway.md, Errors).
HTTP_CODES = {
    400: {"INVALID_ARGUMENT", "FAILED_PRECONDITION"},
    401: {"UNAUTHENTICATED"},
    404: {"NOT_FOUND"},
    408: {"DEADLINE_EXCEEDED"},
    413: {"RESOURCE_EXHAUSTED"},
    429: {"RESOURCE_EXHAUSTED"},
    503: {"UNAVAILABLE"},
}
HTTP_STATUS_OF = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "NOT_FOUND": 404,
    "DEADLINE_EXCEEDED": 408,
    "UNAVAILABLE": 503,
}
MAX_ERROR_BYTES = 2048
STALL_SECONDS = float(os.environ.get("LAMINA_FUZZ_STALL_SECONDS", "60"))
ERROR_SECONDS = float(os.environ.get("LAMINA_FUZZ_ERROR_SECONDS", "5"))
CANARY_SECONDS = 10.0
HTTP_CANARY_EVERY = int(os.environ.get("LAMINA_FUZZ_HTTP_CANARY_EVERY", "5"))
TRACE_LOG = os.environ.get("LAMINA_FUZZ_TRACE") or None
# One request may grow the server by this much at most (a pod sized for the models and a batch
# must not be OOM-killed by a caller); past the cap, the run stops (0: no cap).
MEMORY_GROWTH_BYTES = int(float(os.environ.get("LAMINA_FUZZ_MEMORY_GB", "4")) * 2**30)
MEMORY_CAP_GB = float(os.environ.get("LAMINA_FUZZ_MEMORY_CAP_GB", "12"))
IMAGE_POSITIONS = 144
SERVICE = "/lamina.v1.EmbedService/"
RESPONSES: dict[str, type[Message]] = {
    "Embed": pb.EmbedResponse,
    "SemanticEmbed": pb.SemanticEmbedResponse,
    "BatchSemanticEmbed": pb.BatchSemanticEmbedResponse,
    "Tokenize": pb.TokenizeResponse,
    "Detokenize": pb.DetokenizeResponse,
    "ModelsAvailable": pb.ModelsAvailableResponse,
}
CANARY = pb.EmbedRequest(
    model=MINILM,
    prompt=pb.Prompt(items=[pb.PromptItem(text=pb.TextItem(data="Hello world"))]),
    layers=[-1],
    pooling=["mean"],
)
CANARY_JSON = {"model": MINILM, "prompt": "Hello world", "layers": [-1], "pooling": ["mean"]}


# -- failures --------------------------------------------------------------------------------


class PropertyFailed(AssertionError):
    """A property of the answer did not hold; one subclass per kind, so that hypothesis reports
    (and shrinks) each kind of failure on its own."""

    kind = ""


_FAILURES: dict[str, type[PropertyFailed]] = {}


def failure_type(kind: str) -> type[PropertyFailed]:
    if kind not in _FAILURES:
        name = "Fuzz_" + re.sub(r"\W", "_", kind)
        _FAILURES[kind] = type(name, (PropertyFailed,), {"kind": kind})
    return _FAILURES[kind]


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str


def _rss() -> int:
    """This process's resident memory in bytes (the server runs in it); 0 where unknown."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MemoryWatch(threading.Thread):
    """Samples the process's memory: the peak of each example, and a hard cap past which the run
    ends at once (naming the request in flight) rather than the machine's OOM killer ending
    something else."""

    def __init__(self, cap_bytes: int) -> None:
        super().__init__(name="fuzz-memory", daemon=True)
        self.cap = cap_bytes
        self.base = _rss()
        self.peak = self.base
        self.in_flight: Callable[[], str] | None = None  # the example being answered
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            describe = self.in_flight
            if describe is None:
                continue  # only the fuzz's own examples are watched, not the tests around them
            rss = _rss()
            self.peak = max(self.peak, rss)
            if self.cap and rss > self.cap:
                message = (
                    f"memory: {rss / 2**30:.1f} GB, past the cap of {self.cap / 2**30:.1f} GB "
                    f"(LAMINA_FUZZ_MEMORY_CAP_GB), while answering: {describe()}"
                )
                for path in (KEEP_GOING_LOG, TRACE_LOG):
                    if path:
                        with open(path, "a", encoding="utf-8") as log:
                            log.write(json.dumps({"kind": "memory-cap", "detail": message}) + "\n")
                print(message, file=sys.stderr, flush=True)
                os._exit(70)

    def start_example(self, describe: Callable[[], str]) -> None:
        self.peak = _rss()
        self.in_flight = describe

    def end_example(self) -> int:
        """The example's peak."""
        self.in_flight = None
        return max(self.peak, _rss())


class ServerLog(logging.Handler):
    """The exceptions the server logs (an INTERNAL answer's cause), to name a failure by it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.causes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            frames = traceback.extract_tb(error.__traceback__)
            ours = [f for f in frames if "lamina" in f.filename] or frames
            where = f"{Path(ours[-1].filename).stem}.{ours[-1].name}" if ours else "?"
            self.causes.append(f"{type(error).__name__}@{where}: {str(error)[:200]}")

    def take(self) -> list[str]:
        causes, self.causes = self.causes, []
        return causes


@dataclass
class Example:
    """What one example broke; raised together at its end, or (LAMINA_FUZZ_LOG) written down."""

    test: str
    describe: Callable[[], str]
    violations: list[Violation] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)  # the statuses seen, for the trace

    def fail(self, kind: str, detail: str) -> None:
        self.violations.append(Violation(kind, _clip(detail, 1500)))

    def check(self, condition: bool, kind: str, detail: Callable[[], str] | str) -> None:
        if not condition:
            self.fail(kind, detail() if callable(detail) else detail)

    def settle(self) -> None:
        if not self.violations:
            return
        if self.server_errors:
            # An INTERNAL answer is named by what the server logged for it: one kind per cause.
            cause = self.server_errors[0].split(":", 1)[0]
            self.violations = [
                Violation(f"{v.kind} <- {cause}", f"{v.detail} [server: {self.server_errors[0]}]")
                if v.kind.startswith(("grpc-status:", "http-status:5"))
                else v
                for v in self.violations
            ]
        request = self.describe()
        if KEEP_GOING_LOG:
            with open(KEEP_GOING_LOG, "a", encoding="utf-8") as log:
                for v in self.violations:
                    entry = {"test": self.test, "kind": v.kind, "detail": v.detail}
                    log.write(json.dumps({**entry, "request": request}) + "\n")
            return
        first = self.violations[0]
        lines = "\n".join(f"- {v.kind}: {v.detail}" for v in self.violations)
        raise failure_type(first.kind)(f"{lines}\nrequest: {request}")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# -- describing requests ---------------------------------------------------------------------


LIST_HEAD = 12  # items of a list shown in reports


@dataclass(frozen=True)
class _More:
    """Where a list is cut: how many items it had."""

    total: int

    def __str__(self) -> str:
        return f"... ({self.total} items)"


def shorten(value: Any, limit: int = 80) -> Any:
    """A drawn value with long strings, bytes and lists cut, for failure reports."""
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} long)"
    if isinstance(value, bytes):
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if len(value) == LIST_HEAD + 1 and isinstance(value[-1], _More):
            return [shorten(v, limit) for v in value[:LIST_HEAD]] + [str(value[-1])]
        head = [shorten(v, limit) for v in value[:LIST_HEAD]]
        return head + ([str(_More(len(value)))] if len(value) > LIST_HEAD else [])
    if isinstance(value, dict):
        return {shorten(str(k), limit): shorten(v, limit) for k, v in list(value.items())[:30]}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if value is None or isinstance(value, bool | int | float) else repr(value)


def proto_value(message: Message) -> dict[str, Any]:
    """A message's set fields as plain values, long repeated fields cut (for shorten)."""
    out: dict[str, Any] = {}
    for descriptor, value in message.ListFields():
        if descriptor.is_repeated:
            head = list(value[:LIST_HEAD])
            items = [proto_value(v) for v in head] if descriptor.message_type else head
            out[descriptor.name] = items + ([_More(len(value))] if len(value) > LIST_HEAD else [])
        elif descriptor.message_type is not None:
            out[descriptor.name] = proto_value(value)
        else:
            out[descriptor.name] = value
    return out


@dataclass(frozen=True)
class Shown:
    """A drawn value that hypothesis prints shortened (a falsifying example may hold a 6 MB
    string)."""

    value: Any

    def __repr__(self) -> str:
        if isinstance(self.value, Message):
            return describe_proto(self.value)
        return json.dumps(shorten(self.value), ensure_ascii=False)


def describe_proto(message: Message | bytes) -> str:
    if isinstance(message, bytes):
        return f"{type(message).__name__} {shorten(message, 300)}"
    return (
        f"{type(message).__name__} {json.dumps(shorten(proto_value(message)), ensure_ascii=False)}"
    )


# -- answers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrpcAnswer:
    code: grpc.StatusCode
    message: str
    reply: bytes | None
    seconds: float


@dataclass(frozen=True)
class HttpAnswer:
    status: int | None  # None: no answer (a timeout or a dropped connection)
    text: str
    headers: dict[str, str]
    seconds: float
    problem: str = ""


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN and Infinity (not JSON, and not finite)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"non-finite number {constant} in the reply")

    return json.loads(text, parse_constant=refuse)


def _finite(values: Sequence[float]) -> bool:
    return bool(np.isfinite(np.asarray(values, dtype=np.float64)).all())


def _norm(values: Sequence[float]) -> float:
    return float(np.linalg.norm(np.asarray(values, dtype=np.float64)))


def _unit_or_zero(values: Sequence[float]) -> bool:
    norm = _norm(values)
    return norm == 0 or abs(norm - 1) < 1e-3


class Fuzz:
    """Calls to the session's server and the checks on their answers."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        limit = 256 * 1024 * 1024
        self.channel = grpc.insecure_channel(
            gateway.target,
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
            ],
        )
        self.http_session = requests.Session()
        self.url = gateway.url
        self.server_log = ServerLog()
        logging.getLogger("lamina").addHandler(self.server_log)
        self._canaries = 0
        self.memory = MemoryWatch(int(MEMORY_CAP_GB * 2**30))
        self.memory.start()
        models = self._models()
        self.models: dict[str, pb.ModelInfo] = {m.name: m for m in models.models}
        self.reference = self._canary_vector()

    def close(self) -> None:
        self.memory.stopping.set()
        logging.getLogger("lamina").removeHandler(self.server_log)
        self.channel.close()
        self.http_session.close()

    def _models(self) -> pb.ModelsAvailableResponse:
        answer = self.grpc("ModelsAvailable", pb.ModelsAvailableRequest(), CANARY_SECONDS)
        assert answer.code is OK and answer.reply is not None, answer
        return pb.ModelsAvailableResponse.FromString(answer.reply)

    def _canary_vector(self) -> np.ndarray:
        answer = self.grpc("Embed", CANARY, CANARY_SECONDS)
        assert answer.code is OK and answer.reply is not None, answer
        reply = pb.EmbedResponse.FromString(answer.reply)
        return np.asarray(next(iter(reply.embeddings.values())).pooling["mean"].values)

    # -- calls ----------------------------------------------------------------------------------

    def grpc(self, method: str, request: Message | bytes, deadline: float | None) -> GrpcAnswer:
        serializer = None if isinstance(request, bytes) else type(request).SerializeToString
        call = self.channel.unary_unary(
            SERVICE + method, request_serializer=serializer, response_deserializer=None
        )
        started = time.monotonic()
        try:
            reply = call(request, timeout=STALL_SECONDS if deadline is None else deadline)
        except grpc.RpcError as error:
            failed: Any = error  # a grpc.Call as well
            return GrpcAnswer(
                failed.code(), failed.details() or "", None, time.monotonic() - started
            )
        return GrpcAnswer(OK, "", reply, time.monotonic() - started)

    def http(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> HttpAnswer:
        started = time.monotonic()
        try:
            response = self.http_session.request(
                method,
                self.url + path,
                data=body,
                headers={"content-type": "application/json", **(headers or {})},
                params=params,
                timeout=STALL_SECONDS,
            )
        except requests.RequestException as error:
            self.http_session.close()  # a connection left in an unknown state
            self.http_session = requests.Session()
            return HttpAnswer(None, "", {}, time.monotonic() - started, repr(error))
        return HttpAnswer(
            response.status_code,
            response.text,
            dict(response.headers),
            time.monotonic() - started,
        )

    @contextlib.contextmanager
    def example(self, test: str, describe: Callable[[], str]) -> Iterator[Example]:
        example = Example(test, describe)
        self.server_log.take()
        self.memory.start_example(describe)
        if TRACE_LOG:  # written first: if the server dies, the last line names its request
            with open(TRACE_LOG, "a", encoding="utf-8") as trace:
                trace.write(json.dumps({"test": test, "begin": _clip(describe(), 2000)}) + "\n")
        started = time.monotonic()
        try:
            yield example
        finally:
            peak = self.memory.end_example()
        example.server_errors = self.server_log.take()
        grown = peak - self.memory.base
        example.check(
            not self.memory.base or grown < MEMORY_GROWTH_BYTES,
            "memory",
            lambda: (
                f"the process grew {grown / 2**30:.1f} GB above its size at the start "
                f"({self.memory.base / 2**30:.1f} GB) while answering"
            ),
        )
        if TRACE_LOG:  # progress of a long run: one line per example
            with open(TRACE_LOG, "a", encoding="utf-8") as trace:
                entry = {
                    "test": test,
                    "seconds": round(time.monotonic() - started, 3),
                    "failed": sorted({v.kind for v in example.violations}),
                    "outcomes": example.outcomes,
                    "request": _clip(describe(), 300),
                }
                trace.write(json.dumps(entry) + "\n")
        example.settle()

    # -- properties -----------------------------------------------------------------------------

    def check_grpc(
        self,
        ex: Example,
        method: str,
        answer: GrpcAnswer,
        request: Message | None,
        deadline: float | None,
    ) -> Message | None:
        """The properties of one gRPC answer; the parsed reply when OK."""
        code = answer.code
        ex.outcomes.append(f"{code.name} {answer.message[:70]}".strip())
        ex.check(code in ALLOWED_GRPC, f"grpc-status:{code.name}", lambda: answer.message)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and deadline is None:
            ex.fail("stall", f"no answer within {STALL_SECONDS} s")
        ex.check(
            code is not grpc.StatusCode.UNAVAILABLE,
            "unavailable-while-serving",
            lambda: answer.message,
        )
        # A status the client library made up because it could not read the server's (its
        # trailers past the client's metadata limit, e.g. a message echoing a huge string).
        ex.check(
            "metadata size exceeds" not in answer.message,
            "grpc-status-unreadable",
            lambda: f"{code.name}: {answer.message}",
        )
        if code is not OK:
            self._check_error_text(ex, answer.message)
            self._check_error_time(ex, answer.seconds, deadline, code.name)
            return None
        assert answer.reply is not None
        try:
            reply = RESPONSES[method].FromString(answer.reply)
        except DecodeError as error:
            ex.fail("reply-undecodable", repr(error))
            return None
        self.check_reply(ex, method, request, reply)
        return reply

    def check_http(
        self,
        ex: Example,
        method: str | None,
        answer: HttpAnswer,
        request: Message | None,
        deadline: float | None,
    ) -> Message | None:
        """The properties of one HTTP answer (`method`: the gRPC method of the route, None for
        GET routes whose body is not checked further); the reply as protobuf when 200."""
        status = answer.status
        ex.outcomes.append(str(status))
        if status is None:
            ex.fail("stall" if "Timeout" in answer.problem else "http-no-answer", answer.problem)
            return None
        ex.check(status in ALLOWED_HTTP, f"http-status:{status}", lambda: answer.text)
        ex.check(status not in (401, 503), f"http-unexpected:{status}", lambda: answer.text)
        if status == 408 and deadline is None:
            ex.fail("stall", "408 without a deadline asked")
        if status != 200:
            try:
                body = strict_json(answer.text)
            except ValueError as error:
                ex.fail("http-error-not-json", f"{error}: {answer.text!r}")
                return None
            if not (
                isinstance(body, dict)
                and set(body) == {"error", "code"}
                and isinstance(body["error"], str)
                and isinstance(body["code"], str)
            ):
                ex.fail("http-error-shape", answer.text)
                return None
            ex.check(
                body["code"] in HTTP_CODES.get(status, {body["code"]}),
                "http-code-mismatch",
                lambda: f"{status} with code {body['code']}",
            )
            self._check_error_text(ex, body["error"])
            self._check_error_time(ex, answer.seconds, deadline, str(status))
            return None
        try:
            data = strict_json(answer.text)
        except ValueError as error:
            ex.fail(
                "nonfinite" if "non-finite" in str(error) else "http-reply-not-json", str(error)
            )
            return None
        if method is None:
            return None
        reply = http_reply(ex, method, data)
        if reply is not None:
            self.check_reply(ex, method, request, reply)
        return reply

    def _check_error_text(self, ex: Example, message: str) -> None:
        size = len(message.encode("utf-8", "surrogatepass"))
        ex.check(
            size < MAX_ERROR_BYTES,
            "error-message-size",
            lambda: f"{size} bytes: {message[:300]!r}",
        )

    def _check_error_time(
        self, ex: Example, seconds: float, deadline: float | None, code: str
    ) -> None:
        limit = ERROR_SECONDS + (deadline or 0)
        ex.check(
            seconds <= limit, "slow-error", lambda: f"{code} after {seconds:.1f} s (> {limit} s)"
        )

    # -- replies --------------------------------------------------------------------------------

    def check_reply(
        self, ex: Example, method: str, request: Message | None, reply: Message
    ) -> None:
        if isinstance(reply, pb.EmbedResponse):
            self._embed(ex, request if isinstance(request, pb.EmbedRequest) else None, reply)
        elif isinstance(reply, pb.SemanticEmbedResponse | pb.BatchSemanticEmbedResponse):
            self._semantic(ex, request, reply)
        elif isinstance(reply, pb.TokenizeResponse):
            self._tokenize(ex, request if isinstance(request, pb.TokenizeRequest) else None, reply)
        elif isinstance(reply, pb.ModelsAvailableResponse):
            names = {m.name for m in reply.models}
            ex.check(names == set(self.models), "reply-fields", f"models {sorted(names)}")

    def _version(self, ex: Example, model: str | None, version: str) -> None:
        expected = re.escape(model) if model is not None else ".+"
        ex.check(
            # docs/api.md: `+precision` where the pool serves a reduced one
            re.fullmatch(rf"{expected}@\d+(\+(bf16|fp16|int8))?", version) is not None,
            "reply-fields",
            f"model_version {version!r} for model {model!r}",
        )

    def _embed(self, ex: Example, request: pb.EmbedRequest | None, reply: pb.EmbedResponse) -> None:
        vectors = [
            (layer, pooling, list(vector.values))
            for layer, entry in reply.embeddings.items()
            for pooling, vector in entry.pooling.items()
        ]
        for layer, pooling, values in vectors:
            ex.check(_finite(values), "nonfinite", f"{layer} {pooling}: {values[:8]}...")
        ex.check(reply.num_tokens_prompt_total > 0, "reply-fields", "num_tokens_prompt_total 0")
        ex.check(bool(vectors), "reply-fields", "no embeddings")
        if request is None:
            self._version(ex, None, reply.model_version)
            return
        self._version(ex, request.model, reply.model_version)
        info = self.models[request.model]
        layers = {
            f"layer_{layer if layer >= 0 else info.num_layers + 1 + layer}"
            for layer in request.layers
        }
        ex.check(
            set(reply.embeddings) == layers,
            "reply-fields",
            lambda: f"layers {sorted(reply.embeddings)} for {list(request.layers)}",
        )
        for layer, entry in reply.embeddings.items():
            ex.check(
                set(entry.pooling) == set(request.pooling),
                "reply-fields",
                f"{layer}: poolings {sorted(entry.pooling)} for {list(request.pooling)}",
            )
        for layer, pooling, values in vectors:
            ex.check(
                len(values) == info.hidden_size,
                "reply-fields",
                f"{layer} {pooling}: {len(values)} values, hidden size {info.hidden_size}",
            )
            if request.normalize:
                ex.check(
                    _unit_or_zero(values),
                    "not-normalized",
                    f"{layer} {pooling}: norm {_norm(values)}",
                )
        ex.check(
            reply.HasField("tokens") == request.tokens,
            "reply-fields",
            f"tokens present {reply.HasField('tokens')}, asked {request.tokens}",
        )
        if reply.HasField("tokens"):
            ex.check(
                len(reply.tokens.tokens) == reply.num_tokens_prompt_total,
                "token-count",
                f"{len(reply.tokens.tokens)} tokens, num_tokens_prompt_total "
                f"{reply.num_tokens_prompt_total}",
            )
        self._positions(ex, request.prompt, reply.num_tokens_prompt_total, "prompt")

    def _positions(self, ex: Example, prompt: pb.Prompt, counted: int, where: str) -> None:
        """A prompt without text is used exactly as given: its positions are its token ids and
        144 per image, no special tokens (protos/lamina/v1/embed.proto, TokenIdsItem)."""
        if any(item.HasField("text") for item in prompt.items):
            return
        given = sum(
            len(item.token_ids.data) if item.HasField("token_ids") else IMAGE_POSITIONS
            for item in prompt.items
        )
        ex.check(
            counted == given,
            "token-ids-wrapped",
            f"{where}: {counted} positions for {given} given (token ids and images only)",
        )

    def _semantic(
        self,
        ex: Example,
        request: Message | None,
        reply: pb.SemanticEmbedResponse | pb.BatchSemanticEmbedResponse,
    ) -> None:
        if isinstance(reply, pb.SemanticEmbedResponse):
            vectors = [list(reply.embedding)]
        else:
            vectors = [list(v.values) for v in reply.embeddings]
        for index, values in enumerate(vectors):
            ex.check(_finite(values), "nonfinite", f"embedding {index}: {values[:8]}...")
        ex.check(reply.num_tokens_prompt_total > 0, "reply-fields", "num_tokens_prompt_total 0")
        if not isinstance(request, pb.SemanticEmbedRequest | pb.BatchSemanticEmbedRequest):
            self._version(ex, None, reply.model_version)
            return
        self._version(ex, request.model, reply.model_version)
        info = self.models[request.model]
        prompts = (
            [request.prompt] if isinstance(request, pb.SemanticEmbedRequest) else request.prompts
        )
        ex.check(
            len(vectors) == len(prompts),
            "reply-fields",
            f"{len(vectors)} embeddings for {len(prompts)} prompts",
        )
        normalize = request.normalize if request.HasField("normalize") else True
        for index, values in enumerate(vectors):
            ex.check(
                len(values) == info.hidden_size,
                "reply-fields",
                f"embedding {index}: {len(values)} values, hidden size {info.hidden_size}",
            )
            if normalize:
                ex.check(
                    _unit_or_zero(values),
                    "not-normalized",
                    f"embedding {index}: norm {_norm(values)}",
                )
        if len(prompts) == 1:
            self._positions(ex, prompts[0], reply.num_tokens_prompt_total, "prompt")

    def _tokenize(
        self, ex: Example, request: pb.TokenizeRequest | None, reply: pb.TokenizeResponse
    ) -> None:
        if request is None:
            return
        ex.check(
            reply.HasField("tokens") == request.tokens
            and reply.HasField("token_ids") == request.token_ids,
            "reply-fields",
            f"tokens/token_ids present {reply.HasField('tokens')}/{reply.HasField('token_ids')}, "
            f"asked {request.tokens}/{request.token_ids}",
        )
        if request.tokens and request.token_ids:
            ex.check(
                len(reply.tokens.tokens) == len(reply.token_ids.ids),
                "token-count",
                f"{len(reply.tokens.tokens)} tokens, {len(reply.token_ids.ids)} ids",
            )
        vocab = _VOCAB.get(request.model)
        if vocab:
            outside = [i for i in reply.token_ids.ids if not 0 <= i < vocab]
            ex.check(not outside, "reply-fields", f"token ids outside the vocabulary: {outside}")

    # -- the good request afterwards -----------------------------------------------------------

    def canary(self, ex: Example, edge: str) -> None:
        """A good request answers, with the vector it had at the start of the session. After an
        HTTP example it is sent over HTTP every HTTP_CANARY_EVERY examples and over gRPC between
        (an HTTP round trip costs 40 ms: the next example's own request shows the gateway up)."""
        self._canaries += 1
        if edge == "http" and self._canaries % HTTP_CANARY_EVERY:
            edge = "grpc"
        if edge == "grpc":
            answer = self.grpc("Embed", CANARY, CANARY_SECONDS)
            if answer.code is not OK or answer.reply is None:
                ex.fail("canary", f"gRPC {answer.code.name}: {answer.message[:300]}")
                return
            reply = pb.EmbedResponse.FromString(answer.reply)
            values = next(iter(reply.embeddings.values())).pooling["mean"].values
        else:
            http = self.http("POST", "embed", json.dumps(CANARY_JSON).encode())
            if http.status != 200:
                ex.fail("canary", f"HTTP {http.status}: {http.text[:300]} {http.problem}")
                return
            values = strict_json(http.text)["embeddings"]["layer_6"]["mean"]
        ex.check(
            bool(np.allclose(np.asarray(values), self.reference, rtol=1e-3, atol=1e-4)),
            "canary-changed",
            "the good request's vector changed",
        )


_VOCAB = {"all-minilm-l6-v2": 30522, "smollm2-135m-instruct": 49152}


# -- HTTP replies as protobuf ----------------------------------------------------------------


def _keys(ex: Example, data: Any, keys: set[str], what: str) -> bool:
    if not isinstance(data, dict) or set(data) != keys:
        shape = sorted(data) if isinstance(data, dict) else type(data).__name__
        ex.fail("http-reply-shape", f"{what}: {shape}, expected {sorted(keys)}")
        return False
    return True


def _numbers(ex: Example, values: Any, what: str) -> list[float]:
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        ex.fail("http-reply-shape", f"{what}: not a list of numbers")
        return []
    return [float(v) for v in values]


_TIMING = {"queue_seconds", "tokenization_seconds", "inference_seconds", "parked_seconds"}


def http_reply(ex: Example, method: str, data: Any) -> Message | None:
    """The JSON reply of a route read back into the protobuf reply of its gRPC method, checking
    its documented shape on the way."""
    try:
        return _http_reply(ex, method, data)
    except (TypeError, ValueError, AttributeError) as error:
        ex.fail("http-reply-shape", f"{method}: {error!r}")
        return None


def _http_reply(ex: Example, method: str, data: Any) -> Message | None:
    common = {"model_version", "num_tokens_prompt_total", "timing"}
    if method == "Embed":
        if not _keys(ex, data, {*common, "embeddings", "tokens"}, "embed reply"):
            return None
        embed = pb.EmbedResponse(
            model_version=str(data["model_version"]),
            num_tokens_prompt_total=int(data["num_tokens_prompt_total"]),
        )
        for layer, entry in dict(data["embeddings"]).items():
            for pooling, values in dict(entry).items():
                embed.embeddings[layer].pooling[pooling].values.extend(
                    _numbers(ex, values, f"{layer}.{pooling}")
                )
        if data["tokens"] is not None:
            embed.tokens.SetInParent()
            embed.tokens.tokens.extend(data["tokens"])
        _keys(ex, data["timing"], _TIMING, "timing")
        return embed
    if method == "SemanticEmbed":
        if not _keys(ex, data, {*common, "embedding"}, "semantic_embed reply"):
            return None
        return pb.SemanticEmbedResponse(
            model_version=str(data["model_version"]),
            num_tokens_prompt_total=int(data["num_tokens_prompt_total"]),
            embedding=_numbers(ex, data["embedding"], "embedding"),
        )
    if method == "BatchSemanticEmbed":
        if not _keys(ex, data, {*common, "embeddings"}, "batch_semantic_embed reply"):
            return None
        return pb.BatchSemanticEmbedResponse(
            model_version=str(data["model_version"]),
            num_tokens_prompt_total=int(data["num_tokens_prompt_total"]),
            embeddings=[
                pb.Vector(values=_numbers(ex, v, f"embeddings[{i}]"))
                for i, v in enumerate(list(data["embeddings"]))
            ],
        )
    if method == "Tokenize":
        if not _keys(ex, data, {"tokens", "token_ids"}, "tokenize reply"):
            return None
        tokenized = pb.TokenizeResponse()
        if data["tokens"] is not None:
            tokenized.tokens.SetInParent()
            tokenized.tokens.tokens.extend(data["tokens"])
        if data["token_ids"] is not None:
            tokenized.token_ids.SetInParent()
            tokenized.token_ids.ids.extend(data["token_ids"])
        return tokenized
    if method == "Detokenize":
        if not _keys(ex, data, {"result"}, "detokenize reply") or not isinstance(
            data["result"], str
        ):
            return None
        return pb.DetokenizeResponse(result=data["result"])
    return None

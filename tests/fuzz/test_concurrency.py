"""Bursts of fuzzed requests at once, some cancelled by their caller, some with deadlines that
pass in the queue, some HTTP callers hanging up: afterwards nothing is left behind (no queued
request, no call counted in flight) and the server answers a good request as before."""

from __future__ import annotations

import socket
import time
import urllib.parse
from concurrent.futures import Future
from typing import Any

import grpc
from hypothesis import given
from hypothesis import strategies as st

from lamina.v1 import embed_pb2 as pb
from tests.fuzz.harness import CANARY, SERVICE, Fuzz, Shown, describe_proto
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.strategies import Call, NotExpressible, calls, dumps, weighted
from tests.fuzz.test_grpc_fuzz import grpc_request

SETTLE_SECONDS = 15.0

fates = weighted(
    (4, st.just("wait")),
    (2, st.tuples(st.just("cancel"), st.floats(0, 0.3))),
    (2, st.tuples(st.just("deadline"), st.floats(0.001, 0.5))),
    (2, st.tuples(st.just("hang-up"), st.floats(0, 0.3))),
)
bursts = st.lists(
    st.tuples(calls(["embed", "semantic_embed", "batch_semantic_embed"]), fates),
    min_size=2,
    max_size=10,
).map(Shown)


def hang_up(fuzz: Fuzz, call: Call, after: float) -> None:
    """An HTTP caller that sends its request and closes the connection without reading."""
    address = urllib.parse.urlsplit(fuzz.url)
    body = dumps(call.body).encode("utf-8", "surrogatepass")
    head = (
        f"POST /{call.route} HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((address.hostname, address.port), timeout=5) as connection:
        connection.sendall(head + body)
        time.sleep(after)


def settled(fuzz: Fuzz) -> tuple[int, int]:
    """(requests queued, calls in flight) on the server, read on its own loop."""

    async def read() -> tuple[int, int]:
        instance = fuzz.gateway.instance
        depth = instance.engine.queue.depth(time.monotonic())
        return sum(d.requests for d in depth.values()), instance.state.in_flight

    return fuzz.gateway.run(read())


@fuzz_settings(0.2)
@given(burst=bursts)
def test_bursts_leave_nothing_behind(fuzz: Fuzz, burst: Shown) -> None:
    entries: list[tuple[Call, Any]] = burst.value
    pending: list[tuple[str, Future[Any]]] = []
    described = "; ".join(f"{fate} {call!r}"[:300] for call, fate in entries)
    with fuzz.example("burst", lambda: described) as ex:
        for call, fate in entries:
            kind, wait = (fate, 0.0) if isinstance(fate, str) else fate
            if kind == "hang-up":
                try:
                    hang_up(fuzz, call, wait)
                except OSError as error:
                    ex.fail("http-no-answer", f"connecting to hang up: {error!r}")
                continue
            try:
                request = grpc_request(call)
            except NotExpressible:
                continue
            stub = fuzz.channel.unary_unary(
                SERVICE + call.method,
                request_serializer=type(request).SerializeToString,
                response_deserializer=None,
            )
            timeout = wait if kind == "deadline" else 60.0
            future: Any = stub.future(request, timeout=timeout)
            if kind == "cancel":
                time.sleep(wait)
                future.cancel()
            pending.append((describe_proto(request)[:200], future))
        for what, future in pending:
            try:
                future.result(timeout=90)
            except grpc.FutureCancelledError:
                pass
            except grpc.RpcError as error:
                failed: Any = error
                code = failed.code()
                ex.check(
                    code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
                    or "cancel" in str(failed.details()).lower(),
                    f"grpc-status:{code.name}",
                    f"{what}: {failed.details()}",
                )
            except Exception as error:
                ex.fail("burst-no-answer", f"{what}: {error!r}")
        deadline = time.monotonic() + SETTLE_SECONDS
        left = settled(fuzz)
        while left != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
            left = settled(fuzz)
        ex.check(
            left == (0, 0),
            "left-behind",
            lambda: (
                f"{left[0]} requests queued, {left[1]} calls in flight "
                f"{SETTLE_SECONDS} s after the burst"
            ),
        )
        fuzz.canary(ex, "grpc")
        fuzz.canary(ex, "http")


def test_a_burst_of_good_requests_is_answered(fuzz: Fuzz) -> None:
    """The control: 32 good requests at once all answer OK (no spurious queue-full)."""
    stub = fuzz.channel.unary_unary(
        SERVICE + "Embed",
        request_serializer=pb.EmbedRequest.SerializeToString,
        response_deserializer=None,
    )
    futures = [stub.future(CANARY, timeout=60) for _ in range(32)]
    for future in futures:
        future.result()
    assert settled(fuzz) == (0, 0)

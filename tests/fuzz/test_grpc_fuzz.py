"""The gRPC request space: every method with every field at its edges, and bytes that no stub
would send, against the session's one real server (properties: tests/fuzz/harness.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lamina.v1 import embed_pb2 as pb
from tests.fuzz.harness import Fuzz, Shown, describe_proto
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.strategies import (
    ABSENT,
    Call,
    calls,
    deadlines,
    proto_tweaks,
    to_proto,
    wire_requests,
)


def grpc_request(call: Call) -> Any:
    """The protobuf request of a drawn call; `nice` values only HTTP can send are left out."""
    if not isinstance(call.nice, bool):
        call = dataclasses.replace(call, nice=ABSENT)
    return to_proto(call)


def run(fuzz: Fuzz, test: str, call: Call, data: st.DataObject) -> None:
    request = data.draw(proto_tweaks(grpc_request(call)).map(Shown), label="request").value
    with fuzz.example(test, lambda: f"{describe_proto(request)} deadline={call.deadline}") as ex:
        answer = fuzz.grpc(call.method, request, call.deadline)
        fuzz.check_grpc(ex, call.method, answer, request, call.deadline)
        fuzz.canary(ex, "grpc")


@fuzz_settings(1.0)
@given(call=calls(["embed"]), data=st.data())
def test_embed(fuzz: Fuzz, call: Call, data: st.DataObject) -> None:
    run(fuzz, "grpc-embed", call, data)


@fuzz_settings(0.5)
@given(call=calls(["semantic_embed"]), data=st.data())
def test_semantic_embed(fuzz: Fuzz, call: Call, data: st.DataObject) -> None:
    run(fuzz, "grpc-semantic-embed", call, data)


@fuzz_settings(0.4)
@given(call=calls(["batch_semantic_embed"]), data=st.data())
def test_batch_semantic_embed(fuzz: Fuzz, call: Call, data: st.DataObject) -> None:
    run(fuzz, "grpc-batch-semantic-embed", call, data)


@fuzz_settings(0.5)
@given(call=calls(["tokenize", "detokenize"]), data=st.data())
def test_tokenize_and_detokenize(fuzz: Fuzz, call: Call, data: st.DataObject) -> None:
    run(fuzz, "grpc-tokenize", call, data)


@fuzz_settings(0.1)
@given(deadline=deadlines)
def test_models_available(fuzz: Fuzz, deadline: float | None) -> None:
    request = pb.ModelsAvailableRequest()
    with fuzz.example("grpc-models-available", lambda: f"deadline={deadline}") as ex:
        answer = fuzz.grpc("ModelsAvailable", request, deadline)
        fuzz.check_grpc(ex, "ModelsAvailable", answer, request, deadline)


@fuzz_settings(0.6)
@given(wire=wire_requests())
def test_wire_bytes(fuzz: Fuzz, wire: tuple[str, bytes]) -> None:
    """Raw bytes as the request body of a method, through a generic call: undecodable messages
    are the caller's error (INVALID_ARGUMENT), never UNKNOWN or INTERNAL."""
    method, data = wire
    with fuzz.example("grpc-wire", lambda: f"{method} {describe_proto(data)}") as ex:
        answer = fuzz.grpc(method, data, None)
        fuzz.check_grpc(ex, method, answer, None, None)
        fuzz.canary(ex, "grpc")

"""Cross-checks: the same request over gRPC and over HTTP gets the same answer (one code path
below the edges, docs/architecture.md), and a fuzzed request leaves the good requests batched
beside it unharmed (a failed or odd row affects only itself)."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from google.protobuf.message import Message
from hypothesis import assume, given
from hypothesis import strategies as st

from lamina.v1 import embed_pb2 as pb
from tests.conftest import DINOV2, MINILM
from tests.fuzz.harness import OK, Fuzz, describe_proto, shorten, strict_json
from tests.fuzz.images import valid_images
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.strategies import (
    ABSENT,
    Call,
    NotExpressible,
    calls,
    dumps,
    is_strict_json,
    to_proto,
)
from tests.fuzz.test_grpc_fuzz import grpc_request


def vectors(reply: Message | None) -> dict[str, np.ndarray]:
    if isinstance(reply, pb.EmbedResponse):
        return {
            f"{layer}/{pooling}": np.asarray(vector.values)
            for layer, entry in reply.embeddings.items()
            for pooling, vector in entry.pooling.items()
        }
    if isinstance(reply, pb.SemanticEmbedResponse):
        return {"embedding": np.asarray(reply.embedding)}
    if isinstance(reply, pb.BatchSemanticEmbedResponse):
        return {f"embeddings[{i}]": np.asarray(v.values) for i, v in enumerate(reply.embeddings)}
    return {}


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-3, atol=1e-3))


@fuzz_settings(0.3)
@given(call=calls())
def test_grpc_and_http_agree(fuzz: Fuzz, call: Call) -> None:
    call = dataclasses.replace(call, deadline=None)
    try:
        request = to_proto(call)
    except NotExpressible:
        request = None
    # Only what both edges can say: NaN and Infinity are no JSON numbers (the gateway says so).
    assume(request is not None and is_strict_json(call.body))
    params = {"nice": str(call.nice).lower()} if call.nice is not ABSENT else {}
    with fuzz.example("edges", lambda: f"{call.route} {shorten(call.body)} nice={call.nice}") as ex:
        grpc_answer = fuzz.grpc(call.method, request, None)
        grpc_reply = fuzz.check_grpc(ex, call.method, grpc_answer, request, None)
        http_answer = fuzz.http("POST", call.route, dumps(call.body).encode(), params=params)
        http_reply = fuzz.check_http(ex, call.method, http_answer, request, None)
        if http_answer.status is None:
            return
        body: Any = {}
        if http_answer.status != 200:
            try:
                body = strict_json(http_answer.text)
            except ValueError:
                return  # reported by check_http
        http_code = "OK" if http_answer.status == 200 else str(body.get("code"))
        ex.check(
            grpc_answer.code.name == http_code,
            "edges-disagree",
            lambda: (
                f"gRPC {grpc_answer.code.name} {grpc_answer.message[:300]!r}; "
                f"HTTP {http_answer.status} {http_answer.text[:300]!r}"
            ),
        )
        # Error texts are not compared: the gateway checks every JSON type of a body before
        # any value, so a request with several faults is refused for different ones.
        a, b = vectors(grpc_reply), vectors(http_reply)
        if grpc_reply is not None and http_reply is not None:
            ex.check(
                a.keys() == b.keys() and all(close(a[k], b[k]) for k in a),
                "edges-disagree-vectors",
                lambda: f"{sorted(a)} / {sorted(b)}",
            )


NEIGHBOUR_IMAGE = "png-rgb-16x12"


def neighbour(model: str) -> pb.EmbedRequest:
    item = (
        pb.PromptItem(image=pb.ImageItem(data=valid_images()[NEIGHBOUR_IMAGE]))
        if model == DINOV2
        else pb.PromptItem(text=pb.TextItem(data="Hello world"))
    )
    return pb.EmbedRequest(
        model=model, prompt=pb.Prompt(items=[item]), layers=[-1], pooling=["mean"]
    )


_REFERENCES: dict[str, np.ndarray] = {}


def reference(fuzz: Fuzz, model: str) -> np.ndarray:
    """The neighbour's vector when it runs alone."""
    if model not in _REFERENCES:
        answer = fuzz.grpc("Embed", neighbour(model), 30)
        assert answer.code is OK and answer.reply is not None, answer
        (vector,) = vectors(pb.EmbedResponse.FromString(answer.reply)).values()
        _REFERENCES[model] = vector
    return _REFERENCES[model]


@fuzz_settings(0.2)
@given(call=calls(["embed", "semantic_embed", "batch_semantic_embed"]), data=st.data())
def test_neighbours_are_unharmed(fuzz: Fuzz, call: Call, data: st.DataObject) -> None:
    request = grpc_request(call)
    model = request.model if request.model in fuzz.models else MINILM
    expected = reference(fuzz, model)
    with fuzz.example("neighbours", lambda: describe_proto(request)) as ex:
        with ThreadPoolExecutor(3) as pool:
            fuzzed = pool.submit(fuzz.grpc, call.method, request, call.deadline)
            beside = [pool.submit(fuzz.grpc, "Embed", neighbour(model), None) for _ in range(2)]
        fuzz.check_grpc(ex, call.method, fuzzed.result(), request, call.deadline)
        for future in beside:
            answer = future.result()
            if answer.code is not OK or answer.reply is None:
                ex.fail("neighbour-failed", f"{answer.code.name}: {answer.message[:300]}")
                continue
            (vector,) = vectors(pb.EmbedResponse.FromString(answer.reply)).values()
            if not close(vector, expected):
                difference = (
                    np.abs(vector - expected).max() if vector.shape == expected.shape else 0
                )
                ex.fail("neighbour-changed", f"{vector.shape}, max difference {difference}")

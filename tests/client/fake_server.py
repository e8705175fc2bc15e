"""A small real gRPC server with canned EmbedService replies, to test the clients against."""

from __future__ import annotations

import socket
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc

NUM_LAYERS = 6
# Models that make the fake server misbehave on purpose.
REJECTED = "bad-model"  # Embed aborts with INVALID_ARGUMENT
SLOW = "slow-model"  # Embed waits until the client's deadline passes
BIG = "big-model"  # Embed answers a reply past gRPC's 4 MiB default limit
BIG_VALUES = 2_000_000  # float32: 8 MB
INVALID_MESSAGE = "layers[0]: layer 42 is out of range for 6 blocks"

MODEL_INFO = pb.ModelInfo(
    name="fake-model",
    description="a canned model",
    max_context_size=512,
    hostings=["aleph-alpha"],
    image_support=False,
    embedding_types=["embed"],
    version="3",
    num_layers=NUM_LAYERS,
    hidden_size=2,
    architecture="bert",
)


@dataclass
class Received:
    method: str
    request: Any
    metadata: dict[str, str]
    time_remaining: float | None


@dataclass
class FakeEmbedService(embed_pb2_grpc.EmbedServiceServicer):
    received: list[Received] = field(default_factory=list)

    def _record(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        metadata = {key: str(value) for key, value in context.invocation_metadata()}
        self.received.append(Received(method, request, metadata, context.time_remaining()))

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        self._record("Embed", request, context)
        if request.model == REJECTED:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, INVALID_MESSAGE)
        if request.model == SLOW:
            give_up = time.monotonic() + 5
            while context.is_active() and time.monotonic() < give_up:
                time.sleep(0.01)
        reply = pb.EmbedResponse(
            model_version=f"{request.model}@3", num_tokens_prompt_total=len(request.prompt.items)
        )
        for layer in request.layers:
            # Absolute index, as the real server answers: -1 is the last block.
            absolute = layer if layer >= 0 else NUM_LAYERS + 1 + layer
            for index, pooling in enumerate(request.pooling):
                values = [float(absolute), float(index) + 0.5]
                if request.model == BIG:
                    values = values * (BIG_VALUES // 2)
                reply.embeddings[f"layer_{absolute}"].pooling[pooling].values.extend(values)
        if request.tokens:
            reply.tokens.tokens.extend(f"t{i}" for i in range(len(request.prompt.items)))
        reply.timing.queue_seconds = 0.25
        reply.timing.tokenization_seconds = 0.5
        reply.timing.inference_seconds = 0.75
        reply.timing.parked_seconds = 0.125
        return reply

    def ModelsAvailable(
        self, request: pb.ModelsAvailableRequest, context: grpc.ServicerContext
    ) -> pb.ModelsAvailableResponse:
        self._record("ModelsAvailable", request, context)
        return pb.ModelsAvailableResponse(models=[MODEL_INFO])

    def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.ServicerContext
    ) -> pb.TokenizeResponse:
        self._record("Tokenize", request, context)
        words = request.prompt.split()
        reply = pb.TokenizeResponse()
        if request.tokens:
            reply.tokens.tokens.extend(words)
        if request.token_ids:
            reply.token_ids.ids.extend(len(word) for word in words)
        return reply

    def Detokenize(
        self, request: pb.DetokenizeRequest, context: grpc.ServicerContext
    ) -> pb.DetokenizeResponse:
        self._record("Detokenize", request, context)
        return pb.DetokenizeResponse(result=" ".join(f"<{i}>" for i in request.token_ids))


@dataclass
class FakeServer:
    target: str
    service: FakeEmbedService

    @property
    def last(self) -> Received:
        return self.service.received[-1]


def start() -> tuple[grpc.Server, FakeServer]:
    # A thread-pool server, so blocking clients in the test thread and asyncio clients on the
    # test's event loop can both call it without sharing a loop.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service = FakeEmbedService()
    embed_pb2_grpc.add_EmbedServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, FakeServer(f"127.0.0.1:{port}", service)


def closed_port_target() -> str:
    """An address nothing listens on: the port was free a moment ago and is released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"

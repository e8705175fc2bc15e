"""Yielding end to end, on a real server with the prepared models: a nice batch parked between
segments while normal requests run answers exactly what it answers unparked, says how long it
was parked, and the metrics count it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import DINOV2, MINILM, SMOLLM2
from tests.integration.support import sample, scrape
from tests.integration.test_scheduling import serving
from tests.server.test_convert_vision import png

# One block a segment: every boundary is a chance to yield.
POLICY = SchedulingPolicy(max_wait_seconds=0, segment_seconds=0.0005)
LONG_TEXT = " ".join(f"word{i} of a prompt long enough to run for a while" for i in range(30))


def text_request(model: str, nice: bool) -> pb.EmbedRequest:
    control = pb.TextControl(start=10, length=40, factor=0.25)
    item = pb.PromptItem(text=pb.TextItem(data=LONG_TEXT, controls=[control]))
    return pb.EmbedRequest(
        model=model,
        prompt=pb.Prompt(items=[item]),
        layers=[1, -1],
        pooling=["mean", "max"],
        nice=nice,
        control_log_additive=False,
    )


def image_request(nice: bool) -> pb.EmbedRequest:
    control = pb.ImageControl(rect=pb.Rect(left=0.2, top=0.1, width=0.5, height=0.5), factor=0.0)
    item = pb.PromptItem(image=pb.ImageItem(data=png(11, (320, 240)), controls=[control]))
    return pb.EmbedRequest(
        model=DINOV2, prompt=pb.Prompt(items=[item]), layers=[2, -1], pooling=["mean"], nice=nice
    )


def vectors(reply: pb.EmbedResponse) -> list[tuple[str, str, list[float]]]:
    return [
        (layer, name, list(vector.values))
        for layer, pooled in sorted(reply.embeddings.items())
        for name, vector in sorted(pooled.pooling.items())
    ]


async def normal_traffic(stub: pb_grpc.EmbedServiceStub, stop: asyncio.Event) -> int:
    """Short normal requests one after another, a moment apart, until `stop`."""
    short = pb.PromptItem(text=pb.TextItem(data="a short normal request"))
    request = pb.EmbedRequest(
        model=MINILM, prompt=pb.Prompt(items=[short]), layers=[-1], pooling=["mean"]
    )
    sent = 0
    while not stop.is_set():
        await stub.Embed(request, timeout=30)
        sent += 1
        await asyncio.sleep(0.003)
    return sent


async def parked_reply(
    stub: pb_grpc.EmbedServiceStub, request: pb.EmbedRequest
) -> pb.EmbedResponse:
    """`request` (nice) answered while normal traffic ran beside it, parked at least once."""
    for _ in range(5):
        stop = asyncio.Event()
        traffic = asyncio.ensure_future(normal_traffic(stub, stop))
        await asyncio.sleep(0.02)
        reply = await stub.Embed(request, timeout=60)
        stop.set()
        await traffic
        if reply.timing.parked_seconds > 0:
            return reply
    pytest.fail("the nice request was never parked")


@pytest.mark.parametrize(
    ("model", "request_of"),
    [
        (SMOLLM2, lambda nice: text_request(SMOLLM2, nice)),
        (MINILM, lambda nice: text_request(MINILM, nice)),
        (DINOV2, image_request),
    ],
    ids=["smollm2", "minilm", "dinov2-image"],
)
async def test_a_parked_batch_answers_exactly_as_an_unparked_one(
    model_repository: Path, model: str, request_of: object
) -> None:
    assert callable(request_of)
    async with serving(model_repository, scheduling=POLICY) as (server, stub, metrics_port):
        before = await scrape(metrics_port)
        parked = await parked_reply(stub, request_of(True))
        alone = await stub.Embed(request_of(True), timeout=60)  # nothing else running
        after = await scrape(metrics_port)
        assert alone.timing.parked_seconds == 0
        assert vectors(parked) == vectors(alone)  # bit for bit
        assert parked.model_version == alone.model_version
        labels = {"pool": "default", "model": model}
        preempted = sample(after, "lamina_preemptions_total", **labels) - sample(
            before, "lamina_preemptions_total", **labels
        )
        assert preempted >= 1
        assert sample(after, "lamina_parked_batches", **labels) == 0
        assert sample(after, "lamina_parked_bytes", **labels) == 0
        # Every batch runs at least one segment, and the parked one more (how many more, and
        # how many short normal batches ran beside it, depends on the machine's speed).
        segments = sample(after, "lamina_segment_duration_seconds_count", **labels)
        assert segments > sample(after, "lamina_batch_duration_seconds_count", **labels)
        assert not any(runner.parked for runner in server.engine.runners)

"""Valid requests at the edges of what the limits let through: the longest prompts a model takes,
the largest batches, many controls, many images. Each must leave room for the others: a good
request sent while it runs is answered within STARVE_SECONDS, and the server does not grow past
the memory the harness allows (tests/fuzz/harness.py: MEMORY_GROWTH_BYTES).

Each example costs up to minutes of CPU (smollm2-135m-instruct at 8192 positions), so this runs in
the long profile only (`make fuzz`), a few examples per run.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.v1 import embed_pb2 as pb
from tests.conftest import DINOV2, MINILM, SMOLLM2
from tests.fuzz.harness import CANARY, OK, Fuzz, GrpcAnswer, Shown, describe_proto
from tests.fuzz.images import valid_images
from tests.fuzz.profiles import PROFILE, fuzz_settings

pytestmark = pytest.mark.skipif(
    PROFILE != "long", reason="minutes an example: make fuzz (LAMINA_FUZZ_PROFILE=long) runs it"
)
STARVE_SECONDS = float(os.environ.get("LAMINA_FUZZ_STARVE_SECONDS", "10"))
IDLE_SECONDS = 900.0  # how long to wait for the server to finish a costly request


def ids_prompt(count: int) -> pb.Prompt:
    return pb.Prompt(items=[pb.PromptItem(token_ids=pb.TokenIdsItem(data=[1000] * count))])


def long_decoder_prompt(count: int) -> tuple[str, pb.EmbedRequest]:
    request = pb.EmbedRequest(
        model=SMOLLM2, prompt=ids_prompt(count), layers=[-1], pooling=["mean"]
    )
    return "Embed", request


def large_batch(prompts: int, controls: int) -> tuple[str, pb.BatchSemanticEmbedRequest]:
    text = "hello " * 508  # 510 positions of all-minilm-l6-v2's 512
    control = pb.TextControl(start=0, length=5, factor=0.5)
    item = pb.PromptItem(text=pb.TextItem(data=text, controls=[control] * controls))
    prompt = pb.Prompt(items=[item])
    request = pb.BatchSemanticEmbedRequest(
        model=MINILM, prompts=[prompt] * prompts, representation="symmetric"
    )
    return "BatchSemanticEmbed", request


def many_images(count: int) -> tuple[str, pb.EmbedRequest]:
    image = pb.PromptItem(image=pb.ImageItem(data=valid_images()["png-448x448"]))
    request = pb.EmbedRequest(
        model=DINOV2, prompt=pb.Prompt(items=[image] * count), layers=[-1], pooling=["mean"]
    )
    return "Embed", request


costly = st.one_of(
    st.builds(long_decoder_prompt, st.integers(2048, 8192)),
    st.builds(large_batch, st.integers(50, 100), st.sampled_from([0, 1024])),
    st.builds(many_images, st.integers(8, 16)),
)


def in_flight(fuzz: Fuzz) -> None:
    """Wait until the server counts a call in flight (read on its own loop)."""

    async def calls() -> int:
        return fuzz.gateway.instance.state.in_flight

    deadline = time.monotonic() + 30
    while fuzz.gateway.run(calls()) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)


def wait_until_idle(fuzz: Fuzz) -> None:
    deadline = time.monotonic() + IDLE_SECONDS
    while time.monotonic() < deadline:
        if fuzz.grpc("Embed", CANARY, STARVE_SECONDS).code is OK:
            return
    raise AssertionError(f"the server was still busy after {IDLE_SECONDS} s")


@settings(fuzz_settings(), max_examples=3)
@given(call=costly.map(Shown))
def test_a_costly_request_leaves_room_for_others(fuzz: Fuzz, call: Shown) -> None:
    method, request = call.value
    answers: list[GrpcAnswer] = []
    worker = threading.Thread(target=lambda: answers.append(fuzz.grpc(method, request, None)))
    with fuzz.example("costly", lambda: describe_proto(request)) as ex:
        worker.start()
        in_flight(fuzz)  # the costly request is being prepared or run
        beside = fuzz.grpc("Embed", CANARY, STARVE_SECONDS)
        ex.check(
            beside.code is OK,
            "starved",
            lambda: (
                f"a good request beside it: {beside.code.name} after {beside.seconds:.1f} s "
                f"(limit {STARVE_SECONDS} s)"
            ),
        )
        worker.join()
        fuzz.check_grpc(ex, method, answers[0], request, None)
    wait_until_idle(fuzz)

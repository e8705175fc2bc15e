"""Memory of a real `lamina serve` process (docs/memory.md): long prompts stay under the documented
peak, and the server gives the memory back once they are answered.

The server runs in a subprocess so that its resident set is its own (/proc/<pid>/status).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import SMOLLM2, free_port
from tests.integration.support import wait_until_serving

MIB = 1024 * 1024
# docs/memory.md, "Bounds the tests hold": four concurrent 3,000-token SmolLM2 prompts with an
# attention control, under the default budget, peak at most this far above the idle level.
FOUR_LONG_PROMPTS_PEAK = 3584 * MIB
RETURNED_WITHIN = 0.10  # of the idle level, once answered
GIVEN_BACK_TIMEOUT = 60.0


def kib(pid: int, field: str) -> int:
    """A `VmRSS`-style field of /proc/<pid>/status, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    """From now on VmHWM is the peak since this call (Linux: clear_refs 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")


def long_prompt(length: int, seed: int) -> pb.EmbedRequest:
    ids = [100 + (seed * 7919 + 31 * i) % 40000 for i in range(length)]
    # A control takes every layer's attention down the AtMan path, the most memory a prompt of
    # this length can need. Layer 1: one block runs, and a block's peak is every block's.
    control = pb.TokenControl(index=length // 2, factor=0.5)
    item = pb.PromptItem(token_ids=pb.TokenIdsItem(data=ids, controls=[control]))
    return pb.EmbedRequest(
        model=SMOLLM2, prompt=pb.Prompt(items=[item]), layers=[1], pooling=["mean"]
    )


class Served:
    def __init__(self, process: asyncio.subprocess.Process, stub: pb_grpc.EmbedServiceStub):
        self.process = process
        self.stub = stub

    @property
    def pid(self) -> int:
        return self.process.pid


@pytest.fixture
async def served(model_repository: Path, tmp_path: Path) -> AsyncIterator[Served]:
    """`lamina serve` with its default scheduling, serving SmolLM2 alone."""
    repository = tmp_path / "repo"
    repository.mkdir()
    (repository / SMOLLM2).symlink_to(model_repository / SMOLLM2, target_is_directory=True)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lamina.server",
        "serve",
        *("--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0"),
        *("--model-repository", str(repository), "--threads", "2"),
        *("--repository-poll-seconds", "0"),
        stderr=asyncio.subprocess.DEVNULL,
    )
    target = f"127.0.0.1:{port}"
    try:
        await wait_until_serving(target, timeout=120)
        options = [("grpc.max_receive_message_length", 64 * MIB)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            yield Served(process, pb_grpc.EmbedServiceStub(channel))
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


async def test_long_prompts_stay_under_the_peak_and_memory_comes_back(served: Served) -> None:
    await served.stub.Embed(long_prompt(16, seed=0), timeout=60)  # warm-up
    idle = kib(served.pid, "VmRSS")
    reset_peak(served.pid)

    replies = await asyncio.gather(
        *(served.stub.Embed(long_prompt(3000, seed=s), timeout=120) for s in range(1, 5))
    )
    peak = kib(served.pid, "VmHWM")
    assert all(reply.num_tokens_prompt_total == 3000 for reply in replies)
    assert peak - idle <= FOUR_LONG_PROMPTS_PEAK, (
        f"peak {peak / MIB:.0f} MiB, {(peak - idle) / MIB:.0f} MiB above idle "
        f"{idle / MIB:.0f} MiB; documented: at most {FOUR_LONG_PROMPTS_PEAK / MIB:.0f} above"
    )

    deadline = time.monotonic() + GIVEN_BACK_TIMEOUT
    while (now := kib(served.pid, "VmRSS")) > idle * (1 + RETURNED_WITHIN):
        assert time.monotonic() < deadline, (
            f"RSS {now / MIB:.0f} MiB {GIVEN_BACK_TIMEOUT:.0f} s after the last reply; "
            f"idle was {idle / MIB:.0f} MiB"
        )
        await asyncio.sleep(0.2)

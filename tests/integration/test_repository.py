"""The versioned model repository with a real running server: hot add, hot replace (in-flight
requests finish on the old version), broken versions rejected, and `lamina convert`."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.models.registry import ModelVersion
from lamina.server.server import LaminaServer
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.integration.support import eventually, settings_for, tokenized
from tests.server.test_convert_bert import random_bert_weights, write_checkpoint


def add_version(repository: Path, name: str, seed: int, tmp: Path) -> Path:
    folder = write_checkpoint(tmp / f"checkpoint-{name}-{seed}", random_bert_weights(seed))
    return convert_checkpoint(folder, repository, name, progress=lambda _: None)


def request(model: str) -> pb.EmbedRequest:
    item = pb.PromptItem(token_ids=pb.TokenIdsItem(data=[5, 6, 7]))
    return pb.EmbedRequest(
        model=model, prompt=pb.Prompt(items=[item]), layers=[-1], pooling=["mean"]
    )


class Running:
    def __init__(self, server: LaminaServer, stub: pb_grpc.EmbedServiceStub) -> None:
        self.server, self.stub = server, stub

    async def versions(self) -> dict[str, str]:
        reply = await self.stub.ModelsAvailable(pb.ModelsAvailableRequest())
        return {m.name: m.version for m in reply.models}


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    repository = tmp_path / "repo"
    add_version(repository, "tiny", seed=1, tmp=tmp_path)
    server = LaminaServer(settings_for(repository))
    port = await server.start()
    await server.load_models()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Running(server, pb_grpc.EmbedServiceStub(channel))
    await server.stop(grace_seconds=1)


async def test_a_new_model_is_served_without_a_restart(running: Running, tmp_path: Path) -> None:
    assert await running.versions() == {"tiny": "1"}
    add_version(running.server.settings.model_repository, "tiny-two", seed=2, tmp=tmp_path)

    async def listed() -> bool:
        return "tiny-two" in await running.versions()

    await eventually(listed, timeout=10, what="the server picking the new model up")
    reply = await running.stub.Embed(request("tiny-two"))
    assert reply.model_version == "tiny-two@1"


async def test_a_new_version_replaces_the_old_and_in_flight_requests_finish_on_it(
    running: Running, tmp_path: Path
) -> None:
    before = await running.stub.Embed(request("tiny"))
    # Hold the pool's inference thread so a request stays queued on version 1 across the swap.
    release = threading.Event()
    running.server.engine.runners[0]._executor.submit(release.wait)  # test-only hold
    in_flight = asyncio.ensure_future(running.stub.Embed(request("tiny")))
    # Tokenized for version 1 and admitted (it holds that version from then on).
    await eventually(lambda: tokenized(running.server, "tiny") == 2)

    add_version(running.server.settings.model_repository, "tiny", seed=3, tmp=tmp_path)

    async def replaced() -> bool:
        return (await running.versions())["tiny"] == "2"

    await eventually(replaced, timeout=10, what="the server picking the new version up")
    assert not in_flight.done()
    release.set()
    after = await running.stub.Embed(request("tiny"))
    assert after.model_version == "tiny@2"
    finished = await in_flight
    assert finished.model_version == "tiny@1"
    np.testing.assert_allclose(
        finished.embeddings["layer_3"].pooling["mean"].values,
        before.embeddings["layer_3"].pooling["mean"].values,
        rtol=1e-6,
    )
    assert not np.allclose(
        after.embeddings["layer_3"].pooling["mean"].values,
        before.embeddings["layer_3"].pooling["mean"].values,
    )


async def test_a_broken_version_is_rejected_and_the_old_keeps_serving(
    running: Running, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = running.server.registry
    scans = 0
    scan = registry.refresh

    def counted_scan() -> list[ModelVersion]:
        nonlocal scans
        scans += 1
        return scan()

    monkeypatch.setattr(registry, "refresh", counted_scan)  # what the repository watch calls
    repository = running.server.settings.model_repository
    good = repository / "tiny" / "1"
    broken = repository / "tiny" / "2"
    broken.mkdir()
    (broken / "manifest.json").write_text((good / "manifest.json").read_text())
    (broken / "tokenizer.json").write_text((good / "tokenizer.json").read_text())
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    with caplog.at_level(logging.ERROR):

        async def rejected() -> bool:
            return any("rejected tiny version 2" in r.getMessage() for r in caplog.records)

        await eventually(rejected, timeout=10, what="the broken version rejected")
    assert (await running.versions())["tiny"] == "1"
    assert (await running.stub.Embed(request("tiny"))).model_version == "tiny@1"
    rejected_at = scans
    await eventually(lambda: scans >= rejected_at + 3)  # several scans later: still not retried
    assert sum("rejected tiny version 2" in r.getMessage() for r in caplog.records) == 1


def test_lamina_convert_writes_the_next_version(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "checkpoint", random_bert_weights(4))
    repository = tmp_path / "repo"
    command = [
        sys.executable,
        "-m",
        "lamina.server",
        "convert",
        str(folder),
        "--name",
        "mine",
        "--model-repository",
        str(repository),
    ]
    first = subprocess.run(command, capture_output=True, text=True, check=True)
    second = subprocess.run(command, capture_output=True, text=True, check=True)
    assert first.stdout.strip().endswith("mine/1") and second.stdout.strip().endswith("mine/2")
    assert "building the BERT graph" in first.stderr  # progress is shown
    assert (repository / "mine" / "2" / "model.onnx").is_file()
    bad = subprocess.run(
        [*command[:4], str(tmp_path / "nowhere"), *command[5:]], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "neither a checkpoint folder, a .gguf file nor" in bad.stderr

"""A real server over a repository that misbehaves: files of the serving version rewritten in
place while it serves, and entries no model repository should hold. The server neither dies nor
changes its answers, and keeps loading what is good."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lamina.server.models.registry import ModelVersion
from lamina.server.repository.layout import list_versions
from lamina.server.server import LaminaServer
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import MINILM
from tests.integration.support import settings_for
from tests.server.test_immutable_versions import overwrite_in_place

pytestmark = pytest.mark.model

SENTENCE = "The cat sat on the mat, and then another cat sat on the cat."


def controlled_request(model: str = MINILM) -> pb.EmbedRequest:
    """A control on the first "cat", spread to similar tokens: every token embedding is read."""
    text = pb.TextItem(data=SENTENCE, controls=[pb.TextControl(start=4, length=3, factor=0.1)])
    return pb.EmbedRequest(
        model=model,
        prompt=pb.Prompt(items=[pb.PromptItem(text=text)]),
        layers=[-1],
        pooling=["mean"],
        contextual_control_threshold=0.9,
    )


def vector(reply: pb.EmbedResponse) -> list[float]:
    (layer,) = reply.embeddings.values()
    return list(layer.pooling["mean"].values)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def copy_version(source: Path, repository: Path, name: str, version: int = 1) -> Path:
    """A real copy (never a hard link: the tests rewrite these files), renamed into place."""
    staging = repository / f".{name}-staging"
    shutil.copytree(source, staging)
    (repository / name).mkdir(parents=True, exist_ok=True)
    target = repository / name / str(version)
    os.replace(staging, target)
    return target


class Served:
    def __init__(self, server: LaminaServer, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.stub = pb_grpc.EmbedServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.scans = 0
        refresh = server.registry.refresh

        def counted() -> list[ModelVersion]:
            self.scans += 1
            return refresh()

        server.registry.refresh = counted  # type: ignore[method-assign]

    @property
    def repository(self) -> Path:
        return self.server.settings.model_repository

    async def versions(self) -> dict[str, str]:
        reply = await self.stub.ModelsAvailable(pb.ModelsAvailableRequest())
        return {m.name: m.version for m in reply.models}

    async def alive(self) -> bool:
        reply = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def scanned(self, more: int) -> None:
        """Wait until the repository has been scanned `more` times again."""
        target = self.scans + more

        async def done() -> bool:
            return self.scans >= target

        await eventually(done, f"{more} more scans")


@asynccontextmanager
async def serving(repository: Path) -> AsyncIterator[Served]:
    server = LaminaServer(settings_for(repository))
    server.registry.settle_seconds = 0.2  # the files were copied a moment ago
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            served = Served(server, channel)
            await server.load_models()  # raising here is the failure this file guards against
            yield served
    finally:
        await server.stop(grace_seconds=1)


@pytest.fixture(scope="module")
def prepared(model_repository: Path) -> Path:
    return list_versions(model_repository)[MINILM][-1].path


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


REJECTED = f"rejected {MINILM} version 1"


@pytest.mark.parametrize(
    ("file", "reason"),
    [
        ("token_embeddings.npy", "token_embeddings.npy: not a .npy array"),
        ("model.onnx", "model.onnx: "),
        ("tokenizer.json", "tokenizer.json: "),
    ],
)
async def test_a_served_file_overwritten_in_place_changes_nothing(
    prepared: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, file: str, reason: str
) -> None:
    caplog.set_level(logging.INFO)
    version = copy_version(prepared, tmp_path / "repo", MINILM)
    async with serving(tmp_path / "repo") as served:
        before = vector(await served.stub.Embed(controlled_request()))
        overwrite_in_place(version / file, b"garbage")
        # At once, before any rescan: what serves reads nothing from disk.
        during = await served.stub.Embed(controlled_request())
        assert vector(during) == before

        async def rejected() -> bool:
            return bool(logged(caplog, REJECTED))

        await eventually(rejected, "the changed files to be rejected")
        (message,) = logged(caplog, REJECTED)
        assert reason in message and "the copy loaded before keeps serving" in message
        after = await served.stub.Embed(controlled_request())
        assert after.model_version == f"{MINILM}@1"
        assert vector(after) == before
        assert await served.versions() == {MINILM: "1"}
        assert await served.alive()
        await served.scanned(3)
        assert len(logged(caplog, REJECTED)) == 1  # not retried until the files change again


async def test_valid_changed_files_are_loaded_as_a_new_candidate(
    prepared: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    version = copy_version(prepared, tmp_path / "repo", MINILM)
    async with serving(tmp_path / "repo") as served:
        before = vector(await served.stub.Embed(controlled_request()))
        embeddings = np.load(version / "token_embeddings.npy")
        with open(version / "token_embeddings.npy", "r+b") as rewritten:
            np.save(rewritten, np.ones_like(embeddings))  # every token alike: the control spreads

        async def changed() -> bool:
            return vector(await served.stub.Embed(controlled_request())) != before

        await eventually(changed, "the changed token embeddings to serve")
        assert len(logged(caplog, "changed on disk")) == 1
        spread = await served.stub.Embed(controlled_request())
        assert spread.model_version == f"{MINILM}@1"

        # The graph rewritten in place with what it held: a candidate too, and it loads.
        overwrite_in_place(version / "model.onnx", (version / "model.onnx").read_bytes())

        async def reloaded() -> bool:
            return len(logged(caplog, "changed on disk")) == 2

        await eventually(reloaded, "the rewritten graph to load")
        assert vector(await served.stub.Embed(controlled_request())) == vector(spread)
        assert not logged(caplog, "rejected")


def hostile_entries(repository: Path, tmp_path: Path) -> dict[str, str]:
    """Entries that are no model or version, beside a good model: path -> what the log says."""
    good = repository / MINILM / "1"
    manifest = (good / "manifest.json").read_bytes()
    expected = {}
    for name in ("²", "٣", "02", "0"):  # isdigit, isdecimal, leading zero, zero
        (repository / MINILM / name).mkdir()
        (repository / MINILM / name / "manifest.json").write_bytes(manifest)
        expected[f"{MINILM}/{name}"] = "not a version"
    (repository / MINILM / "7").write_text("a file named like a version")
    expected[f"{MINILM}/7"] = "this is a file"
    (repository / MINILM / "8").symlink_to(tmp_path / "nowhere")
    expected[f"{MINILM}/8"] = "broken link"
    for name in ("bad name!", "café", "-dash"):
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "1" / "manifest.json").write_bytes(manifest)
        expected[name] = "not a model"
    undecodable = os.fsdecode(b"model-\xff")
    (repository / undecodable).mkdir()
    expected[undecodable] = "not a model"
    # As root, permissions do not bite: folders that cannot be read, by other means.
    (repository / "loop").symlink_to(repository / "loop")
    expected["loop"] = "broken link"
    (repository / "dangling").symlink_to(tmp_path / "nowhere")
    expected["dangling"] = "broken link"
    (repository / "notes.txt").write_text("a file where models go")
    expected["notes.txt"] = "this is a file"
    (repository / "no-manifest" / "1").mkdir(parents=True)
    expected["no-manifest/1"] = "has no manifest.json"
    (repository / "fifo" / "1").mkdir(parents=True)
    os.mkfifo(repository / "fifo" / "1" / "manifest.json")
    expected["fifo/1"] = "not a regular file"
    (repository / ".staging-of-someone").mkdir()  # hidden: skipped without a word
    return expected


async def test_a_hostile_repository_neither_stops_the_start_nor_the_scans(
    prepared: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    repository = tmp_path / "repo"
    copy_version(prepared, repository, MINILM)
    skipped = hostile_entries(repository, tmp_path)
    manifest = (repository / MINILM / "1" / "manifest.json").read_text()
    assert '"num_layers": 6,' in manifest
    broken = {  # a version folder with its manifest -> why it is rejected
        "garbage": (b"\xff{ not json", "not valid JSON"),
        "array": (b"[1, 2, 3]", "not a JSON object"),
        "huge": (
            manifest.replace('"num_layers": 6,', '"num_layers": 1000000000000,').encode(),
            "num_layers: expected an integer in 1..4096",
        ),
    }
    for name, (content, _) in broken.items():
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "1" / "manifest.json").write_bytes(content)
    async with serving(repository) as served:
        assert await served.versions() == {MINILM: "1"}
        reply = await served.stub.Embed(controlled_request())
        assert reply.model_version == f"{MINILM}@1"

        copy_version(prepared, repository, "another-model")

        async def added() -> bool:
            return "another-model" in await served.versions()

        await eventually(added, "a new good model to serve")
        assert (await served.stub.Embed(controlled_request("another-model"))).model_version == (
            "another-model@1"
        )
        await served.scanned(3)
        assert await served.alive()

    skips = logged(caplog, "skipping")
    for entry, reason in skipped.items():
        said = [m for m in skips if repr(str(repository / entry)) in m]
        assert len(said) == 1, f"{entry}: {said}"  # once, not on every scan
        assert reason in said[0], said[0]
    assert not [m for m in skips if "staging-of-someone" in m]
    for name, (_, reason) in broken.items():
        (rejection,) = logged(caplog, f"rejected {name} version 1")
        assert reason in rejection


async def test_models_available_reports_the_versions_of_each_model(
    prepared: Path, tmp_path: Path
) -> None:
    """ModelInfo.versions: the model's version serving, and still serving with the reason once
    its changed files fail to load."""
    version = copy_version(prepared, tmp_path / "repo", MINILM)
    async with serving(tmp_path / "repo") as served:
        reply = await served.stub.ModelsAvailable(pb.ModelsAvailableRequest())
        (info,) = reply.models
        serving_one = pb.ModelVersionState(model=MINILM, version=1, state="serving")
        assert list(info.versions) == [serving_one]
        overwrite_in_place(version / "model.onnx", b"garbage")

        async def failed() -> bool:
            reply = await served.stub.ModelsAvailable(pb.ModelsAvailableRequest())
            return bool(reply.models[0].versions[0].reason)

        await eventually(failed, "the changed files to be rejected")
        (info,) = (await served.stub.ModelsAvailable(pb.ModelsAvailableRequest())).models
        ((name, number, state, reason),) = [
            (v.model, v.version, v.state, v.reason) for v in info.versions
        ]
        assert (name, number, state) == (MINILM, 1, "serving")
        assert reason.startswith("its changed files failed to load: ") and "model.onnx" in reason
        assert (await served.stub.Embed(controlled_request())).model_version == f"{MINILM}@1"


async def test_models_available_reports_every_version_of_every_model(
    prepared: Path, tmp_path: Path
) -> None:
    """ModelsAvailableResponse.versions: every version of every model, by name then version,
    also a model none of whose versions serves (with why)."""
    repository = tmp_path / "repo"
    copy_version(prepared, repository, MINILM)
    (repository / "garbage" / "1").mkdir(parents=True)
    (repository / "garbage" / "1" / "manifest.json").write_bytes(b"\xff{ not json")
    async with serving(repository) as served:
        reply = await served.stub.ModelsAvailable(pb.ModelsAvailableRequest())
        assert [m.name for m in reply.models] == [MINILM]
        listed = [(v.model, v.version, v.state) for v in reply.versions]
        assert listed == [(MINILM, 1, "serving"), ("garbage", 1, "failed")]
        assert reply.versions[0] == reply.models[0].versions[0]
        assert "not valid JSON" in reply.versions[1].reason

"""The registry's one table of versions: a row per (model, version) saying "loading", "serving",
"failed" (with the reason the log gave) or "retired", read by the engine (which version serves,
what ModelsAvailable reports) while `refresh` changes it on a worker thread."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.domain import ModelVersionState, VersionState
from lamina.server.engine import Engine
from lamina.server.errors import ModelNotFound
from lamina.server.metrics import Metrics
from lamina.server.models.registry import ModelRegistry, ModelVersion
from lamina.server.repository.layout import VersionDir
from lamina.server.runtime.device import PoolSpec
from lamina.server.scheduling.policy import SchedulingPolicy
from tests.server.test_convert_bert import random_bert_weights, write_checkpoint

POOLS = (PoolSpec("default", "cpu", 1, frozenset()),)
LOADING, SERVING, FAILED, RETIRED = (
    VersionState.LOADING,
    VersionState.SERVING,
    VersionState.FAILED,
    VersionState.RETIRED,
)
WAIT_SECONDS = 60


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT version, copied into each test's repository."""
    root = tmp_path_factory.mktemp("table")
    folder = write_checkpoint(root / "checkpoint", random_bert_weights(3))
    return convert_checkpoint(folder, root / "repo", "tiny", progress=lambda _: None)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def add(repository: Path, converted: Path) -> Callable[..., Path]:
    def add(version: int, model: str = "tiny") -> Path:
        target = repository / model / str(version)
        shutil.copytree(converted, target)
        return target

    return add


def registry_of(repository: Path) -> ModelRegistry:
    repository.mkdir(parents=True, exist_ok=True)
    return ModelRegistry(repository, POOLS, settle_seconds=0)


def table(registry: ModelRegistry) -> list[tuple[str, int, str, str | None]]:
    return [(s.model, s.version, s.state.value, s.reason) for s in registry.states()]


def break_manifest(version: Path) -> None:
    (version / "manifest.json").write_bytes(b"[1, 2]")


def rejection(caplog: pytest.LogCaptureFixture, model: str, version: int) -> str:
    """The one message that logged the rejection of a version."""
    (message,) = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith(f"rejected {model} version {version} ")
    ]
    return message


@pytest.fixture
def blocked_load(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[ModelRegistry], Gate]]:
    gates: list[Gate] = []

    def block(registry: ModelRegistry) -> Gate:
        gate = Gate(registry)
        monkeypatch.setattr(registry, "_load", gate.load)
        gates.append(gate)
        return gate

    yield block
    for gate in gates:
        gate.release.set()  # never leave a refresh thread waiting


class Gate:
    """The registry's `_load`, held until released: a refresh on another thread stops inside it."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._load = registry._load
        self.entered = threading.Event()
        self.release = threading.Event()

    def load(self, entry: VersionDir) -> ModelVersion:
        self.entered.set()
        assert self.release.wait(WAIT_SECONDS), "the test never released the load"
        return self._load(entry)


class Refreshing:
    """`registry.refresh()` on a worker thread, as the engine runs it."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.result: list[ModelVersion] | None = None
        self.thread = threading.Thread(target=self._run, args=(registry,), daemon=True)
        self.thread.start()

    def _run(self, registry: ModelRegistry) -> None:
        self.result = registry.refresh()

    def join(self) -> list[ModelVersion]:
        self.thread.join(WAIT_SECONDS)
        assert not self.thread.is_alive() and self.result is not None
        return self.result


def test_a_loaded_version_serves(repository: Path, add: Callable[..., Path]) -> None:
    path = add(1)
    registry = registry_of(repository)
    assert registry.states() == [] and registry.serving("tiny") is None
    (version,) = registry.refresh()
    assert registry.states() == [ModelVersionState("tiny", 1, SERVING, None)]
    assert registry.serving("tiny") is version and registry.served() == {"tiny": version}
    assert list(registry.served()) == ["tiny"]
    row = registry.row("tiny", 1)
    assert row is not None and row.path == path and row.loaded is version and row.rejected is None
    assert registry.refresh() == []  # nothing changed: the same row
    assert registry.row("tiny", 1) is row


def test_a_broken_version_fails_with_its_reason_and_the_older_keeps_serving(
    repository: Path, add: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    add(1)
    registry = registry_of(repository)
    (old,) = registry.refresh()
    broken = add(2)
    break_manifest(broken)
    with caplog.at_level(logging.ERROR):
        assert registry.refresh() == []
    assert table(registry)[0] == ("tiny", 1, "serving", None)
    _, _, state, reason = table(registry)[1]
    assert state == "failed" and reason is not None
    assert reason.startswith("ValueError: ") and "not a JSON object" in reason
    assert rejection(caplog, "tiny", 2).endswith(f": {reason}")  # the reason, as logged
    assert registry.serving("tiny") is old
    row = registry.row("tiny", 2)
    assert row is not None and row.loaded is None and row.rejected == row.stamp
    with caplog.at_level(logging.ERROR):
        assert registry.refresh() == []  # not tried again until its files change
    assert len([r for r in caplog.records if "rejected tiny" in r.getMessage()]) == 1
    assert registry.row("tiny", 2) is row


def test_fixed_files_serve_and_retire_the_older(repository: Path, add: Callable[..., Path]) -> None:
    add(1)
    broken = add(2)
    manifest = (broken / "manifest.json").read_bytes()
    break_manifest(broken)
    registry = registry_of(repository)
    (old,) = registry.refresh()  # 2 fails, 1 serves
    assert [s.state for s in registry.states()] == [SERVING, FAILED]
    assert old.version == 1
    (broken / "manifest.json").write_bytes(manifest)
    (new,) = registry.refresh()
    assert new.version == 2 and registry.serving("tiny") is new
    assert table(registry) == [("tiny", 1, "retired", None), ("tiny", 2, "serving", None)]
    retired = registry.row("tiny", 1)
    assert retired is not None and retired.loaded is None  # the registry lets the old copy go


def test_a_newer_version_retires_the_older(repository: Path, add: Callable[..., Path]) -> None:
    add(1)
    registry = registry_of(repository)
    (old,) = registry.refresh()
    add(2)
    (new,) = registry.refresh()
    assert (old.version, new.version) == (1, 2)
    assert table(registry) == [("tiny", 1, "retired", None), ("tiny", 2, "serving", None)]
    assert registry.served() == {"tiny": new}
    assert registry.refresh() == []


def test_the_newest_loadable_version_serves_at_once_and_the_rest_stay_unread(
    repository: Path, add: Callable[..., Path]
) -> None:
    for number in (1, 2, 3):
        add(number)
    break_manifest(repository / "tiny" / "3")
    registry = registry_of(repository)
    (version,) = registry.refresh()
    assert version.version == 2
    # 1 was never loaded: it has no row; 3 failed, 2 serves.
    assert [(s.version, s.state) for s in registry.states()] == [(2, SERVING), (3, FAILED)]


def test_changed_files_of_the_serving_version_that_fail_keep_it_serving_with_the_reason(
    repository: Path, add: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    path = add(1)
    registry = registry_of(repository)
    (version,) = registry.refresh()
    graph = (path / "model.onnx").read_bytes()
    (path / "model.onnx").write_bytes(b"garbage")
    with caplog.at_level(logging.ERROR):
        assert registry.refresh() == []
    ((model, number, state, reason),) = table(registry)
    assert (model, number, state) == ("tiny", 1, "serving")
    assert reason is not None and reason.startswith("its changed files failed to load: ")
    logged = rejection(caplog, "tiny", 1)
    assert "the copy loaded before keeps serving" in logged
    assert logged.endswith(reason.removeprefix("its changed files failed to load:"))
    assert registry.serving("tiny") is version
    with caplog.at_level(logging.ERROR):
        assert registry.refresh() == []  # not tried again until they change again
    assert len([r for r in caplog.records if "rejected tiny" in r.getMessage()]) == 1

    (path / "model.onnx").write_bytes(graph)  # good again: a candidate that loads
    (reloaded,) = registry.refresh()
    assert reloaded is not version and registry.serving("tiny") is reloaded
    assert table(registry) == [("tiny", 1, "serving", None)]


def test_a_row_reads_loading_while_the_version_loads(
    repository: Path, add: Callable[..., Path], blocked_load: Callable[[ModelRegistry], Gate]
) -> None:
    add(1)
    registry = registry_of(repository)
    gate = blocked_load(registry)
    refreshing = Refreshing(registry)
    assert gate.entered.wait(WAIT_SECONDS)
    assert registry.states() == [ModelVersionState("tiny", 1, LOADING, None)]
    assert registry.serving("tiny") is None and registry.served() == {}
    gate.release.set()
    (version,) = refreshing.join()
    assert registry.states() == [ModelVersionState("tiny", 1, SERVING, None)]
    assert registry.serving("tiny") is version


def test_a_newer_version_reads_loading_beside_the_serving_one(
    repository: Path, add: Callable[..., Path], blocked_load: Callable[[ModelRegistry], Gate]
) -> None:
    add(1)
    registry = registry_of(repository)
    (old,) = registry.refresh()
    add(2)
    gate = blocked_load(registry)
    refreshing = Refreshing(registry)
    assert gate.entered.wait(WAIT_SECONDS)
    assert table(registry) == [("tiny", 1, "serving", None), ("tiny", 2, "loading", None)]
    assert registry.serving("tiny") is old
    gate.release.set()
    (new,) = refreshing.join()
    assert table(registry) == [("tiny", 1, "retired", None), ("tiny", 2, "serving", None)]
    assert registry.serving("tiny") is new


def test_the_serving_version_keeps_its_row_while_its_changed_files_load(
    repository: Path, add: Callable[..., Path], blocked_load: Callable[[ModelRegistry], Gate]
) -> None:
    path = add(1)
    registry = registry_of(repository)
    (old,) = registry.refresh()
    tokenizer = path / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text())  # the same content, new file times
    gate = blocked_load(registry)
    refreshing = Refreshing(registry)
    assert gate.entered.wait(WAIT_SECONDS)
    assert table(registry) == [("tiny", 1, "serving", None)]
    assert registry.serving("tiny") is old
    gate.release.set()
    (new,) = refreshing.join()
    assert new is not old and registry.serving("tiny") is new


def test_files_changing_while_loading_leave_the_row_loading_until_the_next_scan(
    repository: Path, add: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    add(1)
    registry = registry_of(repository)
    load = registry._load

    def load_then_touch(entry: VersionDir) -> ModelVersion:
        loaded = load(entry)
        tokenizer = entry.path / "tokenizer.json"
        tokenizer.write_text(tokenizer.read_text())
        return loaded

    monkeypatch.setattr(registry, "_load", load_then_touch)
    assert registry.refresh() == []  # neither served nor rejected
    assert table(registry) == [("tiny", 1, "loading", None)]
    monkeypatch.setattr(registry, "_load", load)
    (version,) = registry.refresh()
    assert table(registry) == [("tiny", 1, "serving", None)] and version.version == 1


def test_a_failed_version_whose_files_change_is_loading_then_tried_again(
    repository: Path,
    add: Callable[..., Path],
    converted: Path,
    blocked_load: Callable[[ModelRegistry], Gate],
) -> None:
    path = add(1)
    break_manifest(path)
    registry = registry_of(repository)
    assert registry.refresh() == []
    assert [s.state for s in registry.states()] == [FAILED]
    shutil.copy(converted / "manifest.json", path / "manifest.json")
    gate = blocked_load(registry)
    refreshing = Refreshing(registry)
    assert gate.entered.wait(WAIT_SECONDS)
    assert table(registry) == [("tiny", 1, "loading", None)]
    gate.release.set()
    (version,) = refreshing.join()
    assert table(registry) == [("tiny", 1, "serving", None)] and version.version == 1


def test_a_version_gone_from_disk_drops_out_unless_it_serves(
    repository: Path, add: Callable[..., Path]
) -> None:
    add(1)
    add(2)
    break_manifest(repository / "tiny" / "2")
    registry = registry_of(repository)
    registry.refresh()
    assert [s.state for s in registry.states()] == [SERVING, FAILED]
    shutil.rmtree(repository / "tiny" / "2")
    registry.refresh()
    assert [(s.version, s.state) for s in registry.states()] == [(1, SERVING)]

    add(3)
    (three,) = registry.refresh()
    assert [(s.version, s.state) for s in registry.states()] == [(1, RETIRED), (3, SERVING)]
    shutil.rmtree(repository / "tiny" / "1")  # retired and gone: dropped
    shutil.rmtree(repository / "tiny" / "3")  # serving and gone: still serves from memory
    assert registry.refresh() == []
    assert registry.states() == [ModelVersionState("tiny", 3, SERVING, None)]
    assert registry.serving("tiny") is three


def test_a_model_whose_only_version_failed_is_listed_but_serves_nothing(
    repository: Path, add: Callable[..., Path]
) -> None:
    add(1)
    break_manifest(add(1, model="broken"))
    registry = registry_of(repository)
    (version,) = registry.refresh()
    assert [(s.model, s.state) for s in registry.states()] == [
        ("broken", FAILED),
        ("tiny", SERVING),
    ]
    assert registry.served() == {"tiny": version} and registry.serving("broken") is None
    assert registry.states("broken")[0].reason is not None
    assert [s.model for s in registry.states("tiny")] == ["tiny"]


def test_readers_on_other_threads_see_one_serving_version_throughout(
    repository: Path, add: Callable[..., Path]
) -> None:
    """The event loop reads while refresh writes: every read sees a whole table, in which a
    model that served keeps exactly one serving version."""
    add(1)
    registry = registry_of(repository)
    registry.refresh()
    stop = threading.Event()
    seen: list[object] = []

    def read() -> None:
        while not stop.is_set():
            try:
                serving = [s for s in registry.states() if s.state is SERVING]
                if len(serving) != 1 or registry.serving("tiny") is None:
                    seen.append(serving)
            except Exception as error:  # e.g. a dict changing size while read
                seen.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for version in (2, 3, 4):
            add(version)
            (new,) = registry.refresh()
            assert new.version == version
    finally:
        stop.set()
        reader.join(WAIT_SECONDS)
    assert seen == []
    assert [s.state for s in registry.states()] == [RETIRED, RETIRED, RETIRED, SERVING]


async def test_the_engine_asks_the_registry(repository: Path, add: Callable[..., Path]) -> None:
    add(1)
    break_manifest(add(2))
    break_manifest(add(1, model="broken"))
    engine = Engine(registry_of(repository), SchedulingPolicy(), Metrics())
    await engine.refresh()
    assert "tiny" in engine and "broken" not in engine
    (described,) = engine.models()
    assert (described.name, described.version) == ("tiny", 1)
    assert [(s.version, s.state) for s in described.versions] == [(1, SERVING), (2, FAILED)]
    assert [(s.model, s.version, s.state) for s in engine.version_states()] == [
        ("broken", 1, FAILED),
        ("tiny", 1, SERVING),
        ("tiny", 2, FAILED),
    ]
    with pytest.raises(ModelNotFound, match=r"available: tiny$"):  # the serving names only
        await engine.tokenize("broken", "hello")
    add(3)
    await engine.refresh()
    assert engine.models()[0].version == 3
    assert engine.metrics.model_version.labels("tiny")._value.get() == 3

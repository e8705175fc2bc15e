"""A loaded model version lives in memory: nothing of it stays mapped from disk, so files
rewritten in place change nothing that serves; changed files are a candidate that replaces the
serving copy only if it loads. And nothing in the repository makes the registry's refresh raise.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.domain import TokenControl, TokenIdsItem
from lamina.server.models.loaded import LoadedModel, VersionContents
from lamina.server.models.registry import ModelRegistry, ModelVersion
from lamina.server.prompt import EncodedPrompt
from lamina.server.repository.layout import VersionDir
from lamina.server.repository.manifest import Manifest
from lamina.server.runtime.batch import Batch
from lamina.server.runtime.device import PoolSpec
from tests.server.test_convert_bert import LAYERS, random_bert_weights, write_checkpoint

POOLS = (PoolSpec("default", "cpu", 1, frozenset()),)
IDS = [2, 4, 9, 5, 11, 7, 3]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT version, to be copied by each test (tests rewrite its files)."""
    root = tmp_path_factory.mktemp("immutable")
    folder = write_checkpoint(root / "checkpoint", random_bert_weights(7))
    return convert_checkpoint(folder, root / "repo", "tiny", progress=lambda _: None)


@pytest.fixture
def repository(tmp_path: Path, converted: Path) -> Path:
    repository = tmp_path / "repo"
    shutil.copytree(converted, repository / "tiny" / "1")
    return repository


def quick(repository: Path) -> ModelRegistry:
    """Files copied or rewritten a moment ago are waited for only briefly."""
    return ModelRegistry(repository, POOLS, settle_seconds=0.05)


def hidden_states(model: LoadedModel) -> dict[int, np.ndarray]:
    prompt = EncodedPrompt(np.asarray(IDS, np.int64), np.ones(len(IDS), np.float32))
    return model.session.run(Batch.pad([prompt], [True], 0), range(LAYERS + 1))


def contextual_factors(version: ModelVersion) -> np.ndarray:
    """The factors of a control spread by token-embedding similarity (all rows read)."""
    item = TokenIdsItem(tuple(IDS), (TokenControl(0, 0.25),))
    factors: np.ndarray = version.encoder.encode((item,), 0.5).control_factors
    return factors


def mapped_files() -> str:
    with open("/proc/self/maps") as maps:
        return maps.read()


def overwrite_in_place(path: Path, data: bytes) -> None:
    """Truncate and rewrite the same inode: what crashes a process that maps the file."""
    inode = path.stat().st_ino
    with open(path, "r+b") as file:
        file.truncate(0)
        file.write(data)
    assert path.stat().st_ino == inode


def test_nothing_of_a_loaded_version_stays_mapped(repository: Path) -> None:
    (version,) = quick(repository).refresh()
    assert str(repository) not in mapped_files()
    embeddings = version.encoder.token_embeddings
    assert embeddings is not None
    assert not isinstance(embeddings, np.memmap) and not embeddings.flags.writeable


@pytest.mark.parametrize("file", ["token_embeddings.npy", "model.onnx", "tokenizer.json"])
def test_a_file_overwritten_in_place_changes_nothing_that_serves(
    repository: Path, file: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = quick(repository)
    (version,) = registry.refresh()
    states, factors = hidden_states(version.primary), contextual_factors(version)
    overwrite_in_place(repository / "tiny" / "1" / file, b"garbage")
    # Every row of the embeddings and every weight is read again: no SIGBUS, the same answers.
    np.testing.assert_array_equal(contextual_factors(version), factors)
    for layer, state in hidden_states(version.primary).items():
        np.testing.assert_array_equal(state, states[layer])
    with caplog.at_level(logging.ERROR):
        assert registry.refresh() == []  # the changed files are a candidate, and it fails
        assert registry.refresh() == []  # and is not tried again until they change again
    rejections = [
        r.getMessage() for r in caplog.records if "rejected tiny version 1" in r.getMessage()
    ]
    assert len(rejections) == 1
    assert "the copy loaded before keeps serving" in rejections[0] and file in rejections[0]
    np.testing.assert_array_equal(contextual_factors(version), factors)

    overwrite_in_place(repository / "tiny" / "1" / file, b"still garbage")
    with caplog.at_level(logging.ERROR):
        assert registry.refresh() == []
    assert sum("rejected tiny version 1" in r.getMessage() for r in caplog.records) == 2


def test_a_valid_change_replaces_the_serving_copy(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = quick(repository)
    (old,) = registry.refresh()
    before = contextual_factors(old)
    path = repository / "tiny" / "1" / "token_embeddings.npy"
    original = np.load(path)
    with open(path, "r+b") as file:  # in place, a valid array: every token alike
        np.save(file, np.ones_like(original))
    with caplog.at_level(logging.INFO):
        (new,) = registry.refresh()
    assert new.model_version == old.model_version == "tiny@1"
    assert "changed on disk" in caplog.text
    assert (contextual_factors(new) == 0.25).sum() > (before == 0.25).sum()
    np.testing.assert_array_equal(contextual_factors(old), before)  # in flight on the old copy
    assert registry.refresh() == []


def test_a_version_changing_while_it_loads_is_tried_again(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = quick(repository)
    load = registry._load
    calls: list[VersionDir] = []

    def load_then_touch(entry: VersionDir) -> ModelVersion:
        loaded = load(entry)
        if not calls:  # the first time, a file changes while it loads
            (entry.path / "tokenizer.json").write_text((entry.path / "tokenizer.json").read_text())
        calls.append(entry)
        return loaded

    monkeypatch.setattr(registry, "_load", load_then_touch)
    assert registry.refresh() == []  # neither served nor rejected
    (version,) = registry.refresh()
    assert version.model_version == "tiny@1" and len(calls) == 2


def test_files_just_written_are_read_once_they_settle(
    repository: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """File times are coarse: a write right after a stamp could go unnoticed, so nothing changed
    in the last `settle_seconds` is read yet; what still changes is looked at again later."""
    tokenizer = repository / "tiny" / "1" / "tokenizer.json"
    sleep = time.sleep

    def written_meanwhile(seconds: float) -> None:
        sleep(seconds)
        tokenizer.write_text(tokenizer.read_text())

    registry = ModelRegistry(repository, POOLS, settle_seconds=0.5)
    monkeypatch.setattr(time, "sleep", written_meanwhile)
    with caplog.at_level(logging.INFO):
        assert registry.refresh() == []  # still being written: neither served nor rejected
    assert not caplog.records
    monkeypatch.setattr(time, "sleep", sleep)
    started = time.monotonic()
    (version,) = registry.refresh()
    assert time.monotonic() - started >= 0.4  # it waited for the last write to settle
    assert version.model_version == "tiny@1"
    assert registry.refresh() == []  # settled now: nothing to wait for, nothing to load


def with_external_data(version: Path, location: str) -> None:
    graph = onnx.load(str(version / "model.onnx"))
    onnx.save_model(
        graph,
        str(version / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=256,
    )


def test_external_data_is_read_into_memory(repository: Path) -> None:
    version = repository / "tiny" / "1"
    with_external_data(version, "weights.bin")
    contents = VersionContents.read(version)
    assert set(contents.external_data) == {"weights.bin"}
    model = LoadedModel.load(
        VersionDir("tiny", 1, version),
        threads=1,
        providers=["CPUExecutionProvider"],
        contents=contents,
    )
    assert "weights.bin" not in mapped_files()
    states = hidden_states(model)
    overwrite_in_place(version / "weights.bin", b"")
    for layer, state in hidden_states(model).items():
        np.testing.assert_array_equal(state, states[layer])


def test_external_data_outside_the_version_is_refused(repository: Path, tmp_path: Path) -> None:
    version = repository / "tiny" / "1"
    with_external_data(version, "weights.bin")
    graph = onnx.load(str(version / "model.onnx"), load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../../weights.bin"
    shutil.move(version / "weights.bin", tmp_path / "weights.bin")
    onnx.save_model(graph, str(version / "model.onnx"))
    with pytest.raises(ValueError, match="is not a file inside the version folder"):
        VersionContents.read(version)


def manifest_text(repository: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((repository / "tiny" / "1" / "manifest.json").read_text())
    return data


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json {", "not valid JSON"),
        ("\xff", "not valid JSON"),
        ("[1, 2, 3]", "not a JSON object"),
        ("null", "not a JSON object"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_a_manifest_that_is_no_json_object(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Manifest.parse(text.encode("latin-1"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_layers", 10**9, "num_layers: expected an integer in 1..4096"),
        ("num_layers", "6", "num_layers: expected an integer"),
        ("num_layers", True, "num_layers: expected an integer"),
        ("vocab_size", -1, "vocab_size: expected an integer"),
        ("hidden_size", 1.5, "hidden_size: expected an integer"),
        ("graph", "../other/model.onnx", "graph: expected the name of a file"),
        ("graph", "/etc/passwd", "graph: expected the name of a file"),
        ("graph", "", "graph: expected the name of a file"),
        ("tokenizer", 3, "tokenizer: expected the name of a file"),
        ("token_embeddings", ".hidden", "token_embeddings: expected the name of a file"),
        ("description", ["a"], "description: expected a string"),
        ("trained", "yes", "trained: expected true or false"),
        ("extra", [], "extra: expected an object"),
        ("image", {"size": 224}, "image: expected exactly the fields"),
        ("image", [], "image: expected an object"),
        ("semantic", 5, "semantic: expected an object"),
        ("architecture", None, "architecture: expected a string"),
        ("format", 99, "format 99 is not"),
    ],
)
def test_a_manifest_with_a_bad_field(
    repository: Path, field: str, value: object, message: str
) -> None:
    data = manifest_text(repository)
    data[field] = value
    with pytest.raises(ValueError, match=message):
        Manifest.parse(json.dumps(data))


def test_a_manifest_missing_a_field(repository: Path) -> None:
    data = manifest_text(repository)
    del data["hidden_size"]
    with pytest.raises(ValueError, match="hidden_size"):
        Manifest.parse(json.dumps(data))


def npy_header(shape: tuple[int, ...], dtype: str = "<f2") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"garbage", "not a .npy array"),
        (b"", "not a .npy array"),
        (npy_header((10**12, 8)) + b"\0" * 16, "bytes of data for shape"),  # nothing allocated
        (npy_header((300, 8), "<i4") + b"\0" * 300 * 8 * 4, "expected floats"),
        (npy_header((300,)) + b"\0" * 600, "is not \\[rows >= vocab_size"),
        (npy_header((2, 8)) + b"\0" * 32, "is not \\[rows >= vocab_size"),
    ],
)
def test_token_embeddings_are_checked_before_they_are_read(
    repository: Path, data: bytes, message: str
) -> None:
    version = repository / "tiny" / "1"
    (version / "token_embeddings.npy").write_bytes(data)
    with pytest.raises(ValueError, match=message):
        VersionContents.read(version)


def test_token_embeddings_in_fortran_order(repository: Path) -> None:
    version = repository / "tiny" / "1"
    original = np.load(version / "token_embeddings.npy")
    np.save(version / "token_embeddings.npy", np.asfortranarray(original))
    embeddings = VersionContents.read(version).token_embeddings
    assert embeddings is not None
    np.testing.assert_array_equal(embeddings, original)


def test_a_fifo_in_place_of_a_file_never_blocks(repository: Path) -> None:
    version = repository / "tiny" / "1"
    (version / "tokenizer.json").unlink()
    os.mkfifo(version / "tokenizer.json")
    errors: list[BaseException] = []

    def read() -> None:
        try:
            VersionContents.read(version)
        except BaseException as error:
            errors.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert len(errors) == 1 and "is not a regular file" in str(errors[0])


def test_refresh_never_raises_and_says_each_problem_once(
    repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = repository / "tiny" / "1"
    for odd in ("²", "٣", "01"):
        shutil.copytree(good, repository / "tiny" / odd)
    (repository / "tiny" / "7").write_text("a file named like a version")
    (repository / "bad name").mkdir()
    (repository / "loop").symlink_to(repository / "loop")
    (repository / "dangling").symlink_to(tmp_path / "nowhere")
    for name, manifest in [("garbage", b"\xff not json"), ("array", b"[1, 2]")]:
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "1" / "manifest.json").write_bytes(manifest)
    shutil.copytree(good, repository / "fifo" / "1")
    (repository / "fifo" / "1" / "model.onnx").unlink()
    os.mkfifo(repository / "fifo" / "1" / "model.onnx")
    registry = quick(repository)
    with caplog.at_level(logging.WARNING):
        (version,) = registry.refresh()
        assert registry.refresh() == []
        assert registry.refresh() == []
    assert version.model_version == "tiny@1"
    messages = [r.getMessage() for r in caplog.records]
    for entry in ("tiny/²", "tiny/٣", "tiny/01", "tiny/7", "bad name", "loop", "dangling"):
        said = [m for m in messages if m.startswith("skipping") and f"/{entry}'" in m]
        assert len(said) == 1, (entry, messages)
    for name, reason in [
        ("garbage", "not valid JSON"),
        ("array", "not a JSON object"),
        ("fifo", "not a regular file"),
    ]:
        said = [m for m in messages if f"rejected {name} version 1" in m]
        assert len(said) == 1 and reason in said[0], (name, messages)

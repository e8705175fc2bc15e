"""Scanning the model repository (layout.list_versions) and naming new versions (write_version):
every odd entry is skipped with a reason, none stops the scan of the others."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

from lamina.server.convert.write import write_version
from lamina.server.repository.layout import (
    MODEL_NAME_RULE,
    VERSION_NAME_RULE,
    VersionDir,
    is_model_name,
    list_versions,
    parse_version,
)
from lamina.server.repository.manifest import Manifest

FULLWIDTH_ONE = "\uff11"
MANIFEST = Manifest(
    architecture="bert",
    num_layers=2,
    hidden_size=8,
    max_context_size=16,
    vocab_size=10,
    pad_token_id=0,
)


def version(repository: Path, model: str, name: str) -> Path:
    path = repository / model / name
    path.mkdir(parents=True)
    MANIFEST.write(path)
    return path


class Skips:
    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def __call__(self, path: Path, reason: str) -> None:
        assert str(path) not in self.seen, f"{path} reported twice in one scan"
        self.seen[str(path)] = reason


def scan(repository: Path) -> tuple[dict[str, list[int]], Skips]:
    skips = Skips()
    found = list_versions(repository, on_skip=skips)
    return {name: [v.version for v in versions] for name, versions in found.items()}, skips


@pytest.mark.parametrize("name", ["1", "2", "10", "123456789012345678"])
def test_ascii_decimal_names_are_versions(name: str) -> None:
    assert parse_version(name) == int(name)


@pytest.mark.parametrize(
    "name",
    [
        "²",  # str.isdigit() accepts it, int() does not
        "٣",  # Arabic-Indic three: str.isdecimal() and int() accept it
        FULLWIDTH_ONE,  # int() accepts it too
        "0",
        "01",
        "007",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1\n",
        "1.0",
        "1e3",
        "1_000",
        "v1",
        "",
        "1234567890123456789",  # 19 digits
    ],
)
def test_other_names_are_not_versions(name: str) -> None:
    assert parse_version(name) is None


@pytest.mark.parametrize(
    "name", ["all-minilm-l6-v2", "a", "Model_1.2-x", "9lives", "x" * 128, "a..b"]
)
def test_valid_model_names(name: str) -> None:
    assert is_model_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "bad name", "bad!", "café", "modèle", "٣", "-leading", "_leading", ".hidden", "x" * 129,
     "a/b", "a\\b", "tab\there", "new\nline"],
)  # fmt: skip
def test_invalid_model_names(name: str) -> None:
    assert not is_model_name(name)


def test_versions_sort_as_numbers_and_odd_names_are_skipped(tmp_path: Path) -> None:
    for name in ("1", "2", "10", "²", "٣", FULLWIDTH_ONE, "0", "01", "v3", "2.5"):
        version(tmp_path, "model", name)
    found, skips = scan(tmp_path)
    assert found == {"model": [1, 2, 10]}
    odd = {"²", "٣", FULLWIDTH_ONE, "0", "01", "v3", "2.5"}
    assert set(skips.seen) == {str(tmp_path / "model" / name) for name in odd}
    assert all(reason == f"not a version: {VERSION_NAME_RULE}" for reason in skips.seen.values())


def test_only_odd_versions_leave_the_model_out_but_not_the_others(tmp_path: Path) -> None:
    version(tmp_path, "odd", "²")
    version(tmp_path, "good", "1")
    found, skips = scan(tmp_path)
    assert found == {"good": [1]}
    assert list(skips.seen) == [str(tmp_path / "odd" / "²")]


def test_a_file_named_like_a_version_is_skipped(tmp_path: Path) -> None:
    version(tmp_path, "model", "1")
    (tmp_path / "model" / "2").write_text("not a folder")
    found, skips = scan(tmp_path)
    assert found == {"model": [1]}
    assert skips.seen == {
        str(tmp_path / "model" / "2"): "a version must be a folder; this is a file"
    }


def test_a_version_without_a_usable_manifest_is_skipped(tmp_path: Path) -> None:
    version(tmp_path, "model", "1")
    (tmp_path / "model" / "2").mkdir()
    (tmp_path / "model" / "3" / "manifest.json").mkdir(parents=True)
    os.mkfifo(version(tmp_path, "model", "4") / "fifo")
    (tmp_path / "model" / "5").mkdir()
    os.mkfifo(tmp_path / "model" / "5" / "manifest.json")
    found, skips = scan(tmp_path)
    assert found == {"model": [1, 4]}  # a stray FIFO beside the manifest is the loader's concern
    assert skips.seen == {
        str(tmp_path / "model" / "2"): "the version has no manifest.json",
        str(tmp_path / "model" / "3"): "its manifest.json is not a regular file",
        str(tmp_path / "model" / "5"): "its manifest.json is not a regular file",
    }


def test_links(tmp_path: Path) -> None:
    target = version(tmp_path / "elsewhere", "model", "1")
    repository = tmp_path / "repo"
    version(repository, "model", "1")
    (repository / "model" / "2").symlink_to(target)  # a linked version folder is a version
    (repository / "model" / "3").symlink_to(tmp_path / "nowhere")
    (repository / "model" / "4").symlink_to(repository / "model" / "4")  # a loop
    (repository / "linked").symlink_to(target.parent)  # a linked model folder is a model
    (repository / "dangling").symlink_to(tmp_path / "nowhere")
    found, skips = scan(repository)
    assert found == {"linked": [1], "model": [1, 2]}
    assert skips.seen[str(repository / "model" / "3")].startswith(
        "a version must be a folder; this is a broken link"
    )
    assert "broken link" in skips.seen[str(repository / "model" / "4")]
    assert "broken link" in skips.seen[str(repository / "dangling")]
    assert len(skips.seen) == 3


def test_bad_model_names_and_files_at_the_top_are_skipped(tmp_path: Path) -> None:
    version(tmp_path, "good", "1")
    for name in ("bad name", "café", "-x", "x" * 129):
        version(tmp_path, name, "1")
    (tmp_path / "README.txt").write_text("a file where models are")
    undecodable = os.fsdecode(b"\xff\xfe")
    version(tmp_path, undecodable, "1")
    found, skips = scan(tmp_path)
    assert found == {"good": [1]}
    for name in ("bad name", "café", "-x", "x" * 129, undecodable):
        assert skips.seen[str(tmp_path / name)] == f"not a model: {MODEL_NAME_RULE}"
    assert skips.seen[str(tmp_path / "README.txt")] == "a model must be a folder; this is a file"
    assert len(skips.seen) == 6


def test_hidden_entries_are_skipped_silently(tmp_path: Path) -> None:
    version(tmp_path, "good", "1")
    version(tmp_path, ".good-staging", "1")  # a version being written by write_version
    version(tmp_path, "good", ".2-partial")
    (tmp_path / ".DS_Store").write_text("")
    found, skips = scan(tmp_path)
    assert found == {"good": [1]}
    assert skips.seen == {}


def test_an_unreadable_folder_is_skipped_and_the_rest_scanned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Permissions do not bite as root, so the folder's listing fails by other means."""
    version(tmp_path, "a-good", "1")
    version(tmp_path, "unreadable", "1")
    version(tmp_path, "z-good", "2")
    listdir = os.listdir

    def failing(path: os.PathLike[str] | str) -> list[str]:
        if Path(path).name == "unreadable":
            raise PermissionError(13, "Permission denied", str(path))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", failing)
    found, skips = scan(tmp_path)
    assert found == {"a-good": [1], "z-good": [2]}
    assert skips.seen == {
        str(tmp_path / "unreadable"): "cannot read the model folder: Permission denied"
    }


def test_a_repository_that_is_missing_or_not_a_folder(tmp_path: Path) -> None:
    found, skips = scan(tmp_path / "missing")
    assert found == {} and skips.seen == {}  # nothing prepared yet: nothing to say
    (tmp_path / "file").write_text("")
    found, skips = scan(tmp_path / "file")
    assert found == {}
    assert skips.seen == {str(tmp_path / "file"): "cannot read the repository: Not a directory"}


def test_the_default_is_to_log_each_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    version(tmp_path, "model", "²")
    assert list_versions(tmp_path) == {}
    assert "skipping" in caplog.text and "²" in caplog.text


def test_entries_are_what_the_loader_gets(tmp_path: Path) -> None:
    path = version(tmp_path, "model", "3")
    assert list_versions(tmp_path) == {"model": [VersionDir("model", 3, path)]}


def tiny_graph() -> onnx.ModelProto:
    return onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))


def test_write_version_ignores_what_is_no_version(tmp_path: Path) -> None:
    version(tmp_path, "model", "2")
    for odd in ("²", "٣", "10x", "07"):
        (tmp_path / "model" / odd).mkdir()
    written = write_version(tmp_path, "model", tiny_graph(), MANIFEST, progress=lambda _: None)
    assert written == tmp_path / "model" / "3"
    assert scan(tmp_path)[0] == {"model": [2, 3]}


@pytest.mark.parametrize("name", ["bad name", "café", "../escape", ".hidden"])
def test_write_version_refuses_a_name_nothing_would_serve(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="is not valid"):
        write_version(tmp_path, name, tiny_graph(), MANIFEST, progress=lambda _: None)
    assert list(tmp_path.iterdir()) == []

"""The on-disk model repository: `<repository>/<name>/<version>/` with a manifest, an ONNX graph
and a tokenizer.json. Versions are positive integers; the highest valid one serves.

Scanning never fails on what it finds: an entry that is not a model or a version (a bad name, a
file where a folder belongs, a broken link, a folder that cannot be read) is skipped with a
reason, and the rest of the repository is scanned as usual."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lamina.server.repository.files import describe
from lamina.server.repository.manifest import MANIFEST_FILE

log = logging.getLogger(__name__)

# ASCII only, spelled out: `\d`, str.isdigit and str.isdecimal all accept other scripts' digits.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MODEL_NAME_RULE = (
    "a model name is 1 to 128 ASCII letters, digits, '.', '_' and '-', starting with a letter "
    "or digit"
)
VERSION_NAME = re.compile(r"[1-9][0-9]{0,17}")
VERSION_NAME_RULE = (
    "a version folder is named by a positive ASCII decimal integer without leading zeros "
    "(at most 18 digits)"
)

# Called with each entry skipped and why.
OnSkip = Callable[[Path, str], None]


@dataclass(frozen=True)
class VersionDir:
    name: str
    version: int
    path: Path


def is_model_name(name: str) -> bool:
    return MODEL_NAME.fullmatch(name) is not None


def parse_version(name: str) -> int | None:
    """The version a folder name stands for, or None when it names none."""
    return int(name) if VERSION_NAME.fullmatch(name) else None


def _log_skip(path: Path, reason: str) -> None:
    log.warning("skipping %r in the model repository: %s", str(path), reason)


def list_versions(repository: Path, *, on_skip: OnSkip = _log_skip) -> dict[str, list[VersionDir]]:
    """Every `<name>/<version>/` folder holding a manifest, newest version last.

    Never raises for anything on disk: every entry that is neither a model, a version nor hidden
    (a name starting with '.', e.g. a version being written) is passed to `on_skip` with the
    reason and left out. A repository that does not exist holds nothing."""
    found: dict[str, list[VersionDir]] = {}
    try:
        names = sorted(os.listdir(repository))
    except FileNotFoundError:
        return found
    except OSError as error:
        on_skip(repository, f"cannot read the repository: {describe(error)}")
        return found
    for name in names:
        if name.startswith("."):
            continue  # hidden, or a version being written
        model_dir = repository / name
        if not is_model_name(name):
            on_skip(model_dir, f"not a model: {MODEL_NAME_RULE}")
            continue
        if not _is_folder(model_dir, "model", on_skip):
            continue
        versions = _versions(model_dir, name, on_skip)
        if versions:
            found[name] = sorted(versions, key=lambda v: v.version)
    return found


def _versions(model_dir: Path, name: str, on_skip: OnSkip) -> list[VersionDir]:
    try:
        entries = sorted(os.listdir(model_dir))
    except OSError as error:
        on_skip(model_dir, f"cannot read the model folder: {describe(error)}")
        return []
    versions = []
    for entry in entries:
        if entry.startswith("."):
            continue
        path = model_dir / entry
        version = parse_version(entry)
        if version is None:
            on_skip(path, f"not a version: {VERSION_NAME_RULE}")
            continue
        if not _is_folder(path, "version", on_skip):
            continue
        try:
            manifest = os.stat(path / MANIFEST_FILE)
        except FileNotFoundError:
            on_skip(path, f"the version has no {MANIFEST_FILE}")
            continue
        except OSError as error:
            on_skip(path, f"cannot read its {MANIFEST_FILE}: {describe(error)}")
            continue
        if not stat.S_ISREG(manifest.st_mode):
            on_skip(path, f"its {MANIFEST_FILE} is not a regular file")
            continue
        versions.append(VersionDir(name, version, path))
    return versions


def _is_folder(path: Path, what: str, on_skip: OnSkip) -> bool:
    try:
        status = os.stat(path)  # through a symbolic link: a linked folder is fine
    except OSError as error:
        if os.path.islink(path):
            on_skip(path, f"a {what} must be a folder; this is a broken link ({describe(error)})")
        else:
            on_skip(path, f"a {what} must be a folder; this cannot be read: {describe(error)}")
        return False
    if not stat.S_ISDIR(status.st_mode):
        kind = "file" if stat.S_ISREG(status.st_mode) else "special file"
        on_skip(path, f"a {what} must be a folder; this is a {kind}")
        return False
    return True

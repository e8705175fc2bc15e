"""The on-disk model repository: `<repository>/<name>/<version>/` with a manifest, an ONNX graph
and a tokenizer.json. Versions are positive integers; the highest valid one serves."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from tokenizers import Tokenizer

from lamina.server.models.manifest import MANIFEST_FILE, Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionDir:
    name: str
    version: int
    path: Path


def list_versions(repository: Path) -> dict[str, list[VersionDir]]:
    """Every `<name>/<integer>/` holding a manifest, newest version last."""
    found: dict[str, list[VersionDir]] = {}
    if not repository.is_dir():
        return found
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = [
            VersionDir(model_dir.name, int(p.name), p)
            for p in model_dir.iterdir()
            if p.is_dir() and p.name.isdigit() and (p / MANIFEST_FILE).is_file()
        ]
        if versions:
            found[model_dir.name] = sorted(versions, key=lambda v: v.version)
    return found


def write_version(
    repository: Path,
    name: str,
    graph: onnx.ModelProto,
    manifest: Manifest,
    tokenizer: Tokenizer | None = None,
    token_embeddings: np.ndarray | None = None,
    *,
    progress: Callable[[str], None] = log.info,
) -> Path:
    """Write the next version of `name` atomically: a server scanning the repository sees either
    nothing or the whole version, never half of it."""
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    existing = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
    version = max(existing, default=0) + 1
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=repository))
    staging.chmod(0o755)  # mkdtemp makes it private; servers may run as another user
    try:
        progress(f"writing {name} version {version} ({graph.ByteSize() / 1e6:.0f} MB graph)")
        onnx.save_model(graph, str(staging / manifest.graph))
        if tokenizer is not None:
            tokenizer.save(str(staging / manifest.tokenizer))
        if token_embeddings is not None:
            # float16 halves the file; cosine similarities need no more precision.
            np.save(staging / manifest.token_embeddings, token_embeddings.astype(np.float16))
        manifest.write(staging)
        target = model_dir / str(version)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"{name} version {version} ready at {target}")
    return target

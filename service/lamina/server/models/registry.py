"""Which model versions serve: the newest version of each model that loads, on every pool.

`refresh` is called at start-up and then periodically: a version newer than the serving one is
loaded (a session per pool) beside it and then takes over; one that fails to load is logged with
its reason and not tried again until its files change, while the older version keeps serving.
Requests already queued keep a reference to the version they started on and finish there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lamina.server.models.loaded import LoadedModel
from lamina.server.models.manifest import Manifest
from lamina.server.models.store import VersionDir, list_versions
from lamina.server.prompt import PromptEncoder
from lamina.server.scheduling.pool import PoolSpec

log = logging.getLogger(__name__)

FileStamp = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, eq=False)
class ModelVersion:
    """One version of a model, loaded on every pool."""

    per_pool: dict[str, LoadedModel]

    @property
    def primary(self) -> LoadedModel:
        return next(iter(self.per_pool.values()))

    @property
    def name(self) -> str:
        return self.primary.name

    @property
    def version(self) -> int:
        return self.primary.version

    @property
    def model_version(self) -> str:
        return self.primary.model_version

    @property
    def manifest(self) -> Manifest:
        return self.primary.manifest

    @property
    def prompts(self) -> PromptEncoder:
        return self.primary.prompts


def _stamp(directory: Path) -> FileStamp:
    """Names, sizes and modification times of a version's files: changes when it is rewritten."""
    files = (p for p in directory.iterdir() if p.is_file())
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))


class ModelRegistry:
    def __init__(
        self,
        repository: Path,
        pools: Sequence[PoolSpec],
        *,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.repository = repository
        self.pools = tuple(pools)
        self._on_reject = on_reject
        self._versions: dict[str, int] = {}
        self._rejected: dict[Path, FileStamp] = {}

    def refresh(self) -> list[ModelVersion]:
        """Load what is newer than what serves; returns the versions that now serve anew.

        Blocking (loading builds ONNX Runtime sessions): call it off the event loop.
        """
        changed = []
        for name, versions in list_versions(self.repository).items():
            serving = self._versions.get(name, 0)
            for entry in reversed(versions):
                if entry.version <= serving:
                    break
                stamp = _stamp(entry.path)
                if self._rejected.get(entry.path) == stamp:
                    continue
                try:
                    loaded = self._load(entry)
                except Exception as error:  # any failure means: not servable
                    log.error(
                        "rejected %s version %d (%s): %s", name, entry.version, entry.path, error
                    )
                    self._rejected[entry.path] = stamp
                    if self._on_reject is not None:
                        self._on_reject(name)
                    continue
                self._versions[name] = entry.version
                changed.append(loaded)
                log.info("loaded %s from %s", loaded.model_version, entry.path)
                break
        return changed

    def _load(self, entry: VersionDir) -> ModelVersion:
        return ModelVersion(
            {
                pool.name: LoadedModel.load(entry, threads=pool.threads, providers=pool.providers)
                for pool in self.pools
            }
        )

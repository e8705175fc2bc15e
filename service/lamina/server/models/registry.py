"""Which model versions serve: the newest version of each model that loads.

`refresh` is called at start-up and then periodically: a version newer than the serving one is
loaded beside it and, once loaded, takes over; one that fails to load is logged with its reason
and not tried again until its files change, while the older version keeps serving.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lamina.server.models.loaded import LoadedModel
from lamina.server.models.store import list_versions

log = logging.getLogger(__name__)

FileStamp = tuple[tuple[str, int, int], ...]


def _stamp(directory: Path) -> FileStamp:
    """Names, sizes and modification times of a version's files: changes when it is rewritten."""
    return tuple(
        sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.iterdir()
            if p.is_file()
        )
    )


class ModelRegistry:
    def __init__(
        self, repository: Path, *, threads: int, providers: list[str], hostings: tuple[str, ...]
    ):
        self.repository = repository
        self.threads = threads
        self.providers = providers
        self.hostings = hostings
        self._models: dict[str, LoadedModel] = {}
        self._rejected: dict[Path, FileStamp] = {}

    def refresh(self) -> list[LoadedModel]:
        """Load what is newer than what serves; returns the models that now serve anew.

        Blocking (loading builds ONNX Runtime sessions): call it off the event loop.
        """
        changed = []
        for name, versions in list_versions(self.repository).items():
            serving = self._models.get(name)
            for entry in reversed(versions):
                if serving is not None and entry.version <= serving.version:
                    break
                stamp = _stamp(entry.path)
                if self._rejected.get(entry.path) == stamp:
                    continue
                try:
                    model = LoadedModel.load(entry, threads=self.threads, providers=self.providers)
                except Exception as error:  # any failure means: not servable
                    log.error(
                        "rejected %s version %d (%s): %s", name, entry.version, entry.path, error
                    )
                    self._rejected[entry.path] = stamp
                    continue
                self._models[name] = model
                changed.append(model)
                log.info("loaded %s from %s", model.model_version, entry.path)
                break
        return changed

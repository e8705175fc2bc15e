"""Which model versions serve: the newest version of each model that loads."""

from __future__ import annotations

import logging
from pathlib import Path

from lamina.server.domain import ModelDescription
from lamina.server.errors import ModelNotFound
from lamina.server.models.loaded import LoadedModel
from lamina.server.models.store import list_versions

log = logging.getLogger(__name__)


class ModelRegistry:
    def __init__(
        self, repository: Path, *, threads: int, providers: list[str], hostings: tuple[str, ...]
    ):
        self.repository = repository
        self.threads = threads
        self.providers = providers
        self.hostings = hostings
        self._models: dict[str, LoadedModel] = {}

    def load_all(self) -> None:
        """Load the newest version of every model that loads; a broken one is logged and skipped
        in favour of the next older version."""
        for name, versions in list_versions(self.repository).items():
            for entry in reversed(versions):
                try:
                    model = LoadedModel.load(entry, threads=self.threads, providers=self.providers)
                except Exception as error:  # any failure means: not servable
                    log.error("rejected %s version %d: %s", name, entry.version, error)
                    continue
                self._models[name] = model
                log.info("serving %s from %s", model.model_version, entry.path)
                break
        if not self._models:
            log.warning("no servable model in %s", self.repository)

    def get(self, name: str) -> LoadedModel:
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(name, sorted(self._models))
        return model

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def all(self) -> list[LoadedModel]:
        return [self._models[name] for name in sorted(self._models)]

    def describe(self) -> list[ModelDescription]:
        return [
            ModelDescription(
                name=m.name,
                version=m.version,
                model_version=m.model_version,
                description=m.manifest.description,
                architecture=m.manifest.architecture,
                num_layers=m.manifest.num_layers,
                hidden_size=m.manifest.hidden_size,
                max_context_size=m.manifest.max_context_size,
                image_support=m.manifest.image_support,
                embedding_types=m.manifest.embedding_types,
                hostings=self.hostings,
            )
            for m in self.all()
        ]

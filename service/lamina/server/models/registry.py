"""Which model versions serve: the newest version of each model that loads, on every pool.

`refresh` is called at start-up and then periodically: a version newer than the serving one is
loaded (a session per pool) beside it and then takes over; one that fails to load is logged with
its reason and not tried again until its files change, while the older version keeps serving.
Requests already queued keep a reference to the version they started on and finish there.

A loaded version is immutable (everything it serves from is in memory). When the files of the
serving version change on disk, they are a candidate like any new version: loaded beside the
serving copy, which they replace if they load and which keeps serving if they do not. Files are
read only once they have not changed for a moment (`settle_seconds`), and a load during which they
change counts for nothing: what serves is always one state of the files.

Nothing on disk makes `refresh` raise: a bad entry is skipped, a bad version rejected, each with
its reason logged once (not on every scan).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lamina.server.models.inference import run_batch
from lamina.server.models.loaded import LoadedModel, VersionContents
from lamina.server.prompt import PromptEncoder
from lamina.server.repository.files import FileStamp, version_stamp
from lamina.server.repository.layout import VersionDir, list_versions
from lamina.server.repository.manifest import Manifest
from lamina.server.runtime.device import PoolSpec
from lamina.server.scheduling.job import Embeddings, Job

log = logging.getLogger(__name__)

# What a failure while loading can be: anything but the interpreter being asked to stop. Native
# libraries raise odd things (the tokenizers' Rust panics are BaseExceptions).
_FATAL = (KeyboardInterrupt, SystemExit)
# Files changed more recently than this are waited for before they are read (see _settled).
SETTLE_SECONDS = 1.0


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

    def run_batch(self, pool: str, jobs: Sequence[Job]) -> list[Embeddings]:
        """Runs on the pool's thread (scheduling.job.BatchModel)."""
        return run_batch(self.per_pool[pool], jobs)


@dataclass(frozen=True)
class _Serving:
    """What a model serves now, and the files it was loaded from."""

    version: int
    path: Path
    stamp: FileStamp


class ModelRegistry:
    def __init__(
        self,
        repository: Path,
        pools: Sequence[PoolSpec],
        *,
        on_reject: Callable[[str], None] | None = None,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self.repository = repository
        self.pools = tuple(pools)
        self._on_reject = on_reject
        self.settle_seconds = settle_seconds
        self._serving: dict[str, _Serving] = {}
        self._rejected: dict[Path, FileStamp] = {}
        # Problems of the last scan, each logged when it first appeared.
        self._problems: set[tuple[str, str]] = set()

    def refresh(self) -> list[ModelVersion]:
        """Load what is newer than what serves, or what serves if its files changed; returns the
        versions that now serve anew. Never raises for anything on disk.

        Blocking (loading builds ONNX Runtime sessions): call it off the event loop.
        """
        problems: set[tuple[str, str]] = set()

        def problem(path: Path, reason: str) -> None:
            key = (str(path), reason)
            if key not in problems and key not in self._problems:
                log.warning("skipping %r in the model repository: %s", str(path), reason)
            problems.add(key)

        changed = []
        try:
            listing = list_versions(self.repository, on_skip=problem)
        except Exception as error:  # list_versions reports, never raises: belt and braces
            problem(self.repository, f"scanning failed: {error!r}")
            listing = {}
        for name, versions in listing.items():
            try:
                loaded = self._refresh_model(name, versions, problem)
            except Exception as error:  # _refresh_model never raises: belt and braces
                problem(self.repository / name, f"refreshing failed: {error!r}")
                continue
            if loaded is not None:
                changed.append(loaded)
        self._problems = problems
        listed = {v.path for versions in listing.values() for v in versions}
        self._rejected = {p: s for p, s in self._rejected.items() if p in listed}
        return changed

    def _refresh_model(
        self, name: str, versions: list[VersionDir], problem: Callable[[Path, str], None]
    ) -> ModelVersion | None:
        serving = self._serving.get(name)
        for entry in reversed(versions):
            if serving is not None and entry.version < serving.version:
                break
            stamp = version_stamp(entry.path)
            replacing = serving is not None and entry.version == serving.version
            if serving is not None and replacing and stamp == serving.stamp:
                break  # what serves is what is on disk
            if self._rejected.get(entry.path) == stamp:
                if replacing:
                    break  # its changed files failed; the loaded copy keeps serving
                continue
            settled = self._settled(entry.path, stamp)
            if settled is None:  # still being written: looked at again next scan
                if replacing:
                    break
                continue
            stamp = settled
            try:
                loaded = self._load(entry)
            except _FATAL:
                raise
            except BaseException as error:  # any failure means: not servable
                if version_stamp(entry.path) != stamp:
                    problem(entry.path, "its files changed while loading; tried again next scan")
                    if replacing:
                        break
                    continue
                log.error(
                    "rejected %s version %d (%r)%s: %s",
                    name,
                    entry.version,
                    str(entry.path),
                    "; the copy loaded before keeps serving" if replacing else "",
                    f"{type(error).__name__}: {error}",
                )
                self._rejected[entry.path] = stamp
                self._report_reject(name)
                if replacing:
                    break
                continue
            if version_stamp(entry.path) != stamp:
                # Read half before and half after a change: not one state of the files.
                problem(entry.path, "its files changed while loading; tried again next scan")
                if replacing:
                    break
                continue
            self._serving[name] = _Serving(entry.version, entry.path, stamp)
            self._rejected.pop(entry.path, None)
            if replacing:
                log.warning(
                    "the files of %s changed on disk (%r): loaded them again, and they now serve",
                    loaded.model_version,
                    str(entry.path),
                )
            else:
                log.info("loaded %s from %r", loaded.model_version, str(entry.path))
            return loaded
        return None

    def _settled(self, path: Path, stamp: FileStamp) -> FileStamp | None:
        """The stamp once no file has changed for `settle_seconds`, or None if one changes
        meanwhile. File times are coarse (a few milliseconds, a second on some filesystems): a
        write right after a stamp can leave it as it was, and what was read would then be taken
        for what is on disk for good. Waits at most twice `settle_seconds`."""
        times = [max(entry[3], entry[4]) for entry in stamp if entry[1] >= 0]
        if not times or self.settle_seconds <= 0:
            return stamp
        wait = (max(times) - time.time_ns()) / 1e9 + self.settle_seconds
        if not 0 < wait <= 2 * self.settle_seconds:  # settled, or a clock too far off to judge
            return stamp
        time.sleep(wait)
        again = version_stamp(path)
        return again if again == stamp else None

    def _report_reject(self, name: str) -> None:
        if self._on_reject is None:
            return
        try:
            self._on_reject(name)
        except Exception:
            log.exception("reporting the rejection of %s failed", name)

    def _load(self, entry: VersionDir) -> ModelVersion:
        # One read for every pool: all serve the same bytes, whatever happens on disk meanwhile.
        contents = VersionContents.read(entry.path)
        prompts = contents.prompts(entry.name)
        return ModelVersion(
            {
                pool.name: LoadedModel.load(
                    entry,
                    threads=pool.threads,
                    providers=pool.providers,
                    contents=contents,
                    prompts=prompts,
                )
                for pool in self.pools
            }
        )

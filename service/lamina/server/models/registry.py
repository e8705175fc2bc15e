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

What the registry knows is ONE table, a row per (model, version) (`VersionRow`): "loading" while
it is read (or waits for its files to settle; a version whose files changed while it loaded stays
"loading" and is tried again next scan), "serving", "failed" with its reason, and "retired" once a
newer version took over (kept, without its loaded copy, as long as its folder is there). A row
remembers the files that failed to load (`rejected`), which are not tried again until they change.
The serving version's changed files are a candidate loaded beside it: its row stays "serving"
throughout, and if they fail it keeps serving with `reason` saying so. A version whose folder is
gone drops out of the table unless it serves. `refresh` runs on a worker thread while the event
loop reads: the table is never changed in place; each change publishes a new one (`_Table`),
so every read sees one whole state, and `serving(name)` is one dict lookup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from lamina.server.domain import ModelVersionState, VersionState
from lamina.server.models.inference import BatchRun
from lamina.server.models.loaded import LoadedModel, VersionContents
from lamina.server.prompt import PromptEncoder
from lamina.server.repository.files import FileStamp, version_stamp
from lamina.server.repository.layout import VersionDir, list_versions
from lamina.server.repository.manifest import Manifest
from lamina.server.runtime.device import PoolSpec
from lamina.server.scheduling.job import Job

log = logging.getLogger(__name__)

# What a failure while loading can be: anything but the interpreter being asked to stop. Native
# libraries raise odd things (the tokenizers' Rust panics are BaseExceptions).
_FATAL = (KeyboardInterrupt, SystemExit)
# Files changed more recently than this are waited for before they are read (see _settled).
SETTLE_SECONDS = 1.0
# A failure's reason as the table keeps it (the log has it whole): error texts can be long.
MAX_REASON_CHARS = 2000


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

    def model_version_on(self, pool: str) -> str:
        """What a reply from `pool` says it came from (its precision may differ by pool)."""
        return self.per_pool[pool].model_version

    @property
    def manifest(self) -> Manifest:
        return self.primary.manifest

    @property
    def encoder(self) -> PromptEncoder:
        return self.primary.encoder

    def start_batch(self, pool: str, jobs: Sequence[Job]) -> BatchRun:
        """Runs on the pool's thread (scheduling.job.BatchModel)."""
        return BatchRun(self.per_pool[pool], jobs)

    def block_seconds(self, pool: str, positions: int) -> float | None:
        return self.per_pool[pool].session.block_seconds(positions)


@dataclass(frozen=True, eq=False)
class VersionRow:
    """What the registry knows of one version folder. Replaced, never changed."""

    state: VersionState
    path: Path
    # The files it serves (or served) from, failed to load from, or is loading.
    stamp: FileStamp
    reason: str | None = None  # see ModelVersionState.reason
    loaded: ModelVersion | None = None  # the copy that serves: set exactly while serving
    # Files that failed to load (a failed version's, or a serving version's changed files): not
    # tried again until they change.
    rejected: FileStamp | None = None

    def __post_init__(self) -> None:
        if (self.loaded is not None) != (self.state is VersionState.SERVING):
            raise ValueError(f"a {self.state} row with{'' if self.loaded else 'out'} a loaded copy")


Key = tuple[str, int]  # (model name, version)


class _Table:
    """One published state of the registry: its rows in (name, version) order, and the serving
    version of each model derived from them. Never changed once published."""

    __slots__ = ("rows", "serving")

    def __init__(self, rows: Mapping[Key, VersionRow]) -> None:
        self.rows: dict[Key, VersionRow] = dict(sorted(rows.items()))
        self.serving: dict[str, ModelVersion] = {
            name: row.loaded for (name, _), row in self.rows.items() if row.loaded is not None
        }


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
        self._table = _Table({})
        self._writing = threading.Lock()  # one change at a time (refresh is the only writer)
        # Problems of the last scan, each logged when it first appeared.
        self._problems: set[tuple[str, str]] = set()

    # -- reading (any thread; each call reads one published table) ------------------------------

    def serving(self, name: str) -> ModelVersion | None:
        """The version of `name` that serves; None if none does."""
        return self._table.serving.get(name)

    def served(self) -> dict[str, ModelVersion]:
        """Every model that serves, in name order, with its serving version."""
        return dict(self._table.serving)

    def states(self, name: str | None = None) -> list[ModelVersionState]:
        """Every version the registry knows (of `name` only, if given), by name then version."""
        return [
            ModelVersionState(model, version, row.state, row.reason)
            for (model, version), row in self._table.rows.items()
            if name is None or model == name
        ]

    def row(self, name: str, version: int) -> VersionRow | None:
        return self._table.rows.get((name, version))

    # -- refreshing (one thread at a time) ------------------------------------------------------

    def _publish(
        self,
        put: Mapping[Key, VersionRow] | None = None,
        keep: Callable[[Key, VersionRow], bool] | None = None,
    ) -> None:
        """A new table: this one's rows that `keep` keeps (all by default), and `put` over them.
        The readers see the old table or the new one, never a row half-written."""
        with self._writing:
            old = self._table.rows
            rows = {k: r for k, r in old.items() if keep is None or keep(k, r)}
            if put:
                rows.update(put)
            elif len(rows) == len(old):
                return  # nothing changed
            self._table = _Table(rows)

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
        listed = {(name, v.version) for name, versions in listing.items() for v in versions}
        self._publish(keep=lambda key, row: key in listed or row.state is VersionState.SERVING)
        return changed

    def _refresh_model(
        self, name: str, versions: list[VersionDir], problem: Callable[[Path, str], None]
    ) -> ModelVersion | None:
        serving_key, serving = self._serving_row(name)
        for entry in reversed(versions):
            if serving is not None and entry.version < serving_key[1]:
                break
            key = (name, entry.version)
            row = self._table.rows.get(key)
            stamp = version_stamp(entry.path)
            replacing = serving is not None and key == serving_key
            if serving is not None and replacing and stamp == serving.stamp:
                break  # what serves is what is on disk
            if row is not None and row.rejected == stamp:
                if replacing:
                    break  # its changed files failed; the loaded copy keeps serving
                continue
            if not replacing:  # a serving version's row keeps serving while its files load
                rejected = None if row is None else row.rejected  # still not tried again
                loading = VersionRow(VersionState.LOADING, entry.path, stamp, rejected=rejected)
                self._publish({key: loading})
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
                reason = f"{type(error).__name__}: {error}"
                log.error(
                    "rejected %s version %d (%r)%s: %s",
                    name,
                    entry.version,
                    str(entry.path),
                    "; the copy loaded before keeps serving" if replacing else "",
                    reason,
                )
                if serving is not None and replacing:
                    failed = replace(
                        serving,
                        reason=_shortened(f"its changed files failed to load: {reason}"),
                        rejected=stamp,
                    )
                else:
                    failed = VersionRow(
                        VersionState.FAILED, entry.path, stamp, _shortened(reason), rejected=stamp
                    )
                self._publish({key: failed})
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
            self._serve(key, VersionRow(VersionState.SERVING, entry.path, stamp, loaded=loaded))
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

    def _serving_row(self, name: str) -> tuple[Key, VersionRow | None]:
        """The key and row of the version of `name` that serves; (name, 0), None if none does
        (no version is numbered 0)."""
        for key, row in self._table.rows.items():
            if key[0] == name and row.state is VersionState.SERVING:
                return key, row
        return (name, 0), None

    def _serve(self, key: Key, row: VersionRow) -> None:
        """`row` serves from now on, in one table with what it ends: the model's version that
        served before is retired (its loaded copy let go: requests holding it finish on it), and
        older versions still marked loading drop out (nothing older is tried while one serves)."""
        name, version = key
        put = {key: row}
        for other, old in self._table.rows.items():
            if other[0] == name and other != key and old.state is VersionState.SERVING:
                put[other] = replace(old, state=VersionState.RETIRED, reason=None, loaded=None)

        def keep(other: Key, old: VersionRow) -> bool:
            older = other[0] == name and other[1] < version
            return not (older and old.state is VersionState.LOADING)

        self._publish(put, keep)

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
        contents = VersionContents.read(
            entry.path, [(p.precision, p.device, p.min_cosine) for p in self.pools]
        )
        encoder = contents.encoder(entry.name)
        return ModelVersion(
            {
                pool.name: LoadedModel.load(
                    entry,
                    threads=pool.threads,
                    providers=pool.providers,
                    precision=pool.precision,
                    device=pool.device,
                    min_cosine=pool.min_cosine,
                    contents=contents,
                    encoder=encoder,
                )
                for pool in self.pools
            }
        )


def _shortened(reason: str) -> str:
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[: MAX_REASON_CHARS - 16] + " ... (truncated)"

"""One ONNX Runtime session over a converted graph: hidden states by layer index.

A batch runs as one or more segments (`begin`, then `advance` until `finished`): each runs the
next blocks, as many as fit the time asked for at the session's measured pace, and keeps the
state the next segment resumes from (signature.py, START). Between segments the pool may run
other work; the results are bit-identical to one uninterrupted run.

Memory (docs/memory.md): the session knows what a batch of its graph needs (`memory`, a
BatchMemory the scheduler budgets with) and gives back what large batches leave behind. ONNX
Runtime's CPU arena keeps every region it grew, so the session releases it (shrinks the arena,
`memory.enable_memory_arena_shrinkage`, and asks glibc to return its freed heap, malloc_trim):
- once no batch has run for IDLE_RELEASE_SECONDS after one above RELEASE_ABOVE_BYTES;
- before a batch that needs more than any since the last release: the arena then grows from
  nothing, never beside regions the batch cannot reuse, so a run's peak is its own;
- before the next batch, when the process grew during this session's runs since the last release
  by more than the largest of them needs (smaller shapes that fragmented the arena);
- and a large batch first releases the other sessions that are idle (other models), so what one
  pool holds is one session's working memory.
Batches of the same size or smaller reuse the arena as it is: back-to-back work pays nothing.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lamina.server.repository import signature
from lamina.server.runtime.batch import Batch
from lamina.server.runtime.blockwise import BlockwiseSession, CutGraph
from lamina.server.runtime.device import Providers
from lamina.server.runtime.memory import MIB, BatchMemory
from lamina.server.runtime.openvino import OnOpenVino
from lamina.server.runtime.openvino import session as openvino_session

log = logging.getLogger(__name__)

# Measured on the converted graphs (docs/memory.md has the figures and the fit), float32 each:
# the [heads, padded, padded] attention tensors one layer holds at once at its peak (the scores
# and what the AtMan control path derives from them; the plain path needs about half),
PAIR_TENSORS = 9
# the [padded, hidden] tensors of a layer's other activations (feed-forward, norms, residuals),
POSITION_TENSORS = 20
# and every returned hidden state once (numpy arrays over the arena's own tensors).
OUTPUT_COPIES = 1
# Below this the arena is left as it is: what it keeps is small beside the loaded models.
RELEASE_ABOVE_BYTES = 64 * MIB
# How long a session that ran a batch above RELEASE_ABOVE_BYTES waits for the next before it
# releases: the gaps between back-to-back batches are far shorter.
IDLE_RELEASE_SECONDS = 2.0
# How much each measured segment moves the session's pace (seconds per block and padded position).
PACE_WEIGHT = 0.3


@dataclass
class GraphRun:
    """A batch on its way through the graph: what the next segment needs, and what the earlier
    ones returned."""

    batch: Batch
    layers: tuple[int, ...]  # the absolute layers asked for, ascending
    feeds: dict[str, np.ndarray]
    done: int = -1  # blocks run so far; -1 before the first segment (which also embeds)
    state: np.ndarray | None = None  # what block `done` handed on
    states: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return self.layers[-1]

    @property
    def finished(self) -> bool:
        return self.done >= self.depth

    @property
    def positions(self) -> int:
        rows, padded = self.batch.input_ids.shape
        return int(rows * padded)

    @property
    def held_bytes(self) -> int:
        """What it keeps between segments: its inputs, the state and the layers returned."""
        kept = [*self.feeds.values(), *self.states.values()]
        if self.state is not None:
            kept.append(self.state)
        return sum(int(a.nbytes) for a in kept)


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Warnings about shape merging are noise for our dynamic graphs; errors still surface.
    options.log_severity_level = 3
    # Intra-op threads spin within a run (its many small parallel sections need them awake) and
    # stop when it returns: between runs the event loop (gRPC, tokenizing, replies) needs the
    # cores, and a worker spinning on after a run takes one from it. Measured on two cores
    # (MiniLM, bare session): a 4-token run 3.5 ms against 4.0 spinning on and 4.8 never
    # spinning, 32 x 128 batches no slower; over gRPC, short requests' p50 fell by 2-4 ms.
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class HiddenStateSession:
    def __init__(
        self,
        graph: Path,
        *,
        num_layers: int,
        threads: int,
        providers: Providers,
        model_bytes: bytes | None = None,
        external_data: Mapping[str, bytes] | None = None,
        openvino: OnOpenVino | None = None,
        cut: CutGraph | None = None,
    ):
        """`model_bytes`: the graph read from `graph` (which then only names it in errors), with
        its external-data files by location; ONNX Runtime copies both, so nothing stays mapped.
        `openvino`: run `cut` (the graph cut into blocks, runtime/blockwise.py) on OpenVINO as it
        says (runtime/openvino.py) rather than the graph on `providers`."""
        self.num_layers = num_layers
        options = session_options(threads)
        if external_data:
            names, buffers = list(external_data), list(external_data.values())
            options.add_external_initializers_from_files_in_memory(
                names, buffers, [len(b) for b in buffers]
            )
        self._session: ort.InferenceSession | BlockwiseSession
        if openvino is not None:
            if cut is None or len(cut.blocks) != num_layers + 1:
                raise ValueError(f"{graph}: OpenVINO runs a graph cut into blocks")
            self._session = openvino_session(
                cut, openvino, threads, lambda: session_options(threads)
            )
        else:
            self._session = ort.InferenceSession(
                model_bytes if model_bytes is not None else str(graph),
                sess_options=options,
                providers=list(providers),
            )
        if model_bytes is not None and isinstance(self._session, ort.InferenceSession):
            # onnxruntime's Python class keeps the bytes it was built from for as long as the
            # session lives (to rebuild it on a provider fallback): as much memory again as the
            # weights. Without fallback nothing reads them again.
            self._session.disable_fallback()
            self._session._model_bytes = None
        outputs = {o.name for o in self._session.get_outputs()}
        expected = [signature.hidden_state_output(i) for i in range(num_layers + 1)]
        missing = [name for name in expected if name not in outputs]
        if missing:
            raise ValueError(f"{graph}: graph lacks outputs {missing}")
        inputs = {i.name: i for i in self._session.get_inputs()}
        if set(signature.INPUT_NAMES) - set(inputs):
            raise ValueError(
                f"{graph}: graph lacks inputs {set(signature.INPUT_NAMES) - set(inputs)}"
            )
        # A graph that can stop between blocks, and the width of the state it resumes from.
        self._resume_width: int | None = None
        if signature.START in inputs and signature.RESUME_STATE in inputs:
            width = inputs[signature.RESUME_STATE].shape[-1]
            self._resume_width = int(width) if isinstance(width, int) else None
        # Image encoders hand on their own state; text graphs' is the last hidden state run.
        self._state_is_own_output = signature.STATE in outputs
        self._pace: float | None = None  # seconds per block and padded position, measured
        self._image_shapes: tuple[tuple[int, int, int], int] | None = None
        if signature.PIXEL_VALUES in inputs:
            _, *pixel_shape = inputs[signature.PIXEL_VALUES].shape
            _, patches = inputs[signature.IMAGE_KEY_FACTORS].shape
            channels, height, width = (int(d) for d in pixel_shape)
            self._image_shapes = ((channels, height, width), int(patches))
        width = self._session.get_outputs()[0].shape[-1]
        self._hidden = width if isinstance(width, int) else None
        hidden = self._hidden or 4096  # a graph of dynamic width: assume a wide one
        source: bytes | Path = cut.blocks[-1] if cut is not None else model_bytes or graph
        heads = attention_heads(source)
        # A graph not from this converter: assume 32-wide heads, more than most models have.
        heads = heads or max(1, hidden // 32)
        per_pair, per_position = heads * 4 * PAIR_TENSORS, hidden * 4 * POSITION_TENSORS
        image_tokens = 0 if self._image_shapes is None else self._image_shapes[1] + 1  # + class
        pixels = 0 if self._image_shapes is None else 4 * int(np.prod(self._image_shapes[0]))
        self.memory = BatchMemory(
            per_pair=per_pair,
            per_position=per_position,
            per_output=hidden * 4 * OUTPUT_COPIES,
            per_image=pixels + image_tokens * (per_pair * image_tokens + per_position),
        )
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._running = threading.Lock()  # a run, or a release
        self._runs = 0
        self._held = 0  # the largest estimate since the last release: what the arena may hold
        self._grown = 0  # how much the process grew during this session's runs since then
        self._idle_timer: threading.Timer | None = None
        self.releases = 0  # how often the arena was released
        _SESSIONS.add(self)
        # Building the session parses and optimises the whole graph: hundreds of MB that glibc
        # would otherwise keep.
        release_freed_heap()

    def run(self, batch: Batch, layers: Iterable[int]) -> dict[int, np.ndarray]:
        """[rows, padded, hidden] per requested absolute layer index, in one uninterrupted run."""
        run = self.begin(batch, layers)
        self.advance(run)
        return run.states

    def begin(self, batch: Batch, layers: Iterable[int]) -> GraphRun:
        """A run of `batch` that returns `layers`; nothing runs until `advance`."""
        wanted = tuple(sorted(set(layers)))
        feeds = batch.feeds()
        if self._image_shapes is not None:
            feeds |= batch.images.feeds(*self._image_shapes)
        elif batch.images.pixels:
            raise ValueError("this graph takes no images")
        return GraphRun(batch, wanted, feeds)

    @property
    def provider(self) -> str:
        """What runs the graph: ONNX Runtime's first execution provider, or OpenVINO."""
        if isinstance(self._session, ort.InferenceSession):
            return str(self._session.get_providers()[0])
        return "OpenVINO"

    @property
    def resumable(self) -> bool:
        """Whether a run can stop between blocks (graphs converted before START run whole)."""
        return self._resume_width is not None

    def block_seconds(self, positions: int) -> float | None:
        """The measured time one block takes over `positions` padded positions; None before any
        segment ran."""
        return None if self._pace is None else self._pace * positions

    def blocks_within(self, run: GraphRun, seconds: float | None) -> int:
        """How many blocks the next segment of `run` runs to take about `seconds` (at least one;
        None or a graph that cannot stop between blocks: all that are left)."""
        left = run.depth - max(run.done, 0)
        if seconds is None or not self.resumable or left == 0:
            return left
        per_block = self.block_seconds(run.positions)
        if per_block is None:
            return min(left, 1)  # the first segment ever measures the pace
        return max(1, min(left, int(seconds / per_block)))

    def advance(self, run: GraphRun, seconds: float | None = None) -> None:
        """Run the next segment of `run`: about `seconds` of blocks (None: to the end)."""
        if run.finished:
            return
        start = max(run.done, 0)
        stop = start + self.blocks_within(run, seconds)
        first = run.done < 0
        wanted = [i for i in run.layers if start < i <= stop or (first and i == 0)]
        names = [signature.hidden_state_output(i) for i in wanted]
        feeds = {**run.feeds, signature.DEPTH: np.array(stop, dtype=np.int64)}
        more = stop < run.depth
        state = self._state_output(stop)
        if more and state not in names:  # the state the next segment resumes from
            names.append(state)
        if self._resume_width is not None:
            feeds |= signature.from_the_start(self._resume_width)
            if run.state is not None:
                feeds[signature.START] = np.array(start, dtype=np.int64)
                feeds[signature.RESUME_STATE] = run.state
        rows, padded = run.batch.input_ids.shape
        needs = self.memory.batch_bytes(rows, padded, len(run.layers), len(run.batch.images.pixels))
        began = time.perf_counter()
        results = self._run(names, feeds, needs)
        blocks = stop - start
        if blocks > 0:
            measured = (time.perf_counter() - began) / (blocks * run.positions)
            self._pace = (
                measured
                if self._pace is None
                else (1 - PACE_WEIGHT) * self._pace + PACE_WEIGHT * measured
            )
        fetched = dict(zip(names, results, strict=True))
        run.state = fetched[state] if more else None
        run.states.update((i, fetched[signature.hidden_state_output(i)]) for i in wanted)
        run.done = stop

    def _state_output(self, blocks: int) -> str:
        return (
            signature.STATE if self._state_is_own_output else signature.hidden_state_output(blocks)
        )

    def _run(self, names: list[str], feeds: dict[str, np.ndarray], needs: int) -> list[np.ndarray]:
        with self._running:
            self._runs += 1
            if needs > RELEASE_ABOVE_BYTES:
                _release_idle_sessions(besides=self)
            # OpenVINO keeps its own buffers, not ONNX Runtime's arena: there is nothing to
            # shrink before a larger batch (under a MiniLM load of growing batches, 23 of 60
            # runs were preceded by a release that only trimmed glibc's heap); idle release
            # still trims it.
            arena = isinstance(self._session, ort.InferenceSession)
            held = self._held > RELEASE_ABOVE_BYTES and arena
            if held and (needs > self._held or self._grown > self._held):
                # The arena would grow beside regions this run cannot reuse, or already grew
                # past what any run since the last release needs: start it afresh.
                self._release()
            # Read only where the growth counts: reading /proc costs a short request ~2%.
            large = max(self._held, needs) > RELEASE_ABOVE_BYTES
            before = resident_bytes() if large else 0
            results: list[np.ndarray] = self._session.run(names, feeds)
            self._held = max(self._held, needs)
            if large:
                self._grown += max(0, resident_bytes() - before)
                self._release_when_idle(self._runs)
        return results

    def release_memory(self) -> None:
        """Hand back what the arena holds beyond the runs in flight, and glibc's freed heap."""
        with self._running:
            self._release()

    def _release_when_idle(self, run: int) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()

        def release() -> None:
            with self._running:
                if self._runs == run:  # nothing ran since
                    self._release()

        self._idle_timer = threading.Timer(IDLE_RELEASE_SECONDS, release)
        self._idle_timer.daemon = True
        self._idle_timer.start()

    def _release(self) -> None:
        """A one-position run that shrinks the arena at its end (the only way ONNX Runtime
        offers), its output written outside the arena so that nothing of it stays there."""
        self._held = self._grown = 0
        self.releases += 1
        if isinstance(self._session, BlockwiseSession):  # OpenVINO keeps no ONNX Runtime arena
            release_freed_heap()
            return
        feeds = {
            signature.INPUT_IDS: np.zeros((1, 1), np.int64),
            signature.ATTENTION_MASK: np.ones((1, 1), np.int64),
            signature.CONTROL_FACTORS: np.ones((1, 1), np.float32),
            signature.CONTROL_LOG_ADDITIVE: np.ones(1, bool),
            signature.DEPTH: np.array(0, dtype=np.int64),
        }
        if self._resume_width is not None:
            feeds |= signature.from_the_start(self._resume_width)
        if self._image_shapes is not None:  # the one position is the first cell of one image
            pixel_shape, patches = self._image_shapes
            feeds |= {
                signature.PIXEL_VALUES: np.zeros((1, *pixel_shape), np.float32),
                signature.IMAGE_KEY_FACTORS: np.ones((1, patches), np.float32),
                signature.IMAGE_LOG_ADDITIVE: np.ones(1, bool),
                signature.IMAGE_SLOTS: np.zeros((1, 1), np.int64),
            }
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        state = np.empty((1, 1, self._hidden or 1), np.float32)
        if self._hidden is None:
            binding.bind_output(signature.hidden_state_output(0), "cpu")
        else:
            binding.bind_output(
                signature.hidden_state_output(0),
                "cpu",
                0,
                np.float32,
                [1, 1, self._hidden],
                state.ctypes.data,
            )
        try:
            self._session.run_with_iobinding(binding, self._shrink)
        except Exception:  # a graph that cannot take this run: glibc's part still goes back
            log.exception("the arena could not be shrunk")
        finally:
            del binding
            release_freed_heap()


# Every live session: a large run first releases what the idle ones hold, so that one pool's
# peak is one session's.
_SESSIONS: weakref.WeakSet[HiddenStateSession] = weakref.WeakSet()


def _release_idle_sessions(besides: HiddenStateSession) -> None:
    for other in list(_SESSIONS):
        if other is besides or other._held <= RELEASE_ABOVE_BYTES:
            continue
        if other._running.acquire(blocking=False):  # one running (on another pool) keeps its own
            try:
                other._release()
            finally:
                other._running.release()


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """The process's resident set (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        return 0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to ask
        return None
    return trim


_MALLOC_TRIM = _malloc_trim()


def release_freed_heap() -> None:
    """glibc keeps the memory a program frees in its heaps (one per thread that allocates), for
    reuse; malloc_trim hands the whole free pages among it back to the system."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def attention_heads(graph: bytes | Path) -> int | None:
    """The query heads of the graph's attention, or None for a graph not from this converter.

    `convert.attention` splits heads with a Reshape to an int64 constant [0, 0, heads, head_dim]
    named `shape_split...` (the key/value split, with as many heads or fewer, too). Read off the
    serialized model without parsing it: only the small initializers are decoded, the weights
    skipped, so a graph of hundreds of MB takes milliseconds and no copy.
    """
    if isinstance(graph, bytes):
        return _heads_of(memoryview(graph))
    with graph.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        view = memoryview(data)
        try:
            return _heads_of(view)
        finally:
            view.release()


def _heads_of(model: memoryview) -> int | None:
    heads = [
        int(values[2])
        for number, graph in _fields(model)
        if number == 7 and isinstance(graph, memoryview)  # ModelProto.graph
        for number, tensor in _fields(graph)
        if number == 5 and isinstance(tensor, memoryview)  # GraphProto.initializer
        for values in [_split_shape(tensor)]
        if values is not None
    ]
    return max(heads, default=None)


def _split_shape(tensor: memoryview) -> list[int] | None:
    """The values of a TensorProto named shape_split*, int64 [0, 0, h, d] with h, d > 0."""
    name, raw, packed = b"", b"", b""
    for number, value in _fields(tensor):
        if isinstance(value, memoryview):
            if number == 8:  # name
                name = value.tobytes()
                if not name.startswith(b"shape_split"):
                    return None
            elif number == 9 and len(value) == 32:  # raw_data of 4 int64
                raw = value.tobytes()
            elif number == 7:  # int64_data, packed
                packed = value.tobytes()
    if not name:
        return None
    if raw:
        values = [int(v) for v in np.frombuffer(raw, dtype="<i8")]
    else:
        values, at = [], 0
        while at < len(packed):
            value, at = _varint(memoryview(packed), at)
            values.append(value - (1 << 64) if value >= 1 << 63 else value)
    if len(values) != 4 or values[:2] != [0, 0] or min(values[2:]) <= 0:
        return None
    return values


def _fields(message: memoryview) -> Iterator[tuple[int, memoryview | int]]:
    """(field number, value) of a serialized protobuf message: a view of each length-delimited
    value, varints as ints, fixed-width values skipped."""
    at = 0
    while at < len(message):
        key, at = _varint(message, at)
        wire = key & 7
        if wire == 0:
            value, at = _varint(message, at)
            yield key >> 3, value
        elif wire == 2:
            size, at = _varint(message, at)
            yield key >> 3, message[at : at + size]
            at += size
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise ValueError(f"not a protobuf message (wire type {wire})")


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7

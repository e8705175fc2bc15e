"""How close a reduced-precision graph comes to the fp32 graph it was made from, on the calibration
set (convert/calibration.py): every hidden state of every prompt, compared position by position.

Per layer, two figures: the lowest cosine of any one position's state (what max, last_token and
abs_max pooling can expose) and the lowest cosine of a prompt's mean-pooled state (what mean
pooling returns). A precision passes its gate when the lowest of both, on every layer, reaches it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from lamina.server.convert import calibration
from lamina.server.repository import signature
from lamina.server.repository.manifest import Manifest
from lamina.server.runtime.blockwise import BlockwiseSession

# The longest calibration prompt measured: beyond it, attention alone would need gigabytes.
MAX_CALIBRATION_TOKENS = 2048


@dataclass(frozen=True)
class Fidelity:
    per_position: tuple[float, ...]  # per hidden state 0..num_layers
    pooled: tuple[float, ...]

    @property
    def per_layer(self) -> tuple[float, ...]:
        """The figure a gate reads: per layer, the lower of the two."""
        return tuple(min(a, b) for a, b in zip(self.per_position, self.pooled, strict=True))

    @property
    def worst(self) -> float:
        return min(self.per_layer)

    def passes(self, gate: float) -> bool:
        return self.worst >= gate


def lowest(measured: Iterable[Fidelity]) -> Fidelity:
    """Per hidden state, the lowest of several measurements (of the ways one graph is run)."""
    figures = list(measured)
    return Fidelity(
        tuple(map(min, zip(*(f.per_position for f in figures), strict=True))),
        tuple(map(min, zip(*(f.pooled for f in figures), strict=True))),
    )


def calibration_ids(tokenizer: Tokenizer, context: int) -> list[np.ndarray]:
    """The calibration texts as the model tokenizes them (specials included), plus the long one
    cut at the context: from one token to the whole context."""
    prompts = [np.asarray(e.ids, np.int64) for e in tokenizer.encode_batch(list(calibration.TEXTS))]
    long = np.asarray(tokenizer.encode(calibration.long_text()).ids, np.int64)
    # A single position (a prompt's first token alone, as a token-id prompt can be) and the
    # whole context.
    return [long[:1], *(p[:context] for p in prompts if p.size), long[:context]]


def session_options(threads: int = 0) -> ort.SessionOptions:
    """How a graph is run to be measured (0 threads: all cores), on any provider."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return options


def session(graph: Path | bytes, threads: int = 0) -> ort.InferenceSession:
    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(
        source, session_options(threads), providers=["CPUExecutionProvider"]
    )


# What fidelity runs: an ONNX Runtime session, or a graph cut into blocks (runtime/blockwise.py).
Graph: TypeAlias = ort.InferenceSession | BlockwiseSession


@dataclass(frozen=True)
class Reference:
    """The calibration prompts as a version tokenizes them, and its fp32 graph's hidden states
    of each: what every reduced precision of the version is measured against."""

    prompts: list[np.ndarray]
    states: list[list[np.ndarray]]
    num_layers: int

    @staticmethod
    def of(
        version: Path, manifest: Manifest, label: str, progress: Callable[[str], None]
    ) -> Reference:
        tokenizer = Tokenizer.from_file(str(version / manifest.tokenizer))
        context = min(manifest.max_context_size, MAX_CALIBRATION_TOKENS)
        prompts = calibration_ids(tokenizer, context)
        progress(
            f"{label}: fp32 states of {len(prompts)} calibration prompts (1..{context} tokens)"
        )
        fp32 = session(version / manifest.graph)
        states = [hidden_states(fp32, ids, manifest.num_layers) for ids in prompts]
        return Reference(prompts, states, manifest.num_layers)

    def measure(self, candidate: Graph) -> Fidelity:
        return measure(candidate, self.states, self.prompts, self.num_layers)


def hidden_states(graph: Graph, ids: np.ndarray, num_layers: int) -> list[np.ndarray]:
    """[positions, hidden] per hidden state 0..num_layers of one prompt, alone in its batch."""
    length = ids.size
    feeds = {
        signature.INPUT_IDS: ids[None, :],
        signature.ATTENTION_MASK: np.ones((1, length), np.int64),
        signature.CONTROL_FACTORS: np.ones((1, length), np.float32),
        signature.CONTROL_LOG_ADDITIVE: np.ones(1, bool),
        signature.DEPTH: np.array(num_layers, np.int64),
    }
    resume = {i.name: i for i in graph.get_inputs()}.get(signature.RESUME_STATE)
    if resume is not None:
        feeds |= signature.from_the_start(int(resume.shape[-1]))
    names = [signature.hidden_state_output(i) for i in range(num_layers + 1)]
    return [state[0] for state in graph.run(names, feeds)]


def measure(
    candidate: Graph,
    reference: Sequence[Sequence[np.ndarray]],
    prompts: Sequence[np.ndarray],
    num_layers: int,
    progress: Callable[[str], None] | None = None,
) -> Fidelity:
    per_position = [1.0] * (num_layers + 1)
    pooled = [1.0] * (num_layers + 1)
    for index, (ids, expected) in enumerate(zip(prompts, reference, strict=True)):
        got = hidden_states(candidate, ids, num_layers)
        for layer, (a, b) in enumerate(zip(got, expected, strict=True)):
            per_position[layer] = min(per_position[layer], float(cosines(a, b).min()))
            mean = cosines(a.mean(0, keepdims=True), b.mean(0, keepdims=True))
            pooled[layer] = min(pooled[layer], float(mean[0]))
        if progress is not None and (index + 1) % 10 == 0:
            progress(f"measured {index + 1}/{len(prompts)} calibration prompts")
    return Fidelity(tuple(per_position), tuple(pooled))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row by row, in float64; two zero rows agree (1.0), a zero row and another do not."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    dot = (a64 * b64).sum(-1)
    norms = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    both_zero = (np.linalg.norm(a64, axis=-1) == 0) & (np.linalg.norm(b64, axis=-1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    result = np.where(both_zero, 1.0, result)
    return np.nan_to_num(result, nan=-1.0)

"""One ONNX Runtime session over a converted graph: hidden states by layer index."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lamina.server.convert import signature
from lamina.server.runtime.batch import Batch

# Execution providers in order of preference, each a name or (name, options).
Providers = Sequence[str | tuple[str, dict[str, str]]]


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Warnings about shape merging are noise for our dynamic graphs; errors still surface.
    options.log_severity_level = 3
    return options


class HiddenStateSession:
    def __init__(self, graph: Path, *, num_layers: int, threads: int, providers: Providers):
        self.num_layers = num_layers
        self._session = ort.InferenceSession(
            str(graph), sess_options=session_options(threads), providers=list(providers)
        )
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
        self._image_shapes: tuple[tuple[int, int, int], int] | None = None
        if signature.PIXEL_VALUES in inputs:
            _, *pixel_shape = inputs[signature.PIXEL_VALUES].shape
            _, patches = inputs[signature.IMAGE_KEY_FACTORS].shape
            channels, height, width = (int(d) for d in pixel_shape)
            self._image_shapes = ((channels, height, width), int(patches))

    def run(self, batch: Batch, layers: Iterable[int]) -> dict[int, np.ndarray]:
        """[rows, padded, hidden] per requested absolute layer index."""
        wanted = sorted(set(layers))
        names = [signature.hidden_state_output(i) for i in wanted]
        # Blocks past the deepest requested layer are skipped inside the graph.
        feeds = {**batch.feeds(), signature.DEPTH: np.array(wanted[-1], dtype=np.int64)}
        if self._image_shapes is not None:
            feeds |= batch.images.feeds(*self._image_shapes)
        elif batch.images.pixels:
            raise ValueError("this graph takes no images")
        results = self._session.run(names, feeds)
        return dict(zip(wanted, results, strict=True))

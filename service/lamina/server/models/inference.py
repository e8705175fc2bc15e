"""The work of one batch, run on an inference thread: the graph segment by segment, then pooling
per request."""

from __future__ import annotations

from collections.abc import Sequence

from lamina.server.models.loaded import LoadedModel
from lamina.server.pooling import normalize, pool
from lamina.server.runtime.batch import Batch
from lamina.server.scheduling.job import Embeddings, Job


class BatchRun:
    """A batch of `jobs` through `model`: `advance` runs its segments (scheduling.job.RunningBatch);
    pooling happens once, when the last one has run."""

    def __init__(self, model: LoadedModel, jobs: Sequence[Job]) -> None:
        self._model = model
        self._jobs = list(jobs)
        batch = Batch.pad(
            [job.prompt for job in jobs],
            [job.control_log_additive for job in jobs],
            model.manifest.pad_token_id,
        )
        self._run = model.session.begin(batch, {layer for job in jobs for layer in job.layers})

    def advance(self, seconds: float | None) -> bool:
        """Run about `seconds` of blocks (None: all that are left); True once finished."""
        self._model.session.advance(self._run, seconds)
        return self._run.finished

    @property
    def held_bytes(self) -> int:
        return self._run.held_bytes

    def results(self) -> list[Embeddings]:
        if not self._run.finished:
            raise RuntimeError("the batch has segments left to run")
        states, lengths = self._run.states, self._run.batch.lengths
        results: list[Embeddings] = []
        for row, job in enumerate(self._jobs):
            embeddings: Embeddings = {}
            for layer in job.layers:
                # Only the row's own positions: padding never reaches a pooling.
                positions = states[layer][row, : lengths[row]]
                vectors = {p: pool(positions, p) for p in job.pooling}
                if job.normalize:
                    vectors = {p: normalize(v) for p, v in vectors.items()}
                embeddings[layer] = vectors
            results.append(embeddings)
        return results


def run_batch(model: LoadedModel, jobs: Sequence[Job]) -> list[Embeddings]:
    """The whole batch in one uninterrupted run."""
    run = BatchRun(model, jobs)
    run.advance(None)
    return run.results()

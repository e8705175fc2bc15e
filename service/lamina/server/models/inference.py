"""The work of one batch, run on an inference thread: graph, then pooling per request."""

from __future__ import annotations

from collections.abc import Sequence

from lamina.server.models.loaded import LoadedModel
from lamina.server.pooling import normalize, pool
from lamina.server.runtime.batch import Batch
from lamina.server.scheduling.job import Embeddings, Job


def run_batch(model: LoadedModel, jobs: Sequence[Job]) -> list[Embeddings]:
    batch = Batch.pad(
        [job.prompt for job in jobs],
        [job.control_log_additive for job in jobs],
        model.manifest.pad_token_id,
    )
    layers = {layer for job in jobs for layer in job.layers}
    states = model.session.run(batch, layers)
    results: list[Embeddings] = []
    for row, job in enumerate(jobs):
        length = batch.lengths[row]
        embeddings: Embeddings = {}
        for layer in job.layers:
            # Only the row's own positions: padding never reaches a pooling.
            positions = states[layer][row, :length]
            vectors = {p: pool(positions, p) for p in job.pooling}
            if job.normalize:
                vectors = {p: normalize(v) for p, v in vectors.items()}
            embeddings[layer] = vectors
        results.append(embeddings)
    return results

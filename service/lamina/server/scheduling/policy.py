"""The knobs of scheduling and batching, with the defaults the server documents, and what a batch
costs in memory (docs/memory.md)."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class BatchMemory:
    """The working memory of one graph run of a model beyond the loaded model itself, in bytes:
    per row of the batch, `per_pair` for each (query, key) pair of the padded length (the
    attention scores of every head, and the tensors derived from them, live at once),
    `per_position` for each padded position (hidden states, feed-forward activations) and
    `per_output` for each position of each hidden state the batch returns; and `per_image` for
    each image, which a vision encoder attends over on its own. The model's runtime session
    measures it out (runtime/session.py); the queue only multiplies."""

    per_pair: int = 0
    per_position: int = 0
    per_output: int = 0
    per_image: int = 0

    def batch_bytes(self, rows: int, padded: int, outputs: int, images: int = 0) -> int:
        """`rows` prompts padded to `padded` positions, returning `outputs` hidden states, with
        `images` images among them."""
        per_row = self.per_pair * padded + self.per_position + self.per_output * outputs
        return rows * padded * per_row + images * self.per_image


NO_ESTIMATE = BatchMemory()  # a job whose model gave none: bounded by rows and tokens alone


@dataclass(frozen=True)
class SchedulingPolicy:
    max_batch_tokens: int = 16384  # rows x padded length of one graph run
    # The estimated working memory (BatchMemory) one batch may take; a request that alone needs
    # more still runs, alone in its batch.
    max_batch_memory_bytes: int = 2048 * MIB
    max_batch_rows: int = 64
    max_wait_seconds: float = 0.002  # how long a partial batch waits for company
    nice_max_wait_seconds: float = 5.0  # a nice request waiting this long is served as non-nice
    max_queue_requests: int = 1024  # admission: beyond either bound, RESOURCE_EXHAUSTED at once
    max_queue_tokens: int = 262144
    length_grouping: bool = True  # batch similar lengths together to limit padding
    # With grouping: a request that would push the batch's padding past this share waits for a
    # batch nearer its own length (the most urgent request always runs).
    max_padding_ratio: float = 0.25

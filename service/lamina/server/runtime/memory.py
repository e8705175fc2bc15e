"""What one graph run costs in memory beyond the loaded model (docs/memory.md): the session
measures it, the scheduler budgets with it."""

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

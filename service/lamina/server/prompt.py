"""From prompt items to the one token sequence a model sees (api-reference.md, Tokenization).

Text items are tokenized without special tokens, token-id items are placed as they are, and the
model's special-token template wraps the whole sequence once: a single text item gives exactly
the ids of Hugging Face `tokenizer(text)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from lamina.server.domain import ImageItem, PromptItem, TextItem, TokenIdsItem
from lamina.server.errors import InvalidArgument

_SENTINEL_TEXT = "a"


@dataclass(frozen=True)
class EncodedPrompt:
    ids: np.ndarray  # int64 [n], special tokens included
    control_factors: np.ndarray  # float32 [n], 1 where no control applies

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class SpecialTokenTemplate:
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    @staticmethod
    def of(tokenizer: Tokenizer) -> SpecialTokenTemplate:
        """Read the template off the tokenizer's own post-processor by wrapping a sentinel."""
        plain = tokenizer.encode(_SENTINEL_TEXT, add_special_tokens=False)
        wrapped = tokenizer.post_process(plain).ids
        inner = plain.ids
        for start in range(len(wrapped) - len(inner) + 1):
            if wrapped[start : start + len(inner)] == inner:
                return SpecialTokenTemplate(
                    tuple(wrapped[:start]), tuple(wrapped[start + len(inner) :])
                )
        raise ValueError("the tokenizer's post-processor does not keep the sequence intact")


class PromptEncoder:
    """Tokenization and prompt validation for one model."""

    def __init__(self, tokenizer: Tokenizer, *, model: str, vocab_size: int, max_context: int):
        self.tokenizer = tokenizer
        self.template = SpecialTokenTemplate.of(tokenizer)
        self.model = model
        self.vocab_size = vocab_size
        self.max_context = max_context

    def encode(self, items: tuple[PromptItem, ...]) -> EncodedPrompt:
        pieces: list[list[int]] = []
        for index, item in enumerate(items):
            field = f"prompt.items[{index}]"
            match item:
                case TextItem(data=text, controls=controls):
                    if controls:
                        raise InvalidArgument(
                            f"{field}.text.controls", "attention controls are not supported yet"
                        )
                    pieces.append(self.tokenizer.encode(text, add_special_tokens=False).ids)
                case TokenIdsItem(data=ids, controls=controls):
                    if controls:
                        raise InvalidArgument(
                            f"{field}.token_ids.controls",
                            "attention controls are not supported yet",
                        )
                    self._check_ids(ids, f"{field}.token_ids.data")
                    pieces.append(list(ids))
                case ImageItem():
                    raise InvalidArgument(
                        f"{field}.image", f"model {self.model!r} does not support image prompts"
                    )
        body = [token for piece in pieces for token in piece]
        if not body:
            raise InvalidArgument("prompt", "the prompt is empty (no text, token ids or images)")
        sequence = [*self.template.prefix, *body, *self.template.suffix]
        if len(sequence) > self.max_context:
            raise InvalidArgument(
                "prompt",
                f"the prompt has {len(sequence)} tokens (special tokens included), more than the "
                f"{self.max_context} positions of model {self.model!r}; it is never truncated",
            )
        return EncodedPrompt(
            ids=np.asarray(sequence, dtype=np.int64),
            control_factors=np.ones(len(sequence), dtype=np.float32),
        )

    def token_strings(self, ids: np.ndarray) -> tuple[str, ...]:
        """Each position decoded on its own (a byte-level piece `Ġhello` reads ` hello`)."""
        decoded: list[str] = self.tokenizer.decode_batch(
            [[int(token)] for token in ids], skip_special_tokens=False
        )
        return tuple(decoded)

    def tokenize(self, text: str) -> tuple[list[str], list[int]]:
        """Raw vocabulary pieces and ids, without special tokens."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return list(encoding.tokens), list(encoding.ids)

    def detokenize(self, ids: list[int]) -> str:
        self._check_ids(ids, "token_ids")
        text: str = self.tokenizer.decode(ids, skip_special_tokens=False)
        return text

    def _check_ids(self, ids: tuple[int, ...] | list[int], field: str) -> None:
        for position, token in enumerate(ids):
            if not 0 <= token < self.vocab_size:
                raise InvalidArgument(
                    f"{field}[{position}]",
                    f"token id {token} is outside the vocabulary of model {self.model!r} "
                    f"(0..{self.vocab_size - 1})",
                )

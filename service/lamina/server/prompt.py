"""From prompt items to the one token sequence a model sees (api-reference.md, Tokenization).

Text items are tokenized without special tokens, token-id items are placed as they are, each
image takes 144 positions (its 12 x 12 cells), and the model's special-token template wraps the
whole sequence once: a single text item gives exactly the ids of Hugging Face `tokenizer(text)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from lamina.server.domain import ImageItem, PromptItem, TextItem, TokenIdsItem, TokenOverlap
from lamina.server.errors import InvalidArgument
from lamina.server.images import PLACEHOLDER, POSITIONS, ImageSpec, PreparedImage, prepare_image

_SENTINEL_TEXT = "a"


@dataclass(frozen=True)
class EncodedPrompt:
    ids: np.ndarray  # int64 [n], special tokens included; the pad id at image positions
    control_factors: np.ndarray  # float32 [n], 1 where no control applies
    images: tuple[PreparedImage, ...] = ()
    # int64 [n] when there are images: image k's cell c at k * 144 + c, -1 at token positions.
    image_cells: np.ndarray | None = None

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])

    @property
    def image_positions(self) -> np.ndarray:
        """bool [n]."""
        if self.image_cells is None:
            return np.zeros(self.length, dtype=bool)
        return np.asarray(self.image_cells >= 0)


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


@dataclass(frozen=True)
class _Controlled:
    """The positions one control touched (prompt-wide) and its declared factor."""

    positions: list[int]
    factor: float


class PromptEncoder:
    """Tokenization, image preparation, attention-control factors and prompt validation for one
    model. A model without a tokenizer (an image encoder) takes image items only; a model without
    an image spec takes no images."""

    def __init__(
        self,
        tokenizer: Tokenizer | None,
        *,
        model: str,
        vocab_size: int,
        max_context: int,
        token_embeddings: np.ndarray | None = None,
        image: ImageSpec | None = None,
        image_token_id: int = 0,
    ):
        self._tokenizer = tokenizer
        self.template = (
            SpecialTokenTemplate.of(tokenizer) if tokenizer else SpecialTokenTemplate((), ())
        )
        self.model = model
        self.vocab_size = vocab_size
        self.max_context = max_context
        self.token_embeddings = token_embeddings
        self.image = image
        self.image_token_id = image_token_id  # what input_ids hold where an image's cells go

    @property
    def tokenizer(self) -> Tokenizer:
        return self._text_input("model")

    def encode(
        self,
        items: tuple[PromptItem, ...],
        contextual_threshold: float | None = None,
        instruction: str = "",
    ) -> EncodedPrompt:
        """`instruction`: text tokenized as its own item before `items` (never controlled), so
        the items keep their indices in errors and their controls' offsets."""
        ids: list[int] = list(self.template.prefix)
        if instruction:
            ids += self._text_input("instruction").encode(instruction, add_special_tokens=False).ids
        body_start = len(ids)
        factors: list[float] = [1.0] * len(ids)
        controlled: list[_Controlled] = []
        images: list[PreparedImage] = []
        cells: list[int] = [-1] * len(ids)
        for index, item in enumerate(items):
            field = f"prompt.items[{index}]"
            offset = len(ids)
            touched: list[_Controlled] = []
            match item:
                case TextItem():
                    tokenizer = self._text_input(f"{field}.text")
                    encoding = tokenizer.encode(item.data, add_special_tokens=False)
                    item_factors, touched = _text_factors(item, encoding.offsets, field)
                    ids += encoding.ids
                case TokenIdsItem():
                    self._text_input(f"{field}.token_ids")
                    self._check_ids(item.data, f"{field}.token_ids.data")
                    item_factors, touched = _token_factors(item, field)
                    ids += item.data
                case ImageItem():
                    if self.image is None:
                        raise InvalidArgument(
                            f"{field}.image", f"model {self.model!r} has no image support"
                        )
                    prepared = prepare_image(item, self.image, f"{field}.image")
                    cells += range(len(images) * POSITIONS, (len(images) + 1) * POSITIONS)
                    images.append(prepared)
                    item_factors = prepared.patch_factors.tolist()
                    ids += [self.image_token_id] * POSITIONS
            cells += [-1] * (len(ids) - len(cells))
            factors += item_factors
            controlled += [
                _Controlled([offset + p for p in t.positions], t.factor) for t in touched
            ]
        body_end = len(ids)
        if body_end == body_start:
            raise InvalidArgument("prompt", "the prompt is empty (no text, token ids or images)")
        ids += self.template.suffix
        factors += [1.0] * len(self.template.suffix)
        if len(ids) > self.max_context:
            raise InvalidArgument(
                "prompt",
                f"the prompt has {len(ids)} tokens (special tokens included), more than the "
                f"{self.max_context} positions of model {self.model!r}; it is never truncated",
            )
        cells += [-1] * len(self.template.suffix)
        factor_array = np.asarray(factors, dtype=np.float64)
        cell_array = np.asarray(cells, dtype=np.int64)
        if contextual_threshold is not None and controlled:
            tokens = np.flatnonzero(cell_array[len(self.template.prefix) : body_end] < 0)
            self._spread(
                np.asarray(ids),
                factor_array,
                controlled,
                contextual_threshold,
                tokens + len(self.template.prefix),
            )
        return EncodedPrompt(
            ids=np.asarray(ids, dtype=np.int64),
            control_factors=factor_array.astype(np.float32),
            images=tuple(images),
            image_cells=cell_array if images else None,
        )

    def _text_input(self, field: str) -> Tokenizer:
        """The tokenizer, or INVALID_ARGUMENT at `field` for an image encoder."""
        if self._tokenizer is None:
            raise InvalidArgument(
                field,
                f"model {self.model!r} is an image encoder: it has no tokenizer and takes "
                "image items only",
            )
        return self._tokenizer

    def _spread(
        self,
        ids: np.ndarray,
        factors: np.ndarray,
        controlled: list[_Controlled],
        threshold: float,
        positions: np.ndarray,
    ) -> None:
        """contextual_control_threshold: a control's factor also applies to every other prompt
        position whose input token embedding has cosine similarity >= threshold with one of the
        positions it controls. Several such controls multiply, like overlapping ones.

        `positions` are the text and token-id positions (special tokens aside): image cells have
        no input token embedding (the encoder makes theirs), so they neither spread nor receive."""
        if self.token_embeddings is None:
            raise InvalidArgument(
                "contextual_control_threshold",
                f"model {self.model!r} has no token embeddings; convert it again to use it",
            )
        vectors = np.asarray(self.token_embeddings[ids[positions]], dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = vectors / np.where(norms == 0, 1, norms)
        for control in controlled:
            if not control.positions:
                continue
            own = np.flatnonzero(np.isin(positions, control.positions))
            if not own.size:
                continue
            similar: np.ndarray = np.asarray((unit[own] @ unit.T >= threshold).any(axis=0))
            similar[own] = False
            factors[positions[similar]] *= control.factor

    def token_strings(self, prompt: EncodedPrompt) -> tuple[str, ...]:
        """Each position decoded on its own (a byte-level piece `Ġhello` reads ` hello`); image
        cells read as the placeholder."""
        strings = [PLACEHOLDER] * prompt.length
        tokens = np.flatnonzero(~prompt.image_positions)
        if self._tokenizer is not None and tokens.size:
            decoded: list[str] = self._tokenizer.decode_batch(
                [[int(prompt.ids[i])] for i in tokens], skip_special_tokens=False
            )
            for position, text in zip(tokens, decoded, strict=True):
                strings[position] = text
        return tuple(strings)

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


def _text_factors(
    item: TextItem, offsets: list[tuple[int, int]], field: str
) -> tuple[list[float], list[_Controlled]]:
    """Per-token factors of a text item: a control over code points [start, start + length)
    touches each token its span overlaps; `partial` scales by the covered share of the token."""
    factors = [1.0] * len(offsets)
    touched = []
    length = len(item.data)
    for j, control in enumerate(item.controls):
        where = f"{field}.text.controls[{j}]"
        if control.length < 1:
            raise InvalidArgument(f"{where}.length", "must be at least 1")
        end = control.start + control.length
        if end > length:
            raise InvalidArgument(
                where,
                f"start {control.start} + length {control.length} goes past the item's "
                f"{length} code points",
            )
        positions = []
        for token, (first, last) in enumerate(offsets):
            covered = min(last, end) - max(first, control.start)
            if covered <= 0 or last <= first:
                continue
            if control.token_overlap is TokenOverlap.COMPLETE:
                factors[token] *= control.factor
            else:
                factors[token] *= 1 + (control.factor - 1) * covered / (last - first)
            positions.append(token)
        touched.append(_Controlled(positions, control.factor))
    return factors, touched


def _token_factors(item: TokenIdsItem, field: str) -> tuple[list[float], list[_Controlled]]:
    factors = [1.0] * len(item.data)
    touched = []
    for j, control in enumerate(item.controls):
        if control.index >= len(item.data):
            raise InvalidArgument(
                f"{field}.token_ids.controls[{j}].index",
                f"index {control.index} is past the item's {len(item.data)} token ids",
            )
        factors[control.index] *= control.factor
        touched.append(_Controlled([control.index], control.factor))
    return factors, touched

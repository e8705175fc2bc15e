"""From prompt items to the one token sequence a model sees (docs/api.md, Prompts).

Text items are tokenized without special tokens, token-id items are placed as they are, each
image takes 144 positions (its 12 x 12 cells), and the model's special-token template wraps the
whole sequence once when it has text: a single text item gives exactly the ids of Hugging Face
`tokenizer(text)`, and a prompt of token ids and images only is used exactly as given.

What a prompt costs to prepare is bounded before any of it is done (`check_size`), and every
factor the graph will see is checked against what float32 can carry (`MAX_CONTROL_FACTOR`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer

from lamina.server.domain import (
    MAX_CONTROL_FACTOR,
    ImageItem,
    PromptItem,
    TextItem,
    TokenIdsItem,
    TokenOverlap,
)
from lamina.server.errors import FieldPath, InvalidArgument
from lamina.server.images import PLACEHOLDER, POSITIONS, ImageSpec, PreparedImage, prepare_image

_SENTINEL_TEXT = "a"
# Distinct controlled tokens compared at once when spreading controls: bounds the scratch memory.
_SIMILARITY_BLOCK = 1024


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

    positions: np.ndarray  # int64
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
        self.chars_per_token = _chars_per_token(tokenizer) if tokenizer else 0

    @property
    def max_text_chars(self) -> int:
        """The most code points of text a prompt can have and still fit the context: no token of
        the vocabulary stands for more than `chars_per_token` of them."""
        return self.max_context * self.chars_per_token

    def check_size(self, items: tuple[PromptItem, ...], instruction: str = "") -> None:
        """Refuse, before tokenizing or decoding anything, a prompt that cannot fit: its token ids
        and images alone (144 positions each) already pass the context, or its text has more code
        points than any tokenization of it into `max_context` tokens could hold."""
        images = sum(isinstance(item, ImageItem) for item in items)
        exact = sum(len(item.data) for item in items if isinstance(item, TokenIdsItem))
        exact += images * POSITIONS
        has_text = bool(instruction) or any(isinstance(item, TextItem) for item in items)
        if has_text:
            exact += len(self.template.prefix) + len(self.template.suffix)
        if exact > self.max_context:
            raise InvalidArgument(
                ("prompt",),
                f"the prompt has at least {exact} tokens ({images} images of {POSITIONS} "
                f"positions each, token ids and special tokens), more than the "
                f"{self.max_context} positions of model {self.model!r}; it is never truncated",
            )
        chars = len(instruction) + sum(len(i.data) for i in items if isinstance(i, TextItem))
        if has_text and self._tokenizer is not None and chars > self.max_text_chars:
            raise InvalidArgument(
                ("prompt",),
                f"the prompt's text has {chars} characters, more than the {self.max_text_chars} "
                f"that fit the {self.max_context} positions of model {self.model!r} (no token "
                f"stands for more than {self.chars_per_token}); it is never truncated",
            )

    @property
    def tokenizer(self) -> Tokenizer:
        return self._text_input(("model",))

    def encode(
        self,
        items: tuple[PromptItem, ...],
        contextual_threshold: float | None = None,
        instruction: str = "",
    ) -> EncodedPrompt:
        """`instruction`: text tokenized as its own item before `items` (never controlled), so
        the items keep their indices in errors and their controls' offsets."""
        self.check_size(items, instruction)
        has_text = bool(instruction) or any(isinstance(item, TextItem) for item in items)
        template = self.template if has_text else SpecialTokenTemplate((), ())
        ids: list[int] = list(template.prefix)
        if instruction:
            ids += _encode(self._text_input(("instruction",)), instruction).ids
        body_start = len(ids)
        owners: list[int] = [-1] * len(ids)  # the item each position came from
        image_items: list[int] = []  # the item of each image
        factors: list[float] = [1.0] * len(ids)
        controlled: list[_Controlled] = []
        images: list[PreparedImage] = []
        cells: list[int] = [-1] * len(ids)
        for index, item in enumerate(items):
            field: FieldPath = ("prompt", index)
            offset = len(ids)
            touched: list[_Controlled] = []
            match item:
                case TextItem():
                    tokenizer = self._text_input((*field, "text"))
                    encoding = _encode(tokenizer, item.data)
                    item_factors, touched = _text_factors(item, encoding.offsets, field)
                    ids += encoding.ids
                case TokenIdsItem():
                    self._text_input((*field, "token_ids"))
                    self._check_ids(item.data, (*field, "token_ids", "data"))
                    item_factors, touched = _token_factors(item, field)
                    ids += item.data
                case ImageItem():
                    if self.image is None:
                        raise InvalidArgument(
                            (*field, "image"), f"model {self.model!r} has no image support"
                        )
                    prepared = prepare_image(item, self.image, (*field, "image"))
                    cells += range(len(images) * POSITIONS, (len(images) + 1) * POSITIONS)
                    images.append(prepared)
                    image_items.append(index)
                    item_factors = prepared.patch_factors.tolist()
                    ids += [self.image_token_id] * POSITIONS
            cells += [-1] * (len(ids) - len(cells))
            owners += [index] * (len(ids) - len(owners))
            factors += item_factors
            controlled += [_Controlled(offset + t.positions, t.factor) for t in touched]
        body_end = len(ids)
        if body_end == body_start:
            raise InvalidArgument(("prompt",), "the prompt is empty (no text, token ids or images)")
        ids += template.suffix
        factors += [1.0] * len(template.suffix)
        if len(ids) > self.max_context:
            raise InvalidArgument(
                ("prompt",),
                f"the prompt has {len(ids)} tokens (special tokens included), more than the "
                f"{self.max_context} positions of model {self.model!r}; it is never truncated",
            )
        cells += [-1] * len(template.suffix)
        factor_array = np.asarray(factors, dtype=np.float64)
        cell_array = np.asarray(cells, dtype=np.int64)
        if contextual_threshold is not None and controlled:
            tokens = np.flatnonzero(cell_array[len(template.prefix) : body_end] < 0)
            self._spread(
                np.asarray(ids),
                factor_array,
                controlled,
                contextual_threshold,
                tokens + len(template.prefix),
            )
        _check_combined(factor_array, items, owners, spread=contextual_threshold is not None)
        for k, image in enumerate(images):
            _check_combined(
                image.key_factors.astype(np.float64),
                items,
                [image_items[k]] * image.key_factors.size,
                spread=False,
            )
        return EncodedPrompt(
            ids=np.asarray(ids, dtype=np.int64),
            control_factors=factor_array.astype(np.float32),
            images=tuple(images),
            image_cells=cell_array if images else None,
        )

    def _text_input(self, field: FieldPath) -> Tokenizer:
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
        no input token embedding (the encoder makes theirs), so they neither spread nor receive.

        Similarity depends on the token ids alone, so it is computed once between the distinct
        ids of the prompt and the distinct controlled ones (at most context x context, in
        blocks), whatever the number of controls."""
        if self.token_embeddings is None:
            raise InvalidArgument(
                ("contextual_control_threshold",),
                f"model {self.model!r} has no token embeddings; convert it again to use it",
            )
        distinct, at = np.unique(ids[positions], return_inverse=True)
        vectors = np.asarray(self.token_embeddings[distinct], dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = vectors / np.where(norms == 0, 1, norms)
        # Each control's own positions, as indices into `positions` and into `distinct`.
        owns = [np.flatnonzero(np.isin(positions, c.positions)) for c in controlled]
        keys = np.unique(np.concatenate([at[own] for own in owns]))
        if not keys.size:
            return
        column = np.full(distinct.size, -1, dtype=np.int64)
        column[keys] = np.arange(keys.size)
        membership = np.zeros((keys.size, len(controlled)), dtype=np.float32)
        for c, own in enumerate(owns):
            membership[column[at[own]], c] = 1
        reached = np.zeros((distinct.size, len(controlled)), dtype=np.float32)
        # Cosines lie in -1..1: a threshold far outside compares the same, without overflowing
        # float32 (the dtype of the products) on the way.
        level = np.float32(min(max(threshold, -2.0), 2.0))
        for block in range(0, keys.size, _SIMILARITY_BLOCK):
            chosen = keys[block : block + _SIMILARITY_BLOCK]
            similar = unit @ unit[chosen].T >= level
            # A token is exactly as similar to itself as cosine allows (1), which float32's dot
            # of a unit vector with itself can miss by an ulp.
            same = np.arange(distinct.size)[:, None] == chosen[None, :]
            similar |= same & (norms[chosen, 0] > 0)[None, :] & (threshold <= 1)
            reached += similar.astype(np.float32) @ membership[block : block + _SIMILARITY_BLOCK]
        for c, control in enumerate(controlled):
            if not owns[c].size:
                continue
            similar_positions = reached[at, c] > 0
            similar_positions[owns[c]] = False
            factors[positions[similar_positions]] *= control.factor

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
        encoding = _encode(self.tokenizer, text)
        return list(encoding.tokens), list(encoding.ids)

    def detokenize(self, ids: np.ndarray | list[int]) -> str:
        self._check_ids(ids, ("token_ids",))
        # decode_batch lets go of the GIL (decode does not): a long list stalls no other request.
        (text,) = self.tokenizer.decode_batch([np.asarray(ids).tolist()], skip_special_tokens=False)
        return str(text)

    def _check_ids(self, ids: np.ndarray | tuple[int, ...] | list[int], field: FieldPath) -> None:
        values = np.asarray(ids, dtype=np.int64)
        outside = np.flatnonzero((values < 0) | (values >= self.vocab_size))
        if outside.size:
            position = int(outside[0])
            raise InvalidArgument(
                (*field, int(position)),
                f"token id {int(values[position])} is outside the vocabulary of model "
                f"{self.model!r} (0..{self.vocab_size - 1})",
            )


def _encode(tokenizer: Tokenizer, text: str) -> Encoding:
    """The text's tokens without special tokens. encode_batch releases the GIL while it works
    (encode holds it), so a long text on the CPU executor never stops the event loop."""
    (encoding,) = tokenizer.encode_batch([text], add_special_tokens=False)
    return encoding


def _chars_per_token(tokenizer: Tokenizer) -> int:
    """The most code points one token can stand for: the vocabulary's longest piece (its
    continuation marker aside), or for WordPiece the word length past which a whole word
    becomes one unknown token."""
    longest = max((len(piece.removeprefix("##")) for piece in tokenizer.get_vocab()), default=1)
    unknown_word = getattr(tokenizer.model, "max_input_chars_per_word", 0)
    return max(1, longest, int(unknown_word or 0))


def _check_combined(
    factors: np.ndarray, items: tuple[PromptItem, ...], owners: list[int], *, spread: bool
) -> None:
    """Overlapping controls multiply: their product must stay a factor float32 (and its log)
    can carry, as each factor alone must (docs/api.md: Attention controls)."""
    # Image factors arrive as float32: the largest factor itself rounds up a little.
    over = np.flatnonzero(factors > MAX_CONTROL_FACTOR * (1 + 1e-6))
    if not over.size:
        return
    position = int(over[0])
    index = owners[position]
    kind = {TextItem: "text", TokenIdsItem: "token_ids", ImageItem: "image"}[type(items[index])]
    how = "with contextual_control_threshold spreading them, " if spread else ""
    raise InvalidArgument(
        ("prompt", index, kind, "controls"),
        f"the controls on one position multiply to {factors[position]:.3g}, {how}more than the "
        f"largest control factor {MAX_CONTROL_FACTOR:.0e}",
    )


def _text_factors(
    item: TextItem, offsets: list[tuple[int, int]], field: FieldPath
) -> tuple[list[float], list[_Controlled]]:
    """Per-token factors of a text item: a control over code points [start, start + length)
    touches each token its span overlaps; `partial` scales by the covered share of the token."""
    factors = np.ones(len(offsets), dtype=np.float64)
    touched = []
    length = len(item.data)
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    first, last = spans[:, 0], spans[:, 1]
    width = last - first
    for j, control in enumerate(item.controls):
        where = (*field, "text", "controls", j)
        if control.length < 1:
            raise InvalidArgument((*where, "length"), "must be at least 1")
        end = control.start + control.length
        if end > length:
            raise InvalidArgument(
                where,
                f"start {control.start} + length {control.length} goes past the item's "
                f"{length} code points",
            )
        covered = np.minimum(last, end) - np.maximum(first, control.start)
        hit = np.flatnonzero((covered > 0) & (width > 0))
        if control.token_overlap is TokenOverlap.COMPLETE:
            factors[hit] *= control.factor
        else:
            factors[hit] *= 1 + (control.factor - 1) * covered[hit] / width[hit]
        touched.append(_Controlled(hit, control.factor))
    return factors.tolist(), touched


def _token_factors(item: TokenIdsItem, field: FieldPath) -> tuple[list[float], list[_Controlled]]:
    factors = [1.0] * len(item.data)
    touched = []
    for j, control in enumerate(item.controls):
        if control.index >= len(item.data):
            raise InvalidArgument(
                (*field, "token_ids", "controls", j, "index"),
                f"index {control.index} is past the item's {len(item.data)} token ids",
            )
        factors[control.index] *= control.factor
        touched.append(_Controlled(np.array([control.index], dtype=np.int64), control.factor))
    return factors, touched

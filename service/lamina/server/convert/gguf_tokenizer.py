"""A tokenizer.json from a GGUF file's metadata, tokenizing exactly as transformers' GGUF loader.

A GGUF carries the vocabulary, merges, token types and special ids under llama.cpp's keys. For a
byte-level BPE vocabulary (`tokenizer.ggml.model = gpt2`) transformers builds a GPT-2 style
tokenizer: byte-level pre-tokenizer (with a split regex chosen by `tokenizer.ggml.pre` where it
knows one), byte-level decoder, control tokens as special added tokens, user-defined tokens as
plain added tokens. This module builds the same with the `tokenizers` library.

The encoders' vocabularies are rebuilt as their own tokenizer.json has them: WordPiece (`bert`:
BERT, MiniLM, bge, e5, nomic-embed-text), SentencePiece BPE (`llama` with scores: Gemma 3,
EmbeddingGemma) and ModernBERT's byte-level BPE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

CONTROL = 3  # llama.cpp token types
USER_DEFINED = 4

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# `tokenizer.ggml.pre` values whose split differs from GPT-2's; others use GPT-2's own regex.
SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def tokenizer_from_gguf(metadata: Mapping[str, Any]) -> Tokenizer:
    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"GGUF tokenizer model {kind!r} is not supported; supported: 'gpt2' (byte-level BPE)"
        )
    spelling = _byte_alphabet()
    alphabet = set(spelling.values())
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    vocab = {
        token
        if set(token) <= alphabet
        else "".join(spelling[b] for b in token.encode("utf-8")): index
        for index, token in enumerate(tokens)
    }
    merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    split = SPLITS.get(str(metadata.get("tokenizer.ggml.pre")))
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    types: list[int] = list(metadata.get("tokenizer.ggml.token_type") or [])
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel: skipped, as
    # transformers does, so the vocabulary keeps the size the model expects.
    tokenizer.add_special_tokens(
        [
            AddedToken(token, normalized=False, special=True)
            for token, kind_ in zip(tokens, types, strict=False)
            if kind_ == CONTROL and set(token) <= alphabet
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(token, normalized=False, special=False)
            for token, kind_ in zip(tokens, types, strict=False)
            if kind_ == USER_DEFINED and token in vocab
        ]
    )
    bos = metadata.get("tokenizer.ggml.bos_token_id")
    if metadata.get("tokenizer.ggml.add_bos_token") and bos is not None:
        bos_token = tokens[int(bos)]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A",
            pair=f"{bos_token} $A $B:1",
            special_tokens=[(bos_token, int(bos))],
        )
    else:
        tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    return tokenizer


# --- WordPiece (`tokenizer.ggml.model = bert`) -------------------------------------------------

PHANTOM_SPACE = "\u2581"
# llama.cpp writes no lowercase flag: a cased BERT vocabulary (bert-base-cased) has capitals in
# over a tenth of its pieces, an uncased one (bert-base-uncased, MiniLM, bge, e5) in none, so a
# share above this marks the vocabulary cased.
_CASED_SHARE = 0.01


def wordpiece_piece(token: str, kind: int) -> str:
    """Undo llama.cpp's "phantom space" spelling (convert_hf_to_gguf.py BertModel.set_vocab):
    control tokens stay as they are, a word-initial piece gained "▁", a "##" continuation lost
    its "##"."""
    if kind == CONTROL:
        return token
    if token.startswith(PHANTOM_SPACE):
        return token[len(PHANTOM_SPACE) :]
    return "##" + token


def vocabulary_is_lowercase(pieces: list[str], kinds: list[int]) -> bool:
    plain = [p for p, k in zip(pieces, kinds, strict=True) if k not in (CONTROL, USER_DEFINED)]
    cased = sum(1 for piece in plain if piece != piece.lower())
    return cased <= _CASED_SHARE * max(len(plain), 1)


def _special_id(metadata: Mapping[str, Any], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = metadata.get(f"tokenizer.ggml.{name}")
        if value is not None:
            return int(value)
    return None


def wordpiece_tokenizer_from_gguf(metadata: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer.json transformers' BertTokenizerFast would have: BERT normalizer (lowercase
    and accent stripping for an uncased vocabulary), BERT pre-tokenizer, WordPiece with "##",
    [CLS] $A [SEP] around every prompt, control tokens as special added tokens."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind != "bert":
        raise ValueError(
            f"GGUF tokenizer model {kind!r} is not supported for this architecture; "
            "supported: 'bert' (WordPiece)"
        )
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    kinds: list[int] = list(metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    pieces = [wordpiece_piece(token, kind_) for token, kind_ in zip(tokens, kinds, strict=True)]
    unk = _special_id(metadata, ("unknown_token_id",))
    if unk is None:
        raise ValueError("GGUF metadata lacks tokenizer.ggml.unknown_token_id (WordPiece [UNK])")
    tokenizer = Tokenizer(
        models.WordPiece(
            vocab={piece: index for index, piece in enumerate(pieces)},
            unk_token=pieces[unk],
            continuing_subword_prefix="##",
            max_input_chars_per_word=100,
        )
    )
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=None,  # follows lowercase, as in BertTokenizerFast
        lowercase=vocabulary_is_lowercase(pieces, kinds),
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer.add_special_tokens(
        [
            AddedToken(piece, normalized=False, special=True)
            for piece, kind_ in zip(pieces, kinds, strict=True)
            if kind_ == CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(piece, normalized=True, special=False)
            for piece, kind_ in zip(pieces, kinds, strict=True)
            if kind_ == USER_DEFINED
        ]
    )
    tokenizer.post_processor = _cls_sep_template(metadata, pieces)
    return tokenizer


def _cls_sep_template(
    metadata: Mapping[str, Any], pieces: list[str]
) -> processors.TemplateProcessing:
    """[CLS] $A [SEP], each where the GGUF says it is added (gguf-py's SpecialVocab reads both
    from tokenizer.json's template; llama.cpp adds them by default)."""
    cls = _special_id(metadata, ("cls_token_id", "bos_token_id"))
    sep = _special_id(metadata, ("seperator_token_id", "eos_token_id"))
    prefix = (
        [pieces[cls]]
        if cls is not None and metadata.get("tokenizer.ggml.add_bos_token", True)
        else []
    )
    suffix = (
        [pieces[sep]]
        if sep is not None and metadata.get("tokenizer.ggml.add_eos_token", True)
        else []
    )
    ids = {pieces[i]: i for i in (cls, sep) if i is not None}
    single = " ".join([*prefix, "$A", *suffix])
    pair = " ".join([*prefix, "$A", *suffix, "$B:1", *(f"{s}:1" for s in suffix)])
    return processors.TemplateProcessing(
        single=single,
        pair=pair,
        special_tokens=[(piece, ids[piece]) for piece in dict.fromkeys([*prefix, *suffix])],
    )


# --- SentencePiece BPE (`tokenizer.ggml.model = llama`) -----------------------------------------

NORMAL = 1
UNKNOWN = 2
BYTE = 6


@dataclass(frozen=True)
class SentencePieceVocab:
    pieces: list[str]
    scores: list[float]
    kinds: list[int]

    @staticmethod
    def from_metadata(metadata: Mapping[str, Any]) -> SentencePieceVocab:
        pieces: list[str] = list(metadata["tokenizer.ggml.tokens"])
        scores = [float(s) for s in metadata.get("tokenizer.ggml.scores") or []]
        kinds: list[int] = list(metadata.get("tokenizer.ggml.token_type") or [])
        if len(scores) != len(pieces) or len(kinds) != len(pieces):
            raise ValueError(
                "GGUF SentencePiece vocabulary needs tokenizer.ggml.scores and "
                "tokenizer.ggml.token_type for every token"
            )
        return SentencePieceVocab(pieces, scores, kinds)

    def of_kind(self, *kinds: int) -> list[str]:
        return [p for p, k in zip(self.pieces, self.kinds, strict=True) if k in kinds]


def sentencepiece_merges(vocab: SentencePieceVocab) -> list[tuple[str, str]]:
    """SentencePiece BPE joins, at each step, the adjacent pair whose joined piece scores
    highest; as BPE merges that is every split of a piece into two pieces of the vocabulary,
    ranked by the joined piece's score (ties in vocabulary order, then by the ids of the two
    halves), as transformers' SentencePieceExtractor orders them. Only normal pieces are
    joined: user-defined ones are matched whole (added tokens), control ones never."""
    ids = {piece: index for index, piece in enumerate(vocab.pieces)}
    candidates: list[tuple[float, int, int, int]] = []
    for index, (piece, kind) in enumerate(zip(vocab.pieces, vocab.kinds, strict=True)):
        if kind != NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = ids.get(piece[:cut]), ids.get(piece[cut:])
            if left is not None and right is not None:
                candidates.append((-vocab.scores[index], index, left, right))
    candidates.sort()
    return [(vocab.pieces[left], vocab.pieces[right]) for _, _, left, right in candidates]


def _refuse_sentencepiece_options(metadata: Mapping[str, Any]) -> None:
    """Normalizations a SentencePiece model may carry that this rebuild does not apply."""
    if metadata.get("tokenizer.ggml.remove_extra_whitespaces"):
        raise ValueError(
            "GGUF tokenizer.ggml.remove_extra_whitespaces true is not supported; only false "
            "(as Gemma's vocabulary)"
        )
    if metadata.get("tokenizer.ggml.precompiled_charsmap"):
        raise ValueError(
            "GGUF tokenizer.ggml.precompiled_charsmap is not supported; only vocabularies "
            "without a normalization table (as Gemma's)"
        )


def sentencepiece_tokenizer_from_gguf(metadata: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer.json transformers has for a SentencePiece BPE vocabulary such as Gemma's:
    spaces as "▁" (a leading one only where add_space_prefix says), BPE with merges from the
    scores, byte fallback to <0xXX> pieces, control tokens as special added tokens, <bos> /
    <eos> around a prompt as add_bos_token / add_eos_token say."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind != "llama":
        raise ValueError(
            f"GGUF tokenizer model {kind!r} is not supported for this architecture; "
            "supported: 'llama' (SentencePiece BPE)"
        )
    _refuse_sentencepiece_options(metadata)
    vocab = SentencePieceVocab.from_metadata(metadata)
    # Gemma's converter marks <unk> CONTROL when tokenizer_config lists it: the id decides.
    unk = _special_id(metadata, ("unknown_token_id",))
    unknown = [vocab.pieces[unk]] if unk is not None else vocab.of_kind(UNKNOWN)
    tokenizer = Tokenizer(
        models.BPE(
            vocab={piece: index for index, piece in enumerate(vocab.pieces)},
            merges=sentencepiece_merges(vocab),
            unk_token=unknown[0] if unknown else None,
            fuse_unk=True,
            byte_fallback=bool(vocab.of_kind(BYTE)),
        )
    )
    replace = normalizers.Replace(" ", PHANTOM_SPACE)
    # llama.cpp's SentencePiece default is a space prefix; Gemma's converter writes false.
    if metadata.get("tokenizer.ggml.add_space_prefix", True):
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(PHANTOM_SPACE), replace])
    else:
        tokenizer.normalizer = replace
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(PHANTOM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tokenizer.add_special_tokens(
        [AddedToken(p, normalized=False, special=True) for p in vocab.of_kind(CONTROL, UNKNOWN)]
    )
    # User-defined pieces (Gemma's <start_of_turn>, whitespace runs) are matched whole in the
    # raw text, as SentencePiece does; llama.cpp's converter spells their "▁" as " ".
    tokenizer.add_tokens(
        [AddedToken(p, normalized=False, special=False) for p in vocab.of_kind(USER_DEFINED)]
    )
    tokenizer.post_processor = _bos_eos_template(metadata, vocab.pieces)
    return tokenizer


def _bos_eos_template(
    metadata: Mapping[str, Any], pieces: list[str]
) -> processors.TemplateProcessing:
    bos = _special_id(metadata, ("bos_token_id",))
    eos = _special_id(metadata, ("eos_token_id",))
    # llama.cpp's defaults for a SentencePiece vocabulary: <bos> added, <eos> not.
    prefix = (
        [pieces[bos]]
        if bos is not None and metadata.get("tokenizer.ggml.add_bos_token", True)
        else []
    )
    suffix = (
        [pieces[eos]]
        if eos is not None and metadata.get("tokenizer.ggml.add_eos_token", False)
        else []
    )
    ids = {pieces[i]: i for i in (bos, eos) if i is not None}
    return processors.TemplateProcessing(
        single=" ".join([*prefix, "$A", *suffix]),
        pair=" ".join([*prefix, "$A", *suffix, "$B:1", *(f"{s}:1" for s in suffix)]),
        special_tokens=[(piece, ids[piece]) for piece in dict.fromkeys([*prefix, *suffix])],
    )


# --- ModernBERT's byte-level BPE (`tokenizer.ggml.model = gpt2`, pre `modern-bert`) -------------


def modernbert_tokenizer_from_gguf(metadata: Mapping[str, Any]) -> Tokenizer:
    """ModernBERT's tokenizer.json: NFC, GPT-2's byte-level BPE, [CLS] $A [SEP]. The GGUF
    keeps no normalizer; every ModernBERT tokenizer.json has NFC, so it is put back."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"GGUF tokenizer model {kind!r} is not supported for this architecture; "
            "supported: 'gpt2' (byte-level BPE)"
        )
    tokenizer = tokenizer_from_gguf(metadata)
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.post_processor = _cls_sep_template(metadata, list(metadata["tokenizer.ggml.tokens"]))
    return tokenizer

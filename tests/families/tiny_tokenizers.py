"""Small tokenizers of each kind a family uses, trained on the parity corpus with `tokenizers`.

A tiny checkpoint needs a vocabulary of a few hundred entries, so its tokenizer is trained here
rather than taken from a real model (whose vocabulary alone would be megabytes). Each keeps the
pipeline of its kind (normalizer, pre-tokenizer, model, post-processor, decoder), which is what
tokenizer parity with `transformers` has to reproduce. Used by the reference scripts only: the
trained tokenizer.json is committed with the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from tests.corpus import TOKENIZER_CORPUS

VOCAB_SIZE = 400


def _corpus() -> list[str]:
    return [text for text in TOKENIZER_CORPUS if text] * 2


def wordpiece(
    *,
    lowercase: bool = True,
    cls: str = "[CLS]",
    sep: str = "[SEP]",
    pad: str = "[PAD]",
    unk: str = "[UNK]",
    mask: str = "[MASK]",
    id_order: Sequence[str] | None = None,
) -> Tokenizer:
    """BERT's: BertNormalizer, BertPreTokenizer, WordPiece with ##, `[CLS] $A [SEP]`.
    `id_order`: the special tokens in id order (MPNet's `<s> <pad> </s> <unk>`), if not BERT's."""
    specials = list(id_order) if id_order is not None else [pad, unk, cls, sep, mask]
    tokenizer = Tokenizer(models.WordPiece(unk_token=unk))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials)
    tokenizer.train_from_iterator(_corpus(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )
    return tokenizer


def unigram(
    *,
    specials: Sequence[str] = ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
    bos: str | None = "<s>",
    eos: str | None = "</s>",
    unk: str = "<unk>",
) -> Tokenizer:
    """SentencePiece's (XLM-RoBERTa, Gemma): NFKC, Metaspace (▁), Unigram, `bos $A eos`."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=list(specials), unk_token=unk
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    _template(tokenizer, bos, eos)
    return tokenizer


def byte_level_bpe(
    *,
    specials: Sequence[str] = ("<|endoftext|>",),
    bos: str | None = None,
    eos: str | None = None,
) -> Tokenizer:
    """GPT-2's (Llama 3, Qwen): ByteLevel pre-tokenizer and decoder, BPE over bytes."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    _template(tokenizer, bos, eos)
    return tokenizer


# Qwen2's and Qwen3's split: GPT-2's, but case-insensitive contractions, a letter run may take
# one leading symbol, and digits split one by one.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def qwen_bpe(
    *,
    specials: Sequence[str] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    eos: str | None = None,
) -> Tokenizer:
    """Qwen's (Qwen2, Qwen3): NFC, the Qwen split then ByteLevel without its own regex, BPE
    over bytes, a ByteLevel post-processor (no bos, no eos; `eos` appends one, as
    Qwen3-Embedding's tokenizer does)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    tokenizer.post_processor = processors.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    _template(tokenizer, None, eos)
    return tokenizer


def gemma_bpe(
    *,
    specials: Sequence[str] = ("<pad>", "<eos>", "<bos>", "<unk>"),
    bos: str | None = "<bos>",
    eos: str | None = None,
    unk: str = "<unk>",
    alphabet: int = 100,
) -> Tokenizer:
    """Gemma's (transformers' GemmaTokenizer): spaces replaced by ▁ (no prefix space), a Split on
    spaces, BPE with byte fallback (<0x00> .. <0xFF> after the specials), `<bos> $A`. Only the
    `alphabet` most frequent characters get a piece of their own, so the rest (CJK, emoji) take
    the byte fallback."""
    import json  # only here: the trained model is rebuilt from its serialisation

    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, limit_alphabet=alphabet)
    # Trained within words, as SentencePiece splits by whitespace; run on whole texts as Gemma's.
    learner = Tokenizer(models.BPE())
    learner.normalizer = normalizers.Replace(" ", "▁")
    learner.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    learner.train_from_iterator(_corpus(), trainer)
    trained = json.loads(learner.to_str())["model"]
    pieces = [*specials, *(f"<0x{b:02X}>" for b in range(256))]
    pieces += [p for p in sorted(trained["vocab"], key=trained["vocab"].get) if p not in pieces]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in trained["merges"]]
    merges = [(str(left), str(right)) for left, right in pairs]
    tokenizer = Tokenizer(
        models.BPE(
            vocab={p: i for i, p in enumerate(pieces)},
            merges=merges,
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    tokenizer.add_special_tokens(list(specials))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    _template(tokenizer, bos, eos)
    return tokenizer


def _template(tokenizer: Tokenizer, bos: str | None, eos: str | None) -> None:
    if bos is None and eos is None:
        return
    pieces = [p for p in (bos, "$A", eos) if p is not None]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=" ".join(pieces),
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in (bos, eos) if t is not None],
    )

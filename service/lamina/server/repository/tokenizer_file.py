"""Reading a tokenizer.json the way Lamina uses it."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer


def load_plain_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer with padding and truncation off: Lamina never pads or truncates a prompt
    inside the tokenizer (batching pads, and an over-long prompt is an error, not a cut)."""
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    return plain_tokenizer(path.read_text())


def plain_tokenizer(text: str) -> Tokenizer:
    """A tokenizer.json's contents, with padding and truncation off (see load_plain_tokenizer)."""
    tokenizer = Tokenizer.from_str(text)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer

"""Reading a tokenizer.json the way Lamina uses it."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer


def load_plain_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer with padding and truncation off: Lamina never pads or truncates a prompt
    inside the tokenizer (batching pads, and an over-long prompt is an error, not a cut)."""
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    tokenizer = Tokenizer.from_str(path.read_text())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer

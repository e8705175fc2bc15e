"""The texts every parity fixture is made from: prompts whose hidden states are compared, and a
tokenizer corpus of Unicode, digits, runs of spaces, newlines, emoji and special tokens."""

PROMPTS = [
    "Hello world",
    "Lamina serves every hidden state of a transformer over gRPC.",
    "Crème brûlée, naïve café — Ångström units; straße; 東京は日本の首都です。",
    "Emoji 🙂🚀 and numbers 3.14159, 2026-11-24, $1,000,000!",
    "   leading spaces,\ttabs\nand newlines\n\n   everywhere   ",
    " ".join(["a long prompt about embeddings"] * 20),
]

# Tokenizer parity corpus: Unicode, digits, runs of spaces, newlines, emoji, special tokens.
TOKENIZER_CORPUS = [
    *PROMPTS,
    "",
    " ",
    "    four spaces, then\ttab and \r\n windows newline",
    "1234567890 12 345 6789 0.5 -42 1e10 3,141,592",
    "Zürich, São Paulo, Kraków, Reykjavík; Ελληνικά; русский; עברית; العربية; हिन्दी",
    "👩‍👩‍👧‍👦 🏳️‍🌈 🇩🇪 ✨🔥💯 a🙂b",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n    return x ** 2  # comment\n\n\nprint(f(3))",
    "don't won't it's I'm they're we've you'll he'd",
    "ALL CAPS and MiXeD cAsE and snake_case and kebab-case and CamelCase",
]

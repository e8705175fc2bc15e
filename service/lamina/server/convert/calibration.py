"""The calibration set a reduced precision is measured on (convert/fidelity.py).

It ships with the project so that every machine measures the same thing: prose in several
languages and scripts, code, numbers, emoji and markup, from a single token up to the model's
whole context (the long prompt is the set itself, joined and cut at the context). Image models
are not quantized, so the set has no images yet.

CALIBRATION_ID names this set in the manifests that record a measurement on it: change the texts
and bump it, so that a recorded fidelity always says what it was measured on.
"""

# ruff: noqa: RUF001 (the texts are in other scripts on purpose)
from __future__ import annotations

CALIBRATION_ID = "calibration-1"

TEXTS: tuple[str, ...] = (
    "a",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors so that similar meanings lie close together.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong stepped out at 02:56 UTC.",
    "Die Katze sitzt auf der Matte und schaut aus dem Fenster in den verschneiten Garten.",
    "Le chat dort sur le canapé pendant que la pluie tombe doucement sur les toits de Paris.",
    "El tren de alta velocidad une Madrid y Barcelona en menos de tres horas.",
    "Il pranzo della domenica in Italia dura spesso fino al tardo pomeriggio.",
    "Москва — столица России, крупнейший по численности населения город страны.",
    "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。",
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "서울은 대한민국의 수도이며 한강이 도시를 가로질러 흐릅니다.",
    "القاهرة هي عاصمة مصر وأكبر مدينة في العالم العربي.",
    "हिन्दी भारत की सबसे अधिक बोली जाने वाली भाषा है।",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας και μία από τις αρχαιότερες πόλεις.",
    "def fibonacci(n: int) -> int:\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "SELECT name, COUNT(*) FROM orders WHERE created_at > '2024-01-01' GROUP BY name;",
    '{"id": 42, "tags": ["alpha", "beta"], "nested": {"ok": true, "ratio": 0.75}}',
    '<div class="card"><h2>Title</h2><p>Some <b>bold</b> text &amp; a link.</p></div>',
    "for (let i = 0; i < items.length; i++) { total += items[i].price * items[i].qty; }",
    "3.14159 2.71828 1.41421 6.02214076e23 -273.15 0xFF 1e-9 42",
    "🎉🚀 Launch day! 🌍✨ Thanks to everyone 🙏❤️ #shipit 😄👍",
    "!!! ??? ... --- *** ### @@@ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}}",
    "URGENT: CALL +1-555-0100 BEFORE 5PM!!! VISIT HTTPS://EXAMPLE.COM/OFFER?ID=123",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "The contract terminates upon thirty (30) days' written notice by either party.",
    "Patient presents with acute onset dyspnea, tachycardia and bilateral pedal edema.",
    "Breaking: markets rallied as the central bank held interest rates steady on Tuesday.",
    "Q: What is the capital of Australia? A: Canberra, not Sydney as many people think.",
    "lol ok see u tmrw at the thing, bring snacks pls 🍕",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
)


def long_text() -> str:
    """Every text joined: tokenized and cut at the context, the longest calibration prompt."""
    return "\n".join(TEXTS * 8)

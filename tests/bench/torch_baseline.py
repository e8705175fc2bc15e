"""The PyTorch path users would otherwise run, timed on the same token counts as Lamina.

Runs in the reference environment (torch + transformers + sentence-transformers; see
tests/bench/run.py), never in Lamina's. Prints one JSON object: tokens per second per model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForCausalLM


def timed(run: object, repeats: int) -> float:
    run()  # type: ignore[operator]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minilm", type=Path, required=True, help="the all-MiniLM-L6-v2 folder")
    parser.add_argument("--smollm2", type=Path, required=True, help="the SmolLM2 GGUF file")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    result = {}

    encoder = SentenceTransformer(str(args.minilm), device="cpu")
    # 64 texts of exactly 128 tokens: [CLS] + 126 word pieces + [SEP].
    text = " ".join(["hello"] * 126)
    assert len(encoder.tokenizer(text)["input_ids"]) == 128
    texts = [text] * 64
    seconds = timed(lambda: encoder.encode(texts, batch_size=64), args.repeats)
    result["all-minilm-l6-v2"] = {
        "path": "sentence-transformers encode",
        "tokens_per_second": 64 * 128 / seconds,
    }

    decoder = AutoModelForCausalLM.from_pretrained(
        args.smollm2.parent, gguf_file=args.smollm2.name, dtype=torch.float32
    ).eval()
    ids = torch.randint(1000, 20000, (16, 128))

    def forward() -> None:
        with torch.no_grad():
            decoder.model(input_ids=ids, output_hidden_states=True)

    seconds = timed(forward, args.repeats)
    result["smollm2-135m-instruct"] = {
        "path": "transformers forward",
        "tokens_per_second": 16 * 128 / seconds,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

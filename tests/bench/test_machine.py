"""The machine line of `make bench`'s report, read from /proc/cpuinfo texts of two kinds."""

from __future__ import annotations

from pathlib import Path

from tests.bench.machine import cpu_of, describe

XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 fma f16c avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8 avx_vnni
processor\t: 1
model name\t: something else
flags\t\t: fpu
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse2 fma f16c avx2
"""


def test_the_first_processors_model_and_relevant_flags_in_a_fixed_order() -> None:
    model, flags = cpu_of(XEON)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert flags == [
        "avx2",
        "fma",
        "f16c",
        "avx_vnni",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    ]


def test_the_line_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "epyc").write_text(EPYC)
    line = describe(tmp_path / "epyc")
    assert line.startswith("AMD EPYC, ")
    assert "(avx2 fma f16c; no AVX-512, no AMX)" in line and "ONNX Runtime " in line
    assert "bf16 not computed: the CPU has neither AVX512_BF16 nor AMX" in line
    (tmp_path / "xeon").write_text(XEON)
    assert "no AMX" not in describe(tmp_path / "xeon")

"""The server's layers, pinned: imports run one way (no module imports a layer above its own), the
wire types stay at the edges, serving never touches the offline converter, and `lamina serve`
loads its models without importing onnx (the converter's library)."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

SERVER = Path(__file__).parents[1] / "service" / "lamina" / "server"

# Bottom to top: a module may import its own unit and the units before it, never one after.
# A unit is a top-level module or package of lamina.server.
LAYERS = [
    "domain",
    "errors",
    "fields",
    "security",
    "repository",
    "pooling",
    "images",
    "prompt",
    "limits",
    "runtime",
    "scheduling",
    "models",
    "metrics",
    "observability",
    "embeddings",
    "engine",
    "calls",
    "api",
    "gateway",
    "config",
    "server",
    "cli",
    "__main__",
]
# The offline compiler: it builds on the repository's contract and the domain's vocabulary, and
# only the CLI (and `lamina prepare`/`convert` through it) imports it. It measures a reduced
# precision as a pool computes it, so it may run the runtime (runtime/openvino.py, blockwise.py).
CONVERTER = "convert"
CONVERTER_MAY_IMPORT = {"domain", "errors", "repository", "runtime", CONVERTER}
# Where the protobuf messages of lamina.v1 may be imported: the gRPC edge and its wiring.
WIRE_TYPES_AT = {"api", "server", "cli"}


def unit_of(module: str) -> str:
    return module.removeprefix("lamina.server.").split(".")[0]


def imports() -> list[tuple[str, str, int]]:
    """(importing unit, imported module, line) for every lamina import under service/."""
    found = []
    for path in sorted(SERVER.rglob("*.py")):
        relative = path.relative_to(SERVER).with_suffix("")
        unit = relative.parts[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("lamina."):
                    found.append((unit, name, node.lineno))
    return found


def test_every_unit_has_its_place() -> None:
    modules = {p.stem for p in SERVER.glob("*.py")} - {"__init__"}
    packages = {p.parent.name for p in SERVER.glob("*/__init__.py")}
    units = modules | packages
    assert units == {*LAYERS, CONVERTER}


def test_imports_run_one_way() -> None:
    upward = []
    for unit, module, line in imports():
        if not module.startswith("lamina.server.") or unit == CONVERTER:
            continue
        target = unit_of(module)
        if target in LAYERS and LAYERS.index(target) > LAYERS.index(unit):
            upward.append(f"{unit} -> {module} (line {line})")
    assert upward == []


def test_the_converter_builds_on_the_contract_only() -> None:
    reaching = [
        f"{module} (line {line})"
        for unit, module, line in imports()
        if unit == CONVERTER
        and module.startswith("lamina.server.")
        and unit_of(module) not in CONVERTER_MAY_IMPORT
        and module != "lamina.server"
    ]
    assert reaching == []


def test_serving_never_imports_the_converter() -> None:
    reaching = [
        f"{unit} -> {module} (line {line})"
        for unit, module, line in imports()
        if unit not in (CONVERTER, "cli") and unit_of(module) == CONVERTER
    ]
    assert reaching == []


def test_only_the_grpc_edge_knows_the_wire_types() -> None:
    reaching = [
        f"{unit} -> {module} (line {line})"
        for unit, module, line in imports()
        if module.startswith("lamina.v1") and unit not in WIRE_TYPES_AT
    ]
    assert reaching == []


@pytest.mark.model
def test_lamina_serve_loads_its_models_without_onnx(tmp_path: Path) -> None:
    """The real `lamina serve`, started as a user starts it, with every default model loaded:
    `-X importtime` lists each module the process imported."""
    repository = Path(os.environ.get("LAMINA_MODEL_REPOSITORY", "")) or None
    assert repository is not None and repository.is_dir(), "make models first"
    http_port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "lamina.server",
            "serve",
            "--model-repository",
            str(repository),
            "--port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--http-port",
            str(http_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=2):
                    break  # 200: every model loaded, serving
            except OSError:
                assert process.poll() is None, "the server exited"
                time.sleep(0.5)
        else:
            raise AssertionError("the server did not start serving within 120 s")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", stderr, re.M))
    assert "lamina.server.engine" in imported and "onnxruntime" in imported  # it did serve
    assert not {m for m in imported if m == "onnx" or m.startswith("onnx.")}
    assert not {m for m in imported if m.startswith("lamina.server.convert")}

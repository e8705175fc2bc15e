"""Checks on the project itself: generated stubs are fresh, packaging lists every package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    """Fails when protos/ changed without `make protos`."""
    protos = sorted((ROOT / "protos").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *map(str, protos),
        ],
        check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "protoc generated nothing"
    for relative in generated:
        committed = ROOT / "client" / relative
        assert committed.is_file(), f"{relative} is not committed: run `make protos`"
        assert committed.read_bytes() == (tmp_path / relative).read_bytes(), (
            f"{relative} is stale: run `make protos`"
        )


def test_every_python_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {Path(folder): name for name, folder in config["package-dir"].items()}
    found = set()
    for folder, name in roots.items():
        for init in (ROOT / folder).rglob("*.py"):
            package = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *package.parts]))
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_serve_help_explains_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lamina.server", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in ("--port", "--model-repository", "--threads", "--metrics-port", "--drain-seconds"):
        assert flag in result.stdout
    assert "LAMINA_PORT" in result.stdout and "LAMINA_MODEL_REPOSITORY" in result.stdout


def test_the_client_installs_and_imports_without_the_server_stack() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bare = sorted(
        requirement.split(">")[0].split("=")[0] for requirement in project["dependencies"]
    )
    assert bare == ["grpcio", "protobuf"]
    check = (
        "import sys, lamina.client, lamina.client.cli; "
        "loaded = [m for m in ('onnxruntime', 'tokenizers', 'lamina.server') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", check], check=True)

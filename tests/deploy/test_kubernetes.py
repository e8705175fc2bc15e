"""The kustomize overlays in deploy/k8s: they render, validate against the Kubernetes schemas
offline, and agree with what the server really does (flags, ports, drain, metrics)."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from lamina.server.config import Settings
from lamina.server.metrics import Metrics
from tests.deploy import cli_args
from tests.deploy.manifests import (
    K8S,
    OVERLAYS,
    ROOT,
    Resource,
    container,
    environment,
    init_container,
    kustomize_commands,
    of_kind,
    one,
    overlay,
    ports,
    probes,
    render,
    render_with,
    selects,
)

# The oldest Kubernetes the manifests claim (native gRPC probes and matchLabelKeys in topology
# spread are on by default from 1.27) and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
SERVICE_MONITOR_SCHEMA = Path(__file__).parent / "schemas" / "servicemonitor.json"
ADAPTER = K8S / "prometheus-adapter"


def _validate(resource: Resource) -> None:
    what = f"{resource['kind']} {resource['metadata']['name']}"
    if resource["apiVersion"].startswith("monitoring.coreos.com/"):
        # A custom resource: not in kubernetes-validate's schemas, so our own structural one.
        schema = json.loads(SERVICE_MONITOR_SCHEMA.read_text())
        assert resource["kind"] == "ServiceMonitor", f"{what}: no schema in tests/deploy/schemas"
        jsonschema.validate(resource, schema)
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            raise AssertionError(
                f"{what} (Kubernetes {version}): {path}: {error.message}"
            ) from None


def _serving(resources: list[Resource]) -> Resource:
    return container(one(resources, "Deployment"))


def _settings(
    resources: list[Resource], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Settings:
    """The settings the rendered server container starts with: the image's `lamina serve`
    entrypoint, the container's args and its environment, through the real CLI."""
    spec = _serving(resources)
    assert "command" not in spec, "the container must keep the image's `lamina serve` entrypoint"
    args = cli_args.parse(
        ["serve", *spec.get("args", [])], environment(resources, spec), monkeypatch
    )
    return cli_args.settings(args, tmp_path)


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_renders_and_validates(name: str) -> None:
    resources = overlay(name)
    kinds = {r["kind"] for r in resources}
    assert kinds >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "ConfigMap",
        "ServiceAccount",
    }
    for resource in resources:
        _validate(resource)


def test_prometheus_adapter_rule_renders_and_validates() -> None:
    for resource in render(ADAPTER):
        _validate(resource)


def test_the_available_renderers_agree() -> None:
    commands = kustomize_commands()
    if len(commands) < 2:
        pytest.skip("only one kustomize renderer is installed here: nothing to compare")
    for name in OVERLAYS:
        directory = K8S / "overlays" / name
        first, *others = (
            sorted(render_with(command, directory), key=_identity) for command in commands
        )
        for other in others:
            assert other == first, f"{name}: {commands[0]} and another renderer disagree"


def _identity(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


@pytest.mark.parametrize("name", OVERLAYS)
def test_lamina_variables_are_flags_of_lamina_serve(name: str) -> None:
    """The CLI ignores variables it has no flag for, so a misspelt one would do nothing."""
    known = cli_args.flag_variables() | cli_args.NOT_FLAGS
    resources = overlay(name)
    deployment = one(resources, "Deployment")
    for spec in [_serving(resources), init_container(deployment, "prepare-models")]:
        variables = {v for v in environment(resources, spec) if v.startswith("LAMINA_")}
        assert variables <= known, f"{spec['name']}: no such flag for {variables - known}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_cli_accepts_the_container_configuration(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _settings(overlay(name), monkeypatch, tmp_path)
    for pool in settings.pools:
        pool.providers  # noqa: B018 (raises for a device that is not cpu or cuda:N)
    assert settings.tls is not None, "the manifests serve gRPC over TLS"
    assert settings.auth_tokens_file is not None, "the manifests require bearer tokens"


@pytest.mark.parametrize("name", OVERLAYS)
def test_probes_reach_the_port_the_server_listens_on(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    resources = overlay(name)
    spec = _serving(resources)
    settings = _settings(resources, monkeypatch, tmp_path)
    declared = ports(spec)
    assert declared == {
        "grpc": settings.port,
        "metrics": settings.metrics_port,
        "health": settings.health_port,
    }
    # TLS on the gRPC port: the kubelet's gRPC probes need the plaintext health port.
    assert settings.health_port != 0
    kinds = dict(probes(spec))
    assert set(kinds) == {"startupProbe", "readinessProbe", "livenessProbe"}
    for kind, probe in kinds.items():
        assert set(probe) & {"httpGet", "tcpSocket", "exec"} == set(), f"{kind}: not gRPC"
        assert probe["grpc"]["port"] == settings.health_port, f"{kind} probes another port"


@pytest.mark.parametrize("name", OVERLAYS)
def test_models_are_prepared_where_the_server_reads_them(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    resources = overlay(name)
    deployment = one(resources, "Deployment")
    settings = _settings(resources, monkeypatch, tmp_path)
    init = init_container(deployment, "prepare-models")
    prepared = cli_args.parse(
        [*init["command"][1:], *init.get("args", [])], environment(resources, init), monkeypatch
    )
    assert init["command"][0] == "lamina"
    assert Path(prepared.model_repository) == settings.model_repository
    # Both containers see the repository on the same volume, the server read-only.
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for spec, writes in ((init, True), (_serving(resources), False)):
        mount = _mount_holding(spec, settings.model_repository)
        assert mount["name"] == "models" and "emptyDir" in volumes["models"]
        assert mount.get("readOnly", False) is not writes


def _mount_holding(spec: Resource, path: Path) -> dict[str, Any]:
    holding = [m for m in spec["volumeMounts"] if path.is_relative_to(m["mountPath"])]
    assert holding, f"{spec['name']}: nothing mounted at {path}"
    mount: dict[str, Any] = max(holding, key=lambda m: len(m["mountPath"]))
    return mount


@pytest.mark.parametrize("name", OVERLAYS)
def test_secrets_are_mounted_as_updatable_files(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Whole Secret volumes, never subPath: the kubelet updates those in place, and the server
    re-reads the tokens file when it changes."""
    resources = overlay(name)
    deployment = one(resources, "Deployment")
    spec = _serving(resources)
    args = cli_args.parse(["serve"], environment(resources, spec), monkeypatch)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    expected = {
        args.tls_cert: ("lamina-tls", "tls.crt"),
        args.tls_key: ("lamina-tls", "tls.key"),
        args.auth_tokens_file: ("lamina-auth-tokens", "tokens"),
    }
    for path, (secret, key) in expected.items():
        mount = _mount_holding(spec, Path(path))
        assert "subPath" not in mount and mount.get("readOnly") is True
        assert volumes[mount["name"]]["secret"]["secretName"] == secret
        assert Path(path).relative_to(mount["mountPath"]) == Path(key)


@pytest.mark.parametrize("name", OVERLAYS)
def test_termination_grace_outlasts_prestop_and_drain(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    resources = overlay(name)
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    spec = _serving(resources)
    settings = _settings(resources, monkeypatch, tmp_path)
    pre_stop = spec["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        sleep = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep" and len(command) == 2, f"unexpected preStop {command}"
        sleep = float(command[1])
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > sleep + settings.drain_seconds
    # Draining reports NOT_SERVING: liveness must not kill the pod before the grace ends.
    liveness = spec["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= grace


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_container_has_requests_and_limits(name: str) -> None:
    pod = one(overlay(name), "Deployment")["spec"]["template"]["spec"]
    for spec in [*pod["containers"], *pod.get("initContainers", [])]:
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(spec["resources"][bound]), spec["name"]
        assert spec["securityContext"]["allowPrivilegeEscalation"] is False
        assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001


@pytest.mark.parametrize("name", OVERLAYS)
def test_selectors_find_the_pods(name: str) -> None:
    resources = overlay(name)
    deployment = one(resources, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pod = deployment["spec"]["template"]["spec"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert selects(one(resources, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    assert selects(one(resources, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], labels)
    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    for constraint in spread:
        assert selects(constraint["labelSelector"]["matchLabels"], labels)
    services = of_kind(resources, "Service")
    assert {s["spec"].get("clusterIP") == "None" for s in services} == {True, False}
    for service in services:
        assert selects(service["spec"]["selector"], labels)
        grpc = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
        assert grpc and grpc[0]["targetPort"] in ("grpc", ports(_serving(resources))["grpc"])
    hpa = one(resources, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


@pytest.mark.parametrize("name", OVERLAYS)
def test_service_monitor_scrapes_the_metrics_port_once(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    resources = overlay(name)
    monitor = one(resources, "ServiceMonitor")
    settings = _settings(resources, monkeypatch, tmp_path)
    scraped = [
        s
        for s in of_kind(resources, "Service")
        if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
    ]
    assert len(scraped) == 1, "each pod must be scraped through exactly one Service"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    (port,) = [p for p in scraped[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
    container_ports = ports(_serving(resources))
    target = port["targetPort"]
    assert container_ports.get(target, target) == settings.metrics_port
    assert target in container_ports or target in container_ports.values()


@pytest.mark.parametrize("name", OVERLAYS)
def test_network_policy_opens_grpc_to_clients_and_metrics_to_monitoring(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    resources = overlay(name)
    policy = one(resources, "NetworkPolicy")
    settings = _settings(resources, monkeypatch, tmp_path)
    container_ports = ports(_serving(resources))
    opened: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            number = container_ports.get(port["port"], port["port"])
            opened.setdefault(number, []).extend(rule["from"])
    # The health port stays closed: kubelet probes come from the node, which NetworkPolicy
    # does not filter.
    assert set(opened) == {settings.port, settings.metrics_port}
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert opened[settings.metrics_port] == [{"namespaceSelector": {"matchLabels": monitoring}}]
    client = {"lamina.dev/client": "true"}
    assert {"namespaceSelector": {"matchLabels": client}} in opened[settings.port]
    assert {"podSelector": {"matchLabels": client}} in opened[settings.port]


def _metric_names() -> set[str]:
    return {family.name for family in Metrics().registry.collect()}


def _adapter_rules() -> list[dict[str, Any]]:
    (config_map,) = render(ADAPTER)
    rules: list[dict[str, Any]] = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    return rules


def _exposed_name(rule: dict[str, Any]) -> str:
    """The custom-metrics name a prometheus-adapter rule gives its series ($1 -> \\1)."""
    series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"])
    assert series, f"seriesQuery {rule['seriesQuery']} names no series"
    name = rule.get("name", {})
    if not name:
        return series.group(0)
    exposed = re.sub(name["matches"], name.get("as", "$1").replace("$", "\\"), series.group(0))
    return exposed


@pytest.mark.parametrize("name", OVERLAYS)
def test_autoscaler_metric_is_exported_and_served_by_the_adapter(name: str) -> None:
    hpa = one(overlay(name), "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    wanted = metric["pods"]["metric"]["name"]
    assert wanted in _metric_names(), f"the server exports no metric {wanted}"
    rules = [rule for rule in _adapter_rules() if _exposed_name(rule) == wanted]
    assert len(rules) == 1, f"no prometheus-adapter rule serves {wanted}"
    (rule,) = rules
    assert rule["seriesQuery"].startswith(wanted + "{") or rule["seriesQuery"] == wanted
    # Per pod: the series must map to the HPA's pods through these labels.
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    assert hpa["spec"]["minReplicas"] >= 2, "one replica cannot drain without an outage"


def test_adapter_helm_values_carry_the_same_rules() -> None:
    values = yaml.safe_load((ADAPTER / "helm-values.yaml").read_text())
    assert values["rules"]["custom"] == _adapter_rules()


def test_gpu_overlay_asks_for_a_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    resources = overlay("gpu")
    spec = _serving(resources)
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["image"].endswith("-gpu")
    (pool,) = _settings(resources, monkeypatch, tmp_path).pools
    assert pool.device == "cuda:0"
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


@pytest.mark.parametrize("name", OVERLAYS)
def test_only_the_own_datacenter_overlay_takes_pinned_work(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Pinned requests (hosting aleph-alpha) run only on pools labelled so; a replica without
    such a pool refuses them (FAILED_PRECONDITION) before any compute."""
    resources = overlay(name)
    hostings = {
        h for pool in _settings(resources, monkeypatch, tmp_path).pools for h in pool.hostings
    }
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    if name == "own-datacenter":
        assert hostings == {"aleph-alpha"}
        assert pod["nodeSelector"] == {"lamina.dev/datacenter": "aleph-alpha"}
        assert {
            "key": "lamina.dev/datacenter",
            "operator": "Equal",
            "value": "aleph-alpha",
            "effect": "NoSchedule",
        } in pod["tolerations"]
    else:
        assert hostings == set()
        assert "lamina.dev/datacenter" not in pod.get("nodeSelector", {})


def test_overlays_can_run_side_by_side() -> None:
    """Own Services for the pinned pool, and no overlay's selectors reach another's pods."""
    rendered = {name: overlay(name) for name in OVERLAYS}
    seen: dict[tuple[str, str, str], str] = {}
    for name, resources in rendered.items():
        for r in resources:
            key = (r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"])
            assert key not in seen, f"{key} is in both {seen[key]} and {name}"
            seen[key] = name
    services = {
        (s["metadata"]["namespace"], s["metadata"]["name"])
        for s in of_kind(rendered["own-datacenter"], "Service")
    }
    assert ("lamina-aleph-alpha", "lamina-aleph-alpha") in services
    for name, resources in rendered.items():
        for other, theirs in rendered.items():
            if other == name:
                continue
            deployment = one(theirs, "Deployment")
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            namespace = deployment["metadata"]["namespace"]
            for r in resources:
                if r["metadata"].get("namespace") != namespace:
                    continue
                selector = r["spec"].get("selector") or r["spec"].get("podSelector") or {}
                selector = selector.get("matchLabels", selector)
                assert not (selector and selects(selector, labels)), (
                    f"{name}'s {r['kind']} {r['metadata']['name']} selects {other}'s pods"
                )


def test_overlays_use_the_images_make_image_builds() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    expected = {"cpu": "cpu", "gpu": "gpu", "own-datacenter": "cpu"}
    for name, flavour in expected.items():
        pod = one(overlay(name), "Deployment")["spec"]["template"]["spec"]
        for spec in [*pod["containers"], *pod["initContainers"]]:
            assert spec["image"] == f"lamina:{version}-{flavour}", f"{name}: {spec['image']}"


def test_baked_models_component_drops_the_init_step(tmp_path: Path) -> None:
    """An overlay of one's own for images built with MODELS=baked (as docs/deployment.md
    shows it); kustomize refuses absolute paths, so it is rendered in a copy of deploy/k8s."""
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    mine = tree / "mine"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(
        "resources: [../overlays/cpu]\ncomponents: [../components/baked-models]\n"
    )
    resources = render(mine)
    for resource in resources:
        _validate(resource)
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    assert not pod.get("initContainers")
    assert "models" not in {v["name"] for v in pod["volumes"]}
    spec = container(one(resources, "Deployment"))
    repository = environment(resources, spec)["LAMINA_MODEL_REPOSITORY"]
    assert not any(Path(repository).is_relative_to(m["mountPath"]) for m in spec["volumeMounts"])

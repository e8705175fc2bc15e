"""The rendered pod, run here: the container's command, environment and Secret mounts start a real
server whose probe port answers grpc.health.v1, whose metrics port exports the HPA's metric, and
whose gRPC port takes TLS and a token from the mounted files. No container engine runs here, so
the mounts become folders and the ports free ones; which port each probe reaches is kept."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lamina.client import AsyncClient, Security
from tests.conftest import MINILM, free_port
from tests.deploy.manifests import container, environment, one, overlay, ports, probes

SERVING = health_pb2.HealthCheckResponse.SERVING
TOKEN = "pod-token-5be1"
PORT_VARIABLES = ("LAMINA_PORT", "LAMINA_METRICS_PORT", "LAMINA_HEALTH_PORT")


def mounted_files(spec: dict[str, Any], root: Path) -> dict[str, Path]:
    """mountPath -> a local folder holding what the cluster would mount there."""
    ca = trustme.CA()
    certificate = ca.issue_cert("localhost", "127.0.0.1")
    folders: dict[str, Path] = {}
    for mount in spec["volumeMounts"]:
        folder = root / mount["name"]
        folder.mkdir()
        folders[mount["mountPath"]] = folder
        if mount["name"] == "tls":
            certificate.cert_chain_pems[0].write_to_path(str(folder / "tls.crt"))
            certificate.private_key_pem.write_to_path(str(folder / "tls.key"))
            ca.cert_pem.write_to_path(str(root / "ca.pem"))
        if mount["name"] == "auth-tokens":
            (folder / "tokens").write_text(f"{TOKEN}\n")
    return folders


def localised(environment: dict[str, str], folders: dict[str, Path]) -> dict[str, str]:
    local = {}
    for name, value in environment.items():
        for mount_path, folder in folders.items():
            if value.startswith(mount_path.rstrip("/") + "/"):
                value = str(folder) + value[len(mount_path.rstrip("/")) :]
        local[name] = value
    return local


async def health_status(port: int) -> int | None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.aio.AioRpcError:
            return None
        return int(reply.status)


@pytest.mark.model
async def test_the_cpu_pod_serves_its_probes_metrics_and_tls_port(
    model_repository: Path, tmp_path: Path
) -> None:
    resources = overlay("cpu")
    spec = container(one(resources, "Deployment"))
    folders = mounted_files(spec, tmp_path)
    env = localised(environment(resources, spec), folders)
    # The init container would have prepared the repository the server reads; MiniLM suffices.
    repository = Path(env["LAMINA_MODEL_REPOSITORY"])
    repository.mkdir(parents=True, exist_ok=True)
    (repository / MINILM).symlink_to(model_repository / MINILM, target_is_directory=True)
    local_port = {int(env[name]): free_port() for name in PORT_VARIABLES}
    for name in PORT_VARIABLES:
        env[name] = str(local_port[int(env[name])])
    env["LAMINA_THREADS"] = "1"

    command = [*spec.get("command", ["lamina", "serve"]), *spec.get("args", [])]
    assert command[:2] == ["lamina", "serve"], "the image's entrypoint is `lamina serve`"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lamina.server",
        *command[1:],
        env={**clean, **env},
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        container_ports = ports(spec)
        for kind, probe in probes(spec):
            port = local_port[int(probe["grpc"]["port"])]
            for _ in range(600):
                if await health_status(port) == SERVING:
                    break
                assert process.returncode is None, f"the server exited ({kind})"
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"the {kind} port never reported SERVING")

        metrics = local_port[container_ports["metrics"]]
        url = f"http://127.0.0.1:{metrics}/metrics"
        exposition = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
        hpa = one(resources, "HorizontalPodAutoscaler")
        metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
        assert f"\n{metric}{{" in exposition

        target = f"127.0.0.1:{local_port[container_ports['grpc']]}"
        security = Security.from_files(ca_file=tmp_path / "ca.pem", token=TOKEN)
        async with AsyncClient(target, security=security, timeout=10) as client:
            assert [m.name for m in await client.models()] == [MINILM]
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 30)
    assert process.stderr is not None
    log = (await process.stderr.read()).decode()
    assert code == 0, log
    assert TOKEN not in log

"""Server settings: command-line flags, each with an environment variable as its default, and an
optional TOML file describing the worker pools."""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.server.scheduling.pool import PoolSpec


def default_home() -> Path:
    return Path(os.environ.get("LAMINA_HOME", Path.home() / ".cache" / "lamina"))


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    metrics_port: int
    model_repository: Path
    pools: tuple[PoolSpec, ...]
    scheduling: SchedulingPolicy
    drain_seconds: float
    repository_poll_seconds: float
    max_message_bytes: int
    log_level: str

    @staticmethod
    def from_args(args: argparse.Namespace) -> Settings:
        pools = (
            read_pools_file(Path(args.pools_file))
            if args.pools_file
            else (
                PoolSpec(
                    name="default",
                    device=args.device,
                    threads=args.threads,
                    hostings=frozenset(h for h in args.hosting.split(",") if h),
                ),
            )
        )
        return Settings(
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            model_repository=Path(args.model_repository),
            pools=pools,
            scheduling=SchedulingPolicy(
                max_batch_tokens=args.max_batch_tokens,
                max_batch_rows=args.max_batch_rows,
                max_wait_seconds=args.max_batch_wait_ms / 1000,
                nice_max_wait_seconds=args.nice_max_wait_seconds,
                max_queue_requests=args.max_queue_requests,
                max_queue_tokens=args.max_queue_tokens,
                length_grouping=not args.no_length_grouping,
                max_padding_ratio=args.max_padding_ratio,
            ),
            drain_seconds=args.drain_seconds,
            repository_poll_seconds=args.repository_poll_seconds,
            max_message_bytes=args.max_message_mb * 1024 * 1024,
            log_level=args.log_level,
        )


def read_pools_file(path: Path) -> tuple[PoolSpec, ...]:
    """[[pools]] tables with name, device ("cpu" or "cuda:N"), threads and hostings."""
    data = tomllib.loads(path.read_text())
    pools = []
    for index, table in enumerate(data.get("pools", [])):
        where = f"{path}: pools[{index}]"
        unknown = set(table) - {"name", "device", "threads", "hostings"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        if "name" not in table:
            raise ValueError(f"{where}: a pool needs a name")
        spec = PoolSpec(
            name=str(table["name"]),
            device=str(table.get("device", "cpu")),
            threads=int(table.get("threads", os.cpu_count() or 1)),
            hostings=frozenset(str(h) for h in table.get("hostings", [])),
        )
        spec.providers  # noqa: B018 (validates the device now, not at first use)
        pools.append(spec)
    if not pools:
        raise ValueError(f"{path}: no [[pools]] defined")
    if len({p.name for p in pools}) != len(pools):
        raise ValueError(f"{path}: pool names must be unique")
    return tuple(pools)


class _Options:
    """Adds flags whose default comes from an environment variable named after the flag
    (`--max-batch-rows` reads LAMINA_MAX_BATCH_ROWS); the help names the variable and default."""

    def __init__(self, target: argparse.ArgumentParser | argparse._ArgumentGroup):
        self.target = target

    def add(
        self,
        flag: str,
        default: str,
        help: str,
        kind: Callable[[str], object] = str,
        default_text: str = "default %(default)s",
    ) -> None:
        env = "LAMINA_" + flag.removeprefix("--").replace("-", "_").upper()
        suffix = f"env {env}; {default_text}" if default_text else f"env {env}"
        self.target.add_argument(
            flag, type=kind, default=kind(os.environ.get(env, default)), help=f"{help} ({suffix})"
        )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    server = _Options(parser)
    server.add("--host", "0.0.0.0", "address to listen on")
    server.add("--port", "50051", "gRPC port; 0 picks a free one", int)
    server.add("--metrics-port", "9090", "Prometheus /metrics port; 0 turns metrics off", int)
    add_repository_argument(parser)

    pools = _Options(
        parser.add_argument_group(
            "worker pools",
            "By default one pool, named 'default', on --device with --threads and the --hosting "
            "labels. --pools-file replaces it with the pools a TOML file lists ([[pools]] tables "
            "with name, device, threads, hostings). A request with hosting 'aleph-alpha' runs "
            "only on a pool labelled 'aleph-alpha'; with no such pool it fails at once "
            "(FAILED_PRECONDITION).",
        )
    )
    pools.add("--pools-file", "", "TOML file of worker pools", default_text="")
    pools.add(
        "--device",
        "cpu",
        "the default pool's device: cpu or cuda:N, which needs onnxruntime-gpu",
    )
    pools.add(
        "--threads",
        str(os.cpu_count() or 1),
        "ONNX Runtime threads of the default pool",
        int,
        default_text="default: all cores, %(default)s",
    )
    pools.add(
        "--hosting",
        "",
        "hosting labels of the default pool, comma-separated, e.g. aleph-alpha",
        default_text="default: none",
    )

    batching_group = parser.add_argument_group("scheduling and batching")
    batching = _Options(batching_group)
    batching.add(
        "--max-batch-tokens", "16384", "token budget of one batch, rows x padded length", int
    )
    batching.add("--max-batch-rows", "64", "requests per batch at most", int)
    batching.add(
        "--max-batch-wait-ms", "2", "how long a partial batch waits for more requests", float
    )
    batching.add(
        "--nice-max-wait-seconds",
        "5",
        "a nice request that has waited this long is served as a normal one, so nice work "
        "never starves",
        float,
    )
    batching.add(
        "--max-queue-requests",
        "1024",
        "admission: requests waiting at most; beyond, RESOURCE_EXHAUSTED with a retry hint",
        int,
    )
    batching.add("--max-queue-tokens", "262144", "admission: prompt tokens waiting at most", int)
    batching.add(
        "--max-padding-ratio",
        "0.25",
        "with length grouping, the largest share of padding a batch may have; a request that "
        "would pass it waits for a batch nearer its length",
        float,
    )
    batching_group.add_argument(
        "--no-length-grouping",
        action="store_true",
        default=os.environ.get("LAMINA_NO_LENGTH_GROUPING", "") not in ("", "0"),
        help="fill batches in arrival order instead of grouping similar lengths "
        "(env LAMINA_NO_LENGTH_GROUPING=1)",
    )

    server.add(
        "--drain-seconds",
        "25",
        "on SIGTERM, how long queued and running requests may take to finish; keep it below "
        "terminationGracePeriodSeconds",
        float,
    )
    server.add(
        "--repository-poll-seconds",
        "10",
        "how often the model repository is scanned for new versions, which then serve without "
        "a restart; 0 scans only at start-up",
        float,
    )
    server.add(
        "--max-message-mb",
        "64",
        "largest gRPC message sent or received, in MiB: per-layer replies are big",
        int,
    )
    server.add("--log-level", "INFO", "DEBUG, INFO, WARNING or ERROR")


def add_repository_argument(parser: argparse.ArgumentParser) -> None:
    _Options(parser).add(
        "--model-repository",
        str(default_home() / "models"),
        "model repository: <repository>/<name>/<version>/",
    )

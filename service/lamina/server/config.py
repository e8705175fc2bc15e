"""Server settings: command-line flags, each with an environment variable as its default, and an
optional TOML file describing the worker pools."""

from __future__ import annotations

import argparse
import os
import tomllib
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


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    cores = os.cpu_count() or 1
    a = parser.add_argument
    a(
        "--host",
        default=_env("LAMINA_HOST", "0.0.0.0"),
        help="address to listen on (env LAMINA_HOST; default %(default)s)",
    )
    a(
        "--port",
        type=int,
        default=int(_env("LAMINA_PORT", "50051")),
        help="gRPC port; 0 picks a free one (env LAMINA_PORT; default %(default)s)",
    )
    a(
        "--metrics-port",
        type=int,
        default=int(_env("LAMINA_METRICS_PORT", "9090")),
        help="Prometheus /metrics port; 0 turns metrics off "
        "(env LAMINA_METRICS_PORT; default %(default)s)",
    )
    add_repository_argument(parser)

    pools = parser.add_argument_group(
        "worker pools",
        "By default one pool, named 'default', on --device with --threads and the --hosting "
        "labels. --pools-file replaces it with the pools a TOML file lists ([[pools]] tables with "
        "name, device, threads, hostings). A request with hosting 'aleph-alpha' runs only on a "
        "pool labelled 'aleph-alpha'; with no such pool it fails at once (FAILED_PRECONDITION).",
    )
    pools.add_argument(
        "--pools-file",
        default=_env("LAMINA_POOLS_FILE", ""),
        help="TOML file of worker pools (env LAMINA_POOLS_FILE)",
    )
    pools.add_argument(
        "--device",
        default=_env("LAMINA_DEVICE", "cpu"),
        help="the default pool's device: cpu or cuda:N, which needs "
        "onnxruntime-gpu (env LAMINA_DEVICE; default %(default)s)",
    )
    pools.add_argument(
        "--threads",
        type=int,
        default=int(_env("LAMINA_THREADS", str(cores))),
        help="ONNX Runtime threads of the default pool "
        "(env LAMINA_THREADS; default: all cores, %(default)s)",
    )
    pools.add_argument(
        "--hosting",
        default=_env("LAMINA_HOSTING", ""),
        help="hosting labels of the default pool, comma-separated, e.g. "
        "aleph-alpha (env LAMINA_HOSTING; default: none)",
    )

    batching = parser.add_argument_group("scheduling and batching")
    b = batching.add_argument
    b(
        "--max-batch-tokens",
        type=int,
        default=int(_env("LAMINA_MAX_BATCH_TOKENS", "16384")),
        help="token budget of one batch, rows x padded length "
        "(env LAMINA_MAX_BATCH_TOKENS; default %(default)s)",
    )
    b(
        "--max-batch-rows",
        type=int,
        default=int(_env("LAMINA_MAX_BATCH_ROWS", "64")),
        help="requests per batch at most (env LAMINA_MAX_BATCH_ROWS; default %(default)s)",
    )
    b(
        "--max-batch-wait-ms",
        type=float,
        default=float(_env("LAMINA_MAX_BATCH_WAIT_MS", "2")),
        help="how long a partial batch waits for more requests "
        "(env LAMINA_MAX_BATCH_WAIT_MS; default %(default)s)",
    )
    b(
        "--nice-max-wait-seconds",
        type=float,
        default=float(_env("LAMINA_NICE_MAX_WAIT_SECONDS", "5")),
        help="a nice request that has waited this long is served as a normal one, so nice work "
        "never starves (env LAMINA_NICE_MAX_WAIT_SECONDS; default %(default)s)",
    )
    b(
        "--max-queue-requests",
        type=int,
        default=int(_env("LAMINA_MAX_QUEUE_REQUESTS", "1024")),
        help="admission: requests waiting at most; beyond, RESOURCE_EXHAUSTED with a retry hint "
        "(env LAMINA_MAX_QUEUE_REQUESTS; default %(default)s)",
    )
    b(
        "--max-queue-tokens",
        type=int,
        default=int(_env("LAMINA_MAX_QUEUE_TOKENS", "262144")),
        help="admission: prompt tokens waiting at most "
        "(env LAMINA_MAX_QUEUE_TOKENS; default %(default)s)",
    )
    b(
        "--max-padding-ratio",
        type=float,
        default=float(_env("LAMINA_MAX_PADDING_RATIO", "0.25")),
        help="with length grouping, the largest share of padding a batch may have; a request "
        "that would pass it waits for a batch nearer its length "
        "(env LAMINA_MAX_PADDING_RATIO; default %(default)s)",
    )
    b(
        "--no-length-grouping",
        action="store_true",
        default=_env("LAMINA_NO_LENGTH_GROUPING", "") not in ("", "0"),
        help="fill batches in arrival order instead of grouping similar lengths "
        "(env LAMINA_NO_LENGTH_GROUPING=1)",
    )

    a(
        "--drain-seconds",
        type=float,
        default=float(_env("LAMINA_DRAIN_SECONDS", "25")),
        help="on SIGTERM, how long queued and running requests may take to finish; keep it below "
        "terminationGracePeriodSeconds (env LAMINA_DRAIN_SECONDS; default %(default)s)",
    )
    a(
        "--repository-poll-seconds",
        type=float,
        default=float(_env("LAMINA_REPOSITORY_POLL_SECONDS", "10")),
        help="how often the model repository is scanned for new versions, which then serve "
        "without a restart; 0 scans only at start-up "
        "(env LAMINA_REPOSITORY_POLL_SECONDS; default %(default)s)",
    )
    a(
        "--max-message-mb",
        type=int,
        default=int(_env("LAMINA_MAX_MESSAGE_MB", "64")),
        help="largest gRPC message sent or received, in MiB: per-layer replies are big "
        "(env LAMINA_MAX_MESSAGE_MB; default %(default)s)",
    )
    a(
        "--log-level",
        default=_env("LAMINA_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (env LAMINA_LOG_LEVEL; default %(default)s)",
    )


def add_repository_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-repository",
        default=_env("LAMINA_MODEL_REPOSITORY", str(default_home() / "models")),
        help="model repository: <repository>/<name>/<version>/ (env LAMINA_MODEL_REPOSITORY; "
        "default %(default)s)",
    )

"""Server settings: command-line flags, each with an environment variable as its default."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path


def default_home() -> Path:
    return Path(os.environ.get("LAMINA_HOME", Path.home() / ".cache" / "lamina"))


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    metrics_port: int
    model_repository: Path
    threads: int
    providers: tuple[str, ...]
    hostings: tuple[str, ...]
    max_batch_tokens: int
    max_batch_rows: int
    max_batch_wait_ms: float
    drain_seconds: float
    repository_poll_seconds: float
    max_message_bytes: int
    log_level: str

    @staticmethod
    def from_args(args: argparse.Namespace) -> Settings:
        return Settings(
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            model_repository=Path(args.model_repository),
            threads=args.threads,
            providers=tuple(args.providers.split(",")),
            hostings=tuple(h for h in args.hosting.split(",") if h),
            max_batch_tokens=args.max_batch_tokens,
            max_batch_rows=args.max_batch_rows,
            max_batch_wait_ms=args.max_batch_wait_ms,
            drain_seconds=args.drain_seconds,
            repository_poll_seconds=args.repository_poll_seconds,
            max_message_bytes=args.max_message_mb * 1024 * 1024,
            log_level=args.log_level,
        )


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    cores = os.cpu_count() or 1
    a = parser.add_argument
    a(
        "--host",
        default=_env("LAMINA_HOST", "0.0.0.0"),
        help="address to listen on for gRPC (env LAMINA_HOST; default %(default)s)",
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
    a(
        "--threads",
        type=int,
        default=int(_env("LAMINA_THREADS", str(cores))),
        help="ONNX Runtime intra-op threads per model "
        "(env LAMINA_THREADS; default: all cores, %(default)s)",
    )
    a(
        "--providers",
        default=_env("LAMINA_PROVIDERS", "CPUExecutionProvider"),
        help="comma-separated ONNX Runtime execution providers, in order of preference, e.g. "
        "CUDAExecutionProvider,CPUExecutionProvider (env LAMINA_PROVIDERS; default %(default)s)",
    )
    a(
        "--hosting",
        default=_env("LAMINA_HOSTING", ""),
        help="hosting labels of this server's worker pool, comma-separated; requests with hosting "
        "'aleph-alpha' are only served when it is listed (env LAMINA_HOSTING; default: none)",
    )
    a(
        "--max-batch-tokens",
        type=int,
        default=int(_env("LAMINA_MAX_BATCH_TOKENS", "16384")),
        help="token budget of one batch, rows x padded length "
        "(env LAMINA_MAX_BATCH_TOKENS; default %(default)s)",
    )
    a(
        "--max-batch-rows",
        type=int,
        default=int(_env("LAMINA_MAX_BATCH_ROWS", "64")),
        help="requests per batch at most (env LAMINA_MAX_BATCH_ROWS; default %(default)s)",
    )
    a(
        "--max-batch-wait-ms",
        type=float,
        default=float(_env("LAMINA_MAX_BATCH_WAIT_MS", "2")),
        help="how long a partial batch waits for more requests "
        "(env LAMINA_MAX_BATCH_WAIT_MS; default %(default)s)",
    )
    a(
        "--drain-seconds",
        type=float,
        default=float(_env("LAMINA_DRAIN_SECONDS", "25")),
        help="on SIGTERM, how long in-flight requests may take to finish; keep it below "
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

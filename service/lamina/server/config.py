"""Server settings: command-line flags, each with an environment variable as its default, and an
optional TOML file describing the worker pools."""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lamina.server.domain import Precision
from lamina.server.limits import RequestLimits
from lamina.server.observability.logs import FORMATS as LOG_FORMATS
from lamina.server.observability.tracing import PROTOCOLS as OTLP_PROTOCOLS
from lamina.server.runtime.device import PoolSpec
from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.server.security import TlsFiles


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
    log_format: str = "text"  # or "json": one object per line (observability/logs.py)
    otlp_endpoint: str | None = None  # traces to this collector; also the OTEL_* variables
    otlp_protocol: str | None = None  # "http/protobuf" or "grpc"; None: the variables' or HTTP
    limits: RequestLimits = field(default_factory=RequestLimits)
    health_port: int = 0  # plaintext grpc.health.v1 only, for kubelet probes; 0: none
    tls: TlsFiles | None = None
    auth_tokens_file: Path | None = None
    reflection: bool = True
    max_connection_age_seconds: float = 300
    http_port: int = 0  # the HTTP/JSON gateway (Aleph Alpha REST API); 0: off
    # The gateway's connections: a request head / body not in within its timeout is answered 408
    # and closed; beyond the cap, a new connection is answered 503 and closed.
    http_header_timeout_seconds: float = 10
    http_body_timeout_seconds: float = 30
    http_max_connections: int = 1024

    @staticmethod
    def from_args(args: argparse.Namespace) -> Settings:
        if args.log_format not in LOG_FORMATS:
            raise ValueError(f"--log-format {args.log_format!r}: expected text or json")
        if args.otlp_protocol and args.otlp_protocol not in OTLP_PROTOCOLS:
            raise ValueError(
                f"--otlp-protocol {args.otlp_protocol!r}: expected http/protobuf or grpc"
            )
        pools = (
            read_pools_file(Path(args.pools_file))
            if args.pools_file
            else (
                PoolSpec(
                    name="default",
                    device=args.device,
                    threads=args.threads,
                    hostings=frozenset(h for h in args.hosting.split(",") if h),
                    precision=args.precision,
                    min_cosine=args.min_cosine,
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
                max_batch_memory_bytes=args.max_batch_memory_mb * 1024 * 1024,
                max_batch_rows=args.max_batch_rows,
                max_wait_seconds=args.max_batch_wait_ms / 1000,
                nice_max_wait_seconds=args.nice_max_wait_seconds,
                max_queue_requests=args.max_queue_requests,
                max_queue_tokens=args.max_queue_tokens,
                length_grouping=not args.no_length_grouping,
                max_padding_ratio=args.max_padding_ratio,
                segment_seconds=args.segment_ms / 1000,
                nice_segment_seconds=args.nice_segment_ms / 1000,
                nice_contended_seconds=args.nice_contended_seconds,
                nice_alone_segment_seconds=args.nice_alone_segment_ms / 1000,
                max_parked_batches=args.max_parked_batches,
                long_batch_seconds=args.long_batch_seconds,
            ),
            drain_seconds=args.drain_seconds,
            repository_poll_seconds=args.repository_poll_seconds,
            max_message_bytes=args.max_message_mb * 1024 * 1024,
            log_level=args.log_level,
            log_format=args.log_format,
            otlp_endpoint=args.otlp_endpoint or None,
            otlp_protocol=args.otlp_protocol or None,
            limits=RequestLimits(
                max_prompt_items=args.max_prompt_items,
                max_layers=args.max_layers,
                max_poolings=args.max_poolings,
                max_controls=args.max_controls,
                max_image_bytes=int(args.max_image_mb * 1024 * 1024),
                max_image_pixels=int(args.max_image_megapixels * 1_000_000),
                max_request_pixels=int(args.max_request_megapixels * 1_000_000),
                max_tokenize_chars=args.max_tokenize_chars,
                max_detokenize_ids=args.max_detokenize_ids,
            ),
            health_port=args.health_port,
            tls=_tls_files(args),
            auth_tokens_file=Path(args.auth_tokens_file) if args.auth_tokens_file else None,
            reflection=not args.no_reflection,
            max_connection_age_seconds=args.max_connection_age_seconds,
            http_port=args.http_port,
            http_header_timeout_seconds=args.http_header_timeout_seconds,
            http_body_timeout_seconds=args.http_body_timeout_seconds,
            http_max_connections=args.http_max_connections,
        )


def _tls_files(args: argparse.Namespace) -> TlsFiles | None:
    if not (args.tls_cert or args.tls_key or args.tls_client_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key (and --tls-client-ca for mTLS)")
    files = TlsFiles(
        Path(args.tls_cert),
        Path(args.tls_key),
        Path(args.tls_client_ca) if args.tls_client_ca else None,
    )
    # A missing file, a PEM that does not parse or a key that is not the certificate's: said now.
    files.load()
    return files


def parse_precision(text: str, where: str = "") -> Precision | None:
    """'auto' is None; otherwise a precision a pool can serve."""
    if text == "auto":
        return None
    choices = ("auto", Precision.FP32.value, Precision.BF16.value, Precision.INT8.value)
    if text not in choices:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}precision {text!r} is none of {', '.join(choices)}")
    return Precision(text)


def parse_min_cosine(text: str, where: str = "") -> float | None:
    """'gate' is None (each precision's own gate); otherwise a cosine in (0, 1]."""
    if text == "gate":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:  # NaN fails too
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}min_cosine {text!r} is neither 'gate' nor a number in (0, 1]")
    return value


def _min_cosine_flag(text: str) -> float | None:
    try:
        return parse_min_cosine(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _precision_flag(text: str) -> Precision | None:
    try:
        return parse_precision(text)
    except ValueError as error:  # argparse prints this one's text as it is
        raise argparse.ArgumentTypeError(str(error)) from None


def read_pools_file(path: Path) -> tuple[PoolSpec, ...]:
    """[[pools]] tables with name, device ("cpu" or "cuda:N"), threads, hostings, precision
    and min_cosine."""
    data = tomllib.loads(path.read_text())
    pools = []
    for index, table in enumerate(data.get("pools", [])):
        where = f"{path}: pools[{index}]"
        known = {"name", "device", "threads", "hostings", "precision", "min_cosine"}
        unknown = set(table) - known
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        if "name" not in table:
            raise ValueError(f"{where}: a pool needs a name")
        spec = PoolSpec(
            name=str(table["name"]),
            device=str(table.get("device", "cpu")),
            threads=int(table.get("threads", os.cpu_count() or 1)),
            hostings=frozenset(str(h) for h in table.get("hostings", [])),
            precision=parse_precision(str(table.get("precision", "auto")), where),
            min_cosine=parse_min_cosine(str(table.get("min_cosine", "gate")), where),
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


def _add_flag(
    target: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, help: str
) -> None:
    """An on/off flag whose environment variable turns it on with any value but empty or 0."""
    env = "LAMINA_" + flag.removeprefix("--").replace("-", "_").upper()
    target.add_argument(
        flag,
        action="store_true",
        default=os.environ.get(env, "") not in ("", "0"),
        help=f"{help} (env {env}=1)",
    )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    server = _Options(parser)
    server.add("--host", "0.0.0.0", "address to listen on")
    server.add("--port", "50051", "gRPC port; 0 picks a free one", int)
    server.add("--metrics-port", "9090", "Prometheus /metrics port; 0 turns metrics off", int)
    server.add(
        "--http-port",
        "0",
        "HTTP/JSON gateway port serving the Aleph Alpha REST API (e.g. 8080); 0: no gateway",
        int,
    )
    server.add(
        "--http-header-timeout-seconds",
        "10",
        "HTTP gateway: a connection whose request line and headers are not in this long after "
        "it opened (or after their first byte, on a kept-alive one) is answered 408 and closed",
        float,
    )
    server.add(
        "--http-body-timeout-seconds",
        "30",
        "HTTP gateway: a request body not in this long after its headers is answered 408 and "
        "closed, and a caller that reads none of its answer for this long is reset; raise it "
        "for large images over slow links",
        float,
    )
    server.add(
        "--http-max-connections",
        "1024",
        "HTTP gateway: open connections at most; beyond, a new one is answered 503 and closed",
        int,
    )
    add_repository_argument(parser)

    pools = _Options(
        parser.add_argument_group(
            "worker pools",
            "By default one pool, named 'default', on --device with --threads and the --hosting "
            "labels. --pools-file replaces it with the pools a TOML file lists ([[pools]] tables "
            "with name, device, threads, hostings, precision, min_cosine). A request with hosting "
            "'aleph-alpha' runs only on a pool labelled 'aleph-alpha'; with no such pool it fails "
            "at once (FAILED_PRECONDITION).",
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
    pools.add(
        "--precision",
        "auto",
        "the default pool's precision: auto (the fastest that passes its fidelity gate and that "
        "the device computes natively; else fp32), fp32, or bf16 / int8 where `lamina prepare "
        "--precision bf16|int8` measured one that passes its gate (docs/precision.md)",
        _precision_flag,
    )
    pools.add(
        "--min-cosine",
        "gate",
        "the default pool's own fidelity gate: the lowest measured cosine to fp32 (every layer, "
        "every position of the calibration set) at which it serves a reduced precision; gate: "
        "each precision's own (bf16 0.999, int8 0.99). Lower it to accept a graph measured below "
        "(ModelsAvailable and model_version say what serves)",
        _min_cosine_flag,
    )

    batching_group = parser.add_argument_group("scheduling and batching")
    batching = _Options(batching_group)
    batching.add(
        "--max-batch-tokens", "16384", "token budget of one batch, rows x padded length", int
    )
    batching.add(
        "--max-batch-memory-mb",
        "2048",
        "working memory one batch may need (MiB), estimated from its rows, padded length, layers "
        "and images: attention grows with the square of the length; a request that alone needs "
        "more runs alone (docs/memory.md)",
        int,
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
    batching.add(
        "--segment-ms",
        "25",
        "yielding: a batch runs in segments of about this long (whole blocks), and between them "
        "its pool runs more urgent work first; a batch is no larger than one block of it runs "
        "in this time (0: batches run whole and yield to nothing)",
        float,
    )
    batching.add(
        "--nice-segment-ms",
        "10",
        "yielding: while normal requests arrived within --nice-contended-seconds, a nice "
        "batch runs in segments this short and is no larger than one block of it runs in this "
        "time: about how long a normal request waits for a pool busy with nice work",
        float,
    )
    batching.add(
        "--nice-contended-seconds",
        "2",
        "yielding: with no normal request for a pool in this long, its nice batches grow to the "
        "other budgets (as without yielding), in segments of --nice-alone-segment-ms",
        float,
    )
    batching.add(
        "--nice-alone-segment-ms",
        "500",
        "yielding: with no normal request within --nice-contended-seconds, a nice batch runs in "
        "segments this long (fewer session calls); the first normal request after such a spell "
        "waits for at most one",
        float,
    )
    batching.add(
        "--max-parked-batches",
        "2",
        "yielding: batches parked per pool at most; with as many, the running one runs on",
        int,
    )
    batching.add(
        "--long-batch-seconds",
        "1",
        "yielding: a batch that has run this long takes turns of one segment with queued "
        "requests of its own tier",
        float,
    )
    _add_flag(
        batching_group,
        "--no-length-grouping",
        "fill batches in arrival order instead of grouping similar lengths",
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
    server.add(
        "--log-format",
        "text",
        "text, or json: one object per line with the request id and trace id "
        "(docs/observability.md)",
        str,
    )
    server.add(
        "--otlp-endpoint",
        "",
        "send OpenTelemetry traces to this OTLP collector (e.g. http://collector:4318); unset, "
        "the standard OTEL_EXPORTER_OTLP_* variables decide, and with none tracing is off",
        str,
    )
    server.add(
        "--otlp-protocol",
        "",
        "http/protobuf or grpc (default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf)",
        str,
    )
    server.add(
        "--health-port",
        "0",
        "plaintext port serving only grpc.health.v1, for Kubernetes gRPC probes (which cannot "
        "speak TLS); 0: none, health is then on the gRPC port only",
        int,
    )
    server.add(
        "--max-connection-age-seconds",
        "300",
        "close each client connection after this long (gracefully), so clients re-resolve and "
        "spread over new replicas after a scale-out",
        float,
    )
    _add_flag(
        parser,
        "--no-reflection",
        "do not offer gRPC server reflection (ghz and grpcurl then need the .proto files)",
    )

    security = _Options(
        parser.add_argument_group(
            "TLS and authentication",
            "TLS on the gRPC port (and the HTTP gateway's) with --tls-cert and --tls-key; "
            "--tls-client-ca also requires clients to present a certificate it signed (mTLS). "
            "With --auth-tokens-file every RPC but grpc.health.v1 (and every HTTP route but "
            "health and version) needs 'authorization: Bearer <token>', else UNAUTHENTICATED; "
            "the file (one token per line) is re-read when it changes.",
        )
    )
    security.add("--tls-cert", "", "PEM certificate chain of the server", default_text="")
    security.add("--tls-key", "", "PEM private key of the server", default_text="")
    security.add(
        "--tls-client-ca", "", "PEM CA that client certificates must chain to", default_text=""
    )
    security.add("--auth-tokens-file", "", "file of accepted bearer tokens", default_text="")

    limits = _Options(
        parser.add_argument_group(
            "request limits", "Beyond any of these a request fails with INVALID_ARGUMENT."
        )
    )
    defaults = RequestLimits()
    limits.add("--max-prompt-items", str(defaults.max_prompt_items), "prompt items", int)
    limits.add("--max-layers", str(defaults.max_layers), "layers per request", int)
    limits.add("--max-poolings", str(defaults.max_poolings), "poolings per request", int)
    limits.add("--max-controls", str(defaults.max_controls), "attention controls per prompt", int)
    limits.add(
        "--max-image-mb",
        str(defaults.max_image_bytes / 1024 / 1024),
        "bytes of one image, MiB",
        float,
    )
    limits.add(
        "--max-image-megapixels",
        str(defaults.max_image_pixels / 1_000_000),
        "pixels of one image, millions",
        float,
    )
    limits.add(
        "--max-request-megapixels",
        str(defaults.max_request_pixels / 1_000_000),
        "pixels of all the images of one prompt together, millions",
        float,
    )
    limits.add(
        "--max-tokenize-chars",
        str(defaults.max_tokenize_chars),
        "characters of text one Tokenize call takes",
        int,
    )
    limits.add(
        "--max-detokenize-ids",
        str(defaults.max_detokenize_ids),
        "token ids one Detokenize call takes",
        int,
    )


def add_repository_argument(parser: argparse.ArgumentParser) -> None:
    _Options(parser).add(
        "--model-repository",
        str(default_home() / "models"),
        "model repository: <repository>/<name>/<version>/",
    )

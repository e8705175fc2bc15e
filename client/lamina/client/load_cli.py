"""`lamina-client load`: ghz's flags and JSON config files, on the engine in load.py.

A ghz config file is read with ghz's own keys; flags given on the command line override it
key by key, except that -n and -z replace the file's total and duration together (a file
meant to run for 30 s can be run for 10 requests). Settings that only matter to ghz's proto
loading (proto, import-paths, ...) are ignored, since the descriptors are compiled in;
settings this client cannot honour are refused rather than silently dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lamina.client._channel import Security
from lamina.client.load import DEFAULT_CALL, LoadError, LoadOptions, LoadRun, run_with_progress
from lamina.client.load_report import Report
from lamina.client.load_templates import TemplateError, parse_duration, parse_size

# Short keys older ghz configs (and its docs' examples) use.
_ALIASES = {
    "n": "total",
    "c": "concurrency",
    "d": "data",
    "D": "data-file",
    "m": "metadata",
    "M": "metadata-file",
    "z": "duration",
    "x": "max-duration",
    "t": "timeout",
    "r": "rps",
    "q": "rps",
    "qps": "rps",
    "o": "output",
    "O": "format",
}
_USED = {
    "call", "host", "insecure", "total", "concurrency", "connections", "rps", "duration",
    "max-duration", "timeout", "data", "data-file", "metadata", "metadata-file", "skipFirst",
    "max-recv-message-size", "max-send-message-size", "connect-timeout", "format", "output",
    "name", "cacert", "cert", "key", "cname",
}  # fmt: skip
# ghz settings with no effect here: proto loading, ghz's own process, reporting extras.
# duration-stop is accepted but in-flight calls always finish (ghz's "wait").
_IGNORED = {
    "proto", "protoset", "import-paths", "cpus", "keepalive", "tags", "reflect-metadata",
    "debug", "enable-compression", "duration-stop", "lb-strategy",
}  # fmt: skip
# Settings accepted only at the value that means "off".
_DEFAULT_ONLY: Mapping[str, object] = {
    "async": False,
    "skipTLS": False,
    "load-schedule": "const",
    "concurrency-schedule": "const",
}
FORMATS = ("summary", "json", "pretty")


def add_load_command(commands: Any) -> None:
    """The `load` subcommand on the `lamina-client` subparsers."""
    load = commands.add_parser(
        "load",
        help="load-test the server like ghz (runs ghz config files)",
        description="Send many calls, as ghz does, and print a ghz-style report. Flags override "
        "the --config file; TLS and token flags go before 'load'. Call data may use ghz's "
        "templates: {{.RequestNumber}}, {{.UUID}}, {{newUUID}}, {{randomString N}}, "
        "{{randomInt MIN MAX}}, {{.TimestampUnix}}, ...",
    )
    load.add_argument("host_positional", nargs="?", metavar="HOST:PORT", help="as --host")
    add = load.add_argument
    add("--config", metavar="FILE", help="a ghz JSON config file, e.g. deploy/ghz/embed.json")
    add("--host", metavar="HOST:PORT", help="server address (default: the config's, else --target)")
    add("--call", help=f"method, package.Service.Method (default {DEFAULT_CALL})")
    add("-c", "--concurrency", type=int, metavar="N", help="concurrent workers (default 50)")
    add("--connections", type=int, metavar="N", help="connections the workers share (default 1)")
    add(
        "-r",
        "--rps",
        type=float,
        metavar="N",
        help="requests per second in all (default: no limit)",
    )
    add("-n", "--total", type=int, metavar="N", help="requests to send (default 200)")
    add("-z", "--duration", metavar="D", help="run this long instead of -n, e.g. 30s, 2m")
    add("-x", "--max-duration", metavar="D", help="with -n, stop early once this long has passed")
    add("-t", "--timeout", dest="call_timeout", metavar="D", help="per call (default 20s; 0: none)")
    add("--connect-timeout", metavar="D", help="to connect before the run (default 10s)")
    add(
        "-d",
        "--data",
        metavar="JSON",
        help="call data: an object or an array (round-robin); @: stdin",
    )
    add("-D", "--data-file", metavar="FILE", help="call data from a JSON file")
    add("-m", "--metadata", metavar="JSON", help='metadata object, e.g. {"x-trace":"{{.UUID}}"}')
    add("-M", "--metadata-file", metavar="FILE", help="metadata from a JSON file")
    add("--skipFirst", type=int, metavar="N", help="leave the first N calls out of the report")
    add("--max-recv-message-size", metavar="SIZE", help="largest reply, e.g. 64MiB (default 64MiB)")
    add("--max-send-message-size", metavar="SIZE", help="largest request (default 64MiB)")
    add("--insecure", action="store_true", default=None, help="plaintext, no TLS")
    add("-O", "--format", choices=FORMATS, help="report format (default summary)")
    add("-o", "--output", metavar="FILE", help="write the report here (default: stdout)")
    add("--name", help="a name for the run, kept in the JSON report")


def load_command(args: argparse.Namespace, security: Security) -> int:
    """Run `lamina-client load`; 2 on a bad setting, 1 when the run cannot go on."""
    try:
        config = read_config(Path(args.config)) if args.config else {}
        settings = merged(config, args)
        if settings.get("format", "summary") not in FORMATS:
            raise LoadError(f"format {settings['format']!r}: use one of {', '.join(FORMATS)}")
        security = resolve_security(settings, security, bool(args.insecure))
        options = options_of(settings, security, default_host=args.target, timeout=args.timeout)
        run = LoadRun(options)
    except (LoadError, TemplateError, OSError, ValueError) as error:
        print(f"lamina-client load: error: {error}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run_with_progress(run, sys.stderr))
    except KeyboardInterrupt:
        report = run.report(end_reason="cancel")
    except LoadError as error:
        print(f"lamina-client load: error: {error}", file=sys.stderr)
        return 1
    write_report(report, settings.get("format", "summary"), settings.get("output"))
    return 0


def read_config(path: Path) -> dict[str, Any]:
    """A ghz JSON config with its keys normalised; unknown or unsupported keys are errors."""
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise LoadError(f"{path}: a ghz config is a JSON object")
    config: dict[str, Any] = {}
    for name, value in raw.items():
        key = _ALIASES.get(str(name), str(name))
        if key in _IGNORED:
            continue
        if key in _DEFAULT_ONLY:
            if value != _DEFAULT_ONLY[key]:
                raise LoadError(f"{path}: {key}={value!r} is not supported by lamina-client load")
            continue
        if key not in _USED:
            raise LoadError(f"{path}: unknown or unsupported ghz setting {key!r}")
        config[key] = value
    return config


def merged(config: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The config file's settings with the command line's on top."""
    settings = dict(config)
    if args.total is not None or args.duration is not None:
        settings.pop("total", None)
        settings.pop("duration", None)
    if args.data is not None or args.data_file is not None:
        settings.pop("data", None)
        settings.pop("data-file", None)
    flags = {
        "host": args.host or args.host_positional,
        "call": args.call,
        "concurrency": args.concurrency,
        "connections": args.connections,
        "rps": args.rps,
        "total": args.total,
        "duration": args.duration,
        "max-duration": args.max_duration,
        "timeout": args.call_timeout,
        "connect-timeout": args.connect_timeout,
        "data-file": args.data_file,
        "metadata": json.loads(args.metadata) if args.metadata else None,
        "metadata-file": args.metadata_file,
        "skipFirst": args.skipFirst,
        "max-recv-message-size": args.max_recv_message_size,
        "max-send-message-size": args.max_send_message_size,
        "format": args.format,
        "output": args.output,
        "name": args.name,
    }
    if args.data is not None:
        flags["data"] = sys.stdin.read() if args.data == "@" else args.data
    settings.update({key: value for key, value in flags.items() if value is not None})
    return settings


def config_options(path: Path, host: str, **overrides: Any) -> LoadOptions:
    """The options of a ghz config file sent to `host`, with some of its keys replaced (ghz's
    names, e.g. duration="30s"), for programs that run the deploy/ghz scenarios (the soak)."""
    settings = {**read_config(path), **overrides, "host": host}
    return options_of(settings, resolve_security(settings, Security(), False), default_host=host)


def options_of(
    settings: Mapping[str, Any],
    security: Security,
    *,
    default_host: str,
    timeout: float | None = None,
) -> LoadOptions:
    """LoadOptions from ghz settings; `timeout` is the per-call default when none is set."""

    def seconds(key: str, default: float) -> float:
        return parse_duration(settings[key]) if key in settings else default

    def size(key: str) -> int | None:
        return parse_size(settings[key]) if key in settings else None

    return LoadOptions(
        host=settings.get("host") or default_host,
        call=settings.get("call", DEFAULT_CALL),
        data=_data_text(settings),
        metadata=_metadata(settings),
        concurrency=int(settings.get("concurrency", 50)),
        connections=int(settings.get("connections", 1)),
        rps=float(settings.get("rps", 0)),
        total=int(settings.get("total", 200)),
        duration=seconds("duration", 0.0),
        max_duration=seconds("max-duration", 0.0),
        timeout=seconds("timeout", 20.0 if timeout is None else timeout),
        connect_timeout=seconds("connect-timeout", 10.0),
        skip_first=int(settings.get("skipFirst", 0)),
        max_recv_message_size=size("max-recv-message-size"),
        max_send_message_size=size("max-send-message-size"),
        security=security,
        name=str(settings.get("name", "")),
    )


def _data_text(settings: Mapping[str, Any]) -> str:
    """The call data as JSON text: templates are rendered on text, as ghz does."""
    if "data-file" in settings:
        return Path(settings["data-file"]).read_text()
    data = settings.get("data", {})
    return data if isinstance(data, str) else json.dumps(data)


def _metadata(settings: Mapping[str, Any]) -> dict[str, str]:
    metadata: dict[str, Any] = {}
    if "metadata-file" in settings:
        metadata.update(json.loads(Path(settings["metadata-file"]).read_text()))
    metadata.update(settings.get("metadata") or {})
    return {str(key): str(value) for key, value in metadata.items()}


def resolve_security(
    settings: Mapping[str, Any], security: Security, insecure_flag: bool
) -> Security:
    """ghz's insecure/cacert/cert/key/cname, and lamina-client's TLS and token flags.

    Flags first: --insecure means plaintext, and the TLS flags (before 'load') mean TLS even
    where the config says insecure. Then the config: insecure: true means plaintext;
    certificates, or insecure: false (ghz's default is TLS), mean TLS. Else plaintext, the
    default of lamina-client. The token of the flags is sent either way.
    """
    if insecure_flag and security.tls:
        raise LoadError("--insecure contradicts the TLS flags")
    if insecure_flag or (settings.get("insecure") is True and not security.tls):
        return Security(token=security.token)
    if security.tls:
        return security
    if (
        any(key in settings for key in ("cacert", "cert", "key"))
        or settings.get("insecure") is False
    ):
        return Security.from_files(
            tls=True,
            ca_file=settings.get("cacert"),
            cert_file=settings.get("cert"),
            key_file=settings.get("key"),
            server_name=settings.get("cname"),
            token=security.token,
        )
    return security


def write_report(report: Report, format: str, output: str | None) -> None:
    if format == "summary":
        text = report.summary()
    else:
        text = json.dumps(report.to_json(), indent=2 if format == "pretty" else None) + "\n"
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)

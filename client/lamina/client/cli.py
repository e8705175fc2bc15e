"""`lamina-client`: the embed API from a shell, printing JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lamina.client._channel import Security
from lamina.client.errors import LaminaError
from lamina.client.load_cli import add_load_command, load_command
from lamina.client.prompt import Image, PromptItem, Text, TokenIds
from lamina.client.results import EmbedResult, Vector
from lamina.client.sync import Client


class _AppendItem(argparse.Action):
    """--prompt, --token-ids and --image build one ordered list of prompt items."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items: list[PromptItem] = getattr(namespace, "items", None) or []
        if option_string == "--prompt":
            items.append(Text(values))
        elif option_string == "--image":
            try:
                items.append(Image(Path(values).read_bytes()))
            except OSError as error:
                parser.error(f"--image {values}: {error.strerror}")
        else:
            items.append(TokenIds(list(values)))
        namespace.items = items


class _AppendInput(argparse.Action):
    """--input and --token-ids of `embeddings`: each one input, in the order given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        inputs: list[str | list[int]] = getattr(namespace, "inputs", None) or []
        inputs.append(values if option_string == "--input" else list(values))
        namespace.inputs = inputs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamina-client",
        description="Call a Lamina server over gRPC and print its reply as JSON. "
        "A failed call prints 'error: CODE: message' to stderr and exits 1.",
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("LAMINA_TARGET", "localhost:50051"),
        metavar="HOST:PORT",
        help="server address (env LAMINA_TARGET; default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="deadline for the call in seconds (default: none)",
    )
    add_security_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed a prompt: one vector per layer and pooling")
    _add_prompt_arguments(embed)
    embed.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[-1],
        metavar="N",
        help="layer indices: 0 = embedding output, i = block i, -1 = last block (default: -1)",
    )
    embed.add_argument(
        "--pooling",
        nargs="+",
        default=["mean"],
        metavar="P",
        help="poolings: mean, weighted_mean, max, last_token, abs_max (default: mean)",
    )
    embed.add_argument("--normalize", action="store_true", help="L2-normalise every vector")
    embed.add_argument(
        "--tokens", action="store_true", help="also return the prompt's tokens, one per position"
    )

    semantic = commands.add_parser(
        "semantic-embed",
        help="one vector for a prompt, in the model's own semantic configuration",
    )
    _add_prompt_arguments(semantic)
    semantic.add_argument(
        "--representation",
        choices=("symmetric", "document", "query"),
        default="symmetric",
        help="what the vector is for (default: %(default)s)",
    )
    semantic.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise, or not (default: the model's own setting)",
    )

    _add_embeddings_command(commands)

    instructable = commands.add_parser(
        "instructable-embed",
        help="one vector for a prompt embedded after an instruction, in the model's own "
        "instructable configuration",
    )
    _add_prompt_arguments(instructable)
    instructable.add_argument(
        "--instruction",
        required=True,
        metavar="TEXT",
        help="what the embedding should attend to ('' for none: the prompt alone)",
    )
    instructable.add_argument("--normalize", action="store_true", help="L2-normalise the vector")

    commands.add_parser("models", help="list the served models with their capabilities")

    tokenize = commands.add_parser("tokenize", help="text to vocabulary pieces and token ids")
    tokenize.add_argument("--model", required=True, help="model whose tokenizer to use")
    tokenize.add_argument("text", help="the text to tokenize (no special tokens are added)")

    detokenize = commands.add_parser("detokenize", help="token ids to text")
    detokenize.add_argument("--model", required=True, help="model whose tokenizer to use")
    detokenize.add_argument("token_ids", type=int, nargs="+", metavar="ID", help="token ids")

    add_load_command(commands)
    return parser


def _add_prompt_arguments(command: argparse.ArgumentParser) -> None:
    """The model, the prompt items in order, and the scheduling options every embedding shares."""
    command.add_argument("--model", required=True, help="model name, e.g. all-minilm-l6-v2")
    # The item options share one ordered list: the prompt is their concatenation.
    command.add_argument(
        "--prompt",
        action=_AppendItem,
        dest="items",
        metavar="TEXT",
        help="a text item; repeat, and mix with --token-ids, to build one sequence in order",
    )
    command.add_argument(
        "--token-ids",
        action=_AppendItem,
        dest="items",
        nargs="+",
        type=int,
        metavar="ID",
        help="a token-id item, used as given (no special tokens added); repeatable like --prompt",
    )
    command.add_argument(
        "--image",
        action=_AppendItem,
        dest="items",
        metavar="FILE",
        help="an image item (PNG, JPEG, WebP, GIF), centre-cropped; repeatable like --prompt",
    )
    _add_scheduling_arguments(command)


def _add_scheduling_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--nice", action="store_true", help="run below concurrent requests that are not nice"
    )
    command.add_argument(
        "--hosting",
        default=None,
        help="'aleph-alpha': only worker pools in our own datacenter may run it "
        "(default: any pool)",
    )


def _add_embeddings_command(commands: Any) -> None:
    embeddings = commands.add_parser(
        "embeddings",
        help="OpenAI-style embeddings: one vector per input, the model's semantic embedding",
    )
    embeddings.add_argument("--model", required=True, help="model name, e.g. all-minilm-l6-v2")
    embeddings.add_argument(
        "--input",
        action=_AppendInput,
        dest="inputs",
        metavar="TEXT",
        help="a text input; repeat, and mix with --token-ids, for several (at most 100)",
    )
    embeddings.add_argument(
        "--token-ids",
        action=_AppendInput,
        dest="inputs",
        nargs="+",
        type=int,
        metavar="ID",
        help="a token-id input, used as given (no special tokens added); repeatable",
    )
    embeddings.add_argument(
        "--dimensions",
        type=int,
        default=None,
        metavar="N",
        help="truncate to a Matryoshka size the model declares, then normalise "
        "(default: the full vector)",
    )
    _add_scheduling_arguments(embeddings)


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS and authentication")
    group.add_argument(
        "--tls",
        action="store_true",
        help="connect over TLS, checking the server with the system's roots",
    )

    def file_option(flag: str, help: str) -> None:
        """A file flag defaulting to its LAMINA_ variable (--tls-ca reads LAMINA_TLS_CA)."""
        env = "LAMINA_" + flag.removeprefix("--").replace("-", "_").upper()
        default = os.environ.get(env) or None
        group.add_argument(flag, default=default, metavar="FILE", help=f"{help} (env {env})")

    file_option(
        "--tls-ca", "PEM file of the CA that signed the server's certificate; implies --tls"
    )
    file_option("--tls-cert", "the client's PEM certificate, for servers that require mTLS")
    file_option("--tls-key", "the client's PEM private key")
    group.add_argument(
        "--tls-server-name",
        default=None,
        metavar="NAME",
        help="the name to expect in the server's certificate, when it differs from the target's",
    )
    file_option(
        "--token-file",
        "file whose first line is the bearer token (or the token itself in env LAMINA_TOKEN)",
    )


def security_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Security:
    """The parsed TLS and token flags; a missing file or half a key pair is a usage error."""
    try:
        return Security.from_files(
            tls=args.tls,
            ca_file=args.tls_ca,
            cert_file=args.tls_cert,
            key_file=args.tls_key,
            server_name=args.tls_server_name,
            token_file=args.token_file,
            token=os.environ.get("LAMINA_TOKEN") or None,
        )
    except (OSError, ValueError, IndexError) as error:
        parser.error(f"TLS or token: {error}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prompted = ("embed", "semantic-embed", "instructable-embed")
    if args.command in prompted and not getattr(args, "items", None):
        parser.error(f"{args.command} needs at least one --prompt, --token-ids or --image")
    if args.command == "embeddings" and not getattr(args, "inputs", None):
        parser.error("embeddings needs at least one --input or --token-ids")
    security = security_of(parser, args)
    if args.command == "load":  # many calls on its own channels, not one Client call
        return load_command(args, security)
    try:
        with Client(args.target, timeout=args.timeout, security=security) as client:
            output = _run(client, args)
    except LaminaError as error:
        print(f"error: {error.code}: {error.message}", file=sys.stderr)
        return 1
    json.dump(output, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return 0


def _run(client: Client, args: argparse.Namespace) -> Any:
    if args.command == "embed":
        result = client.embed(
            args.model,
            args.items,
            layers=args.layers,
            pooling=args.pooling,
            # An absent flag stays unset on the wire: the server's default decides.
            normalize=args.normalize or None,
            tokens=args.tokens or None,
            nice=args.nice,
            hosting=args.hosting,
        )
        return embed_json(result)
    if args.command == "semantic-embed":
        semantic = client.semantic_embed(
            args.model,
            args.items,
            representation=args.representation,
            normalize=args.normalize,
            nice=args.nice,
            hosting=args.hosting,
        )
        return {
            "model_version": semantic.model_version,
            "num_tokens_prompt_total": semantic.num_tokens_prompt_total,
            "embedding": _floats(semantic.embedding),
            "timing": dataclasses.asdict(semantic.timing),
        }
    if args.command == "embeddings":
        embedded = client.embeddings(
            args.model,
            args.inputs,
            dimensions=args.dimensions,
            nice=args.nice,
            hosting=args.hosting,
        )
        # OpenAI's reply shape, with Lamina's model_version and timing beside it.
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _floats(vector)}
                for i, vector in enumerate(embedded.embeddings)
            ],
            "model": embedded.model,
            "model_version": embedded.model_version,
            "usage": {
                "prompt_tokens": embedded.prompt_tokens,
                "total_tokens": embedded.prompt_tokens,
            },
            "timing": dataclasses.asdict(embedded.timing),
        }
    if args.command == "instructable-embed":
        instructable = client.instructable_embed(
            args.model,
            args.items,
            instruction=args.instruction,
            normalize=args.normalize or None,  # absent: unset on the wire, the server's default
            nice=args.nice,
            hosting=args.hosting,
        )
        return {
            "model_version": instructable.model_version,
            "num_tokens_prompt_total": instructable.num_tokens_prompt_total,
            "embedding": _floats(instructable.embedding),
            "timing": dataclasses.asdict(instructable.timing),
        }
    if args.command == "models":
        return [dataclasses.asdict(model) for model in client.models()]
    if args.command == "tokenize":
        return dataclasses.asdict(client.tokenize(args.model, args.text))
    return {"result": client.detokenize(args.model, args.token_ids)}


def embed_json(result: EmbedResult) -> dict[str, Any]:
    """The reply in the API's JSON shape: layer_<N> -> pooling -> list of floats."""
    output: dict[str, Any] = {
        "model_version": result.model_version,
        "num_tokens_prompt_total": result.num_tokens_prompt_total,
        "embeddings": {
            f"layer_{layer}": {name: _floats(v) for name, v in vectors.items()}
            for layer, vectors in result.embeddings.items()
        },
        "timing": dataclasses.asdict(result.timing),
    }
    if result.tokens is not None:
        output["tokens"] = result.tokens
    return output


def _floats(vector: Vector) -> list[float]:
    return [float(x) for x in vector]


if __name__ == "__main__":
    sys.exit(main())

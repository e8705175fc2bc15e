"""`lamina-client embeddings` against a real server: each --input and --token-ids one input, in
order, printed in OpenAI's reply shape; a refused call prints the error and exits 1."""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest

from lamina.client.cli import build_parser, main
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import MINILM
from tests.integration.support import RunningServer


def test_inputs_keep_their_command_line_order() -> None:
    args = build_parser().parse_args(
        ["embeddings", "--model", "m", "--input", "a", "--token-ids", "1", "2", "--input", "b"]
    )
    assert args.inputs == ["a", [1, 2], "b"]
    assert (args.dimensions, args.nice, args.hosting) == (None, False, None)


def test_embeddings_needs_an_input(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["embeddings", "--model", "m"])
    assert exited.value.code == 2
    assert "at least one --input or --token-ids" in capsys.readouterr().err


async def test_embeddings_prints_openai_shape(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", server.target, "embeddings", "--model", MINILM, "--nice"]
    argv += ["--input", "Hello world", "--token-ids", "101", "7592", "102"]
    # The server runs on this loop: the blocking CLI runs beside it.
    assert await asyncio.to_thread(main, argv) == 0
    printed = json.loads(capsys.readouterr().out)
    async with grpc.aio.insecure_channel(server.target) as channel:
        message = pb.EmbeddingsRequest(model=MINILM)
        message.input.add(text="Hello world")
        message.input.add(token_ids=pb.TokenIdList(ids=[101, 7592, 102]))
        reply = await pb_grpc.EmbedServiceStub(channel).Embeddings(message)
    assert printed["object"] == "list" and printed["model"] == MINILM
    assert printed["model_version"] == reply.model_version
    assert [d["index"] for d in printed["data"]] == [0, 1]
    for data, vector in zip(printed["data"], reply.embeddings, strict=True):
        np.testing.assert_array_equal(
            np.asarray(data["embedding"], dtype=np.float32), np.asarray(vector.values, np.float32)
        )
    assert printed["usage"]["prompt_tokens"] == reply.usage.prompt_tokens


async def test_a_refused_call_prints_the_error(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", server.target, "embeddings", "--model", MINILM, "--input", "a"]
    assert await asyncio.to_thread(main, [*argv, "--dimensions", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: INVALID_ARGUMENT: dimensions:") and "384" in err

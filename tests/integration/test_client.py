"""The shipped client and CLI against the real server."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from lamina.client import AsyncClient, Client, LaminaError, ModelVersionState, Text, TokenIds
from tests.integration.support import RunningServer

MODEL = "all-minilm-l6-v2"
CLI = shutil.which("lamina-client", path=str(Path(sys.executable).parent)) or "lamina-client"


async def test_async_client_embeds_with_numpy_vectors(server: RunningServer) -> None:
    async with AsyncClient(server.target) as client:
        result = await client.embed(
            MODEL, "Hello world", layers=[0, -1], pooling=["mean", "max"], tokens=True
        )
        models = await client.models()
        tokens = await client.tokenize(MODEL, "Hello world")
        text = await client.detokenize(MODEL, [7592, 2088])
    assert sorted(result.embeddings) == [0, 6]
    assert result.vector(6, "mean").shape == (384,)
    assert result.tokens == ["[CLS]", "hello", "world", "[SEP]"]
    assert {m.name: m.num_layers for m in models}[MODEL] == 6
    assert tokens.token_ids == [7592, 2088] and tokens.tokens == ["hello", "world"]
    assert text == "hello world"


async def test_both_clients_list_every_version_and_its_state(server: RunningServer) -> None:
    async with AsyncClient(server.target) as client:
        states = await client.model_versions()
        models = await client.models()

    def sync_call() -> list[ModelVersionState]:
        with Client(server.target, timeout=30) as sync:
            return sync.model_versions()

    assert await asyncio.to_thread(sync_call) == states
    serving = {s.model: s.version for s in states if s.state == "serving"}
    assert serving == {m.name: int(m.version) for m in models}
    assert all(s.reason is None for s in states if s.state == "serving")
    assert {m.name: m.versions for m in models}[MODEL] == [s for s in states if s.model == MODEL]


async def test_sync_client_mixed_items_equal_text(server: RunningServer) -> None:
    def call() -> tuple[np.ndarray, np.ndarray]:
        with Client(server.target, timeout=30) as client:
            mixed = client.embed(MODEL, [Text("Hello"), TokenIds([2088])], normalize=True)
            plain = client.embed(MODEL, "Hello world", normalize=True)
        return mixed.vector(6, "mean"), plain.vector(6, "mean")

    mixed, plain = await asyncio.to_thread(call)
    np.testing.assert_allclose(mixed, plain, atol=1e-6)
    assert abs(float(np.linalg.norm(plain)) - 1) < 1e-5


async def test_clients_raise_lamina_error_with_the_status_name(server: RunningServer) -> None:
    async with AsyncClient(server.target) as client:
        with pytest.raises(LaminaError) as error:
            await client.embed(MODEL, "x", layers=[42])
    assert error.value.code == "INVALID_ARGUMENT" and "layers[0]" in error.value.message

    def call() -> None:
        with Client(server.target) as client:
            client.embed("missing-model", "x")

    with pytest.raises(LaminaError) as sync_error:
        await asyncio.to_thread(call)
    assert sync_error.value.code == "NOT_FOUND"


async def _cli(server: RunningServer, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        CLI,
        "--target",
        server.target,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_embed_prints_the_api_json(server: RunningServer) -> None:
    code, out, err = await _cli(
        server,
        "embed",
        "--model",
        MODEL,
        "--prompt",
        "Hello",
        "--token-ids",
        "2088",
        "--layers",
        "0",
        "3",
        "-1",
        "--pooling",
        "mean",
        "last_token",
        "--tokens",
    )
    assert code == 0, err
    reply = json.loads(out)
    assert sorted(reply["embeddings"]) == ["layer_0", "layer_3", "layer_6"]
    assert len(reply["embeddings"]["layer_6"]["last_token"]) == 384
    assert reply["tokens"] == ["[CLS]", "hello", "world", "[SEP]"]
    assert reply["num_tokens_prompt_total"] == 4 and reply["model_version"].startswith(MODEL)


async def test_cli_models_and_errors(server: RunningServer) -> None:
    code, out, _ = await _cli(server, "models")
    assert code == 0
    assert {m["name"]: m["hidden_size"] for m in json.loads(out)}[MODEL] == 384
    code, out, err = await _cli(
        server, "embed", "--model", MODEL, "--prompt", "x", "--pooling", "median"
    )
    assert code == 1 and out == ""
    assert err.startswith("error: INVALID_ARGUMENT: pooling[0]: unknown pooling 'median'")


async def test_cli_semantic_embed_is_the_normalised_last_layer_mean(server: RunningServer) -> None:
    code, out, err = await _cli(
        server, "semantic-embed", "--model", MODEL, "--prompt", "Hello world"
    )
    assert code == 0, err
    semantic = json.loads(out)
    code, out, err = await _cli(
        server, "embed", "--model", MODEL, "--prompt", "Hello world", "--normalize"
    )
    assert code == 0, err
    embedded = json.loads(out)["embeddings"]["layer_6"]["mean"]
    np.testing.assert_allclose(semantic["embedding"], embedded, rtol=1e-6, atol=1e-7)
    assert semantic["num_tokens_prompt_total"] == 4
    code, out, _ = await _cli(
        server, "semantic-embed", "--model", MODEL, "--prompt", "x", "--no-normalize"
    )
    assert code == 0 and abs(np.linalg.norm(json.loads(out)["embedding"]) - 1) > 1e-3
    code, _, err = await _cli(
        server, "semantic-embed", "--model", "smollm2-135m-instruct", "--prompt", "x"
    )
    assert code == 1 and "has no semantic embedding" in err

"""`lamina-client instructable-embed`: its arguments, and its JSON and errors against a real
server, equal to what the Python client answers."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from lamina.client import AsyncClient, Text, TokenIds
from lamina.client.cli import build_parser, main
from tests.conftest import MINILM, SMOLLM2
from tests.integration.support import RunningServer

INSTRUCTION = "Represent the sentence for retrieving answers about geography"


def test_the_arguments_parse_in_order() -> None:
    args = build_parser().parse_args(
        [
            "instructable-embed",
            "--model",
            "m",
            "--instruction",
            "Represent it",
            "--prompt",
            "a",
            "--token-ids",
            "1",
            "2",
            "--normalize",
            "--nice",
            "--hosting",
            "aleph-alpha",
        ]
    )
    assert (args.command, args.model, args.instruction) == (
        "instructable-embed",
        "m",
        "Represent it",
    )
    assert args.items == [Text("a"), TokenIds([1, 2])]
    assert args.normalize and args.nice and args.hosting == "aleph-alpha"
    defaults = build_parser().parse_args(
        ["instructable-embed", "--model", "m", "--instruction", "", "--prompt", "a"]
    )
    assert not (defaults.normalize or defaults.nice) and defaults.hosting is None


@pytest.mark.parametrize(
    "argv",
    [
        ["instructable-embed", "--model", "m", "--prompt", "a"],  # no --instruction
        ["instructable-embed", "--model", "m", "--instruction", "x"],  # no item
    ],
)
def test_incomplete_command_lines_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "instructable-embed" in capsys.readouterr().err


async def test_it_prints_what_the_client_answers(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", server.target, "instructable-embed", "--model", SMOLLM2]
    argv += ["--instruction", INSTRUCTION, "--prompt", "The capital of France", "--normalize"]
    assert await asyncio.to_thread(main, argv) == 0
    printed = json.loads(capsys.readouterr().out)
    async with AsyncClient(server.target) as client:
        expected = await client.instructable_embed(
            SMOLLM2, "The capital of France", instruction=INSTRUCTION, normalize=True
        )
    assert set(printed) == {"model_version", "num_tokens_prompt_total", "embedding", "timing"}
    assert printed["model_version"] == expected.model_version
    assert printed["num_tokens_prompt_total"] == expected.num_tokens_prompt_total
    np.testing.assert_allclose(printed["embedding"], expected.embedding, rtol=1e-5, atol=1e-6)
    assert abs(float(np.linalg.norm(printed["embedding"])) - 1) < 1e-5


async def test_a_model_without_the_section_prints_the_error_and_exits_1(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", server.target, "instructable-embed", "--model", MINILM]
    argv += ["--instruction", "x", "--prompt", "y"]
    assert await asyncio.to_thread(main, argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        f"error: INVALID_ARGUMENT: model: model {MINILM!r} has no instructable embedding"
    )

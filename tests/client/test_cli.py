"""`lamina-client`: argument parsing, and its JSON and errors against a canned server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lamina.client import Image, Text, TokenIds
from lamina.client.cli import build_parser, embed_json, main
from lamina.client.results import EmbedResult, Timing
from lamina.v1 import embed_pb2 as pb
from tests.client import fake_server
from tests.client.fake_server import FakeServer


def test_embed_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAMINA_TARGET", raising=False)
    args = build_parser().parse_args(["embed", "--model", "m", "--prompt", "hi"])
    assert (args.target, args.timeout) == ("localhost:50051", None)
    assert args.items == [Text("hi")]
    assert (args.layers, args.pooling) == ([-1], ["mean"])
    assert not (args.normalize or args.tokens or args.nice) and args.hosting is None


def test_prompt_and_token_id_items_keep_their_command_line_order() -> None:
    args = build_parser().parse_args(
        ["embed", "--model", "m", "--token-ids", "1", "2", "--prompt", "a", "--token-ids", "3"]
    )
    assert args.items == [TokenIds([1, 2]), Text("a"), TokenIds([3])]


def test_an_image_item_carries_the_file_bytes_in_order(tmp_path: Path) -> None:
    picture = tmp_path / "cat.png"
    picture.write_bytes(b"\x89PNG fake bytes")
    args = build_parser().parse_args(
        ["embed", "--model", "m", "--prompt", "a", "--image", str(picture), "--token-ids", "3"]
    )
    assert args.items == [Text("a"), Image(b"\x89PNG fake bytes"), TokenIds([3])]


def test_every_embed_option_parses() -> None:
    args = build_parser().parse_args(
        [
            "--target",
            "h:1",
            "--timeout",
            "2.5",
            "embed",
            "--model",
            "m",
            "--prompt",
            "x",
            "--layers",
            "0",
            "-1",
            "--pooling",
            "max",
            "abs_max",
            "--normalize",
            "--tokens",
            "--nice",
            "--hosting",
            "aleph-alpha",
        ]
    )
    assert (args.target, args.timeout, args.model) == ("h:1", 2.5, "m")
    assert (args.layers, args.pooling) == ([0, -1], ["max", "abs_max"])
    assert args.normalize and args.tokens and args.nice and args.hosting == "aleph-alpha"


def test_the_target_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMINA_TARGET", "elsewhere:7")
    assert build_parser().parse_args(["models"]).target == "elsewhere:7"


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["embed", "--model", "m"], "at least one --prompt, --token-ids or --image"),
        (["embed", "--model", "m", "--image", "/nonexistent.png"], "No such file"),
        (["embed", "--model", "m", "--token-ids", "one"], "invalid int value: 'one'"),
        (["embed", "--prompt", "x"], "--model"),
        (["detokenize", "--model", "m"], "ID"),
        ([], "command"),
    ],
)
def test_bad_command_lines_exit_2_with_a_usage_error(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    assert complaint in capsys.readouterr().err


def test_help_explains_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for words in ("-1 = last block", "weighted_mean", "L2-normalise", "aleph-alpha", "in order"):
        assert words in help_text


def test_embed_json_shape() -> None:
    result = EmbedResult(
        model_version="m@1",
        embeddings={0: {"mean": [0.5, 1.0]}, 6: {"max": [2.0]}},
        tokens=None,
        num_tokens_prompt_total=2,
        timing=Timing(0.0, 0.5, 1.0, 0.25),
    )
    assert embed_json(result) == {
        "model_version": "m@1",
        "num_tokens_prompt_total": 2,
        "embeddings": {"layer_0": {"mean": [0.5, 1.0]}, "layer_6": {"max": [2.0]}},
        "timing": {
            "queue_seconds": 0.0,
            "tokenization_seconds": 0.5,
            "inference_seconds": 1.0,
            "parked_seconds": 0.25,
        },
    }


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else None, err


def test_embed_prints_the_api_json(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, reply, err = _main(
        capsys,
        "--target",
        fake.target,
        "embed",
        "--model",
        "fake-model",
        "--prompt",
        "Hello",
        "--token-ids",
        "5",
        "6",
        "--layers",
        "0",
        "-1",
        "--pooling",
        "mean",
        "last_token",
        "--tokens",
    )
    assert (code, err) == (0, "")
    assert reply == {
        "model_version": "fake-model@3",
        "num_tokens_prompt_total": 2,
        "embeddings": {
            "layer_0": {"mean": [0.0, 0.5], "last_token": [0.0, 1.5]},
            "layer_6": {"mean": [6.0, 0.5], "last_token": [6.0, 1.5]},
        },
        "tokens": ["t0", "t1"],
        "timing": {
            "queue_seconds": 0.25,
            "tokenization_seconds": 0.5,
            "inference_seconds": 0.75,
            "parked_seconds": 0.125,
        },
    }
    request = fake.last.request
    assert request.prompt.items[0].text.data == "Hello"
    assert list(request.prompt.items[1].token_ids.data) == [5, 6]
    assert request.tokens and not request.HasField("normalize") and not request.nice


def test_embed_flags_reach_the_server(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, reply, _ = _main(
        capsys,
        "--target",
        fake.target,
        "--timeout",
        "4",
        "embed",
        "--model",
        "fake-model",
        "--prompt",
        "x",
        "--normalize",
        "--nice",
        "--hosting",
        "aleph-alpha",
    )
    assert code == 0 and "tokens" not in reply
    request = fake.last.request
    assert request.normalize and request.nice and request.hosting == "aleph-alpha"
    assert not request.HasField("tokens")
    assert fake.last.time_remaining is not None and fake.last.time_remaining < 4.5


def test_models_tokenize_detokenize_print_json(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, models, _ = _main(capsys, "--target", fake.target, "models")
    assert code == 0
    assert models == [
        {
            "name": "fake-model",
            "description": "a canned model",
            "max_context_size": 512,
            "hostings": ["aleph-alpha"],
            "image_support": False,
            "embedding_types": ["embed"],
            "version": "3",
            "num_layers": 6,
            "hidden_size": 2,
            "architecture": "bert",
            "untrained": False,
            "versions": [],  # the canned reply lists none
            "precisions": [],
        }
    ]
    code, tokens, _ = _main(capsys, "--target", fake.target, "tokenize", "--model", "m", "a bc")
    assert (code, tokens) == (0, {"tokens": ["a", "bc"], "token_ids": [1, 2]})
    code, text, _ = _main(capsys, "--target", fake.target, "detokenize", "--model", "m", "1", "2")
    assert (code, text) == (0, {"result": "<1> <2>"})
    assert fake.last.request == pb.DetokenizeRequest(model="m", token_ids=[1, 2])


def test_a_server_error_prints_code_and_message_and_exits_1(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, reply, err = _main(
        capsys, "--target", fake.target, "embed", "--model", fake_server.REJECTED, "--prompt", "x"
    )
    assert (code, reply) == (1, None)
    assert err == f"error: INVALID_ARGUMENT: {fake_server.INVALID_MESSAGE}\n"


def test_no_server_is_an_unavailable_error(capsys: pytest.CaptureFixture[str]) -> None:
    target = fake_server.closed_port_target()
    code, reply, err = _main(capsys, "--target", target, "--timeout", "10", "models")
    assert (code, reply) == (1, None) and err.startswith("error: UNAVAILABLE: ")


def test_the_cli_works_without_numpy(fake: FakeServer) -> None:
    # A fresh interpreter where `import numpy` fails, as on a bare client install.
    script = (
        "import sys; sys.modules['numpy'] = None; "
        "from lamina.client.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = ["--target", fake.target, "embed", "--model", "m", "--prompt", "x"]
    done = subprocess.run(
        [sys.executable, "-c", script, *argv],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["embeddings"] == {"layer_6": {"mean": [6.0, 0.5]}}

"""docs/api.md against the code: every RPC the server registers, every route the gateway serves,
every Embed pooling, request-limit flag and error name is in the reference, so a surface added
without its documentation fails here rather than in a user's hands; and every curl and grpcurl
example in it runs against a real server and answers as the page shows."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import pytest
import requests
from google.protobuf import json_format
from PIL import Image
from starlette.routing import Mount, Route

from lamina.server import domain
from lamina.server.api.servicer import SERVICE
from lamina.server.calls import Calls
from lamina.server.config import add_serve_arguments
from lamina.server.gateway.app import Gateway
from lamina.server.gateway.errors import HTTP_STATUS, UNAUTHENTICATED
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.gateway.support import Gateway as GatewayServer
from tests.gateway.support import threaded_server

ROOT = Path(__file__).parents[1]
DOC = (ROOT / "docs" / "api.md").read_text()
PROTO = (ROOT / "protos" / "lamina" / "v1" / "embed.proto").read_text()


def _headings() -> list[str]:
    return [line for line in DOC.splitlines() if line.startswith("#")]


def _routes() -> tuple[list[Route], list[Mount]]:
    # Building the route table touches no call: the app is the one `lamina serve` runs, without
    # an engine behind it.
    routes = Gateway(cast(Calls, None)).app().routes
    return (
        [r for r in routes if isinstance(r, Route)],
        [r for r in routes if isinstance(r, Mount)],
    )


def test_the_served_rpcs_are_the_protos() -> None:
    """The methods named below are the generated descriptor's: it must be the proto's own."""
    declared = set(re.findall(r"^\s*rpc\s+(\w+)\s*\(", PROTO, re.MULTILINE))
    assert {m.name for m in SERVICE.methods} == declared
    assert "Embed" in declared


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_every_rpc_has_its_signature_in_a_section(method: str) -> None:
    rpc = next(m for m in SERVICE.methods if m.name == method)
    signature = f"rpc {method}({rpc.input_type.name}) returns ({rpc.output_type.name})"
    assert f"`{signature}`" in DOC, f"docs/api.md does not give `{signature}`"
    assert any(re.search(rf"\b{method}\b", h) for h in _headings()), (
        f"no heading of docs/api.md names {method}"
    )


def test_every_route_is_named_with_its_method() -> None:
    routes, _ = _routes()
    assert routes, "the gateway serves no routes"
    missing = [
        f"{verb} {route.path}"
        for route in routes
        for verb in sorted((route.methods or set()) - {"HEAD"})
        if f"`{verb} {route.path}`" not in DOC
    ]
    assert not missing, f"docs/api.md does not name {missing}"


def test_the_v1_mount_is_named_and_serves_the_same_routes() -> None:
    routes, mounts = _routes()
    assert [m.path for m in mounts] == ["/v1"]
    assert {r.path for r in mounts[0].routes if isinstance(r, Route)} == {r.path for r in routes}
    assert "`/v1/`" in DOC


@pytest.mark.parametrize("pooling", [p.value for p in domain.EMBED_POOLINGS])
def test_every_embed_pooling_has_its_formula_row(pooling: str) -> None:
    assert re.search(rf"^\| `{pooling}` \|", DOC, re.MULTILINE), (
        f"the pooling table of docs/api.md has no row for {pooling}"
    )


def test_first_token_is_said_to_be_no_embed_pooling() -> None:
    assert domain.Pooling.FIRST_TOKEN not in domain.EMBED_POOLINGS
    row = re.search(r"^\| `first_token` \|", DOC, re.MULTILINE)
    assert row is None, "first_token is not an Embed pooling: it must not be in the table"
    assert "`first_token`" in DOC


def _limit_flags() -> list[tuple[str, str]]:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    (group,) = [g for g in parser._action_groups if g.title == "request limits"]
    return [(a.option_strings[0], str(a.default)) for a in group._group_actions]


@pytest.mark.parametrize(("flag", "default"), _limit_flags())
def test_every_request_limit_flag_has_a_row(flag: str, default: str) -> None:
    rows = [line for line in DOC.splitlines() if line.startswith("|") and f"`{flag}`" in line]
    assert rows, f"the limits table of docs/api.md has no row for {flag}"
    # 20.0 MiB reads 20 (MiB), 1000000 reads 1,000,000: a cell of its own that starts with it.
    plain = default.removesuffix(".0")
    grouped = f"{int(float(default)):,}" if float(default).is_integer() else plain
    cells = [cell.strip() for row in rows for cell in row.split("|")]
    assert any(cell.split(" ")[0] in (plain, grouped) for cell in cells if cell), (
        f"the row for {flag} does not give its default {default}"
    )


@pytest.mark.parametrize(
    ("code", "status"), sorted((name, status) for status, name in HTTP_STATUS.values())
)
def test_every_error_has_a_row_with_its_http_status(code: str, status: int) -> None:
    rows = [line for line in DOC.splitlines() if line.startswith("|") and f"`{code}`" in line]
    assert any(re.search(rf"\| {status}\b", row) for row in rows), (
        f"docs/api.md has no error row giving {code} as HTTP {status}"
    )


def test_unauthenticated_has_its_row() -> None:
    assert any(
        line.startswith("|") and f"`{UNAUTHENTICATED}`" in line and "| 401" in line
        for line in DOC.splitlines()
    )


# ---------------------------------------------------------------------------------------------
# The examples: every curl and grpcurl command of docs/api.md, run against a real server.

DOC_HTTP = "localhost:8080"
DOC_GRPC = "localhost:50051"


@dataclass(frozen=True)
class Example:
    words: list[str]  # the command, split as the shell would
    expected: str  # the `# 400 {...}` comment lines below it, joined; "" for a success

    def option(self, flag: str) -> str | None:
        return self.words[self.words.index(flag) + 1] if flag in self.words else None


def _examples(program: str) -> list[Example]:
    """Each `program` command of the doc's bash blocks, with the comment that follows it."""
    blocks = re.findall(r"^```bash\n(.*?)^```", DOC, re.MULTILINE | re.DOTALL)
    found: list[Example] = []
    for block in blocks:
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            command = lines[i]
            # A command goes on while a quote is open or the line ends with a backslash.
            while (command.count("'") % 2 or command.endswith("\\")) and i + 1 < len(lines):
                i += 1
                command = command.removesuffix("\\") + "\n" + lines[i]
            i += 1
            comment = []
            while i < len(lines) and lines[i].startswith("#"):
                comment.append(lines[i].lstrip("#").strip())
                i += 1
            words = shlex.split(command, comments=True)
            if words and words[0] == program:
                found.append(Example(words, " ".join(comment)))
    return found


CURL = _examples("curl")
GRPCURL = _examples("grpcurl")


@pytest.fixture(scope="module")
def live(model_repository: Path) -> Iterator[GatewayServer]:
    with threaded_server(model_repository) as running:
        yield running


def test_the_doc_has_examples_of_both_edges() -> None:
    assert len(CURL) >= 5 and len(GRPCURL) >= 3
    assert any(example.expected for example in CURL), "no example shows an error"


@pytest.mark.parametrize("example", CURL, ids=lambda e: next(w for w in e.words if DOC_HTTP in w))
def test_every_curl_example_answers_as_shown(live: GatewayServer, example: Example) -> None:
    (url,) = [word for word in example.words if DOC_HTTP in word]
    address = live.url.removeprefix("http://").rstrip("/")
    body = example.option("-d")
    header = example.option("-H")
    headers: dict[str, str] = {}
    if header is not None:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    reply = requests.request(
        "POST" if body is not None else "GET",
        "http://" + url.replace(DOC_HTTP, address).removeprefix("http://"),
        data=body,
        headers=headers,
        timeout=120,
    )
    if not example.expected:
        assert reply.status_code == 200, reply.text
        return
    status, _, shown = example.expected.partition(" ")
    assert reply.status_code == int(status)
    assert reply.json() == json.loads(shown)


@pytest.mark.parametrize("example", GRPCURL, ids=lambda e: e.words[-1].rsplit("/", 1)[-1])
def test_every_grpcurl_example_answers(live: GatewayServer, example: Example) -> None:
    assert example.words[-2] == DOC_GRPC
    service, method = example.words[-1].rsplit("/", 1)
    assert service == SERVICE.full_name
    rpc = SERVICE.methods_by_name[method]
    request = json_format.Parse(example.option("-d") or "{}", getattr(pb, rpc.input_type.name)())
    with grpc.insecure_channel(live.target) as channel:
        reply = getattr(pb_grpc.EmbedServiceStub(channel), method)(request, timeout=120)
    assert reply.ByteSize() > 0


PYTHON = re.findall(r"^```python\n(.*?)^```", DOC, re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_every_python_example_runs(
    live: GatewayServer, index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against the live server, beside a `photo.jpg` for the image examples."""
    Image.new("RGB", (300, 200), (120, 30, 200)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    source = PYTHON[index].replace(DOC_GRPC, live.target)
    exec(compile(source, f"docs/api.md python example {index}", "exec"), {})

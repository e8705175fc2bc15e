"""Nothing a caller sends over HTTP corrupts, stalls or crashes the gateway (issue 13).

Bodies no reader expects are 400 with the `{"error", "code"}` body naming the field, never a
500 nor a traceback in the log; echoed strings are cut short; and on the connection level (raw
sockets) a head or body that does not arrive in time is closed, ambiguous framing is refused and
closed, and connections beyond the cap are refused. After each case the server still embeds.

Timeouts are set small here (HEAD_SECONDS, BODY_SECONDS); the only clock checks are generous upper
bounds over them (SLACK_SECONDS), which a loaded CI machine keeps.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from lamina.server.gateway import json_api
from lamina.server.gateway.errors import error_body
from tests.conftest import MINILM
from tests.gateway.support import Gateway, threaded_server

EMBED: dict[str, Any] = {"model": MINILM, "prompt": "Hello", "layers": [-1], "pooling": ["mean"]}
HEAD_SECONDS = 0.5
BODY_SECONDS = 0.5
SLACK_SECONDS = 10.0  # on top of a timeout: the bound a closed connection must keep
CAP = 4


@pytest.fixture(scope="module")
def minilm_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM alone: the servers here start quickly."""
    repository = tmp_path_factory.mktemp("repository")
    (repository / MINILM).symlink_to(model_repository / MINILM, target_is_directory=True)
    return repository


@pytest.fixture(scope="module")
def hostile(minilm_repository: Path) -> Iterator[Gateway]:
    with threaded_server(
        minilm_repository,
        http_header_timeout_seconds=HEAD_SECONDS,
        http_body_timeout_seconds=BODY_SECONDS,
        http_max_connections=256,
    ) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def capped(minilm_repository: Path) -> Iterator[Gateway]:
    """A server of CAP connections, whose half-sent heads stay open long enough to fill it."""
    with threaded_server(
        minilm_repository, http_header_timeout_seconds=60, http_max_connections=CAP
    ) as gateway:
        yield gateway


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No hostile input is logged as an error, nor reaches the reader's last-resort guard (a
    warning from gateway/app.py means a shape json_api.py does not check)."""
    caplog.set_level(logging.WARNING)
    yield
    bad = [
        record
        for record in caplog.records
        if record.levelno >= logging.ERROR
        or record.exc_info
        or record.name == "lamina.server.gateway.app"
    ]
    assert not bad, [record.getMessage() for record in bad]


# -- helpers --------------------------------------------------------------------------------


def serves(gateway: Gateway) -> None:
    """The server still embeds."""
    reply = requests.post(gateway.url + "embed", json=EMBED, timeout=60)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["embeddings"]["layer_6"]["mean"]) == 384


def post_raw(gateway: Gateway, route: str, body: bytes | str, **kwargs: Any) -> requests.Response:
    data = body.encode() if isinstance(body, str) else body
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return requests.post(gateway.url + route, data=data, headers=headers, timeout=60, **kwargs)


def error_of(reply: requests.Response, status: int = 400, code: str = "INVALID_ARGUMENT") -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error", "code"} and body["code"] == code, body
    message: str = body["error"]
    return message


def connect(gateway: Gateway) -> socket.socket:
    host, port = gateway.url.removeprefix("http://").rstrip("/").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def read_to_close(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when (monotonic); fails
    if it is still open after `within` seconds."""
    deadline = time.monotonic() + within
    received = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"the connection was still open after {within} s: {received!r}")
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return received, time.monotonic()
        received += chunk


def response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """The first HTTP response in `raw`: status, headers (lower-cased names), body."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines[1:])
    )
    length = int(headers.get("content-length", len(rest)))
    return int(lines[0].split()[1]), headers, rest[:length]


def json_error(raw: bytes, status: int, code: str) -> str:
    got, headers, body = response(raw)
    assert got == status, raw
    assert headers["content-type"] == "application/json"
    parsed = json.loads(body)
    assert set(parsed) == {"error", "code"} and parsed["code"] == code, parsed
    message: str = parsed["error"]
    return message


def request_head(route: str = "/embed", length: int = 0, method: str = "POST") -> bytes:
    return (
        f"{method} {route} HTTP/1.1\r\nHost: lamina\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


# -- bodies: 400 naming the field, never 500 ------------------------------------------------


def test_json_nested_deeper_than_the_parser_goes_is_400(hostile: Gateway) -> None:
    for body in ("[" * 100_000, '{"prompt": ' * 100_000, "[" * 100_000 + "]" * 100_000):
        message = error_of(post_raw(hostile, "embed", body))
        assert message.startswith("body: not valid JSON"), message
    serves(hostile)


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ('{"model": "\\ud800", "prompt": "x"}', "model: not valid Unicode"),
        ('{"prompt": "a\\udfff"}', "prompt: not valid Unicode (a lone surrogate \\udfff"),
        ('{"pooling": ["mean", "\\ud800"]}', "pooling[1]: not valid Unicode"),
        ('{"prompt": [{"type": "text", "data": "\\ud800"}]}', "prompt[0].data: not valid"),
        ('{"prompt": [{"type": "\\ud800"}]}', "prompt[0].type: not valid Unicode"),
        ('{"\\ud800": 1}', "'\\ud800': unknown field"),
        ('{"prompt": [{"type": "text", "\\udc00x": 1}]}', "prompt[0].'\\udc00x': unknown field"),
    ],
)
def test_a_lone_surrogate_in_a_value_or_a_key_is_400_naming_the_field(
    hostile: Gateway, body: str, text: str
) -> None:
    message = error_of(post_raw(hostile, "embed", body))
    assert message.startswith(text), message
    serves(hostile)


def test_surrogates_on_the_other_routes(hostile: Gateway) -> None:
    assert error_of(
        post_raw(hostile, "tokenize", '{"model": "m", "prompt": "\\ud800"}')
    ).startswith("prompt: not valid Unicode")
    body = '{"model": "m", "prompts": ["ok", "\\ud800"]}'
    message = error_of(post_raw(hostile, "batch_semantic_embed", body))
    assert message.startswith("prompts[1]: not valid Unicode"), message


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "\xff"}',
        b'{"prompt": "\xc3"}',  # a sequence cut short
        b'{"prompt": "\xed\xa0\x80"}',  # a surrogate written out in UTF-8 bytes
        b'{"prompt": "\xc0\xaf"}',  # an overlong form
        '{"prompt": "x"}'.encode("utf-16"),
    ],
)
def test_a_body_that_is_not_utf8_is_400(hostile: Gateway, body: bytes) -> None:
    message = error_of(post_raw(hostile, "embed", body))
    assert message.startswith("body: not valid UTF-8"), message
    serves(hostile)


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ("", "body: not valid JSON"),
        ("{", "body: not valid JSON"),
        ('{"model": "m",}', "body: not valid JSON"),
        ('{"model": "m"} {}', "body: not valid JSON (Extra data"),
        ("[1, 2", "body: not valid JSON"),
        ("1" * 5000, "body: not valid JSON (an integer with too many digits)"),
        ('"text"', "body: expected a JSON object, got a string"),
        ("NaN", "body: expected a JSON object, got NaN, which is not a JSON number"),
        ("null", "body: expected a JSON object, got null"),
        ("[" + "{}," * 600_000 + "{}]", "body: more than 1048576 JSON values"),
    ],
)
def test_malformed_json_of_any_shape_is_400(hostile: Gateway, body: str, text: str) -> None:
    message = error_of(post_raw(hostile, "embed", body))
    assert message.startswith(text), message


def _embed(**fields: str) -> str:
    """An /embed body with `fields` written as raw JSON text (to write NaN, 1e400, ...)."""
    body = {key: json.dumps(value) for key, value in EMBED.items()}
    body.update(fields)
    return "{" + ", ".join(f'"{key}": {value}' for key, value in body.items()) + "}"


TEXT = '[{{"type": "text", "data": "Hi", "controls": [{}]}}]'
TOKENS = '[{{"type": "token_ids", "data": {}}}]'
IMAGE = '[{{"type": "image", "data": "", {}}}]'


@pytest.mark.parametrize(
    ("route", "body", "text"),
    [
        # a list, an object, a string where another is expected
        ("embed", _embed(layers='{"a": 1}'), "layers: expected a list, got an object"),
        ("embed", _embed(prompt='{"type": "text"}'), "prompt: expected a list, got an object"),
        ("embed", _embed(prompt='[["text"]]'), "prompt[0]: expected a JSON object, got a list"),
        ("embed", _embed(model="5"), "model: expected a string, got a number"),
        ("embed", _embed(model='["m"]'), "model: expected a string, got a list"),
        ("embed", _embed(pooling='"mean"'), "pooling: expected a list, got a string"),
        ("embed", _embed(pooling="[{}]"), "pooling[0]: expected a string, got an object"),
        ("embed", _embed(tokens='"true"'), "tokens: expected true or false, got a string"),
        ("embed", _embed(normalize="0"), "normalize: expected true or false, got a number"),
        ("embed", _embed(hosting="true"), "hosting: expected a string, got a boolean"),
        # integers: floats, booleans, strings, beyond int32 / int64 / uint32
        ("embed", _embed(layers="[1.5]"), "layers[0]: expected an integer, got a number"),
        ("embed", _embed(layers="[true]"), "layers[0]: expected an integer, got a boolean"),
        ("embed", _embed(layers='["1"]'), "layers[0]: expected an integer, got a string"),
        ("embed", _embed(layers=f"[{2**31}]"), f"layers[0]: {2**31} is outside"),
        ("embed", _embed(layers=f"[{-(2**31) - 1}]"), "layers[0]: -2147483649 is outside"),
        ("embed", _embed(layers=f"[{10**30}]"), "layers[0]: an integer of 31 digits is outside"),
        ("embed", _embed(layers="[1e300]"), "layers[0]: an integer of 301 digits is outside"),
        ("embed", _embed(layers="[1e400]"), "layers[0]: expected an integer, got a number beyond"),
        ("embed", _embed(layers="[NaN]"), "layers[0]: expected an integer, got NaN"),
        ("embed", _embed(prompt=TOKENS.format(f"[{2**63}]")), "prompt[0].data[0]: 92233"),
        ("embed", _embed(prompt=TOKENS.format("[1, -1.5]")), "prompt[0].data[1]: expected an"),
        ("embed", _embed(prompt=TOKENS.format('"1 2"')), "prompt[0].data: expected a list"),
        (
            "embed",
            _embed(prompt=TEXT.format('{"start": -1, "length": 1, "factor": 1}')),
            "prompt[0].controls[0].start: -1 is outside 0..4294967295",
        ),
        (
            "embed",
            _embed(prompt=TEXT.format(f'{{"start": 0, "length": {2**32}, "factor": 1}}')),
            "prompt[0].controls[0].length: 4294967296 is outside",
        ),
        ("embed", _embed(prompt=IMAGE.format(f'"x": {2**32}')), "prompt[0].x: 4294967296 is"),
        ("embed", _embed(prompt=IMAGE.format('"size": false')), "prompt[0].size: expected an"),
        # numbers: strings, NaN and Infinity (Python's json reads them), beyond a double
        (
            "embed",
            _embed(prompt=TEXT.format('{"start": 0, "length": 1, "factor": "1"}')),
            "prompt[0].controls[0].factor: expected a number, got a string",
        ),
        (
            "embed",
            _embed(prompt=TEXT.format('{"start": 0, "length": 1, "factor": NaN}')),
            "prompt[0].controls[0].factor: expected a number, got NaN",
        ),
        (
            "embed",
            _embed(contextual_control_threshold="Infinity"),
            "contextual_control_threshold: expected a number, got Infinity",
        ),
        (
            "embed",
            _embed(contextual_control_threshold="-Infinity"),
            "contextual_control_threshold: expected a number, got -Infinity",
        ),
        (
            "embed",
            _embed(contextual_control_threshold="1e400"),
            "contextual_control_threshold: a number beyond the range of a double",
        ),
        (
            "embed",
            _embed(contextual_control_threshold="1" + "0" * 400),
            "contextual_control_threshold: a number beyond the range of a double",
        ),
        (
            "embed",
            _embed(
                prompt='[{"type": "image", "data": "", "controls": [{"rect": {"left": 0, '
                '"top": 0, "width": Infinity, "height": 1}, "factor": 1}]}]'
            ),
            "prompt[0].controls[0].rect.width: expected a number, got Infinity",
        ),
        # the other routes
        (
            "semantic_embed",
            f'{{"model": "m", "prompt": "x", "compress_to_size": {2**32}}}',
            "compress_to_size: 4294967296 is outside",
        ),
        (
            "semantic_embed",
            '{"model": "m", "prompt": "x", "representation": 1}',
            "representation: expected a string, got a number",
        ),
        (
            "batch_semantic_embed",
            '{"model": "m", "prompts": "x"}',
            "prompts: expected a list, got a string",
        ),
        (
            "batch_semantic_embed",
            '{"model": "m", "prompts": [5]}',
            "prompts[0]: expected a list, got a number",
        ),
        ("tokenize", '{"model": "m", "prompt": ["x"]}', "prompt: expected a string, got a list"),
        ("tokenize", '{"model": "m", "tokens": "yes"}', "tokens: expected true or false"),
        ("detokenize", '{"model": "m", "token_ids": [1.5]}', "token_ids[0]: expected an integer"),
        ("detokenize", f'{{"model": "m", "token_ids": [{2**63}]}}', "token_ids[0]: 92233"),
        ("detokenize", '{"model": "m", "token_ids": {}}', "token_ids: expected a list"),
        ("detokenize", "[]", "body: expected a JSON object, got a list"),
    ],
)
def test_wrong_types_anywhere_are_400_naming_the_field(
    hostile: Gateway, route: str, body: str, text: str
) -> None:
    message = error_of(post_raw(hostile, route, body))
    assert message.startswith(text), message


def test_wrong_types_leave_the_server_serving(hostile: Gateway) -> None:
    # The table above, in one go: the server answers as before.
    serves(hostile)


def test_what_slips_past_the_reader_is_400_and_a_server_fault_500_both_in_the_json_body(
    hostile: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refused_by_protobuf(body: object, nice: bool) -> object:
        raise ValueError("Value out of range: 4294967296")

    def buggy(body: object, nice: bool) -> object:
        raise KeyError("a bug")

    monkeypatch.setattr(json_api, "embed_request", refused_by_protobuf)
    message = error_of(post_raw(hostile, "embed", json.dumps(EMBED)))
    assert message == "body: could not be read (ValueError)"
    assert any("refused by ValueError" in r.getMessage() for r in caplog.records)

    monkeypatch.setattr(json_api, "embed_request", buggy)
    message = error_of(post_raw(hostile, "embed", json.dumps(EMBED)), 500, "INTERNAL")
    assert "internal error" in message

    monkeypatch.undo()
    monkeypatch.setattr(json_api, "embed_response", lambda reply: {"vector": [float("nan")]})
    message = error_of(post_raw(hostile, "embed", json.dumps(EMBED)), 500, "INTERNAL")
    assert "internal error" in message
    monkeypatch.undo()
    caplog.clear()  # the warning and the two tracebacks were this test's to cause
    serves(hostile)


def test_every_error_body_is_json_of_bounded_size() -> None:
    for message in ("x" * 100_000, "\ud800" * 5000, "\u00e9" * 5000, "\U0001f600" * 5000):
        reply = error_body(400, "INVALID_ARGUMENT", f"field: {message}")
        assert len(reply.body) < 2048  # a 1 KiB message, its backslashes doubled at worst
        assert json.loads(bytes(reply.body))["error"].startswith("field: ")


# -- echoed strings are cut short -----------------------------------------------------------


def test_long_strings_are_cut_where_an_error_echoes_them(hostile: Gateway) -> None:
    long = "x" * 16_000
    cases = [
        post_raw(hostile, "embed", json.dumps(EMBED), params={"nice": "y" * 8000}),
        post_raw(
            hostile, "embed", json.dumps(EMBED), headers={"X-Lamina-Timeout-Seconds": "9" * 8000}
        ),
        post_raw(hostile, "embed", json.dumps({**EMBED, "prompt": [{"type": long}]})),
        post_raw(hostile, "embed", json.dumps({**EMBED, long: 1})),
        post_raw(hostile, "embed", json.dumps({**EMBED, "prompt": [{"type": "text", long: 1}]})),
        post_raw(hostile, "embed", json.dumps({**EMBED, "model": long})),
        post_raw(hostile, "embed", json.dumps({**EMBED, "pooling": [long]})),
        requests.get(hostile.url + "x" * 8000, timeout=60),
        requests.get(hostile.url + f"models/{'m' * 8000}/tokenizer", timeout=60),
    ]
    for reply in cases:
        assert reply.status_code in (400, 404), reply.text[:300]
        message = reply.json()["error"]
        assert len(message) < 400, message
        assert "characters)" in message, message  # says how long the string was

    # Unknown keys by the thousand: one named, the rest counted.
    reply = post_raw(hostile, "embed", json.dumps({**EMBED, **{f"k{i}": i for i in range(5000)}}))
    message = error_of(reply)
    assert message.startswith("k0: unknown field") and "(and 4999 more unknown)" in message
    assert len(message) < 400
    serves(hostile)


# -- connections: timeouts, framing, the cap (raw sockets) ----------------------------------


def test_half_sent_heads_are_closed_within_the_header_timeout_while_others_are_served(
    hostile: Gateway,
) -> None:
    halves = [b"", b"POST /embed HTTP/1.1\r\n", b"GET /health HTTP/1.1\r\nHost: lamina\r\nX-A"]
    sockets = []
    for i in range(30):
        sock = connect(hostile)
        sock.sendall(halves[i % len(halves)])
        sockets.append(sock)
    started = time.monotonic()
    serves(hostile)  # meanwhile, requests are answered
    for sock in sockets:
        with sock:
            raw, closed = read_to_close(sock, HEAD_SECONDS + SLACK_SECONDS)
            assert closed - started < HEAD_SECONDS + SLACK_SECONDS
            message = json_error(raw, 408, "DEADLINE_EXCEEDED")
            assert message == f"the request head did not arrive within {HEAD_SECONDS:g} s"
    serves(hostile)


def test_a_kept_alive_connection_with_a_half_sent_next_head_is_closed(hostile: Gateway) -> None:
    with connect(hostile) as sock:
        sock.sendall(request_head("/health", method="GET"))
        first = b""
        while b"SERVING" not in first:
            first += sock.recv(65536)
        assert response(first)[0] == 200
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        started = time.monotonic()
        raw, closed = read_to_close(sock, HEAD_SECONDS + SLACK_SECONDS)
        assert closed - started < HEAD_SECONDS + SLACK_SECONDS
        json_error(raw, 408, "DEADLINE_EXCEEDED")
    serves(hostile)


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_trickle_is_closed_within_its_timeout(hostile: Gateway, part: str) -> None:
    """One byte every 50 ms: a head (1 KiB of headers) or a body (1 KiB declared)."""
    body = json.dumps({**EMBED, "prompt": "x" * 1000}).encode()
    if part == "head":
        trickled = request_head(length=len(body))[:-2] + b"X-Pad: " + b"p" * 1000 + b"\r\n\r\n"
        sent_first = b""
        limit = HEAD_SECONDS
    else:
        trickled = body
        sent_first = request_head(length=len(body))
        limit = BODY_SECONDS
    with connect(hostile) as sock:
        sock.sendall(sent_first)
        started = time.monotonic()
        received = b""
        for byte in trickled:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.05)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            received += chunk
            if not chunk or b"}" in received:
                break
            assert time.monotonic() - started < limit + SLACK_SECONDS, "still reading"
        else:
            pytest.fail("the whole trickle was read")
        rest, closed = read_to_close(sock, SLACK_SECONDS)
        assert closed - started < limit + SLACK_SECONDS
    raw = received + rest
    if raw:  # the 408 is written just before the close (a reset may overtake it)
        assert json_error(raw, 408, "DEADLINE_EXCEEDED").startswith(f"the request {part}")
    serves(hostile)


@pytest.mark.skipif(sys.platform != "linux", reason="reads the TCP state from TCP_INFO")
def test_a_caller_that_stops_reading_its_answer_is_reset_within_the_body_timeout(
    hostile: Gateway,
) -> None:
    """MiniLM's tokenizer.json (700 KB), asked for ten times in one go (more than the kernel's
    buffers hold) by a caller with a 4 KiB receive buffer that reads none of it: the server's
    write buffer fills and stays full, and the connection is reset."""
    host, port = hostile.url.removeprefix("http://").rstrip("/").split(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(request_head(f"/models/{MINILM}/tokenizer", method="GET") * 10)
        started = time.monotonic()

        def state() -> int:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
            value: int = struct.unpack("B", info[:1])[0]
            return value

        established = 1
        while state() == established:
            assert time.monotonic() - started < BODY_SECONDS + SLACK_SECONDS, "still open"
            time.sleep(0.05)
    serves(hostile)


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
    ],
)
def test_content_length_with_transfer_encoding_is_400_and_closed(
    hostile: Gateway, framing: bytes
) -> None:
    # A second request smuggled in the body must never be answered.
    smuggled = b"GET /health HTTP/1.1\r\nHost: lamina\r\n\r\n"
    with connect(hostile) as sock:
        sock.sendall(
            b"POST /embed HTTP/1.1\r\nHost: lamina\r\n" + framing + b"\r\n0\r\n\r\n" + smuggled
        )
        raw, _ = read_to_close(sock, SLACK_SECONDS)
    message = json_error(raw, 400, "INVALID_ARGUMENT")
    assert "both Content-Length and Transfer-Encoding" in message
    assert response(raw)[1]["connection"] == "close"
    assert raw.count(b"HTTP/1.1 ") == 1  # one answer, then closed
    serves(hostile)


def test_what_h11_cannot_read_is_400_in_the_json_body_and_closed(hostile: Gateway) -> None:
    for bad in (
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST /embed HTTP/1.1\r\nHost: lamina\r\nContent-Length: abc\r\n\r\n",
        b"POST /embed HTTP/1.1\r\nHost: lamina\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: lamina\r\nX-Big: " + b"b" * 17_000,  # a head past 16 KiB
        b"POST /embed HTTP/1.1\r\nHost: lamina\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ):
        with connect(hostile) as sock:
            sock.sendall(bad)
            raw, _ = read_to_close(sock, SLACK_SECONDS)
        assert json_error(raw, 400, "INVALID_ARGUMENT").startswith("the request could not be")
    serves(hostile)


def test_connections_beyond_the_cap_are_refused_and_the_server_answers_within_it(
    capped: Gateway,
) -> None:
    held = []
    for _ in range(CAP):  # each open for sure: one request answered, the next one half-sent
        sock = connect(capped)
        sock.sendall(request_head("/health", method="GET"))
        answered = b""
        while b"SERVING" not in answered:
            answered += sock.recv(65536)
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        held.append(sock)
    try:
        for _ in range(3):
            with connect(capped) as extra:
                started = time.monotonic()
                raw, closed = read_to_close(extra, SLACK_SECONDS)
                assert closed - started < SLACK_SECONDS
            message = json_error(raw, 503, "UNAVAILABLE")
            assert f"{CAP} connections open" in message
            assert response(raw)[1]["retry-after"] == "1"

        # The connections within the cap are served all along.
        held[0].sendall(b"Host: lamina\r\n\r\n")
        answered = b""
        while b"SERVING" not in answered:
            answered += held[0].recv(65536)
        assert response(answered)[0] == 200

        # One closed, a new connection is served (once the server has seen the close).
        held.pop().close()
        served_once_room(capped)
    finally:
        for sock in held:
            sock.close()
    served_once_room(capped)


def served_once_room(gateway: Gateway) -> None:
    """An /embed answered 200 once the server has seen connections close (until then, a new one
    may still be refused with 503)."""
    deadline = time.monotonic() + SLACK_SECONDS
    while True:
        try:
            reply = requests.post(gateway.url + "embed", json=EMBED, timeout=60)
            if reply.status_code != 503 or time.monotonic() > deadline:
                break
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["embeddings"]["layer_6"]["mean"]) == 384


def test_answers_are_not_held_back_by_nagle(hostile: Gateway) -> None:
    # The listener's TCP_NODELAY passes to every accepted connection (Linux): without it each
    # answer on a kept-alive connection waited ~40 ms for the caller's delayed ACK.
    listener = hostile.instance._gateway
    assert listener is not None
    (server,) = listener._server.servers
    for sock in server.sockets:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    serves(hostile)

"""HTTP/1.1 itself, below JSON: request lines, headers and framing as no client library would
send them (bad or conflicting Content-Length, chunked bodies good and broken, odd methods,
versions and paths, control characters, huge and many headers), written to a raw socket whose
sending side is then closed. The gateway answers with a status of the documented table and a
`{"error", "code"}` body, or closes the connection; promptly either way; and then serves a good
request as before."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.parse
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.harness import (
    ALLOWED_HTTP,
    ERROR_SECONDS,
    HTTP_CODES,
    Example,
    Fuzz,
    Shown,
    shorten,
)
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.strategies import BODIES, dumps, weighted

# Starlette's own answer to a method a route does not have (outside the documented table).
WRONG_METHOD = 405
READ_SECONDS = ERROR_SECONDS + 2
FIRST_WAIT_SECONDS = 3.0


@dataclass(frozen=True)
class Wire:
    data: bytes
    wrong_method: bool  # the method is not the route's (then 405 is a fair answer)
    head_only: bool  # HEAD: answers carry no body

    def __repr__(self) -> str:
        return repr(shorten(self.data, 400))


header_text = st.text(
    st.characters(min_codepoint=0, max_codepoint=255), min_size=0, max_size=30
).map(lambda t: t.encode("latin-1"))


def _chunked(body: bytes, sizes: list[int], broken: str) -> bytes:
    out, at = b"", 0
    for size in sizes:
        piece = body[at : at + size]
        at += size
        if not piece:
            break
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    if at < len(body):
        out += f"{len(body) - at:x}\r\n".encode() + body[at:] + b"\r\n"
    last = {
        "none": b"0\r\n\r\n",
        "no-end": b"",
        "bad-size": b"zz\r\n\r\n",
        "huge": b"ffffffffffffffff\r\n",
    }
    return out + last[broken]


@st.composite
def wires(draw: st.DrawFn) -> Wire:
    route = draw(st.sampled_from(["embed", "tokenize", "semantic_embed", "models_available"]))
    body = dumps(draw(BODIES.get(route, BODIES["embed"]))).encode("utf-8", "surrogatepass")
    body = draw(weighted((6, st.just(body)), (1, st.binary(max_size=64)), (1, st.just(b""))))
    method = draw(
        weighted(
            (8, st.just("GET" if route == "models_available" else "POST")),
            (1, st.sampled_from(["GET", "PUT", "DELETE", "post", "HEAD", "OPTIONS", "PATCH"])),
            (1, st.sampled_from(["", "P OST", "POST\x00", "GÉT", "X" * 300])),
        )
    )
    path = draw(
        weighted(
            (8, st.sampled_from([f"/{route}", f"/v1/{route}"])),
            (
                1,
                st.sampled_from(
                    [
                        f"//{route}",
                        f"/{route}?nice=true&nice=false",
                        f"/{route}#x",
                        "*",
                        "/%00",
                        f"http://localhost/{route}",
                        "/" + "a" * 9000,
                        f"/{route}/../{route}",
                        "/\x7f",
                    ]
                ),
            ),
        )
    )
    version = draw(
        weighted(
            (8, st.just("HTTP/1.1")),
            (
                1,
                st.sampled_from(["HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1 x", "", "http/1.1"]),
            ),
        )
    )
    framing = draw(
        weighted(
            (6, st.just("length")),
            (2, st.just("chunked")),
            (1, st.just("none")),
            (1, st.just("both")),
            (1, st.just("wrong-length")),
            (1, st.just("odd-length")),
        )
    )
    headers: list[tuple[bytes, bytes]] = []
    if draw(weighted((9, st.just(True)), (1, st.just(False)))):
        headers.append((b"Host", b"localhost"))
    headers.append((b"Content-Type", b"application/json"))
    if framing in ("length", "both"):
        headers.append((b"Content-Length", str(len(body)).encode()))
    if framing == "wrong-length":
        headers.append(
            (b"Content-Length", str(max(0, len(body) + draw(st.integers(-50, 50)))).encode())
        )
    if framing == "odd-length":
        value = draw(
            st.sampled_from(
                [
                    b"-1",
                    b"1e3",
                    b" 12",
                    b"0x10",
                    b"99999999999999999999999",
                    b"",
                    b"\xd9\xa1",
                    b"1, 2",
                ]
            )
        )
        headers.append((b"Content-Length", value))
    chunked = framing in ("chunked", "both")
    if chunked:
        headers.append(
            (
                b"Transfer-Encoding",
                draw(
                    st.sampled_from([b"chunked", b"gzip, chunked", b"Chunked", b"chunked, chunked"])
                ),
            )
        )
        sizes = draw(st.lists(st.integers(1, 64), max_size=6))
        body = _chunked(
            body, sizes, draw(st.sampled_from(["none", "none", "no-end", "bad-size", "huge"]))
        )
    extra = draw(
        weighted(
            (6, st.just([])),
            (2, st.lists(st.tuples(header_text, header_text), min_size=1, max_size=4)),
            (1, st.just([(b"X-Big", b"x" * 20_000)])),
            (1, st.just([(b"X-Many-%d" % i, b"1") for i in range(500)])),
            (1, st.just([(b"X-Folded", b"a\r\n b")])),
            (1, st.just([(b"Expect", b"100-continue")])),
            (
                1,
                st.sampled_from(
                    [
                        [(b"X-Lamina-Timeout-Seconds", v)]
                        for v in (b"0.001", b"nan", b"-1", b"1" * 5000)
                    ]
                ),
            ),
        )
    )
    headers += extra
    newline = draw(weighted((9, st.just(b"\r\n")), (1, st.just(b"\n"))))
    head = f"{method} {path} {version}".encode("utf-8", "surrogatepass") + newline
    head += b"".join(name + b": " + value + newline for name, value in headers) + newline
    expected = "GET" if route == "models_available" else "POST"
    return Wire(head + body, method != expected, method == "HEAD")


def read_answer(connection: socket.socket, wait: float, data: bytes = b"") -> tuple[bytes, bool]:
    """What the server writes within `wait` seconds: (the bytes, whether it closed or finished
    an answer)."""
    deadline = time.monotonic() + wait
    try:
        while not _complete(data):
            connection.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = connection.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except TimeoutError:
        return data, False
    except OSError:
        return data, True  # reset
    return data, True


def _complete(data: bytes) -> bool:
    while data.startswith(b"HTTP/1.1 100 "):  # an interim answer: the real one follows
        data = data.partition(b"\r\n\r\n")[2]
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value.strip())
    return False


@fuzz_settings(0.4)
@given(wire=wires().map(Shown))
def test_http_framing(fuzz: Fuzz, wire: Shown) -> None:
    sent: Wire = wire.value
    address = urllib.parse.urlsplit(fuzz.url)
    with fuzz.example("http-wire", lambda: repr(sent)) as ex:
        with socket.create_connection((address.hostname, address.port), timeout=5) as connection:
            with contextlib.suppress(OSError):  # the server may close on a bad head at once
                connection.sendall(sent.data)
            # A request framed as longer than what was sent waits for the rest: then the sender
            # stops (closes its side), and the server must answer or close promptly.
            data, done = read_answer(connection, FIRST_WAIT_SECONDS)
            if not done:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_WR)
                data, done = read_answer(connection, READ_SECONDS, data)
        ex.check(done, "stall", f"no answer nor close within {READ_SECONDS} s of the end")
        ex.outcomes.append(data[:40].decode("latin-1"))
        if data:
            check_raw_answer(ex, data, sent)
        fuzz.canary(ex, "http")


def check_raw_answer(ex: Example, data: bytes, sent: Wire) -> None:
    while data.startswith(b"HTTP/1.1 100 "):
        data = data.partition(b"\r\n\r\n")[2]
    if not data:
        return  # closed after the interim answer: the caller stopped sending
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:  # the first answer only (a body read as a next one)
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            body = body[: int(value.strip())]
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        ex.fail("http-wire-garbage", f"not an HTTP answer: {data[:200]!r}")
        return
    status = int(parts[1])
    allowed = ALLOWED_HTTP | ({WRONG_METHOD} if sent.wrong_method else set())
    ex.check(status in allowed, f"http-status:{status}", lambda: repr(data[:300]))
    if status in (100, 200) or sent.head_only:
        return
    try:
        value = json.loads(body.decode())
    except ValueError:
        ex.fail("http-error-not-json", repr(data[:300]))
        return
    if not (isinstance(value, dict) and set(value) == {"error", "code"}):
        ex.fail("http-error-shape", repr(body[:300]))
        return
    if status in HTTP_CODES:
        ex.check(value["code"] in HTTP_CODES[status], "http-code-mismatch", repr(body[:200]))
    ex.check(len(str(value["error"]).encode()) < 2048, "error-message-size", repr(body[:200]))

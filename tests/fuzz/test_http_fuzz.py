"""The HTTP JSON request space (docs/http-gateway.md): the same requests as JSON, arbitrary JSON
of any shape in any field, raw bodies that are no JSON, odd headers and query strings, and the
GET routes, against the session's one real server (properties: tests/fuzz/harness.py)."""

from __future__ import annotations

import json
import string
import urllib.parse
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.harness import Fuzz, Shown, shorten
from tests.fuzz.profiles import fuzz_settings
from tests.fuzz.strategies import (
    ABSENT,
    METHODS,
    MODELS,
    ROUTES,
    Call,
    NotExpressible,
    calls,
    dumps,
    huge_strings,
    mutated,
    raw_bodies,
    to_proto,
    weighted,
)

_HEADER_TEXT = st.text(
    st.sampled_from(string.ascii_letters + string.digits + ".-+_ :/"), max_size=20
)
timeout_headers = weighted(
    (4, st.just(None)),
    (
        1,
        st.sampled_from(
            ["0", "-1", "nan", "NaN", "inf", "-inf", "1e-9", "1e308", "0x10", "1_0", "", "5" * 3000]
        ),
    ),
    (1, _HEADER_TEXT.map(str.strip)),
)
prefixes = st.sampled_from(["", "v1/"])


def post(
    fuzz: Fuzz,
    test: str,
    call: Call,
    body: Any,
    *,
    prefix: str = "",
    timeout_header: str | None = None,
    raw: bytes | None = None,
) -> None:
    headers = {}
    deadline = call.deadline
    if timeout_header is not None:
        headers["X-Lamina-Timeout-Seconds"] = timeout_header
        deadline = 2.0  # whatever it says, a 408 within it is an answer
    elif deadline is not None:
        headers["X-Lamina-Timeout-Seconds"] = repr(deadline)
    params = {}
    if call.nice is not ABSENT:
        params["nice"] = str(call.nice).lower() if isinstance(call.nice, bool) else call.nice
    try:
        request = to_proto(Call(call.route, body, call.nice))
    except NotExpressible:
        request = None  # what the API promises for an OK reply is then checked loosely
    payload = raw if raw is not None else dumps(body).encode("utf-8", "surrogatepass")

    def describe() -> str:
        shown = shorten(raw, 300) if raw is not None else shorten(body)
        return (
            f"POST {prefix}{call.route} {shown} headers={shorten(headers)} params={shorten(params)}"
        )

    with fuzz.example(test, describe) as ex:
        answer = fuzz.http("POST", prefix + call.route, payload, headers=headers, params=params)
        fuzz.check_http(ex, METHODS[call.route], answer, request, deadline)
        fuzz.canary(ex, "http")


@fuzz_settings(0.6)
@given(call=calls(), prefix=prefixes)
def test_requests(fuzz: Fuzz, call: Call, prefix: str) -> None:
    post(fuzz, "http-requests", call, call.body, prefix=prefix)


@fuzz_settings(0.6)
@given(call=calls(), data=st.data(), timeout_header=timeout_headers)
def test_arbitrary_json_in_any_field(
    fuzz: Fuzz, call: Call, data: st.DataObject, timeout_header: str | None
) -> None:
    body = data.draw(mutated(call.body).map(Shown), label="body").value
    post(fuzz, "http-json", call, body, timeout_header=timeout_header)


@fuzz_settings(0.3)
@given(route=st.sampled_from(ROUTES), raw=raw_bodies())
def test_raw_bodies(fuzz: Fuzz, route: str, raw: bytes) -> None:
    post(fuzz, "http-raw", Call(route, None), None, raw=raw)


model_names = weighted(
    (3, st.sampled_from(MODELS)),
    (2, st.text(max_size=20)),
    (1, huge_strings.map(lambda s: s[:6000])),
)


@fuzz_settings(0.2)
@given(
    route=st.sampled_from(
        ["models_available", "version", "health", "openapi.json", "models/{}/tokenizer"]
    ),
    model=model_names,
    prefix=prefixes,
)
def test_get_routes(fuzz: Fuzz, route: str, model: str, prefix: str) -> None:
    path = prefix + route.format(urllib.parse.quote(model, safe=""))
    with fuzz.example("http-get", lambda: f"GET {shorten(path, 300)}") as ex:
        answer = fuzz.http("GET", path)
        if route == "version":
            ex.check(answer.status == 200, "http-version", f"{answer.status} {answer.text[:200]}")
            return
        fuzz.check_http(ex, None, answer, None, None)
        if route == "models_available" and answer.status == 200:
            names = {m.get("name") for m in json.loads(answer.text)}
            ex.check(names == set(fuzz.models), "reply-fields", f"models {names}")

"""The gateway's OpenAPI description (openapi.json, in the package and served) against the
running gateway: schemathesis generates requests from it and checks that no answer is a 5xx and
that every answer (status, content type, headers, body) is one the description allows."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Mount, Route

from lamina.server.calls import Calls
from lamina.server.gateway.app import API_VERSION
from lamina.server.gateway.app import Gateway as GatewayApp
from tests.conftest import DINOV2, MINILM, SMOLLM2
from tests.gateway.support import Gateway

CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SERVED = [MINILM, SMOLLM2, DINOV2, None]  # None: the generated name, most likely unknown
DESCRIPTION = json.loads(
    resources.files("lamina.server.gateway").joinpath("openapi.json").read_text()
)


@pytest.fixture(scope="module")
def described(gateway: Gateway) -> schemathesis.BaseSchema:
    """The description as the running gateway serves it, its base URL the gateway's."""
    return schemathesis.openapi.from_url(gateway.url + "openapi.json")


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [
        (method, path, mode)
        for path, item in DESCRIPTION["paths"].items()
        for method, operation in item.items()
        # Negative cases need an input to break: the POST bodies.
        for mode in GenerationMode
        if mode is GenerationMode.POSITIVE or "requestBody" in operation
    ],
)
def test_the_gateway_answers_as_described(
    described: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = described[path][method]

    # A few examples per route and mode keep this to seconds; the cases differ run by run. Most
    # bodies name a served model, so they reach the engine rather than stop at NOT_FOUND.
    @given(case=operation.as_strategy(generation_mode=mode), model=st.sampled_from(SERVED))
    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    def answers_as_described(case: schemathesis.Case[Any], model: str | None) -> None:
        if model is not None and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model
        case.call_and_validate(checks=CHECKS)

    answers_as_described()


def test_the_served_description_is_the_packaged_one(gateway: Gateway) -> None:
    reply = requests.get(gateway.url + "openapi.json", timeout=60)
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json() == DESCRIPTION


def test_every_route_is_described(gateway: Gateway) -> None:
    instance = gateway.instance
    app = GatewayApp(Calls(instance.engine, instance.state, instance.metrics))
    routes = app.app().routes
    served = {r.path for r in routes if isinstance(r, Route)}
    assert served == set(DESCRIPTION["paths"])
    mounts = [r for r in routes if isinstance(r, Mount)]
    assert [m.path for m in mounts] == ["/v1"]
    assert {r.path for r in mounts[0].routes if isinstance(r, Route)} == served
    assert [s["url"] for s in DESCRIPTION["servers"]] == ["/", "/v1"]
    assert DESCRIPTION["info"]["version"] == API_VERSION

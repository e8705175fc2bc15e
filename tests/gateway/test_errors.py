"""docs/api.md's error table over HTTP: each case's status, `{"error", "code"}` body and
Retry-After, and the exception the official client raises for it."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aleph_alpha_client as aa
import pytest
import requests

from lamina.server.models.registry import ModelVersion
from lamina.server.repository.layout import VersionDir, list_versions
from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.server.server import LaminaServer
from tests.conftest import DINOV2, MINILM
from tests.gateway.support import Gateway, threaded_server
from tests.integration.support import eventually_blocking, queued, tokenized
from tests.integration.test_scheduling import tiny_repository

EMBED = {"model": MINILM, "prompt": "Hello", "layers": [-1], "pooling": ["mean"]}
TOKEN = "token-gamma-5e1a"


def post(gateway: Gateway, route: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(gateway.url + route, json=body, timeout=60, **kwargs)


def assert_error(reply: requests.Response, status: int, code: str, text: str = "") -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error", "code"}
    assert body["code"] == code
    assert text in body["error"]


def client_error(gateway: Gateway, call: Callable[[aa.Client], object], **options: Any) -> Any:
    client = aa.Client(
        token=options.pop("token", "unused"), host=gateway.url, total_retries=0, **options
    )
    with pytest.raises(Exception) as raised:
        call(client)
    return raised.value


def embed(prompt: aa.Prompt, **fields: Any) -> Callable[[aa.Client], object]:
    fields.setdefault("layers", [-1])
    fields.setdefault("pooling", ["mean"])
    model = fields.pop("model", MINILM)
    return lambda client: client.embed(aa.EmbeddingRequest(prompt=prompt, **fields), model=model)


# -- INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION on the shared server ---------------------


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({**EMBED, "layers": [99]}, "layers[0]: layer 99 is out of range"),
        ({**EMBED, "pooling": ["median"]}, "pooling[0]: unknown pooling 'median'"),
        ({**EMBED, "prompt": []}, "prompt: the prompt is empty"),
        (
            {**EMBED, "prompt": "x " * 600},
            "602 tokens (special tokens included), more than the 512",
        ),
        (
            {**EMBED, "prompt": [{"type": "token_ids", "data": [1, 10**6]}]},
            "prompt[0].data[1]: token id 1000000 is outside the vocabulary",
        ),
        (
            {
                **EMBED,
                "prompt": [
                    {
                        "type": "text",
                        "data": "Hi",
                        "controls": [{"start": 0, "length": 1, "factor": -1}],
                    }
                ],
            },
            "prompt[0].controls[0].factor: control factor must be finite, >= 0 and at most 1e+30",
        ),
        (
            {
                **EMBED,
                "prompt": [
                    {
                        "type": "text",
                        "data": "Hi",
                        "controls": [{"start": 0, "length": 1, "factor": "big"}],
                    }
                ],
            },
            "prompt[0].controls[0].factor: expected a number, got a string",
        ),
        (
            {**EMBED, "model": DINOV2, "prompt": [{"type": "image", "data": "bm90IGFuIGltYWdl"}]},
            "prompt[0].data",
        ),
        (
            {**EMBED, "model": DINOV2, "prompt": [{"type": "image", "data": "!!"}]},
            "prompt[0].data: not valid base64",
        ),
        (
            {**EMBED, "model": DINOV2, "prompt": [{"type": "image", "data": "", "x": 1}]},
            "prompt[0]: give x, y and size together",
        ),
        ({**EMBED, "prompt": [{"type": "audio", "data": ""}]}, "prompt[0].type: unknown item"),
        ({**EMBED, "layer": [1]}, "layer: unknown field"),
        ({**EMBED, "nice": True}, "nice: unknown field"),
        ({**EMBED, "normalize": "yes"}, "normalize: expected true or false"),
        ({**EMBED, "hosting": "elsewhere"}, "hosting: unknown hosting 'elsewhere'"),
        ([1, 2], "body: expected a JSON object, got a list"),
    ],
)
def test_bad_requests_are_400_naming_the_field(gateway: Gateway, body: object, text: str) -> None:
    assert_error(post(gateway, "embed", body), 400, "INVALID_ARGUMENT", text)


def test_bad_json_and_bad_query_parameters(gateway: Gateway) -> None:
    reply = requests.post(gateway.url + "embed", data=b"{not json", timeout=60)
    assert_error(reply, 400, "INVALID_ARGUMENT", "body: not valid JSON")
    reply = post(gateway, "embed", EMBED, params={"nice": "very"})
    assert_error(reply, 400, "INVALID_ARGUMENT", "nice: expected true or false")
    reply = post(gateway, "embed", EMBED, headers={"X-Lamina-Timeout-Seconds": "-1"})
    assert_error(reply, 400, "INVALID_ARGUMENT", "X-Lamina-Timeout-Seconds")
    semantic = {"model": MINILM, "prompts": [], "representation": "symmetric"}
    reply = post(gateway, "batch_semantic_embed", semantic)
    assert_error(reply, 400, "INVALID_ARGUMENT", "prompts: 0 prompts; a batch takes 1 to 100")
    semantic = {"model": "smollm2-135m-instruct", "prompt": "Hi", "representation": "query"}
    assert_error(post(gateway, "semantic_embed", semantic), 400, "INVALID_ARGUMENT", "model: ")


def test_the_client_raises_value_error_for_400(gateway: Gateway) -> None:
    error = client_error(gateway, embed(aa.Prompt.from_text("Hello"), layers=[99]))
    assert isinstance(error, ValueError)
    assert error.args[0] == 400 and "INVALID_ARGUMENT" in error.args[1]


def test_unknown_models_are_404(gateway: Gateway) -> None:
    assert_error(post(gateway, "embed", {**EMBED, "model": "nope"}), 404, "NOT_FOUND", "'nope'")
    tokenize = {"model": "nope", "prompt": "Hi", "tokens": True, "token_ids": True}
    assert_error(post(gateway, "tokenize", tokenize), 404, "NOT_FOUND", "model: unknown model")
    reply = requests.get(gateway.url + "models/nope/tokenizer", timeout=60)
    assert_error(reply, 404, "NOT_FOUND", "unknown model")
    reply = requests.get(gateway.url + f"models/{DINOV2}/tokenizer", timeout=60)
    assert_error(reply, 404, "NOT_FOUND", "has no tokenizer")
    assert_error(requests.get(gateway.url + "nowhere", timeout=60), 404, "NOT_FOUND")
    error = client_error(gateway, embed(aa.Prompt.from_text("Hello"), model="nope"))
    assert isinstance(error, RuntimeError) and error.args[0] == 404


def test_a_hosting_no_pool_honours_is_400_failed_precondition(gateway: Gateway) -> None:
    reply = post(gateway, "embed", {**EMBED, "hosting": "aleph-alpha"})
    assert_error(reply, 400, "FAILED_PRECONDITION", "no worker pool may process")
    error = client_error(gateway, embed(aa.Prompt.from_text("Hello")), hosting="aleph-alpha")
    assert isinstance(error, ValueError) and "FAILED_PRECONDITION" in error.args[1]


# -- UNAUTHENTICATED ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_only(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("repository")
    (repository / MINILM).symlink_to(model_repository / MINILM, target_is_directory=True)
    return repository


def test_bearer_tokens_guard_every_route_but_health_and_version(
    minilm_only: Path, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# accepted\n{TOKEN}\n")
    with threaded_server(minilm_only, auth_tokens_file=tokens) as gateway:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            reply = post(gateway, "embed", EMBED, headers=headers)
            assert_error(reply, 401, "UNAUTHENTICATED")
            assert reply.headers["WWW-Authenticate"] == "Bearer"
        for route in ("models_available", f"models/{MINILM}/tokenizer", "openapi.json"):
            assert_error(requests.get(gateway.url + route, timeout=60), 401, "UNAUTHENTICATED")
        assert requests.get(gateway.url + "health", timeout=60).status_code == 200
        assert requests.get(gateway.url + "version", timeout=60).text.startswith("1.")
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert post(gateway, "embed", EMBED, headers=good).status_code == 200
        refused = gateway.instance.metrics.auth_refused._value.get()
        assert refused == 6

        error = client_error(gateway, embed(aa.Prompt.from_text("Hello")), token="wrong")
        assert isinstance(error, PermissionError) and error.args[0] == 401
        client = aa.Client(token=TOKEN, host=gateway.url, total_retries=0)
        assert [m["name"] for m in client.models()] == [MINILM]


# -- UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, body size ------------------------------


def test_starting_up_is_503_with_retry_after(minilm_only: Path) -> None:
    with threaded_server(minilm_only, load=False) as gateway:
        for reply in (post(gateway, "embed", EMBED), requests.get(gateway.url + "health")):
            assert_error(reply, 503, "UNAVAILABLE", "starting up")
            assert reply.headers["Retry-After"] == "1"
        assert requests.get(gateway.url + "version", timeout=60).status_code == 200
        error = client_error(gateway, embed(aa.Prompt.from_text("Hello")))
        assert isinstance(error, aa.BusyError) and error.args[0] == 503


def test_draining_is_503_like_grpc_unavailable(minilm_only: Path) -> None:
    with threaded_server(minilm_only) as gateway:
        assert requests.get(gateway.url + "health", timeout=60).status_code == 200
        gateway.instance.state.reason = "draining: the server is shutting down"
        reply = post(gateway, "embed", EMBED)
        assert_error(reply, 503, "UNAVAILABLE", "draining")
        assert reply.headers["Retry-After"] == "1"
        gateway.instance.state.reason = None


def hold_pools(server: LaminaServer) -> Callable[[], None]:
    release = threading.Event()
    for runner in server.engine.runners:
        runner._executor.submit(release.wait)  # test-only hold
    return release.set


def settles(gateway: Gateway, condition: Callable[[], bool], what: str) -> None:
    """Wait until `condition` holds, asked on the server's own loop between two of its steps
    (never halfway through admitting a request)."""

    async def ask() -> bool:
        return condition()

    eventually_blocking(lambda: gateway.run(ask()), what=what)


def taken_by_the_held_pool(gateway: Gateway, tokenized_before: int) -> None:
    """One more request was admitted, and the pool took it: the queue is empty again."""
    server = gateway.instance
    settles(
        gateway,
        lambda: tokenized(server, "tiny") == tokenized_before + 1 and queued(server) == 0,
        "the held pool taking the running request",
    )


TINY = {
    "model": "tiny",
    "prompt": [{"type": "token_ids", "data": [4, 5, 6]}],
    "layers": [-1],
    "pooling": ["mean"],
}


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A tiny model, a queue of at most one waiting request, and 2 KiB bodies."""
    policy = SchedulingPolicy(max_wait_seconds=0, max_queue_requests=1)
    repository = tiny_repository(tmp_path_factory.mktemp("tiny"))
    with threaded_server(repository, scheduling=policy, max_message_bytes=2048) as gateway:
        yield gateway


def test_a_full_queue_is_429_with_retry_after(busy: Gateway) -> None:
    server = busy.instance
    before = tokenized(server, "tiny")
    release = hold_pools(server)
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(post, busy, "embed", TINY)  # taken by the held pool
        taken_by_the_held_pool(busy, before)
        waiting = pool.submit(post, busy, "embed", TINY)
        settles(busy, lambda: queued(server) == 1, "the second request queued")
        refused = post(busy, "embed", TINY)
        error = client_error(
            busy,
            lambda c: c.embed(
                aa.EmbeddingRequest(
                    prompt=aa.Prompt.from_tokens([4, 5]), layers=[-1], pooling=["mean"]
                ),
                model="tiny",
            ),
        )
        release()
        replies = [running.result(), waiting.result()]
    assert_error(refused, 429, "RESOURCE_EXHAUSTED", "queue full")
    assert int(refused.headers["Retry-After"]) >= 1
    assert isinstance(error, RuntimeError) and error.args[0] == 429
    assert [r.status_code for r in replies] == [200, 200]  # nothing accepted is lost


def test_a_request_past_its_deadline_is_408(busy: Gateway) -> None:
    server = busy.instance
    before = tokenized(server, "tiny")
    release = hold_pools(server)
    late = {"X-Lamina-Timeout-Seconds": "0.3"}
    client = aa.Client(token="unused", host=busy.url, total_retries=0)
    client.session.headers.update(late)  # the official client's session, with the deadline added
    request = aa.EmbeddingRequest(
        prompt=aa.Prompt.from_tokens([4, 5]), layers=[-1], pooling=["mean"]
    )
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, busy, "embed", TINY)
        taken_by_the_held_pool(busy, before)
        expiring: Future[object] = pool.submit(client.embed, request, "tiny")
        # Queued, and waiting longer than its 0.3 s deadline allows.
        settles(busy, lambda: queued(server) == 1, "the expiring request queued")
        time.sleep(0.35)
        release()
        assert running.result().status_code == 200
        with pytest.raises(TimeoutError) as error:
            expiring.result()
    assert error.value.args[0] == 408 and "DEADLINE_EXCEEDED" in error.value.args[1]
    assert post(busy, "embed", TINY, headers=late).status_code == 200  # in time: it runs


def test_a_body_over_the_message_limit_is_413(busy: Gateway) -> None:
    big = {**TINY, "prompt": [{"type": "token_ids", "data": [4] * 2000}]}
    assert_error(post(busy, "embed", big), 413, "RESOURCE_EXHAUSTED")


def test_a_caller_that_hangs_up_leaves_the_queue(busy: Gateway) -> None:
    """As a cancelled gRPC call: the queued request is dropped and its queue place freed."""
    metrics = busy.instance.metrics
    cancelled = metrics.requests.labels("Embed", "tiny", "CANCELLED", "false", "any")
    before = cancelled._value.get()
    server = busy.instance
    tokenized_before = tokenized(server, "tiny")
    release = hold_pools(server)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, busy, "embed", TINY)  # taken by the held pool
        taken_by_the_held_pool(busy, tokenized_before)
        body = json.dumps(TINY).encode()
        host, port = busy.url.removeprefix("http://").rstrip("/").split(":")
        with socket.create_connection((host, int(port))) as caller:  # queued, then gone
            caller.sendall(
                b"POST /embed HTTP/1.1\r\nHost: lamina\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            settles(busy, lambda: queued(server) == 1, "the caller's request queued")
        settles(busy, lambda: cancelled._value.get() != before, "the hang-up noticed")
        # The queue holds one request: had the hung-up one stayed, this would be refused (429).
        waiting = pool.submit(post, busy, "embed", TINY)
        settles(busy, lambda: queued(server) == 1 or waiting.done(), "the request queued")
        release()
        replies = [running.result(), waiting.result()]
    assert cancelled._value.get() == before + 1
    assert [r.status_code for r in replies] == [200, 200]


# -- GET /model_versions: answered while starting up, behind the token --------------------------


def test_model_versions_answers_while_starting_up_and_says_why_a_version_failed(
    model_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every version the registry knows, loading, serving or failed with its reason: not gated
    by the serving state (what loads and what failed can be seen while starting up, when
    /models_available is 503), but by the bearer token; /models_available gives each served
    model its own versions."""
    repository = tmp_path / "repo"
    repository.mkdir()
    (repository / MINILM).symlink_to(model_repository / MINILM, target_is_directory=True)
    (repository / "garbage" / "1").mkdir(parents=True)
    (repository / "garbage" / "1" / "manifest.json").write_bytes(b"[1, 2]")
    newest = list_versions(model_repository)[MINILM][-1].version
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    good = {"Authorization": f"Bearer {TOKEN}"}

    with threaded_server(repository, load=False, auth_tokens_file=tokens) as gateway:

        def versions(prefix: str = "") -> list[dict[str, Any]]:
            reply = requests.get(f"{gateway.url}{prefix}model_versions", headers=good, timeout=60)
            assert reply.status_code == 200, reply.text
            listed: list[dict[str, Any]] = reply.json()["versions"]
            return listed

        def models_available() -> requests.Response:
            return requests.get(gateway.url + "models_available", headers=good, timeout=60)

        unauthenticated = requests.get(gateway.url + "model_versions", timeout=60)
        assert_error(unauthenticated, 401, "UNAUTHENTICATED")
        assert versions() == []  # starting up, nothing read yet: an answer, not a 503
        registry = gateway.instance.registry
        load, release = registry._load, threading.Event()

        def held(entry: VersionDir) -> ModelVersion:
            if entry.name == MINILM:
                assert release.wait(60)
            return load(entry)

        monkeypatch.setattr(registry, "_load", held)
        loading = asyncio.run_coroutine_threadsafe(gateway.instance.load_models(), gateway.loop)
        try:
            row = {"model": MINILM, "version": newest, "state": "loading", "reason": None}
            eventually_blocking(lambda: row in versions(), what=f"{MINILM} loading")
            assert_error(models_available(), 503, "UNAVAILABLE", "starting up")
        finally:
            release.set()
        loading.result(timeout=120)

        listed = versions()
        assert versions("v1/") == listed
        states = [(v["model"], v["state"]) for v in listed]
        assert states == [(MINILM, "serving"), ("garbage", "failed")]
        assert listed[0] == {"model": MINILM, "version": newest, "state": "serving", "reason": None}
        assert listed[1]["version"] == 1 and "not a JSON object" in listed[1]["reason"]
        (info,) = models_available().json()
        assert info["name"] == MINILM
        assert info["versions"] == [{"version": newest, "state": "serving", "reason": None}]

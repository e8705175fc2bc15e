"""Rules the other unit tests left open: each test here fails on a plausible one-line bug in the
rule it names (a factor overwritten instead of multiplied, a deadline of exactly now taken as
alive, a retry hint blind to the queue, a token of the right length accepted, a queue bound off
by one). Fakes only: a word-level tokenizer with chosen token embeddings, a fake clock, an inline
executor; no model is loaded and no server started."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from lamina.server.domain import TokenControl, TokenIdsItem
from lamina.server.engine import Engine
from lamina.server.errors import DeadlineExceeded, QueueFull
from lamina.server.metrics import Metrics
from lamina.server.models.registry import ModelRegistry
from lamina.server.prompt import PromptEncoder
from lamina.server.runtime.device import PoolSpec
from lamina.server.scheduling.job import Embeddings, Job
from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.server.scheduling.pool import PoolRunner
from lamina.server.scheduling.queue import AdmissionRefused, RequestQueue
from lamina.server.security import TokenFile, bearer_problem
from tests.jobs import make_job, whole
from tests.server.test_scheduler import BusyThenInline, FakeClock, echo_lengths
from tests.tiny_models import word_level_tokenizer

ANYWHERE: frozenset[str] = frozenset()

# --- contextual spread: several controls reaching one position multiply -------------------------

# Token id -> input embedding. 0 and 1 are orthogonal; 2 lies between them (cosine 0.707 to each).
EMBEDDINGS = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]], dtype=np.float32)


def word_level_encoder(embeddings: np.ndarray = EMBEDDINGS) -> PromptEncoder:
    """A prompt encoder over a word-level vocabulary (no special tokens) and chosen embeddings."""
    vocab = {word: i for i, word in enumerate(("a", "b", "ab", "[UNK]"))}
    return PromptEncoder(
        word_level_tokenizer(vocab),
        model="words",
        vocab_size=len(vocab),
        max_context=64,
        token_embeddings=embeddings,
    )


def spread(ids: tuple[int, ...], *controls: TokenControl, threshold: float) -> list[float]:
    encoded = word_level_encoder().encode((TokenIdsItem(ids, controls),), threshold)
    return [round(float(f), 6) for f in encoded.control_factors]


def test_two_controls_spreading_onto_one_position_multiply() -> None:
    # Position 2 ("ab") is similar to both controlled positions: it gets 0.5 x 0.2, not the last.
    factors = spread((0, 1, 2), TokenControl(0, 0.5), TokenControl(1, 0.2), threshold=0.7)
    assert factors == [0.5, 0.2, 0.1]


def test_a_spread_factor_multiplies_the_factor_a_position_already_has() -> None:
    # Each controlled position is similar to the other: its own factor times the one spread to it.
    factors = spread((0, 2), TokenControl(0, 0.5), TokenControl(1, 0.2), threshold=0.7)
    assert factors == [0.1, 0.1]


def test_spread_reaches_only_positions_at_or_above_the_threshold() -> None:
    # 0.707 >= 0.7 spreads; 0.707 < 0.75 does not; the opposite token (-1, 0) never does.
    assert spread((0, 2, 3), TokenControl(0, 0.5), threshold=0.7) == [0.5, 0.5, 1.0]
    assert spread((0, 2, 3), TokenControl(0, 0.5), threshold=0.75) == [0.5, 1.0, 1.0]


# --- a deadline of exactly now has passed ---------------------------------------------------------


async def test_a_job_whose_deadline_is_now_leaves_the_queue_as_expired() -> None:
    loop = asyncio.get_running_loop()
    q = RequestQueue(SchedulingPolicy(max_wait_seconds=0))
    due = make_job(loop, length=3, at=0.0, deadline=2.0)
    later = make_job(loop, length=4, at=0.0, deadline=2.5)
    q.admit(due)
    q.admit(later)
    assert q.remove_gone(1.999) == []
    assert q.remove_gone(2.0) == [due]
    assert len(q) == 1 and q.tokens == 4


async def test_a_job_whose_deadline_is_reached_as_its_pool_frees_up_never_runs() -> None:
    loop = asyncio.get_running_loop()
    clock = FakeClock()
    ran: list[int] = []

    def record(pool: PoolSpec, jobs: Sequence[Job]) -> list[Embeddings]:
        ran.extend(job.tokens for job in jobs)
        return echo_lengths(pool, jobs)

    q = RequestQueue(SchedulingPolicy(max_wait_seconds=0))
    # Picked one second before its deadline; the pool's thread frees up exactly at it.
    runner = PoolRunner(
        PoolSpec("p", "cpu", 1, ANYWHERE), q, whole(record), BusyThenInline(clock, 1.0), clock=clock
    )
    job = make_job(loop, length=3, at=clock.now, deadline=clock.now + 1.0)
    q.admit(job)
    runner.close()
    await asyncio.wait_for(runner.run(), 5)
    with pytest.raises(DeadlineExceeded):
        await job.future
    assert ran == []


# --- the retry hint follows the queue ------------------------------------------------------------


async def test_the_retry_hint_grows_with_the_tokens_queued(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()

    def hint_with(queued_tokens: int) -> float:
        """The hint a request refused behind `queued_tokens` waiting tokens gets."""
        engine = Engine(
            ModelRegistry(tmp_path, (PoolSpec("p", "cpu", 1, ANYWHERE),)),
            SchedulingPolicy(max_queue_requests=1),
            Metrics(),
        )
        engine._admit(make_job(loop, length=queued_tokens))  # the engine's admission step
        with pytest.raises(QueueFull) as refused:
            engine._admit(make_job(loop, length=1))
        hint = refused.value.retry_after_seconds
        assert hint is not None and f"retry after {hint:.1f} s" in refused.value.message
        return hint

    small, large = hint_with(20_000), hint_with(40_000)
    assert small > 0.5  # not the floor: 20,000 tokens take a while at any plausible pace
    assert large == pytest.approx(2 * small)  # the time to work the queue off, at one pace


# --- bearer tokens are compared whole, not by length --------------------------------------------

GOOD = "token-alpha-7f3c"


@pytest.mark.parametrize(
    "offered",
    [
        "token-alpha-7f3d",  # the last character differs
        "Token-alpha-7f3c",  # the first
        "token-alphb-7f3c",  # one in the middle
        "x" * len(GOOD),
    ],
)
def test_a_token_of_the_right_length_but_other_characters_is_refused(
    tmp_path: Path, offered: str
) -> None:
    assert len(offered) == len(GOOD)
    path = tmp_path / "tokens"
    path.write_text(f"{GOOD}\n")
    tokens = TokenFile(path)
    assert tokens.accepts(GOOD)
    assert not tokens.accepts(offered)
    assert bearer_problem(tokens, f"Bearer {offered}") == "the bearer token is not accepted"
    assert bearer_problem(tokens, f"Bearer {GOOD}") is None


# --- the admission bound on requests, exactly --------------------------------------------------


async def test_admission_takes_exactly_max_queue_requests() -> None:
    loop = asyncio.get_running_loop()
    q = RequestQueue(SchedulingPolicy(max_queue_requests=3, max_queue_tokens=1_000_000))
    for _ in range(3):
        q.admit(make_job(loop, length=2))  # the third fills the queue: it is still admitted
    with pytest.raises(AdmissionRefused) as refused:
        q.admit(make_job(loop, length=2))
    assert (refused.value.requests, refused.value.tokens) == (3, 6)
    assert len(q) == 3

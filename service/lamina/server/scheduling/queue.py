"""The request queue: admission, priority tiers, hosting eligibility and batch selection.

Pure bookkeeping over an injected clock (`now` arguments): no threads, no event loop, so the rules
are unit-tested with a fake clock. The pools' async loops (pool.py) drive it.

Urgency: non-nice before nice, first come first served within a tier; a nice request that has
waited `nice_max_wait_seconds` counts as non-nice from then on, so nice work never starves.
A pool takes the most urgent request it is eligible for (a pinned request only goes to a pool
carrying its hosting label) and fills the batch with requests of the same model version and tier,
nearest in length first when grouping is on, under the row, token and memory budgets. The memory
a batch needs is its model's estimate (BatchMemory, from the job): attention grows with the square
of the padded length, so a few long prompts can need more than many short ones. The most urgent
request always runs, alone if it alone passes a budget: nothing legal is refused or truncated for
memory.

With yielding on (`segment_seconds`), a batch is no larger than one block of its model runs in
that time on the pool (as the pool measured it), so the pool reaches a segment boundary, where
more urgent work goes first, at least that often (pool.py). A nice batch is held to the shorter
`nice_segment_seconds` while normal requests have arrived for the pool within
`nice_contended_seconds`, and to no block length when none have: alone, nice work batches as it
would without yielding. Memory that parked batches hold on the pool counts against the batch
budget.

A partial batch waits for company (at most `max_wait_seconds`) only while more requests are being
prepared (`preparing`, counted by the engine between arrival and admission): with none on the way,
waiting adds latency and gains no row, so a lone request runs at once. Under load the pools are
busy and batches fill while they run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lamina.server.scheduling.job import Job
from lamina.server.scheduling.policy import SchedulingPolicy

URGENT, NICE = 0, 1

# (tier, enqueued_at): the lower, the sooner it runs.
Urgency = tuple[int, float]


@dataclass(frozen=True)
class WaitUntil:
    """Nothing to run yet: the best batch is still filling; look again at `when` (or on arrival)."""

    when: float


# Not frozen: Python sets __traceback__ on an exception as it propagates.
@dataclass
class AdmissionRefused(Exception):
    requests: int
    tokens: int
    policy: SchedulingPolicy


@dataclass(frozen=True)
class Depth:
    requests: int
    tokens: int


class RequestQueue:
    def __init__(self, policy: SchedulingPolicy) -> None:
        self.policy = policy
        self._jobs: list[Job] = []  # in arrival order; bounded by admission
        self._tokens = 0
        self.preparing = 0  # requests arrived and not yet admitted (tokenizing, decoding)
        # hosting (None: any) -> when the latest normal request for it arrived
        self._normal_arrived: dict[str | None, float] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def tokens(self) -> int:
        return self._tokens

    def admit(self, job: Job) -> None:
        """Queue `job`, or raise AdmissionRefused when it would pass either bound."""
        p = self.policy

        def full() -> bool:
            return (
                len(self._jobs) + 1 > p.max_queue_requests
                or self._tokens + job.tokens > p.max_queue_tokens
            )

        if full():
            # Callers gone since they queued hold no place: a live caller must not be refused
            # for them.
            self._replace([j for j in self._jobs if not j.abandoned])
        if full():
            raise AdmissionRefused(len(self._jobs), self._tokens, p)
        self._jobs.append(job)
        self._tokens += job.tokens
        if not job.nice:
            self._normal_arrived[job.hosting] = job.enqueued_at

    def remove_gone(self, now: float) -> list[Job]:
        """Drop abandoned jobs and return those whose deadline has passed (also dropped)."""
        expired = [
            j
            for j in self._jobs
            if not j.abandoned and j.deadline is not None and j.deadline <= now
        ]
        gone = {id(j) for j in expired}
        keep = [j for j in self._jobs if not j.abandoned and id(j) not in gone]
        if len(keep) != len(self._jobs):
            self._replace(keep)
        return expired

    def tier(self, job: Job, now: float) -> int:
        if not job.nice or now - job.enqueued_at >= self.policy.nice_max_wait_seconds:
            return URGENT
        return NICE

    def urgency(self, job: Job, now: float) -> Urgency:
        return self.tier(job, now), job.enqueued_at

    def eligible(self, hostings: frozenset[str]) -> list[Job]:
        """The queued jobs a pool with these labels may run."""
        return [j for j in self._jobs if not j.abandoned and self._may_run(j, hostings)]

    def most_urgent(self, hostings: frozenset[str], now: float) -> Urgency | None:
        """The urgency of what a pool with these labels would take next; None if nothing."""
        return min((self.urgency(j, now) for j in self.eligible(hostings)), default=None)

    def next_batch(
        self, hostings: frozenset[str], now: float, pool: str = "", reserved_bytes: int = 0
    ) -> list[Job] | WaitUntil | None:
        """For a free pool with these labels: a batch to run now, a time to look again, or None
        when nothing queued may run on it. `reserved_bytes`: what batches parked on the pool
        hold, taken from the memory budget."""
        eligible = self.eligible(hostings)
        if not eligible:
            return None
        head = min(eligible, key=lambda j: self.urgency(j, now))
        tier = self.tier(head, now)
        company = [j for j in eligible if j.model is head.model and self.tier(j, now) == tier]
        batch = self._fill(
            head, company, pool, self._block_cap(tier, hostings, now), reserved_bytes
        )
        p = self.policy
        filling = len(batch) < p.max_batch_rows and len(batch) == len(company)
        ready_at = head.enqueued_at + p.max_wait_seconds
        if filling and self.preparing > 0 and now < ready_at:
            return WaitUntil(ready_at)
        chosen = {id(j) for j in batch}
        self._replace([j for j in self._jobs if id(j) not in chosen])
        return batch

    def depth(self, now: float) -> dict[tuple[str, str], Depth]:
        """(tier, hosting) -> queued requests and tokens, for the autoscaling gauges."""
        counts: dict[tuple[str, str], Depth] = {}
        for job in self._jobs:
            if job.abandoned:
                continue
            key = ("nice" if self.tier(job, now) == NICE else "normal", job.hosting or "any")
            seen = counts.get(key, Depth(0, 0))
            counts[key] = Depth(seen.requests + 1, seen.tokens + job.tokens)
        return counts

    @staticmethod
    def _may_run(job: Job, hostings: frozenset[str]) -> bool:
        return job.hosting is None or job.hosting in hostings

    def _block_cap(self, tier: int, hostings: frozenset[str], now: float) -> float | None:
        """The longest one block of the batch may run, as measured; None: no such limit."""
        p = self.policy
        if p.segment_seconds <= 0:
            return None
        if tier == URGENT:
            return p.segment_seconds
        if self.contended(hostings, now):
            return min(p.segment_seconds, p.nice_segment_seconds)
        return None

    def contended(self, hostings: frozenset[str], now: float) -> bool:
        """Whether a normal request a pool with these labels may run arrived within
        `nice_contended_seconds`: its nice work then keeps to short segments."""
        return any(
            now - at <= self.policy.nice_contended_seconds
            for hosting, at in self._normal_arrived.items()
            if hosting is None or hosting in hostings
        )

    def _fill(
        self,
        head: Job,
        company: Iterable[Job],
        pool: str,
        block_cap: float | None,
        reserved_bytes: int,
    ) -> list[Job]:
        p = self.policy
        memory_budget = p.max_batch_memory_bytes - reserved_bytes
        others = [j for j in company if j is not head]  # already in arrival order
        if p.length_grouping:
            others.sort(
                key=lambda j: abs(j.tokens - head.tokens)
            )  # stable: ties keep arrival order
        batch, longest, real = [head], head.tokens, head.tokens
        outputs, images = set(head.layers), len(head.prompt.images)  # what the batch returns, sees
        for job in others:
            if len(batch) >= p.max_batch_rows:
                break
            widest = max(longest, job.tokens)
            padded = widest * (len(batch) + 1)
            if padded > p.max_batch_tokens:
                continue  # a shorter one further on may still fit
            if p.length_grouping and 1 - (real + job.tokens) / padded > p.max_padding_ratio:
                continue
            returned, seen = outputs.union(job.layers), images + len(job.prompt.images)
            needs = head.memory.batch_bytes(len(batch) + 1, widest, len(returned), seen)
            if needs > memory_budget:
                continue  # as for tokens: a shorter one may still fit
            if block_cap is not None:
                block = head.model.block_seconds(pool, padded)
                if block is not None and block > block_cap:
                    continue
            batch.append(job)
            longest, real, outputs, images = widest, real + job.tokens, returned, seen
        return batch

    def _replace(self, jobs: list[Job]) -> None:
        self._jobs = jobs
        self._tokens = sum(j.tokens for j in jobs)

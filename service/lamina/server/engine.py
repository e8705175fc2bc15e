"""The router: from a validated domain request to its result, through the queue and a pool.

The event loop only coordinates; tokenization runs on the CPU executor, inference and pooling on
each pool's inference thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

from tokenizers import Tokenizer

from lamina.server.domain import (
    EmbedRequest,
    EmbedResult,
    ModelDescription,
    SemanticEmbedRequest,
    SemanticEmbedResult,
    Timing,
)
from lamina.server.errors import HostingUnavailable, InvalidArgument, ModelNotFound, QueueFull
from lamina.server.limits import RequestLimits
from lamina.server.metrics import Metrics
from lamina.server.models.registry import ModelRegistry, ModelVersion
from lamina.server.scheduling.inference import run_batch
from lamina.server.scheduling.job import Embeddings, Job
from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.server.scheduling.pool import PoolRunner, PoolSpec
from lamina.server.scheduling.queue import AdmissionRefused, RequestQueue

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class Engine:
    def __init__(
        self,
        registry: ModelRegistry,
        policy: SchedulingPolicy,
        metrics: Metrics,
        *,
        limits: RequestLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.limits = limits or RequestLimits()
        self.pools = registry.pools
        self.policy = policy
        self.metrics = metrics
        self.queue = RequestQueue(policy)
        self._clock = clock
        self._cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lamina-cpu")
        self._serving: dict[str, ModelVersion] = {}
        self._refreshing = asyncio.Lock()
        self._seconds_per_token = 1e-4  # running estimate, for the retry hint
        self.runners = [
            PoolRunner(
                spec,
                self.queue,
                _run_on_pool,
                ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pool-{spec.name}"),
                clock=clock,
                on_batch=self._observe_batch,
            )
            for spec in self.pools
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self.hostings = frozenset().union(*(spec.hostings for spec in self.pools))

    def start(self) -> None:
        """Start the pools' loops (call on the serving event loop)."""
        self._tasks = [
            asyncio.create_task(r.run(), name=f"pool:{r.spec.name}") for r in self.runners
        ]

    async def refresh(self) -> None:
        """Serve every new version the repository holds (call on the serving event loop)."""
        async with self._refreshing:
            for version in await asyncio.to_thread(self.registry.refresh):
                self._serving[version.name] = version
                self.metrics.model_loaded(version.name, version.version)
                log.info("serving %s", version.model_version)

    async def close(self) -> None:
        """Finish everything queued, then stop the pools."""
        for runner in self.runners:
            runner.close()
        await asyncio.gather(*self._tasks)
        self._cpu.shutdown(wait=False)

    def __contains__(self, name: str) -> bool:
        return name in self._serving

    def models(self) -> list[ModelDescription]:
        return [self._describe(self._serving[name]) for name in sorted(self._serving)]

    async def embed(self, request: EmbedRequest, timeout: float | None = None) -> EmbedResult:
        """`timeout`: seconds left of the caller's deadline; the request leaves the queue with
        DEADLINE_EXCEEDED if it has not started by then."""
        self.limits.check(request)
        return await self._embed(self._version(request.model), request, timeout)

    async def semantic_embed(
        self, request: SemanticEmbedRequest, timeout: float | None = None
    ) -> SemanticEmbedResult:
        """Each prompt is one Embed of the model's semantic layer and pooling, its own row in the
        queue; all are submitted at once so they batch together, on one model version."""
        version = self._version(request.model)
        semantic = version.manifest.semantic
        if semantic is None:
            having = sorted(n for n, v in self._serving.items() if v.manifest.semantic)
            raise InvalidArgument(
                "model",
                f"model {version.name!r} has no semantic embedding (its manifest configures "
                f"none); models with one: {', '.join(having) or 'none'}",
            )
        if request.compress_to_size is not None:
            raise InvalidArgument(
                "compress_to_size",
                f"model {version.name!r} provides no projection to {request.compress_to_size} "
                "dimensions; leave compress_to_size unset",
            )
        rows = [
            EmbedRequest(
                model=request.model,
                prompt=prompt,
                layers=(semantic.layer,),
                pooling=(semantic.pooling,),
                normalize=semantic.normalize if request.normalize is None else request.normalize,
                hosting=request.hosting,
                nice=request.nice,
                contextual_control_threshold=request.contextual_control_threshold,
                control_log_additive=request.control_log_additive,
                instruction=semantic.instruction(request.representation),
            )
            for prompt in request.prompts
        ]
        layer = version.primary.absolute_layer(semantic.layer, "semantic.layer")
        results = await _all_or_first_error(
            [
                self._semantic_row(
                    version, row, f"prompts[{i}]" if request.batch else "prompt", timeout
                )
                for i, row in enumerate(rows)
            ]
        )
        return SemanticEmbedResult(
            model_version=version.model_version,
            embeddings=tuple(result.embeddings[layer][semantic.pooling] for result in results),
            num_tokens_prompt_total=sum(r.num_tokens_prompt_total for r in results),
            timing=Timing(
                queue_seconds=max(r.timing.queue_seconds for r in results),
                tokenization_seconds=max(r.timing.tokenization_seconds for r in results),
                inference_seconds=max(r.timing.inference_seconds for r in results),
            ),
        )

    async def _semantic_row(
        self, version: ModelVersion, row: EmbedRequest, field: str, timeout: float | None
    ) -> EmbedResult:
        try:
            self.limits.check(row)  # per prompt, as for Embed
            return await self._embed(version, row, timeout)
        except InvalidArgument as error:
            raise error.moved("prompt", field) from None

    async def _embed(
        self, version: ModelVersion, request: EmbedRequest, timeout: float | None
    ) -> EmbedResult:
        if request.hosting is not None and request.hosting not in self.hostings:
            # Fail fast: such a request must never be processed outside its hosting.
            raise HostingUnavailable(request.hosting, tuple(sorted(self.hostings)))
        layers = self._layers(version, request)
        if not request.pooling:
            raise InvalidArgument("pooling", "at least one pooling is required")
        started = time.monotonic()
        prompt = await self._on_cpu(
            version.prompts.encode,
            request.prompt,
            request.contextual_control_threshold,
            request.instruction,
        )
        tokens = (
            await self._on_cpu(version.prompts.token_strings, prompt) if request.tokens else None
        )
        tokenization_seconds = time.monotonic() - started
        self.metrics.tokenization_seconds.labels(version.name).observe(tokenization_seconds)

        now = self._clock()
        job = Job(
            model=version,
            prompt=prompt,
            layers=layers,
            pooling=tuple(dict.fromkeys(request.pooling)),
            normalize=request.normalize,
            control_log_additive=request.control_log_additive,
            nice=request.nice,
            hosting=request.hosting,
            enqueued_at=now,
            deadline=None if timeout is None else now + timeout - tokenization_seconds,
            future=asyncio.get_running_loop().create_future(),
        )
        self._admit(job)
        result = await job.future
        self.metrics.observe_request(
            version.name, prompt.length, result.queue_seconds, request.nice
        )
        return EmbedResult(
            model_version=version.model_version,
            embeddings=result.embeddings,
            tokens=tokens,
            num_tokens_prompt_total=prompt.length,
            timing=Timing(
                queue_seconds=result.queue_seconds,
                tokenization_seconds=tokenization_seconds,
                inference_seconds=result.inference_seconds,
            ),
        )

    async def tokenize(self, model_name: str, text: str) -> tuple[list[str], list[int]]:
        return await self._on_cpu(self._version(model_name).prompts.tokenize, text)

    async def detokenize(self, model_name: str, ids: list[int]) -> str:
        return await self._on_cpu(self._version(model_name).prompts.detokenize, ids)

    def tokenizer(self, model_name: str) -> Tokenizer | None:
        """The serving version's tokenizer; None for a model without one (an image encoder)."""
        version = self._version(model_name)
        return version.prompts.tokenizer if version.manifest.text_support else None

    def _admit(self, job: Job) -> None:
        try:
            self.queue.admit(job)
        except AdmissionRefused as refused:
            p = refused.policy
            # Time for the pools to work through what is queued, at the recent pace.
            drain = refused.tokens * self._seconds_per_token / max(1, len(self.runners))
            raise QueueFull(
                refused.requests,
                refused.tokens,
                f"limits {p.max_queue_requests} requests, {p.max_queue_tokens} tokens",
                retry_after_seconds=max(0.1, drain),
            ) from None
        for runner in self.runners:
            runner.notify()

    def _observe_batch(self, pool: PoolSpec, jobs: Sequence[Job], seconds: float) -> None:
        padded = max(job.tokens for job in jobs) * len(jobs)
        self._seconds_per_token = 0.8 * self._seconds_per_token + 0.2 * seconds / padded
        self.metrics.observe_batch(pool.name, jobs, seconds)

    def _version(self, name: str) -> ModelVersion:
        version = self._serving.get(name)
        if version is None:
            raise ModelNotFound(name, sorted(self._serving))
        return version

    def _describe(self, version: ModelVersion) -> ModelDescription:
        m = version.manifest
        return ModelDescription(
            name=version.name,
            version=version.version,
            model_version=version.model_version,
            description=m.description,
            architecture=m.architecture,
            num_layers=m.num_layers,
            hidden_size=m.hidden_size,
            max_context_size=m.max_context_size,
            image_support=m.image_support,
            trained=m.trained,
            embedding_types=m.embedding_types,
            hostings=tuple(sorted(self.hostings)),
        )

    @staticmethod
    def _layers(version: ModelVersion, request: EmbedRequest) -> tuple[int, ...]:
        if not request.layers:
            raise InvalidArgument("layers", "at least one layer is required")
        absolute = [
            version.primary.absolute_layer(layer, f"layers[{i}]")
            for i, layer in enumerate(request.layers)
        ]
        return tuple(dict.fromkeys(absolute))

    async def _on_cpu(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._cpu, partial(fn, *args, **kwargs))


async def _all_or_first_error(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Run `calls` concurrently; results in their order. At the first failure the others are
    cancelled (leaving the queue unrun) and the failure of the earliest call is raised."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:  # a failure, or the caller cancelled: nothing of the batch may keep running
        for task in tasks:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
    return [task.result() for task in tasks]


def _run_on_pool(pool: PoolSpec, jobs: Sequence[Job]) -> list[Embeddings]:
    """Runs on the pool's thread; every job of a batch shares one model version."""
    version = jobs[0].model
    assert isinstance(version, ModelVersion)
    return run_batch(version.per_pool[pool.name], jobs)

"""The engine: from a domain request to its result, through the queue and a pool.

It asks the model registry which version of a model serves (`ServedModels`), prepares the prompt,
admits the job to the queue and awaits its pool.

The event loop coordinates; inference and pooling run on each pool's inference thread. A short text
prompt (LIGHT_CHARS) is tokenized on the loop itself: that takes less time than handing it to a
thread and back (the tokenizer holds the GIL either way). Other prompts are prepared on a CPU
executor, and large ones (long text, many pixels) on an executor of their own, so a huge request
never holds up the preparation of small ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from enum import Enum
from functools import partial
from typing import Protocol, TypeVar

import numpy as np
from opentelemetry.trace import SpanContext

from lamina.server import embeddings as openai_embeddings
from lamina.server.domain import (
    EmbeddingsRequest,
    EmbedRequest,
    EmbedResult,
    ImageItem,
    InstructableEmbedRequest,
    InstructableEmbedResult,
    ModelDescription,
    ModelVersionState,
    Pooling,
    PoolPrecision,
    SemanticEmbedRequest,
    SemanticEmbedResult,
    TextItem,
    Timing,
    TokenIdsItem,
)
from lamina.server.errors import (
    INPUT,
    FieldPath,
    HostingUnavailable,
    InvalidArgument,
    ModelNotFound,
    NonFiniteResult,
    QueueFull,
)
from lamina.server.limits import RequestLimits
from lamina.server.metrics import Metrics
from lamina.server.models.registry import ModelVersion
from lamina.server.observability import tracing
from lamina.server.runtime.device import PoolSpec
from lamina.server.scheduling.job import Embeddings, Job, JobResult
from lamina.server.scheduling.policy import SchedulingPolicy
from lamina.server.scheduling.pool import PoolRunner, start_on_model
from lamina.server.scheduling.queue import AdmissionRefused, RequestQueue

log = logging.getLogger(__name__)

T = TypeVar("T")

# Beyond either, preparing a prompt takes long enough (tens of milliseconds and up) to go to the
# executor for large work.
HEAVY_TEXT_CHARS = 20_000
HEAVY_PIXELS = 4_000_000
# Up to this much text (and no images, no spreading of controls), a prompt is prepared on the loop:
# tens of microseconds, against a thread hop's hundreds.
LIGHT_CHARS = 1_000


class Cost(Enum):
    """Where preparing a prompt runs: on the loop, on the CPU executor, or on the heavy one."""

    LIGHT = "light"
    NORMAL = "normal"
    HEAVY = "heavy"

    @staticmethod
    def of(chars: int, pixels: int = 0, spreading: bool = False) -> Cost:
        if chars > HEAVY_TEXT_CHARS or pixels > HEAVY_PIXELS or spreading:
            return Cost.HEAVY
        if chars <= LIGHT_CHARS and pixels == 0:
            return Cost.LIGHT
        return Cost.NORMAL


class ServedModels(Protocol):
    """What the engine asks of the model registry (models/registry.py: ModelRegistry)."""

    @property
    def pools(self) -> tuple[PoolSpec, ...]: ...

    def refresh(self) -> list[ModelVersion]: ...

    def serving(self, name: str) -> ModelVersion | None: ...

    def served(self) -> dict[str, ModelVersion]: ...

    def states(self, name: str | None = None) -> list[ModelVersionState]: ...


def pool_thread(spec: PoolSpec) -> Executor:
    """A pool's inference thread: it runs one batch at a time."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pool-{spec.name}")


class Engine:
    def __init__(
        self,
        registry: ServedModels,
        policy: SchedulingPolicy,
        metrics: Metrics,
        *,
        limits: RequestLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        pool_executor: Callable[[PoolSpec], Executor] = pool_thread,
    ) -> None:
        self.registry = registry
        self.limits = limits or RequestLimits()
        self.pools = registry.pools
        self.policy = policy
        self.metrics = metrics
        self.queue = RequestQueue(policy)
        self._clock = clock
        self._cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lamina-cpu")
        self._cpu_heavy = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lamina-cpu-heavy")
        self._refreshing = asyncio.Lock()
        self._seconds_per_token = 1e-4  # running estimate, for the retry hint
        # While tracing: each queued job's request span, and the batch span that served it.
        self._traced: weakref.WeakKeyDictionary[Job, SpanContext] = weakref.WeakKeyDictionary()
        self._batch_of: weakref.WeakKeyDictionary[Job, SpanContext] = weakref.WeakKeyDictionary()
        self.runners = [
            PoolRunner(
                spec,
                self.queue,
                start_on_model,
                pool_executor(spec),
                clock=clock,
                observer=_PoolMetrics(self),
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
            # The registry serves them already; here they are logged and counted.
            for version in await asyncio.to_thread(self.registry.refresh):
                self.metrics.model_loaded(version.name, version.version)
                log.info("serving %s", version.model_version)

    async def close(self) -> None:
        """Finish everything queued, then stop the pools."""
        for runner in self.runners:
            runner.close()
        await asyncio.gather(*self._tasks)
        self._cpu.shutdown(wait=False)
        self._cpu_heavy.shutdown(wait=False)

    def __contains__(self, name: str) -> bool:
        return self.registry.serving(name) is not None

    def models(self) -> list[ModelDescription]:
        return [self._describe(version) for version in self.registry.served().values()]

    def version_states(self) -> list[ModelVersionState]:
        """Every version the registry knows, of every model (also one with no version that
        serves), by name then version: loading, serving, failed (and why) or retired."""
        return self.registry.states()

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
            having = sorted(n for n, v in self.registry.served().items() if v.manifest.semantic)
            raise InvalidArgument(
                ("model",),
                f"model {version.name!r} has no semantic embedding (its manifest configures "
                f"none); models with one: {', '.join(having) or 'none'}",
            )
        size = request.compress_to_size
        if size is not None and size not in semantic.matryoshka_dimensions:
            declared = ", ".join(map(str, semantic.matryoshka_dimensions)) or "none"
            raise InvalidArgument(
                ("compress_to_size",),
                f"model {version.name!r} provides no projection to {size} dimensions (the "
                f"Matryoshka sizes it declares: {declared}); leave compress_to_size unset",
            )
        rows = [
            EmbedRequest(
                model=request.model,
                prompt=prompt,
                layers=(semantic.layer,),
                pooling=(semantic.pooling,),
                # After the projections and the truncation (semantic_head), not of the pooling.
                normalize=False,
                hosting=request.hosting,
                nice=request.nice,
                contextual_control_threshold=request.contextual_control_threshold,
                control_log_additive=request.control_log_additive,
                instruction=semantic.instruction(request.representation),
            )
            for prompt in request.prompts
        ]
        layer = version.primary.absolute_layer(semantic.layer, ("semantic", "layer"))
        results = await _all_or_first_error(
            [
                self._semantic_row(
                    version, row, ("prompts", i) if request.batch else ("prompt",), timeout
                )
                for i, row in enumerate(rows)
            ]
        )
        embeddings = version.primary.semantic_head.apply(
            [result.embeddings[layer][semantic.pooling] for result in results],
            size if size is not None else semantic.dimensions,
            semantic.normalize if request.normalize is None else request.normalize,
        )
        if not all(np.isfinite(vector).all() for vector in embeddings):  # a projection overflowed
            self.metrics.nonfinite_results.labels(version.name).inc()
            log.error("%s: non-finite projected semantic embedding", version.model_version)
            raise NonFiniteResult(version.model_version, layer, f"projected {semantic.pooling}")
        return SemanticEmbedResult(
            model_version=results[0].model_version,
            embeddings=tuple(embeddings),
            num_tokens_prompt_total=sum(r.num_tokens_prompt_total for r in results),
            timing=Timing(
                queue_seconds=max(r.timing.queue_seconds for r in results),
                tokenization_seconds=max(r.timing.tokenization_seconds for r in results),
                inference_seconds=max(r.timing.inference_seconds for r in results),
                parked_seconds=max(r.timing.parked_seconds for r in results),
            ),
        )

    async def instructable_embed(
        self, request: InstructableEmbedRequest, timeout: float | None
    ) -> InstructableEmbedResult:
        """One Embed of the model's instructable layer and pooling, the instruction in the
        model's template tokenized as its own item before the input: so semantics, controls,
        limits and scheduling are Embed's, and errors name `input` where Embed's name `prompt`."""
        version = self._version(request.model)
        config = version.manifest.instructable
        if config is None:
            having = sorted(n for n, v in self.registry.served().items() if v.manifest.instructable)
            raise InvalidArgument(
                ("model",),
                f"model {version.name!r} has no instructable embedding (its manifest configures "
                f"none); models with one: {', '.join(having) or 'none'}",
            )
        instruction = config.instruction_text(request.instruction)
        limit = version.encoder.max_text_chars
        if len(instruction) > limit:  # said of the instruction, before the prompt's own check
            raise InvalidArgument(
                ("instruction",),
                f"{len(instruction)} characters in the model's template, more than the {limit} "
                f"that fit the {version.manifest.max_context_size} positions of model "
                f"{version.name!r}; it is never truncated",
            )
        row = EmbedRequest(
            model=request.model,
            prompt=request.input,
            layers=(config.layer,),
            pooling=(config.pooling,),
            normalize=request.normalize,
            hosting=request.hosting,
            nice=request.nice,
            contextual_control_threshold=request.contextual_control_threshold,
            control_log_additive=request.control_log_additive,
            instruction=instruction,
        )
        try:
            self.limits.check(row)
            result = await self._embed(version, row, timeout)
        except InvalidArgument as error:
            raise error.moved(("prompt",), (INPUT,)) from None
        layer = version.primary.absolute_layer(config.layer, ("instructable", "layer"))
        return InstructableEmbedResult(
            model_version=result.model_version,
            embedding=result.embeddings[layer][config.pooling],
            num_tokens_prompt_total=result.num_tokens_prompt_total,
            timing=result.timing,
        )

    async def _semantic_row(
        self, version: ModelVersion, row: EmbedRequest, field: FieldPath, timeout: float | None
    ) -> EmbedResult:
        try:
            self.limits.check(row)  # per prompt, as for Embed
            return await self._embed(version, row, timeout)
        except InvalidArgument as error:
            raise error.moved(("prompt",), field) from None

    async def _embed(
        self, version: ModelVersion, request: EmbedRequest, timeout: float | None
    ) -> EmbedResult:
        if request.hosting is not None and request.hosting not in self.hostings:
            # Fail fast: such a request must never be processed outside its hosting.
            raise HostingUnavailable(request.hosting, tuple(sorted(self.hostings)))
        layers = self._layers(version, request)
        if not request.pooling:
            raise InvalidArgument(("pooling",), "at least one pooling is required")
        # Cheap bounds first: what cannot fit the model is never tokenized nor decoded.
        version.encoder.check_size(request.prompt, request.instruction)
        pixels = self.limits.check_pixels(request)
        # The instruction is text to tokenize too (a caller's, in InstructableEmbed).
        chars = len(request.instruction)
        chars += sum(len(item.data) for item in request.prompt if isinstance(item, TextItem))
        ids = sum(len(item.data) for item in request.prompt if isinstance(item, TokenIdsItem))
        # Spreading controls compares every distinct token with every controlled one.
        spreading = request.contextual_control_threshold is not None and chars + ids > 2_000
        cost = Cost.of(chars + ids, pixels, spreading)
        started = time.monotonic()
        images = sum(isinstance(item, ImageItem) for item in request.prompt)
        # Counted while it is prepared, so that a pool about to run a partial batch waits for it.
        self.queue.preparing += 1
        try:
            with tracing.child("tokenize", {"lamina.model": version.name, "lamina.images": images}):
                prompt = await self._on_cpu(
                    version.encoder.encode,
                    request.prompt,
                    request.contextual_control_threshold,
                    request.instruction,
                    cost=cost,
                )
                tokens = (
                    await self._on_cpu(version.encoder.token_strings, prompt, cost=cost)
                    if request.tokens
                    else None
                )
        finally:
            self.queue.preparing -= 1
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
            memory=version.primary.session.memory,
        )
        with tracing.child("admission"):
            self._admit(job)
        if tracing.enabled():
            self._traced[job] = tracing.current_context()
        result = await job.future
        self._trace_job(job, result)
        self._check_finite(version, result.embeddings)
        self.metrics.observe_request(
            version.name, prompt.length, result.queue_seconds, request.nice
        )
        return EmbedResult(
            model_version=version.model_version_on(result.pool),
            embeddings=result.embeddings,
            tokens=tokens,
            num_tokens_prompt_total=prompt.length,
            timing=Timing(
                queue_seconds=result.queue_seconds,
                tokenization_seconds=tokenization_seconds,
                inference_seconds=result.inference_seconds,
                parked_seconds=result.parked_seconds,
            ),
        )

    async def embeddings(
        self, request: EmbeddingsRequest, timeout: float | None = None
    ) -> SemanticEmbedResult:
        """OpenAI's embeddings: the inputs as one SemanticEmbed batch (representation symmetric),
        each input its own row; errors name the caller's fields (embeddings.py)."""
        manifest = self._version(request.model).manifest
        compress = openai_embeddings.check_dimensions(manifest, request.model, request.dimensions)
        semantic = openai_embeddings.semantic_request(request, compress)
        try:
            return await self.semantic_embed(semantic, timeout)
        except InvalidArgument as error:
            raise openai_embeddings.relocated(error, request.listed) from None

    async def tokenize(self, model_name: str, text: str) -> tuple[list[str], list[int]]:
        version = self._version(model_name)
        self.limits.check_tokenize(text)
        return await self._on_cpu(version.encoder.tokenize, text, cost=Cost.of(len(text)))

    async def detokenize(self, model_name: str, ids: Sequence[int]) -> str:
        """`ids` as they came (a protobuf repeated field): copied off the event loop when long."""
        version = self._version(model_name)
        self.limits.check_detokenize(ids)
        return await self._on_cpu(
            lambda: version.encoder.detokenize(np.asarray(ids, dtype=np.int64)),
            cost=Cost.of(len(ids)),
        )

    async def tokenizer_json(self, model_name: str) -> str | None:
        """The serving version's tokenizer.json; None for a model without one (an image
        encoder)."""
        version = self._version(model_name)
        if not version.manifest.text_support:
            return None
        return await self._on_cpu(version.encoder.tokenizer.to_str)

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

    def _check_finite(self, version: ModelVersion, embeddings: Embeddings) -> None:
        """The last line of defence behind the control-factor bounds: NaN or infinity is never
        answered as an embedding."""
        where = first_nonfinite(embeddings)
        if where is None:
            return
        self.metrics.nonfinite_results.labels(version.name).inc()
        log.error("%s: non-finite %s embedding of layer %d", version.model_version, *where[::-1])
        raise NonFiniteResult(version.model_version, where[0], where[1].value)

    def observe_batch(self, pool: PoolSpec, jobs: Sequence[Job], seconds: float) -> None:
        padded = max(job.tokens for job in jobs) * len(jobs)
        self._seconds_per_token = 0.8 * self._seconds_per_token + 0.2 * seconds / padded
        self.metrics.observe_batch(pool.name, jobs, seconds)
        if tracing.enabled():
            self._trace_batch(pool, jobs, seconds, padded)

    def _trace_batch(
        self, pool: PoolSpec, jobs: Sequence[Job], seconds: float, padded: int
    ) -> None:
        """The batch as a trace of its own, linked to the request spans it served (its running
        time: parked spells fall in between)."""
        version = jobs[0].model
        loaded = version.per_pool[pool.name] if isinstance(version, ModelVersion) else None
        attributes: dict[str, str | int | float | bool] = {
            "lamina.model": version.name,
            "lamina.pool": pool.name,
            "lamina.batch.rows": len(jobs),
            "lamina.batch.padded_tokens": padded,
            "lamina.batch.layers": max(layer for job in jobs for layer in job.layers),
        }
        if loaded is not None:
            attributes["lamina.provider"] = loaded.session.provider
            attributes["lamina.precision"] = loaded.chosen.precision.value
        end = time.time_ns()
        batch = tracing.span_between(
            "batch",
            end - int(seconds * 1e9),
            end,
            attributes,
            links=[self._traced[job] for job in jobs if job in self._traced],
            root=True,
        )
        for job in jobs:
            self._batch_of[job] = batch

    def _trace_job(self, job: Job, result: JobResult) -> None:
        """The request's queue wait, its batch (linked to the batch's own span) and pooling, as
        children of its span, from the times its batch reported."""
        if not tracing.enabled():
            return
        queued = tracing.wall_ns(job.enqueued_at) if self._clock is time.monotonic else None
        if queued is None:
            return  # a scheduler clock of its own (tests): no wall time to place them at
        ran = queued + int(result.queue_seconds * 1e9)
        pooled = ran + int((result.parked_seconds + result.inference_seconds) * 1e9)
        tracing.span_between("queue", queued, ran, {"lamina.pool": result.pool})
        batch = self._batch_of.get(job)
        tracing.span_between(
            "batch",
            ran,
            pooled,
            {"lamina.pool": result.pool, "lamina.parked_seconds": result.parked_seconds},
            links=[] if batch is None else [batch],
        )
        tracing.span_between("pooling", pooled, pooled + int(result.pooling_seconds * 1e9))

    def _version(self, name: str) -> ModelVersion:
        version = self.registry.serving(name)
        if version is None:
            raise ModelNotFound(name, list(self.registry.served()))
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
            versions=tuple(self.registry.states(version.name)),
            precisions=tuple(
                PoolPrecision(pool, loaded.chosen.precision, loaded.chosen.min_cosine)
                for pool, loaded in version.per_pool.items()
            ),
        )

    @staticmethod
    def _layers(version: ModelVersion, request: EmbedRequest) -> tuple[int, ...]:
        if not request.layers:
            raise InvalidArgument(("layers",), "at least one layer is required")
        absolute = [
            version.primary.absolute_layer(layer, ("layers", i))
            for i, layer in enumerate(request.layers)
        ]
        return tuple(dict.fromkeys(absolute))

    async def _on_cpu(self, fn: Callable[..., T], *args: object, cost: Cost = Cost.NORMAL) -> T:
        if cost is Cost.LIGHT:
            return fn(*args)
        loop = asyncio.get_running_loop()
        executor = self._cpu_heavy if cost is Cost.HEAVY else self._cpu
        return await loop.run_in_executor(executor, partial(fn, *args))


class _PoolMetrics:
    """The pools' reports (scheduling.pool.PoolObserver), as metrics."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def batch_ran(self, pool: PoolSpec, jobs: Sequence[Job], seconds: float) -> None:
        self._engine.observe_batch(pool, jobs, seconds)

    def segment_ran(self, pool: PoolSpec, model: str, seconds: float) -> None:
        self._engine.metrics.segment_seconds.labels(pool.name, model).observe(seconds)

    def preempted(self, pool: PoolSpec, model: str) -> None:
        self._engine.metrics.preemptions.labels(pool.name, model).inc()

    def parked(self, pool: PoolSpec, held: Mapping[str, tuple[int, int]]) -> None:
        self._engine.metrics.observe_parked(pool.name, held)


def first_nonfinite(embeddings: Embeddings) -> tuple[int, Pooling] | None:
    """The first layer and pooling whose vector holds NaN or infinity; None when all are finite."""
    for layer, vectors in embeddings.items():
        for pooling, vector in vectors.items():
            if not np.isfinite(vector).all():
                return layer, pooling
    return None


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

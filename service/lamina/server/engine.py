"""The router: from a validated domain request to its result, through the model's worker.

The event loop only coordinates; tokenization runs on the CPU executor, inference and pooling on
each model's inference thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import ParamSpec, TypeVar

from lamina.server.domain import EmbedRequest, EmbedResult, ModelDescription, Timing
from lamina.server.errors import HostingUnavailable, InvalidArgument, ModelNotFound
from lamina.server.metrics import Metrics
from lamina.server.models.loaded import LoadedModel
from lamina.server.models.registry import ModelRegistry
from lamina.server.scheduling.batcher import BatchPolicy
from lamina.server.scheduling.inference import run_batch
from lamina.server.scheduling.job import Job
from lamina.server.scheduling.worker import ModelWorker

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(eq=False)
class Serving:
    """A model version with its worker. Requests lease it; a replaced version retires once its
    last lease ends, so in-flight requests finish on the version they started on."""

    model: LoadedModel
    worker: ModelWorker
    inference_thread: ThreadPoolExecutor
    leases: int = 0
    retired: bool = False


class Engine:
    def __init__(self, registry: ModelRegistry, policy: BatchPolicy, metrics: Metrics) -> None:
        self.registry = registry
        self.policy = policy
        self.metrics = metrics
        self._cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lamina-cpu")
        self._serving: dict[str, Serving] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._refreshing = asyncio.Lock()

    async def refresh(self) -> None:
        """Serve every new version the repository holds (call on the serving event loop)."""
        async with self._refreshing:
            for model in await asyncio.to_thread(self.registry.refresh):
                self._serve(model)

    def _serve(self, model: LoadedModel) -> None:
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{model.name}")
        worker = ModelWorker(
            model.model_version,
            partial(run_batch, model),
            thread,
            self.policy,
            on_batch=partial(self.metrics.observe_batch, model.name),
        )
        worker.start()
        previous = self._serving.get(model.name)
        self._serving[model.name] = Serving(model, worker, thread)
        log.info("serving %s", model.model_version)
        if previous is not None:
            previous.retired = True
            self._retire_if_idle(previous)

    def _retire_if_idle(self, serving: Serving) -> None:
        if serving.retired and serving.leases == 0:
            task = asyncio.get_running_loop().create_task(self._retire(serving))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, serving: Serving) -> None:
        await serving.worker.close()
        serving.inference_thread.shutdown(wait=False)
        log.info("retired %s", serving.model.model_version)

    @contextmanager
    def _lease(self, name: str) -> Iterator[Serving]:
        serving = self._serving.get(name)
        if serving is None:
            raise ModelNotFound(name, sorted(self._serving))
        serving.leases += 1
        try:
            yield serving
        finally:
            serving.leases -= 1
            self._retire_if_idle(serving)

    async def close(self) -> None:
        await asyncio.gather(*(s.worker.close() for s in self._serving.values()), *self._retiring)
        for executor in (self._cpu, *(s.inference_thread for s in self._serving.values())):
            executor.shutdown(wait=False)

    def __contains__(self, name: str) -> bool:
        return name in self._serving

    def queue_depth(self) -> int:
        return sum(s.worker.depth for s in self._serving.values())

    def models(self) -> list[ModelDescription]:
        return [
            describe(self._serving[name].model, self.registry.hostings)
            for name in sorted(self._serving)
        ]

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        with self._lease(request.model) as serving:
            return await self._embed(serving, request)

    async def _embed(self, serving: Serving, request: EmbedRequest) -> EmbedResult:
        model = serving.model
        if request.hosting is not None and request.hosting not in self.registry.hostings:
            # Fail fast: such a request must never be processed outside its hosting.
            raise HostingUnavailable(request.hosting, self.registry.hostings)
        layers = self._layers(model, request)
        if not request.pooling:
            raise InvalidArgument("pooling", "at least one pooling is required")
        started = time.monotonic()
        prompt = await self._on_cpu(model.prompts.encode, request.prompt)
        tokens = (
            await self._on_cpu(model.prompts.token_strings, prompt.ids) if request.tokens else None
        )
        tokenization_seconds = time.monotonic() - started

        loop = asyncio.get_running_loop()
        job = Job(
            prompt=prompt,
            layers=layers,
            pooling=tuple(dict.fromkeys(request.pooling)),
            normalize=request.normalize,
            control_log_additive=request.control_log_additive,
            future=loop.create_future(),
            enqueued_at=time.monotonic(),
        )
        serving.worker.submit(job)
        result = await job.future
        self.metrics.observe_request(model.name, prompt.length, result.queue_seconds)
        return EmbedResult(
            model_version=model.model_version,
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
        with self._lease(model_name) as serving:
            return await self._on_cpu(serving.model.prompts.tokenize, text)

    async def detokenize(self, model_name: str, ids: list[int]) -> str:
        with self._lease(model_name) as serving:
            return await self._on_cpu(serving.model.prompts.detokenize, ids)

    @staticmethod
    def _layers(model: LoadedModel, request: EmbedRequest) -> tuple[int, ...]:
        if not request.layers:
            raise InvalidArgument("layers", "at least one layer is required")
        absolute = [
            model.absolute_layer(layer, f"layers[{i}]") for i, layer in enumerate(request.layers)
        ]
        return tuple(dict.fromkeys(absolute))

    async def _on_cpu(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._cpu, partial(fn, *args, **kwargs)
        )


def describe(model: LoadedModel, hostings: tuple[str, ...]) -> ModelDescription:
    m = model.manifest
    return ModelDescription(
        name=model.name,
        version=model.version,
        model_version=model.model_version,
        description=m.description,
        architecture=m.architecture,
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        max_context_size=m.max_context_size,
        image_support=m.image_support,
        embedding_types=m.embedding_types,
        hostings=hostings,
    )

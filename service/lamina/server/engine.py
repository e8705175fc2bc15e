"""The router: from a validated domain request to its result, through the model's worker.

The event loop only coordinates; tokenization runs on the CPU executor, inference and pooling on
each model's inference thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

from lamina.server.domain import EmbedRequest, EmbedResult, ModelDescription, Timing
from lamina.server.errors import HostingUnavailable, InvalidArgument
from lamina.server.metrics import Metrics
from lamina.server.models.loaded import LoadedModel
from lamina.server.models.registry import ModelRegistry
from lamina.server.scheduling.batcher import BatchPolicy
from lamina.server.scheduling.inference import run_batch
from lamina.server.scheduling.job import Job
from lamina.server.scheduling.worker import ModelWorker

P = ParamSpec("P")
T = TypeVar("T")


class Engine:
    def __init__(self, registry: ModelRegistry, policy: BatchPolicy, metrics: Metrics) -> None:
        self.registry = registry
        self.policy = policy
        self.metrics = metrics
        self._cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lamina-cpu")
        self._workers: dict[str, ModelWorker] = {}
        self._inference_threads: list[ThreadPoolExecutor] = []

    def start(self) -> None:
        """Start a worker for every loaded model (call on the serving event loop)."""
        for model in self.registry.all():
            thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{model.name}")
            self._inference_threads.append(thread)
            worker = ModelWorker(
                model.name,
                partial(run_batch, model),
                thread,
                self.policy,
                on_batch=partial(self.metrics.observe_batch, model.name),
            )
            worker.start()
            self._workers[model.name] = worker

    async def close(self) -> None:
        await asyncio.gather(*(worker.close() for worker in self._workers.values()))
        for executor in (self._cpu, *self._inference_threads):
            executor.shutdown(wait=False)

    def queue_depth(self) -> int:
        return sum(worker.depth for worker in self._workers.values())

    def models(self) -> list[ModelDescription]:
        return self.registry.describe()

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        model = self.registry.get(request.model)
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
        self._workers[model.name].submit(job)
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
        model = self.registry.get(model_name)
        return await self._on_cpu(model.prompts.tokenize, text)

    async def detokenize(self, model_name: str, ids: list[int]) -> str:
        model = self.registry.get(model_name)
        return await self._on_cpu(model.prompts.detokenize, ids)

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

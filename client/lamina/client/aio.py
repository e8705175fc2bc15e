"""The asyncio client: the same calls as `Client`, as coroutines."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TypeVar

import grpc

from lamina.client import _calls
from lamina.client._channel import Metadata, Options, Security, open_aio_channel
from lamina.client.errors import LaminaError
from lamina.client.prompt import Prompt
from lamina.client.results import (
    BatchSemanticEmbedResult,
    EmbeddingsResult,
    EmbedResult,
    InstructableEmbedResult,
    ModelInfo,
    ModelVersionState,
    SemanticEmbedResult,
    TokenizeResult,
)
from lamina.v1 import embed_pb2_grpc

T = TypeVar("T")


class AsyncClient:
    """An asyncio connection to a Lamina server; create it inside the event loop that uses it.

    `async with AsyncClient("localhost:50051") as client: await client.embed(...)`

    The arguments mean what they mean for `Client`. Failed calls raise `LaminaError`.
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        options: Options | None = None,
        security: Security | None = None,
    ) -> None:
        security = security or Security()
        self.timeout = timeout
        self.metadata = security.metadata() + tuple(metadata or ())
        self._channel = open_aio_channel(target, security, options)
        self._stub = embed_pb2_grpc.EmbedServiceStub(self._channel)

    async def embed(
        self,
        model: str,
        prompt: Prompt,
        *,
        layers: Sequence[int] = (-1,),
        pooling: Sequence[str] = ("mean",),
        normalize: bool | None = None,
        tokens: bool | None = None,
        hosting: str | None = None,
        nice: bool = False,
        contextual_control_threshold: float | None = None,
        control_log_additive: bool | None = None,
        type: str | None = None,
    ) -> EmbedResult:
        """One vector per layer and pooling. None leaves an option to the server's default."""
        return await self._send(
            _calls.embed(
                model,
                prompt,
                layers=layers,
                pooling=pooling,
                normalize=normalize,
                tokens=tokens,
                hosting=hosting,
                nice=nice,
                contextual_control_threshold=contextual_control_threshold,
                control_log_additive=control_log_additive,
                type=type,
            )
        )

    async def semantic_embed(
        self,
        model: str,
        prompt: Prompt,
        *,
        representation: str,
        compress_to_size: int | None = None,
        normalize: bool | None = None,
        hosting: str | None = None,
        nice: bool = False,
        contextual_control_threshold: float | None = None,
        control_log_additive: bool | None = None,
    ) -> SemanticEmbedResult:
        """One vector in the model's own semantic configuration; `representation` is
        "symmetric", "document" or "query". normalize=None keeps the model's default."""
        return await self._send(
            _calls.semantic_embed(
                model,
                prompt,
                representation=representation,
                compress_to_size=compress_to_size,
                normalize=normalize,
                hosting=hosting,
                nice=nice,
                contextual_control_threshold=contextual_control_threshold,
                control_log_additive=control_log_additive,
            )
        )

    async def batch_semantic_embed(
        self,
        model: str,
        prompts: Sequence[Prompt],
        *,
        representation: str,
        compress_to_size: int | None = None,
        normalize: bool | None = None,
        hosting: str | None = None,
        nice: bool = False,
        contextual_control_threshold: float | None = None,
        control_log_additive: bool | None = None,
    ) -> BatchSemanticEmbedResult:
        """`semantic_embed` for up to 100 prompts; the vectors come back in their order."""
        return await self._send(
            _calls.batch_semantic_embed(
                model,
                prompts,
                representation=representation,
                compress_to_size=compress_to_size,
                normalize=normalize,
                hosting=hosting,
                nice=nice,
                contextual_control_threshold=contextual_control_threshold,
                control_log_additive=control_log_additive,
            )
        )

    async def embeddings(
        self,
        model: str,
        inputs: str | Sequence[str | Sequence[int]],
        *,
        dimensions: int | None = None,
        hosting: str | None = None,
        nice: bool = False,
    ) -> EmbeddingsResult:
        """OpenAI's embeddings over gRPC: one vector per input (a text or a token-id list), in
        order, up to 100; `dimensions` truncates to a Matryoshka size the model declares."""
        return await self._send(
            _calls.embeddings(model, inputs, dimensions=dimensions, hosting=hosting, nice=nice)
        )

    async def instructable_embed(
        self,
        model: str,
        input: Prompt,
        *,
        instruction: str,
        normalize: bool | None = None,
        hosting: str | None = None,
        nice: bool = False,
        contextual_control_threshold: float | None = None,
        control_log_additive: bool | None = None,
    ) -> InstructableEmbedResult:
        """One vector for `input` embedded after `instruction` ("" for none), in the model's own
        instructable configuration. normalize=None: the server's default (false)."""
        return await self._send(
            _calls.instructable_embed(
                model,
                input,
                instruction=instruction,
                normalize=normalize,
                hosting=hosting,
                nice=nice,
                contextual_control_threshold=contextual_control_threshold,
                control_log_additive=control_log_additive,
            )
        )

    async def models(self) -> list[ModelInfo]:
        return await self._send(_calls.models())

    async def model_versions(self) -> list[ModelVersionState]:
        """Every version of every model the server knows (also models none of whose versions
        serves): loading, serving, failed with why, or retired."""
        return await self._send(_calls.model_versions())

    async def tokenize(
        self, model: str, prompt: str, *, tokens: bool = True, token_ids: bool = True
    ) -> TokenizeResult:
        return await self._send(_calls.tokenize(model, prompt, tokens=tokens, token_ids=token_ids))

    async def detokenize(self, model: str, token_ids: Sequence[int]) -> str:
        return await self._send(_calls.detokenize(model, token_ids))

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()

    async def _send(self, call: _calls.Call[T]) -> T:
        method = getattr(self._stub, call.method)
        try:
            reply = await method(call.request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise LaminaError.from_rpc(error) from None
        return call.parse(reply)

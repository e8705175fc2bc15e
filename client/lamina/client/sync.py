"""The blocking client."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TypeVar

import grpc

from lamina.client import _calls
from lamina.client._channel import Metadata, Options, Security, open_channel
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


class Client:
    """A blocking connection to a Lamina server.

    `with Client("localhost:50051") as client: client.embed("all-minilm-l6-v2", "Hello")`

    `timeout` is each call's deadline in seconds (None: no deadline); `metadata` is sent with every
    call; `options` are extra gRPC channel arguments; `security` sets TLS, mTLS and the bearer token
    (`Security.from_files(ca_file=..., token_file=...)`). Failed calls raise `LaminaError`.
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
        self._channel = open_channel(target, security, options)
        self._stub = embed_pb2_grpc.EmbedServiceStub(self._channel)

    def embed(
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
        return self._send(
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

    def semantic_embed(
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
        return self._send(
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

    def batch_semantic_embed(
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
        return self._send(
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

    def embeddings(
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
        return self._send(
            _calls.embeddings(model, inputs, dimensions=dimensions, hosting=hosting, nice=nice)
        )

    def instructable_embed(
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
        return self._send(
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

    def models(self) -> list[ModelInfo]:
        return self._send(_calls.models())

    def model_versions(self) -> list[ModelVersionState]:
        """Every version of every model the server knows (also models none of whose versions
        serves): loading, serving, failed with why, or retired."""
        return self._send(_calls.model_versions())

    def tokenize(
        self, model: str, prompt: str, *, tokens: bool = True, token_ids: bool = True
    ) -> TokenizeResult:
        return self._send(_calls.tokenize(model, prompt, tokens=tokens, token_ids=token_ids))

    def detokenize(self, model: str, token_ids: Sequence[int]) -> str:
        return self._send(_calls.detokenize(model, token_ids))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: _calls.Call[T]) -> T:
        method = getattr(self._stub, call.method)
        try:
            reply = method(call.request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise LaminaError.from_rpc(error) from None
        return call.parse(reply)

"""The blocking client."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from lamina.client import _convert
from lamina.client.errors import LaminaError
from lamina.client.prompt import Prompt
from lamina.client.results import EmbedResult, ModelInfo, TokenizeResult
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc

Metadata = Sequence[tuple[str, str]]


class Client:
    """`with Client("localhost:50051") as client: client.embed(model=..., prompt=...)`."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        self.timeout = timeout
        self.metadata = tuple(metadata or ())
        self._channel = grpc.insecure_channel(
            target, options=[*_convert.CHANNEL_OPTIONS, *(options or ())]
        )
        self._stub = pb_grpc.EmbedServiceStub(self._channel)

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
        request = _convert.embed_request(
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
        return _convert.embed_result(self._call(self._stub.Embed, request))

    def models(self) -> list[ModelInfo]:
        return _convert.model_infos(
            self._call(self._stub.ModelsAvailable, pb.ModelsAvailableRequest())
        )

    def tokenize(
        self, model: str, prompt: str, *, tokens: bool = True, token_ids: bool = True
    ) -> TokenizeResult:
        request = _convert.tokenize_request(model, prompt, tokens=tokens, token_ids=token_ids)
        return _convert.tokenize_result(self._call(self._stub.Tokenize, request))

    def detokenize(self, model: str, token_ids: Sequence[int]) -> str:
        response = self._call(self._stub.Detokenize, _convert.detokenize_request(model, token_ids))
        return str(response.result)

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

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise LaminaError.from_rpc(error) from None

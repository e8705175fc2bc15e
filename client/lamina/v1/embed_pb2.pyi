from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Prompt(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[PromptItem]
    def __init__(self, items: _Optional[_Iterable[_Union[PromptItem, _Mapping]]] = ...) -> None: ...

class PromptItem(_message.Message):
    __slots__ = ("text", "image", "token_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: TextItem
    image: ImageItem
    token_ids: TokenIdsItem
    def __init__(self, text: _Optional[_Union[TextItem, _Mapping]] = ..., image: _Optional[_Union[ImageItem, _Mapping]] = ..., token_ids: _Optional[_Union[TokenIdsItem, _Mapping]] = ...) -> None: ...

class TextItem(_message.Message):
    __slots__ = ("data", "controls")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTROLS_FIELD_NUMBER: _ClassVar[int]
    data: str
    controls: _containers.RepeatedCompositeFieldContainer[TextControl]
    def __init__(self, data: _Optional[str] = ..., controls: _Optional[_Iterable[_Union[TextControl, _Mapping]]] = ...) -> None: ...

class TextControl(_message.Message):
    __slots__ = ("start", "length", "factor", "token_overlap")
    START_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    TOKEN_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    start: int
    length: int
    factor: float
    token_overlap: str
    def __init__(self, start: _Optional[int] = ..., length: _Optional[int] = ..., factor: _Optional[float] = ..., token_overlap: _Optional[str] = ...) -> None: ...

class ImageItem(_message.Message):
    __slots__ = ("data", "crop", "controls")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    CONTROLS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    crop: ImageCrop
    controls: _containers.RepeatedCompositeFieldContainer[ImageControl]
    def __init__(self, data: _Optional[bytes] = ..., crop: _Optional[_Union[ImageCrop, _Mapping]] = ..., controls: _Optional[_Iterable[_Union[ImageControl, _Mapping]]] = ...) -> None: ...

class ImageCrop(_message.Message):
    __slots__ = ("x", "y", "size")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    size: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class ImageControl(_message.Message):
    __slots__ = ("rect", "factor", "token_overlap")
    RECT_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    TOKEN_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    rect: Rect
    factor: float
    token_overlap: str
    def __init__(self, rect: _Optional[_Union[Rect, _Mapping]] = ..., factor: _Optional[float] = ..., token_overlap: _Optional[str] = ...) -> None: ...

class Rect(_message.Message):
    __slots__ = ("left", "top", "width", "height")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    left: float
    top: float
    width: float
    height: float
    def __init__(self, left: _Optional[float] = ..., top: _Optional[float] = ..., width: _Optional[float] = ..., height: _Optional[float] = ...) -> None: ...

class TokenIdsItem(_message.Message):
    __slots__ = ("data", "controls")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTROLS_FIELD_NUMBER: _ClassVar[int]
    data: _containers.RepeatedScalarFieldContainer[int]
    controls: _containers.RepeatedCompositeFieldContainer[TokenControl]
    def __init__(self, data: _Optional[_Iterable[int]] = ..., controls: _Optional[_Iterable[_Union[TokenControl, _Mapping]]] = ...) -> None: ...

class TokenControl(_message.Message):
    __slots__ = ("index", "factor")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    index: int
    factor: float
    def __init__(self, index: _Optional[int] = ..., factor: _Optional[float] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("model", "hosting", "prompt", "layers", "tokens", "pooling", "type", "normalize", "contextual_control_threshold", "control_log_additive", "nice")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HOSTING_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    CONTEXTUAL_CONTROL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CONTROL_LOG_ADDITIVE_FIELD_NUMBER: _ClassVar[int]
    NICE_FIELD_NUMBER: _ClassVar[int]
    model: str
    hosting: str
    prompt: Prompt
    layers: _containers.RepeatedScalarFieldContainer[int]
    tokens: bool
    pooling: _containers.RepeatedScalarFieldContainer[str]
    type: str
    normalize: bool
    contextual_control_threshold: float
    control_log_additive: bool
    nice: bool
    def __init__(self, model: _Optional[str] = ..., hosting: _Optional[str] = ..., prompt: _Optional[_Union[Prompt, _Mapping]] = ..., layers: _Optional[_Iterable[int]] = ..., tokens: _Optional[bool] = ..., pooling: _Optional[_Iterable[str]] = ..., type: _Optional[str] = ..., normalize: _Optional[bool] = ..., contextual_control_threshold: _Optional[float] = ..., control_log_additive: _Optional[bool] = ..., nice: _Optional[bool] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("model_version", "embeddings", "tokens", "num_tokens_prompt_total", "timing")
    class EmbeddingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: LayerEmbeddings
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[LayerEmbeddings, _Mapping]] = ...) -> None: ...
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_PROMPT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    embeddings: _containers.MessageMap[str, LayerEmbeddings]
    tokens: TokenList
    num_tokens_prompt_total: int
    timing: RequestTiming
    def __init__(self, model_version: _Optional[str] = ..., embeddings: _Optional[_Mapping[str, LayerEmbeddings]] = ..., tokens: _Optional[_Union[TokenList, _Mapping]] = ..., num_tokens_prompt_total: _Optional[int] = ..., timing: _Optional[_Union[RequestTiming, _Mapping]] = ...) -> None: ...

class LayerEmbeddings(_message.Message):
    __slots__ = ("pooling",)
    class PoolingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Vector
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Vector, _Mapping]] = ...) -> None: ...
    POOLING_FIELD_NUMBER: _ClassVar[int]
    pooling: _containers.MessageMap[str, Vector]
    def __init__(self, pooling: _Optional[_Mapping[str, Vector]] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class TokenList(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class RequestTiming(_message.Message):
    __slots__ = ("queue_seconds", "tokenization_seconds", "inference_seconds", "parked_seconds")
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PARKED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    queue_seconds: float
    tokenization_seconds: float
    inference_seconds: float
    parked_seconds: float
    def __init__(self, queue_seconds: _Optional[float] = ..., tokenization_seconds: _Optional[float] = ..., inference_seconds: _Optional[float] = ..., parked_seconds: _Optional[float] = ...) -> None: ...

class SemanticEmbedRequest(_message.Message):
    __slots__ = ("model", "hosting", "prompt", "representation", "compress_to_size", "normalize", "contextual_control_threshold", "control_log_additive", "nice")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HOSTING_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATION_FIELD_NUMBER: _ClassVar[int]
    COMPRESS_TO_SIZE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    CONTEXTUAL_CONTROL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CONTROL_LOG_ADDITIVE_FIELD_NUMBER: _ClassVar[int]
    NICE_FIELD_NUMBER: _ClassVar[int]
    model: str
    hosting: str
    prompt: Prompt
    representation: str
    compress_to_size: int
    normalize: bool
    contextual_control_threshold: float
    control_log_additive: bool
    nice: bool
    def __init__(self, model: _Optional[str] = ..., hosting: _Optional[str] = ..., prompt: _Optional[_Union[Prompt, _Mapping]] = ..., representation: _Optional[str] = ..., compress_to_size: _Optional[int] = ..., normalize: _Optional[bool] = ..., contextual_control_threshold: _Optional[float] = ..., control_log_additive: _Optional[bool] = ..., nice: _Optional[bool] = ...) -> None: ...

class SemanticEmbedResponse(_message.Message):
    __slots__ = ("model_version", "embedding", "num_tokens_prompt_total", "timing")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_PROMPT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    num_tokens_prompt_total: int
    timing: RequestTiming
    def __init__(self, model_version: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., num_tokens_prompt_total: _Optional[int] = ..., timing: _Optional[_Union[RequestTiming, _Mapping]] = ...) -> None: ...

class BatchSemanticEmbedRequest(_message.Message):
    __slots__ = ("model", "hosting", "prompts", "representation", "compress_to_size", "normalize", "contextual_control_threshold", "control_log_additive", "nice")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HOSTING_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATION_FIELD_NUMBER: _ClassVar[int]
    COMPRESS_TO_SIZE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    CONTEXTUAL_CONTROL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CONTROL_LOG_ADDITIVE_FIELD_NUMBER: _ClassVar[int]
    NICE_FIELD_NUMBER: _ClassVar[int]
    model: str
    hosting: str
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    representation: str
    compress_to_size: int
    normalize: bool
    contextual_control_threshold: float
    control_log_additive: bool
    nice: bool
    def __init__(self, model: _Optional[str] = ..., hosting: _Optional[str] = ..., prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ..., representation: _Optional[str] = ..., compress_to_size: _Optional[int] = ..., normalize: _Optional[bool] = ..., contextual_control_threshold: _Optional[float] = ..., control_log_additive: _Optional[bool] = ..., nice: _Optional[bool] = ...) -> None: ...

class BatchSemanticEmbedResponse(_message.Message):
    __slots__ = ("model_version", "embeddings", "num_tokens_prompt_total", "timing")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_PROMPT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    embeddings: _containers.RepeatedCompositeFieldContainer[Vector]
    num_tokens_prompt_total: int
    timing: RequestTiming
    def __init__(self, model_version: _Optional[str] = ..., embeddings: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., num_tokens_prompt_total: _Optional[int] = ..., timing: _Optional[_Union[RequestTiming, _Mapping]] = ...) -> None: ...

class EmbeddingsInput(_message.Message):
    __slots__ = ("text", "token_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: TokenIdList
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIdList, _Mapping]] = ...) -> None: ...

class EmbeddingsRequest(_message.Message):
    __slots__ = ("model", "input", "dimensions", "hosting", "nice", "user")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    HOSTING_FIELD_NUMBER: _ClassVar[int]
    NICE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    model: str
    input: _containers.RepeatedCompositeFieldContainer[EmbeddingsInput]
    dimensions: int
    hosting: str
    nice: bool
    user: str
    def __init__(self, model: _Optional[str] = ..., input: _Optional[_Iterable[_Union[EmbeddingsInput, _Mapping]]] = ..., dimensions: _Optional[int] = ..., hosting: _Optional[str] = ..., nice: _Optional[bool] = ..., user: _Optional[str] = ...) -> None: ...

class EmbeddingsResponse(_message.Message):
    __slots__ = ("model", "model_version", "embeddings", "usage", "timing")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    embeddings: _containers.RepeatedCompositeFieldContainer[Vector]
    usage: EmbeddingsUsage
    timing: RequestTiming
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., embeddings: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., usage: _Optional[_Union[EmbeddingsUsage, _Mapping]] = ..., timing: _Optional[_Union[RequestTiming, _Mapping]] = ...) -> None: ...

class EmbeddingsUsage(_message.Message):
    __slots__ = ("prompt_tokens", "total_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    total_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ...) -> None: ...

class InstructableEmbedRequest(_message.Message):
    __slots__ = ("model", "hosting", "input", "instruction", "normalize", "contextual_control_threshold", "control_log_additive", "nice")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HOSTING_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    CONTEXTUAL_CONTROL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CONTROL_LOG_ADDITIVE_FIELD_NUMBER: _ClassVar[int]
    NICE_FIELD_NUMBER: _ClassVar[int]
    model: str
    hosting: str
    input: Prompt
    instruction: str
    normalize: bool
    contextual_control_threshold: float
    control_log_additive: bool
    nice: bool
    def __init__(self, model: _Optional[str] = ..., hosting: _Optional[str] = ..., input: _Optional[_Union[Prompt, _Mapping]] = ..., instruction: _Optional[str] = ..., normalize: _Optional[bool] = ..., contextual_control_threshold: _Optional[float] = ..., control_log_additive: _Optional[bool] = ..., nice: _Optional[bool] = ...) -> None: ...

class InstructableEmbedResponse(_message.Message):
    __slots__ = ("model_version", "embedding", "num_tokens_prompt_total", "timing")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_PROMPT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    num_tokens_prompt_total: int
    timing: RequestTiming
    def __init__(self, model_version: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., num_tokens_prompt_total: _Optional[int] = ..., timing: _Optional[_Union[RequestTiming, _Mapping]] = ...) -> None: ...

class ModelsAvailableRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelsAvailableResponse(_message.Message):
    __slots__ = ("models", "versions")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionState]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., versions: _Optional[_Iterable[_Union[ModelVersionState, _Mapping]]] = ...) -> None: ...

class ModelVersionState(_message.Message):
    __slots__ = ("model", "version", "state", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    state: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "description", "max_context_size", "hostings", "image_support", "embedding_types", "version", "num_layers", "hidden_size", "architecture", "untrained", "versions", "precisions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    HOSTINGS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SUPPORT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_TYPES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    UNTRAINED_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    max_context_size: int
    hostings: _containers.RepeatedScalarFieldContainer[str]
    image_support: bool
    embedding_types: _containers.RepeatedScalarFieldContainer[str]
    version: str
    num_layers: int
    hidden_size: int
    architecture: str
    untrained: bool
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionState]
    precisions: _containers.RepeatedCompositeFieldContainer[PoolPrecision]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., max_context_size: _Optional[int] = ..., hostings: _Optional[_Iterable[str]] = ..., image_support: _Optional[bool] = ..., embedding_types: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., num_layers: _Optional[int] = ..., hidden_size: _Optional[int] = ..., architecture: _Optional[str] = ..., untrained: _Optional[bool] = ..., versions: _Optional[_Iterable[_Union[ModelVersionState, _Mapping]]] = ..., precisions: _Optional[_Iterable[_Union[PoolPrecision, _Mapping]]] = ...) -> None: ...

class PoolPrecision(_message.Message):
    __slots__ = ("pool", "precision", "min_cosine")
    POOL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MIN_COSINE_FIELD_NUMBER: _ClassVar[int]
    pool: str
    precision: str
    min_cosine: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, pool: _Optional[str] = ..., precision: _Optional[str] = ..., min_cosine: _Optional[_Iterable[float]] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("model", "prompt", "tokens", "token_ids")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    tokens: bool
    token_ids: bool
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., tokens: _Optional[bool] = ..., token_ids: _Optional[bool] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("tokens", "token_ids")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    tokens: TokenList
    token_ids: TokenIdList
    def __init__(self, tokens: _Optional[_Union[TokenList, _Mapping]] = ..., token_ids: _Optional[_Union[TokenIdList, _Mapping]] = ...) -> None: ...

class TokenIdList(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DetokenizeRequest(_message.Message):
    __slots__ = ("model", "token_ids")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DetokenizeResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: str
    def __init__(self, result: _Optional[str] = ...) -> None: ...

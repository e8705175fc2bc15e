"""Image prompts end to end over gRPC: the real dinov2-small beside the text models, and a small
vision-language model (random weights) in a server of its own, with controls in mixed batches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lamina.server.config import default_home
from lamina.server.convert.packages import DINOV2_SMALL, fetch_checkpoint
from lamina.server.domain import ImageControl, ImageItem, Rect, TextControl, TextItem, TokenIdsItem
from lamina.server.models.loaded import LoadedModel
from lamina.server.server import LaminaServer
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.conftest import DINOV2, MINILM
from tests.integration.support import RunningServer, settings_for
from tests.server.test_convert_vision import png
from tests.tiny_models import SHAPES, VisionShape, convert_tiny_vlm, load_version, numpy_vlm


def image(
    data: bytes, *controls: pb.ImageControl, crop: pb.ImageCrop | None = None
) -> pb.PromptItem:
    return pb.PromptItem(image=pb.ImageItem(data=data, crop=crop, controls=list(controls)))


def text(data: str, *controls: pb.TextControl) -> pb.PromptItem:
    return pb.PromptItem(text=pb.TextItem(data=data, controls=list(controls)))


def rect_control(
    left: float, top: float, width: float, height: float, factor: float
) -> pb.ImageControl:
    return pb.ImageControl(
        rect=pb.Rect(left=left, top=top, width=width, height=height), factor=factor
    )


def request(model: str, *items: pb.PromptItem, **fields: object) -> pb.EmbedRequest:
    fields.setdefault("layers", [-1])
    fields.setdefault("pooling", ["mean"])
    return pb.EmbedRequest(model=model, prompt=pb.Prompt(items=list(items)), **fields)  # type: ignore[arg-type]


def vector(reply: pb.EmbedResponse, layer: int, pooling: str = "mean") -> np.ndarray:
    return np.asarray(reply.embeddings[f"layer_{layer}"].pooling[pooling].values)


@pytest.fixture(scope="module")
async def stub(server: RunningServer) -> AsyncIterator[pb_grpc.EmbedServiceStub]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield pb_grpc.EmbedServiceStub(channel)


async def test_models_available_shows_image_support(stub: pb_grpc.EmbedServiceStub) -> None:
    models = {m.name: m for m in (await stub.ModelsAvailable(pb.ModelsAvailableRequest())).models}
    assert models[DINOV2].image_support and not models[MINILM].image_support
    assert models[DINOV2].architecture == "dinov2" and models[DINOV2].num_layers == 12
    assert not any(m.untrained for m in models.values())


async def test_dinov2_small_embeds_an_image_as_the_original_model_does(
    stub: pb_grpc.EmbedServiceStub, dinov2: LoadedModel
) -> None:
    """Mean pooling over an image's 144 cells equals the original model's mean over its 256
    patches: the area pooling keeps the mean."""
    data = png(11, (300, 220))
    reply = await stub.Embed(request(DINOV2, image(data), layers=[0, -1], tokens=True))
    assert reply.num_tokens_prompt_total == 144
    assert list(reply.tokens.tokens) == ["<|image|>"] * 144
    assert reply.model_version.startswith(f"{DINOV2}@")
    source = fetch_checkpoint(DINOV2_SMALL, default_home() / "packages", progress=lambda _: None)
    graph = onnx.load(str(source))
    name = "/backbone/encoder/layer.11/Add_1_output_0"
    graph.graph.output.append(onnx.helper.make_tensor_value_info(name, 1, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = dinov2.encoder.encode((ImageItem(data),)).images[0].pixels
    (original,) = session.run([name], {"input_image": pixels[None]})
    expected = original[0, 1:].mean(axis=0)
    np.testing.assert_allclose(vector(reply, 12), expected, atol=1e-4 * np.abs(expected).max())


async def test_image_controls_in_a_mixed_batch(stub: pb_grpc.EmbedServiceStub) -> None:
    data = png(12)
    plain = request(DINOV2, image(data))
    suppressed = request(DINOV2, image(data, rect_control(0, 0, 0.5, 1, 0.1)))
    scaled = request(
        DINOV2, image(data, rect_control(0, 0, 0.5, 1, 0.1)), control_log_additive=False
    )
    ones = request(DINOV2, image(data, rect_control(0, 0, 1, 1, 1.0)))
    alone = vector(await stub.Embed(plain), 12)
    replies = await asyncio.gather(*(stub.Embed(r) for r in (plain, suppressed, scaled, ones)))
    together = [vector(r, 12) for r in replies]
    np.testing.assert_allclose(together[0], alone, atol=1e-5)
    np.testing.assert_array_equal(together[3], together[0])  # factor 1 changes nothing
    for moved in together[1:3]:
        cosine = moved @ alone / np.linalg.norm(moved) / np.linalg.norm(alone)
        assert cosine < 0.999
    assert not np.allclose(together[1], together[2], atol=1e-3)  # the two modes differ


@pytest.mark.parametrize(
    ("model", "items", "field", "message"),
    [
        (MINILM, [text("a"), image(b"")], "prompt.items[1].image", "has no image support"),
        (DINOV2, [image(b"not an image")], "prompt.items[0].image.data", "cannot decode"),
        (DINOV2, [text("a")], "prompt.items[0].text", "takes image items only"),
        (
            DINOV2,
            [image(png(1), crop=pb.ImageCrop(x=0, size=10))],
            "prompt.items[0].image.crop",
            "missing: y",
        ),
        (
            DINOV2,
            [image(png(1), crop=pb.ImageCrop(x=150, y=0, size=100))],
            "prompt.items[0].image.crop",
            "leaves the 200 x 150 image",
        ),
        (
            DINOV2,
            [image(png(1), rect_control(0.5, 0, 0.6, 1, 0.5))],
            "prompt.items[0].image.controls[0].rect",
            "within 0..1",
        ),
    ],
)
async def test_bad_images_are_invalid_arguments(
    stub: pb_grpc.EmbedServiceStub,
    model: str,
    items: list[pb.PromptItem],
    field: str,
    message: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Embed(request(model, *items))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in str(error.value.details()) and message in str(error.value.details())
    # The server keeps serving.
    assert vector(await stub.Embed(request(DINOV2, image(png(2)))), 12).shape == (384,)


# A vision-language model of random weights, in a server of its own

VISION = VisionShape()
TEXT = replace(SHAPES[0], positions=512)


@pytest.fixture(scope="module")
async def vlm(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[pb_grpc.EmbedServiceStub, LoadedModel, dict[str, dict[str, np.ndarray]]]]:
    path, weights = convert_tiny_vlm(tmp_path_factory.mktemp("vlm-server"), VISION, TEXT)
    repository = path.parents[1]
    # The same version loaded here gives the reference its ids, pixels and factors.
    local = load_version(path)
    instance = LaminaServer(settings_for(repository))
    port = await instance.start()
    await instance.load_models()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.EmbedServiceStub(channel), local, weights
    await instance.stop(grace_seconds=1)


async def test_a_vision_language_model_over_grpc(
    vlm: tuple[pb_grpc.EmbedServiceStub, LoadedModel, dict[str, dict[str, np.ndarray]]],
) -> None:
    stub, local, weights = vlm
    info = (await stub.ModelsAvailable(pb.ModelsAvailableRequest())).models[0]
    assert info.untrained and info.description.startswith("UNTRAINED") and info.image_support
    data = png(21)
    mixed = request(
        "tiny-vlm",
        text("hel", pb.TextControl(start=0, length=3, factor=0.5)),
        image(data, rect_control(0.5, 0, 0.5, 1, 0.0)),
        pb.PromptItem(token_ids=pb.TokenIdsItem(data=[7, 8])),
        layers=[0, -1],
        pooling=["mean", "last_token"],
        tokens=True,
    )
    plain = request("tiny-vlm", text("hello"), pooling=["last_token"])
    reply, plain_reply = await asyncio.gather(stub.Embed(mixed), stub.Embed(plain))
    assert reply.num_tokens_prompt_total == 1 + 144 + 2
    assert list(reply.tokens.tokens)[:145] == ["hel", *["<|image|>"] * 144]

    prompt = local.encoder.encode(
        (
            TextItem("hel", controls=(TextControl(0, 3, 0.5),)),
            ImageItem(data, controls=(ImageControl(Rect(0.5, 0, 0.5, 1), 0.0),)),
            TokenIdsItem((7, 8)),
        )
    )
    (prepared,) = prompt.images
    assert prompt.control_factors[0] == 0.5 and prepared.patch_factors.min() == 0.0
    expected = numpy_vlm(
        VISION,
        TEXT,
        weights,
        prompt.ids.tolist(),
        [prepared.pixels],
        [1],
        prompt.control_factors.astype(np.float64),
        [prepared.key_factors],
    )
    for layer in (0, TEXT.layers):
        scale = np.abs(expected[layer]).max()
        np.testing.assert_allclose(vector(reply, layer), expected[layer].mean(0), atol=1e-4 * scale)
    np.testing.assert_allclose(
        vector(reply, TEXT.layers, "last_token"), expected[TEXT.layers][-1], atol=1e-3
    )
    hello = local.encoder.encode((TextItem("hello"),))
    plain_expected = numpy_vlm(VISION, TEXT, weights, hello.ids.tolist(), [], [])
    np.testing.assert_allclose(
        vector(plain_reply, TEXT.layers, "last_token"), plain_expected[-1][-1], atol=1e-3
    )

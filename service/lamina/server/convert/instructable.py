"""The manifest's instructable section: how InstructableEmbed turns an instruction and an input
into one sequence (the template), and which layer and pooling give its vector.

- Decoders (causal graphs: the Llama family and Qwen3, causal Gemma 3, the language model of a
  vision-language model) get the instruction, a newline, then the input, pooled as the last
  token of the last layer: in a causal model only the last position has seen the instruction
  and the whole input, and it is what decoder embedding models (E5-Mistral, Qwen3-Embedding) pool.
  Where the folder's sentence-transformers configuration declares prompts and a plain pooling,
  that layer and pooling replace the default: the model was trained so.
- Encoders (bidirectional) get the section only where their sentence-transformers configuration
  declares prompts: then the model was trained to read a text before its input, so an
  instruction there means something, and the section is that semantic embedding's own layer and
  pooling with the instruction directly before the input, as sentence-transformers prepends its
  prompts. An encoder trained on inputs alone (all-MiniLM-L6-v2: no prompts) would read an
  instruction as part of the text to embed, which is no instruction at all, so it gets none.
- Either way only a plain pooling: a semantic embedding with Dense projections or truncation is
  not one Embed row of a layer and pooling, and InstructableEmbed is exactly that.

`lamina prepare` needs no rebuild for the section: `upgraded` derives it from what a manifest of
GRAPH_REVISION or later already records (its architecture and semantic section).
"""

from __future__ import annotations

import dataclasses

from lamina.server.domain import Pooling
from lamina.server.repository.manifest import (
    CONVERTER_REVISION,
    GRAPH_REVISION,
    INPUT,
    INSTRUCTION,
    InstructableConfig,
    Manifest,
    SemanticConfig,
)

DECODER_TEMPLATE = f"{INSTRUCTION}\n{INPUT}"
# sentence-transformers prepends a prompt to the text as it is: its prompts end in their own
# separator ("query: ").
ENCODER_TEMPLATE = f"{INSTRUCTION}{INPUT}"
DECODER_DEFAULT = InstructableConfig(
    layer=-1, pooling=Pooling.LAST_TOKEN, template=DECODER_TEMPLATE
)
# The manifest's architectures whose graphs were causal in every revision up to GRAPH_REVISION.
# Gemma 3 is causal or bidirectional (EmbeddingGemma), which its manifest does not record.
CAUSAL_ARCHITECTURES = frozenset({"llama", "vision-llama"})


def instructable_section(
    *, causal: bool, text_support: bool, semantic: SemanticConfig | None
) -> InstructableConfig | None:
    """The section for a converted model (see the module's docstring); `semantic` is what the
    checkpoint's own sentence-transformers configuration declares, if anything."""
    if not text_support:
        return None  # an image encoder reads no instruction
    trained = _trained_with_prompts(semantic)
    if causal:
        if trained is not None:
            return dataclasses.replace(trained, template=DECODER_TEMPLATE)
        return DECODER_DEFAULT
    return trained


def _trained_with_prompts(semantic: SemanticConfig | None) -> InstructableConfig | None:
    """The semantic embedding's layer and pooling where it declares prompts and pools plainly."""
    if semantic is None or not any(semantic.representations.values()):
        return None
    if semantic.dense or semantic.dimensions is not None:
        return None
    return InstructableConfig(semantic.layer, semantic.pooling, ENCODER_TEMPLATE)


def describe(section: InstructableConfig | None) -> str:
    if section is None:
        return (
            "no instructable embedding: not a decoder, nor an encoder trained with prompts "
            "whose embedding is a plain pooling"
        )
    return (
        f"instructable embedding: {section.pooling.value} of layer {section.layer}, template "
        f"{section.template!r}"
    )


def upgraded(manifest: Manifest) -> Manifest | None:
    """The manifest as this converter would write it for the same graph: with the instructable
    section derived from what it records, at CONVERTER_REVISION. None where the graph itself is
    older than GRAPH_REVISION (the version must be converted again)."""
    if manifest.converter_revision == CONVERTER_REVISION:
        return manifest
    if not GRAPH_REVISION <= manifest.converter_revision < CONVERTER_REVISION:
        return None
    section = manifest.instructable or instructable_section(
        causal=manifest.architecture in CAUSAL_ARCHITECTURES,
        text_support=manifest.text_support,
        semantic=manifest.semantic,
    )
    return dataclasses.replace(
        manifest, instructable=section, converter_revision=CONVERTER_REVISION
    )

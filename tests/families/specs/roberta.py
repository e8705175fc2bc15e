"""RoBERTa (RobertaForMaskedLM, as roberta-base) and XLM-RoBERTa (XLMRobertaModel, as e5 and
bge-m3): BERT's blocks with positions counted from pad_token_id + 1.

Configured as the released checkpoints are (pad_token_id 1, one token type, layer_norm_eps 1e-5,
max_position_embeddings = context + 2). `roberta` keeps its encoder under `roberta.` beside an LM
head and tokenizes with byte-level BPE and RobertaProcessing; `xlm-roberta` is the bare encoder
(with a pooler, as bge-m3 ships it) and a SentencePiece-style unigram tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, processors
from transformers import (
    PreTrainedModel,
    RobertaConfig,
    RobertaForMaskedLM,
    XLMRobertaConfig,
    XLMRobertaModel,
)

from tests.families.reference import (
    FamilySpec,
    Forward,
    randomize,
    save_checkpoint,
    transformers_forward,
)
from tests.families.tiny_tokenizers import byte_level_bpe, unigram

# fairseq's dictionary order, which both families keep: <s> 0, <pad> 1, </s> 2, <unk> 3.
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
TOKENIZER_CONFIG = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "cls_token": "<s>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}
# max_position_embeddings - pad_token_id - 1; the tiny unigram cuts the long prompt into ~360.
CONTEXTS = {"roberta": 256, "xlm-roberta": 384}


def roberta_tokenizer() -> Tokenizer:
    """roberta-base's kind: byte-level BPE, `<s> $A </s>` by RobertaProcessing."""
    tokenizer = byte_level_bpe(specials=SPECIALS)
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", _id(tokenizer, "</s>")),
        ("<s>", _id(tokenizer, "<s>")),
        trim_offsets=True,
        add_prefix_space=False,
    )
    return tokenizer


def _id(tokenizer: Tokenizer, token: str) -> int:
    found = tokenizer.token_to_id(token)
    assert found is not None, token
    return found


def _sizes(tokenizer: Tokenizer, context: int, hidden: int) -> dict[str, int | float]:
    return {
        "vocab_size": tokenizer.get_vocab_size(),
        "hidden_size": hidden,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,  # head size 11 or 9
        "intermediate_size": 52,
        "max_position_embeddings": context + 2,
        "type_vocab_size": 1,
        "layer_norm_eps": 1e-5,
        "pad_token_id": _id(tokenizer, "<pad>"),
        "bos_token_id": _id(tokenizer, "<s>"),
        "eos_token_id": _id(tokenizer, "</s>"),
    }


def _save(folder: Path, model: PreTrainedModel, tokenizer: Tokenizer) -> Forward:
    randomize(model)
    save_checkpoint(folder, model, tokenizer, **TOKENIZER_CONFIG)
    return transformers_forward(model)


def build_roberta(folder: Path) -> Forward:
    tokenizer = roberta_tokenizer()
    model = RobertaForMaskedLM(RobertaConfig(**_sizes(tokenizer, CONTEXTS["roberta"], 44)))
    return _save(folder, model, tokenizer)


def build_xlm_roberta(folder: Path) -> Forward:
    tokenizer = unigram(specials=SPECIALS, bos="<s>", eos="</s>", unk="<unk>")
    # Hidden 36: the hidden states of its ~360-token prompt keep the fixture under 1 MB.
    config = XLMRobertaConfig(**_sizes(tokenizer, CONTEXTS["xlm-roberta"], 36))
    model = XLMRobertaModel(config, add_pooling_layer=True)
    return _save(folder, model, tokenizer)


SPECS = [
    FamilySpec("roberta", "RobertaForMaskedLM", build_roberta, {"context": CONTEXTS["roberta"]}),
    FamilySpec(
        "xlm-roberta", "XLMRobertaModel", build_xlm_roberta, {"context": CONTEXTS["xlm-roberta"]}
    ),
]

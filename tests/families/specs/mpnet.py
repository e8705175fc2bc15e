"""MPNet (MPNetForMaskedLM, as all-mpnet-base-v2 names its bare encoder): BERT-style blocks under
other names, positions from 2, no token types, and one relative position bias (32 T5 buckets up
to distance 128) added to every layer's scores.

Configured as all-mpnet-base-v2 is (layer_norm_eps 1e-5, pad 1, max_position_embeddings =
context + 2, a pooler the hidden states do not use); the ~120-token prompt reaches the
logarithmic buckets and their edges at distances 16, 32 and 64. The weights are saved the way
sentence-transformers saves them: the bare encoder's names under a MaskedLM architecture.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import MPNetConfig, MPNetModel

from tests.families.reference import (
    FamilySpec,
    Forward,
    randomize,
    save_checkpoint,
    transformers_forward,
)
from tests.families.tiny_tokenizers import wordpiece

# MPNet's vocabulary starts <s> 0, <pad> 1, </s> 2, <unk> 3; MPNetEmbeddings pads at 1.
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
CONTEXT = 256  # max_position_embeddings - 2


def build(folder: Path) -> Forward:
    tokenizer = wordpiece(
        cls="<s>", sep="</s>", pad="<pad>", unk="<unk>", mask="<mask>", id_order=SPECIALS
    )
    config = MPNetConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=38,
        num_hidden_layers=3,
        num_attention_heads=2,  # head size 19
        intermediate_size=50,
        max_position_embeddings=CONTEXT + 2,
        layer_norm_eps=1e-5,
        relative_attention_num_buckets=32,
        pad_token_id=tokenizer.token_to_id("<pad>"),
        bos_token_id=tokenizer.token_to_id("<s>"),
        eos_token_id=tokenizer.token_to_id("</s>"),
    )
    model = MPNetModel(config)
    randomize(model)
    save_checkpoint(
        folder,
        model,
        tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    # all-mpnet-base-v2's config.json names MPNetForMaskedLM over the bare encoder's weights.
    config_file = folder / "config.json"
    saved = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**saved, "architectures": ["MPNetForMaskedLM"]}, indent=2))
    return transformers_forward(model)


SPECS = [FamilySpec("mpnet", "MPNetForMaskedLM", build, {"context": CONTEXT, "buckets": 32})]

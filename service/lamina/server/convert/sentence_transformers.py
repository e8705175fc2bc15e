"""The semantic embedding a sentence-transformers folder declares: its modules (`modules.json`),
the pooling module's config (`1_Pooling/config.json`), a Normalize module, and the prompts of
`config_sentence_transformers.json`.

Only what Lamina serves exactly is taken over: a transformer, one pooling mode Lamina has, and
optionally Normalize. Anything else (a Dense projection, CLS pooling, several modes) leaves the
model without a semantic embedding, and the conversion says why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lamina.server.convert.converted import Progress
from lamina.server.domain import Pooling, Representation
from lamina.server.repository.manifest import SemanticConfig

_MODULE = "sentence_transformers.models."
# sentence-transformers' pooling modes -> Lamina's poolings with the same formula.
_POOLING_MODES = {
    "pooling_mode_mean_tokens": Pooling.MEAN,
    "pooling_mode_max_tokens": Pooling.MAX,
    "pooling_mode_weightedmean_tokens": Pooling.WEIGHTED_MEAN,  # weights 1..n, as ours
    "pooling_mode_lasttoken": Pooling.LAST_TOKEN,
}


def read_semantic(folder: Path, progress: Progress) -> SemanticConfig | None:
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules: list[dict[str, Any]] = json.loads(modules_file.read_text())
    kinds = [str(m.get("type", "")).removeprefix(_MODULE) for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        progress(f"no semantic embedding: sentence-transformers modules {kinds} are not served")
        return None
    pooling_config = json.loads((folder / modules[1]["path"] / "config.json").read_text())
    modes = [mode for mode, on in pooling_config.items() if mode.startswith("pooling_mode") and on]
    if len(modes) != 1 or modes[0] not in _POOLING_MODES:
        progress(f"no semantic embedding: sentence-transformers pooling {modes} is not served")
        return None
    semantic = SemanticConfig(
        layer=-1,  # the Transformer module's output is the last hidden state
        pooling=_POOLING_MODES[modes[0]],
        normalize=kinds[-1] == "Normalize",
        representations=_instructions(folder / "config_sentence_transformers.json"),
    )
    progress(
        f"semantic embedding: {semantic.pooling.value} of the last layer"
        + (", normalised" if semantic.normalize else "")
    )
    return semantic


def _instructions(path: Path) -> dict[Representation, str]:
    """sentence-transformers' prompts: `query` and `document` by name, the default prompt (if
    any) for symmetric use."""
    config: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    prompts: dict[str, str] = config.get("prompts") or {}
    default = config.get("default_prompt_name")
    return {
        Representation.SYMMETRIC: prompts.get(default, "") if default else "",
        Representation.DOCUMENT: prompts.get("document", prompts.get("passage", "")),
        Representation.QUERY: prompts.get("query", ""),
    }

"""A batch's work on a real model: padding never reaches a result, depths mix."""

from __future__ import annotations

import asyncio

import numpy as np

from lamina.server.domain import Pooling, TextItem
from lamina.server.models.inference import run_batch
from lamina.server.models.loaded import LoadedModel
from lamina.server.prompt import EncodedPrompt
from lamina.server.scheduling.job import Job
from tests.jobs import make_job

ALL_POOLINGS = tuple(Pooling)


def _encode(model: LoadedModel, text: str) -> EncodedPrompt:
    return model.encoder.encode((TextItem(text),))


async def test_padding_in_a_batch_never_counts(minilm: LoadedModel) -> None:
    """A short prompt batched with a long one pools exactly as when it runs alone."""
    loop = asyncio.get_running_loop()
    short = _encode(minilm, "short")
    long = _encode(minilm, "a much longer prompt that forces the short one to be padded " * 3)
    assert long.length > 3 * short.length

    def job(prompt: EncodedPrompt) -> Job:
        return make_job(loop, prompt=prompt, layers=(0, 3, 6), pooling=ALL_POOLINGS)

    alone = run_batch(minilm, [job(short)])[0]
    together = run_batch(minilm, [job(long), job(short)])[1]
    for layer in (0, 3, 6):
        for pooling in ALL_POOLINGS:
            np.testing.assert_allclose(
                together[layer][pooling],
                alone[layer][pooling],
                rtol=1e-4,
                atol=1e-5,
                err_msg=f"layer {layer} {pooling}",
            )


async def test_a_batch_mixing_depths_runs_to_the_deepest_and_answers_each(
    minilm: LoadedModel,
) -> None:
    loop = asyncio.get_running_loop()
    shallow_prompt = _encode(minilm, "only the first block")
    deep_prompt = _encode(minilm, "every block, please")
    alone = run_batch(minilm, [make_job(loop, prompt=shallow_prompt, layers=(1,))])[0]
    shallow, deep = run_batch(
        minilm,
        [
            make_job(loop, prompt=shallow_prompt, layers=(1,)),
            make_job(loop, prompt=deep_prompt, layers=(6,)),
        ],
    )
    deep_alone = run_batch(minilm, [make_job(loop, prompt=deep_prompt, layers=(6,))])[0]
    assert list(shallow) == [1] and list(deep) == [6]
    np.testing.assert_allclose(shallow[1][Pooling.MEAN], alone[1][Pooling.MEAN], atol=1e-5)
    np.testing.assert_allclose(deep[6][Pooling.MEAN], deep_alone[6][Pooling.MEAN], atol=1e-5)

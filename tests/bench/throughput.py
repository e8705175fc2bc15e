"""`make bench`: side-by-side measurements in one run, reported as ratios (never asserted).

1. Throughput: Lamina over gRPC against a bare ONNX Runtime session on the same graph
   (all-minilm-l6-v2, 32 requests x 128 tokens, last layer).
2. Cost that follows depth: on smollm2-135m-instruct (30 blocks), a batch asking for
   `layers=[1]` against the same batch asking for `layers=[-1]`, bare and over gRPC.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from lamina.server.config import default_home
from lamina.server.models.loaded import LoadedModel
from lamina.server.models.store import list_versions
from lamina.server.prompt import EncodedPrompt
from lamina.server.runtime.batch import Batch
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.integration.support import wait_until_serving

MINILM = "all-minilm-l6-v2"
SMOLLM2 = "smollm2-135m-instruct"


def median_seconds(label: str, run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
        print(f"  {label} {i + 1}/{repeats}: {times[-1] * 1000:.0f} ms", flush=True)
    return statistics.median(times)


def random_ids(rng: np.random.Generator, length: int) -> list[int]:
    return rng.integers(1000, 20000, length).tolist()


def bare_seconds(model: LoadedModel, rows: int, length: int, layer: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    prompts = [
        EncodedPrompt(np.asarray(random_ids(rng, length)), np.ones(length, np.float32))
        for _ in range(rows)
    ]
    batch = Batch.pad(prompts, [True] * rows, model.manifest.pad_token_id)
    label = f"bare {model.name} layers=[{layer}]"
    return median_seconds(label, lambda: model.session.run(batch, [layer]), repeats)


def served_seconds(
    target: str, model: str, rows: int, length: int, layer: int, repeats: int
) -> float:
    rng = np.random.default_rng(1)

    async def round_trip() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.EmbedServiceStub(channel)
            requests = [
                pb.EmbedRequest(
                    model=model,
                    prompt=pb.Prompt(
                        items=[
                            pb.PromptItem(token_ids=pb.TokenIdsItem(data=random_ids(rng, length)))
                        ]
                    ),
                    layers=[layer],
                    pooling=["mean"],
                )
                for _ in range(rows)
            ]
            await asyncio.gather(*(stub.Embed(r) for r in requests))

    label = f"Lamina {model} layers=[{layer}], {rows} concurrent requests"
    return median_seconds(label, lambda: asyncio.run(round_trip()), repeats)


def load(repository: Path, name: str) -> LoadedModel:
    entry = list_versions(repository)[name][-1]
    return LoadedModel.load(entry, threads=os.cpu_count() or 1, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=default_home() / "models")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--port", type=int, default=50071)
    args = parser.parse_args()
    repo, repeats = args.model_repository, args.repeats

    print(f"[1/4] bare ONNX Runtime, {MINILM}, 32 x 128 tokens", flush=True)
    minilm = load(repo, MINILM)
    bare_minilm = bare_seconds(minilm, 32, 128, 6, repeats)
    del minilm
    print(f"[2/4] bare ONNX Runtime, {SMOLLM2}, 8 x 128 tokens, layers [1] and [-1]", flush=True)
    smollm2 = load(repo, SMOLLM2)
    bare_shallow = bare_seconds(smollm2, 8, 128, 1, repeats)
    bare_deep = bare_seconds(smollm2, 8, 128, 30, repeats)
    del smollm2

    target = f"127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lamina.server",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
            "--metrics-port",
            "0",
            "--model-repository",
            str(repo),
            "--log-level",
            "WARNING",
        ],
    )
    try:
        asyncio.run(wait_until_serving(target, timeout=300))
        print(f"[3/4] Lamina over gRPC, {MINILM}, 32 concurrent requests of 128 tokens", flush=True)
        served_minilm = served_seconds(target, MINILM, 32, 128, -1, repeats)
        print(f"[4/4] Lamina over gRPC, {SMOLLM2}, 8 concurrent requests of 128 tokens", flush=True)
        served_shallow = served_seconds(target, SMOLLM2, 8, 128, 1, repeats)
        served_deep = served_seconds(target, SMOLLM2, 8, 128, -1, repeats)
    finally:
        server.terminate()
        server.wait(30)

    tokens = 32 * 128
    print()
    print(f"throughput, {MINILM} 32 x 128 tokens, last layer")
    print(f"  bare ONNX Runtime       {tokens / bare_minilm:9.0f} tokens/s")
    print(f"  Lamina over gRPC        {tokens / served_minilm:9.0f} tokens/s")
    print(f"  ratio Lamina / bare     {bare_minilm / served_minilm:9.2f}")
    print(f"layer-depth cost, {SMOLLM2} 8 x 128 tokens (target: layers=[1] <= 0.15 x layers=[-1])")
    print(f"  bare   [1] / [-1]       {bare_shallow / bare_deep:9.3f}")
    print(f"  Lamina [1] / [-1]       {served_shallow / served_deep:9.3f}")


if __name__ == "__main__":
    main()

"""`make bench`: Lamina over gRPC against a bare ONNX Runtime session on the same graph.

Both run in one invocation on the same machine, so the ratio is meaningful even where absolute
numbers are noisy. Reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
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


def bare_tokens_per_second(model: LoadedModel, rows: int, length: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    prompts = [
        EncodedPrompt(rng.integers(1000, 20000, length), np.ones(length, np.float32))
        for _ in range(rows)
    ]
    batch = Batch.pad(prompts, [True] * rows, 0)
    last = model.manifest.num_layers
    model.session.run(batch, [last])  # warm-up
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        model.session.run(batch, [last])
        times.append(time.perf_counter() - started)
        print(f"  bare ONNX Runtime run {i + 1}/{repeats}: {times[-1] * 1000:.0f} ms", flush=True)
    return rows * length / statistics.median(times)


async def lamina_tokens_per_second(
    target: str, model: str, rows: int, length: int, repeats: int
) -> float:
    rng = np.random.default_rng(1)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EmbedServiceStub(channel)

        def request() -> pb.EmbedRequest:
            ids = rng.integers(1000, 20000, length - 2).tolist()
            item = pb.PromptItem(token_ids=pb.TokenIdsItem(data=ids))
            return pb.EmbedRequest(
                model=model, prompt=pb.Prompt(items=[item]), layers=[-1], pooling=["mean"]
            )

        await asyncio.gather(*(stub.Embed(request()) for _ in range(rows)))  # warm-up
        times = []
        for i in range(repeats):
            started = time.perf_counter()
            await asyncio.gather(*(stub.Embed(request()) for _ in range(rows)))
            times.append(time.perf_counter() - started)
            print(
                f"  Lamina round {i + 1}/{repeats}: {rows} concurrent requests in "
                f"{times[-1] * 1000:.0f} ms",
                flush=True,
            )
    return rows * length / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--model-repository", type=Path, default=default_home() / "models")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--port", type=int, default=50071)
    args = parser.parse_args()

    entry = list_versions(args.model_repository)[args.model][-1]
    print(f"[1/2] bare ONNX Runtime session, {args.rows} x {args.length} tokens, last layer")
    model = LoadedModel.load(entry, threads=os.cpu_count() or 1, providers=["CPUExecutionProvider"])
    bare = bare_tokens_per_second(model, args.rows, args.length, args.repeats)
    del model

    print(f"[2/2] Lamina over gRPC, {args.rows} concurrent requests of {args.length} tokens")
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
            str(args.model_repository),
            "--log-level",
            "WARNING",
        ],
    )
    try:
        asyncio.run(wait_until_serving(target, timeout=120))
        served = asyncio.run(
            lamina_tokens_per_second(target, args.model, args.rows, args.length, args.repeats)
        )
    finally:
        server.terminate()
        server.wait(30)

    print()
    print(f"bare ONNX Runtime : {bare:9.0f} tokens/s")
    print(f"Lamina over gRPC  : {served:9.0f} tokens/s")
    print(f"ratio Lamina/bare : {served / bare:9.2f}")


if __name__ == "__main__":
    main()

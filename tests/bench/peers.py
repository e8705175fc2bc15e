"""The libraries a user could install instead of Lamina, timed and checked on Lamina's own texts.

Runs in the reference environment (.venv-reference: torch, transformers, sentence-transformers,
optimum-intel/OpenVINO, fastembed, llama-cpp-python), never in Lamina's. tests/bench/run.py calls

    .venv-reference/bin/python tests/bench/peers.py --minilm DIR --smollm2 GGUF \
        --texts TEXTS.json --output OUT.json [--seconds S] [--curves]

and reads OUT.json: per model, the fp32 transformers reference vectors of the texts and, per peer,
tokens per second at saturation (all texts in one call) and the cosine of its vectors to the
reference; or why that peer was skipped. Nothing here reaches a hub: HF_HUB_OFFLINE is set, and
fastembed is given a local ONNX export of the same weights.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MINILM = "all-minilm-l6-v2"
SMOLLM2 = "smollm2-135m-instruct"
# MiniLM's position table has 512 entries (Lamina's context); sentence-transformers' own config
# says 256, which would cut the 512-token curve point in half.
MINILM_CONTEXT = 512
LENGTHS = [4, 16, 64, 128, 256, 512]
CLIENTS = [1, 2, 4, 8, 16, 32, 64, 128]
CURVE_BATCH = 32  # texts in flight for the length curve
CURVE_TOKENS = 128  # tokens per text for the concurrency curve
CURVE_SECONDS = 2.0
SMOLLM2_CALIBRATION_TOKENS = 2048

Vectors = np.ndarray[Any, np.dtype[np.float32]]


def log(message: str) -> None:
    print(f"[peers] {message}", file=sys.stderr, flush=True)


class Skipped(Exception):
    """A peer that cannot run here, for a reason worth printing in the table."""


# Every hidden state (embeddings first) of one text, alone, [positions, hidden] each.
States = Callable[[str], list[Vectors]]


@dataclass
class Peer:
    encode: Callable[[list[str]], Vectors]  # one vector per text, in order, any norm
    count: Callable[[list[str]], int]  # tokens this peer's tokenizer makes of them, specials too
    states: States | None = None  # where the peer can be held to Lamina's gate (gate_cosine)


def native_bf16() -> bool:
    """Whether the CPU does bf16 matmuls in hardware; without it torch emulates them (slowly)."""
    flags: set[str] = set()
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def no_bf16() -> Skipped:
    return Skipped(
        "CPU has neither avx512_bf16 nor amx_bf16: torch would emulate bf16, slower than fp32"
    )


def throughput(peer: Peer, texts: list[str], seconds: float) -> float:
    """Tokens per second of one call on all texts, repeated for about `seconds` after a warm-up."""
    tokens = peer.count(texts)
    peer.encode(texts)  # warm-up: lazy compilation, allocator, thread pools
    calls = 0
    started = time.perf_counter()
    while True:
        peer.encode(texts)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return tokens * calls / elapsed


def normalised(vectors: Vectors) -> Vectors:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def cosines(vectors: Vectors, reference: Vectors) -> dict[str, float]:
    per_text = np.sum(normalised(vectors) * normalised(reference), axis=1)
    return {"min_cosine": float(per_text.min()), "mean_cosine": float(per_text.mean())}


def calibration_texts() -> list[str]:
    """Lamina's calibration set (service/lamina/server/convert/calibration.py), the long prompt
    last: what Lamina's gate measures a reduced precision on."""
    path = Path(__file__).resolve().parents[2] / "service/lamina/server/convert/calibration.py"
    namespace = runpy.run_path(str(path))  # no lamina in this environment: the file alone
    return [*namespace["TEXTS"], namespace["long_text"]()]


def gate_cosine(candidate: States, reference: States) -> float:
    """The figure Lamina's gate reads (convert/fidelity.py), for a peer: per hidden state, the
    lowest cosine to the fp32 reference of any one position and of a text's mean, over the
    calibration set; the lowest of these over all hidden states."""
    lowest = 1.0
    for text in calibration_texts():
        for got, expected in zip(candidate(text), reference(text), strict=True):
            a, b = got.astype(np.float64), expected.astype(np.float64)
            dot = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            mean = cosines(a.mean(0, keepdims=True), b.mean(0, keepdims=True))["min_cosine"]
            lowest = min(lowest, float(np.nan_to_num(dot, nan=-1.0).min()), mean)
    return lowest


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def measure(
    model: str,
    name: str,
    build: Callable[[], Peer],
    texts: list[str],
    reference: Vectors,
    seconds: float,
    reference_states: States | None = None,
) -> dict[str, object]:
    """One table row; a peer that fails is recorded as skipped and the run goes on. With
    `reference_states` (fp32), a reduced-precision peer's row also says what Lamina's gate
    would measure of it."""
    log(f"{model}: {name}: start")
    try:
        peer = build()
        vectors = peer.encode(texts)
        row: dict[str, object] = {"name": name, **cosines(vectors, reference)}
        row["tokens_per_second"] = throughput(peer, texts, seconds)
        if peer.states is not None and reference_states is not None:
            log(f"{model}: {name}: every hidden state of the calibration set, against fp32")
            row["gate_cosine"] = gate_cosine(peer.states, reference_states)
    except Skipped as skipped:
        log(f"{model}: {name}: skipped: {skipped}")
        return {"name": name, "skipped": str(skipped)}
    except Exception as error:  # any peer's failure is a finding, not the end of the run
        log(f"{model}: {name}: failed: {first_line(error)}")
        return {"name": name, "skipped": first_line(error)}
    log(
        f"{model}: {name}: {row['tokens_per_second']:.0f} tokens/s, "
        f"cosine min {row['min_cosine']:.6f} mean {row['mean_cosine']:.6f}"
    )
    return row


# all-MiniLM-L6-v2 -----------------------------------------------------------------------------


def sentence_transformer(folder: Path, **kwargs: Any) -> Peer:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", **kwargs)
    model.max_seq_length = MINILM_CONTEXT

    def encode(texts: list[str]) -> Vectors:
        return model.encode(texts, batch_size=len(texts), convert_to_numpy=True)

    def count(texts: list[str]) -> int:
        return int(model.preprocess(texts)["attention_mask"].sum())  # as encode() tokenizes

    def states(text: str) -> list[Vectors]:
        import torch

        features = model.preprocess([text])  # cut at MINILM_CONTEXT, as Lamina cuts it
        with torch.inference_mode():
            out = model[0].auto_model(**features, output_hidden_states=True)
        return [state[0].float().numpy() for state in out.hidden_states]

    return Peer(encode, count, states)


def st_fp32(folder: Path, onnx_dir: Path) -> Peer:
    return sentence_transformer(folder)


def st_bf16(folder: Path, onnx_dir: Path) -> Peer:
    if not native_bf16():
        raise no_bf16()
    import torch

    return sentence_transformer(folder, model_kwargs={"dtype": torch.bfloat16})


def st_onnx(folder: Path, onnx_dir: Path) -> Peer:
    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError as error:
        # optimum-onnx (the only provider of optimum.onnxruntime) pins transformers<4.58, and
        # sentence-transformers 6 needs transformers>=5: pip cannot install both.
        raise Skipped(
            "sentence-transformers[onnx] not installable beside sentence-transformers 6 "
            "(optimum-onnx 0.1.0 needs transformers<4.58): " + first_line(error)
        ) from error
    # Exports to ONNX in memory; `folder` is left as it is.
    return sentence_transformer(folder, backend="onnx")


def st_openvino(folder: Path, onnx_dir: Path) -> Peer:
    # optimum-intel converts the safetensors to OpenVINO IR in memory at load (no hub, no files).
    return sentence_transformer(folder, backend="openvino")


class BertForOnnx:
    """Wraps BertModel so that tracing sees plain tensors in, last_hidden_state out."""

    @staticmethod
    def export(folder: Path, target: Path) -> None:
        import torch
        from transformers import AutoModel

        bert = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()

        class Wrapper(torch.nn.Module):  # type: ignore[misc]  # torch is untyped in .venv
            def __init__(self) -> None:
                super().__init__()
                self.bert = bert

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                # A ready 4D additive mask: transformers 5's own mask builder misreads traced
                # shapes (IndexError in sdpa_mask) under torch.onnx's tracer.
                bias = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(
                    torch.float32
                ).min
                return self.bert(
                    input_ids=input_ids, attention_mask=bias, token_type_ids=token_type_ids
                ).last_hidden_state

        # eval() on the wrapper too: export restores the wrapper's (training) mode recursively,
        # which would switch dropout on in `bert` afterwards.
        wrapper = Wrapper().eval()
        ids = torch.ones(2, 8, dtype=torch.long)
        names = ["input_ids", "attention_mask", "token_type_ids"]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
            torch.onnx.export(
                wrapper,
                (ids, ids, torch.zeros_like(ids)),
                str(target / "model.onnx"),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={
                    n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]
                },
                opset_version=17,
                dynamo=False,  # the dynamo exporter needs onnxscript, which nothing else needs
            )
        for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
            shutil.copy(folder / name, target / name)
        shutil.copy(folder / "config.json", target / "config.json")


def fastembed_peer(folder: Path, onnx_dir: Path) -> Peer:
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    if not (onnx_dir / "model.onnx").exists():
        BertForOnnx.export(folder, onnx_dir)
    name = "lamina-bench/all-minilm-l6-v2"  # any name fastembed does not ship
    if name not in {m["model"] for m in TextEmbedding.list_supported_models()}:
        TextEmbedding.add_custom_model(
            model=name,
            pooling=PoolingType.MEAN,
            normalization=True,
            sources=ModelSource(hf="none/offline"),  # never fetched: specific_model_path wins
            dim=384,
            model_file="model.onnx",
        )
    model = TextEmbedding(model_name=name, specific_model_path=str(onnx_dir))
    tokenizer = model.model.tokenizer  # type: ignore[attr-defined]

    def encode(texts: list[str]) -> Vectors:
        return np.stack(list(model.embed(texts, batch_size=len(texts))))

    def count(texts: list[str]) -> int:
        return sum(sum(e.attention_mask) for e in tokenizer.encode_batch(texts))

    return Peer(encode, count)


MINILM_PEERS: dict[str, Callable[[Path, Path], Peer]] = {
    "sentence-transformers torch fp32": st_fp32,
    "sentence-transformers torch bf16": st_bf16,
    "sentence-transformers onnx": st_onnx,
    "sentence-transformers openvino": st_openvino,
    "fastembed onnxruntime": fastembed_peer,
}


def minilm(
    folder: Path, onnx_dir: Path, texts: list[str], seconds: float
) -> tuple[dict[str, object], str | None]:
    """The MiniLM section and the name of the fastest peer that worked."""
    log(f"{MINILM}: reference (sentence-transformers torch fp32)")
    fp32 = st_fp32(folder, onnx_dir)
    reference = normalised(fp32.encode(texts))
    rows = []
    fastest: tuple[float, str] | None = None
    for name, build in MINILM_PEERS.items():
        row = measure(
            MINILM,
            name,
            functools.partial(build, folder, onnx_dir),
            texts,
            reference,
            seconds,
            fp32.states if "bf16" in name else None,
        )
        rows.append(row)
        speed = row.get("tokens_per_second")
        if isinstance(speed, float) and (fastest is None or speed > fastest[0]):
            fastest = (speed, name)
    section = {"reference": reference.tolist(), "peers": rows}
    return section, fastest[1] if fastest else None


# SmolLM2-135M-Instruct ------------------------------------------------------------------------


def transformers_decoder(gguf: Path, dtype_name: str) -> tuple[Peer, Peer]:
    """(mean, last token) of the last hidden state, from one forward of all texts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, dtype_name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.padding_side = "right"  # causal: right padding leaves the real tokens' states alone
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # transformers dequantizes the GGUF's weights.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    model.eval()

    # The GGUF says add_bos_token false, which llama.cpp and Lamina follow; transformers' GGUF
    # tokenizer prepends a BOS regardless. Without it, all embed the same token ids.
    def states(texts: list[str]) -> tuple[Vectors, Vectors]:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.model(**batch, output_hidden_states=True)
        hidden = out.hidden_states[-1].float()  # after the final norm in transformers
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = (hidden * mask).sum(1) / mask.sum(1)
        last = hidden[torch.arange(len(texts)), batch["attention_mask"].sum(1) - 1]
        return mean.numpy(), last.numpy()

    def count(texts: list[str]) -> int:
        batch = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        return int(batch["attention_mask"].sum())

    def every_state(text: str) -> list[Vectors]:
        # Cut where Lamina's calibration cuts a prompt (its MAX_CALIBRATION_TOKENS).
        batch = tokenizer([text], return_tensors="pt", add_special_tokens=False)
        batch = {k: v[:, :SMOLLM2_CALIBRATION_TOKENS] for k, v in batch.items()}
        with torch.inference_mode():
            out = model.model(**batch, output_hidden_states=True)
        return [state[0].float().numpy() for state in out.hidden_states]

    return (
        Peer(lambda texts: states(texts)[0], count, every_state),
        Peer(lambda texts: states(texts)[1], count),
    )


def transformers_reference(gguf: Path, texts: list[str]) -> tuple[Vectors, Vectors]:
    """One text per forward: no padding at all in the reference."""
    mean, last = transformers_decoder(gguf, "float32")
    return (
        normalised(np.concatenate([mean.encode([t]) for t in texts])),
        normalised(np.concatenate([last.encode([t]) for t in texts])),
    )


def llama_cpp(gguf: Path, pooling: str, texts: list[str]) -> Peer:
    """llama.cpp's own pooling (MEAN or LAST) of its final normed hidden state."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    lengths = [len(vocab.tokenize(t.encode("utf-8"))) for t in texts]
    if min(lengths) == 0:
        # 0.3.36 sends the empty batch to llama_decode (-1, "n_tokens == 0"), and the process
        # then aborts at exit ("double free or corruption"): never let it get that far.
        raise Skipped("a text tokenizes to no tokens, which llama-cpp-python 0.3.36 cannot embed")
    # embed() packs texts, one sequence each, into decodes of up to n_batch tokens, and each must
    # fit whole. llama.cpp's default 512 is faster here than one decode of all texts (2560 tokens:
    # 113 vs 160 tokens/s), whose masked attention spans every sequence. Sizes that are not a
    # multiple of 512 (2083) abort in context creation: GGML_ASSERT(ggml_can_mul_mat(a, b)) in
    # build_pooling. n_threads is left at the library's default (half the cores: faster here).
    size = 512 * -(-max(lengths) // 512)
    llm = llama_cpp.Llama(
        model_path=str(gguf),
        embedding=True,
        pooling_type=getattr(llama_cpp, f"LLAMA_POOLING_TYPE_{pooling}"),
        n_ctx=size,
        n_batch=size,
        n_ubatch=size,
        verbose=False,
    )

    def encode(texts: list[str]) -> Vectors:
        return np.asarray(llm.embed(texts), dtype=np.float32)

    def count(texts: list[str]) -> int:
        return sum(len(llm.tokenize(t.encode("utf-8"))) for t in texts)  # as embed() does

    return Peer(encode, count)


def llama_worker(gguf: Path, pooling: str, texts: list[str], seconds: float) -> dict[str, object]:
    try:
        peer = llama_cpp(gguf, pooling, texts)
    except Skipped as skipped:
        return {"skipped": str(skipped)}
    vectors = peer.encode(texts)
    return {"vectors": vectors.tolist(), "tokens_per_second": throughput(peer, texts, seconds)}


def llama_row(
    name: str, pooling: str, args: argparse.Namespace, texts: list[str], reference: Vectors
) -> dict[str, object]:
    """llama.cpp in a child process: its GGML_ASSERTs abort the whole process, not just a call."""
    log(f"{SMOLLM2}: {name}: start")
    command = [sys.executable, __file__, "--llama-worker", pooling, "--smollm2", str(args.smollm2)]
    command += ["--texts", str(args.texts), "--seconds", str(args.seconds)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [
            line for line in done.stderr.splitlines() if "GGML_ASSERT" in line or "Error" in line
        ]
        why = lines[0].split("/")[-1] if lines else f"exit status {done.returncode}"
        log(f"{SMOLLM2}: {name}: failed: {why}")
        return {"name": name, "skipped": f"llama-cpp-python crashed: {why}"}
    data = json.loads(done.stdout)
    if "skipped" in data:
        log(f"{SMOLLM2}: {name}: skipped: {data['skipped']}")
        return {"name": name, "skipped": data["skipped"]}
    row = {"name": name, "tokens_per_second": data["tokens_per_second"]}
    row.update(cosines(np.asarray(data["vectors"], dtype=np.float32), reference))
    log(
        f"{SMOLLM2}: {name}: {row['tokens_per_second']:.0f} tokens/s, "
        f"cosine min {row['min_cosine']:.6f} mean {row['mean_cosine']:.6f}"
    )
    return row


def smollm2(args: argparse.Namespace, texts: list[str]) -> dict[str, object]:
    gguf, seconds = args.smollm2, args.seconds
    log(f"{SMOLLM2}: reference (transformers fp32, one text per forward)")
    reference, reference_last = transformers_reference(gguf, texts)

    def torch_mean(dtype: str) -> Callable[[], Peer]:
        def build() -> Peer:
            if dtype == "bfloat16" and not native_bf16():
                raise no_bf16()
            return transformers_decoder(gguf, dtype)[0]

        return build

    fp32_states = transformers_decoder(gguf, "float32")[0].states
    peers: list[tuple[str, Callable[[], Peer], States | None]] = [
        ("transformers torch fp32", torch_mean("float32"), None),
        ("transformers torch bf16", torch_mean("bfloat16"), fp32_states),
    ]
    rows = [
        measure(SMOLLM2, name, build, texts, reference, seconds, states)
        for name, build, states in peers
    ]
    rows.append(llama_row("llama-cpp-python mean", "MEAN", args, texts, reference))
    rows.append(llama_row("llama-cpp-python last token", "LAST", args, texts, reference_last))
    return {
        "reference": reference.tolist(),
        "reference_last_token": reference_last.tolist(),
        "peers": rows,
    }


# Curves ---------------------------------------------------------------------------------------


class RssSampler:
    """Peak resident memory per phase: ru_maxrss only grows, so VmRSS is sampled in a thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def current_kib() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, self.current_kib())

    @contextmanager
    def phase(self) -> Iterator[None]:
        self.peak_kib = self.current_kib()
        yield
        self.peak_kib = max(self.peak_kib, self.current_kib())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def texts_of(tokens: int, count: int, words: list[str]) -> list[str]:
    """`count` different texts of exactly `tokens` tokens: [CLS] + single-piece words + [SEP]."""
    return [
        " ".join(words[(i * 7 + j) % len(words)] for j in range(tokens - 2)) for i in range(count)
    ]


def single_piece_words(folder: Path, corpus: list[str]) -> list[str]:
    """Words of the given texts that BERT's tokenizer keeps as one piece, so lengths are exact."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # its tokenizer.json pads (and truncates) everything to 128
    tokenizer.no_truncation()
    candidates = sorted({w.strip(".,;:!?\"'()«»“”") for text in corpus for w in text.split()})
    words = [w for w in candidates if w and len(tokenizer.encode(w).ids) == 3]
    return words or ["hello"]


def curves_worker(
    name: str, sweep: str, folder: Path, onnx_dir: Path, corpus: list[str]
) -> list[dict[str, float]]:
    """One sweep in a fresh process: only this peer's libraries and weights count in its RSS.

    Resident memory seldom shrinks (allocator and ORT arenas keep what they took), so each sweep
    gets its own process and runs from the lightest load up.
    """
    peer = MINILM_PEERS[name](folder, onnx_dir)
    words = single_piece_words(folder, corpus)
    sampler = RssSampler()

    by_length = sweep == "by_length"
    key = "tokens" if by_length else "clients"
    rows: list[dict[str, float]] = []
    for x in LENGTHS if by_length else CLIENTS:
        # The length sweep keeps CURVE_BATCH texts in flight; the clients sweep CURVE_TOKENS each.
        texts = texts_of(x, CURVE_BATCH, words) if by_length else texts_of(CURVE_TOKENS, x, words)
        with sampler.phase():
            speed = throughput(peer, texts, CURVE_SECONDS)
        rss = sampler.peak_kib / 1024
        rows.append({key: x, "tokens_per_second": speed, "peak_rss_mib": rss})
        log(f"curves: {key} {x}: {speed:.0f} tokens/s, peak RSS {rss:.0f} MiB")
    sampler.stop()
    return rows


def curves(peer: str, folder: Path, onnx_dir: Path, texts_file: Path) -> dict[str, object]:
    result: dict[str, object] = {"peer": peer}
    for sweep in ["by_length", "by_concurrency"]:
        log(f"curves: {MINILM} {sweep} with {peer} (fresh process)")
        command = [sys.executable, __file__, "--curves-worker", peer, "--sweep", sweep]
        command += [
            "--onnx-dir",
            str(onnx_dir),
            "--minilm",
            str(folder),
            "--texts",
            str(texts_file),
        ]
        done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        result[sweep] = json.loads(done.stdout)
    return result


# ----------------------------------------------------------------------------------------------


def main() -> None:
    # Before any Hugging Face import: everything is local, and a hub call would only hang.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep stderr to [peers] lines
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", type=Path, help="the all-MiniLM-L6-v2 folder")
    parser.add_argument("--smollm2", type=Path, help="the SmolLM2-135M-Instruct GGUF file")
    parser.add_argument("--texts", type=Path, required=True, help="JSON: model name -> texts")
    parser.add_argument("--output", type=Path, help="where the JSON result goes")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per peer")
    parser.add_argument("--curves", action="store_true", help="MiniLM length/concurrency curves")
    parser.add_argument("--curves-worker", help=argparse.SUPPRESS)  # internal: see curves()
    parser.add_argument("--onnx-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sweep", choices=["by_length", "by_concurrency"], help=argparse.SUPPRESS)
    parser.add_argument("--llama-worker", help=argparse.SUPPRESS)  # internal: see llama_row()
    args = parser.parse_args()
    texts: dict[str, list[str]] = json.loads(args.texts.read_text())

    if args.curves_worker:
        corpus = texts[MINILM] + texts.get(SMOLLM2, [])
        rows = curves_worker(args.curves_worker, args.sweep, args.minilm, args.onnx_dir, corpus)
        print(json.dumps(rows))
        return
    if args.llama_worker:
        worker = llama_worker(args.smollm2, args.llama_worker, texts[SMOLLM2], args.seconds)
        print(json.dumps(worker))
        return
    if args.minilm is None or args.smollm2 is None or args.output is None:
        parser.error("--minilm, --smollm2 and --output are required")

    with tempfile.TemporaryDirectory(prefix="lamina-peers-") as scratch:
        onnx_dir = Path(scratch)  # fastembed's ONNX export, shared with the curves process
        result: dict[str, object] = {"cpu": {"native_bf16": native_bf16()}}
        result[MINILM], fastest = minilm(args.minilm, onnx_dir, texts[MINILM], args.seconds)
        result[SMOLLM2] = smollm2(args, texts[SMOLLM2])
        if args.curves:
            if fastest is None:
                log("curves: no MiniLM peer worked; none measured")
            else:
                result["curves"] = curves(fastest, args.minilm, onnx_dir, args.texts)
    args.output.write_text(json.dumps(result))
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()

"""Shared pieces of the benchmark programs: machine description and peak, model FLOPs, timing loop, engines run in
child processes (one per engine, so each engine's peak RSS is its own), result files and plots.

Nothing here is a test: numbers are measured, never asserted. Ratios are always against PyTorch eager measured in the
same run on the same machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"


# -- machine -----------------------------------------------------------------------------------------------------
def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, v = (s.strip() for s in line.split(":", 1))
                info.setdefault(k, v)
    except OSError:
        pass
    return info


def cpu_peak() -> dict[str, Any]:
    """Theoretical CPU peak, derived from /proc/cpuinfo (and stated, since a VM hides the turbo clock).

    fp32 FLOP/cycle/core = FMA pipes (2) x fp32 lanes per pipe x 2 (multiply + add). Lanes: AVX-512 machines from
    Intel execute 512-bit FMAs natively (16 lanes); AMD Zen 4 splits a 512-bit op into two 256-bit halves, so it
    has the AVX2 rate (8 lanes x 2 pipes). int8 (AVX-512 VNNI / AVX-VNNI `vpdpbusd`): 4 int8 MACs per 32-bit lane,
    so 4x the fp32 rate in ops. The clock is /proc/cpuinfo's "cpu MHz" (the nominal clock under KVM; a turbo clock
    above it makes >100% possible, which is why an empirical fp32 GEMM peak is measured too).
    """
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    cores = os.cpu_count() or 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    mhz = float(info.get("cpu MHz", "0") or 0)
    vendor = info.get("vendor_id", "")
    family = int(info.get("cpu family", "0") or 0)
    if "avx512f" in flags and not (vendor == "AuthenticAMD" and family <= 25):
        lanes = 16
    elif "avx2" in flags or "avx512f" in flags:
        lanes = 8
    else:
        lanes = 4
    fma_pipes = 2 if "fma" in flags else 1
    flop_per_cycle = fma_pipes * lanes * 2
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    int8_per_cycle = flop_per_cycle * (4 if vnni else 2)
    ghz = mhz / 1000.0
    return {
        "cpu": info.get("model name", platform.processor()),
        "vendor": vendor,
        "cpu_family": family,
        "model": info.get("model"),
        "cores": cores,
        "clock_ghz": round(ghz, 3),
        "fp32_lanes_per_fma": lanes,
        "fma_pipes": fma_pipes,
        "fp32_flop_per_cycle_per_core": flop_per_cycle,
        "int8_op_per_cycle_per_core": int8_per_cycle,
        "vnni": vnni,
        "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "peak_fp32_gflops": round(cores * ghz * flop_per_cycle, 1),
        "peak_int8_gops": round(cores * ghz * int8_per_cycle, 1),
        "derivation": (f"{cores} cores x {ghz:.3f} GHz (cpuinfo) x {flop_per_cycle} fp32 FLOP/cycle "
                       f"({fma_pipes} FMA pipes x {lanes} lanes x 2); int8: x{int8_per_cycle // flop_per_cycle} "
                       f"({'VNNI vpdpbusd' if vnni else 'no VNNI'})"),
    }


def measured_gemm_peak(threads: int, n: int = 2048, seconds: float = 2.0) -> float:
    """Best fp32 GFLOP/s of an n x n x n torch.mm (MKL/oneDNN) on `threads` threads: the empirical ceiling."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("guardrt", "numpy", "tokenizers", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
                 "tritonclient", "nvidia-pytriton", "tensorrt", "tensorrt-cu12"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def machine_description(threads: int) -> dict[str, Any]:
    mem = None
    try:
        import psutil

        mem = round(psutil.virtual_memory().total / 2 ** 30, 1)
    except ImportError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"hostname": platform.node(), "platform": platform.platform(), "memory_gib": mem,
            "threads_used": threads, "loadavg_at_start": load, "gpu": gpu_name(), "peak": cpu_peak()}


def gpu_name() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except Exception:  # noqa: BLE001
        return None


# -- FLOPs ----------------------------------------------------------------------------------------------------------
def model_flops(cfg: dict, batch: int, seq: int) -> dict[str, float]:
    """Useful FLOPs of one forward pass (2 x multiply-accumulates), from the HF config.

    Linear layers: every projection and MLP matrix, per token. Attention: Q·Kᵀ and P·V per head — the full S x S
    for bidirectional encoders (RoBERTa), S(S+1)/2 for causal decoders (Qwen3; what a causal kernel must do).
    Embedding lookups, norms, softmax and the 2-way head are not counted (negligible)."""
    h = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or h // heads)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    inter = int(cfg["intermediate_size"])
    causal = cfg.get("model_type") in ("qwen3", "llama", "qwen2", "mistral")
    q = h * heads * head_dim
    kv = 2 * h * kv_heads * head_dim
    o = heads * head_dim * h
    mlp = (3 if causal else 2) * h * inter  # gated MLP (gate, up, down) vs fc1/fc2
    tokens = batch * seq
    linear = 2 * tokens * layers * (q + kv + o + mlp)
    pairs = seq * (seq + 1) / 2 if causal else seq * seq
    attention = 2 * 2 * batch * layers * heads * pairs * head_dim
    return {"linear": float(linear), "attention": float(attention), "total": float(linear + attention)}


# -- timing ---------------------------------------------------------------------------------------------------------
@dataclass
class TimingSettings:
    warmup: int = 2
    min_reps: int = 3
    max_reps: int = 30
    budget_s: float = 5.0  # per cell: stop after this much measuring once min_reps are done


def time_call(fn: Callable[[], Any], settings: TimingSettings) -> list[float]:
    for _ in range(settings.warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < settings.max_reps:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= settings.min_reps and time.perf_counter() - start >= settings.budget_s:
            break
    return times


def summarize(times: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(times) * 1000.0
    return {"n": int(arr.size), "p50_ms": float(np.percentile(arr, 50)), "p90_ms": float(np.percentile(arr, 90)),
            "p99_ms": float(np.percentile(arr, 99)), "mean_ms": float(arr.mean()), "min_ms": float(arr.min()),
            "max_ms": float(arr.max())}


def peak_rss_mib(pid: int | str = "self") -> float:
    """Peak resident set of a process in MiB: VmHWM from /proc (per address space, so a spawned child starts from
    zero; ru_maxrss survives execve and would report the parent's peak)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if pid == "self":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return float("nan")


def tree_peak_rss_mib(pid: int) -> dict[str, float]:
    """VmHWM of a process and each of its descendants (Triton + its python-backend stubs), and their sum."""
    out: dict[str, float] = {}
    try:
        import psutil

        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            out[f"{p.pid}:{p.name()}"] = peak_rss_mib(p.pid)
    except Exception:  # noqa: BLE001
        out[str(pid)] = peak_rss_mib(pid)
    out["total"] = sum(v for v in out.values() if v == v)
    return out


def dir_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- inputs ---------------------------------------------------------------------------------------------------------
def make_feeds(spec, vocab_size: int, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids drawn from the ordinary vocabulary (no pad/special ids), no padding: the cost of exactly B x L."""
    rng = np.random.default_rng(seed + 1000 * batch + seq)
    low = 10
    high = max(low + 1, min(vocab_size, 150000) - 10)
    ids = rng.integers(low, high, size=(batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones((batch, seq), dtype=np.int64)}


def make_parity_feeds(spec, vocab_size: int, seed: int = 7) -> dict[str, np.ndarray]:
    """A small padded batch on the spec's padding side: every engine's logits are compared with PyTorch on it."""
    rng = np.random.default_rng(seed)
    lengths = [48, 31, 9, 2]
    seq = max(lengths)
    ids = rng.integers(10, max(11, min(vocab_size, 150000) - 10), size=(len(lengths), seq), dtype=np.int64)
    mask = np.ones_like(ids)
    for b, n in enumerate(lengths):
        if spec.padding_side == "left":
            ids[b, : seq - n], mask[b, : seq - n] = spec.pad_token_id, 0
        else:
            ids[b, n:], mask[b, n:] = spec.pad_token_id, 0
    return {"input_ids": ids, "attention_mask": mask}


# -- engines (each runs in its own child process) -------------------------------------------------------------------
@dataclass
class EngineSpec:
    name: str  # e.g. "pytorch-eager", "optimum-ort", "guardrt-ort-int8-fused"
    kind: str  # "pytorch" | "optimum" | "ort" | "tensorrt"
    path: str  # checkpoint dir (pytorch), export dir (optimum), model.onnx (ort), plan (tensorrt)
    precision: str = "fp32"
    fused: bool = False
    threads: int = 2
    extra: dict = field(default_factory=dict)


def _load_engine(engine: EngineSpec):
    """Returns infer(feeds) -> logits (numpy)."""
    if engine.kind == "pytorch":
        import torch
        from transformers import AutoModelForSequenceClassification

        torch.set_num_threads(engine.threads)
        model = AutoModelForSequenceClassification.from_pretrained(engine.path, torch_dtype=torch.float32).eval()
        if engine.extra.get("pad_token_id") is not None:
            model.config.pad_token_id = engine.extra["pad_token_id"]
        engine.extra["attn_implementation"] = getattr(model.config, "_attn_implementation", None)

        def infer(feeds):
            with torch.inference_mode():
                return model(input_ids=torch.from_numpy(feeds["input_ids"]),
                             attention_mask=torch.from_numpy(feeds["attention_mask"])).logits.numpy()

        return infer
    if engine.kind == "optimum":
        import onnxruntime as ort
        import torch
        from optimum.onnxruntime import ORTModelForSequenceClassification

        torch.set_num_threads(engine.threads)
        so = ort.SessionOptions()
        so.intra_op_num_threads = engine.threads
        model = ORTModelForSequenceClassification.from_pretrained(engine.path, session_options=so,
                                                                  provider="CPUExecutionProvider")

        def infer(feeds):  # what a user of optimum does: torch tensors in, torch tensors out
            out = model(input_ids=torch.from_numpy(feeds["input_ids"]),
                        attention_mask=torch.from_numpy(feeds["attention_mask"]))
            return out.logits.numpy() if hasattr(out.logits, "numpy") else np.asarray(out.logits)

        return infer
    if engine.kind == "ort":
        from guardrt.runtime.onnxrt import OnnxRunner

        runner = OnnxRunner(engine.path, providers=engine.extra.get("providers"), intra_op_threads=engine.threads)

        def infer(feeds):
            return runner.infer(feeds)["logits"]

        return infer
    if engine.kind == "tensorrt":
        from guardrt.runtime.tensorrt import TensorRTRunner  # noqa: F401 - GPU hosts only

        runner = TensorRTRunner(engine.path)  # type: ignore[call-arg]

        def infer(feeds):
            return runner.infer(feeds)["logits"]

        return infer
    raise ValueError(f"unknown engine kind {engine.kind!r}")


def run_engine(engine: EngineSpec, cells: list[tuple[int, int]], feeds_args: dict, settings: TimingSettings,
               profile_dir: str | None = None) -> dict[str, Any]:
    """Child-process body: load the engine, run the parity batch and every (batch, seq) cell, report."""
    from guardrt.runtime.specs import get_spec

    spec = get_spec(feeds_args["spec"])
    rss0 = peak_rss_mib()
    t = time.perf_counter()
    infer = _load_engine(engine)
    load_s = time.perf_counter() - t
    parity = infer(make_parity_feeds(spec, feeds_args["vocab_size"]))
    results = {}
    for batch, seq in cells:
        feeds = make_feeds(spec, feeds_args["vocab_size"], batch, seq)
        try:
            times = time_call(lambda: infer(feeds), settings)
            results[f"{batch}x{seq}"] = {"batch": batch, "seq": seq, **summarize(times)}
        except Exception as exc:  # noqa: BLE001 - one failing cell must not lose the others
            results[f"{batch}x{seq}"] = {"batch": batch, "seq": seq, "error": f"{type(exc).__name__}: {exc}"}
    return {"engine": engine.name, "load_s": load_s, "cells": results, "parity_logits": parity.tolist(),
            "peak_rss_mib": peak_rss_mib(), "rss_before_load_mib": rss0, "extra": engine.extra}


def run_engine_in_child(engine: EngineSpec, cells, feeds_args, settings) -> dict[str, Any]:
    """One fresh process per engine: its peak RSS is the engine's own, and engines cannot warm each other's caches."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(run_engine, (engine, cells, feeds_args, settings))


# -- caching of benchmark-only artefacts ----------------------------------------------------------------------------
def code_hash(*paths: Path, extra: Any = None) -> str:
    h = hashlib.sha256()
    for p in paths:
        for f in sorted(Path(p).rglob("*.py")) if Path(p).is_dir() else [Path(p)]:
            if f.is_file():
                h.update(f.read_bytes())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


# -- output ---------------------------------------------------------------------------------------------------------
class Progress:
    """One status line on stderr while running (a terminal), plain lines otherwise."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.tty = sys.stderr.isatty() and enabled

    def update(self, label: str, advance: int = 1) -> None:
        self.done += advance
        elapsed = time.perf_counter() - self.t0
        msg = f"[{self.done}/{self.total}] {elapsed:6.0f}s  {label}"
        if self.tty:
            sys.stderr.write("\r\033[K" + msg)
            sys.stderr.flush()
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """columns: (key, header, format)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        line = []
        for key, _, fmt in columns:
            v = r.get(key)
            line.append("-" if v is None else (fmt.format(v) if fmt else str(v)))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    out = []
    for n, line in enumerate(cells):
        out.append("  ".join(c.rjust(w) if n and i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return path


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def save_spec_figure(fig, out_prefix: Path, spec_name: str) -> Path:
    """Lay out, save as `<out_prefix>_<spec>.png` and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = out_prefix.with_name(f"{out_prefix.name}_{spec_name}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

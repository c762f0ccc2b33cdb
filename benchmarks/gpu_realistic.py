"""Realistic rejection model (RoBERTa-base shape) on a GPU: guardrt's in-process ONNX Runtime CUDA path against
PyTorch eager on the same GPU, in one run - parity and speed.

Two phases, like `gpu_ort_check.py`:

* `--phase prepare --dir DIR` (dev venv): the realistic demo checkpoint and its validated export (fp32 + fp16) into
  DIR, with held-out payloads and their exact token ids (guardrt's preprocessing, identical to the card's).
* `--phase run --dir DIR --out FILE` (GPU host with torch, transformers, onnxruntime-gpu): on the same ids,
  PyTorch eager fp32 and fp16 (`model.half()`) on CUDA, guardrt `InProcessClassifier` with the CUDA provider at
  fp32 and fp16, and ONNX Runtime fp32 on the host's CPU; max |Δlogit| and decision agreement against PyTorch fp32
  on CUDA (the spec's gates), single-row p50 latency over the held-out rows, and rows/s for the whole held-out set
  in batches of 16 (sorted by length, padded to the longest, the in-process batching). Writes FILE (JSON) and a PNG.

Exit status 0 every gate passes, 1 a gate failed.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

SPEC = "rejection"
N_HELD_OUT = 256
BATCH = 16


def prepare(out: Path) -> None:
    from guardrt.export.demo_models import cached_demo_export, cached_demo_model
    from guardrt.export.synthetic import SPLIT_SEEDS, synthetic_payloads
    from guardrt.runtime.onnxrt import InProcessClassifier

    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(cached_demo_model(SPEC, "realistic"), out / "checkpoint", dirs_exist_ok=True)
    export = cached_demo_export(SPEC, "realistic", ("fp32", "fp16"))
    shutil.copytree(export, out / "export", dirs_exist_ok=True)
    payloads = synthetic_payloads(SPEC, N_HELD_OUT, seed=SPLIT_SEEDS["heldout"])
    with InProcessClassifier.from_export_dir(export, "fp32") as clf:
        ids = clf.encode(payloads)
    (out / "inputs.json").write_text(json.dumps({"payloads": payloads, "ids": ids}), encoding="utf-8")
    print(f"prepared {out}")


def _batches(seqs, size):
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    return [order[i:i + size] for i in range(0, len(order), size)]


def _median_ms(fn, items, warmup=3):
    for item in items[:warmup]:
        fn(item)
    times = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def torch_engine(checkpoint: Path, half: bool, spec, device: str = "cuda"):
    """logits(list of id lists) with PyTorch eager on CUDA: padded to the longest row of the call, like guardrt."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from guardrt.runtime.preprocess import pad_batch

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).to(device).eval()
    if half:
        model = model.half()

    def logits(seqs):
        ids, mask = pad_batch(seqs, spec.pad_token_id, spec.padding_side)
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(ids).to(device), attention_mask=torch.from_numpy(mask).to(device)).logits
        return out.float().cpu().numpy()  # .cpu() synchronises: the time includes the GPU work

    return logits


def measure(name: str, logits_fn, seqs) -> tuple[np.ndarray, dict]:
    out = np.empty((len(seqs), 2), dtype=np.float32)
    batches = _batches(seqs, BATCH)
    for idx in batches:  # warm every batch shape once, then time
        out[idx] = logits_fn([seqs[i] for i in idx])
    t0 = time.perf_counter()
    for idx in batches:
        logits_fn([seqs[i] for i in idx])
    rows_per_s = len(seqs) / (time.perf_counter() - t0)
    single_ms = _median_ms(lambda s: logits_fn([s]), seqs[:64])
    row = {"engine": name, "rows_per_s_batch16": rows_per_s, "single_p50_ms": single_ms}
    print(f"{name:<28} single-row p50 {single_ms:8.2f} ms   batch-16 throughput {rows_per_s:9.1f} rows/s")
    return out, row


def run(src: Path, out: Path, device: str = "cuda", limit: int | None = None) -> int:
    import onnxruntime as ort
    import torch

    from guardrt.export.tensorrt.validate import parity
    from guardrt.runtime.onnxrt import InProcessClassifier
    from guardrt.runtime.specs import get_spec

    spec = get_spec(SPEC)
    data = json.loads((src / "inputs.json").read_text(encoding="utf-8"))
    seqs = data["ids"][:limit]
    report = {"host": platform.node(), "gpu": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)", "torch": torch.__version__,
              "onnxruntime": ort.__version__, "n": len(seqs), "mean_tokens": float(np.mean([len(s) for s in seqs])),
              "max_tokens": max(map(len, seqs)), "rows": [], "parity": {}}
    print(f"{report['gpu']}, torch {torch.__version__}, onnxruntime {ort.__version__}; {len(seqs)} held-out rows, "
          f"mean {report['mean_tokens']:.0f} tokens")
    ref, row = measure("pytorch eager fp32 (cuda)", torch_engine(src / "checkpoint", False, spec, device), seqs)
    report["rows"].append(row)
    results = {}
    results["pytorch eager fp16 (cuda)"], row = measure("pytorch eager fp16 (cuda)",
                                                        torch_engine(src / "checkpoint", True, spec, device), seqs)
    report["rows"].append(row)
    for precision, providers in (("fp32", device), ("fp16", device), ("fp32", "cpu")):
        name = f"guardrt ORT {precision} ({providers})"
        clf = InProcessClassifier.from_export_dir(src / "export", precision, providers=providers)
        results[name], row = measure(name, clf.logits_for_ids, seqs if providers != "cpu" else seqs[:64])
        report["rows"].append(row)
    failed = []
    for name, logits in results.items():
        precision = "fp16" if "fp16" in name else "fp32"
        res = parity(spec, ref[:len(logits)], logits)
        atol, gate = spec.atol[precision], spec.min_agreement[precision]
        res.update(atol=atol, passed=bool(res["max_abs_diff"] <= atol and res["agreement"] >= gate))
        report["parity"][name] = res
        print(f"{name:<28} vs PyTorch fp32 (cuda): max|Δlogit| {res['max_abs_diff']:.3g} (gate {atol:g}), "
              f"agreement {res['agreement']:.4f} -> {'ok' if res['passed'] else 'FAILED'}")
        if not res["passed"] and name.startswith("guardrt"):
            failed.append(name)
    base = report["rows"][0]
    for r in report["rows"]:
        r["speedup_single_vs_pytorch_fp32"] = base["single_p50_ms"] / r["single_p50_ms"]
        r["speedup_batch16_vs_pytorch_fp32"] = r["rows_per_s_batch16"] / base["rows_per_s_batch16"]
    report["failed"] = failed
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    plot(report, out.with_suffix(".png"))
    print(f"results: {out}")
    return 1 if failed else 0


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    names = [r["engine"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    axes[0].barh(names, [r["single_p50_ms"] for r in rows])
    axes[0].set_xlabel("single-row p50 latency (ms)")
    axes[1].barh(names, [r["rows_per_s_batch16"] for r in rows])
    axes[1].set_xlabel("rows/s, batches of 16")
    fig.suptitle(f"realistic rejection model on {report['gpu']} ({report['n']} held-out rows, "
                 f"mean {report['mean_tokens']:.0f} tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("prepare", "run"), required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--out", default="benchmarks/results/gpu_realistic.json")
    ap.add_argument("--dry-run-cpu", action="store_true", help="everything on the CPU, 24 rows: checks the program")
    args = ap.parse_args(argv)
    if args.phase == "prepare":
        prepare(Path(args.dir))
        return 0
    if args.dry_run_cpu:
        return run(Path(args.dir), Path(args.out), "cpu", 24)
    return run(Path(args.dir), Path(args.out))


if __name__ == "__main__":
    sys.exit(main())

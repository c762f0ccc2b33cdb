"""ONNX Runtime CUDA check: guardrt's in-process GPU path (`providers="cuda"`) on a GPU host without TensorRT.

`make gpu-check` needs TensorRT and NVIDIA's pip index; a GPU host with neither (the lent device machine here: no
network, TensorRT's wheels are over a gigabyte) can still run ONNX Runtime's CUDA execution provider from a carried
`onnxruntime-gpu` wheel. Two phases:

* `--phase prepare --dir DIR` (any host with the dev venv): copies the tiny demo exports (rejection and intent-safety
  at fp32 / fp16 / int8 / int8-dynamic, Qwen3Guard-Gen's KV-cache graph at fp32) into DIR with held-out inputs:
  classifier payloads and Qwen3Guard-Gen prompt ids, plus the token ids this host's CPU generated for them.
* `--phase run --dir DIR --out FILE` (the GPU host; needs only onnxruntime-gpu, numpy, tokenizers, jinja2): for each
  classifier and precision, `InProcessClassifier.from_export_dir(..., providers="cuda")` - the provider that runs,
  max |Δlogit| and decision agreement against ONNX Runtime fp32 on the CPU of the same host (the exporter's
  validated reference) checked against the spec's gates, batched == one-at-a-time, and p50 latency; Qwen3Guard-Gen's
  greedy generation through `GuardGenerator(..., providers="cuda")`, token-identical to the CPU's.

The demo models are tiny: the latencies say the path works, not what a realistic model gains on a GPU. Exit status 0
all gates pass, 1 a gate failed, 3 no CUDA provider.
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

CLASSIFIERS = ("rejection", "intent-safety")
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
N_PAYLOADS = 128
N_PROMPTS = 12


def prepare(out: Path) -> None:
    """Copy the tiny exports and the held-out inputs into `out` (dev venv; builds the exports if not cached)."""
    from guardrt.export.demo_models import cached_demo_export, cached_guard_export
    from guardrt.export.guard_synthetic import guard_messages
    from guardrt.export.synthetic import SPLIT_SEEDS, synthetic_payloads
    from guardrt.runtime.guard_engine import GuardClassifier, encode_items

    out.mkdir(parents=True, exist_ok=True)
    inputs: dict = {"classifiers": {}}
    for spec_name in CLASSIFIERS:
        src = cached_demo_export(spec_name, "tiny", PRECISIONS)
        shutil.copytree(src, out / spec_name, dirs_exist_ok=True)
        inputs["classifiers"][spec_name] = synthetic_payloads(spec_name, N_PAYLOADS, seed=SPLIT_SEEDS["heldout"])
    src = cached_guard_export("tiny", ("fp32",))
    shutil.copytree(src, out / "qwen3guard-gen", dirs_exist_ok=True)
    with GuardClassifier(src, "fp32", mode="generate") as clf:
        prompts, errors = encode_items(clf.preprocessor, guard_messages(N_PROMPTS, seed=SPLIT_SEEDS["heldout"]),
                                       "generate")
        assert not any(errors), errors
        results = clf.generator.generate_ids(prompts)
    inputs["qwen3guard-gen"] = {"prompts": prompts, "cpu_token_ids": [r["token_ids"] for r in results],
                                "cpu_host": platform.node()}
    (out / "inputs.json").write_text(json.dumps(inputs), encoding="utf-8")
    print(f"prepared {out}")


def _p50_ms(fn, iters: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def check_classifier(spec_name: str, export_dir: Path, payloads: list, providers: str = "cuda"
                     ) -> tuple[dict, list[str]]:
    from guardrt.export.tensorrt.validate import parity
    from guardrt.runtime.onnxrt import InProcessClassifier

    failed = []
    reference = InProcessClassifier.from_export_dir(export_dir, "fp32")  # CPU provider
    spec = reference.spec
    seqs = reference.encode(payloads)
    ref_logits = reference.logits_for_ids(seqs)
    entry: dict = {"n": len(seqs), "max_len": max(map(len, seqs)), "precisions": {}}
    batch16 = seqs[:16]
    entry["cpu_fp32_p50_ms_batch16"] = _p50_ms(lambda: reference.logits_for_ids(batch16))
    for precision in PRECISIONS:
        row: dict = {}
        try:
            clf = InProcessClassifier.from_export_dir(export_dir, precision, providers=providers, int8_recheck="warn")
        except Exception as exc:  # a refused load is a result too: report it, go on
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            failed.append(f"{spec_name} {precision} load")
            entry["precisions"][precision] = row
            print(f"{spec_name} {precision}: load failed: {row['error']}")
            continue
        row["active_providers"] = clf.runner.active_providers
        logits = clf.logits_for_ids(seqs)
        res = parity(spec, ref_logits, logits)
        atol, gate = spec.atol.get(precision, float("inf")), spec.min_agreement.get(precision, 0.0)
        row.update(res, atol=atol, min_agreement=gate,
                   passed=bool(res["finite"] and res["max_abs_diff"] <= atol and res["agreement"] >= gate))
        single = np.concatenate([clf.logits_for_ids([s]) for s in batch16])
        row["batched_vs_single_max_abs_diff"] = float(np.max(np.abs(single - logits[:16])))
        row["cuda_p50_ms_batch16"] = _p50_ms(lambda: clf.logits_for_ids(batch16))
        row["cuda_p50_ms_single"] = _p50_ms(lambda: clf.logits_for_ids(batch16[:1]))
        if not row["passed"]:
            failed.append(f"{spec_name} {precision}")
        print(f"{spec_name} {precision:<13} providers {row['active_providers']}: max|Δlogit| vs CPU fp32 "
              f"{res['max_abs_diff']:.4g} (gate {atol:g}), agreement {res['agreement']:.4f} (gate {gate:g}), "
              f"batched-vs-single {row['batched_vs_single_max_abs_diff']:.3g}, p50 batch16 "
              f"{row['cuda_p50_ms_batch16']:.2f} ms -> {'ok' if row['passed'] else 'FAILED'}")
        entry["precisions"][precision] = row
        clf.runner.close() if hasattr(clf.runner, "close") else None
    if providers == "cuda":  # informational: ONNX Runtime's own default (TF32 on) next to guardrt's (off)
        from guardrt.runtime.ort_providers import cuda_provider_options

        tf32 = InProcessClassifier.from_export_dir(
            export_dir, "fp32", providers=[("CUDAExecutionProvider", cuda_provider_options(tf32=True))])
        res = parity(spec, ref_logits, tf32.logits_for_ids(seqs))
        entry["fp32_with_tf32"] = res
        print(f"{spec_name} fp32 with TF32 on (ONNX Runtime's default; guardrt turns it off): max|Δlogit| "
              f"{res['max_abs_diff']:.4g}, agreement {res['agreement']:.4f} (informational)")
    return entry, failed


def check_generation(export_dir: Path, data: dict, providers: str = "cuda") -> tuple[dict, list[str]]:
    from guardrt.runtime.generate import GuardGenerator

    prompts = data["prompts"]
    entry: dict = {"n": len(prompts)}
    outputs = {}
    for name, chosen in (("cpu", None), ("cuda", providers)):
        gen = GuardGenerator(export_dir, "fp32", providers=chosen)
        entry[f"{name}_active_providers"] = gen.generator.runner.active_providers
        t0 = time.perf_counter()
        outputs[name] = [r["token_ids"] for r in gen.generate_ids(prompts)]
        entry[f"{name}_seconds"] = time.perf_counter() - t0
    same_cuda_cpu = sum(a == b for a, b in zip(outputs["cuda"], outputs["cpu"]))
    same_cuda_prepared = sum(a == b for a, b in zip(outputs["cuda"], data["cpu_token_ids"]))
    entry.update(cuda_equal_device_cpu=same_cuda_cpu, cuda_equal_prepared_cpu=same_cuda_prepared,
                 tokens=sum(map(len, outputs["cuda"])))
    print(f"qwen3guard-gen generation: CUDA token-identical to this host's CPU on {same_cuda_cpu}/{len(prompts)}, "
          f"to the preparing host's CPU on {same_cuda_prepared}/{len(prompts)} ({entry['tokens']} tokens; "
          f"providers {entry['cuda_active_providers']})")
    return entry, ([] if same_cuda_cpu == len(prompts) else ["qwen3guard-gen generation"])


def run(src: Path, out: Path, providers: str = "cuda") -> int:
    import onnxruntime as ort

    report: dict = {"host": platform.node(), "python": sys.version.split()[0], "onnxruntime": ort.__version__,
                    "available_providers": ort.get_available_providers()}
    print(f"onnxruntime {ort.__version__}: {report['available_providers']}")
    if providers == "cuda" and "CUDAExecutionProvider" not in report["available_providers"]:
        print("gpu-ort-check: no CUDAExecutionProvider in this onnxruntime; nothing compared (not a pass)")
        return 3
    inputs = json.loads((src / "inputs.json").read_text(encoding="utf-8"))
    failed: list[str] = []
    for spec_name, payloads in inputs["classifiers"].items():
        report[spec_name], f = check_classifier(spec_name, src / spec_name, payloads, providers)
        failed += f
    report["qwen3guard-gen"], f = check_generation(src / "qwen3guard-gen", inputs["qwen3guard-gen"], providers)
    failed += f
    report["failed"] = failed
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    print(f"results: {out}")
    print("gpu-ort-check: " + (f"FAILED: {', '.join(failed)}" if failed else "all gates passed"))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("prepare", "run"), required=True)
    ap.add_argument("--dir", required=True, help="the carried folder (exports + inputs.json)")
    ap.add_argument("--out", default="benchmarks/results/gpu_ort_check.json")
    ap.add_argument("--providers", default="cuda", help="cpu: a dry run of the whole check on a host without a GPU")
    args = ap.parse_args(argv)
    if args.phase == "prepare":
        prepare(Path(args.dir))
        return 0
    return run(Path(args.dir), Path(args.out), args.providers)


if __name__ == "__main__":
    raise SystemExit(main())

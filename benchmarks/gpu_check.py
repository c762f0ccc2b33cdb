"""GPU check: the whole TensorRT path on a host with an NVIDIA GPU, in one run (`make gpu-check`).

First the environment (benchmarks/gpu_setup.py): `--install` installs guardrt[gpu] or says in one line why it cannot
(Python 3.8-3.12, NVIDIA's pip index); then the TensorRT version inside NVIDIA's Triton 24.10 container is compared
with the one that builds the plans (plans load only with the TensorRT that built them).

Then, for each demo model (intent-safety = Qwen3, rejection = RoBERTa; `--size realistic` by default, `tiny` for a
quick smoke run): validated ONNX export (fp32 / fp16 / int8-QDQ, cached), TensorRT engines (fp16 and int8 by
default) through `guardrt.export.tensorrt.export_tensorrt` into one Triton repository, then on held-out inputs:

* max |Δlogit| and decision agreement of each engine against ONNX Runtime fp32 on CPU (the exporter's validated
  reference), checked against the spec's gates for that precision - once with the in-process batching (padded to
  the longest sequence) and once padded to the length buckets (the shapes Triton runs);
* each engine's device memory per profile and the Triton deployment planned for the GPU (build.json);
* fp16 built four ways side by side - fp32 pins `norm` (default), `broad`, `none`, and `--trt-strongly-typed` -
  with device memory, latency at the largest shape and parity, and the default the rule in
  `guardrt.export.tensorrt.recommend_fp32_pins` picks from them;
* a latency table (p50 / p99 ms, sequences/s) for the engines at a few batch x length points, next to ORT fp32 CPU;
* the exact `docker run ... tritonserver --model-repository ...` command for NVIDIA's Triton container.

Results go to benchmarks/results/gpu_check.json. Exit status: 0 all gates pass; 1 a gate failed; 3 no NVIDIA GPU
on this host (one line, nothing built - a skip is not a pass); 4 the `gpu` extra is not installed or cannot be;
5 the Triton container's TensorRT differs from the build's (the plans would not load there).
`--probe` only answers whether a GPU is here (exit 0 or 3): the Makefile runs it before installing the extra.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_setup  # noqa: E402  (benchmarks/gpu_setup.py: install preflight, the container's TensorRT)

from guardrt.runtime.runner import BucketPaddingRunner  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

# TensorRT major.minor -> the NVIDIA Triton container release that ships it (plans load only with the same TensorRT).
# 24.10 = Triton 2.51.0, CUDA 12.6.2, TensorRT 10.5 (see the README, "GPU deployment" for how to confirm it in the image).
TRITON_CONTAINER_FOR_TRT = {"10.5": "24.10"}
EXIT_OK, EXIT_GATE, EXIT_NO_GPU, EXIT_NO_EXTRA, EXIT_CONTAINER = 0, 1, 3, 4, 5
MIB = 1 << 20


def docker_command(repo: Path, trt_version: str) -> str:
    """The command that serves `repo` with NVIDIA's Triton container matching the TensorRT the plans were built by."""
    major_minor = ".".join(trt_version.split(".")[:2])
    tag = TRITON_CONTAINER_FOR_TRT.get(major_minor)
    image = f"nvcr.io/nvidia/tritonserver:{tag}-py3" if tag else \
        f"nvcr.io/nvidia/tritonserver:<the release that ships TensorRT {major_minor}>-py3"
    return (f"docker run --gpus all --rm --shm-size=1g -p 127.0.0.1:8000:8000 -p 127.0.0.1:8001:8001 "
            f"-p 127.0.0.1:8002:8002 -v {repo.resolve()}:/models {image} "
            f"tritonserver --model-repository=/models")


def compare(spec, ref_logits: np.ndarray, logits: np.ndarray) -> dict:
    """max |Δlogit|, decision agreement, finiteness (the exporter's own engine gate metrics)."""
    from guardrt.export.tensorrt import parity

    return parity(spec, ref_logits, logits)


def time_runner(runner, spec, batch: int, seq: int, warmup: int, iters: int, vocab: int = 1000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, max(11, min(1000, vocab)), size=(batch, seq), dtype=np.int64)
    feeds = dict(zip(spec.input_names, (ids, np.ones_like(ids))))
    for _ in range(warmup):
        runner.infer(feeds)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        runner.infer(feeds)
        times.append(time.perf_counter() - t0)
    t = np.array(times) * 1e3
    return {"batch": batch, "seq": seq, "p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
            "seq_per_s": float(batch / np.median(times))}


def install(log_file: Path) -> int:
    """`--install`: guardrt[gpu] into this environment, or one line saying why it cannot be."""
    problems = gpu_setup.install_problems()
    if problems:
        print(f"gpu-check: cannot install guardrt[gpu] here: {'; '.join(problems)}")
        return EXIT_NO_EXTRA
    error = gpu_setup.install_gpu_extra(log_file)
    if error:
        print(f"gpu-check: {error}")
        return EXIT_NO_EXTRA
    return EXIT_OK


def check_container(trt_version: str, image: str) -> tuple[dict, str | None]:
    """Step 1: the TensorRT of the serving container against the build's. (report entry, failure line or None)."""
    found, detail = gpu_setup.container_tensorrt_version(image)
    entry = {"image": image, "tensorrt": found, "detail": detail, "build_tensorrt": trt_version,
             "confirmed": found is not None}
    if found is None:
        print(f"gpu-check: the TensorRT in {image} is unconfirmed: {detail}")
        return entry, None
    entry["match"] = gpu_setup.same_tensorrt(trt_version, found)
    print(f"gpu-check: {image} ships TensorRT {found}; plans are built with {trt_version}"
          f" -> {'same' if entry['match'] else 'DIFFERENT'}")
    if not entry["match"]:
        return entry, (f"{image} ships TensorRT {found} but this environment builds with {trt_version}: its plans "
                       f"would not load there; install tensorrt-cu12=={'.'.join(found.split('.')[:3])} (or serve "
                       "with the container of this TensorRT) and rerun")
    return entry, None


def memory_summary(record: dict) -> str:
    mem = record.get("device_memory") or {}
    per = ", ".join(f"{b / MIB:.0f}" for b in mem.get("per_profile_bytes", []))
    plan = record.get("deployment") or {}
    if plan.get("error"):
        deployment = f"does not fit: {plan['error']}"
    elif plan.get("predicted_bytes") is not None:
        deployment = (f"Triton: {plan['instance_count']} instance(s), {plan['num_profiles']} profile(s), "
                      f"{plan['predicted_bytes'] / MIB:.0f} MiB of budget "
                      f"{(plan['budget_bytes'] or 0) / MIB:.0f} MiB")
    else:
        deployment = "Triton deployment not planned"
    return (f"plan {record.get('plan_bytes', 0) / MIB:.0f} MiB, context {mem.get('context_bytes', 0) / MIB:.0f} MiB "
            f"(per profile: {per or '?'} MiB); {deployment}")


def compare_fp16_variants(export_dir: Path, spec, out_dir: Path, ref_logits, seqs, preprocessor, vocab: int,
                          iters: int) -> dict:
    """fp16 built with each pin policy and strongly typed, one profile per bucket: device memory, parity (bucket
    padding), p50 at the largest batch x length; then the recommended default (`recommend_fp32_pins`)."""
    from guardrt.export.tensorrt import (
        FP16_VARIANTS,
        build_engine,
        derive_profiles,
        engine_settings,
        gate,
        recommend_fp32_pins,
    )
    from guardrt.runtime.errors import GuardrtError
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.onnxrt import InProcessClassifier
    from guardrt.runtime.tensorrt import TensorRTRunner

    manifest = load_export_dir(export_dir)
    profiles = derive_profiles(spec)
    largest = (spec.max_batch_size, spec.max_length)
    rows = []
    for variant in FP16_VARIANTS:
        row = {"variant": variant}
        settings = (engine_settings("fp16", manifest.precisions, strongly_typed=True) if variant == "strongly-typed"
                    else engine_settings("fp16", manifest.precisions, fp32_pins=variant))
        plan = out_dir / variant / "model.plan"
        try:
            record = build_engine(manifest.model_path(settings.source), plan, settings, profiles,
                                  timing_cache=out_dir / "timing.cache", log=print)
            row.update(context_bytes=record["device_memory"]["context_bytes"],
                       per_profile_bytes=record["device_memory"]["per_profile_bytes"],
                       fp32_layers=record["fp32_layers"], build_seconds=record["build_seconds"])
            with TensorRTRunner(plan) as runner:
                clf = InProcessClassifier(spec, BucketPaddingRunner(runner, spec), preprocessor)
                row.update(gate(spec, "fp16", compare(spec, ref_logits, clf.logits_for_ids(seqs))))
                timing = time_runner(runner, spec, *largest, 3, iters, vocab)
                row.update(p50_ms=timing["p50_ms"], at=list(largest))
        except (GuardrtError, RuntimeError, MemoryError) as exc:  # a failed build or run is a measurement too
            row["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        rows.append(row)
    choice = recommend_fp32_pins(rows)
    print(f"\n{'fp16 variant':<16}{'ctx MiB':>9}{'p50 ms':>9}{'max|Δ|':>10}{'agree':>8}  gate / error "
          f"(at batch {largest[0]} x {largest[1]})")
    for r in rows:
        if r.get("error"):
            print(f"{r['variant']:<16}{'':>36}  build/run failed: {r['error']}")
            continue
        print(f"{r['variant']:<16}{r['context_bytes'] / MIB:>9.0f}{r['p50_ms']:>9.2f}{r['max_abs_diff']:>10.4g}"
              f"{r['agreement']:>8.3f}  {'ok' if r['passed'] else 'FAILED'}")
    print(f"fp32 pins: recommended default {choice['recommended']} ({choice['reason']})"
          + ("; change DEFAULT_FP32_PINS in export/tensorrt/precision.py (or default --trt-strongly-typed)"
             if choice["change"] else "; the current default stands"))
    return {"rows": rows, "recommendation": choice}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", action="store_true", help="only say whether an NVIDIA GPU is here (exit 0 or 3)")
    ap.add_argument("--install", action="store_true",
                    help="install guardrt[gpu] here, or say in one line why it cannot be (exit 0 or 4)")
    ap.add_argument("--specs", default="rejection,intent-safety")
    ap.add_argument("--size", default="realistic", choices=("tiny", "realistic"), help="demo model size")
    ap.add_argument("--precisions", default="fp16,int8", help="TensorRT engine precisions")
    ap.add_argument("--n", type=int, default=256, help="held-out examples per spec")
    ap.add_argument("--repo", default=str(REPO_ROOT / "artifacts" / "gpu_check" / "triton_repo"))
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "gpu_check.json"))
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--skip-variants", action="store_true", help="do not build the fp16 pin variants side by side")
    ap.add_argument("--container", default=gpu_setup.TRITON_IMAGE, help="the Triton image that will serve the plans")
    ap.add_argument("--strongly-typed", action="store_true",
                    help="build strongly typed engines (the ONNX graph's own types) instead of precision flags")
    args = ap.parse_args(argv)

    from guardrt.runtime.tensorrt import missing_gpu_modules, probe_gpu

    gpu = probe_gpu()
    if not gpu.found:
        print(f"gpu-check: skipped - {gpu.detail}; nothing was built or compared (this is not a pass)")
        return EXIT_NO_GPU
    if args.probe:
        print(f"gpu-check: NVIDIA GPU found: {gpu.detail}")
        return EXIT_OK
    if args.install:
        return install(REPO_ROOT / "artifacts" / "gpu_check" / "pip-install.log")
    missing = missing_gpu_modules()
    if missing:
        print(f"gpu-check: {', '.join(missing)} not installed; run `make gpu-check` (installs guardrt[gpu])")
        return EXIT_NO_EXTRA

    import tensorrt

    container, mismatch = check_container(tensorrt.__version__, args.container)
    if mismatch:
        print(f"gpu-check: {mismatch}")
        return EXIT_CONTAINER

    from guardrt.export.demo_models import cached_demo_export
    from guardrt.export.synthetic import SPLIT_SEEDS, synthetic_payloads
    from guardrt.export.tensorrt import export_tensorrt, gpu_facts, parse_trt_precisions
    from guardrt.runtime.onnxrt import InProcessClassifier
    from guardrt.runtime.specs import get_spec
    from guardrt.runtime.tensorrt import TensorRTRunner

    precisions = parse_trt_precisions(args.precisions)
    repo = Path(args.repo)
    facts = gpu_facts(gpu)
    report = {"host": platform.node(), "gpu": facts, "tensorrt_version": tensorrt.__version__,
              "python": sys.version.split()[0], "size": args.size, "precisions": list(precisions),
              "strongly_typed": args.strongly_typed, "container": container, "specs": {}}
    print(f"gpu-check: {facts.get('gpu')} (compute capability {facts.get('compute_capability', '?')}), "
          f"TensorRT {tensorrt.__version__}")
    failed = []
    for spec_name in [s.strip() for s in args.specs.split(",") if s.strip()]:
        spec = get_spec(spec_name)
        print(f"\n== {spec_name} ({args.size}) ==")
        # the plain graph: TensorRT's ONNX parser refuses the default graph pass's com.microsoft operators
        export_dir = cached_demo_export(spec_name, args.size, ("fp32", "fp16", "int8"), log=print, graph_pass=None)
        # force: every engine lands in the repository; this script applies (and reports) the gates itself.
        built = export_tensorrt(export_dir, spec, precisions, out=repo, strongly_typed=args.strongly_typed,
                                force=True, log=print)
        entry = {"export_dir": str(export_dir), "engines": {p: str(v) for p, v in built.engines.items()},
                 "builds": built.builds, "parity": {}, "latency": {}}
        for p, record in built.builds.items():
            print(f"{spec_name} TensorRT {p} memory: {memory_summary(record)}")
        reference = InProcessClassifier.from_export_dir(export_dir, "fp32")
        vocab = int(json.loads((Path(export_dir) / "config.json").read_text()).get("vocab_size", 1000))
        seqs = reference.encode(synthetic_payloads(spec_name, args.n, seed=SPLIT_SEEDS["heldout"]))
        ref_logits = reference.logits_for_ids(seqs)
        for p in precisions:
            atol, gate = spec.atol.get(p, float("inf")), spec.min_agreement.get(p, 0.0)
            with TensorRTRunner(built.engines[p]) as runner:
                for mode, wrapped in (("longest", runner), ("buckets", BucketPaddingRunner(runner, spec))):
                    clf = InProcessClassifier(spec, wrapped, reference.preprocessor)
                    res = compare(spec, ref_logits, clf.logits_for_ids(seqs))
                    res.update(atol=atol, min_agreement=gate,
                               passed=res["finite"] and res["max_abs_diff"] <= atol and res["agreement"] >= gate)
                    entry["parity"][f"{p}/{mode}"] = res
                    print(f"{spec_name} TensorRT {p} ({mode} padding) vs ORT fp32: max|Δlogit| "
                          f"{res['max_abs_diff']:.4g} (gate {atol:g}), agreement {res['agreement']:.4f} "
                          f"(gate {gate:g}) -> {'ok' if res['passed'] else 'FAILED'}")
                    if not res["passed"]:
                        failed.append(f"{spec_name} {p} {mode}")
                if not args.skip_bench:
                    points = [(1, spec.length_buckets[0]), (min(16, spec.max_batch_size), min(128, spec.max_length)),
                              (1, min(1024, spec.max_length)), (min(16, spec.max_batch_size), min(512, spec.max_length))]
                    entry["latency"][p] = [time_runner(runner, spec, b, s, 10, args.iters, vocab) for b, s in points]
        if "fp16" in precisions and not args.skip_variants:
            entry["fp16_variants"] = compare_fp16_variants(
                Path(export_dir), spec, repo.parent / "fp16_variants" / spec_name, ref_logits, seqs,
                reference.preprocessor, vocab, max(3, args.iters // 5))
        if not args.skip_bench:
            entry["latency"]["ort-fp32-cpu"] = [time_runner(reference.runner, spec, b, s, 2, max(3, args.iters // 10),
                                                            vocab)
                                                for b, s in [(1, spec.length_buckets[0]),
                                                             (min(16, spec.max_batch_size), min(128, spec.max_length))]]
            print(f"\n{'engine':<16}{'batch':>6}{'seq':>6}{'p50 ms':>10}{'p99 ms':>10}{'seq/s':>10}")
            for engine, rows in entry["latency"].items():
                for r in rows:
                    print(f"{engine:<16}{r['batch']:>6}{r['seq']:>6}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
                          f"{r['seq_per_s']:>10.1f}")
        reference.close()
        report["specs"][spec_name] = entry
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report["docker_command"] = docker_command(repo, tensorrt.__version__)
    report["failed"] = failed
    out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    print(f"\nresults: {out}")
    print("serve the engines with NVIDIA's Triton container (same TensorRT as the build):")
    print("  " + report["docker_command"])
    if failed:
        print(f"gpu-check: FAILED gates: {', '.join(failed)}")
        return EXIT_GATE
    print("gpu-check: all gates passed")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

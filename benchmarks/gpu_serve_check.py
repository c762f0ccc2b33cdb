"""Triton on a GPU: the python-backend models `guardrt repo --providers cuda` writes (KIND_GPU instances, ONNX
Runtime's CUDA provider), served by the real tritonserver (nvidia-pytriton's binary), against in-process CPU answers.

Runs on a GPU host without TensorRT, on the folder `benchmarks/gpu_ort_check.py --phase prepare` writes (tiny demo
exports + held-out inputs), with onnxruntime-gpu, nvidia-pytriton and tritonclient importable. For rejection and
intent-safety (fp32 and fp16) and Qwen3Guard-Gen's verdict model (fp32): one repository, one server on 127.0.0.1;
every held-out payload classified over gRPC by the thin client and in process on the CPU (fp32); the label must be
the same for every row at fp32 and agree at the spec's fp16 gate, scores within the stated tolerance; the server log
must show the CUDA provider in every GPU instance. Qwen3Guard-Gen's generate model stays on the CPU (its backend has
no GPU provider setting yet). Exit status 0 all checks pass, 1 one failed.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_ort_check import CLASSIFIERS  # noqa: E402

# |Δprobability| allowed between the served model and in-process CPU fp32 (fp32: kernel-order differences only).
SCORE_ATOL = {"fp32": 1e-4, "fp16": 2e-2}


def gpu_memory_in_use() -> list[str]:
    """nvidia-smi's compute processes (pid, MiB), or [] where it is not there."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def compare_rows(served: list[dict], local: list[dict]) -> dict:
    labels = sum(a.get("label") == b.get("label") for a, b in zip(served, local))
    # every probability field the card's output has (prob_<label>), the same in both
    diffs = [abs(float(a[k]) - float(b[k])) for a, b in zip(served, local) for k in b if k.startswith("prob_")
             and k in a]
    return {"n": len(local), "same_label": labels, "max_abs_score_diff": max(diffs) if diffs else None,
            "errors": [a.get("error") for a in served if a.get("error")][:3]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="the folder gpu_ort_check.py --phase prepare wrote")
    ap.add_argument("--out", default="benchmarks/results/gpu_serve_check.json")
    ap.add_argument("--providers", default="cuda", help="cpu: a dry run on a host without a GPU")
    args = ap.parse_args(argv)

    from guardrt.runtime.guard_client import TritonGuardClient
    from guardrt.runtime.guard_engine import GuardClassifier
    from guardrt.runtime.onnxrt import InProcessClassifier
    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.triton_client import TritonClassifier
    from guardrt.runtime.triton_generate import write_guard_models
    from guardrt.runtime.triton_repo import write_model

    src = Path(args.dir)
    inputs = json.loads((src / "inputs.json").read_text(encoding="utf-8"))
    report: dict = {"host": platform.node(), "providers": args.providers, "checks": {}}
    failed: list[str] = []
    repo = Path(tempfile.mkdtemp(prefix="gpu-serve-repo-"))
    served = {}
    for spec_name in CLASSIFIERS:
        for precision in ("fp32", "fp16"):
            name = f"{spec_name}-{precision}"
            write_model(repo, export_dir=src / spec_name, precision=precision, name=name, providers=args.providers)
            served[name] = (spec_name, precision)
    write_guard_models(repo, src / "qwen3guard-gen", providers=args.providers)
    report["config_kinds"] = {p.name: re.findall(r"kind:\s*(KIND_\w+)", (p / "config.pbtxt").read_text())
                              for p in sorted(repo.iterdir()) if (p / "config.pbtxt").is_file()}
    print(f"repository {repo}: {report['config_kinds']}")
    server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    server_log = out.parent / "gpu_serve_check.server.log"
    try:
        server.start()
    except Exception as exc:  # keep the server's log: it says why a provider did not load
        server_log.write_text(server.log_text()[-200_000:], encoding="utf-8")
        print(f"gpu-serve-check: the server did not start: {str(exc)[:2000]}\nserver log: {server_log}")
        return 1
    try:
        report["gpu_processes_while_serving"] = gpu_memory_in_use()
        for name, (spec_name, precision) in served.items():
            payloads = inputs["classifiers"][spec_name]
            with InProcessClassifier.from_export_dir(src / spec_name, "fp32") as local_clf:
                local = local_clf.classify(payloads)
            try:
                with TritonClassifier(server.grpc_url, spec_name, src / spec_name, model_name=name) as client:
                    remote = client.classify_batch(payloads)
            except Exception as exc:  # a failed model is a result: record it, check the others
                report["checks"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500], "passed": False}
                print(f"{name} over gRPC ({args.providers}): FAILED {report['checks'][name]['error']}")
                failed.append(name)
                continue
            res = compare_rows(remote, local)
            atol = SCORE_ATOL[precision]
            need = res["n"] if precision == "fp32" else int(np.ceil(0.99 * res["n"]))
            res["passed"] = (not res["errors"] and res["same_label"] >= need
                             and res["max_abs_score_diff"] is not None and res["max_abs_score_diff"] <= atol)
            report["checks"][name] = res
            print(f"{name} over gRPC ({args.providers}) vs in-process CPU fp32: same label {res['same_label']}/"
                  f"{res['n']}, max |Δscore| {res['max_abs_score_diff']:.3g} (tolerance {atol:g}) -> "
                  f"{'ok' if res['passed'] else 'FAILED'}")
            if not res["passed"]:
                failed.append(name)
        prompts = inputs["qwen3guard-gen"]["prompts"]
        with GuardClassifier(src / "qwen3guard-gen", "fp32", mode="verdict") as local_guard:
            local = local_guard.classify_ids(prompts, mode="verdict")
        with TritonGuardClient(server.grpc_url, src / "qwen3guard-gen", verdict_engine="graph") as client:
            remote = client.classify_ids(prompts, mode="verdict")
        same = sum(a.get("safety") == b.get("safety") and a.get("categories") == b.get("categories")
                   for a, b in zip(remote, local))
        report["checks"]["qwen3guard-gen-verdict"] = {"n": len(prompts), "same_verdict": same,
                                                       "passed": same == len(prompts)}
        print(f"qwen3guard-gen verdict over gRPC ({args.providers}) vs in-process CPU: same safety + categories "
              f"{same}/{len(prompts)} -> {'ok' if same == len(prompts) else 'FAILED'}")
        if same != len(prompts):
            failed.append("qwen3guard-gen-verdict")
    finally:
        log = server.log_text()
        server.stop()
    running_on = sorted(set(re.findall(r"on \[?'?(\w+ExecutionProvider)", log)))
    report["server_log_providers"] = running_on
    print(f"server log: instances running on {running_on}")
    if args.providers == "cuda" and "CUDAExecutionProvider" not in running_on:
        failed.append("no instance reported the CUDA provider")
    report["failed"] = failed
    out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    server_log.write_text(log[-200_000:], encoding="utf-8")
    print(f"results: {out}")
    print("gpu-serve-check: " + (f"FAILED: {', '.join(failed)}" if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Soak run of the real Triton server: sustained concurrent load with malformed requests mixed in.

A program, not a timed test. It writes a Triton repository with the demo models (python flavor, the generated
configs: dynamic batching and the spec-derived queue policy), starts `tritonserver` on 127.0.0.1, and for
`--duration` seconds keeps `--concurrency` closed-loop workers busy (each sends its next request as soon as the
previous one is answered; workers alternate between the specs). One request in `--bad-every` (default 50) is
malformed, cycling through the kinds in BAD_KINDS (out-of-range / negative token ids, wrong rank, mismatched
shapes, empty sequence and batch, bad masks, too long, wrong dtype, a missing input), sent raw with tritonclient so
nothing on the client side catches it. Good requests go through guardrt's asyncio client (real preprocessing,
retries, deadline).

Pass/fail (exit code 1 on any violation), all recorded in the JSON:
* every good request succeeds, and its logits equal in-process ONNX Runtime on the same model file (spec atol);
* every malformed request gets an error that is one line and names its problem (BAD_KINDS' patterns);
* the server process tree stays up.
Measured: requests, throughput, p50 / p99 latency of the good requests (overall, per spec, per 5 s window), the
server's RSS (tritonserver + python stubs) after warm-up and at the end, sampled every second, and its peak.

    python benchmarks/soak.py                       # 60 s, concurrency 64, tiny demo models (both specs)
    python benchmarks/soak.py --size realistic      # the realistic demo models (built once, cached)
    python benchmarks/soak.py --duration 5 --concurrency 8 --out /tmp/soak    # a smoke run

Writes benchmarks/results/soak[_<size>].json and .png (latency percentiles and RSS over time).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SPECS = ("rejection", "intent-safety")
HUGE_ID = 10 ** 9  # beyond any vocabulary


def _bad_kinds(max_length: int) -> dict:
    """{kind: (make(ids) -> ({input: array}, datatype of input_ids), error pattern)}; `ids` is a good sequence."""
    def one(ids):
        return np.asarray([ids], dtype=np.int64)

    def ones(a):
        return np.ones(a.shape, dtype=np.int64)

    def bad_id(ids, value):
        a = one(ids)
        a[0, len(ids) // 2] = value
        return {"input_ids": a, "attention_mask": ones(a)}, "INT64"

    def gap(ids):
        a = one(ids + [ids[-1]] * 3)
        m = ones(a)
        m[0, 1] = 0
        return {"input_ids": a, "attention_mask": m}, "INT64"

    return {
        "id out of range": (lambda ids: bad_id(ids, HUGE_ID), r"token id 1000000000 at position \d+ is outside the "
                                                              r"vocabulary \[0, \d+\)"),
        "negative id": (lambda ids: bad_id(ids, -7), r"token id -7 at position \d+ is outside the vocabulary"),
        "wrong rank": (lambda ids: ({"input_ids": one(ids)[None], "attention_mask": ones(one(ids)[None])}, "INT64"),
                       r"unexpected shape for input"),
        "mismatched shapes": (lambda ids: ({"input_ids": one(ids), "attention_mask": ones(one(ids + [1]))}, "INT64"),
                              r"must both be \[batch, seq\]"),
        "empty sequence": (lambda ids: ({"input_ids": np.zeros((1, 0), np.int64),
                                         "attention_mask": np.zeros((1, 0), np.int64)}, "INT64"),
                           r"empty sequence"),
        "empty batch": (lambda ids: ({"input_ids": np.zeros((0, 4), np.int64),
                                      "attention_mask": np.zeros((0, 4), np.int64)}, "INT64"),
                        r"byte size mismatch|empty batch"),
        "all-zero mask": (lambda ids: ({"input_ids": one(ids), "attention_mask": np.zeros((1, len(ids)), np.int64)},
                                       "INT64"), r"has no tokens"),
        "gap in mask": (gap, r"one contiguous run"),
        "too long": (lambda ids: ({"input_ids": np.full((1, max_length + 1), 5, np.int64),
                                   "attention_mask": np.ones((1, max_length + 1), np.int64)}, "INT64"),
                     r"exceeds the model maximum"),
        "float ids": (lambda ids: ({"input_ids": one(ids).astype(np.float32), "attention_mask": ones(one(ids))},
                                   "FP32"), r"data-type is 'FP32'"),
        "missing mask": (lambda ids: ({"input_ids": one(ids)}, "INT64"), r"missing required input"),
    }


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- set-up -----------------------------------------------------------------------------------------------------------
def prepare(spec_name: str, size: str, pool: int, seed: int) -> dict:
    """The export, a pool of real request sequences (synthetic payloads through the real preprocessing), and their
    in-process ONNX Runtime logits (the reference every good answer is checked against)."""
    from guardrt.export.demo_models import cached_demo_export
    from guardrt.export.synthetic import synthetic_payloads
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.onnxrt import OnnxRunner
    from guardrt.runtime.preprocess import build_preprocessor
    from guardrt.runtime.specs import get_spec

    spec = get_spec(spec_name)
    export = cached_demo_export(spec_name, size, ("fp32",), log=lambda m: _log(f"  {m}"))
    pre = build_preprocessor(spec, export)
    seqs = [pre.encode(p) for p in synthetic_payloads(spec_name, pool, seed=seed)]
    with OnnxRunner(load_export_dir(export).model_path("fp32")) as runner:
        ref = np.stack([runner.infer({"input_ids": np.array([s]), "attention_mask": np.ones((1, len(s)), np.int64)})
                        ["logits"][0] for s in seqs])
    lengths = [len(s) for s in seqs]
    return {"spec": spec, "export": export, "seqs": seqs, "ref": ref,
            "lengths": {"mean": float(np.mean(lengths)), "max": int(max(lengths)), "n": len(seqs)}}


def server_rss_mib(pid: int) -> float:
    """Current resident set of tritonserver and its python stubs together (MiB)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2 ** 20
    except psutil.NoSuchProcess:
        return float("nan")


# -- the load ---------------------------------------------------------------------------------------------------------
async def soak(url: str, models: dict, args, server_pid: int) -> dict:
    import tritonclient.grpc.aio as aio
    from tritonclient.utils import InferenceServerException

    from guardrt.runtime.triton_client import AsyncTritonClassifier

    clients = {name: AsyncTritonClassifier(url, m["spec"]) for name, m in models.items()}
    raw = aio.InferenceServerClient(url)
    kinds = {name: _bad_kinds(m["spec"].max_length) for name, m in models.items()}
    kind_names = list(next(iter(kinds.values())))
    for c in clients.values():
        await c.check_ready()
    # Warm-up: a few requests per model, then the baseline RSS.
    for name, c in clients.items():
        for s in models[name]["seqs"][:8]:
            await c.logits_for_ids([s])
    await asyncio.sleep(1.0)
    rss_start = server_rss_mib(server_pid)

    counter = [0]
    good: list[dict] = []  # {spec, t_end, latency, ok, error, max_diff}
    bad: list[dict] = []  # {spec, kind, error, clear}
    rss_samples: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    end = t0 + args.duration
    names = list(models)

    async def send_bad(name: str, k: int) -> None:
        kind = kind_names[(k // args.bad_every) % len(kind_names)]
        make, pattern = kinds[name][kind]
        seq = models[name]["seqs"][k % len(models[name]["seqs"])]
        arrays, dtype = make(list(seq))
        inputs = []
        for input_name, arr in arrays.items():
            t = aio.InferInput(input_name, list(arr.shape), dtype if input_name == "input_ids" else "INT64")
            t.set_data_from_numpy(arr)
            inputs.append(t)
        try:
            await raw.infer(name, inputs, client_timeout=60)
            bad.append({"spec": name, "kind": kind, "error": None, "clear": False})
        except InferenceServerException as exc:
            message = str(exc.message())
            clear = bool(message) and "\n" not in message and re.search(pattern, message) is not None
            bad.append({"spec": name, "kind": kind, "error": message[:300], "clear": clear})

    async def send_good(name: str, k: int) -> None:
        m = models[name]
        i = k % len(m["seqs"])
        t = time.perf_counter()
        try:
            logits = (await clients[name].logits_for_ids([m["seqs"][i]]))[0]
        except Exception as exc:  # noqa: BLE001 - any failure of a good request is a soak failure
            good.append({"spec": name, "t_end": time.perf_counter() - t0, "latency": time.perf_counter() - t,
                         "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
            return
        diff = float(np.abs(logits - m["ref"][i]).max())
        good.append({"spec": name, "t_end": time.perf_counter() - t0, "latency": time.perf_counter() - t,
                     "ok": diff <= m["spec"].atol["fp32"], "max_diff": diff,
                     "error": None if diff <= m["spec"].atol["fp32"] else f"logits differ from in-process by {diff}"})

    async def worker(w: int) -> None:
        name = names[w % len(names)]
        while time.perf_counter() < end:
            k = counter[0]
            counter[0] += 1
            if k % args.bad_every == args.bad_every - 1:
                await send_bad(name, k)
            else:
                await send_good(name, k)

    async def sample_rss() -> None:
        while time.perf_counter() < end:
            rss_samples.append((time.perf_counter() - t0, server_rss_mib(server_pid)))
            await asyncio.sleep(1.0)

    sampler = asyncio.ensure_future(sample_rss())
    await asyncio.gather(*(worker(w) for w in range(args.concurrency)))
    elapsed = time.perf_counter() - t0
    await sampler
    await asyncio.sleep(1.0)
    rss_end = server_rss_mib(server_pid)
    stats = {}
    for name, c in clients.items():
        s = (await c.statistics())["model_stats"][0]
        stats[name] = {"inference_count": int(s.get("inference_count", 0)),
                       "execution_count": int(s.get("execution_count", 0)),
                       "failed_requests": int(s.get("inference_stats", {}).get("fail", {}).get("count", 0))}
        await c.close()
    await raw.close()
    return {"elapsed_s": elapsed, "good": good, "bad": bad, "rss_samples": rss_samples, "rss_start_mib": rss_start,
            "rss_end_mib": rss_end, "triton_stats": stats}


# -- report -----------------------------------------------------------------------------------------------------------
def summarize(run: dict, window_s: float = 5.0) -> dict:
    good, bad = run["good"], run["bad"]
    lat = np.asarray([g["latency"] for g in good if g["ok"]]) * 1000.0
    out = {
        "duration_s": run["elapsed_s"],
        "good_requests": len(good),
        "good_failed": sum(not g["ok"] for g in good),
        "good_failures": [g["error"] for g in good if not g["ok"]][:10],
        "bad_requests": len(bad),
        "bad_accepted": sum(b["error"] is None for b in bad),
        "bad_unclear": sum(not b["clear"] for b in bad),
        "bad_unclear_examples": [b for b in bad if not b["clear"]][:10],
        "bad_by_kind": {},
        "throughput_rps": (len(good) + len(bad)) / run["elapsed_s"],
        "latency_ms": common.summarize(lat / 1000.0) if lat.size else None,
        "per_spec": {},
        "windows": [],
        "server_rss_mib": {"after_warmup": run["rss_start_mib"], "end": run["rss_end_mib"],
                           "growth": run["rss_end_mib"] - run["rss_start_mib"],
                           "max_sampled": max((r for _, r in run["rss_samples"]), default=float("nan")),
                           # ONNX Runtime's arenas grow to the largest batch shapes within seconds; a leak keeps
                           # growing after that, so the growth from 10 s on is the number to watch.
                           "at_10s": next((r for t, r in run["rss_samples"] if t >= 10.0), float("nan")),
                           "growth_after_10s": run["rss_end_mib"] - next((r for t, r in run["rss_samples"]
                                                                        if t >= 10.0), float("nan"))},
        "triton_stats": run["triton_stats"],
    }
    for b in bad:
        row = out["bad_by_kind"].setdefault(b["kind"], {"sent": 0, "clear": 0, "example": b["error"]})
        row["sent"] += 1
        row["clear"] += int(b["clear"])
    for name in sorted({g["spec"] for g in good}):
        sl = np.asarray([g["latency"] for g in good if g["spec"] == name and g["ok"]])
        out["per_spec"][name] = {"good_requests": sum(g["spec"] == name for g in good),
                                 "max_abs_diff_vs_inprocess": max((g.get("max_diff", 0.0) for g in good
                                                                   if g["spec"] == name), default=None),
                                 "latency_ms": common.summarize(sl) if sl.size else None}
    t = 0.0
    while t < run["elapsed_s"]:
        w = np.asarray([g["latency"] for g in good if g["ok"] and t <= g["t_end"] < t + window_s]) * 1000.0
        if w.size:
            out["windows"].append({"start_s": t, "requests": int(w.size), "p50_ms": float(np.percentile(w, 50)),
                                   "p99_ms": float(np.percentile(w, 99))})
        t += window_s
    out["rss_samples"] = [{"t_s": round(t, 2), "rss_mib": round(r, 1)} for t, r in run["rss_samples"]]
    return out


def plot(result: dict, out_prefix: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    xs = [w["start_s"] for w in s["windows"]]
    axes[0].plot(xs, [w["p50_ms"] for w in s["windows"]], "o-", label="p50")
    axes[0].plot(xs, [w["p99_ms"] for w in s["windows"]], "s--", label="p99")
    axes[0].set_xlabel("time (s)")
    axes[0].set_ylabel("latency of good requests (ms)")
    axes[0].set_title(f"concurrency {result['concurrency']}, 1 in {result['bad_every']} malformed")
    axes[0].legend()
    axes[0].grid(True, alpha=0.3)
    axes[1].plot([r["t_s"] for r in s["rss_samples"]], [r["rss_mib"] for r in s["rss_samples"]], "-")
    axes[1].set_xlabel("time (s)")
    axes[1].set_ylabel("server RSS, tritonserver + stubs (MiB)")
    axes[1].set_title(f"RSS {s['server_rss_mib']['after_warmup']:.0f} -> {s['server_rss_mib']['end']:.0f} MiB")
    axes[1].grid(True, alpha=0.3)
    fig.suptitle(f"guardrt soak: {', '.join(result['specs'])} ({result['size']}), {s['good_requests']} good "
                 f"({s['good_failed']} failed), {s['bad_requests']} malformed ({s['bad_unclear']} unclear); "
                 f"{result['machine']['peak']['cpu']} x{result['machine']['peak']['cores']}", fontsize=9)
    fig.tight_layout()
    path = out_prefix.with_suffix(".png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_report(result: dict) -> None:
    s = result["summary"]
    lat = s["latency_ms"] or {}
    print(f"soak: {s['duration_s']:.1f}s at concurrency {result['concurrency']} on {', '.join(result['specs'])} "
          f"({result['size']} demo models)")
    print(f"  good requests: {s['good_requests']}, failed: {s['good_failed']}; malformed: {s['bad_requests']}, "
          f"accepted: {s['bad_accepted']}, unclear errors: {s['bad_unclear']}")
    print(f"  throughput {s['throughput_rps']:.1f} req/s; good latency p50 {lat.get('p50_ms', float('nan')):.1f} ms, "
          f"p99 {lat.get('p99_ms', float('nan')):.1f} ms")
    for name, p in s["per_spec"].items():
        pl = p["latency_ms"] or {}
        print(f"  {name}: {p['good_requests']} good, p50 {pl.get('p50_ms', float('nan')):.1f} ms, p99 "
              f"{pl.get('p99_ms', float('nan')):.1f} ms, max |Δlogit| vs in-process {p['max_abs_diff_vs_inprocess']}")
    r = s["server_rss_mib"]
    print(f"  server RSS (tritonserver + stubs): {r['after_warmup']:.0f} MiB after warm-up, {r['at_10s']:.0f} MiB "
          f"at 10 s, {r['end']:.0f} MiB at the end ({r['growth']:+.0f} MiB; {r['growth_after_10s']:+.1f} MiB after "
          f"10 s), max sampled {r['max_sampled']:.0f} MiB")
    for kind, row in s["bad_by_kind"].items():
        print(f"  malformed '{kind}': {row['clear']}/{row['sent']} clear, e.g. {row['example']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=",".join(SPECS), help="comma-separated specs (default: both)")
    ap.add_argument("--size", default="tiny", choices=("tiny", "realistic"), help="demo model size (default: tiny)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (default: 60)")
    ap.add_argument("--concurrency", type=int, default=64, help="closed-loop workers (default: 64)")
    ap.add_argument("--bad-every", type=int, default=50, help="one malformed request in N (default: 50)")
    ap.add_argument("--pool", type=int, default=256, help="distinct good requests per spec (default: 256)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="output prefix (default: benchmarks/results/soak[_SIZE])")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if args.bad_every < 2 or args.concurrency < 1 or args.duration <= 0:
        ap.error("--bad-every >= 2, --concurrency >= 1 and --duration > 0 are required")
    specs = [s.strip() for s in args.spec.split(",") if s.strip()]
    out = args.out or common.RESULTS / ("soak" if args.size == "tiny" else f"soak_{args.size}")

    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.triton_repo import write_model

    models = {}
    for name in specs:
        _log(f"{name}: {args.size} demo export, {args.pool} requests and their in-process logits ...")
        models[name] = prepare(name, args.size, args.pool, args.seed)
    repo = Path(tempfile.mkdtemp(prefix="guardrt-soak-repo-"))
    threads = os.cpu_count() or 1
    result = {"benchmark": "soak", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": common.machine_description(threads), "versions": common.versions(), "specs": specs,
              "size": args.size, "duration_s": args.duration, "concurrency": args.concurrency,
              "bad_every": args.bad_every, "request_lengths": {n: m["lengths"] for n, m in models.items()}}
    try:
        for name, m in models.items():
            write_model(repo, export_dir=m["export"])
        server = TritonServer(repo, grpc_port=free_port(), http_port=None, metrics_port=None)
        server.start()
        try:
            _log(f"tritonserver ready on {server.grpc_url}; {args.duration:.0f}s at concurrency {args.concurrency}")
            run = asyncio.run(soak(server.grpc_url, models, args, server.process.pid))
            result["server_alive_at_end"] = server.is_running()
            result["server_peak_rss_mib"] = common.tree_peak_rss_mib(server.process.pid)
        finally:
            server.stop()
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    result["summary"] = summarize(run)
    s = result["summary"]
    result["passed"] = bool(s["good_failed"] == 0 and s["bad_accepted"] == 0 and s["bad_unclear"] == 0
                            and s["good_requests"] > 0 and s["bad_requests"] > 0 and result["server_alive_at_end"])
    common.write_json(out.with_suffix(".json"), result)
    if not args.no_plot:
        plot(result, out)
    print_report(result)
    print(f"  {'PASSED' if result['passed'] else 'FAILED'}; wrote {out.with_suffix('.json')}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

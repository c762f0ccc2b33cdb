"""Serving benchmark: guardrt models in the real Triton server, over gRPC with the asyncio thin client.

For each spec it writes a Triton repository with two copies of the same model — `<spec>` (dynamic batching, the
spec's preferred sizes and queue delay) and `<spec>-nobatch` (no dynamic_batching block: one request = one
execution) — starts `tritonserver` (guardrt's launcher, 127.0.0.1, a free port), and measures:

* a concurrency sweep (default 1 2 4 8 16 32 64 in-flight requests, each request one sequence, as a service sends
  them) over a seeded realistic mix of request lengths; per level, measurement windows are repeated until the last
  three windows' throughputs are within ±10% of their mean (Triton perf_analyzer's stability rule) or a window cap
  is hit; p50/p90/p99 latency and throughput from the stable windows; dynamic batching on vs off;
* the batch sizes Triton actually executed at each level (statistics API: batch_stats, inference vs execution count);
* in-process ONNX Runtime on the same model file, same threads, batch 16 of the same length mix (the throughput the
  server should approach at concurrency 16), and single short requests in-process vs over gRPC (the round trip's
  added latency);
* peak RSS of the server process tree and the model size on disk.

Writes benchmarks/results/serve[_quick].json and serve[_quick]_<spec>.png (latency vs throughput, on/off).

    python benchmarks/serve.py                  # realistic demo models (make bench-serve)
    python benchmarks/serve.py --quick          # tiny models, a short sweep (smoke test)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

# Request length mixes (tokens), seeded: LLM answers for `rejection` (short to a few paragraphs), dialogue contexts
# for `intent-safety` (task description + recent turns; long tails cut at what 2 cores serve in seconds).
LENGTH_MIX = {
    "rejection": dict(median=64, sigma=0.8, low=8, high=512),
    "intent-safety": dict(median=128, sigma=0.6, low=48, high=768),
}
SHORT_LEN = 16


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def request_stream(spec, vocab_size: int, n: int, seed: int = 0, quick: bool = False) -> list[list[int]]:
    mix = dict(LENGTH_MIX[spec.name])
    if quick:
        mix.update(median=16, high=48, low=4)
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(mix["median"]), mix["sigma"], n)), mix["low"], mix["high"])
    top = max(11, min(vocab_size, 150000) - 10)
    return [rng.integers(10, top, int(k)).tolist() for k in lengths]


# -- repository + server ----------------------------------------------------------------------------------------------
def write_repo(repo: Path, spec, model_path: Path, precision: str, threads: int) -> dict[str, str]:
    """Two models for one ONNX file: dynamic batching on (`<spec>`) and off (`<spec>-nobatch`)."""
    from guardrt.runtime.triton_repo import write_model

    names = {"on": spec.name, "off": f"{spec.name}-nobatch"}
    for mode, name in names.items():
        write_model(repo, spec=spec, flavor="python", precision=precision, onnx_path=model_path, name=name,
                    intra_op_threads=threads, dynamic_batching=mode == "on")
    return names


async def _stats(client, model: str) -> dict:
    raw = await client.client.get_inference_statistics(model, as_json=True)
    ms = raw["model_stats"][0]
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in ms.get("batch_stats", [])}
    return {"inference_count": int(ms.get("inference_count", 0)), "execution_count": int(ms.get("execution_count", 0)),
            "batches": batches,
            "queue_ns": int(ms.get("inference_stats", {}).get("queue", {}).get("ns", 0)),
            "compute_ns": int(ms.get("inference_stats", {}).get("compute_infer", {}).get("ns", 0))}


def _stats_diff(a: dict, b: dict) -> dict:
    batches = {k: b["batches"].get(k, 0) - a["batches"].get(k, 0) for k in b["batches"]}
    batches = {k: v for k, v in sorted(batches.items()) if v}
    inf = b["inference_count"] - a["inference_count"]
    ex = b["execution_count"] - a["execution_count"]
    return {"inferences": inf, "executions": ex, "mean_executed_batch": inf / ex if ex else None,
            "executed_batch_sizes": {str(k): v for k, v in batches.items()},
            "mean_queue_ms": (b["queue_ns"] - a["queue_ns"]) / 1e6 / inf if inf else None,
            "mean_compute_ms_per_request": (b["compute_ns"] - a["compute_ns"]) / 1e6 / inf if inf else None}


async def sweep_level(client, stream, concurrency: int, window_s: float, min_windows: int, max_windows: int,
                      stability: float, offset: int, min_requests: int = 30) -> dict:
    """Closed loop: `concurrency` workers, each sends its next request as soon as the previous answer arrives."""
    lock_index = [offset]
    records: list[tuple[float, float]] = []  # (end time, latency)
    stop = asyncio.Event()
    errors: list[str] = []

    async def worker():
        while not stop.is_set():
            i = lock_index[0]
            lock_index[0] += 1
            ids = stream[i % len(stream)]
            t = time.perf_counter()
            try:
                await client.logits_for_ids([ids])
            except Exception as exc:  # noqa: BLE001
                errors.append(str(exc).splitlines()[0])
                if len(errors) > 20:
                    stop.set()
                continue
            end = time.perf_counter()
            records.append((end, end - t))

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    # warm-up: let the pipeline fill (one latency's worth of requests per worker)
    t_start = time.perf_counter()
    while len(records) < concurrency and time.perf_counter() - t_start < 30 and not stop.is_set():
        await asyncio.sleep(0.01)
    windows = []
    stable = False
    while len(windows) < max_windows and not stop.is_set():
        w0 = time.perf_counter()
        n0 = len(records)
        # a window holds at least 2 requests per worker (closed-loop throughput is not quantised away) and
        # `min_requests` (a heavy-tailed length mix needs enough requests for a stable mean)
        while not stop.is_set():
            await asyncio.sleep(0.02)
            if time.perf_counter() - w0 >= window_s and len(records) - n0 >= max(2 * concurrency, min_requests):
                break
            if time.perf_counter() - w0 > 20 * window_s:
                break
        w1 = time.perf_counter()
        lat = [l for e, l in records[n0:] if w0 <= e <= w1]
        windows.append({"seconds": w1 - w0, "requests": len(lat), "throughput": len(lat) / (w1 - w0), "latencies": lat})
        if len(windows) >= min_windows:
            last = [w["throughput"] for w in windows[-3:]]
            mean = float(np.mean(last))
            if mean > 0 and all(abs(x - mean) <= stability * mean for x in last):
                stable = True
                break
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    used = windows[-3:] if len(windows) >= 3 else windows
    lat = np.asarray([l for w in used for l in w["latencies"]]) * 1000.0
    secs = sum(w["seconds"] for w in used)
    return {
        "concurrency": concurrency,
        "stable": stable,
        "windows": len(windows),
        "window_throughputs": [round(w["throughput"], 2) for w in windows],
        "requests": int(lat.size),
        "throughput_rps": float(lat.size / secs) if secs else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p90_ms": float(np.percentile(lat, 90)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "mean_ms": float(lat.mean()) if lat.size else None,
        "errors": errors[:3],
        "next_offset": lock_index[0],
    }


async def run_sweep(url, spec, model_name, stream, levels, args, progress, label) -> list[dict]:
    from guardrt.runtime.triton_client import AsyncTritonClassifier

    out = []
    offset = 0
    async with AsyncTritonClassifier(url, spec, model_name=model_name, timeout_s=600.0, retries=2) as client:
        await client.check_ready()
        for c in levels:
            before = await _stats(client, model_name)
            res = await sweep_level(client, stream, c, args.window_s, args.min_windows, args.max_windows,
                                    args.stability, offset, args.min_requests)
            offset = res.pop("next_offset")
            after = await _stats(client, model_name)
            res["server"] = _stats_diff(before, after)
            out.append(res)
            progress.update(f"{spec.name} {label} c={c}: {res['throughput_rps']:.1f} req/s, "
                            f"p50 {res['p50_ms'] or 0:.1f} ms, mean batch {res['server']['mean_executed_batch'] or 0:.1f}"
                            f"{'' if res['stable'] else ' (not stable)'}")
    return out


async def grpc_short_latency(url, spec, model_name, seqs, reps) -> list[float]:
    from guardrt.runtime.triton_client import AsyncTritonClassifier

    async with AsyncTritonClassifier(url, spec, model_name=model_name, timeout_s=60.0) as client:
        await client.check_ready()
        for s in seqs[:5]:
            await client.logits_for_ids([s])
        times = []
        for i in range(reps):
            t = time.perf_counter()
            await client.logits_for_ids([seqs[i % len(seqs)]])
            times.append(time.perf_counter() - t)
        return times


def inprocess_baselines(spec, model_path: Path, stream, threads: int, reps: int, short: list[list[int]],
                        budget_s: float) -> dict:
    """The same model file in-process: batch-16 throughput on the length mix, and single short requests."""
    from guardrt.runtime.onnxrt import OnnxRunner
    from guardrt.runtime.preprocess import pad_batch

    runner = OnnxRunner(model_path, intra_op_threads=threads)
    def run(seqs):
        ids, mask = pad_batch(seqs, spec.pad_token_id, spec.padding_side)
        return runner.infer({"input_ids": ids, "attention_mask": mask})

    batch = 16
    batches = [stream[i:i + batch] for i in range(0, len(stream) - batch + 1, batch)]
    run(batches[0])
    n_req, t0 = 0, time.perf_counter()
    i = 0
    while (time.perf_counter() - t0 < budget_s or i < 3) and i < len(batches) * 4:
        run(batches[i % len(batches)])
        n_req += batch
        i += 1
    b16 = n_req / (time.perf_counter() - t0)
    for s in short[:5]:
        run([s])
    times = []
    for k in range(reps):
        t = time.perf_counter()
        run([short[k % len(short)]])
        times.append(time.perf_counter() - t)
    runner.close()
    return {"batch16_throughput_rps": b16, "batch16_batches": i, "short_single": common.summarize(times)}


def plot(result: dict, out_prefix: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for spec in result["specs"]:
        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        for mode, style in (("on", "o-"), ("off", "s--")):
            rows = spec["sweep"].get(mode) or []
            xs = [r["throughput_rps"] for r in rows]
            axes[0].plot(xs, [r["p50_ms"] for r in rows], style, label=f"dynamic batching {mode}: p50")
            axes[0].plot(xs, [r["p99_ms"] for r in rows], style, alpha=0.4, label=f"dynamic batching {mode}: p99")
            for r in rows:
                axes[0].annotate(str(r["concurrency"]), (r["throughput_rps"], r["p50_ms"]), fontsize=7)
            axes[1].plot([r["concurrency"] for r in rows], xs, style, label=f"dynamic batching {mode}")
        b16 = spec["inprocess"]["batch16_throughput_rps"]
        axes[1].axhline(b16, color="k", lw=0.8, ls=":", label=f"in-process batch 16: {b16:.1f} req/s")
        axes[0].set_xlabel("throughput (requests/s)")
        axes[0].set_ylabel("latency (ms)")
        axes[0].set_yscale("log")
        axes[0].set_title(f"{spec['spec']} over gRPC: latency vs throughput (labels: concurrency)")
        axes[0].legend(fontsize=7)
        axes[0].grid(True, alpha=0.3)
        axes[1].set_xscale("log", base=2)
        axes[1].set_xlabel("concurrent requests")
        axes[1].set_ylabel("throughput (requests/s)")
        axes[1].set_title("throughput vs concurrency")
        axes[1].legend(fontsize=7)
        axes[1].grid(True, alpha=0.3)
        fig.suptitle(f"{spec['model']} ({spec['precision']}), Triton {result['versions'].get('nvidia-pytriton')} "
                     f"python backend, {result['machine']['peak']['cpu']} x{result['machine']['peak']['cores']}",
                     fontsize=9)
        files.append(common.save_spec_figure(fig, out_prefix, spec["spec"]))
    return files


def resolve_model(spec_name: str, args) -> tuple[Path, str, dict]:
    """(model.onnx, description, config) — the demo export (fused variant by default) at `args.precision`."""
    from guardrt.runtime.export_dir import load_export_dir

    import inprocess

    pins = inprocess.parse_pins(args.export_dir or os.environ.get("GUARDRT_BENCH_EXPORT_DIRS", ""))
    pin = pins.get(f"{spec_name}:fused" if args.fused else spec_name)
    if pin:
        export = load_export_dir(pin, spec_name)
    else:
        size = "tiny" if args.quick else args.size
        plain = load_export_dir(inprocess.plain_export(spec_name, size, inprocess.PRECISIONS))
        if args.fused:
            source = Path(plain.raw.get("source_model_dir") or "")
            export = load_export_dir(inprocess.fused_export(spec_name, size, inprocess.FUSED_PRECISIONS,
                                                            model_dir=source if source.is_dir() else None))
        else:
            export = plain
    cfg = json.loads((export.path / "config.json").read_text())
    path = export.model_path(args.precision)
    return path, f"guardrt-ort-{args.precision}{'-fused' if args.fused else ''}", cfg


def run_spec(spec_name: str, args, progress) -> dict:
    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.specs import get_spec

    spec = get_spec(spec_name)
    model_path, label, cfg = resolve_model(spec_name, args)
    stream = request_stream(spec, int(cfg["vocab_size"]), args.requests, seed=args.seed, quick=args.quick)
    short = request_stream(spec, int(cfg["vocab_size"]), 64, seed=args.seed + 1, quick=True)
    short = [s[:SHORT_LEN] + [s[0]] * max(0, SHORT_LEN - len(s)) for s in short]
    lengths = np.asarray([len(s) for s in stream])
    result = {"spec": spec.name, "model": label, "precision": args.precision, "model_path": str(model_path),
              "model_size_mb": common.dir_bytes(model_path.parent) / 1e6,
              "length_mix": {**LENGTH_MIX[spec.name], "seed": args.seed, "n": len(stream),
                             "mean": float(lengths.mean()), "p50": float(np.median(lengths)),
                             "p90": float(np.percentile(lengths, 90)), "max": int(lengths.max())}}
    progress.update(f"{spec.name}: in-process baseline", advance=0)
    result["inprocess"] = inprocess_baselines(spec, model_path, stream, args.threads, args.short_reps, short,
                                              args.baseline_s)
    repo = Path(tempfile.mkdtemp(prefix=f"guardrt-bench-repo-{spec.name}-"))
    try:
        names = write_repo(repo, spec, model_path, args.precision, args.threads)
        server = TritonServer(repo, grpc_port=free_port(), http_port=None, metrics_port=None,
                              env={"OMP_NUM_THREADS": "1"})
        t0 = time.perf_counter()
        server.start()
        result["server_start_s"] = time.perf_counter() - t0
        try:
            url = server.grpc_url
            short_grpc = asyncio.run(grpc_short_latency(url, spec, names["off"], short, args.short_reps))
            result["grpc_short_single"] = common.summarize(short_grpc)
            result["grpc_overhead_p50_ms"] = (result["grpc_short_single"]["p50_ms"]
                                              - result["inprocess"]["short_single"]["p50_ms"])
            result["sweep"] = {}
            for mode in args.modes:
                levels = args.concurrency if mode == "on" else args.off_concurrency
                result["sweep"][mode] = asyncio.run(run_sweep(url, spec, names[mode], stream, levels,
                                                              args, progress, f"batching {mode}"))
            result["server_peak_rss_mib"] = common.tree_peak_rss_mib(server.process.pid)
        finally:
            server.stop()
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    on = {r["concurrency"]: r for r in result["sweep"].get("on", [])}
    if 16 in on:
        result["c16_throughput_vs_inprocess_b16"] = on[16]["throughput_rps"] / result["inprocess"]["batch16_throughput_rps"]
    return result


def print_tables(result: dict) -> None:
    for spec in result["specs"]:
        print(f"\n== {spec['spec']} over gRPC: {spec['model']} ({spec['model_size_mb']:.1f} MB), length mix mean "
              f"{spec['length_mix']['mean']:.0f} / p90 {spec['length_mix']['p90']:.0f} tokens")
        rows = []
        for mode, levels in spec["sweep"].items():
            for r in levels:
                rows.append({"mode": f"batching {mode}", **{k: r[k] for k in ("concurrency", "throughput_rps", "p50_ms",
                                                                              "p90_ms", "p99_ms", "windows")},
                             "stable": "yes" if r["stable"] else "no",
                             "mean_batch": r["server"]["mean_executed_batch"],
                             "batches": " ".join(f"{k}:{v}" for k, v in r["server"]["executed_batch_sizes"].items())})
        print(common.format_table(rows, [("mode", "mode", ""), ("concurrency", "conc", "{}"),
                                         ("throughput_rps", "req/s", "{:.1f}"), ("p50_ms", "p50 ms", "{:.1f}"),
                                         ("p90_ms", "p90 ms", "{:.1f}"), ("p99_ms", "p99 ms", "{:.1f}"),
                                         ("windows", "win", "{}"), ("stable", "stable", ""),
                                         ("mean_batch", "mean exec batch", "{:.2f}"),
                                         ("batches", "executed batch sizes (size:count)", "")]))
        ip = spec["inprocess"]
        print(f"in-process batch-16 throughput: {ip['batch16_throughput_rps']:.1f} req/s"
              + (f"; concurrency-16 over gRPC = {100 * spec['c16_throughput_vs_inprocess_b16']:.0f}% of it"
                 if "c16_throughput_vs_inprocess_b16" in spec else ""))
        print(f"short requests ({SHORT_LEN} tokens): in-process p50 {ip['short_single']['p50_ms']:.2f} ms, gRPC p50 "
              f"{spec['grpc_short_single']['p50_ms']:.2f} ms -> round trip adds {spec['grpc_overhead_p50_ms']:.2f} ms")
        rss = spec.get("server_peak_rss_mib", {})
        print(f"Triton server peak RSS (process tree): {rss.get('total', float('nan')):.0f} MiB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=os.environ.get("GUARDRT_BENCH_SPECS", "rejection,intent-safety"))
    ap.add_argument("--size", default=os.environ.get("GUARDRT_BENCH_SIZE", "realistic"), choices=("tiny", "realistic"))
    ap.add_argument("--export-dir", default=None,
                    help="serve these export directories instead of the demo exports: SPEC=DIR[,SPEC:fused=DIR...] "
                         "(env GUARDRT_BENCH_EXPORT_DIRS)")
    ap.add_argument("--precision", default=os.environ.get("GUARDRT_BENCH_PRECISION", "int8-dynamic"))
    ap.add_argument("--no-fused", dest="fused", action="store_false", help="serve the unfused export")
    ap.add_argument("--quick", action="store_true", help="tiny models, short sweep (smoke test)")
    ap.add_argument("--concurrency", default=None, help="comma-separated levels (default 1,2,4,8,16,32,64)")
    ap.add_argument("--modes", default="on,off", help="dynamic batching modes to sweep: on,off")
    ap.add_argument("--off-concurrency", default=None,
                    help="levels for dynamic batching off (default 1,4,16,64: the contrast, at a quarter of the cost)")
    ap.add_argument("--min-requests", type=int, default=30, help="minimum requests per measurement window")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("GUARDRT_BENCH_THREADS", "0")) or None)
    ap.add_argument("--requests", type=int, default=2048, help="size of the seeded request stream (cycled)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window-s", type=float, default=3.0)
    ap.add_argument("--min-windows", type=int, default=3)
    ap.add_argument("--max-windows", type=int, default=6)
    ap.add_argument("--stability", type=float, default=0.10)
    ap.add_argument("--short-reps", type=int, default=200)
    ap.add_argument("--baseline-s", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    args.threads = args.threads or (os.cpu_count() or 1)
    if args.quick:
        args.size = "tiny"
        args.concurrency = args.concurrency or "1,4"
        args.window_s, args.min_windows, args.max_windows = 0.3, 1, 2
        args.short_reps, args.baseline_s, args.requests, args.min_requests = 10, 0.2, 128, 4
    args.concurrency = [int(c) for c in (args.concurrency or "1,2,4,8,16,32,64").split(",")]
    args.off_concurrency = ([int(c) for c in args.off_concurrency.split(",")] if args.off_concurrency else
                            [c for c in args.concurrency if c in (1, 4, 16, 64)] or args.concurrency)
    args.modes = [m for m in args.modes.split(",") if m in ("on", "off")]
    out = args.out or common.RESULTS / ("serve_quick" if args.quick else "serve")
    specs = [s.strip() for s in args.spec.split(",") if s.strip()]
    result = {"benchmark": "serve", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": common.machine_description(args.threads), "versions": common.versions(),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "specs": []}
    progress = common.Progress(len(specs) * (len(args.concurrency) * ("on" in args.modes)
                                             + len(args.off_concurrency) * ("off" in args.modes)))
    t0 = time.perf_counter()
    for spec_name in specs:
        result["specs"].append(run_spec(spec_name, args, progress))
    progress.close()
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    print_tables(result)
    files = [common.write_json(out.with_suffix(".json"), result)]
    if not args.no_plots:
        files += plot(result, out)
    print("\nwrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())

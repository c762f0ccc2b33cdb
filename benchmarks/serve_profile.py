"""Where the time of one short request goes in guardrt's Triton python backend.

Starts the real server with GUARDRT_BACKEND_TIMING=1 (the backend logs each execute's stages: request parsing and
validation, planning, padding, ONNX Runtime, building the responses), sends one short request (rejection: 110
tokens) over gRPC alternating call by call with the same ONNX Runtime call in this process, and splits the gRPC
latency into: client + gRPC + Triton core (latency - server success), stub IPC (Triton's compute time - the
execute time the backend logged), and each execute stage. One server per ORT thread setting compared
(--spinning: 0 = idle threads sleep, run = spin during a Run only, 1 = ORT's default spinning).

Two floors are measured in the same loop, in the same server: a zero-work python model with the same interface and
config (benchmarks/floor_model/model.py, `<spec>-floor`: Triton's gRPC frontend, core, batcher and python-backend
stub IPC with nothing of guardrt and no ONNX Runtime) and a bare `is_server_live` round trip (gRPC + Triton only).
The hop minus the floor is what guardrt's own backend code and its ORT call cost over in-process.

    python benchmarks/serve_profile.py --spec rejection --spinning 0,run   # realistic; under the heavy lock
    python benchmarks/serve_profile.py --quick                             # tiny model, a few rounds
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import serve  # noqa: E402
import serve_load  # noqa: E402


def timing_lines(log_text: str, model: str) -> list[dict]:
    """The backend's GUARDRT_BACKEND_TIMING records for `model`, in log order: {field: value, "ms": {stage: ms}}."""
    prefix = "guardrt-timing "
    out = []
    for line in log_text.splitlines():
        at = line.find(prefix)
        if at < 0:
            continue
        record = {"ms": {}}
        for field in line[at + len(prefix):].rstrip('"').split():
            key, _, value = field.partition("=")
            if key.startswith("ms."):
                record["ms"][key[3:]] = float(value)
            else:
                record[key] = value
        if record.get("model") == model:
            out.append(record)
    return out


def inprocess_runners(model_path: Path, threads: int) -> dict:
    """ONNX Runtime in this process with each thread setting the server may use."""
    import onnxruntime as ort

    from guardrt.runtime.onnxrt import OnnxRunner

    runners = {}
    for label, entries in (("ORT defaults (spinning)", {}),
                           ("threads not spinning", {"session.intra_op.allow_spinning": "0"}),
                           ("spinning during a run only", {"session.force_spinning_stop": "1"})):
        opts = ort.SessionOptions()
        for k, v in entries.items():
            opts.add_session_config_entry(k, v)
        runners[label] = OnnxRunner(model_path, intra_op_threads=threads, session_options=opts)
    return runners


def planner_check(records: list[dict]) -> dict:
    """The batch planner's predicted ONNX Runtime time per execute (its cost model, no margin) against the measured
    one, from the backend's timing records."""
    pairs = [(float(r["predicted_ort_ms"]), r["ms"].get("ort", 0.0)) for r in records
             if float(r.get("predicted_ort_ms", 0) or 0) > 0 and r["ms"].get("ort", 0) > 0]
    if not pairs:
        return {"executes": 0}
    ratio = np.array([p / m for p, m in pairs])
    return {"executes": len(pairs), "rows_per_execute": float(np.mean([int(r["rows"]) for r in records])),
            "multi_row_groups": sum(1 for r in records for g in r["groups"].split(",") if g != "-" and
                                 int(g.split("x")[0]) > 1),
            "predicted_over_measured_p10_p50_p90": [float(np.percentile(ratio, q)) for q in (10, 50, 90)],
            "sum_predicted_over_sum_measured": sum(p for p, _ in pairs) / sum(m for _, m in pairs)}


async def _mix_load(server, spec, export: Path, stream: list[dict], concurrency: int, seconds: float) -> dict:
    from guardrt.runtime.triton_client import AsyncTritonClassifier

    thin = AsyncTritonClassifier(server.grpc_url, spec, export, timeout_s=600.0, max_in_flight=concurrency)
    try:
        return await serve_load.sweep_level(serve_load.thin_sender(thin), [s["payload"] for s in stream], concurrency,
                                            window_s=seconds, min_windows=1, max_windows=1, stability=1.0,
                                            min_requests=concurrency)
    finally:
        await thin.close()


def profile_setting(spec, export: Path, precision: str, ids: list[int], spinning: str, threads: int, reps: int,
                    layout: str, stream: list[dict] | None = None, mix_concurrency: int = 16,
                    mix_seconds: float = 8.0, gap_s: float = serve_load.INTERLEAVED_GAP_S) -> dict:
    import tritonclient.grpc as grpcclient

    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.triton_client import TritonClassifier

    repo = Path(tempfile.mkdtemp(prefix=f"guardrt-profile-{spec.name}-"))
    server = serve.start_server(repo, {spec.name: serve.layout_options(layout)}, export, precision,
                                extra_parameters={"intra_op_spinning": spinning},
                                env={"GUARDRT_BACKEND_TIMING": "1"}, floor_model=spec.name)
    runners = inprocess_runners(load_export_dir(export).model_path(precision), threads)
    try:
        arr = np.array([ids], dtype=np.int64)
        feeds = {"input_ids": arr, "attention_mask": np.ones_like(arr)}
        thin = TritonClassifier(server.grpc_url, spec, export, timeout_s=60.0)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        calls = {f"in-process, {k}": (lambda r=r: r.infer(feeds)) for k, r in runners.items()}
        calls["gRPC thin client, ids"] = lambda: thin.logits_for_ids([ids])
        # flavor given: the floor model carries no guardrt parameters to read it from
        floor = TritonClassifier(server.grpc_url, spec, export, timeout_s=60.0, model_name=f"{spec.name}-floor",
                                 flavor="python")
        calls["python-backend floor (zero-work model, thin client)"] = lambda: floor.logits_for_ids([ids])
        live = grpcclient.InferenceServerClient(server.grpc_url)
        calls["gRPC + Triton floor (is_server_live)"] = live.is_server_live
        skip = len(timing_lines(server.log_text(), spec.name))  # warm-up executes (model_warmup)
        before = serve._sync_stats(grpc, spec.name)
        times = serve_load.interleaved(calls, reps, gap_s=gap_s)
        after = serve._sync_stats(grpc, spec.name)
        thin.close()
        floor.close()
        live.close()
        grpc.close()
        records = timing_lines(server.log_text(), spec.name)[skip:]
        mix = None
        if stream:  # the realistic length mix, closed loop: the planner's predictions against the clock
            mark = len(timing_lines(server.log_text(), spec.name))
            level = asyncio.run(_mix_load(server, spec, export, stream, mix_concurrency, mix_seconds))
            time.sleep(0.3)
            mix = {"concurrency": mix_concurrency, "throughput_rps": level["throughput_rps"],
                   **planner_check(timing_lines(server.log_text(), spec.name)[mark:])}
    finally:
        for r in runners.values():
            r.close()
        server.stop()
        shutil.rmtree(repo, ignore_errors=True)
    paths = {k: serve_load.latency_summary(v) for k, v in times.items()}
    split = serve_load.stats_diff(before, after)
    records = records[-reps:]  # the timed rounds (warm-up rounds of `interleaved` come first)
    stages = sorted({k for r in records for k in r["ms"]})
    stage_p50 = {k: float(np.median([r["ms"].get(k, 0.0) for r in records])) for k in stages}
    execute_mean = float(np.mean([sum(r["ms"].values()) for r in records])) if records else None
    grpc_mean = 1e3 * float(np.mean(times["gRPC thin client, ids"]))
    best_inproc = min(v["p50_ms"] for k, v in paths.items() if k.startswith("in-process"))
    twin = "in-process, spinning during a run only"  # the server's own ORT thread setting
    paired = {k: 1e3 * float(np.median(np.subtract(times[k], times[twin]))) for k in
              ("gRPC thin client, ids",) if twin in times}
    return {"spinning": spinning, "layout": layout, "paths": paths, "executes_logged": len(records), "mix": mix,
            "execute_stage_p50_ms": stage_p50,
            "added_p50_ms_over_best_in_process": paths["gRPC thin client, ids"]["p50_ms"] - best_inproc,
            # the hop paired round by round with in-process ORT at the server's thread setting (as bench-serve)
            "added_ms_paired_median": paired.get("gRPC thin client, ids"),
            # what Triton + the python backend cost with no guardrt code and no ORT in the model
            "floor_p50_ms": {k: v["p50_ms"] for k, v in paths.items() if "floor" in k},
            "split_mean_ms": {"client + gRPC + Triton core (latency - server success)":
                              grpc_mean - split["success_ms"] if split["success_ms"] is not None else None,
                              "server queue": split["queue_ms"], "server compute input": split["compute_input_ms"],
                              "stub IPC (server compute infer - logged execute)":
                              split["compute_infer_ms"] - execute_mean if execute_mean is not None else None,
                              "execute (logged)": execute_mean, "server compute output": split["compute_output_ms"]}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="rejection")
    ap.add_argument("--size", default="realistic", choices=("tiny", "realistic"))
    ap.add_argument("--precision", default="int8-dynamic")
    ap.add_argument("--spinning", default="0,run,1", help="server ORT thread settings compared (0, run, 1)")
    ap.add_argument("--layout", default="default", help="instances x threads of the server (e.g. 2x2)")
    ap.add_argument("--threads", type=int, default=None, help="in-process ORT threads (default: all cores)")
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--mix-concurrency", type=int, default=16,
                    help="then the realistic length mix at this concurrency: the planner's predictions vs the clock "
                         "(0 skips)")
    ap.add_argument("--mix-seconds", type=float, default=8.0)
    ap.add_argument("--gap-ms", type=float, default=1e3 * serve_load.INTERLEAVED_GAP_S,
                    help="idle time after each interleaved call (outlasts ORT's post-Run spin)")
    ap.add_argument("--quick", action="store_true", help="tiny model, 10 rounds")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.reps = "tiny", 10
        args.gap_ms = args.gap_ms if "--gap-ms" in (argv or sys.argv) else 5.0
    threads = args.threads or serve.os.cpu_count() or 1
    from guardrt.runtime.preprocess import build_preprocessor
    from guardrt.runtime.specs import get_spec

    spec = get_spec(args.spec)
    args.export_dir, args.quick_export = None, args.quick
    export = serve.resolve_export(spec.name, args)
    pre = build_preprocessor(spec, export)
    _, ids = serve.payload_of_length(spec.name, pre, serve.SHORT_TOKENS[spec.name], np.random.default_rng(5))
    stream = serve.request_stream(spec, pre, 64 if args.quick else 256, 0, args.quick) if args.mix_concurrency else None
    result = {"benchmark": "serve_profile", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": common.machine_description(threads), "spec": spec.name, "precision": args.precision,
              "size": args.size, "request_tokens": len(ids), "reps": args.reps, "settings": []}
    for spinning in args.spinning.split(","):
        row = profile_setting(spec, export, args.precision, ids, spinning.strip(), threads, args.reps, args.layout,
                              stream, args.mix_concurrency, args.mix_seconds, gap_s=args.gap_ms / 1e3)
        result["settings"].append(row)
        print(f"\n== server ORT threads spinning={row['spinning']}, layout {row['layout']}, {len(ids)} tokens, "
              f"{args.reps} interleaved rounds")
        for name, s in row["paths"].items():
            print(f"  {name:45s} p50 {s['p50_ms']:8.2f} ms  p90 {s['p90_ms']:8.2f} ms")
        print(f"  gRPC adds {row['added_p50_ms_over_best_in_process']:+.2f} ms p50 over the best in-process setting, "
              f"{row['added_ms_paired_median']:+.2f} ms paired with in-process at the server's thread setting; "
              "floor: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row["floor_p50_ms"].items()))
        print("  mean split: " + ", ".join(f"{k} {v:.3f}" for k, v in row["split_mean_ms"].items() if v is not None))
        print("  execute stages (p50 ms): " + ", ".join(f"{k} {v:.3f}" for k, v in row["execute_stage_p50_ms"].items()))
        if row["mix"]:
            m = row["mix"]
            print(f"  realistic mix at concurrency {m['concurrency']}: {m['throughput_rps']:.1f} req/s, "
                  f"{m['executes']} executes, {m.get('rows_per_execute', 0):.2f} rows each, "
                  f"{m.get('multi_row_groups', 0)} groups of several rows; planner predicted / measured ORT time per "
                  f"execute p10/p50/p90 {m.get('predicted_over_measured_p10_p50_p90')}, total "
                  f"{m.get('sum_predicted_over_sum_measured')}")
    out = args.out or common.RESULTS / ("serve_profile_quick" if args.quick else f"serve_profile_{spec.name}")
    print("\nwrote", common.write_json(out.with_suffix(".json"), result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

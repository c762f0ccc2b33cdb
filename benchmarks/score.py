"""Batch-scoring benchmark: `guardrt score` rows/s in one process vs on a local Ray instance with 1 and 2 workers.

The same JSONL input (synthetic rows of the spec, seeded) is scored by:
  single, ORT default threads   one process, ONNX Runtime's default intra-op threads (all cores) - the baseline
  single, 1 thread              one process, one ORT thread
  ray 1x1 / 2x1 / 1x2           `--ray` (a local instance started and stopped by the run): workers x ORT threads

Each run reports the wall time of the whole job (model load and, on Ray, actor start-up included; the local Ray
instance is started once for all Ray runs, and its start-up is reported on its own) and the steady rate (rows/s
between the first and the last finished chunk), and its output is compared with the baseline's row for row
(identical labels and fields; largest |difference| of any probability). With --rounds N every configuration runs
N times, in turn, and the medians are reported: load from other processes then hits every configuration alike.
Ratios are against the baseline.
Writes benchmarks/results/score.json and score.png. Run it under the heavy lock for numbers you publish:

    flock /work/locks/heavy.lock python benchmarks/score.py [--size realistic] [--rows 3000] [--rounds 3] [--quick] [--no-ray]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Read by ray at import: the local instance binds 127.0.0.1 only, and reports nothing (as `guardrt score --ray`).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: machine description, versions, tables, JSON)

RUNS = [  # (name, ray, workers, threads)
    ("single, ORT default threads", False, None, None),
    ("single, 1 thread", False, None, 1),
    ("ray 1 worker x 1 thread", True, 1, 1),
    ("ray 2 workers x 1 thread", True, 2, 1),
    ("ray 1 worker x 2 threads", True, 1, 2),
]


def _compare(baseline: list[dict], rows: list[dict]) -> dict:
    same_fields = len(rows) == len(baseline) and all(
        {k: v for k, v in a.items() if not isinstance(v, float)} == {k: v for k, v in b.items() if not isinstance(v, float)}
        for a, b in zip(baseline, rows))
    diffs = [abs(a[k] - b[k]) for a, b in zip(baseline, rows) for k, v in a.items() if isinstance(v, float)]
    return {"rows_compared": len(rows), "identical_non_float_fields": same_fields,
            "identical_rows": sum(a == b for a, b in zip(baseline, rows)), "max_abs_prob_diff": max(diffs, default=0.0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="rejection")
    ap.add_argument("--size", default="realistic", choices=["tiny", "realistic"])
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--chunk-rows", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every configuration this many times, in turn, and report medians (default: 1)")
    ap.add_argument("--quick", action="store_true", help="tiny model, 300 rows (smoke run)")
    ap.add_argument("--no-ray", action="store_true", help="single-process runs only")
    ap.add_argument("--out", default=str(common.RESULTS))
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.rows, args.chunk_rows = "tiny", 300, 32

    from guardrt.export.demo_models import cached_demo_export
    from guardrt.export.synthetic import synthetic_payloads
    from guardrt.runtime.payloads import payload_field
    from guardrt.runtime.score_engines import EngineConfig
    from guardrt.runtime.scoring import run_score_job

    export = cached_demo_export(args.spec, args.size, (args.precision,))
    work = Path(tempfile.mkdtemp(prefix="guardrt-bench-score-"))
    src = work / "in.jsonl"
    key = payload_field(args.spec)
    with open(src, "w", encoding="utf-8") as f:
        for i, payload in enumerate(synthetic_payloads(args.spec, args.rows, seed=21)):
            f.write(json.dumps({"id": i, key: payload}, ensure_ascii=False) + "\n")

    import statistics

    samples: dict[str, list[dict]] = {name: [] for name, *_ in RUNS}
    baseline, ray_start_s, ray = None, None, None
    if not args.no_ray:  # one local instance for every Ray run (its start-up is timed once, below)
        from guardrt.runtime.ray_scoring import connect

        t0 = time.perf_counter()
        ray = connect("local")
        ray_start_s = time.perf_counter() - t0
    try:
        for round_ in range(args.rounds):  # interleaved: load from other processes hits every configuration alike
            for name, on_ray, workers, threads in RUNS:
                if on_ray and args.no_ray:
                    continue
                out = work / f"out-{round_}-{len(samples[name])}-{name.replace(' ', '_')}.jsonl"
                cfg = EngineConfig(spec=args.spec, model=str(export), precision=args.precision, threads=threads)
                t0 = time.perf_counter()
                summary = run_score_job(src, out, cfg, chunk_rows=args.chunk_rows,
                                        ray_address="local" if on_ray else None, workers=workers, progress=False)
                wall = time.perf_counter() - t0
                rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
                baseline = baseline if baseline is not None else rows
                samples[name].append({"round": round_, "wall_s": wall, "rows_per_s_steady": summary.steady_rows_per_s,
                                      "plan": summary.workers.describe() if summary.workers else "this process",
                                      "loadavg_1m": os.getloadavg()[0], **_compare(baseline, rows)})
                print(f"round {round_}: {name}: {summary.steady_rows_per_s:.1f} rows/s steady, {wall:.1f} s wall",
                      file=sys.stderr, flush=True)
    finally:
        if ray is not None:
            ray.shutdown()
    results = []
    for name, on_ray, workers, threads in RUNS:
        runs = samples[name]
        if not runs:
            continue
        steady = statistics.median(r["rows_per_s_steady"] for r in runs)
        wall = statistics.median(r["wall_s"] for r in runs)
        results.append({"run": name, "ray": on_ray, "workers": workers or 1, "threads": threads, "rows": args.rows,
                        "rows_per_s_steady": steady, "wall_s": wall, "rows_per_s_wall": args.rows / wall,
                        "plan": runs[0]["plan"], "identical_rows": min(r["identical_rows"] for r in runs),
                        "identical_non_float_fields": all(r["identical_non_float_fields"] for r in runs),
                        "max_abs_prob_diff": max(r["max_abs_prob_diff"] for r in runs), "samples": runs})
    base = results[0]
    for r in results:
        r["steady_vs_baseline"] = r["rows_per_s_steady"] / base["rows_per_s_steady"]

    print(common.format_table(results, [
        ("run", "run", ""), ("rows_per_s_steady", "rows/s steady", "{:.1f}"), ("steady_vs_baseline", "x baseline", "{:.2f}"),
        ("wall_s", "job wall s", "{:.1f}"), ("rows_per_s_wall", "rows/s job wall", "{:.1f}"),
        ("identical_rows", "identical rows", "{}"), ("max_abs_prob_diff", "max |dprob|", "{:.1e}")]))
    stem = "score_quick" if args.quick else "score"
    out_dir = Path(args.out)
    payload = {"benchmark": "score", "spec": args.spec, "size": args.size, "precision": args.precision,
               "rows": args.rows, "chunk_rows": args.chunk_rows, "rounds": args.rounds, "baseline": RUNS[0][0],
               "ray_start_s": ray_start_s,
               "machine": common.machine_description(threads=os.cpu_count() or 1), "versions": common.versions(),
               "results": results}
    common.write_json(out_dir / f"{stem}.json", payload)
    _plot(results, out_dir / f"{stem}.png", f"guardrt score, {args.spec} ({args.size}, {args.precision}), "
                                             f"{args.rows} rows, {os.cpu_count()} CPUs")
    print(f"wrote {out_dir / (stem + '.json')} and {out_dir / (stem + '.png')}")
    return 0 if all(r["identical_non_float_fields"] for r in results) else 1


def _plot(results, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.6))
    names = [r["run"] for r in results]
    ax.barh(names, [r["rows_per_s_steady"] for r in results], label="steady (between first and last chunk)")
    ax.barh(names, [r["rows_per_s_wall"] for r in results], height=0.35, label="whole job (start-up included)")
    for i, r in enumerate(results):
        ax.annotate(f"{r['steady_vs_baseline']:.2f}x", (r["rows_per_s_steady"], i), va="center", xytext=(3, 0),
                    textcoords="offset points")
    ax.invert_yaxis()
    ax.set_xlabel("rows/s")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())

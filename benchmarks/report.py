"""Render benchmarks/results/{inprocess,serve}.json as Markdown (the tables in benchmarks/README.md come from here,
so every number in the README is one the benchmark programs measured).

    python benchmarks/report.py [--inprocess FILE] [--serve FILE] > benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {  # (spec, engine precision family) -> (cell, minimum speed-up) from the benchmark issue
    "rejection": {"cell": (16, 128), "int8": 3.5, "fp32": 1.2},
    "intent-safety": {"cell": (1, 1024), "int8": 2.5, "fp32": 1.2},
}


def _fmt(v, f):
    return "-" if v is None else f.format(v)


def machine_line(data: dict) -> str:
    m, p = data["machine"], data["machine"]["peak"]
    line = (f"{p['cpu']}, {p['cores']} cores ({m['threads_used']} threads used), {m.get('memory_gib')} GiB; "
            f"peak assumed {p['peak_fp32_gflops']} GFLOP/s fp32 / {p['peak_int8_gops']} GOP/s int8 = "
            f"{p['derivation']}")
    if p.get("measured_fp32_gemm_gflops"):
        line += f"; measured fp32 GEMM (torch.mm 2048³) {p['measured_fp32_gemm_gflops']} GFLOP/s"
    v = data["versions"]
    line += (f". onnxruntime {v.get('onnxruntime')}, torch {v.get('torch')}, transformers {v.get('transformers')}, "
             f"optimum {v.get('optimum')}; measured {data['created']}")
    return line


def inprocess_md(data: dict) -> str:
    out = [f"**Machine**: {machine_line(data)}", ""]
    for spec in data["specs"]:
        mc = spec["model_config"]
        out.append(f"### {spec['spec']} ({mc['model_type']}, {mc['num_hidden_layers']} layers × {mc['hidden_size']}, "
                   f"vocab {mc['vocab_size']})")
        t = TARGETS.get(spec["spec"])
        rows = [r for r in spec["rows"] if "p50_ms" in r]
        if t:
            b, s = t["cell"]
            cell = [r for r in rows if r["batch"] == b and r["seq"] == s]
            best = {}
            for fam in ("int8", "fp32"):
                cands = [r for r in cell if r["engine"].startswith("guardrt") and
                         (r["precision"].startswith("int8") if fam == "int8" else r["precision"] == "fp32")]
                if cands:
                    best[fam] = max(cands, key=lambda r: r["speedup_vs_pytorch"] or 0)
            parts = []
            for fam, r in best.items():
                ok = (r["speedup_vs_pytorch"] or 0) >= t[fam]
                parts.append(f"{fam}: **{r['speedup_vs_pytorch']:.2f}×** ({r['engine']}, target ≥ {t[fam]}× — "
                             f"{'met' if ok else 'missed'}; {r['pct_peak']:.0f}% of the {r['peak_kind']} peak)")
            out.append(f"Target cell B={b}, L={s}: " + "; ".join(parts))
            out.append("")
        out.append("| engine | B | L | p50 ms | p99 ms | seq/s | tokens/s | × PyTorch | GFLOP/s | % peak | max\\|Δlogit\\| vs PyTorch | peak RSS MiB | size MB |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in sorted(rows, key=lambda r: (r["batch"], r["seq"])):
            out.append(f"| {r['engine']} | {r['batch']} | {r['seq']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                       f"{r['seq_per_s']:.1f} | {r['tokens_per_s']:.0f} | {_fmt(r['speedup_vs_pytorch'], '{:.2f}')} | "
                       f"{r['gflops']:.1f} | {_fmt(r['pct_peak'], '{:.0f}')} ({r['peak_kind']}) | "
                       f"{_fmt(r['max_abs_diff_vs_pytorch'], '{:.1e}')} | {_fmt(r['peak_rss_mib'], '{:.0f}')} | "
                       f"{r['size_mb']:.1f} |")
        errors = [r for r in spec["rows"] if "error" in r]
        for r in errors:
            out.append(f"- {r['engine']} {r.get('batch')}x{r.get('seq')}: {r['error']}")
        for k, v in (spec.get("skipped") or {}).items():
            out.append(f"- {k}: {v}")
        if spec.get("fused_ops"):
            out.append(f"- fused graph operators: {spec['fused_ops']}")
        out.append("")
    return "\n".join(out)


def serve_md(data: dict) -> str:
    out = [f"**Machine**: {machine_line(data)}", ""]
    for spec in data["specs"]:
        lm = spec["length_mix"]
        out.append(f"### {spec['spec']} over gRPC — {spec['model']} ({spec['model_size_mb']:.1f} MB), Triton python "
                   f"backend; request lengths: seeded log-normal, mean {lm['mean']:.0f}, p50 {lm['p50']:.0f}, "
                   f"p90 {lm['p90']:.0f}, max {lm['max']} tokens")
        out.append("")
        out.append("| dynamic batching | concurrency | req/s | p50 ms | p90 ms | p99 ms | stable (windows) | mean executed batch | executed batch sizes (size: count) |")
        out.append("|---|---:|---:|---:|---:|---:|---|---:|---|")
        for mode, levels in spec["sweep"].items():
            for r in levels:
                sizes = ", ".join(f"{k}: {v}" for k, v in r["server"]["executed_batch_sizes"].items())
                out.append(f"| {mode} | {r['concurrency']} | {r['throughput_rps']:.1f} | {_fmt(r['p50_ms'], '{:.1f}')} | "
                           f"{_fmt(r['p90_ms'], '{:.1f}')} | {_fmt(r['p99_ms'], '{:.1f}')} | "
                           f"{'yes' if r['stable'] else 'no'} ({r['windows']}) | "
                           f"{_fmt(r['server']['mean_executed_batch'], '{:.2f}')} | {sizes} |")
        ip = spec["inprocess"]
        out.append("")
        line = f"- in-process batch-16 throughput on the same mix and model: {ip['batch16_throughput_rps']:.1f} req/s"
        if "c16_throughput_vs_inprocess_b16" in spec:
            ratio = spec["c16_throughput_vs_inprocess_b16"]
            line += (f"; concurrency 16 over gRPC reaches **{100 * ratio:.0f}%** of it (target ≥ 80% — "
                     f"{'met' if ratio >= 0.8 else 'missed'})")
        out.append(line)
        ov = spec["grpc_overhead_p50_ms"]
        out.append(f"- short requests (16 tokens), one at a time: in-process p50 {ip['short_single']['p50_ms']:.2f} ms, "
                   f"gRPC p50 {spec['grpc_short_single']['p50_ms']:.2f} ms → round trip adds **{ov:.2f} ms** "
                   f"(target ≤ 1.5 ms — {'met' if ov <= 1.5 else 'missed'})")
        rss = spec.get("server_peak_rss_mib", {})
        out.append(f"- Triton server peak RSS (tritonserver + python-backend stub): {rss.get('total', 0):.0f} MiB; "
                   f"server start {spec.get('server_start_s', 0):.1f} s")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inprocess", type=Path, default=RESULTS / "inprocess.json")
    ap.add_argument("--serve", type=Path, default=RESULTS / "serve.json")
    args = ap.parse_args(argv)
    parts = []
    if args.inprocess.is_file():
        parts += ["## In-process", "", inprocess_md(json.loads(args.inprocess.read_text()))]
    if args.serve.is_file():
        parts += ["## Serving (Triton over gRPC)", "", serve_md(json.loads(args.serve.read_text()))]
    if not parts:
        print("no results yet: run `make bench` / `make bench-serve`", file=sys.stderr)
        return 1
    print("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

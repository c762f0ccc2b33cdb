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
    """The serving benchmark (benchmarks/serve.py): per spec, the on/off table with ratios, the interleaved overhead
    of every path, equality with the thin client, and the instance x thread layouts."""
    out = [f"**Machine**: {machine_line(data)}", ""]
    for spec in data["specs"]:
        lm = spec["length_mix"]
        out.append(f"### {spec['spec']} ({spec['precision']}, {spec.get('model_size_mb') or 0:.1f} MB), Triton python "
                   f"backend, layout {spec['layout']}; request lengths: seeded log-normal, mean {lm['mean']:.0f}, "
                   f"p50 {lm['p50']:.0f}, p90 {lm['p90']:.0f}, max {lm['max']} tokens")
        out.append("")
        ip = spec["inprocess"]["sequential"]
        out.append(f"In-process (preprocessing + ONNX Runtime, one request at a time): {ip['throughput_rps']:.1f} req/s, "
                   f"p50 {ip['p50_ms']:.1f} ms, p99 {ip['p99_ms']:.1f} ms; batches of 16: "
                   f"{spec['inprocess']['batch16_throughput_rps']:.1f} req/s padded to the longest"
                   + (f", {spec['inprocess']['batch16_equal_lengths_throughput_rps']:.1f} req/s one call per length"
                      if "batch16_equal_lengths_throughput_rps" in spec["inprocess"] else "") + ".")
        out.append("")
        out.append("| path | batching | conc. | req/s | p50 ms | p90 ms | p95 ms | p99 ms | server queue ms | server compute "
                   "infer ms | mean executed batch | stable | req/s on/off | per round | p99 on/off |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|")
        for path, modes in spec["sweep"].items():
            ratio = {r["concurrency"]: r for r in spec["ratios"].get(path, [])}
            for mode, levels in modes.items():
                for r in levels:
                    s_ = r["server"]
                    rr = ratio.get(r["concurrency"]) if mode == "on" else None
                    out.append(
                        f"| {path} | {mode} | {r['concurrency']} | {r['throughput_rps']:.1f} | {_fmt(r['p50_ms'], '{:.1f}')} | "
                        f"{_fmt(r['p90_ms'], '{:.1f}')} | {_fmt(r['p95_ms'], '{:.1f}')} | {_fmt(r['p99_ms'], '{:.1f}')} | "
                        f"{_fmt(s_['queue_ms'], '{:.2f}')} | {_fmt(s_['compute_infer_ms'], '{:.1f}')} | "
                        f"{_fmt(s_['mean_executed_batch'], '{:.2f}')} | {'yes' if r['stable'] else 'no'} ({r['windows']}) | "
                        f"{'**' + format(rr['throughput_on_over_off'], '.2f') + '**' if rr else ''} | "
                        f"{' / '.join(format(x, '.2f') for x in rr.get('throughput_on_over_off_per_round', [])) if rr else ''} | "
                        f"{format(rr['p99_on_over_off'], '.2f') if rr else ''} |")
        out.append("")
        if "overhead" in spec:
            o = spec["overhead"]
            against = o.get("added_against")
            out.append(f"Interleaved single requests ({o['request_tokens']} tokens, {o['reps']} rounds, the paths "
                       "taking turns call by call; batching on" + (
                           f"; a new order each round and {1e3 * o['gap_s']:.0f} ms idle after each call; added = "
                           "median over rounds of the path minus its in-process twin in the same round"
                           if against else "") + "):")
            out.append("")
            out.append("| path | p50 ms | p99 ms | added over in-process |" + (" against |" if against else ""))
            out.append("|---|---:|---:|---:|" + ("---|" if against else ""))
            for name, st in o["paths"].items():
                added = o["added_p50_ms"].get(name)
                out.append(f"| {name} | {st['p50_ms']:.2f} | {st['p99_ms']:.2f} | "
                           f"{'' if added is None else format(added, '+.2f') + ' ms'} |"
                           + (f" {against.get(name, '')} |" if against else ""))
            if "overhead_server_spinning" in spec:  # results written before the spin-during-a-Run default
                sp = spec["overhead_server_spinning"]["added_p50_ms"]["gRPC thin client, ids"]
                out.append(f"| gRPC thin client, ids — server's ORT threads spinning (ORT's default) | | | {sp:+.2f} ms |")
            if "overhead_server_not_spinning" in spec:
                sp = spec["overhead_server_not_spinning"]["added_p50_ms"]["gRPC thin client, ids"]
                out.append(f"| gRPC thin client, ids — server's ORT threads never spinning (intra_op_spinning 0) | | | "
                           f"{sp:+.2f} ms |" + (" in-process, same setting as the main server |" if against else ""))
            out.append("")
            where = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in o["where_the_grpc_hop_goes"].items()
                              if v is not None)
            out.append(f"Where the gRPC hop goes (means, ms): {where}.")
            out.append("")
        paired = spec.get("modes_paired_c1", {})
        if paired:
            out.append("Batching on vs off at concurrency 1, paired (the same request to each mode back to back, "
                       "the order drawn each round):")
            out.append("")
            out.append("| path | rounds | p50 ms on | p50 ms off | on − off, median ms | mean latency on/off |")
            out.append("|---|---:|---:|---:|---:|---:|")
            for path, m in paired.items():
                out.append(f"| {path} | {m['rounds']} | {m['on']['p50_ms']:.2f} | {m['off']['p50_ms']:.2f} | "
                           f"{m['on_minus_off_median_ms']:+.2f} | {m['on_over_off_mean_latency']:.3f} |")
            out.append("")
        if "equality" in spec:
            e = spec["equality"]
            for client, label in (("curl", "curl over HTTP, up to max_batch_size rows per request"),
                                  ("tritonclient_http", "tritonclient.http, one row per request")):
                c = e[client]
                out.append(f"- {label}: {c['identical']}/{e['rows']} byte-identical to the thin client, "
                           f"{c['same_decision']}/{e['rows']} same decision, {c['errors']} errors, max |Δprob| "
                           f"{c['max_abs_prob_diff']:.1e}")
        for lay in spec.get("layouts", []):
            cells = ", ".join(f"c={r['concurrency']}: {r['throughput_rps']:.1f} req/s, p99 {r['p99_ms']:.0f} ms"
                              for r in lay["levels"])
            out.append(f"- layout {lay['layout']} (instances x threads, thin client, batching on): {cells}")
        rss = spec.get("server", {}).get("peak_rss_mib", {})
        if rss:
            served = spec.get("server", {}).get("models")
            out.append(f"- Triton server peak RSS (tritonserver + stubs, "
                       + (f"{len(served)} models: {', '.join(served)}" if served else "token-id and text-in models")
                       + f"): {rss.get('total', 0):.0f} MiB")
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

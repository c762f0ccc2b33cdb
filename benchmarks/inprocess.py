"""In-process benchmark: every engine guardrt offers vs PyTorch eager (the reference) and HF Optimum, per spec, over a
grid of batch x sequence length, in one run on one machine.

Engines (each in its own child process, so its peak RSS is its own):
  pytorch-eager               transformers AutoModelForSequenceClassification, fp32, default attention (sdpa)
  optimum-ort                 optimum ORTModelForSequenceClassification on the same fp32 ONNX (torch tensors in/out)
  guardrt-ort-<precision>     guardrt's validated exports (fp32, fp16, int8 = static QDQ, int8-dynamic), OnnxRunner
  guardrt-ort-<p>-fused       the same after guardrt.kernels' graph pass (export_onnx(graph_pass=...), validated by the
                              exporter's own gates): fused attention / norms / rotary / GELU
  tensorrt-<precision>        when a GPU and built plans exist (skipped with the reason otherwise)

Per cell: warm-up, repeated runs until `--budget-s` has passed (at least --min-reps), p50/p90/p99 latency,
sequences/s, tokens/s, ratio to PyTorch (p50 over p50), achieved GFLOP/s and % of the machine's peak (see
benchmarks.common.cpu_peak; fp32/fp16 engines against the fp32 peak, int8 engines against the int8 peak), and
max |Δlogit| vs PyTorch on a padded parity batch. Writes benchmarks/results/inprocess[_quick].json and PNG plots.

    python benchmarks/inprocess.py                 # realistic demo models, full grid (make bench)
    python benchmarks/inprocess.py --quick         # tiny models, 1 iteration, for smoke tests
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import EngineSpec, TimingSettings  # noqa: E402

# The grid per spec (batch, seq). Token counts are kept to what 2 cores measure in seconds; B=16 L=128 (rejection)
# and B=1 L=1024 (intent-safety) are the target cells.
DEFAULT_GRID = {
    "rejection": [(1, 128), (16, 128), (64, 64), (1, 512), (16, 256)],
    "intent-safety": [(1, 128), (1, 1024), (4, 256), (8, 128)],
}
QUICK_GRID = {"rejection": [(1, 16), (4, 16)], "intent-safety": [(1, 16), (2, 16)]}
TARGET_CELLS = {"rejection": (16, 128), "intent-safety": (1, 1024)}
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
FUSED_PRECISIONS = ("fp32", "int8", "int8-dynamic")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fused_export(spec_name: str, size: str, precisions, log=None, model_dir: Path | None = None) -> Path:
    """The demo model (or `model_dir`: the checkpoint the plain export came from) exported through export_onnx with
    guardrt.kernels.graph_pass (validated by the exporter's gates), cached keyed by the export and kernels code."""
    from guardrt.export import demo_models
    from guardrt.export.onnx_export import export_onnx
    from guardrt.kernels import graph_pass

    model_dir = Path(model_dir) if model_dir else demo_models.cached_demo_model(spec_name, size, log=log)
    key = f"{spec_name}-{size}-{'_'.join(precisions)}-" + common.code_hash(
        common.REPO_ROOT / "kernels", common.REPO_ROOT / "export",
        extra=[model_dir.name, list(precisions), common.versions()])
    # force=True: a precision that misses its gate is still benchmarked; validation.json (reported in the result
    # JSON) says whether it passed.
    return demo_models._cached("exports-fused", key, lambda tmp: export_onnx(
        model_dir, spec_name, tmp, list(precisions), graph_pass=graph_pass, log=log, force=True))


def plain_export(spec_name: str, size: str, precisions, log=None) -> Path:
    """The exporter's cached demo export of the plain graph (no graph pass); when a precision misses its gate, the forced export (benchmarked anyway,
    its validation result reported next to the numbers)."""
    from guardrt.export import demo_models
    from guardrt.export.onnx_export import ExportGateError

    try:
        return demo_models.cached_demo_export(spec_name, size, precisions, log=log, graph_pass=None)
    except ExportGateError as exc:
        _log(f"note: {exc}; benchmarking the forced export")
        return demo_models.cached_demo_export(spec_name, size, precisions, log=log, graph_pass=None, force=True)


def build_engines(spec_name: str, size: str, threads: int, fused: bool, engines_filter, log,
                  pins: dict | None = None) -> tuple[list, dict]:
    from guardrt.export import demo_models
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.specs import get_spec

    spec = get_spec(spec_name)
    pins = pins or {}
    export = load_export_dir(pins.get(spec_name) or plain_export(spec_name, size, PRECISIONS, log=log))
    # The PyTorch reference is the checkpoint the export was made from (the manifest records it).
    source = Path(export.raw.get("source_model_dir") or "")
    model_dir = source if (source / "config.json").is_file() else demo_models.cached_demo_model(spec_name, size, log=log)
    engines = [
        EngineSpec("pytorch-eager", "pytorch", str(model_dir), threads=threads,
                   extra={"pad_token_id": spec.pad_token_id}),
        EngineSpec("optimum-ort", "optimum", str(_optimum_dir(export.path)), threads=threads),
    ]
    sizes = {"pytorch-eager": common.dir_bytes(model_dir / "model.safetensors"),
             "optimum-ort": common.dir_bytes(export.model_path("fp32").parent)}
    for p in PRECISIONS:
        if p in export.precisions:
            name = f"guardrt-ort-{p}"
            engines.append(EngineSpec(name, "ort", str(export.model_path(p)), precision=p, threads=threads))
            sizes[name] = common.dir_bytes(export.model_path(p).parent)
    if fused:
        fexport = load_export_dir(pins.get(f"{spec_name}:fused") or fused_export(
            spec_name, size, FUSED_PRECISIONS, log=log, model_dir=model_dir))
        for p in FUSED_PRECISIONS:
            if p in fexport.precisions:
                name = f"guardrt-ort-{p}-fused"
                engines.append(EngineSpec(name, "ort", str(fexport.model_path(p)), precision=p, fused=True,
                                          threads=threads))
                sizes[name] = common.dir_bytes(fexport.model_path(p).parent)
    skipped = {}
    from guardrt.runtime.tensorrt import probe_gpu

    probe = probe_gpu()
    if probe.found:
        for plan in sorted(export.path.glob("tensorrt/*/model.plan")):
            name = f"tensorrt-{plan.parent.name}"
            engines.append(EngineSpec(name, "tensorrt", str(plan), precision=plan.parent.name, threads=threads))
            sizes[name] = common.dir_bytes(plan)
        if not any(e.kind == "tensorrt" for e in engines):
            skipped["tensorrt"] = f"GPU found ({probe.detail}) but no plans in {export.path}/tensorrt (guardrt export --target tensorrt)"
    else:
        skipped["tensorrt"] = f"skipped: {probe.detail}"
    if engines_filter:
        engines = [e for e in engines if e.name == "pytorch-eager" or any(f in e.name for f in engines_filter)]
    cfg = json.loads((model_dir / "config.json").read_text())
    info = {"model_dir": str(model_dir), "export_dir": str(export.path), "config": cfg, "sizes_bytes": sizes,
            "skipped": skipped, "validation": {p: _brief_validation(export.validation(), p) for p in export.precisions}}
    if fused:
        info["fused_export_dir"] = str(fexport.path)
        info["fused_validation"] = {p: _brief_validation(fexport.validation(), p) for p in fexport.precisions}
        info["fused_ops"] = _fused_ops(fexport.model_path("fp32"))
    return engines, info


def _fused_ops(path: Path) -> dict:
    import collections

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = collections.Counter(n.op_type for n in model.graph.node)
    return {k: v for k, v in counts.items() if k in (
        "GroupQueryAttention", "MultiHeadAttention", "Attention", "SkipLayerNormalization", "SimplifiedLayerNormalization",
        "SkipSimplifiedLayerNormalization", "RotaryEmbedding", "BiasGelu", "LayerNormalization", "Softmax", "MatMul")}


def _brief_validation(validation: dict, precision: str) -> dict:
    res = validation.get("precisions", {}).get(precision, {})
    return {k: res.get(k) for k in ("max_abs_diff", "atol", "heldout_agreement", "min_agreement", "passed",
                                    "size_bytes")}


def _optimum_dir(export_dir: Path) -> Path:
    """A directory optimum's ORTModel loads: config.json + model.onnx (+ data) of the fp32 export, by symlinks."""
    d = export_dir.parent / f".optimum-view-{export_dir.name}"
    d.mkdir(exist_ok=True)
    for src in [export_dir / "config.json", *sorted((export_dir / "fp32").iterdir())]:
        link = d / src.name
        if not link.exists():
            link.symlink_to(src.resolve())
    return d


def run_spec(spec_name: str, args, peak: dict, progress_total: list) -> dict:
    from guardrt.runtime.specs import get_spec

    spec = get_spec(spec_name)
    grid = QUICK_GRID[spec_name] if args.quick else (args.grid or DEFAULT_GRID[spec_name])
    engines, info = build_engines(spec_name, args.size, args.threads, not args.no_fused, args.engines,
                                  _log if args.verbose else None, args.export_dirs)
    cfg = info["config"]
    settings = TimingSettings(warmup=args.warmup, min_reps=args.min_reps, max_reps=args.max_reps,
                              budget_s=args.budget_s)
    feeds_args = {"spec": spec_name, "vocab_size": int(cfg["vocab_size"])}
    progress = common.Progress(len(engines))
    runs = {}
    for engine in engines:
        progress.update(f"{spec_name}: {engine.name} ({len(grid)} cells)", advance=0)
        t = time.perf_counter()
        try:
            runs[engine.name] = common.run_engine_in_child(engine, grid, feeds_args, settings)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other engines
            runs[engine.name] = {"engine": engine.name, "error": f"{type(exc).__name__}: {exc}"}
        runs[engine.name]["wall_s"] = round(time.perf_counter() - t, 1)
        progress.update(f"{spec_name}: {engine.name} done in {runs[engine.name]['wall_s']}s")
    progress.close()
    return _analyse(spec, grid, engines, runs, info, peak)


def _analyse(spec, grid, engines, runs, info, peak) -> dict:
    import numpy as np

    cfg = info["config"]
    ref = runs.get("pytorch-eager", {})
    ref_logits = np.asarray(ref.get("parity_logits")) if "parity_logits" in ref else None
    rows = []
    for engine in engines:
        run = runs[engine.name]
        if "error" in run and "cells" not in run:
            rows.append({"engine": engine.name, "error": run["error"]})
            continue
        diff = None
        if ref_logits is not None and "parity_logits" in run:
            diff = float(np.abs(np.asarray(run["parity_logits"]) - ref_logits).max())
        int8 = engine.precision.startswith("int8")
        for batch, seq in grid:
            cell = run["cells"][f"{batch}x{seq}"]
            row = {"engine": engine.name, "precision": engine.precision, "fused": engine.fused, "batch": batch,
                   "seq": seq, "peak_rss_mib": run.get("peak_rss_mib"), "load_s": run.get("load_s"),
                   "size_mb": info["sizes_bytes"].get(engine.name, 0) / 1e6, "max_abs_diff_vs_pytorch": diff}
            if "error" in cell:
                row["error"] = cell["error"]
                rows.append(row)
                continue
            ref_cell = ref.get("cells", {}).get(f"{batch}x{seq}", {})
            flops = common.model_flops(cfg, batch, seq)
            p50 = cell["p50_ms"] / 1000.0
            gflops = flops["total"] / p50 / 1e9
            peak_value = peak["peak_int8_gops"] if int8 else peak["peak_fp32_gflops"]
            row.update({k: cell[k] for k in ("n", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms")})
            row.update({
                "seq_per_s": batch / p50,
                "tokens_per_s": batch * seq / p50,
                "speedup_vs_pytorch": (ref_cell["p50_ms"] / cell["p50_ms"]) if "p50_ms" in ref_cell else None,
                "gflops": gflops,
                "pct_peak": 100.0 * gflops / peak_value if peak_value else None,
                "peak_kind": "int8" if int8 else "fp32",
                "pct_measured_fp32_gemm": (100.0 * gflops / peak["measured_fp32_gemm_gflops"]
                                           if peak.get("measured_fp32_gemm_gflops") else None),
                "model_gflop": flops["total"] / 1e9,
            })
            rows.append(row)
    target = TARGET_CELLS.get(spec.name)
    return {"spec": spec.name, "grid": [list(c) for c in grid], "target_cell": list(target) if target else None,
            "rows": rows, "engines": {e.name: {"kind": e.kind, "path": e.path, "precision": e.precision,
                                               "fused": e.fused, "extra": runs[e.name].get("extra"),
                                               "peak_rss_mib": runs[e.name].get("peak_rss_mib"),
                                               "load_s": runs[e.name].get("load_s"),
                                               "wall_s": runs[e.name].get("wall_s"),
                                               "error": runs[e.name].get("error")} for e in engines},
            **{k: v for k, v in info.items() if k != "config"}, "model_config": {
                k: cfg.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                        "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size")}}


COLUMNS = [("engine", "engine", ""), ("batch", "B", "{}"), ("seq", "L", "{}"), ("p50_ms", "p50 ms", "{:.2f}"),
           ("p99_ms", "p99 ms", "{:.2f}"), ("seq_per_s", "seq/s", "{:.1f}"), ("tokens_per_s", "tok/s", "{:.0f}"),
           ("speedup_vs_pytorch", "x PyTorch", "{:.2f}"), ("gflops", "GFLOP/s", "{:.1f}"),
           ("pct_peak", "% peak", "{:.1f}"), ("max_abs_diff_vs_pytorch", "max|Δ|", "{:.1e}"),
           ("peak_rss_mib", "RSS MiB", "{:.0f}"), ("size_mb", "MB", "{:.1f}"), ("error", "error", "")]


def print_tables(result: dict) -> None:
    for spec in result["specs"]:
        print(f"\n== {spec['spec']}  ({spec['model_config']['model_type']}, {spec['model_config']['num_hidden_layers']} "
              f"layers x {spec['model_config']['hidden_size']})  target cell B x L = {spec['target_cell']}")
        rows = sorted(spec["rows"], key=lambda r: (r.get("batch", 0), r.get("seq", 0)))
        cols = COLUMNS if any("error" in r for r in rows) else COLUMNS[:-1]
        print(common.format_table(rows, cols))
        if spec.get("skipped"):
            for k, v in spec["skipped"].items():
                print(f"  {k}: {v}")


def plot(result: dict, out_prefix: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    peak = result["machine"]["peak"]
    for spec in result["specs"]:
        rows = [r for r in spec["rows"] if "p50_ms" in r]
        engines = list(dict.fromkeys(r["engine"] for r in rows))
        fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
        ax = axes[0]
        for e in engines:
            pts = sorted(((r["seq_per_s"], r["p50_ms"], f"{r['batch']}x{r['seq']}") for r in rows if r["engine"] == e))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=e)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("throughput (sequences/s)")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title(f"{spec['spec']}: latency vs throughput (points: grid cells B x L)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        ax = axes[1]
        cells = [tuple(c) for c in spec["grid"]]
        labels = [f"B{b}xL{s}" for b, s in cells]
        width = 0.8 / max(1, len(engines))
        for i, e in enumerate(engines):
            ys = []
            for b, s in cells:
                r = next((r for r in rows if r["engine"] == e and r["batch"] == b and r["seq"] == s), None)
                ys.append(r["speedup_vs_pytorch"] if r and r.get("speedup_vs_pytorch") else 0)
            ax.bar([x + i * width for x in range(len(cells))], ys, width=width, label=e)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(cells))])
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("speed-up vs PyTorch eager (p50)")
        ax.set_title(f"{spec['spec']}: speed-up vs batch size x length")
        ax.legend(fontsize=7)
        fig.suptitle(f"{peak['cpu']} ({peak['cores']} cores), {result['machine']['threads_used']} threads; "
                     f"onnxruntime {result['versions'].get('onnxruntime')}, torch {result['versions'].get('torch')}",
                     fontsize=9)
        files.append(common.save_spec_figure(fig, out_prefix, spec["spec"]))
    return files


def parse_pins(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def parse_grid(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        b, s = item.lower().split("x")
        out.append((int(b), int(s)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=os.environ.get("GUARDRT_BENCH_SPECS", "rejection,intent-safety"),
                    help="comma-separated specs (env GUARDRT_BENCH_SPECS)")
    ap.add_argument("--size", default=os.environ.get("GUARDRT_BENCH_SIZE"), choices=("tiny", "realistic"),
                    help="demo model size (env GUARDRT_BENCH_SIZE; default realistic, tiny with --quick)")
    ap.add_argument("--quick", action="store_true", help="tiny models, small grid, 1 iteration (smoke test)")
    ap.add_argument("--grid", type=parse_grid, default=None, help="override the grid, e.g. 1x128,16x128")
    ap.add_argument("--engines", default=None, help="comma-separated substrings: only matching engines (+ PyTorch)")
    ap.add_argument("--no-fused", action="store_true", help="skip the guardrt.kernels fused variants")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("GUARDRT_BENCH_THREADS", "0")) or None,
                    help="intra-op threads for every engine (env GUARDRT_BENCH_THREADS; default: all cores)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--min-reps", type=int, default=None)
    ap.add_argument("--max-reps", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("GUARDRT_BENCH_BUDGET_S", "5")),
                    help="seconds of measurement per engine and cell (env GUARDRT_BENCH_BUDGET_S)")
    ap.add_argument("--out", type=Path, default=None, help="output prefix (default benchmarks/results/inprocess)")
    ap.add_argument("--export-dirs", type=parse_pins, default={},
                    help="use these export directories instead of the cached demo exports: "
                         "SPEC=DIR[,SPEC:fused=DIR...] (env GUARDRT_BENCH_EXPORT_DIRS)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--no-gemm-peak", action="store_true", help="skip the empirical fp32 GEMM peak measurement")
    ap.add_argument("--verbose", action="store_true", help="show export/build progress")
    args = ap.parse_args(argv)
    if not args.export_dirs and os.environ.get("GUARDRT_BENCH_EXPORT_DIRS"):
        args.export_dirs = parse_pins(os.environ["GUARDRT_BENCH_EXPORT_DIRS"])
    args.size = args.size or ("tiny" if args.quick else "realistic")
    args.threads = args.threads or (os.cpu_count() or 1)
    if args.quick:
        args.warmup = 0 if args.warmup is None else args.warmup
        args.min_reps = args.max_reps = 1
        args.budget_s = 0.0
    args.warmup = 2 if args.warmup is None else args.warmup
    args.min_reps = 3 if args.min_reps is None else args.min_reps
    args.max_reps = 30 if args.max_reps is None else args.max_reps
    args.engines = [e for e in args.engines.split(",") if e] if args.engines else None
    out = args.out or common.RESULTS / ("inprocess_quick" if args.quick else "inprocess")
    specs = [s.strip() for s in args.spec.split(",") if s.strip()]

    machine = common.machine_description(args.threads)
    peak = machine["peak"]
    if not args.no_gemm_peak and not args.quick:
        peak["measured_fp32_gemm_gflops"] = round(common.measured_gemm_peak(args.threads), 1)
        peak["measured_fp32_gemm_note"] = "best 2048^3 torch.mm, same threads, measured at the start of this run"
    _log(f"peak: {peak['derivation']} = {peak['peak_fp32_gflops']} GFLOP/s fp32, {peak['peak_int8_gops']} GOP/s int8"
         + (f"; measured fp32 GEMM {peak['measured_fp32_gemm_gflops']} GFLOP/s" if "measured_fp32_gemm_gflops" in peak
            else ""))
    t0 = time.perf_counter()
    result = {
        "benchmark": "inprocess",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "versions": common.versions(),
        "settings": {"size": args.size, "threads": args.threads, "warmup": args.warmup, "min_reps": args.min_reps,
                     "max_reps": args.max_reps, "budget_s": args.budget_s, "quick": args.quick,
                     "inputs": "random ordinary-vocabulary ids, no padding (cost of exactly B x L); parity on a "
                               "padded batch on the spec's padding side",
                     "flops": "model_flops(): 2 x MACs of all linear layers + attention QK/PV (causal: S(S+1)/2)",
                     "speedup": "PyTorch p50 / engine p50, same cell, same run"},
        "specs": [],
    }
    for spec_name in specs:
        result["specs"].append(run_spec(spec_name, args, peak, []))
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    try:
        result["machine"]["loadavg_at_end"] = os.getloadavg()
    except OSError:
        pass
    print_tables(result)
    json_path = common.write_json(out.with_suffix(".json"), result)
    files = [json_path]
    if not args.no_plots:
        files += plot(result, out)
    print("\nwrote " + ", ".join(str(f.relative_to(common.REPO_ROOT)) if f.is_relative_to(common.REPO_ROOT)
                                 else str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())

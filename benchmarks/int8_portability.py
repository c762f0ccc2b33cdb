"""int8 portability: drift of every int8 format on each ONNX Runtime int8 code path, and speed on this machine.

ONNX Runtime's CPU int8 GEMM sums u8 x s8 products exactly with VNNI / AMX and in saturating int16 pairs without VNNI
(AVX2, AVX-512 without VNNI; see guardrt.runtime.int8_path). This program measures what that does to each format the
exporter can write, per spec and demo-model size:

  variants  fp32 (baseline), int8-dynamic with s8 weights (ORT's default, guardrt's format before issue 9), s8 7-bit
            weights (reduce_range, guardrt's format now), u8 weights (U8U8), and the static QDQ int8 graph (s8 x s8,
            the TensorRT format); with --fused, the same after guardrt.kernels' graph pass (Qwen3 only)
  sessions  ort-default (what a plain ONNX Runtime session does), x64quantprecision (session.x64quantprecision=1:
            ORT rewrites weights that do not fit 7 bits to u8 at load; guardrt's sessions set it where U8S8
            saturates, see guardrt.runtime.int8_path.exact_int8_session_config), qdq-as-float
            (session.disable_quant_qdq=1, QDQ graph only: the graph's own semantics, what TensorRT computes)
  paths     this machine's native int8 path, and AVX2 through qemu user-mode emulation (`qemu-x86_64 -cpu Haswell`:
            ONNX Runtime's own AVX2 kernels, run instruction by instruction; the worker reports the path it detected)

Drift is measured like the exporter's validation: max |Δlogit| vs PyTorch fp32 over its cases and held-out decision
agreement, against the spec's gates. Emulation runs ~100x slower, so emulated runs take the held-out rows only (the
first 16 of them for the realistic models; --emulated-cases), skip fp32 (no int8 kernels), and are repeated natively
on the same rows so the two paths compare like for like. Speed is
measured natively only, each variant in its own process, in the session guardrt would open on this CPU (plus the
full-range s8 graphs with x64quantprecision, to show its cost here): emulation time says nothing about a real
AVX2 CPU, and no AVX2-only machine was available, so **AVX2 speed is not measured here**.

    python benchmarks/int8_portability.py                      # tiny + realistic demo models (take the heavy lock)
    python benchmarks/int8_portability.py --quick               # tiny models, short timing: smoke run
    python benchmarks/int8_portability.py --fused --phase native             # build, drift, speed (take the heavy lock)
    nice -n 19 python benchmarks/int8_portability.py --fused --phase emulated    # adds AVX2 to the same JSON
    python benchmarks/int8_portability.py --worker DIR OUT      # one drift measurement (what runs under qemu)

Writes benchmarks/results/int8_portability[_quick].json and _drift.png / _speed.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import TimingSettings  # noqa: E402

# variant -> (precision whose gate applies, how it is built)
VARIANTS = {
    "fp32": ("fp32", None),
    "int8-dynamic/s8": ("int8-dynamic", "s8"),
    "int8-dynamic/s8-7bit": ("int8-dynamic", "s8-7bit"),
    "int8-dynamic/u8": ("int8-dynamic", "u8"),
    "int8/qdq-s8s8": ("int8", "qdq"),
}
SESSIONS = {
    "ort-default": {"session.x64quantprecision": "0"},
    "x64quantprecision": {"session.x64quantprecision": "1"},
    "qdq-as-float": {"session.disable_quant_qdq": "1"},
}
# Bump when _build changes what it writes (the cache key also covers export/ and kernels/).
BUILD_VERSION = 1
DEFAULT_EMULATOR = "qemu-x86_64 -cpu Haswell"
SPEED_CELLS = {"rejection": [(1, 128), (16, 128)], "intent-safety": [(1, 128), (1, 1024)]}
QUICK_CELLS = {"rejection": [(1, 16), (4, 16)], "intent-safety": [(1, 16), (2, 16)]}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sessions_for(variant: str) -> list[str]:
    if variant.startswith("fp32"):
        return ["ort-default"]
    if variant.startswith("int8/"):
        return ["ort-default", "x64quantprecision", "qdq-as-float"]
    return ["ort-default", "x64quantprecision"]


def guardrt_session() -> str:
    """The session guardrt's runners open on this CPU (exact_int8_session_config)."""
    from guardrt.runtime.int8_path import exact_int8_session_config

    return "x64quantprecision" if exact_int8_session_config() else "ort-default"


# -- building the variants and the cases (natively, once per code version) ----------------------------------------
def build_work_dir(spec_name: str, size: str, fused: bool, log=_log) -> Path:
    """Cached directory with models/<variant>.onnx and cases.npz (the exporter's validation set + PyTorch logits)."""
    from guardrt.export import demo_models

    model_dir = demo_models.cached_demo_model(spec_name, size, log=log)
    key = f"{spec_name}-{size}{'-fused' if fused else ''}-" + common.code_hash(
        common.REPO_ROOT / "export", common.REPO_ROOT / "kernels",
        extra=[model_dir.name, common.versions(), BUILD_VERSION, VARIANTS])
    def build(tmp: Path) -> None:
        from guardrt.export.onnx_export import _quiet_libraries

        with _quiet_libraries():
            _build(tmp, spec_name, size, model_dir, fused, log)

    return demo_models._cached("int8-portability", key, build)


def _build(work: Path, spec_name: str, size: str, model_dir: Path, fused: bool, log) -> None:
    import onnx

    from guardrt.export import demo_models
    from guardrt.export.onnx_export import (EXTERNAL_DATA_THRESHOLD, _calibration_feeds, _int8_excluded, _torch_model,
                                            _weights_bytes, save_onnx)
    from guardrt.export.quantize import FeedsReader, quantize_int8_dynamic, quantize_qdq_static
    from guardrt.export.validate import build_validation_set, torch_reference
    from guardrt.runtime.specs import get_spec

    spec = get_spec(spec_name)
    models = work / "models"
    models.mkdir(parents=True)
    # The plain graph (the exporter's default for --target onnx is already fused); the pass is applied below.
    export = demo_models.cached_demo_export(spec_name, size, ("fp32",), log=log, graph_pass=None)
    fp32 = onnx.load(str(export / "fp32" / "model.onnx"), load_external_data=True)
    if fused:
        from guardrt.kernels import graph_pass

        fp32 = graph_pass(fp32, spec)
    large = _weights_bytes(fp32) > EXTERNAL_DATA_THRESHOLD
    fp32_path = models / "fp32.onnx"
    save_onnx(fp32, fp32_path)
    excluded = _int8_excluded(fp32)
    for variant, (precision, how) in VARIANTS.items():
        if how is None:
            continue
        out = models / f"{variant.replace('/', '_')}.onnx"
        raw = work / "raw.onnx"
        log(f"{spec_name}/{size}: building {variant}")
        if how == "qdq":
            feeds = _calibration_feeds(spec, model_dir, 32)
            quantize_qdq_static(fp32_path, raw, FeedsReader(feeds), large=large, nodes_to_exclude=excluded)
        else:
            quantize_int8_dynamic(fp32_path, raw, large=large, nodes_to_exclude=excluded, weight_format=how)
        save_onnx(onnx.load(str(raw), load_external_data=True), out)
        for f in work.glob("raw.onnx*"):
            f.unlink()
    log(f"{spec_name}/{size}: PyTorch reference on the exporter's validation set")
    vset = build_validation_set(spec, model_dir)
    reference = torch_reference(model_dir, vset, model=_torch_model(model_dir, spec))
    arrays = {}
    for c in vset.cases:
        arrays[f"{c.name}|input_ids"] = c.input_ids
        arrays[f"{c.name}|attention_mask"] = c.attention_mask
        arrays[f"{c.name}|reference"] = reference[c.name]
    np.savez(work / "cases.npz", **arrays)
    (work / "cases.json").write_text(json.dumps({
        "spec": spec.name, "size": size, "fused": fused, "cases": [c.name for c in vset.cases],
        "heldout": [c.name for c in vset.cases if c.heldout], "settings": vset.settings}), encoding="utf-8")


# -- the drift worker (natively or under the emulator) --------------------------------------------------------------
def select_cases(meta: dict, cases: str) -> list[str]:
    """Case names for "all", "heldout" or "heldout:N" (the held-out batches holding the first N rows)."""
    if cases == "all":
        return list(meta["cases"])
    heldout = [n for n in meta["cases"] if n in meta["heldout"]]
    if cases == "heldout":
        return heldout
    rows = int(cases.split(":", 1)[1])
    per_batch = int(meta["settings"].get("batch_size", 8))
    return heldout[:max(1, -(-rows // per_batch))]


def measure_drift(work: Path, cases: str = "all", skip: tuple[str, ...] = ()) -> dict:
    """Every variant (but `skip`) x session on `work`'s cases (see select_cases), on whatever CPU runs this."""
    import onnxruntime as ort

    from guardrt.runtime.int8_path import describe, int8_path
    from guardrt.runtime.postprocess import postprocess
    from guardrt.runtime.specs import get_spec

    meta = json.loads((work / "cases.json").read_text(encoding="utf-8"))
    spec = get_spec(meta["spec"])
    data = np.load(work / "cases.npz")
    names = select_cases(meta, cases)
    heldout = set(meta["heldout"])

    def decide(logits):
        return np.asarray([r["label"] for r in postprocess(spec, logits)])

    rows = []
    for variant, (precision, _) in VARIANTS.items():
        if variant in skip:
            continue
        model = work / "models" / f"{variant.replace('/', '_')}.onnx"
        for session in sessions_for(variant):
            so = ort.SessionOptions()
            for k, v in SESSIONS[session].items():
                so.add_session_config_entry(k, v)
            t0 = time.perf_counter()
            sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
            per_case, ref_h, out_h = {}, [], []
            for n in names:
                out = sess.run(None, {k: data[f"{n}|{k}"] for k in spec.input_names})[0]
                ref = data[f"{n}|reference"]
                per_case[n] = float(np.max(np.abs(out - ref))) if np.all(np.isfinite(out)) else float("inf")
                if n in heldout:
                    ref_h.append(ref)
                    out_h.append(out)
            agreement = float(np.mean(decide(np.concatenate(ref_h)) == decide(np.concatenate(out_h))))
            diff = max(per_case.values())
            atol, min_agree = float(spec.atol[precision]), float(spec.min_agreement[precision])
            rows.append({"variant": variant, "precision": precision, "session": session,
                         "max_abs_diff": diff, "agreement": agreement, "atol": atol, "min_agreement": min_agree,
                         "passes_gate": diff <= atol and agreement >= min_agree, "cases": per_case,
                         "seconds": round(time.perf_counter() - t0, 1)})
            _log(f"  [{int8_path()}] {meta['spec']}/{meta['size']} {variant:22s} {session:13s} "
                 f"max|Δ| {diff:.4g} (gate {atol:g}) agreement {agreement:.3f}")
    path = int8_path()
    return {"int8_path": path, "int8_path_description": describe(path), "guardrt_session": guardrt_session(),
            "cases": cases, "case_names": names,
            "rows": rows}


def run_worker(work: Path, cases: str, emulator: str | None, skip: tuple[str, ...] = ()) -> dict:
    """measure_drift in a child process (under `emulator` when given); its JSON result."""
    out = work / f"drift-{os.getpid()}-{time.time_ns()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(work), str(out), "--cases", cases,
           "--skip", ",".join(skip)]
    if emulator:
        cmd = shlex.split(emulator) + cmd
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr.splitlines():  # the worker's progress, without qemu's unsupported-feature chatter
        if not line.startswith("qemu-x86_64: warning"):
            _log(line)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"drift worker failed ({' '.join(cmd[:3])} ...): exit {proc.returncode}")
    try:
        return json.loads(out.read_text(encoding="utf-8"))
    finally:
        out.unlink(missing_ok=True)


# -- speed (natively) ------------------------------------------------------------------------------------------------
def _time_variant(model: str, config: dict, spec_name: str, vocab: int, cells, threads: int,
                  settings: TimingSettings) -> dict:
    """Child-process body: one ONNX Runtime session with `config`, timed on every (batch, seq) cell."""
    import onnxruntime as ort

    from guardrt.runtime.specs import get_spec

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    for key, value in config.items():
        so.add_session_config_entry(key, value)
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    spec = get_spec(spec_name)
    out = {}
    for batch, seq in cells:
        feeds = common.make_feeds(spec, vocab, batch, seq)
        out[f"{batch}x{seq}"] = {"batch": batch, "seq": seq,
                                 **common.summarize(common.time_call(lambda: sess.run(None, feeds), settings))}
    return {"cells": out, "peak_rss_mib": common.peak_rss_mib()}


def measure_speed(work: Path, spec_name: str, cells, threads: int, settings: TimingSettings) -> list[dict]:
    """p50 per variant in the session guardrt opens here, and the full-range s8 graphs with x64quantprecision;
    each in its own spawned process."""
    import multiprocessing as mp

    cfg = json.loads((work / "cases.json").read_text(encoding="utf-8"))
    vocab = _vocab_size(work)
    here = guardrt_session()
    runs = [(v, here) for v in VARIANTS]
    runs += [(v, "x64quantprecision") for v in ("int8-dynamic/s8", "int8/qdq-s8s8") if here != "x64quantprecision"]
    rows = []
    ctx = mp.get_context("spawn")
    for variant, session in runs:
        model = work / "models" / f"{variant.replace('/', '_')}.onnx"
        config = {} if variant == "fp32" else SESSIONS[session]
        with ctx.Pool(1) as pool:
            res = pool.apply(_time_variant, (str(model), config, spec_name, vocab, cells, threads, settings))
        for key, cell in res["cells"].items():
            rows.append({"variant": variant, "session": session, "cell": key, **cell,
                         "peak_rss_mib": res["peak_rss_mib"], "size_mb": common.dir_bytes(model) / 1e6})
        _log(f"  speed {cfg['spec']}/{cfg['size']} {variant} [{session}]: " + ", ".join(
            f"{k} {c['p50_ms']:.1f} ms" for k, c in res["cells"].items()))
    base = {r["cell"]: r["p50_ms"] for r in rows if r["variant"] == "fp32"}
    for r in rows:
        r["speedup_vs_ort_fp32"] = base[r["cell"]] / r["p50_ms"]
    return rows


def _vocab_size(work: Path) -> int:
    import onnx

    model = onnx.load(str(work / "models" / "fp32.onnx"), load_external_data=False)
    for init in model.graph.initializer:
        if "embed" in init.name and len(init.dims) == 2:
            return int(init.dims[0])
    return 1000


# -- report ----------------------------------------------------------------------------------------------------------
def _run_label(run: dict) -> str:
    return f"{run['int8_path']}{' emulated' if run['emulated'] else ''}, {run['cases']} cases"


def print_tables(result: dict) -> None:
    for block in result["models"]:
        print(f"\n{block['spec']} / {block['size']}{' (fused graph)' if block['fused'] else ''}: max |Δlogit| vs "
              "PyTorch fp32 (agreement), per int8 path and session")
        runs = block["drift"]
        header = ["variant", "session"] + [_run_label(r) for r in runs]
        lines = [header]
        for row in runs[0]["rows"]:
            line = [row["variant"], row["session"]]
            for run in runs:
                match = next((x for x in run["rows"] if x["variant"] == row["variant"]
                              and x["session"] == row["session"]), None)
                line.append("-" if match is None else
                            f"{match['max_abs_diff']:.3g} ({match['agreement']:.2f}){'' if match['passes_gate'] else ' FAIL'}")
            lines.append(line)
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
        for line in lines:
            print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))
        if block.get("speed"):
            print(f"speed on this machine ({result['int8_path']}), p50 ms (x ORT fp32 p50, same cell):")
            for r in block["speed"]:
                print(f"  {r['variant']:22s} {r['session']:18s} {r['cell']:>8s} {r['p50_ms']:8.2f} ms  "
                      f"x{r['speedup_vs_ort_fp32']:.2f}")


def markdown(result: dict) -> str:
    """The README tables: drift per variant x int8 path, and speed on this machine."""
    lines = ["| model | variant | session | " + " | ".join(
        ["native, all cases", "native, emulated rows", "AVX2 (emulated), same rows"]) + " | gate |",
        "|---|---|---|---:|---:|---:|---:|"]
    for block in result["models"]:
        model = f"{block['spec']} {block['size']}{' fused' if block['fused'] else ''}"
        runs = {("all" if d["cases"] == "all" and not d["emulated"] else "emu" if d["emulated"] else "same"): d
                for d in block["drift"]}
        for row in runs["all"]["rows"]:
            if row["variant"] == "fp32":
                continue
            cells = []
            for key in ("all", "same", "emu"):
                match = next((x for x in runs.get(key, {}).get("rows", [])
                              if (x["variant"], x["session"]) == (row["variant"], row["session"])), None)
                cells.append("-" if match is None else f"{match['max_abs_diff']:.3g}"
                             + ("" if match["agreement"] == 1.0 else f" ({match['agreement']:.2f})")
                             + ("" if match["passes_gate"] else " **over**"))
            lines.append(f"| {model} | {row['variant']} | {row['session']} | " + " | ".join(cells)
                         + f" | {row['atol']:g} |")
    speed = ["| model | variant | session | " + " | ".join(["B x L", "p50 ms", "x ORT fp32"]) + " |",
             "|---|---|---|---|---:|---:|"]
    for block in result["models"]:
        model = f"{block['spec']} {block['size']}{' fused' if block['fused'] else ''}"
        for r in block.get("speed", []):
            speed.append(f"| {model} | {r['variant']} | {r['session']} | {r['cell']} | {r['p50_ms']:.1f} | "
                         f"{r['speedup_vs_ort_fp32']:.2f} |")
    return "\n".join(lines) + "\n\n" + "\n".join(speed) + "\n"


def plot(result: dict, out_prefix: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    blocks = result["models"]
    fig, axes = plt.subplots(1, len(blocks), figsize=(6.5 * len(blocks), 4.8), squeeze=False)
    for ax, block in zip(axes[0], blocks):
        labels, series = [], {}
        first = block["drift"][0]["rows"]
        for row in first:
            if row["variant"] == "fp32":
                continue
            labels.append(f"{row['variant']}\n{row['session']}")
            for run in block["drift"]:
                name = _run_label(run)
                match = next((x for x in run["rows"] if x["variant"] == row["variant"]
                              and x["session"] == row["session"]), None)
                series.setdefault(name, []).append(match["max_abs_diff"] if match else np.nan)
        x = np.arange(len(labels))
        width = 0.8 / max(1, len(series))
        for i, (name, values) in enumerate(series.items()):
            ax.bar(x + i * width, values, width, label=name)
        gates = [r["atol"] for r in first if r["variant"] != "fp32"]
        ax.scatter(x + width * (len(series) - 1) / 2, gates, marker="_", s=400, color="k", label="gate", zorder=3)
        ax.set_yscale("log")
        ax.set_xticks(x + width * (len(series) - 1) / 2)
        ax.set_xticklabels(labels, rotation=70, fontsize=7)
        ax.set_ylabel("max |Δlogit| vs PyTorch fp32")
        ax.set_title(f"{block['spec']} / {block['size']}{' fused' if block['fused'] else ''}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_prefix.with_name(out_prefix.name + "_drift.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    speed_blocks = [b for b in blocks if b.get("speed")]
    if speed_blocks:
        fig, axes = plt.subplots(1, len(speed_blocks), figsize=(6 * len(speed_blocks), 4.2), squeeze=False)
        for ax, block in zip(axes[0], speed_blocks):
            cells = sorted({r["cell"] for r in block["speed"]})
            variants = list(dict.fromkeys((r["variant"], r["session"]) for r in block["speed"]))
            width = 0.8 / max(1, len(cells))
            for i, cell in enumerate(cells):
                vals = [next((r["speedup_vs_ort_fp32"] for r in block["speed"]
                              if (r["variant"], r["session"]) == v and r["cell"] == cell), np.nan) for v in variants]
                ax.bar(np.arange(len(variants)) + i * width, vals, width, label=f"B x L = {cell}")
            ax.set_xticks(np.arange(len(variants)) + width * (len(cells) - 1) / 2)
            ax.set_xticklabels([f"{v}\n{sess}" for v, sess in variants], rotation=30, fontsize=7, ha="right")
            ax.set_ylabel(f"speed-up vs ORT fp32 ({result['int8_path']}, native)")
            ax.set_title(f"{block['spec']} / {block['size']}{' fused' if block['fused'] else ''}")
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_prefix.with_name(out_prefix.name + "_speed.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ.get
    p.add_argument("--specs", default=env("GUARDRT_BENCH_SPECS", "rejection,intent-safety"))
    p.add_argument("--sizes", default=env("GUARDRT_BENCH_SIZE", "tiny,realistic"))
    p.add_argument("--fused", action="store_true", default=env("GUARDRT_BENCH_FUSED") == "1",
                   help="also measure Qwen3 variants after guardrt.kernels' graph pass")
    p.add_argument("--emulator", default=env("GUARDRT_BENCH_EMULATOR", DEFAULT_EMULATOR),
                   help=f"command prefix running a non-VNNI path (default: {DEFAULT_EMULATOR!r}; 'none' to skip)")
    p.add_argument("--emulated-cases", default=env("GUARDRT_BENCH_EMULATED_CASES", "auto"),
                   help="cases run under emulation: heldout | heldout:N (first N held-out rows) | all (adds the long "
                        "inputs, very slow); default auto: heldout for tiny, heldout:16 for realistic models")
    p.add_argument("--threads", type=int, default=int(env("GUARDRT_BENCH_THREADS", "0")) or (os.cpu_count() or 1))
    p.add_argument("--budget-s", type=float, default=float(env("GUARDRT_BENCH_BUDGET_S", "4")))
    p.add_argument("--no-speed", action="store_true", help="drift only")
    p.add_argument("--quick", action="store_true", help="tiny models, short timing (smoke run)")
    p.add_argument("--out", default=None, help="output prefix (default benchmarks/results/int8_portability[_quick])")
    p.add_argument("--phase", choices=("all", "native", "emulated", "report"), default="all",
                   help="native: build, native drift and speed (take the heavy lock); emulated: add the emulated "
                        "drift to the JSON a native run wrote (hours for the realistic models; run it niced, "
                        "outside the lock); all: both (default); report: print the README tables from the JSON")
    p.add_argument("--worker", nargs=2, metavar=("WORK_DIR", "OUT_JSON"), help=argparse.SUPPRESS)
    p.add_argument("--cases", default="all", help=argparse.SUPPRESS)
    p.add_argument("--skip", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        result = measure_drift(Path(args.worker[0]), args.cases, tuple(filter(None, args.skip.split(","))))
        Path(args.worker[1]).write_text(json.dumps(result), encoding="utf-8")
        return 0

    from guardrt.runtime.int8_path import describe, int8_path, path_record

    sizes = ["tiny"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    specs = [s.strip() for s in args.specs.split(",") if s.strip()]
    emulator = None if args.emulator.lower() == "none" else args.emulator
    if emulator and shutil.which(shlex.split(emulator)[0]) is None:
        _log(f"note: {shlex.split(emulator)[0]} not found (apt-get install qemu-user); no emulated AVX2 path")
        emulator = None
    settings = TimingSettings(warmup=1, min_reps=1, max_reps=2, budget_s=0.0) if args.quick else TimingSettings(
        budget_s=args.budget_s)
    out_prefix = Path(args.out) if args.out else common.RESULTS / ("int8_portability_quick" if args.quick
                                                                   else "int8_portability")
    out_json = out_prefix.with_suffix(".json")
    if args.phase == "report":
        print(markdown(json.loads(out_json.read_text(encoding="utf-8"))))
        return 0
    if args.phase == "emulated":
        if not out_json.is_file():
            raise SystemExit(f"--phase emulated adds to {out_json}: run --phase native first")
        result = json.loads(out_json.read_text(encoding="utf-8"))
    else:
        result = {"benchmark": "int8_portability", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "machine": common.machine_description(args.threads), "versions": common.versions(),
                  "int8_path": int8_path(), "int8_path_description": describe(int8_path()),
                  "int8_record": path_record(), "emulator": None, "emulated_cases": None,
                  "avx2_speed": "not measured: no AVX2-only CPU was available; emulated timings mean nothing",
                  "models": [{"spec": spec_name, "size": size, "fused": fused, "drift": []}
                             for size in sizes for spec_name in specs
                             for fused in ([False, True] if args.fused and spec_name == "intent-safety" else [False])]}
    for block in result["models"]:
        label = f"{block['spec']} / {block['size']}{' fused' if block['fused'] else ''}"
        if args.phase in ("all", "native"):
            _log(f"== {label}: native drift{'' if args.no_speed else ' and speed'}")
            work = build_work_dir(block["spec"], block["size"], block["fused"])
            block["drift"] = [{**run_worker(work, "all", None), "emulated": False}]
            if not args.no_speed:
                cells = (QUICK_CELLS if args.quick else SPEED_CELLS)[block["spec"]]
                block["speed"] = measure_speed(work, block["spec"], cells, args.threads, settings)
        if args.phase in ("all", "emulated") and emulator:
            _log(f"== {label}: emulated drift ({emulator})")
            work = build_work_dir(block["spec"], block["size"], block["fused"])
            cases = args.emulated_cases if args.emulated_cases != "auto" else (
                "heldout" if block["size"] == "tiny" else "heldout:16")
            block["drift"] = [d for d in block["drift"] if not d["emulated"] and d["cases"] == "all"]
            t0 = time.perf_counter()
            emulated = run_worker(work, cases, emulator, skip=("fp32",))
            block["drift"].append({**emulated, "emulated": True, "emulator": emulator,
                                   "seconds": round(time.perf_counter() - t0, 1)})
            if cases != "all":  # the same rows natively, so the two paths compare like for like
                block["drift"].insert(1, {**run_worker(work, cases, None), "emulated": False})
            result["emulator"], result["emulated_cases"] = emulator, args.emulated_cases
        common.write_json(out_json, result)  # after every block: a long run keeps what it measured
    print_tables(result)
    for path in plot(result, out_prefix):
        _log(f"wrote {path}")
    _log(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Long contexts: peak memory and time per 4,096-token row, the plain graph (before) vs the default fused graph
(after, guardrt.kernels: attention without S x S tensors), intent-safety demo models (tiny and realistic).

Engines (one child process per engine and batch, so every peak is its own):
  pytorch-eager          transformers fp32, default attention (sdpa): the reference
  ort-<precision>-plain  the optimum graph (graph_pass=None; what `--target tensorrt` exports)
  ort-<precision>-fused  the default `guardrt export` graph (GroupQueryAttention, rows right-aligned)

Per cell (batch of B rows of about 4,096 tokens, left-padded like the runtime pads: lengths 4096, 4088, 4088,
4080, ...; plus --extra-cells such as B=1 S=1024, the in-process benchmark's intent-safety target cell): a short
warm-up call, then long calls until --budget-s (at least one); time of the first long call and
the median of the others, time per row, peak RSS (VmHWM) and the working memory of the long calls (peak minus the
RSS after the warm-up), user/sys CPU seconds (sys is page faulting on huge buffers). A cell whose estimated working
memory does not fit in 80% of the available memory is skipped with its estimate. Then the issue's end-to-end case:
`guardrt classify --model` over --classify-rows long synthetic dialogues (most trimmed to 4,088 tokens) on the tiny
demo, plain vs fused. Logits of the fused graph are compared with the plain graph's and PyTorch's on the B = 1 row.

    python benchmarks/long_context.py                 # tiny + realistic, B = 1 and 4 (run under the heavy lock)
    python benchmarks/long_context.py --quick         # tiny, 256 tokens, smoke test

Both exports hold every precision (fp32, fp16, int8, int8-dynamic), so the JSON also records each precision's
validation gate on both graphs. Writes benchmarks/results/long_context[_quick].json, .txt and
long_context[_quick]_intent-safety.png.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SPEC = "intent-safety"
ROW_LENGTHS = (4096, 4088, 4088, 4080)  # cycled over the batch; "most 4,088 tokens" (the issue's dialogues)
# Working memory of one long call of the plain graph, measured here (tiny demo, S = 4096): 5.2 x the
# [B, heads, S, S] fp32 score tensor (scores, masked scores, probabilities, NaN guard live at once). PyTorch's sdpa
# with a padding mask takes its math path, about 3 x.
PLAIN_SCORE_COPIES = {"ort": 5.2, "pytorch": 3.0}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def row_feeds(vocab_size: int, pad_id: int, batch: int, seq: int, seed: int = 0) -> dict:
    """B rows of ordinary-vocabulary ids, row i of length ROW_LENGTHS[i % 4] scaled to `seq`, left-padded."""
    import numpy as np

    rng = np.random.default_rng(seed + batch)
    ids = rng.integers(10, max(11, min(vocab_size, 150000) - 10), (batch, seq)).astype(np.int64)
    mask = np.ones_like(ids)
    for b in range(batch):
        pad = seq - max(1, ROW_LENGTHS[b % len(ROW_LENGTHS)] * seq // ROW_LENGTHS[0])
        ids[b, :pad], mask[b, :pad] = pad_id, 0
    return {"input_ids": ids, "attention_mask": mask}


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def measure_cell(engine: dict, batch: int, seq: int, budget_s: float, threads: int) -> dict:
    """Child-process body: load the engine, warm up on a short batch, time long calls; memory from /proc."""
    from guardrt.runtime.specs import get_spec

    spec = get_spec(SPEC)
    if engine["kind"] == "pytorch":
        import torch
        from transformers import AutoModelForSequenceClassification

        torch.set_num_threads(threads)
        model = AutoModelForSequenceClassification.from_pretrained(engine["path"], dtype=torch.float32).eval()
        model.config.pad_token_id = spec.pad_token_id

        def infer(feeds):
            with torch.inference_mode():
                return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    else:
        from guardrt.runtime.onnxrt import OnnxRunner

        runner = OnnxRunner(engine["path"], intra_op_threads=threads)

        def infer(feeds):
            return runner.infer(feeds)[spec.output_names[0]]

    feeds = row_feeds(engine["vocab_size"], spec.pad_token_id, batch, seq)
    infer({k: v[:, -64:] for k, v in feeds.items()})
    ready_mib = _status_mib("VmRSS")
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    times, logits = [], None
    t_end = time.perf_counter() + budget_s
    while not times or (time.perf_counter() < t_end and len(times) < 4):
        t = time.perf_counter()
        logits = infer(feeds)
        times.append(time.perf_counter() - t)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    steady = sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0]
    return {"batch": batch, "seq": seq, "calls": len(times), "first_s": times[0], "steady_s": steady,
            "per_row_s": steady / batch, "peak_rss_mib": _status_mib("VmHWM"), "ready_rss_mib": ready_mib,
            "working_mib": _status_mib("VmHWM") - ready_mib,
            "user_s_per_call": (cpu1.ru_utime - cpu0.ru_utime) / len(times),
            "sys_s_per_call": (cpu1.ru_stime - cpu0.ru_stime) / len(times),
            "row0_logits": logits[0].tolist()}


def _in_child(fn, *args):
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def _estimated_plain_mib(cfg: dict, kind: str, batch: int, seq: int) -> float:
    return PLAIN_SCORE_COPIES[kind] * batch * cfg["num_attention_heads"] * seq * seq * 4 / 2 ** 20


def _available_mib() -> float:
    import psutil

    return psutil.virtual_memory().available / 2 ** 20


ALL_PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
_EXPORTS: dict = {}


def exports(size: str, precisions, log) -> dict:
    """{"plain": dir, "fused": dir} of the cached demo exports (forced when a precision misses its gate: benchmarked
    anyway, flagged from validation.json)."""
    from guardrt.export import demo_models
    from guardrt.export.onnx_export import ExportGateError

    if (size, tuple(precisions)) in _EXPORTS:
        return _EXPORTS[size, tuple(precisions)]
    out = _EXPORTS[size, tuple(precisions)] = {}
    for graph, kwargs in (("plain", {"graph_pass": None}), ("fused", {})):
        try:
            out[graph] = demo_models.cached_demo_export(SPEC, size, tuple(precisions), log=log, **kwargs)
        except ExportGateError as exc:
            _log(f"note: {exc}; benchmarking the forced export")
            out[graph] = demo_models.cached_demo_export(SPEC, size, tuple(precisions), log=log, force=True, **kwargs)
    return out


def run_size(size: str, args) -> dict:
    import numpy as np

    from guardrt.export.demo_models import cached_demo_model
    from guardrt.runtime.export_dir import load_export_dir

    model_dir = cached_demo_model(SPEC, size, log=_log if args.verbose else None)
    cfg = json.loads((model_dir / "config.json").read_text())
    dirs = exports(size, args.export_precisions, _log if args.verbose else None)
    manifests = {g: load_export_dir(d) for g, d in dirs.items()}
    engines = [{"name": "pytorch-eager", "kind": "pytorch", "path": str(model_dir), "graph": "pytorch",
                "precision": "fp32"}]
    for precision in args.precisions:
        for graph in ("plain", "fused"):
            m = manifests[graph]
            engines.append({"name": f"ort-{precision}-{graph}", "kind": "ort", "path": str(m.model_path(precision)),
                            "graph": m.raw.get("precision_graphs", {}).get(precision, "plain"), "precision": precision,
                            "validation": {k: m.validation()["precisions"][precision].get(k)
                                           for k in ("max_abs_diff", "atol", "passed")}})
    rows = []
    cells = [(batch, args.seq) for batch in args.batches] + list(args.extra_cells)
    progress = common.Progress(len(engines) * len(cells))
    for engine in engines:
        engine["vocab_size"] = int(cfg["vocab_size"])
        for batch, seq in cells:
            label = f"{size} {engine['name']} B={batch} S={seq}"
            row = {"size": size, "engine": engine["name"], "graph": engine["graph"], "precision": engine["precision"],
                   "batch": batch, "seq": seq, "validation": engine.get("validation")}
            est = (_estimated_plain_mib(cfg, engine["kind"], batch, seq)
                   if engine["graph"] in ("plain", "pytorch") else 0.0)
            if est > 0.8 * _available_mib():
                row["skipped"] = f"estimated working memory {est / 1024:.1f} GiB > 80% of available"
            else:
                try:
                    row.update(_in_child(measure_cell, engine, batch, seq, args.budget_s, args.threads))
                except Exception as exc:  # noqa: BLE001 - one failing cell must not lose the others
                    row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            progress.update(label + (f": {row['per_row_s']:.2f} s/row, {row['working_mib']:.0f} MiB"
                                     if "per_row_s" in row else f": {row.get('skipped') or row.get('error')}"))
    progress.close()
    # the same row through every engine: fused vs plain vs PyTorch
    first = (args.batches[0], args.seq)
    ref = {r["engine"]: np.asarray(r["row0_logits"]) for r in rows
           if (r["batch"], r["seq"]) == first and "row0_logits" in r}
    for r in rows:
        if r.get("row0_logits") is not None and (r["batch"], r["seq"]) == first:
            mine = np.asarray(r["row0_logits"])
            plain = ref.get(f"ort-{r['precision']}-plain")
            r["max_abs_diff_vs_plain"] = float(np.abs(mine - plain).max()) if plain is not None else None
            r["max_abs_diff_vs_pytorch"] = (float(np.abs(mine - ref["pytorch-eager"]).max())
                                            if "pytorch-eager" in ref else None)
    # speed-up over PyTorch eager in the same cell (p50-like: the steady call time)
    torch_time = {(r["batch"], r["seq"]): r["steady_s"] for r in rows if r["engine"] == "pytorch-eager" and "steady_s" in r}
    for r in rows:
        if "steady_s" in r and (r["batch"], r["seq"]) in torch_time:
            r["speedup_vs_pytorch"] = torch_time[r["batch"], r["seq"]] / r["steady_s"]
    return {"config": {k: cfg.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                               "num_key_value_heads", "head_dim", "intermediate_size")},
            "exports": {g: str(d) for g, d in dirs.items()},
            "graphs": {g: m.raw.get("precision_graphs") for g, m in manifests.items()},
            # the exporter's gates, every precision, both graphs (the fused one falls back to plain when it misses)
            "validation": {g: {p: {k: v.get(k) for k in ("graph", "max_abs_diff", "atol", "heldout_agreement",
                                                          "min_agreement", "passed", "fused_graph_rejected")}
                               for p, v in m.validation()["precisions"].items()} for g, m in manifests.items()},
            "rows": rows}


CLASSIFY_PROBE = (
    "import atexit, runpy, sys\n"
    "def hwm():\n"
    "    return [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "atexit.register(lambda: print('VMHWM_KB', hwm(), file=sys.stderr))\n"
    "sys.argv = ['guardrt'] + sys.argv[1:]\n"
    "runpy.run_module('guardrt', run_name='__main__')\n")


def classify_case(args) -> dict:
    """The issue's case: `guardrt classify --model` over long dialogues on the tiny demo, plain vs fused graph."""
    from guardrt.export.synthetic import long_payload
    from guardrt.runtime.specs import get_spec

    from guardrt.export.demo_models import cached_demo_model

    dirs = exports("tiny", args.export_precisions, _log if args.verbose else None)
    cfg = json.loads((cached_demo_model(SPEC, "tiny") / "config.json").read_text())
    batch = get_spec(SPEC).max_batch_size
    out = {"rows": args.classify_rows, "words": args.classify_words, "precision": "fp32", "threads": args.threads,
           "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "dialogues.jsonl"
        data.write_text("".join(json.dumps({"turns": long_payload(SPEC, seed=i, words=args.classify_words)}) + "\n"
                                for i in range(args.classify_rows)))
        for graph, export_dir in dirs.items():
            cmd = [sys.executable, "-c", CLASSIFY_PROBE, "classify", "--spec", SPEC, "--model", str(export_dir),
                   "--input", str(data), "--threads", str(args.threads)]
            run = {"graph": graph, "batch_size": batch}
            # the plain graph holds ~5 [B, heads, S, S] fp32 tensors per batch: cut the batch when it cannot fit
            rows = min(batch, args.classify_rows)
            fits = rows
            while fits > 1 and (_estimated_plain_mib(cfg, "ort", fits, 4096) > 0.8 * _available_mib()
                                and graph == "plain"):
                fits //= 2
            if fits != rows:
                cmd += ["--batch-size", str(fits)]
                run["batch_size"] = fits
                run["note"] = f"--batch-size {fits}: {rows} rows per batch would need about " \
                              f"{_estimated_plain_mib(cfg, 'ort', rows, 4096) / 1024:.0f} GiB"
            t = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            _, _, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t
            stdout, stderr = proc.stdout.read(), proc.stderr.read()
            results = [json.loads(line) for line in stdout.splitlines() if line.strip()]
            hwm = [line.split()[1] for line in stderr.splitlines() if line.startswith("VMHWM_KB")]
            run.update({"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
                        "peak_rss_mib": int(hwm[-1]) / 1024 if hwm else None, "results": len(results),
                        "labels": [r.get("label_text") for r in results]})
            if len(results) != args.classify_rows:
                run["error"] = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
            out["runs"][graph] = run
            _log(f"classify {args.classify_rows} long dialogues, {graph} graph: {wall:.1f}s wall, "
                 f"sys {usage.ru_stime:.1f}s, peak {run['peak_rss_mib'] or 0:.0f} MiB")
    runs = out["runs"]
    if all("labels" in r for r in runs.values()):
        out["same_labels"] = runs["plain"]["labels"] == runs["fused"]["labels"]
    return out


COLUMNS = [("size", "size", ""), ("engine", "engine", ""), ("batch", "B", ""), ("seq", "S", ""),
           ("first_s", "first call s", "{:.2f}"), ("per_row_s", "s/row (steady)", "{:.3f}"),
           ("speedup_vs_pytorch", "x PyTorch", "{:.2f}"), ("sys_s_per_call", "sys s/call", "{:.2f}"),
           ("working_mib", "working MiB", "{:.0f}"), ("peak_rss_mib", "peak RSS MiB", "{:.0f}"),
           ("max_abs_diff_vs_plain", "|Δ| vs plain", "{:.1e}"), ("max_abs_diff_vs_pytorch", "|Δ| vs torch", "{:.1e}"),
           ("note", "note", "")]


def report(payload: dict) -> str:
    rows = []
    for size in payload["sizes"].values():
        for r in size["rows"]:
            note = r.get("skipped") or r.get("error") or ("" if (r.get("validation") or {}).get("passed", True)
                                                          else "export missed its gate (forced)")
            rows.append({**r, "note": note})
    text = [f"Long contexts, {payload['spec']}, {payload['seq']} tokens per row "
            f"({payload['machine']['peak'].get('cpu', '?')}, {payload['machine']['threads_used']} threads, "
            f"load {payload['machine']['loadavg_at_start']})", common.format_table(rows, COLUMNS)]
    for size_name, size in payload["sizes"].items():
        for graph, per_precision in size.get("validation", {}).items():
            text.append(f"{size_name} export, {graph}: " + ", ".join(
                f"{p} {v['graph']} graph |Δ| {v['max_abs_diff']:.2g} (gate {v['atol']:g}) "
                f"{'ok' if v['passed'] else 'MISSED'}" for p, v in per_precision.items()))
    c = payload.get("classify")
    if c:
        for graph, r in c["runs"].items():
            text.append(f"guardrt classify --model (tiny, {c['rows']} long dialogues, {graph} graph, batch "
                        f"{r['batch_size']}): {r['wall_s']:.1f} s wall, user {r['user_s']:.1f} s, sys {r['sys_s']:.1f} s, "
                        f"peak RSS {r['peak_rss_mib'] or float('nan'):.0f} MiB" + (f" ({r['note']})" if r.get("note") else "")
                        + (f" ERROR {r['error']}" if r.get("error") else ""))
        if "same_labels" in c:
            text.append(f"same labels plain vs fused: {c['same_labels']}")
    return "\n".join(text)


def plot(payload: dict, prefix: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sizes = list(payload["sizes"])
    fig, axes = plt.subplots(2, len(sizes), figsize=(6.5 * len(sizes), 7.5), squeeze=False)
    for col, size in enumerate(sizes):
        rows = [r for r in payload["sizes"][size]["rows"] if "per_row_s" in r]
        labels = [f"{r['engine']}\nB={r['batch']} S={r['seq']}" for r in rows]
        colors = ["tab:gray" if r["graph"] == "pytorch" else "tab:red" if r["graph"] == "plain" else "tab:green"
                  for r in rows]
        for ax, key, title in ((axes[0][col], "per_row_s", "seconds per row (steady)"),
                               (axes[1][col], "working_mib", "working memory of the call, MiB")):
            ax.bar(range(len(rows)), [r[key] for r in rows], color=colors)
            ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{size}: {title}", fontsize=9)
            if key == "working_mib":
                ax.set_yscale("log")
    return common.save_spec_figure(fig, prefix, SPEC)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=os.environ.get("GUARDRT_BENCH_SIZES", "tiny,realistic"))
    ap.add_argument("--precisions", default="fp32,int8-dynamic")
    ap.add_argument("--batches", default="1,4", help="rows per call (default 1,4)")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--extra-cells", default="1x1024",
                    help="more BxS cells, e.g. 1x1024 (the in-process benchmark's intent-safety target cell); '' for none")
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("GUARDRT_BENCH_BUDGET_S", 30)),
                    help="time per cell after the first long call (default 30)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("GUARDRT_BENCH_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--classify-rows", type=int, default=40, help="the guardrt classify case (0: skip)")
    ap.add_argument("--classify-words", type=int, default=6000,
                    help="words per synthetic dialogue (default 6000: trimmed to the 4,096-token maximum)")
    ap.add_argument("--quick", action="store_true", help="tiny, 256 tokens, B=1,2, 2 dialogues: a smoke run")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/long_context[_quick].json)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    # every precision is exported (and its gate recorded) for both graphs; the benchmarked ones are --precisions
    args.export_precisions = ALL_PRECISIONS
    if args.quick:
        args.sizes, args.seq, args.batches, args.budget_s, args.classify_rows = "tiny", 256, "1,2", 0.0, 2
        args.classify_words = 200
        args.extra_cells = ""
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.extra_cells = [tuple(int(x) for x in c.lower().split("x")) for c in args.extra_cells.split(",") if c.strip()]
    payload = {"benchmark": "long_context", "spec": SPEC, "seq": args.seq, "batches": args.batches,
               "machine": common.machine_description(args.threads), "versions": common.versions(),
               "settings": {k: v for k, v in vars(args).items() if k != "out"},
               "method": __doc__, "sizes": {}}
    t0 = time.perf_counter()
    for size in args.sizes:
        payload["sizes"][size] = run_size(size, args)
    if args.classify_rows:
        payload["classify"] = classify_case(args)
    payload["wall_s"] = round(time.perf_counter() - t0, 1)
    payload["loadavg_at_end"] = os.getloadavg()
    out = Path(args.out) if args.out else common.RESULTS / f"long_context{'_quick' if args.quick else ''}.json"
    common.write_json(out, payload)
    text = report(payload)
    out.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    png = plot(payload, out.with_suffix(""))
    print(text)
    print(f"\nwrote {out}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Checkpoint directory (Hugging Face format) -> validated export directory (fp32 / fp16 / int8 ONNX).

`export_onnx(model_dir, spec, out_dir, precisions)` is the whole pipeline (what `guardrt export` runs):

1. check the checkpoint against the spec (architecture, model type, number of labels, tokenizer present);
2. fp32 graph through optimum's exporter (task `text-classification`, the spec's opset; the pad id passed so the
   graph keeps HF's pooling: the last token that is not the pad id), checked against the spec's tensor contract;
3. the graph pass `graph_pass(model, spec) -> model`, by default guardrt.kernels' (`DEFAULT_GRAPH_PASS`: Qwen3
   attention fused into GroupQueryAttention without S x S scores; RoBERTa left as exported): applied to the fp32
   graph, and fp16 / int8 are derived from the fused graph. Both graphs are kept: a precision whose fused graph
   misses its gate (or fails to build or run) is rebuilt from the plain graph, with a log line saying so, and
   `guardrt.json` records which graph each precision holds (`graphs`). `graph_pass=None` exports the plain
   graph only (what TensorRT needs: its parser refuses ONNX Runtime's com.microsoft operators);
4. fp16 (`guardrt.export.fp16`), int8 QDQ static calibrated on preprocessed spec inputs and int8 dynamic
   (`guardrt.export.quantize`);
5. every precision validated against PyTorch fp32 (`guardrt.export.validate`); a precision that misses the spec's
   gate (max |Δlogit| and held-out decision agreement) is not written, and ExportGateError is raised at the end,
   unless `force=True`;
6. tokenizer files, config.json, `guardrt.json` and `validation.json` written next to the models
   (layout: `guardrt.runtime.export_dir`); int8 precisions also record the CPU int8 path they were validated on
   (`guardrt.json` → `int8`) and carry a held-out check set (`int8_check.npz`) that loading them on a CPU with
   another int8 path re-runs (`guardrt.runtime.int8_path`).

Graphs larger than `external_data_threshold` bytes keep their weights in one `model.onnx.data` file next to
`model.onnx` (Triton loads a directory; thousands of per-tensor files make loading slow).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from guardrt.export.graph_pass import DEFAULT_GRAPH_PASS, GraphPass, fp32_graphs, one_line
from guardrt.runtime.errors import GuardrtError, ModelFilesError, read_json_file
from guardrt.runtime.export_dir import MANIFEST_NAME, PRECISIONS, VALIDATION_NAME, load_export_dir
from guardrt.runtime.specs import ModelSpec, get_spec

__all__ = [
    "DEFAULT_GRAPH_PASS",
    "EXTERNAL_DATA_THRESHOLD",
    "ExportGateError",
    "check_checkpoint",
    "check_graph_contract",
    "export_onnx",
    "parse_precisions",
    "save_onnx",
    "write_manifest_and_gate",
]

# Weights above this many bytes go to one external-data file (protobuf's hard limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1 << 30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja")



class ExportGateError(GuardrtError):
    """A precision missed its spec's validation gate; it was not written (see validation.json)."""


def write_manifest_and_gate(out: Path, manifest: dict, results: dict, failures: list[str], force: bool) -> Path:
    """The last step of the generative exports (Qwen3Guard-Gen / FlexGuard, Qwen3Guard-Stream): write guardrt.json
    and validation.json into `out`, then raise ExportGateError naming every miss unless `force`."""
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (out / VALIDATION_NAME).write_text(json.dumps(results, indent=2), encoding="utf-8")
    if failures and not force:
        raise ExportGateError("; ".join(failures) + f" (not written; details in {out / VALIDATION_NAME})")
    return out


def parse_precisions(value: str | Sequence[str]) -> tuple[str, ...]:
    """"fp32,int8" -> ("fp32", "int8"), checked against the known precisions, in build order."""
    items = [p.strip() for p in value.split(",")] if isinstance(value, str) else [str(p).strip() for p in value]
    items = [p for p in items if p]
    unknown = [p for p in items if p not in PRECISIONS]
    if unknown or not items:
        raise GuardrtError(f"unknown precision {', '.join(unknown) or '(none)'}; choose from {', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p in items)


def check_checkpoint(model_dir: str | Path, spec: ModelSpec) -> dict:
    """config.json of `model_dir` after checking it is a checkpoint for `spec`; ModelFilesError otherwise."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelFilesError(f"model directory {root} does not exist")
    cfg_file = root / "config.json"
    if not cfg_file.is_file():
        raise ModelFilesError(f"{root} is not a Hugging Face checkpoint (no config.json)")
    cfg = read_json_file(cfg_file)
    archs = cfg.get("architectures") or []
    if spec.architecture not in archs or cfg.get("model_type") != spec.model_type:
        found = ", ".join(archs) or cfg.get("model_type") or "unknown"
        raise ModelFilesError(
            f"{root} holds a {found} checkpoint; spec {spec.name} needs {spec.architecture} ({spec.model_type})"
        )
    num_labels = len(cfg.get("id2label") or {}) or cfg.get("num_labels")
    if num_labels != len(spec.labels):
        raise ModelFilesError(f"{root} has {num_labels} labels; spec {spec.name} needs {len(spec.labels)}")
    if not any(root.glob("*.safetensors")) and not any(root.glob("*.bin")):
        raise ModelFilesError(f"{root} has no weights (*.safetensors or *.bin)")
    if not (root / "tokenizer.json").is_file():
        raise ModelFilesError(f"{root} has no tokenizer.json (the export directory must carry the tokenizer)")
    return cfg


def check_graph_contract(model, spec: ModelSpec) -> None:
    """The exported graph takes exactly the spec's int64 [batch, sequence] inputs and returns float32 logits
    [batch, num_labels]; ModelFilesError otherwise."""
    from onnx import TensorProto

    def describe(values):
        return [(v.name, v.type.tensor_type.elem_type, len(v.type.tensor_type.shape.dim)) for v in values]

    want_in = [(n, TensorProto.INT64, 2) for n in spec.input_names]
    want_out = [(n, TensorProto.FLOAT, 2) for n in spec.output_names]
    got_in, got_out = describe(model.graph.input), describe(model.graph.output)
    if got_in != want_in or got_out != want_out:
        raise ModelFilesError(f"exported graph contract mismatch: inputs {got_in}, outputs {got_out}; "
                              f"spec {spec.name} needs inputs {want_in}, outputs {want_out}")


def _weights_bytes(model) -> int:
    from onnx.external_data_helper import uses_external_data

    total = 0
    for t in model.graph.initializer:
        if uses_external_data(t):
            total += int({e.key: e.value for e in t.external_data}.get("length", 0))
        else:
            total += len(t.raw_data) or t.ByteSize()
    return total


def save_onnx(model, path: str | Path, external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> list[Path]:
    """Save `model` to `path`; weights in one `<name>.data` file when they exceed the threshold. Returns the files."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    for stale in (path, data):
        stale.unlink(missing_ok=True)
    if _weights_bytes(model) > external_data_threshold:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024, convert_attribute=False)
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def _load(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=True)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _calibration_feeds(spec: ModelSpec, tokenizer_dir: Path, n: int) -> list[dict]:
    """Calibration batches from preprocessed spec inputs (synthetic calibration split, plus a long input):
    unpadded single sequences and padded batches of 4, as the runtime sends them."""
    from guardrt.export.synthetic import SPLIT_SEEDS, long_payload, synthetic_payloads
    from guardrt.runtime.preprocess import build_preprocessor, pad_batch

    pre = build_preprocessor(spec, tokenizer_dir)
    seqs = [pre.encode(p) for p in synthetic_payloads(spec.name, n, seed=SPLIT_SEEDS["calibration"])]
    long = pre.encode(long_payload(spec.name, seed=SPLIT_SEEDS["calibration"]))
    long = long[-1024:] if spec.truncation_side == "left" else long[:1024]
    feeds = []
    half = n // 2
    for s in seqs[:half] + [long]:
        feeds.append(dict(zip(spec.input_names, pad_batch([s], spec.pad_token_id, spec.padding_side))))
    for start in range(half, n, 4):
        feeds.append(dict(zip(spec.input_names, pad_batch(seqs[start:start + 4], spec.pad_token_id,
                                                         spec.padding_side))))
    return feeds


def export_onnx(
    model_dir: str | Path,
    spec: ModelSpec | str,
    out_dir: str | Path,
    precisions: Sequence[str] | str = ("fp32",),
    *,
    force: bool = False,
    graph_pass: GraphPass | str | None = DEFAULT_GRAPH_PASS,
    log: Callable[[str], None] | None = None,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    validation_heldout: int = 64,
    validation_long_tokens: int | None = None,
    calibration_examples: int = 32,
    intra_op_threads: int | None = None,
    int8_dynamic_weights: str | None = None,
):
    """Export `model_dir` for `spec` into `out_dir` (see module docstring). Returns the loaded ExportManifest.

    int8_dynamic_weights: weight format of int8-dynamic (`guardrt.export.quantize.DYNAMIC_WEIGHT_FORMATS`; default
    7-bit s8, exact on every x86-64 int8 path). Raises ModelFilesError for a bad checkpoint/out dir and ExportGateError
    when a precision fails its gate (the others are written; validation.json records every result)."""
    import onnx  # noqa: F401  (fail early with the export extra's message when missing)

    from guardrt import __version__
    from guardrt.export.int8_check import write_int8_check
    from guardrt.export.progress import Progress
    from guardrt.export.quantize import DYNAMIC_WEIGHT_FORMAT, DYNAMIC_WEIGHT_FORMATS
    from guardrt.export.validate import build_validation_set, torch_reference, validate_onnx

    spec = get_spec(spec) if isinstance(spec, str) else spec
    int8_dynamic_weights = int8_dynamic_weights or DYNAMIC_WEIGHT_FORMAT
    if int8_dynamic_weights not in DYNAMIC_WEIGHT_FORMATS:
        raise GuardrtError(f"unknown int8-dynamic weight format {int8_dynamic_weights!r}; choose from "
                           f"{', '.join(DYNAMIC_WEIGHT_FORMATS)}")
    precisions = parse_precisions(precisions)
    model_dir, out = Path(model_dir), Path(out_dir)
    cfg = check_checkpoint(model_dir, spec)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ModelFilesError(f"output directory {out} is not empty and not a guardrt export; choose another --out")
    previous = _previous_export(out, spec)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    written: dict[str, str] = {}
    failures: list[str] = []
    work = Path(tempfile.mkdtemp(prefix=".guardrt-export-", dir=out))
    try:
        # 1. fp32 through optimum.
        with Progress.step(f"{spec.name}: fp32 ONNX export (optimum, opset {spec.onnx_opset})", log) as info:
            from optimum.exporters.onnx import main_export

            with _quiet_libraries():
                main_export(str(model_dir), str(work / "optimum"), task=spec.task, opset=spec.onnx_opset,
                            device="cpu", do_validation=False, pad_token_id=spec.pad_token_id,
                            library_name="transformers")
            model = _load(work / "optimum" / "model.onnx")
            check_graph_contract(model, spec)
            large = _weights_bytes(model) > external_data_threshold
            graphs = fp32_graphs(model, spec, graph_pass, work, external_data_threshold, log)
            del model
            shutil.rmtree(work / "optimum", ignore_errors=True)
        timings["fp32"] = info["seconds"]
        # 2. the PyTorch reference, once.
        with Progress.step(f"{spec.name}: PyTorch fp32 reference on the validation set", log) as info:
            vset = build_validation_set(spec, model_dir, n_heldout=validation_heldout,
                                        long_tokens=validation_long_tokens)
            reference = torch_reference(model_dir, vset, log=log, model=_torch_model(model_dir, spec))
        timings["reference"] = info["seconds"]
        # 3. each precision: build from the fused graph (then the plain one if that misses), validate, keep/refuse.
        for precision in precisions:
            res, path = None, None
            for graph in graphs.candidates:
                fp32_path = work / graph / "fp32" / "model.onnx"
                path = work / graph / precision / "model.onnx"
                try:
                    if precision != "fp32":
                        with Progress.step(f"{spec.name}: {precision} conversion ({graph} graph)", log) as info:
                            with _quiet_libraries():
                                _derive(precision, fp32_path, path, spec, model_dir, large, external_data_threshold,
                                        calibration_examples, log, graphs.int8_excluded[graph],
                                        int8_dynamic_weights)
                        timings[precision] = timings.get(precision, 0.0) + info["seconds"]
                    with Progress.step(f"{spec.name}: validating {precision} against PyTorch ({graph} graph)", log):
                        res = validate_onnx(path, precision, vset, reference, log=log,
                                            intra_op_threads=intra_op_threads)
                except Exception as exc:  # noqa: BLE001 - a fused graph that cannot be built or run falls back
                    if graph == graphs.candidates[-1]:
                        raise
                    graphs.fallbacks[precision] = f"failed to build or run: {one_line(exc)}"
                else:
                    res["graph"] = graph
                    if res["passed"] or graph == graphs.candidates[-1]:
                        break
                    graphs.fallbacks[precision] = "missed its gate: " + _failed_checks_text(res)
                if log:
                    log(f"{spec.name} {precision}: the {graph} graph {graphs.fallbacks[precision]}; "
                        f"falling back to the plain graph")
            if precision in graphs.fallbacks:
                res["fused_graph_rejected"] = graphs.fallbacks[precision]
            res["size_bytes"] = _dir_bytes(path.parent)
            res["export_seconds"] = round(timings.get(precision, 0.0), 2)
            results[precision] = res
            verdict = "ok" if res["passed"] else "FAILED " + ",".join(res["failed_checks"])
            if log:
                cpu = res.get("ort_cpu")
                on_cpu = (f" (ORT CPU kernels, {cpu['int8_path']}: {cpu['max_abs_diff']:.3g}, "
                          f"{cpu['heldout_agreement']:.3f})" if cpu else "")
                log(f"{spec.name} {precision} ({res['graph']} graph): max|Δlogit| {res['max_abs_diff']:.3g} "
                    f"(gate {res['atol']:g}), agreement {res['heldout_agreement']:.3f} "
                    f"(gate {res['min_agreement']:g}){on_cpu}, {res['size_bytes'] / 1e6:.1f} MB: {verdict}")
            if res["passed"] or force:
                dest = out / precision
                shutil.rmtree(dest, ignore_errors=True)
                if precision == "fp32":  # the base of the other precisions: keep it in the work dir
                    shutil.copytree(path.parent, dest)
                else:
                    shutil.move(str(path.parent), str(dest))
                written[precision] = f"{precision}/model.onnx"
            else:
                failures.append(f"{precision}: {_failed_checks_text(res)}")
                shutil.rmtree(out / precision, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # 4. self-contained directory: tokenizer, config, manifest, validation.
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out / name)
    cfg["pad_token_id"] = spec.pad_token_id
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
    manifest = {
        "spec": spec.name,
        "architecture": spec.architecture,
        "model_type": spec.model_type,
        "num_labels": len(spec.labels),
        "labels": list(spec.labels),
        "precisions": written,
        "input_names": list(spec.input_names),
        "output_names": list(spec.output_names),
        "onnx_opset": spec.onnx_opset,
        "pad_token_id": spec.pad_token_id,
        "padding_side": spec.padding_side,
        "max_length": spec.max_length,
        "source_model_dir": str(model_dir.resolve()),
        # The fp32 graph pass applied (None: plain graphs only) and the graph each precision holds: "fused" (the
        # pass's output) or "plain" (as optimum exported it; TensorRT's format).
        "graph_pass": graphs.pass_name,
        "graph_pass_report": graphs.report,
        "precision_graphs": {p: results[p]["graph"] for p in written if p in results},
        # Precisions kept with --force although they missed their gate.
        "forced_precisions": [p for p in written if not results[p]["passed"]],
        "guardrt_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    rebuilt = set(results)
    # Updating an export: precisions not rebuilt this time stay, with their earlier validation.
    for precision in PRECISIONS:
        if precision not in results and precision in previous["precisions"]:
            written.setdefault(precision, previous["precisions"][precision])
            if precision in previous["validation"]:
                results[precision] = previous["validation"][precision]
    fresh_int8 = [p for p in written if p.startswith("int8") and p in rebuilt]
    written = {p: written[p] for p in PRECISIONS if p in written}
    manifest["precisions"] = written
    int8 = write_int8_check(out, spec, vset, reference, fresh_int8,
                            [p for p in written if p.startswith("int8") and p not in fresh_int8],
                            previous["int8"], int8_dynamic_weights, intra_op_threads)
    if int8:
        manifest["int8"] = int8
    manifest["precision_graphs"] = {p: results.get(p, {}).get("graph") or previous["precision_graphs"].get(p, "plain") for p in written}
    manifest["forced_precisions"] = [p for p in written if not results.get(p, {}).get("passed", True)]
    validation = {"spec": spec.name, "settings": vset.settings, "precisions": results,
                  "timings_seconds": {k: round(v, 2) for k, v in timings.items()},
                  "total_seconds": round(time.perf_counter() - t_start, 2)}
    (out / VALIDATION_NAME).write_text(json.dumps(validation, indent=2), encoding="utf-8")
    if written:
        (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if failures:
        raise ExportGateError(
            f"{spec.name}: {' | '.join(failures)}; not written (details in {out / VALIDATION_NAME}; "
            "use --force to keep failing precisions)")
    return load_export_dir(out)


@contextlib.contextmanager
def _quiet_libraries():
    """Silence the tracer / deprecation chatter of torch.onnx, transformers and optimum during the export: the
    progress display and guardrt's own errors are what the user should see."""
    import logging
    import warnings

    loggers = [logging.getLogger(name) for name in ("transformers", "optimum", "torch.onnx", "onnxruntime")]
    loggers.append(logging.getLogger())  # onnxruntime.quantization warns through the root logger
    levels = [lg.level for lg in loggers]
    try:
        from transformers.utils import logging as hf_logging

        hf_level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        hf_logging = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
            if hf_logging is not None:
                hf_logging.set_verbosity(hf_level)


def _failed_checks_text(res: dict) -> str:
    """"max |Δlogit| 0.65 > 0.25; ORT CPU agreement 0.92 < 0.95" for a validation result that missed its gate."""
    parts = []
    for prefix, where, label in (("", res, ""), ("ort_cpu_", res.get("ort_cpu") or {}, "ORT CPU ")):
        if f"{prefix}max_abs_diff" in res["failed_checks"]:
            parts.append(f"{label}max |Δlogit| {where['max_abs_diff']:.3g} > {res['atol']:g}")
        if f"{prefix}agreement" in res["failed_checks"]:
            parts.append(f"{label}agreement {where['heldout_agreement']:.3f} < {res['min_agreement']:g}")
    return "; ".join(parts)


def _previous_export(out: Path, spec: ModelSpec) -> dict:
    """Precisions (and their validation) of an export already in `out`, for updates; ModelFilesError when that
    export belongs to another spec."""
    empty = {"precisions": {}, "validation": {}, "int8": {}, "precision_graphs": {}}
    if not (out / MANIFEST_NAME).is_file():
        return empty
    try:
        manifest = load_export_dir(out)
    except ModelFilesError:
        return empty  # a broken earlier export is simply replaced
    if manifest.spec != spec.name:
        raise ModelFilesError(f"{out} holds an export of spec {manifest.spec!r}; choose another --out for {spec.name}")
    return {"precisions": dict(manifest.raw.get("precisions", {})),
            "validation": dict(manifest.validation().get("precisions", {})),
            "int8": dict(manifest.raw.get("int8") or {}),
            "precision_graphs": dict(manifest.raw.get("precision_graphs") or {})}


def _torch_model(model_dir: Path, spec: ModelSpec):
    import torch
    from transformers import AutoModelForSequenceClassification

    with _quiet_libraries():
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32)
    model.config.pad_token_id = spec.pad_token_id  # the card sets it at load time
    return model.eval()


def _derive(precision: str, fp32_path: Path, path: Path, spec: ModelSpec, model_dir: Path, large: bool,
            threshold: int, calibration_examples: int, log, int8_excluded: list[str], int8_dynamic_weights: str) -> None:
    from guardrt.export.progress import Progress

    path.parent.mkdir(parents=True, exist_ok=True)
    if precision == "fp16":
        from guardrt.export.fp16 import convert_to_fp16

        model = convert_to_fp16(_load(fp32_path))
    elif precision == "int8":
        from guardrt.export.quantize import FeedsReader, quantize_qdq_static

        feeds = _calibration_feeds(spec, model_dir, calibration_examples)
        reader = FeedsReader(feeds, Progress.count(log, "calibration batches", len(feeds)))
        raw = path.with_name("raw.onnx")
        quantize_qdq_static(fp32_path, raw, reader, large=large, nodes_to_exclude=int8_excluded)
        model = _load(raw)
    elif precision == "int8-dynamic":
        from guardrt.export.quantize import quantize_int8_dynamic

        raw = path.with_name("raw.onnx")
        quantize_int8_dynamic(fp32_path, raw, large=large, nodes_to_exclude=int8_excluded,
                              weight_format=int8_dynamic_weights)
        model = _load(raw)
    else:
        raise GuardrtError(f"unknown precision {precision!r}")
    check_graph_contract(model, spec)
    for f in list(path.parent.iterdir()):
        f.unlink()
    save_onnx(model, path, threshold)


def _int8_excluded(model) -> list[str]:
    """Nodes int8 leaves in float: the rotary-angle subgraph (its MatMul multiplies positions by frequencies) and
    the attention products (activation x activation MatMuls: Q·K^T and P·V). Measured on the tiny Qwen3 demo:
    quantizing the attention products raises max |Δlogit| from 0.05 to 0.72; speeding them up is graph work
    (issue 6), not a quantization flag."""
    from guardrt.export.fp16 import rotary_nodes

    weights = {t.name for t in model.graph.initializer}
    weights.update(n.output[0] for n in model.graph.node if n.op_type == "Constant")
    attention = [n.name for n in model.graph.node
                 if n.op_type in ("MatMul", "Gemm") and not any(i in weights for i in n.input)]
    return sorted(set(rotary_nodes(model)) | set(attention))

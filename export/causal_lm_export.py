"""Qwen3ForCausalLM checkpoint -> ONNX graphs for generation (with KV cache) and for verdicts (classifier-shaped).

Two graph kinds (recorded as `graph` in guardrt.json, see `guardrt.runtime.export_dir`):

* `causal-lm-with-past` (`generate/<precision>/model.onnx`): optimum's `text-generation-with-past` export
  (inputs `input_ids`, `attention_mask`, `position_ids` [batch, seq] int64 and `past_key_values.<i>.key|value`
  [batch, kv_heads, past, head_dim] float32; outputs `logits` and `present.<i>.key|value`), then one edit: the LM head
  is applied to the last three positions only (`logits` [batch, min(3, seq), vocab]; generation reads the last, an
  in-process verdict all three, see `guardrt.runtime.verdict`). HF's `generate` keeps one (`logits_to_keep=1`);
  without the edit a 400-token prefill computes 400 x 151,936 logits and throws them away, which costs more than all
  decoder layers of the realistic demo model together.
* `verdict` (`verdict/<precision>/model.onnx`): `input_ids`, `attention_mask` [batch, seq] int64 -> `verdict`
  [batch, 7] float32 (columns: `guardrt.runtime.verdict.VERDICT_COLUMNS`). The input is the prompt followed by the
  greedy prefix `Safety`, `:`; the graph runs the decoder, applies the LM head at the last three positions only and
  returns the label probabilities at the last one plus the greedy token of each of the three (so the runtime can
  tell whether greedy generation would indeed have written `Safety:` and then that label). Built from optimum's
  `text-generation` export (no cache) by graph surgery; position ids are computed inside the graph as HF computes
  them for left padding (cumsum of the mask - 1).

Precisions: fp32, fp16 (`guardrt.export.fp16`, I/O kept float32), int8 (`guardrt.export.quantize`:
dynamic int8 for the KV graph, the ONNX Runtime CPU format; explicit QDQ static for the verdict graph, the TensorRT
format). Each is validated against PyTorch fp32 (`guardrt.export.causal_lm_validate`) and refused when it misses the
gates (`GATES`), unless `force=True`.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from guardrt.export.onnx_export import ExportGateError, write_manifest_and_gate
from guardrt.runtime.errors import GuardrtError, ModelFilesError, read_json_file

__all__ = [
    "GATES",
    "GRAPH_KINDS",
    "export_causal_lm",
    "keep_last_positions",
    "add_verdict_head",
    "prepare_verdict_base",
    "check_causal_lm_checkpoint",
]

GRAPH_KINDS = ("causal-lm-with-past", "verdict")
LM_PRECISIONS = ("fp32", "fp16", "int8")
ONNX_OPSET = 18
# Gates per graph kind and precision. generate: max |Δlogit| vs PyTorch fp32 over every greedy step of the held-out
# prompts (teacher-forced on PyTorch's tokens) and the fraction of prompts whose greedy generation is token-identical
# (fp32 must be 100%: the product is token-identical output) and whose parsed `safety` agrees. verdict: max
# |Δprob| of the three label probabilities and agreement of the verdict's label with PyTorch's.
# The numbers behind them: see the module's measurements in README ("Qwen3Guard-Gen").
# min_batched_identical: batched generation == one prompt at a time. 1.0 for fp32 and fp16; dynamic int8 cannot
# promise it: its activation scale is computed over the whole batch tensor at run time, so a row's int8 rounding
# depends on its neighbours (measured on the tiny demo: 31 of 32 prompts identical).
GATES: dict[str, dict[str, dict[str, float]]] = {
    "causal-lm-with-past": {
        "fp32": {"atol": 1e-3, "min_identical": 1.0, "min_safety_agreement": 1.0, "min_batched_identical": 1.0},
        "fp16": {"atol": 0.5, "min_identical": 0.9, "min_safety_agreement": 0.95, "min_batched_identical": 1.0},
        "int8": {"atol": 2.0, "min_identical": 0.75, "min_safety_agreement": 0.9, "min_batched_identical": 0.9},
    },
    "verdict": {
        "fp32": {"atol": 1e-4, "min_agreement": 1.0},
        "fp16": {"atol": 2e-2, "min_agreement": 0.95},
        "int8": {"atol": 1e-1, "min_agreement": 0.9},
    },
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja", "generation_config.json")


def check_causal_lm_checkpoint(model_dir: str | Path) -> dict:
    """config.json of a Qwen3ForCausalLM checkpoint with a tokenizer; ModelFilesError otherwise."""
    root = Path(model_dir)
    if not (root / "config.json").is_file():
        raise ModelFilesError(f"{root} is not a Hugging Face checkpoint (no config.json)")
    cfg = read_json_file(root / "config.json")
    if "Qwen3ForCausalLM" not in (cfg.get("architectures") or []) or cfg.get("model_type") != "qwen3":
        raise ModelFilesError(f"{root} holds a {', '.join(cfg.get('architectures') or ['?'])} checkpoint; "
                              "the generative guards need Qwen3ForCausalLM (qwen3)")
    if not any(root.glob("*.safetensors")) and not any(root.glob("*.bin")):
        raise ModelFilesError(f"{root} has no weights (*.safetensors or *.bin)")
    if not (root / "tokenizer.json").is_file():
        raise ModelFilesError(f"{root} has no tokenizer.json")
    return cfg


# -- graph surgery --------------------------------------------------------------------------------------------------
def _lm_head_node(model):
    """The MatMul that produces `logits` (the LM head), possibly through a final Reshape/Identity."""
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer["logits"]
    while node.op_type != "MatMul":
        node = producer[node.input[0]]
    return node


def keep_last_positions(model, count: int = 1):
    """Apply the LM head to the last `count` positions only: slice its input [batch, seq, hidden] on axis 1."""
    from onnx import helper, numpy_helper
    import numpy as np

    head = _lm_head_node(model)
    hidden = head.input[0]
    names = {f"guardrt_last_start_{count}": np.asarray([-count], dtype=np.int64),
             "guardrt_last_end": np.asarray([np.iinfo(np.int64).max], dtype=np.int64),
             "guardrt_axis_1": np.asarray([1], dtype=np.int64)}
    existing = {t.name for t in model.graph.initializer}
    for name, value in names.items():
        if name not in existing:
            model.graph.initializer.append(numpy_helper.from_array(value, name))
    sliced = f"{hidden}_last{count}"
    model.graph.node.insert(list(model.graph.node).index(head),
                            helper.make_node("Slice", [hidden, f"guardrt_last_start_{count}", "guardrt_last_end",
                                                       "guardrt_axis_1"], [sliced], name=f"guardrt_slice_last{count}"))
    head.input[0] = sliced
    for out in model.graph.output:
        if out.name == "logits":
            dim = out.type.tensor_type.shape.dim[1]
            dim.Clear()
            dim.dim_param = f"min_sequence_length_{count}"  # fewer when the input is shorter (a decode step)
    return model


def _positions_from_mask(model):
    """Replace the `position_ids` input by HF's left-padding positions computed from `attention_mask`:
    cumsum(mask) - 1, and 1 where the mask is 0 (`position_ids.masked_fill_(attention_mask == 0, 1)`)."""
    import numpy as np
    from onnx import helper, numpy_helper

    inputs = [i for i in model.graph.input if i.name == "position_ids"]
    if not inputs:
        return model
    model.graph.input.remove(inputs[0])
    for name, value in {"guardrt_one_i64": np.asarray(1, dtype=np.int64),
                        "guardrt_axis1_i64": np.asarray(1, dtype=np.int64),
                        "guardrt_zero_i64": np.asarray(0, dtype=np.int64)}.items():
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    nodes = [
        helper.make_node("CumSum", ["attention_mask", "guardrt_axis1_i64"], ["guardrt_pos_cumsum"],
                         name="guardrt_pos_cumsum"),
        helper.make_node("Sub", ["guardrt_pos_cumsum", "guardrt_one_i64"], ["guardrt_pos_raw"], name="guardrt_pos_sub"),
        helper.make_node("Equal", ["attention_mask", "guardrt_zero_i64"], ["guardrt_pos_is_pad"],
                         name="guardrt_pos_is_pad"),
        helper.make_node("Where", ["guardrt_pos_is_pad", "guardrt_one_i64", "guardrt_pos_raw"], ["position_ids"],
                         name="guardrt_pos_where"),
    ]
    for i, node in enumerate(nodes):
        model.graph.node.insert(i, node)
    return model


def prepare_verdict_base(model):
    """A `text-generation` graph -> the verdict graph's body: positions computed from the mask (inputs `input_ids`,
    `attention_mask` only) and the LM head on the last 3 positions (`logits` [batch, 3, vocab])."""
    _positions_from_mask(model)
    keep_last_positions(model, 3)
    return model


def add_verdict_head(model, label_ids: Sequence[int]):
    """The verdict body (`prepare_verdict_base`) -> the verdict graph: softmax over the vocabulary at the last
    position, and output `verdict` [batch, 7] = probabilities of the three label tokens, the mass outside them, and
    the greedy token id (as float32, exact below 2**24) at each of the last three positions. Added after any
    precision conversion, so it always runs in float32 (an fp16 cast would turn ids above 65,504 into inf)."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    model.graph.output.remove([o for o in model.graph.output if o.name == "logits"][0])
    init = {
        "guardrt_label_ids": np.asarray(list(label_ids), dtype=np.int64),
        "guardrt_last_idx": np.asarray(2, dtype=np.int64),
        "guardrt_one_f32": np.asarray([1.0], dtype=np.float32),
        "guardrt_axes_1": np.asarray([1], dtype=np.int64),
    }
    for name, value in init.items():
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    nodes = [
        # greedy ids at the last three positions: ArgMax over the vocabulary (first maximum, as torch and numpy).
        helper.make_node("ArgMax", ["logits"], ["guardrt_greedy"], axis=2, keepdims=0, select_last_index=0,
                         name="guardrt_greedy_argmax"),
        helper.make_node("Cast", ["guardrt_greedy"], ["guardrt_greedy_f"], to=TensorProto.FLOAT,
                         name="guardrt_greedy_cast"),
        helper.make_node("Gather", ["logits", "guardrt_last_idx"], ["guardrt_label_logits"], axis=1,
                         name="guardrt_label_position"),
        helper.make_node("Softmax", ["guardrt_label_logits"], ["guardrt_probs"], axis=-1, name="guardrt_softmax"),
        helper.make_node("Gather", ["guardrt_probs", "guardrt_label_ids"], ["guardrt_label_probs"], axis=1,
                         name="guardrt_label_probs"),
        helper.make_node("ReduceSum", ["guardrt_label_probs", "guardrt_axes_1"], ["guardrt_label_mass"], keepdims=1,
                         name="guardrt_label_mass"),
        helper.make_node("Sub", ["guardrt_one_f32", "guardrt_label_mass"], ["guardrt_other_mass"],
                         name="guardrt_other_mass"),
        helper.make_node("Concat", ["guardrt_label_probs", "guardrt_other_mass", "guardrt_greedy_f"], ["verdict"],
                         axis=1, name="guardrt_verdict"),
    ]
    model.graph.node.extend(nodes)
    model.graph.output.append(helper.make_tensor_value_info("verdict", TensorProto.FLOAT, ["batch_size", 7]))
    return model


# -- export ---------------------------------------------------------------------------------------------------------
def _optimum_export(model_dir: Path, work: Path, task: str):
    from guardrt.export.onnx_export import _load, _quiet_libraries
    from optimum.exporters.onnx import main_export

    with _quiet_libraries():
        main_export(str(model_dir), str(work), task=task, opset=ONNX_OPSET, device="cpu", do_validation=False,
                    library_name="transformers")
    return _load(work / "model.onnx")


def _derive(kind: str, precision: str, fp32_path: Path, fp32_model, path: Path, calibration, large: bool):
    """The `precision` graph derived from the fp32 one (fp16; int8 dynamic for the KV graph, QDQ for the verdict)."""
    from guardrt.export.onnx_export import _int8_excluded, _load, _quiet_libraries

    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_libraries():
        if precision == "fp16":
            from guardrt.export.fp16 import convert_to_fp16

            model = convert_to_fp16(_load(fp32_path))
        elif precision == "int8" and kind == "causal-lm-with-past":
            from guardrt.export.quantize import quantize_int8_dynamic

            raw = path.with_name("raw.onnx")
            quantize_int8_dynamic(fp32_path, raw, large=large, nodes_to_exclude=_int8_excluded(fp32_model))
            model = _load(raw)
        elif precision == "int8":
            from guardrt.export.quantize import FeedsReader, quantize_qdq_static

            raw = path.with_name("raw.onnx")
            # The LM head stays float: it runs on 3 positions only (no time to gain), and per-tensor int8
            # activations there moved the label probabilities by up to 0.34 on the tiny demo model.
            quantize_qdq_static(fp32_path, raw, FeedsReader(calibration), large=large,
                                nodes_to_exclude=_int8_excluded(fp32_model) + [_lm_head_node(fp32_model).name])
            model = _load(raw)
        else:
            raise GuardrtError(f"unknown precision {precision!r}")
    for f in list(path.parent.iterdir()):
        f.unlink()
    return model


def export_causal_lm(
    model_dir: str | Path,
    out_dir: str | Path,
    precisions: Sequence[str] = ("fp32",),
    graphs: Sequence[str] = GRAPH_KINDS,
    *,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    validation_heldout: int = 32,
    intra_op_threads: int | None = None,
    spec: str = "qwen3guard-gen",
) -> Path:
    """Export `model_dir` (Qwen3ForCausalLM) into `out_dir`: `<graph>/<precision>/model.onnx` per graph kind and
    precision, tokenizer + generation config, guardrt.json and validation.json. Returns `out_dir`.

    `spec`: qwen3guard-gen (both graph kinds) or flexguard (the generation graph only; validated on FlexGuard's
    held-out synthetic requests with its decoding: up to 2,048 new tokens, special tokens kept in the text).

    Raises ExportGateError when a precision misses its gate (the others are written), ModelFilesError for a bad
    checkpoint or output directory."""
    import onnx  # noqa: F401  (fail early with the export extra's message when missing)

    from guardrt import __version__
    from guardrt.export.causal_lm_validate import (calibration_feeds, reference_generations, validate_generate,
                                                   validate_verdict)
    from guardrt.export.onnx_export import EXTERNAL_DATA_THRESHOLD, _dir_bytes, _load, _weights_bytes, save_onnx
    from guardrt.export.progress import Progress
    from guardrt.runtime.export_dir import MANIFEST_NAME
    from guardrt.runtime.guard_output import guard_spec, label_token_ids
    from guardrt.runtime.specs import get_spec

    model_dir, out = Path(model_dir), Path(out_dir)
    cfg = check_causal_lm_checkpoint(model_dir)
    if spec != "qwen3guard-gen" and "verdict" in graphs:
        raise GuardrtError(f"the verdict graph is Qwen3Guard-Gen's; {spec} exports its generation graph only")
    unknown = [p for p in precisions if p not in LM_PRECISIONS] + [g for g in graphs if g not in GRAPH_KINDS]
    if unknown:
        raise GuardrtError(f"unknown precision/graph {', '.join(unknown)}; precisions: {', '.join(LM_PRECISIONS)}, "
                           f"graphs: {', '.join(GRAPH_KINDS)}")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ModelFilesError(f"output directory {out} is not empty and not a guardrt export; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    threshold = EXTERNAL_DATA_THRESHOLD
    results: dict[str, dict[str, Any]] = {}
    written: dict[str, dict[str, str]] = {}
    failures: list[str] = []
    work = Path(tempfile.mkdtemp(prefix=".guardrt-export-", dir=out))
    try:
        with Progress.step(f"{spec}: PyTorch reference (greedy generation with per-step logits)", log):
            reference = reference_generations(model_dir, n_heldout=validation_heldout, log=log, spec=spec)
        for kind in graphs:
            sub = "generate" if kind == "causal-lm-with-past" else "verdict"
            task = "text-generation-with-past" if kind == "causal-lm-with-past" else "text-generation"
            with Progress.step(f"{spec}: {kind} fp32 ONNX (optimum {task}, opset {ONNX_OPSET})", log):
                model = _optimum_export(model_dir, work / f"optimum-{sub}", task)
                if kind == "causal-lm-with-past":
                    keep_last_positions(model, 3)  # generation reads the last; an in-process verdict all three
                else:
                    prepare_verdict_base(model)
                # The graph every precision derives from (the verdict's head is added per precision, in fp32).
                fp32_path = work / sub / "base" / "model.onnx"
                save_onnx(model, fp32_path, threshold)
                shutil.rmtree(work / f"optimum-{sub}", ignore_errors=True)
            large = _weights_bytes(model) > threshold
            results[kind] = {}
            for precision in precisions:
                path = work / sub / precision / "model.onnx"
                t0 = time.perf_counter()
                with Progress.step(f"{spec}: {kind} {precision} graph", log):
                    if precision == "fp32":
                        derived = _load(fp32_path)
                    else:
                        calibration = calibration_feeds(model_dir) if (precision == "int8" and kind == "verdict") else None
                        derived = _derive(kind, precision, fp32_path, model, path, calibration, large)
                    if kind == "verdict":
                        add_verdict_head(derived, label_token_ids())
                    save_onnx(derived, path, threshold)
                    del derived
                seconds = time.perf_counter() - t0
                with Progress.step(f"{spec}: validating {kind} {precision} against PyTorch", log):
                    gate = GATES[kind][precision]
                    if kind == "causal-lm-with-past":
                        res = validate_generate(path, model_dir, reference, gate, intra_op_threads=intra_op_threads)
                    else:
                        res = validate_verdict(path, reference, gate, intra_op_threads=intra_op_threads)
                res.update(precision=precision, size_bytes=_dir_bytes(path.parent), export_seconds=round(seconds, 1))
                results[kind][precision] = res
                if log:
                    log(f"{spec} {kind} {precision}: {res['summary']}: "
                        f"{'ok' if res['passed'] else 'FAILED ' + ','.join(res['failed_checks'])}")
                if res["passed"] or force:
                    dest = out / sub / precision
                    shutil.rmtree(dest, ignore_errors=True)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(path.parent), str(dest))
                    written.setdefault(kind, {})[precision] = f"{sub}/{precision}/model.onnx"
                else:
                    failures.append(f"{kind} {precision}: {res['summary']}")
                    shutil.rmtree(out / sub / precision, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out / name)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
    first = next(iter(written.values()), {})
    spec_labels = get_spec(spec, input_only=True).output.labels
    manifest = {
        "spec": spec,
        "architecture": "Qwen3ForCausalLM",
        "model_type": "qwen3",
        # Graph kind of `precisions` (the default graph); `graphs` lists every graph kind and its precisions.
        "graph": "causal-lm-with-past" if "causal-lm-with-past" in written else next(iter(written), None),
        "graphs": written,
        "precisions": written.get("causal-lm-with-past", first),
        "num_labels": len(spec_labels),
        "labels": list(spec_labels),
        "onnx_opset": ONNX_OPSET,
        "pad_token_id": guard_spec().input.pad_token_id,
        "padding_side": "left",
        "num_layers": cfg["num_hidden_layers"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
        "source_model_dir": str(model_dir.resolve()),
        "forced": {k: [p for p in v if not results[k][p]["passed"]] for k, v in written.items()},
        "guardrt_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return write_manifest_and_gate(out, manifest, results, failures, force)

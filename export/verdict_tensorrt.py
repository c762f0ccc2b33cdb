"""The Qwen3Guard-Gen verdict graph -> TensorRT engines, through the classifiers' builder (`guardrt.export.tensorrt`).

The verdict graph is classifier-shaped (`input_ids`, `attention_mask` int64 [batch, seq] -> `verdict` float32
[batch, 7]) and made of standard ONNX operators only (checked without a GPU by `check_verdict_graph`), so it goes
through the same pieces as the classifiers: `derive_profiles` (one optimization profile per length bucket of
`VERDICT_ENGINE_SPEC`), `engine_settings` (fp16 from the fp16 ONNX with the fp32 islands, int8 from the QDQ ONNX),
`build_engine` (Polygraphy loaders, profiles read back and checked). Each engine is then compared with ONNX Runtime
fp32 on held-out prompts (max |Δprob| of the label probabilities and label agreement, the gates of
`guardrt.export.causal_lm_export.GATES["verdict"]`); one that misses them is deleted unless forced.

**Never run**: there is no GPU on the development machines. Written against the documented APIs the classifier
engines use; the GPU test (`tests/export/test_verdict_tensorrt.py`, marker `gpu`) skips here.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from guardrt.runtime.errors import GuardrtError, ModelFilesError
from guardrt.runtime.guard_output import verdict_spec

__all__ = ["VERDICT_ENGINE_SPEC", "check_verdict_graph", "build_verdict_engines"]

# The verdict graph's engine-facing contract: the classifier-shaped verdict spec (guard_output.verdict_spec: 7 length
# buckets up to the card's serving length 32,768, prompt + `Safety:`; batch up to 8), named for its engines.
VERDICT_ENGINE_SPEC = dataclasses.replace(verdict_spec(), name="qwen3guard-gen-verdict")


def check_verdict_graph(onnx_path: str | Path) -> None:
    """The TensorRT-facing contract of a verdict graph (no GPU needed): standard ONNX operators only, inputs
    `input_ids`/`attention_mask` int64 [batch, seq], output `verdict` float32 [batch, 7]; ModelFilesError otherwise."""
    import onnx
    from onnx import TensorProto

    from guardrt.export.tensorrt import non_standard_onnx_ops

    odd = non_standard_onnx_ops(onnx_path)
    if odd:
        raise ModelFilesError(f"{onnx_path} has operators TensorRT's ONNX parser rejects: {odd}")
    model = onnx.load(str(onnx_path), load_external_data=False)
    ins = [(i.name, i.type.tensor_type.elem_type, len(i.type.tensor_type.shape.dim)) for i in model.graph.input]
    outs = [(o.name, o.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim])
            for o in model.graph.output]
    want_in = [("input_ids", TensorProto.INT64, 2), ("attention_mask", TensorProto.INT64, 2)]
    if ins != want_in or len(outs) != 1 or outs[0][:2] != ("verdict", TensorProto.FLOAT) or outs[0][2][1] != 7:
        raise ModelFilesError(f"{onnx_path}: verdict contract mismatch: inputs {ins}, outputs {outs}")


def _reference_rows(export_dir: Path, n: int) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    """Held-out verdict feeds (left-padded batches of 4 and one row) and ONNX Runtime fp32's outputs for them."""
    from transformers import AutoTokenizer

    from guardrt.export.demo_guard_models import render_prompt_ids
    from guardrt.export.guard_synthetic import guard_messages
    from guardrt.export.synthetic import SPLIT_SEEDS
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.guard_output import guard_spec, verdict_prefix_ids
    from guardrt.runtime.onnxrt import OnnxRunner
    from guardrt.runtime.preprocess import pad_batch

    manifest = load_export_dir(export_dir)
    tok = AutoTokenizer.from_pretrained(str(export_dir))
    prefix = verdict_prefix_ids()
    rows = [p + prefix for p in render_prompt_ids(tok, guard_messages(n, seed=SPLIT_SEEDS["heldout"]))]
    feeds = [dict(zip(("input_ids", "attention_mask"), pad_batch(rows[i:i + 4], guard_spec().input.pad_token_id, "left")))
             for i in range(0, n, 4)] + [dict(zip(("input_ids", "attention_mask"), pad_batch(rows[:1], 151643,
                                                                                           "left")))]
    with OnnxRunner(manifest.graph_path("verdict", "fp32")) as runner:
        return feeds, [runner.infer(f)["verdict"] for f in feeds]


def build_verdict_engines(export_dir: str | Path, precisions: Sequence[str] = ("fp16",), *, force: bool = False,
                          validate: int = 16, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build `export_dir/tensorrt-verdict/<precision>/model.plan` (+ build.json with the validation) per precision.
    Returns {precision: build record}. Raises TensorRTUnavailableError without a GPU / the gpu extra, GuardrtError
    when an engine misses its gate (unless `force`)."""
    from guardrt.export.causal_lm_export import GATES
    from guardrt.export.tensorrt import build_engine, derive_profiles, engine_settings
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.tensorrt import TensorRTRunner, TensorRTUnavailableError, probe_gpu

    manifest = load_export_dir(export_dir)
    available = manifest.graphs.get("verdict", {})
    probe = probe_gpu()
    if not probe.found:
        raise TensorRTUnavailableError(f"no TensorRT engine built for the verdict graph: {probe.detail}")
    from guardrt.runtime.errors import require

    require("tensorrt", "gpu")
    profiles = derive_profiles(VERDICT_ENGINE_SPEC)
    root = manifest.path / "tensorrt-verdict"
    feeds, reference = _reference_rows(manifest.path, validate) if validate else ([], [])
    records, failures = {}, []
    for precision in precisions:
        settings = engine_settings(precision, available)
        onnx_path = manifest.graph_path("verdict", settings.source)
        check_verdict_graph(onnx_path)
        plan = root / precision / "model.plan"
        record = build_engine(onnx_path, plan, settings, profiles, timing_cache=root / "timing.cache", log=log)
        if feeds:
            gate = GATES["verdict"][precision]
            with TensorRTRunner(plan) as runner:
                got = np.concatenate([runner.infer(f)["verdict"] for f in feeds])
            want = np.concatenate(reference)
            diff = float(np.max(np.abs(got[:, :4] - want[:, :4]))) if np.all(np.isfinite(got)) else float("inf")
            agreement = float(np.mean(got[:, :3].argmax(1) == want[:, :3].argmax(1)))
            record["validation"] = {"max_abs_diff": diff, "atol": gate["atol"], "label_agreement": agreement,
                                    "min_agreement": gate["min_agreement"],
                                    "passed": diff <= gate["atol"] and agreement >= gate["min_agreement"]}
            if not record["validation"]["passed"]:
                failures.append(f"{precision}: max|Δprob| {diff:.3g}, agreement {agreement:.3f}")
                if not force:
                    plan.unlink(missing_ok=True)
        (plan.parent / "build.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        records[precision] = record
    if failures and not force:
        raise GuardrtError("verdict engines missed their gates: " + "; ".join(failures))
    return records

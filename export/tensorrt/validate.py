"""Validation of a built engine, like any export (the exporter's rule: nothing is served that missed its gate):
the engine and ONNX Runtime fp32 on CPU (the exporter's validated reference) on held-out synthetic inputs of the
spec, through the real preprocessing and batching, against the spec's atol / min_agreement for that precision."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from guardrt.runtime.errors import GuardrtError
from guardrt.runtime.specs import ModelSpec

__all__ = ["EngineGateError", "gate", "parity", "validate_engine"]


class EngineGateError(GuardrtError):
    """An engine missed its spec's gate against ONNX Runtime fp32; its Triton model was not written (see build.json)."""


def parity(spec: ModelSpec, reference: Any, logits: Any) -> dict[str, Any]:
    """max |Δlogit|, decision agreement (the card's decision rule) and finiteness of `logits` against `reference`."""
    import numpy as np

    from guardrt.runtime.postprocess import postprocess

    reference, logits = np.asarray(reference, np.float32), np.asarray(logits, np.float32)
    finite = bool(np.isfinite(logits).all())
    ref = [r["label"] for r in postprocess(spec, reference)]
    got = [r["label"] for r in postprocess(spec, np.nan_to_num(logits))]
    return {"max_abs_diff": float(np.abs(reference - logits).max()) if finite else float("inf"),
            "agreement": float(np.mean(np.array(ref) == np.array(got))) if ref else 1.0,
            "finite": finite, "n": int(len(ref))}


def gate(spec: ModelSpec, precision: str, result: dict[str, Any]) -> dict[str, Any]:
    """`result` (from `parity`) with the spec's gate for `precision` and whether it `passed`."""
    atol, agreement = spec.atol.get(precision, float("inf")), spec.min_agreement.get(precision, 0.0)
    return {**result, "atol": atol, "min_agreement": agreement,
            "passed": result["finite"] and result["max_abs_diff"] <= atol and result["agreement"] >= agreement}


def validate_engine(
    plan: str | Path,
    export_dir: str | Path,
    spec: ModelSpec,
    precision: str,
    *,
    n: int = 64,
    seed: int | None = None,
    runner_factory: Callable[[Path], Any] | None = None,
) -> dict[str, Any]:
    """Run the engine and ONNX Runtime fp32 (CPU, the exporter's validated reference) on `n` held-out synthetic
    inputs of the spec, through the real preprocessing and batching; compare against the spec's gate for
    `precision` (max |Δlogit| <= atol, agreement >= min_agreement). Returns the result with `passed`."""
    from guardrt.export.synthetic import SPLIT_SEEDS, synthetic_payloads
    from guardrt.runtime.onnxrt import InProcessClassifier
    from guardrt.runtime.tensorrt import TensorRTRunner

    factory = runner_factory or TensorRTRunner
    reference = InProcessClassifier.from_export_dir(export_dir, "fp32")
    try:
        payloads = synthetic_payloads(spec.name, n, seed=SPLIT_SEEDS["heldout"] if seed is None else seed)
        seqs = reference.encode(payloads)
        want = reference.logits_for_ids(seqs)
        with factory(Path(plan)) as runner:
            got = InProcessClassifier(spec, runner, reference.preprocessor).logits_for_ids(seqs)
    finally:
        reference.close()
    res = gate(spec, precision, parity(spec, want, got))
    res["reference"] = "onnxruntime fp32 (CPU)"
    return res

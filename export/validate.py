"""Validation of exported graphs: ONNX Runtime vs PyTorch fp32 on the same feeds.

`build_validation_set` makes the feeds from the spec's own preprocessing (so the shapes and padding are the ones the
runtime sends): single unpadded sequences (short and long), a left-padded and a right-padded mixed-length batch
(HF's pooling and RoBERTa's position ids must both survive either side), and a held-out set of synthetic labelled
payloads in batches padded on the spec's side. `torch_reference` runs the checkpoint once; `validate_onnx` runs one
exported graph and reports max |Δlogit| per case, decision agreement with PyTorch on the held-out set (decisions as
the card makes them: threshold or argmax), and whether the spec's gate for that precision holds. The static QDQ
`int8` graph is measured as a graph (Q/DQ as float ops, independent of the CPU's int8 kernels) and as ONNX Runtime
CPU runs it here. `check_set` picks the held-out rows an int8 export carries for the load-time re-check.

The tests reuse these functions on the tiny demo models.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from guardrt.runtime.specs import ModelSpec, get_spec

__all__ = ["ValidationCase", "ValidationSet", "build_validation_set", "torch_reference", "validate_onnx",
           "decisions", "QDQ_AS_FLOAT"]


@dataclass
class ValidationCase:
    name: str
    input_ids: np.ndarray
    attention_mask: np.ndarray
    heldout: bool = False

    def feeds(self, spec: ModelSpec) -> dict[str, np.ndarray]:
        return dict(zip(spec.input_names, (self.input_ids, self.attention_mask)))


@dataclass
class ValidationSet:
    spec: ModelSpec
    cases: list[ValidationCase]
    heldout_labels: np.ndarray  # the synthetic task's labels, in held-out case order
    settings: dict[str, Any] = field(default_factory=dict)


def build_validation_set(spec: ModelSpec | str, tokenizer_dir: str | Path, n_heldout: int = 64,
                         long_tokens: int | None = None, batch_size: int = 8) -> ValidationSet:
    """Feeds for validation, built with the spec's exact preprocessing (see module docstring).

    long_tokens: length of the long single sequence (default: the spec's max_length)."""
    from guardrt.export.synthetic import SPLIT_SEEDS, long_payload, synthetic_examples
    from guardrt.runtime.preprocess import build_preprocessor, pad_batch

    spec = get_spec(spec) if isinstance(spec, str) else spec
    pre = build_preprocessor(spec, tokenizer_dir)
    long_tokens = min(int(long_tokens or spec.max_length), spec.max_length)
    held = synthetic_examples(spec.name, n_heldout, seed=SPLIT_SEEDS["heldout"])
    seqs = [pre.encode(p) for p, _ in held]
    labels = np.asarray([y for _, y in held], dtype=np.int64)
    # A long input through the real preprocessing (trimmed at the spec maximum), cut to long_tokens from the end
    # it would be truncated at.
    long = pre.encode(long_payload(spec.name, seed=SPLIT_SEEDS["heldout"]))
    long = long[-long_tokens:] if spec.truncation_side == "left" else long[:long_tokens]
    by_len = sorted(seqs, key=len)
    mixed = [by_len[0], by_len[len(by_len) // 2], by_len[-1], long[-max(len(by_len[-1]) + 5, long_tokens // 4):]]

    def case(name, rows, side, heldout=False):
        ids, mask = pad_batch(rows, spec.pad_token_id, side)
        return ValidationCase(name, ids, mask, heldout)

    cases = [
        case("single_short", [by_len[0]], spec.padding_side),
        case(f"single_long_{len(long)}", [long], spec.padding_side),
        case("batch4_left_padded", mixed, "left"),
        case("batch4_right_padded", mixed, "right"),
    ]
    for start in range(0, len(seqs), batch_size):
        cases.append(case(f"heldout_{start // batch_size}", seqs[start:start + batch_size], spec.padding_side, True))
    return ValidationSet(spec, cases, labels, {"n_heldout": n_heldout, "long_tokens": len(long),
                                               "batch_size": batch_size})


def torch_reference(model_dir: str | Path, vset: ValidationSet, log: Callable[[str], None] | None = None,
                    model: Any = None) -> dict[str, np.ndarray]:
    """PyTorch fp32 logits for every case (the reference every precision is compared with)."""
    import torch

    from guardrt.export.progress import Progress

    if model is None:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    report = Progress.count(log, "PyTorch reference", len(vset.cases))
    out = {}
    with torch.inference_mode():
        for i, c in enumerate(vset.cases, 1):
            logits = model(input_ids=torch.from_numpy(c.input_ids),
                           attention_mask=torch.from_numpy(c.attention_mask)).logits
            out[c.name] = logits.float().numpy()
            report(i)
    return out


def decisions(spec: ModelSpec, logits: np.ndarray) -> np.ndarray:
    """The card's decision per row (threshold on the positive probability, or argmax)."""
    from guardrt.runtime.postprocess import postprocess

    return np.asarray([r["label"] for r in postprocess(spec, logits)], dtype=np.int64)


# Session config that makes ONNX Runtime run Q/DQ nodes as the float ops they define (no fusion into integer
# kernels): the QDQ graph's own semantics, which TensorRT's explicit-precision int8 computes with exact int32 sums,
# independent of this CPU's int8 kernels (ORT's U8S8 kernels saturate without VNNI; see guardrt.runtime.int8_path).
QDQ_AS_FLOAT = {"session.disable_quant_qdq": "1"}


def _run_cases(onnx_path, label: str, vset: ValidationSet, reference: dict[str, np.ndarray], log,
               intra_op_threads: int | None, session_config: dict[str, str] | None):
    """Max |Δlogit| per case and the held-out (reference, onnx) logits of one ONNX Runtime session."""
    from guardrt.export.progress import Progress
    from guardrt.runtime.errors import require
    from guardrt.runtime.onnxrt import OnnxRunner

    spec = vset.spec
    so = None
    if session_config:
        so = require("onnxruntime", "export").SessionOptions()
        for key, value in session_config.items():
            so.add_session_config_entry(key, value)
    per_case: dict[str, float] = {}
    held_ref, held_onnx = [], []
    report = Progress.count(log, f"ORT {label}", len(vset.cases))
    with OnnxRunner(onnx_path, intra_op_threads=intra_op_threads, session_options=so) as runner:
        for i, c in enumerate(vset.cases, 1):
            out = runner.infer(c.feeds(spec))[spec.output_names[0]]
            ref = reference[c.name]
            if out.shape != ref.shape or out.dtype != np.float32:
                raise AssertionError(f"{label} {c.name}: logits {out.dtype}{out.shape}, expected float32{ref.shape}")
            per_case[c.name] = float(np.max(np.abs(out - ref))) if np.all(np.isfinite(out)) else float("inf")
            if c.heldout:
                held_ref.append(ref)
                held_onnx.append(out)
            report(i)
    return per_case, np.concatenate(held_ref), np.concatenate(held_onnx)


def validate_onnx(onnx_path: str | Path, precision: str, vset: ValidationSet, reference: dict[str, np.ndarray],
                  log: Callable[[str], None] | None = None, intra_op_threads: int | None = None) -> dict[str, Any]:
    """Run `onnx_path` on every case; return the report written to validation.json for this precision.

    Every precision runs in an ONNX Runtime CPU session as guardrt serves it (`OnnxRunner`); its int8 path is
    recorded (`int8_path`). The static QDQ `int8` graph is gated twice: as a graph (Q/DQ as float ops,
    `QDQ_AS_FLOAT`: what TensorRT runs, the same on every CPU) and as ONNX Runtime CPU runs it here (`ort_cpu`:
    fused integer kernels); both must pass."""
    from guardrt.runtime.int8_path import int8_path

    spec = vset.spec
    atol = float(spec.atol[precision])
    min_agreement = float(spec.min_agreement[precision])
    t0 = time.perf_counter()
    as_graph = precision == "int8"
    per_case, held_ref_l, held_onnx_l = _run_cases(onnx_path, precision + (" (Q/DQ as float)" if as_graph else ""),
                                                   vset, reference, log, intra_op_threads,
                                                   QDQ_AS_FLOAT if as_graph else None)
    d_ref, d_onnx = decisions(spec, held_ref_l), decisions(spec, held_onnx_l)
    agreement = float(np.mean(d_ref == d_onnx))
    max_diff = max(per_case.values())
    checks = {"max_abs_diff": max_diff <= atol, "agreement": agreement >= min_agreement}
    result: dict[str, Any] = {
        "precision": precision,
        "model": str(Path(onnx_path).name),
        "max_abs_diff": max_diff,
        "atol": atol,
        # Scale of the reference logits, to read max_abs_diff against.
        "reference_max_abs_logit": float(max(np.max(np.abs(r)) for r in reference.values())),
        "heldout_agreement": agreement,
        "min_agreement": min_agreement,
        "heldout_size": int(len(d_ref)),
        "heldout_accuracy_onnx": float(np.mean(d_onnx == vset.heldout_labels)),
        "heldout_accuracy_torch": float(np.mean(d_ref == vset.heldout_labels)),
        "cases": per_case,
    }
    if precision.startswith("int8"):
        result["int8_path"] = int8_path()
    if as_graph:
        result["measured_as"] = "QDQ graph, Q/DQ as float ops (session.disable_quant_qdq=1)"
        cpu_cases, _, cpu_held = _run_cases(onnx_path, f"{precision} (ORT CPU kernels)", vset, reference, log,
                                            intra_op_threads, None)
        cpu_diff = max(cpu_cases.values())
        cpu_agreement = float(np.mean(decisions(spec, cpu_held) == d_ref))
        result["ort_cpu"] = {"max_abs_diff": cpu_diff, "heldout_agreement": cpu_agreement,
                             "int8_path": result["int8_path"], "cases": cpu_cases}
        checks["ort_cpu_max_abs_diff"] = cpu_diff <= atol
        checks["ort_cpu_agreement"] = cpu_agreement >= min_agreement
    result.update({
        "passed": all(checks.values()),
        "failed_checks": [k for k, ok in checks.items() if not ok],
        "seconds": round(time.perf_counter() - t0, 2),
    })
    return result

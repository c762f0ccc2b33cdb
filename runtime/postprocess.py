"""Logits -> the card's output dict. Shared by the in-process runner, the Triton client and the python backend."""
from __future__ import annotations

import numpy as np

from guardrt.runtime.specs import ModelSpec


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (the card computes `torch.softmax(logits.float(), -1)`)."""
    x = np.asarray(logits, dtype=np.float32)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def postprocess(spec: ModelSpec, logits: np.ndarray, threshold: float | None = None) -> list[dict]:
    """One output dict per row of `logits` [B, num_labels], in the card's fields.

    intent-safety: label (int), label_text (unsafe/non_unsafe), prob_non_unsafe, prob_unsafe, threshold.
    rejection: label (0/1), label_text (NORMAL/REJECTION), score (top probability, as the pipeline reports),
    prob_normal, prob_rejection.
    A Qwen3Guard-Gen verdict spec (output kind `qwen3guard_verdict`): its rows -> `guard_output.verdict_from_row`.
    """
    logits = np.asarray(logits)
    if spec.output.kind == "qwen3guard_verdict":  # verdict-graph rows (guard_output.verdict_spec), not logits
        from guardrt.runtime.guard_output import verdict_from_row

        return [verdict_from_row(row, spec.output.options.get("guard_spec")) for row in logits]
    if logits.ndim != 2 or logits.shape[1] != len(spec.labels):
        raise ValueError(f"{spec.name}: expected logits [B, {len(spec.labels)}], got shape {logits.shape}")
    probs = softmax(logits)
    out = []
    for row in probs:
        if spec.decision == "threshold":
            thr = spec.threshold if threshold is None else threshold
            label = int(float(row[spec.positive_label]) >= thr)
            result = {"label": label, "label_text": "unsafe" if label == 1 else "non_unsafe"}
            result.update({f"prob_{name}": float(p) for name, p in zip(spec.labels, row)})
            result["threshold"] = thr
        else:
            label = int(np.argmax(row))
            result = {"label": label, "label_text": spec.labels[label], "score": float(row[label])}
            result.update({f"prob_{name.lower()}": float(p) for name, p in zip(spec.labels, row)})
        out.append(result)
    return out

"""The held-out check set an int8 export carries, and the `int8` section of its guardrt.json.

`guardrt export` writes `DIR/int8_check.npz` next to int8 models: a few held-out rows (the first 16 of the
validation's held-out set, padded on the spec's side into one batch), their PyTorch fp32 logits, each int8 precision's
logits at export, and `meta` (JSON: decision rule, gates, the CPU int8 path each int8 precision was validated on).
Loading an int8 precision where the CPU's int8 path differs re-runs it (`guardrt.runtime.int8_path.recheck`, in
process and in the Triton python backend, which gets a copy of the file).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from guardrt.runtime.specs import ModelSpec

__all__ = ["check_set", "int8_formats", "write_int8_check"]


def check_set(vset, reference: dict[str, np.ndarray], rows: int = 16) -> dict[str, np.ndarray]:
    """The held-out check set an int8 export carries (`guardrt.runtime.int8_path`): the first `rows` held-out
    sequences, padded on the spec's side into one batch (int32 ids, int8 mask), and their PyTorch fp32 logits."""
    from guardrt.runtime.preprocess import pad_batch

    spec = vset.spec
    seqs, refs = [], []
    for c in vset.cases:
        if not c.heldout:
            continue
        for r in range(len(c.input_ids)):
            if len(seqs) < rows:
                seqs.append(c.input_ids[r][c.attention_mask[r] == 1].tolist())
                refs.append(reference[c.name][r])
    ids, mask = pad_batch(seqs, spec.pad_token_id, spec.padding_side)
    return {spec.input_names[0]: ids.astype(np.int32), spec.input_names[1]: mask.astype(np.int8),
            "reference": np.stack(refs).astype(np.float32)}


def int8_formats(int8_dynamic_weights: str) -> dict[str, str]:
    """What each int8 precision's graph holds (guardrt.json `int8.formats`)."""
    return {"int8": "QDQ: s8 activations (symmetric, static min/max calibration) x s8 weights (symmetric, per "
                    "channel), the TensorRT explicit-quantization format",
            "int8-dynamic": f"u8 activations (quantized at run time) x {int8_dynamic_weights} weights (per channel)"}


def write_int8_check(out: Path, spec: ModelSpec, vset, reference, fresh: list[str], kept: list[str],
                     previous: dict, int8_dynamic_weights: str, intra_op_threads: int | None) -> dict | None:
    """Write `out/int8_check.npz` and return guardrt.json's `int8` section (None without int8 precisions).

    fresh: int8 precisions validated in this run (recorded with this machine's int8 path and their logits on the
    check rows); kept: int8 precisions carried over from an earlier export of `out` (their record is kept, and their
    logits when the check rows are unchanged). The file holds the check rows (the spec's input names), their PyTorch
    fp32 logits (`reference`), each precision's logits at export (`logits_<precision>`) and `meta` (JSON: decision
    rule, gates, the int8 path each precision was validated on), everything the Triton backend needs to re-check."""
    from guardrt.runtime.int8_path import CHECK_FILE_NAME, load_check_set, path_record
    from guardrt.runtime.onnxrt import OnnxRunner

    file = out / CHECK_FILE_NAME
    arrays = check_set(vset, reference)
    validated_on: dict[str, dict] = {}
    logits: dict[str, np.ndarray] = {}
    formats = dict(previous.get("formats") or {})
    old = None
    if kept and file.is_file():
        try:
            old = load_check_set(file)
        except ValueError:
            old = None
    same_rows = old is not None and all(
        n in old and np.array_equal(old[n], arrays[n]) for n in spec.input_names)
    for p in kept:
        record = (previous.get("validated_on") or {}).get(p)
        if record:
            validated_on[p] = record
        if same_rows and f"logits_{p}" in old:
            logits[p] = old[f"logits_{p}"]
    record = path_record()
    feeds = {n: arrays[n].astype(np.int64) for n in spec.input_names}
    for p in fresh:
        validated_on[p] = record
        formats[p] = int8_formats(int8_dynamic_weights)[p]
        with OnnxRunner(out / p / "model.onnx", intra_op_threads=intra_op_threads) as runner:
            logits[p] = runner.infer(feeds)[spec.output_names[0]]
    if not validated_on:
        file.unlink(missing_ok=True)
        return None
    meta = {
        "spec": spec.name,
        "input_names": list(spec.input_names),
        "output_name": spec.output_names[0],
        "decision": spec.decision,
        "threshold": spec.threshold,
        "positive_label": spec.positive_label,
        "gates": {p: {"atol": float(spec.atol[p]), "min_agreement": float(spec.min_agreement[p])}
                  for p in sorted(validated_on)},
        "validated_on": validated_on,
        "rows": int(len(arrays["reference"])),
    }
    np.savez_compressed(file, meta=np.array(json.dumps(meta)), **arrays,
                        **{f"logits_{p}": v.astype(np.float32) for p, v in logits.items()})
    return {"validated_on": validated_on, "check_set": CHECK_FILE_NAME,
            "formats": {p: formats[p] for p in sorted(validated_on) if p in formats}}

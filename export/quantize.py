"""int8 ONNX from the fp32 graph.

* `quantize_qdq_static` (precision `int8`): explicit QuantizeLinear/DequantizeLinear pairs (QDQ), static activation
  ranges calibrated on preprocessed spec inputs, symmetric int8 activations and per-channel symmetric int8 weights.
  This is the format TensorRT consumes for explicit-precision int8 (no implicit calibration). It is validated as a
  graph (Q/DQ run as exact float ops, `guardrt.export.validate`), so its gate does not depend on the CPU's int8
  kernels; ONNX Runtime's CPU EP can also run it by fusing QDQ groups into integer kernels.
* `quantize_int8_dynamic` (precision `int8-dynamic`, the ONNX Runtime CPU format): weights quantized per channel
  ahead of time, activations quantized at run time to uint8 over each tensor's own [min, max].

Only MatMul/Gemm are quantized (the linear layers; the exporter excludes the attention products and the rotary
subgraph); embeddings, normalisation, softmax stay in floating point, where int8 would cost accuracy for little speed.

Why int8-dynamic stores **7-bit int8 weights** (`reduce_range`). ORT's CPU int8 GEMM (MLAS) multiplies u8 activations
by s8 weights ("U8S8"). With VNNI (`vpdpbusd`: AVX-512 VNNI, AVX-VNNI) or AMX the products are summed exactly in
int32. Without VNNI (AVX2, AVX-512 without VNNI) it uses `vpmaddubsw`, which sums each pair of u8 x s8 products into
a saturating int16: full-range activations (dynamic quantization maps every tensor onto 0..255) times full-range
weights (±127) overflow it (255 x 127 x 2 = 64,770 > 32,767). ORT's quantization guide names two remedies:
`reduce_range` (weights in [-64, 64]: a pair stays <= 255 x 64 x 2 = 32,640) or U8U8 (u8 weights: no int16 pair
sums). Both give the same logits on every path; measured (`benchmarks/int8_portability.py`, README "int8 on any
x86-64 CPU": max |Δlogit| vs PyTorch fp32 with the exporter's validation, AVX-512 VNNI natively and AVX2 under
qemu; speed on the AVX-512 VNNI machine), 7-bit weights keep the fast U8S8 kernel on every CPU, while U8U8 runs
~1.8x slower with VNNI (MLAS has no VNNI U8U8 kernel) and, per ORT's guide, slower on AVX2 too. Their cost is one bit
of weight precision, within every gate (the numbers are in the README). Full-range s8 (ORT's default, guardrt's
format before issue 9) stays available as "s8" for VNNI-only deployments.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["QUANTIZED_OPS", "DYNAMIC_WEIGHT_FORMATS", "DYNAMIC_WEIGHT_FORMAT", "quantize_qdq_static",
           "quantize_int8_dynamic", "FeedsReader", "calibration_stride"]

QUANTIZED_OPS = ("MatMul", "Gemm")

# int8-dynamic weight formats (the comparison above; the benchmark builds each): name -> (weight type, reduce_range).
DYNAMIC_WEIGHT_FORMATS = {
    "s8-7bit": ("QInt8", True),  # reduce_range: |w| <= 64, U8S8 pair sums cannot saturate; the fast kernel everywhere
    "u8": ("QUInt8", False),  # U8U8: exact everywhere, ~1.8x slower with VNNI
    "s8": ("QInt8", False),  # ORT's default: saturates without VNNI (guardrt's format before issue 9)
}
DYNAMIC_WEIGHT_FORMAT = "s8-7bit"


def _extra_options(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The quantizer cannot infer tensor types through com.microsoft ops (fused graphs: GroupQueryAttention,
    SkipSimplifiedLayerNormalization ...): state the default (kernels.fusions.QUANTIZE_EXTRA_OPTIONS); harmless on
    plain graphs."""
    from onnx import TensorProto

    return {"DefaultTensorType": TensorProto.FLOAT, **(extra or {})}


class FeedsReader:
    """An onnxruntime CalibrationDataReader over a fixed list of feeds (ids + mask batches); `set_range` serves a
    slice of them (ORT's `CalibStridedMinMax` protocol: calibrate a few feeds, merge their ranges, go on)."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]], report=None):
        self._feeds = [dict(f) for f in feeds]
        self._start, self._end = 0, len(self._feeds)
        self._i = 0
        self._report = report

    def get_next(self):
        if self._start + self._i >= self._end:
            return None
        self._i += 1
        if self._report:
            self._report(self._start + self._i)
        return self._feeds[self._start + self._i - 1]

    def rewind(self) -> None:
        self._i = 0

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end = start_index, min(end_index, len(self._feeds))
        self._i = 0

    def __len__(self) -> int:
        return len(self._feeds)


def calibration_stride(n_feeds: int, most: int = 4) -> int:
    """The largest stride <= `most` that divides `n_feeds` (ORT requires it to divide the total)."""
    return next(s for s in range(min(most, max(n_feeds, 1)), 0, -1) if n_feeds % s == 0)


def quantize_qdq_static(fp32_path: str | Path, out_path: str | Path, calibration: FeedsReader,
                        large: bool = False, nodes_to_exclude: Iterable[str] = ()) -> Path:
    """Write a QDQ int8 model calibrated (min/max) on `calibration`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(fp32_path),
        str(out_path),
        calibration,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=True,
        # TensorRT's int8 is full-range s8 x s8 with exact int32 sums; 7-bit weights would only lose precision.
        reduce_range=False,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(nodes_to_exclude),
        use_external_data_format=large,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options=_extra_options({
            # TensorRT needs zero points of 0 for activations and weights.
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            # Bias stays fp32 (TensorRT fuses it; int32 bias quantization adds error for nothing here).
            "QuantizeBias": False,
            # Bounded memory on large models: ranges are computed and merged every few calibration batches.
            # (Not "CalibMaxIntermediateOutputs": in onnxruntime 1.32 MinMaxCalibrater drops the collected outputs
            # at that count without merging them, so only the last len % N batches were calibrated.)
            "CalibStridedMinMax": calibration_stride(len(calibration)),
        }),
    )
    return Path(out_path)


def quantize_int8_dynamic(fp32_path: str | Path, out_path: str | Path, large: bool = False,
                          nodes_to_exclude: Iterable[str] = (), weight_format: str = DYNAMIC_WEIGHT_FORMAT) -> Path:
    """Write a dynamically quantized model: per-channel weights in `weight_format` (DYNAMIC_WEIGHT_FORMATS; default
    7-bit s8, exact on every x86-64 int8 path), uint8 activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight_type, reduce_range = DYNAMIC_WEIGHT_FORMATS[weight_format]
    quantize_dynamic(
        str(fp32_path),
        str(out_path),
        op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=True,
        reduce_range=reduce_range,
        weight_type=getattr(QuantType, weight_type),
        nodes_to_exclude=list(nodes_to_exclude),
        use_external_data_format=large,
        extra_options=_extra_options({"MatMulConstBOnly": True}),
    )
    return Path(out_path)

"""int8 ONNX from the fp32 graph.

* `quantize_qdq_static`: explicit QuantizeLinear/DequantizeLinear pairs (QDQ), static activation ranges calibrated
  on preprocessed spec inputs, symmetric int8 activations and per-channel symmetric int8 weights. This is the
  format TensorRT consumes for explicit-precision int8 (no implicit calibration), and ONNX Runtime's CPU EP runs it
  by fusing QDQ groups into integer kernels.
* `quantize_int8_dynamic`: weights int8 per channel, activations quantized at run time (ONNX Runtime CPU).

Only MatMul/Gemm are quantized (the linear layers and the attention products); embeddings, normalisation, softmax
and the rotary subgraph stay in floating point, where int8 would cost accuracy for little speed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

__all__ = ["QUANTIZED_OPS", "quantize_qdq_static", "quantize_int8_dynamic", "FeedsReader"]

QUANTIZED_OPS = ("MatMul", "Gemm")


class FeedsReader:
    """An onnxruntime CalibrationDataReader over a fixed list of feeds (ids + mask batches)."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]], report=None):
        self._feeds = [dict(f) for f in feeds]
        self._i = 0
        self._report = report

    def get_next(self):
        if self._i >= len(self._feeds):
            return None
        self._i += 1
        if self._report:
            self._report(self._i)
        return self._feeds[self._i - 1]

    def rewind(self) -> None:
        self._i = 0

    def __len__(self) -> int:
        return len(self._feeds)


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
        reduce_range=False,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(nodes_to_exclude),
        use_external_data_format=large,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={
            # TensorRT needs zero points of 0 for activations and weights.
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            # Bias stays fp32 (TensorRT fuses it; int32 bias quantization adds error for nothing here).
            "QuantizeBias": False,
            # Bounded memory on large models: flush min/max every few calibration batches.
            "CalibMaxIntermediateOutputs": 4,
        },
    )
    return Path(out_path)


def quantize_int8_dynamic(fp32_path: str | Path, out_path: str | Path, large: bool = False,
                          nodes_to_exclude: Iterable[str] = ()) -> Path:
    """Write a dynamically quantized int8 model (per-channel int8 weights; uint8 activations at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32_path),
        str(out_path),
        op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=True,
        reduce_range=False,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(nodes_to_exclude),
        use_external_data_format=large,
        extra_options={"MatMulConstBOnly": True},
    )
    return Path(out_path)

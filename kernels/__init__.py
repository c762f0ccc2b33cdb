"""guardrt.kernels: graph fusions and fused operators that the exporters insert.

Entry point for the exporter: `optimize_onnx(model_path, spec, out_path, config=...)` (kernels/fusions.py).
Build time only (onnx + onnxruntime.transformers); nothing here is imported by guardrt.runtime.
"""
from __future__ import annotations

__all__ = ["optimize_onnx"]


def optimize_onnx(*args, **kwargs):
    """See kernels.fusions.optimize_onnx (imported lazily: onnxruntime.transformers is heavy)."""
    from .fusions import optimize_onnx as _impl

    return _impl(*args, **kwargs)

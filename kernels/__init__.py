"""guardrt.kernels: graph fusions and fused operators that the exporters insert.

Entry point for the exporter: `optimize_onnx(model_path, spec, out_path, config=...)` (kernels/fusions.py).
Build time only (onnx + onnxruntime.transformers); nothing here is imported by guardrt.runtime.
"""
from __future__ import annotations

__all__ = ["graph_pass", "optimize_onnx"]


def optimize_onnx(*args, **kwargs):
    """See kernels.fusions.optimize_onnx (imported lazily: onnxruntime.transformers is heavy)."""
    from .fusions import optimize_onnx as _impl

    return _impl(*args, **kwargs)


def graph_pass(model, spec):
    """The exporter hook: `export_onnx(..., graph_pass=guardrt.kernels.graph_pass)`; see kernels.fusions.graph_pass."""
    from .fusions import graph_pass as _impl

    return _impl(model, spec)

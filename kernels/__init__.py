"""guardrt.kernels: graph fusions and fused operators that the exporters insert.

`graph_pass(model, spec)` is the exporter's default fp32 graph pass (export.onnx_export.DEFAULT_GRAPH_PASS): Qwen3
attention fused into ONNX Runtime's GroupQueryAttention with no S x S tensor anywhere (kernels/qwen3_attention.py),
RoBERTa left as exported. `optimize_onnx(model_path, spec, out_path, config=...)` (kernels/fusions.py) is the same on
files. Build time only (onnx + onnxruntime.transformers); nothing here is imported by guardrt.runtime.
"""
from __future__ import annotations

__all__ = ["graph_pass", "optimize_onnx"]


def optimize_onnx(*args, **kwargs):
    """See kernels.fusions.optimize_onnx (imported lazily: onnxruntime.transformers is heavy)."""
    from .fusions import optimize_onnx as _impl

    return _impl(*args, **kwargs)


def graph_pass(model, spec):
    """The exporter hook `graph_pass(model, spec) -> model`; see kernels.fusions.graph_pass. After a call,
    `graph_pass.last_report` says what was fused."""
    from . import fusions

    try:
        return fusions.graph_pass(model, spec)
    finally:
        graph_pass.last_report = fusions.graph_pass.last_report


def _skip_reason(spec) -> str | None:
    """None when graph_pass changes graphs of `spec`, else why it leaves them as exported."""
    from .fusions import GRAPH_PASS_SKIP

    return GRAPH_PASS_SKIP.get(getattr(spec, "model_type", None))


graph_pass.last_report = None
graph_pass.skip_reason = _skip_reason

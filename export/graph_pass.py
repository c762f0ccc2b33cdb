"""The fp32 graphs an export builds its precisions from: the plain graph (as optimum wrote it) and, when a graph pass
applies, its output (the "fused" graph), each saved under the export's work directory as <graph>/fp32/model.onnx.

`DEFAULT_GRAPH_PASS` ("default") names guardrt.kernels.graph_pass: Qwen3 attention without S x S tensors (RoBERTa
left as exported: the pass says so through its `skip_reason(spec)`). export_onnx tries the fused graph first for
every precision and falls back to the plain one (see export.onnx_export).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from guardrt.runtime.errors import GuardrtError

__all__ = ["DEFAULT_GRAPH_PASS", "FP32Graphs", "GraphPass", "fp32_graphs", "one_line", "resolve_graph_pass"]

GraphPass = Callable[[Any, Any], Any]  # (onnx.ModelProto, ModelSpec) -> onnx.ModelProto
# `export_onnx(graph_pass=DEFAULT_GRAPH_PASS)`: guardrt.kernels.graph_pass (imported when used).
DEFAULT_GRAPH_PASS = "default"


@dataclass
class FP32Graphs:
    """The fp32 graphs an export builds its precisions from: `candidates` in the order tried ("fused" first when
    a graph pass produced one, "plain" last), saved as work/<graph>/fp32/model.onnx."""

    candidates: tuple[str, ...]
    int8_excluded: dict[str, list[str]]
    pass_name: str | None = None
    report: dict | None = None
    fallbacks: dict[str, str] = field(default_factory=dict)  # precision -> why the fused graph was not kept


def resolve_graph_pass(graph_pass: GraphPass | str | None) -> GraphPass | None:
    """DEFAULT_GRAPH_PASS / "default" -> guardrt.kernels.graph_pass; None / "none" -> None; a callable as is."""
    if graph_pass is None or graph_pass == "none":
        return None
    if graph_pass == DEFAULT_GRAPH_PASS:
        from guardrt.kernels import graph_pass as default_pass

        return default_pass
    if callable(graph_pass):
        return graph_pass
    raise GuardrtError(f"graph pass {graph_pass!r} is not callable")


def fp32_graphs(model, spec, graph_pass, work: Path, threshold: int, log) -> FP32Graphs:
    """Save the plain fp32 graph, apply the graph pass (in place: no second copy of the weights in memory) and
    save its result; a pass that does not apply to the spec, or fails, leaves the plain graph only (logged)."""
    from guardrt.export.onnx_export import _int8_excluded, _load, check_graph_contract, save_onnx

    plain_path = work / "plain" / "fp32" / "model.onnx"
    if len(save_onnx(model, plain_path, threshold)) > 1:
        # Saving with external data moved the weights out of the in-memory protos: the pass needs them back.
        model = _load(plain_path)
    plain_excluded = _int8_excluded(model)
    fn = resolve_graph_pass(graph_pass)
    if fn is None:
        return FP32Graphs(("plain",), {"plain": plain_excluded})
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    skip_reason = getattr(fn, "skip_reason", None)
    reason = skip_reason(spec) if skip_reason is not None else None
    if reason:  # the pass says it leaves this spec as exported (e.g. RoBERTa: measured faster unfused)
        return FP32Graphs(("plain",), {"plain": plain_excluded}, report={"skipped": reason})
    try:
        fused = fn(model, spec)
        check_graph_contract(fused, spec)
    except Exception as exc:  # noqa: BLE001 - any failure of the pass: export the plain graph, and say so
        if log:
            log(f"{spec.name}: graph pass {name} failed ({one_line(exc)}); exporting the plain graph")
        return FP32Graphs(("plain",), {"plain": plain_excluded}, report={"error": one_line(exc)})
    save_onnx(fused, work / "fused" / "fp32" / "model.onnx", threshold)
    report = getattr(fn, "last_report", None)
    return FP32Graphs(("fused", "plain"), {"fused": _int8_excluded(fused), "plain": plain_excluded},
                       pass_name=name, report=dict(report) if isinstance(report, dict) else None)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"

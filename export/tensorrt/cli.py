"""CLI glue for `guardrt export --target tensorrt` (the export command owns --target; these are the engine options)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from guardrt.export.tensorrt.precision import DEFAULT_FP32_PINS, FP32_PIN_POLICIES, TRT_PRECISIONS
from guardrt.runtime.errors import InputError

__all__ = ["add_tensorrt_arguments", "run_tensorrt_target"]

GIB = 1 << 30


def add_tensorrt_arguments(p) -> None:
    """Add the TensorRT options to the `guardrt export` parser (plain add_argument: every flag gets its env twin)."""
    p.add_argument("--repo", help="--target tensorrt: Triton model repository for the engines (default: OUT/triton_repo)")
    p.add_argument("--trt-opt-batch", type=int,
                   help="--target tensorrt: batch size TensorRT tunes for (default: the largest preferred batch size)")
    p.add_argument("--trt-int8-fp16", action="store_true",
                   help="--target tensorrt: let int8 engines run non-quantized layers in fp16 (default: fp32)")
    p.add_argument("--trt-precision-constraints", default="prefer", choices=["prefer", "obey"],
                   help="--target tensorrt: how strictly fp32 layers stay fp32 in fp16 engines (default: prefer)")
    p.add_argument("--trt-fp32-pins", default=DEFAULT_FP32_PINS, choices=list(FP32_PIN_POLICIES),
                   help="--target tensorrt: layers fp16 engines keep in fp32: norm (normalisation + rotary angles), "
                        f"broad (also every softmax and reduction), none (default: {DEFAULT_FP32_PINS})")
    p.add_argument("--trt-strongly-typed", action="store_true",
                   help="--target tensorrt: strongly typed engines (each tensor in its ONNX type; no fp32-layer "
                        "heuristics; fp16 needs the fp16 ONNX)")
    p.add_argument("--trt-workspace-gb", type=float, help="--target tensorrt: builder workspace limit in GiB")
    p.add_argument("--trt-instances", type=int, default=1,
                   help="--target tensorrt: Triton instances of each engine model (default: 1)")
    p.add_argument("--gpu-memory-budget-gb", type=float,
                   help="--target tensorrt: GPU memory the Triton models written here may use together, split "
                        "evenly (default: the build GPU's memory less 1 GiB); fewer, larger profiles when needed")


def run_tensorrt_target(args, export_dir: str | Path, exported: Sequence[str] = (),
                        log: Callable[[str], None] | None = print) -> int:
    """Run `export_tensorrt` for a finished ONNX export with the options of `add_tensorrt_arguments`; the engine
    precisions are the exported ones TensorRT builds (fp32, fp16, int8). Returns 0; raises TensorRTUnavailableError
    (one line, after writing the configs) where TensorRT cannot run."""
    from guardrt.export.tensorrt.pipeline import export_tensorrt

    wanted = getattr(args, "trt_precision", None) or [p for p in exported if p in TRT_PRECISIONS]
    if not wanted:
        raise InputError(f"--target tensorrt needs an fp32, fp16 or int8 export (exported: "
                         f"{', '.join(exported) or 'none'}); add one to --precision")
    workspace = getattr(args, "trt_workspace_gb", None)
    budget = getattr(args, "gpu_memory_budget_gb", None)
    result = export_tensorrt(
        export_dir, getattr(args, "spec", None), wanted, out=getattr(args, "repo", None),
        opt_batch=getattr(args, "trt_opt_batch", None), int8_fp16=bool(getattr(args, "trt_int8_fp16", False)),
        precision_constraints=getattr(args, "trt_precision_constraints", None) or "prefer",
        strongly_typed=bool(getattr(args, "trt_strongly_typed", False)),
        fp32_pins=getattr(args, "trt_fp32_pins", None) or DEFAULT_FP32_PINS,
        instance_count=int(getattr(args, "trt_instances", None) or 1),
        gpu_memory_budget_bytes=int(budget * GIB) if budget else None,
        force=bool(getattr(args, "force", False)),
        workspace_bytes=int(workspace * GIB) if workspace else None, log=log,
    )
    if log:
        for p, model in result.models.items():
            log(f"TensorRT {p}: {result.engines[p]} -> Triton model {model}")
    return 0

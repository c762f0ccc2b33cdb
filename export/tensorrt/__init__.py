"""Export directory (validated ONNX) -> TensorRT engines (`model.plan`, fp32 / fp16 / int8) + Triton `tensorrt_plan`.

`export_tensorrt(export_dir, spec, precisions, out=None, ...)` is what `guardrt export --target tensorrt` runs. One
module per step:

* `profiles`: the optimization profiles of the bucket/profile contract (`guardrt.runtime.bucket_profiles`, shared
  with the Triton config and ONNX Runtime's TensorRT provider), as Polygraphy profiles, and the read-back check;
* `precision`: which ONNX each precision is built from, builder flags, and the fp32 pin policies;
* `build`: the Polygraphy loader chain (needs a GPU), the standard-ONNX check, the build GPU's facts;
* `memory`: the engine's device memory per profile and the Triton deployment that fits a GPU memory budget;
* `validate`: each engine against ONNX Runtime fp32 through the real preprocessing, gated by the spec;
* `triton_model`: model names, the config's input type, the no-GPU message (the config text is
  `guardrt.runtime.triton_repo`'s);
* `pipeline`: `export_tensorrt`, the whole step; `cli`: the `--trt-*` options of `guardrt export`.

Without an NVIDIA GPU or without the `gpu` extra nothing is built: the Triton configs are written (no plan) and
TensorRTUnavailableError says, in one line, what is missing and what was written instead. Everything except
`build_engine` and the GPU half of `export_tensorrt` is pure and unit-tested without a GPU. tensorrt and polygraphy
are imported lazily, inside the functions that need them.
"""
from __future__ import annotations

from guardrt.export.tensorrt.build import build_engine, gpu_facts, non_standard_onnx_ops, parse_gpu_query
from guardrt.export.tensorrt.cli import add_tensorrt_arguments, run_tensorrt_target
from guardrt.export.tensorrt.memory import (
    DeploymentError,
    DeploymentPlan,
    EngineMemory,
    engine_device_memory,
    gpu_memory_budget,
    io_bytes_per_context,
    plan_deployment,
    triton_memory_bytes,
)
from guardrt.export.tensorrt.pipeline import TensorRTExport, export_tensorrt
from guardrt.export.tensorrt.precision import (
    DEFAULT_FP32_PINS,
    FP16_VARIANTS,
    FP32_PIN_POLICIES,
    TRT_PRECISIONS,
    EngineSettings,
    LayerInfo,
    apply_fp32_constraints,
    engine_settings,
    fp32_layer_indices,
    in_norm_scope,
    in_rotary_scope,
    parse_trt_precisions,
    recommend_fp32_pins,
)
from guardrt.export.tensorrt.profiles import (
    BucketProfile,
    check_engine_profiles,
    default_opt_batch,
    derive_profiles,
    polygraphy_profiles,
)
from guardrt.export.tensorrt.triton_model import repo_model_names, triton_input_type, unavailable_message
from guardrt.export.tensorrt.validate import EngineGateError, gate, parity, validate_engine
from guardrt.runtime.tensorrt import TensorRTUnavailableError, engine_profiles

__all__ = [
    "DEFAULT_FP32_PINS",
    "FP16_VARIANTS",
    "FP32_PIN_POLICIES",
    "TRT_PRECISIONS",
    "BucketProfile",
    "DeploymentError",
    "DeploymentPlan",
    "EngineGateError",
    "EngineMemory",
    "EngineSettings",
    "LayerInfo",
    "TensorRTExport",
    "TensorRTUnavailableError",
    "add_tensorrt_arguments",
    "apply_fp32_constraints",
    "build_engine",
    "check_engine_profiles",
    "default_opt_batch",
    "derive_profiles",
    "engine_device_memory",
    "engine_profiles",
    "engine_settings",
    "export_tensorrt",
    "fp32_layer_indices",
    "gate",
    "gpu_facts",
    "gpu_memory_budget",
    "in_norm_scope",
    "in_rotary_scope",
    "io_bytes_per_context",
    "non_standard_onnx_ops",
    "parity",
    "parse_gpu_query",
    "parse_trt_precisions",
    "plan_deployment",
    "polygraphy_profiles",
    "recommend_fp32_pins",
    "repo_model_names",
    "run_tensorrt_target",
    "triton_input_type",
    "triton_memory_bytes",
    "unavailable_message",
    "validate_engine",
]

"""The Triton side of the engines: model names in the repository and the config's input data type, and the one
line a user sees when nothing can be built here. The config text itself is the repository writer's
(`guardrt.runtime.triton_repo.tensorrt_config`, flavor `tensorrt`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from guardrt.runtime.errors import ModelFilesError
from guardrt.runtime.specs import ModelSpec

__all__ = ["repo_model_names", "triton_input_type", "unavailable_message"]

# TensorRT DataType name of the engine's ids/mask inputs -> the Triton config data_type that matches it.
_TRITON_INPUT_TYPES = {"INT64": "TYPE_INT64", "INT32": "TYPE_INT32"}


def triton_input_type(io_dtypes: Mapping[str, str], spec: ModelSpec) -> str:
    """The config `data_type` for the inputs of an engine with these I/O types (TensorRT 10 keeps the graph's int64;
    an engine with int32 inputs gets TYPE_INT32 so Triton loads it). ModelFilesError for anything else, and when
    the logits are not float32 (the config and every client expect TYPE_FP32)."""
    kinds = {io_dtypes.get(n) for n in spec.input_names}
    if len(kinds) != 1 or next(iter(kinds)) not in _TRITON_INPUT_TYPES:
        raise ModelFilesError(f"engine inputs have types {io_dtypes}; expected INT64 (or INT32) ids and mask")
    for name in spec.output_names:
        if io_dtypes.get(name) != "FLOAT":
            raise ModelFilesError(f"engine output {name!r} is {io_dtypes.get(name)}, expected FLOAT (float32 logits)")
    return _TRITON_INPUT_TYPES[next(iter(kinds))]


def repo_model_names(base: str, precisions: Sequence[str]) -> dict[str, str]:
    """{precision: Triton model name}: the first precision is served as `base`, the others as `base-<precision>`."""
    return {p: base if i == 0 else f"{base}-{p}" for i, p in enumerate(precisions)}


def unavailable_message(reasons: Sequence[str], onnx_files: Mapping[str, Path], configs: Sequence[Path]) -> str:
    """The one line a user sees when TensorRT cannot run here: what is missing, what was written instead."""
    onnx = ", ".join(f"{p} {path}" for p, path in onnx_files.items()) or "none"
    cfg = ", ".join(str(c) for c in configs) or "none"
    return (f"cannot build TensorRT engines here: {'; '.join(reasons)}. Wrote instead: Triton tensorrt_plan "
            f"config(s) {cfg} (no model.plan yet); the validated ONNX models stay in place ({onnx}). Build the plans "
            "on a GPU host with the same command (see the README section GPU deployment)")

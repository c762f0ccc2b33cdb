"""ONNX Runtime execution providers: names, CUDA / TensorRT provider options, the TensorRT libraries, and the check
that the provider asked for is the one running. Used by `OnnxRunner` (runtime/onnxrt.py) and by the repository
writer for Triton's python backend (its `ort_providers` config parameter) and native onnxruntime backend.

Why each piece exists (onnxruntime-gpu 1.20, the `gpu-ort` extra; none of it has run on a GPU yet):

* TensorRT profiles: without explicit `trt_profile_min/opt/max_shapes` the TensorRT provider builds an engine for
  the first shape it sees and rebuilds it (minutes for Qwen3) whenever a larger one arrives - under live traffic. The
  shapes come from the bucket/profile contract (`runtime/bucket_profiles.py`) as ONE profile covering batch
  1..max_batch_size and sequence 1..max_length: the provider parses several profiles but keeps its execution
  context on profile 0 (microsoft/onnxruntime PR #31624, still open), so a second profile would never run.
* The engine cache: whenever it is enabled, `trt_engine_cache_path` (and the timing cache path) are set, so the
  cache lands in a known directory, not in the server's working directory.
* Libraries: the provider dlopens `libnvinfer.so.10`, which pip's `tensorrt-cu12-libs` installs into
  site-packages/tensorrt_libs, not on the loader path. `load_tensorrt_libraries` loads them first (by full path,
  through that package's own loader), so the provider's dependency resolves to them by soname; when TensorRT is
  nowhere, one clear line says so.
* ONNX Runtime's Python API falls back to other providers (printing a warning) when one fails to load;
  `check_active_providers` turns that into an error.
* int8-dynamic graphs (MatMulInteger / DynamicQuantizeLinear) are an ONNX Runtime CPU format; TensorRT takes the
  explicit-QDQ `int8` export (`refuse_for_tensorrt`).
"""
from __future__ import annotations

import ctypes
import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from guardrt.runtime.errors import InputError, ModelFilesError
from guardrt.runtime.specs import ModelSpec

__all__ = [
    "PROVIDER_ALIASES",
    "TENSORRT_PROVIDER",
    "check_active_providers",
    "cuda_provider_options",
    "load_tensorrt_libraries",
    "provider_names",
    "python_backend_providers",
    "refuse_for_tensorrt",
    "resolve_providers",
    "tensorrt_profile_shapes",
    "tensorrt_provider_options",
]

TENSORRT_PROVIDER = "TensorrtExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
PROVIDER_ALIASES = {"cpu": CPU_PROVIDER, "cuda": CUDA_PROVIDER, "tensorrt": TENSORRT_PROVIDER, "trt": TENSORRT_PROVIDER}
# The TensorRT 10 library ONNX Runtime's TensorRT provider links against (by soname).
NVINFER_SONAME = "libnvinfer.so.10"


def refuse_for_tensorrt(precision: str | None) -> None:
    """InputError for the int8-dynamic graph on a TensorRT path (it has MatMulInteger / DynamicQuantizeLinear, not
    Q/DQ pairs: TensorRT would run it in fp32 or hand it back to other providers, silently)."""
    if precision == "int8-dynamic":
        raise InputError("int8-dynamic (MatMulInteger / DynamicQuantizeLinear) is an ONNX Runtime CPU format that "
                         "TensorRT does not run as int8; for TensorRT use the explicit-QDQ export: --precision int8")


def cuda_provider_options(device_id: int = 0, gpu_mem_limit: int | None = None, tf32: bool = False) -> dict[str, Any]:
    """CUDAExecutionProvider options (documented names). The exhaustive cuDNN search pays off for a long-lived
    server; copying in the default stream keeps IO binding ordering simple. TF32 is off unless asked for: ONNX
    Runtime enables it by default on Ampere and later, rounding fp32 matmul inputs to a 10-bit mantissa, and an fp32
    export is gated at fp32 parity (its atol)."""
    opts: dict[str, Any] = {
        "device_id": device_id,
        "arena_extend_strategy": "kNextPowerOfTwo",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "do_copy_in_default_stream": True,
        "use_tf32": int(bool(tf32)),
    }
    if gpu_mem_limit is not None:
        opts["gpu_mem_limit"] = int(gpu_mem_limit)
    return opts


# The CUDA provider options of Triton's python backend (each instance adds its device_id): fp32 stays fp32.
BACKEND_CUDA_OPTIONS = {"use_tf32": 0}


def tensorrt_profile_shapes(spec: ModelSpec, opt_batch: int | None = None) -> dict[str, str]:
    """{"trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1", ...opt..., ...max...}: the single profile of
    the bucket/profile contract (batch 1..max_batch_size, sequence 1..max_length, opt at the largest preferred
    batch and max_length), in the provider's `name:DxD,...` syntax."""
    from guardrt.runtime.bucket_profiles import derive_profiles

    (profile,) = derive_profiles(spec, opt_batch, num_profiles=1)
    keys = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
    out = {}
    for k, key in enumerate(keys):
        out[key] = ",".join(f"{name}:{'x'.join(str(d) for d in rng[k])}" for name, rng in profile.shapes().items())
    return out


def tensorrt_provider_options(
    spec: ModelSpec | None = None,
    device_id: int = 0,
    fp16: bool = False,
    int8: bool = False,
    cache_dir: str | Path | None = None,
    max_workspace_size: int = 4 << 30,
) -> dict[str, Any]:
    """TensorrtExecutionProvider options (documented `trt_*` names). With a spec: the contract's single explicit
    profile (`tensorrt_profile_shapes`), so no shape triggers an engine rebuild. With `cache_dir`: engine and
    timing caches enabled there. int8 expects the explicit-QDQ graph (no calibration table)."""
    opts: dict[str, Any] = {
        "device_id": device_id,
        "trt_fp16_enable": bool(fp16),
        "trt_int8_enable": bool(int8),
        "trt_max_workspace_size": int(max_workspace_size),
    }
    if cache_dir is not None:
        cache = str(Path(cache_dir))
        opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=cache,
                    trt_timing_cache_enable=True, trt_timing_cache_path=cache)
    if spec is not None:
        opts.update(tensorrt_profile_shapes(spec))
    return opts


def provider_names(providers: Sequence[Any]) -> list[str]:
    """The provider names of a list of names and (name, options) tuples."""
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def resolve_providers(
    providers: Sequence[Any] | str | None, spec: ModelSpec | None = None, fallbacks: bool = True,
    precision: str | None = None, trt_cache_dir: str | Path | None = None,
) -> list[Any]:
    """Normalise a provider list: None -> CPU; short names ("cpu", "cuda", "tensorrt") -> ORT names with default
    options (TensorRT: the spec's profile, fp16 / int8 flags from `precision`, the engine cache in `trt_cache_dir`);
    (name, options) tuples and full names pass through. GPU providers get CUDA as fallback and CPU last
    (`OnnxRunner` still refuses to run when a provider asked for is not the one running)."""
    if providers is None:
        return [CPU_PROVIDER]
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    out: list[Any] = []
    for p in providers:
        if isinstance(p, tuple):
            out.append(p)
            continue
        name = PROVIDER_ALIASES.get(str(p).lower(), str(p))
        if name == CUDA_PROVIDER:
            out.append((name, cuda_provider_options()))
        elif name == TENSORRT_PROVIDER:
            refuse_for_tensorrt(precision)
            out.append((name, tensorrt_provider_options(spec, fp16=precision == "fp16", int8=precision == "int8",
                                                        cache_dir=trt_cache_dir)))
        else:
            out.append(name)
    names = provider_names(out)
    if not fallbacks:
        return out
    if TENSORRT_PROVIDER in names and CUDA_PROVIDER not in names:
        out.append((CUDA_PROVIDER, cuda_provider_options()))
    if CPU_PROVIDER not in names:
        out.append(CPU_PROVIDER)
    return out


def python_backend_providers(spec: ModelSpec, kind: str, precision: str, cache_dir: str | Path) -> str:
    """The providers Triton's python backend (`runtime/triton_backend/model.py`) gives ONNX Runtime, as the JSON
    it reads from its `ort_providers` config parameter: [name | [name, options]]. Its `_providers` only sets each
    instance's device_id. TensorRT: the spec's profile, precision flags, engine + timing cache in `cache_dir`."""
    if kind == "cpu":
        providers: list[Any] = [CPU_PROVIDER]
    elif kind == "cuda":
        providers = [(CUDA_PROVIDER, dict(BACKEND_CUDA_OPTIONS)), CPU_PROVIDER]
    elif kind == "tensorrt":
        refuse_for_tensorrt(precision)
        trt = tensorrt_provider_options(spec, fp16=precision == "fp16", int8=precision == "int8", cache_dir=cache_dir)
        trt.pop("device_id")
        providers = [(TENSORRT_PROVIDER, trt), (CUDA_PROVIDER, dict(BACKEND_CUDA_OPTIONS)), CPU_PROVIDER]
    else:
        raise InputError(f"unknown execution providers {kind!r} (cpu, cuda, tensorrt)")
    return json.dumps([list(p) if isinstance(p, tuple) else p for p in providers], separators=(",", ":"))


def load_tensorrt_libraries(
    cdll: Callable[[str], Any] = ctypes.CDLL,
    import_module: Callable[[str], Any] = importlib.import_module,
) -> str:
    """Make TensorRT's `libnvinfer.so.10` resolvable for ONNX Runtime's TensorRT provider; returns where it came
    from ("library path" or "tensorrt_libs"). The pip wheel's `tensorrt_libs` package loads every library it
    ships by full path when imported; once loaded, a later dlopen by soname (the provider's) finds them.
    ModelFilesError, one line, when TensorRT 10 is neither on the loader path nor pip-installed."""
    try:
        cdll(NVINFER_SONAME)
        return "library path"
    except OSError:
        pass
    try:
        import_module("tensorrt_libs")
        cdll(NVINFER_SONAME)
        return "tensorrt_libs"
    except (ImportError, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFilesError(
            f"ONNX Runtime's TensorRT provider needs TensorRT 10 ({NVINFER_SONAME}), which is neither on the library "
            f"path nor pip-installed here ({detail}): pip install 'guardrt[gpu]' (tensorrt-cu12, from NVIDIA's "
            "index; see the README, GPU deployment) or add TensorRT's lib directory to LD_LIBRARY_PATH") from None


def check_active_providers(requested: Sequence[str], active: Sequence[str], model: str | Path = "") -> None:
    """ModelFilesError, one line, unless every provider asked for is among those ONNX Runtime runs (it falls back
    silently, with only a printed warning, when a provider fails to load)."""
    missing = [p for p in requested if p not in active]
    if missing:
        where = f" for {model}" if model else ""
        raise ModelFilesError(
            f"execution provider(s) {', '.join(missing)} requested{where} but ONNX Runtime is running "
            f"{', '.join(active) or 'nothing'} (it fell back after a provider failed to load; its log above says why)")

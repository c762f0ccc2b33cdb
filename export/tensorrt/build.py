"""Building one TensorRT engine with Polygraphy's loaders (needs a GPU, tensorrt and polygraphy), plus the checks
around it that do not: the source graph must be standard ONNX, and the facts of the build GPU.

`build_engine`: NetworkFromOnnxPath (strongly typed when asked) -> PostprocessNetwork (the fp32 pins) ->
CreateConfig(profiles, flags, precision constraints, timing cache) -> EngineFromNetwork(save_timing_cache) ->
SaveEngine to a temp file, renamed only after the engine's profiles were read back and found identical to the
derived ones. The record it returns (also `build.json`) has the engine's I/O types and its device memory per
profile (`memory.engine_device_memory`).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from guardrt.export.tensorrt.memory import engine_device_memory
from guardrt.export.tensorrt.precision import EngineSettings, apply_fp32_constraints
from guardrt.export.tensorrt.profiles import BucketProfile, check_engine_profiles, polygraphy_profiles
from guardrt.runtime.errors import ModelFilesError, require
from guardrt.runtime.tensorrt import GpuProbe, engine_profiles

__all__ = ["build_engine", "gpu_facts", "non_standard_onnx_ops", "parse_gpu_query"]


def non_standard_onnx_ops(onnx_path: str | Path) -> dict[str, int]:
    """{"domain::Op": count} of nodes outside the standard ONNX domains (e.g. ONNX Runtime's com.microsoft fused
    operators: Attention, GroupQueryAttention, SkipLayerNormalization...), which TensorRT's ONNX parser rejects."""
    onnx = require("onnx", "export")
    model = onnx.load(str(onnx_path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            key = f"{node.domain}::{node.op_type}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    settings: EngineSettings,
    profiles: Sequence[BucketProfile],
    *,
    timing_cache: str | Path | None = None,
    workspace_bytes: int | None = None,
    builder_optimization_level: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build and save one engine with Polygraphy's loaders; returns the build record (also what build.json holds).

    The plan is written atomically (temp file + rename) and only after its optimization profiles were read back
    from the engine and found identical to `profiles`.
    """
    trt = require("tensorrt", "gpu")
    require("polygraphy", "gpu")
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineFromNetwork,
        NetworkFromOnnxPath,
        PostprocessNetwork,
        SaveEngine,
    )

    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    fp32_layers: list[str] = []
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=settings.strongly_typed or None)
    if settings.fp32_islands:
        def keep_fp32(network):
            fp32_layers.extend(apply_fp32_constraints(network, trt, settings.fp32_pins))

        network = PostprocessNetwork(network, keep_fp32, name="guardrt-fp32-islands")
    kwargs = settings.create_config_kwargs(polygraphy_profiles(profiles), timing_cache)
    if workspace_bytes:
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(workspace_bytes)}
    if builder_optimization_level is not None:
        kwargs["builder_optimization_level"] = int(builder_optimization_level)
    config = CreateConfig(**kwargs)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_name(plan_path.name + ".tmp")
    if timing_cache is not None:
        Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"building {settings.precision} engine from {onnx_path} ({len(profiles)} profiles)")
    t0 = time.perf_counter()
    try:
        engine = SaveEngine(
            EngineFromNetwork(network, config=config,
                              save_timing_cache=str(timing_cache) if timing_cache is not None else None),
            str(tmp),
        )()
    except Exception as exc:  # Polygraphy raises PolygraphyException after logging TensorRT's own errors
        tmp.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFilesError(f"TensorRT could not build the {settings.precision} engine from {onnx_path}: {first} "
                              "(TensorRT's log is above)") from None
    seconds = time.perf_counter() - t0
    problems = check_engine_profiles(engine_profiles(engine, trt), profiles)
    if problems:
        tmp.unlink(missing_ok=True)
        raise ModelFilesError(f"engine built from {onnx_path} does not have the derived profiles: {'; '.join(problems)}")
    io_dtypes = {engine.get_tensor_name(i): engine.get_tensor_dtype(engine.get_tensor_name(i)).name
                 for i in range(engine.num_io_tensors)}
    memory = engine_device_memory(engine)
    os.replace(tmp, plan_path)
    return {
        "io_dtypes": io_dtypes,
        "precision": settings.precision,
        "settings": asdict(settings),
        "source_onnx": str(onnx_path),
        "plan": str(plan_path),
        "plan_bytes": plan_path.stat().st_size,
        "device_memory": memory.as_dict(),
        "tensorrt_version": getattr(trt, "__version__", "?"),
        "polygraphy_version": _version("polygraphy"),
        "profiles": [{"index": p.index, "bucket": p.bucket, "batch": list(p.batch), "seq": list(p.seq)}
                     for p in profiles],
        "fp32_layers": len(fp32_layers),
        "fp32_layer_names": fp32_layers[:200],
        "workspace_bytes": workspace_bytes,
        "builder_optimization_level": builder_optimization_level,
        "build_seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def parse_gpu_query(line: str) -> dict[str, Any]:
    """One line of `nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total
    --format=csv,noheader,nounits` -> {gpu, compute_capability, driver, memory_total_bytes} (memory in MiB there)."""
    parts = [p.strip() for p in line.split(",")]
    facts: dict[str, Any] = {"gpu": parts[0], "compute_capability": parts[1] if len(parts) > 1 else "?",
                             "driver": parts[2] if len(parts) > 2 else "?"}
    if len(parts) > 3 and parts[3].isdigit():
        facts["memory_total_bytes"] = int(parts[3]) << 20
    return facts


def gpu_facts(probe: GpuProbe) -> dict[str, Any]:
    """GPU name, compute capability, driver and total memory of the first visible GPU, from nvidia-smi (best
    effort; the plan only runs on that architecture, and the memory is the default deployment budget)."""
    import shutil
    import subprocess

    facts: dict[str, Any] = {"gpu": probe.names[0] if probe.names else probe.detail}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version,memory.total",
                                  "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
            if out:
                facts.update(parse_gpu_query(out[0]))
        except (OSError, subprocess.SubprocessError):
            pass
    return facts

"""`export_tensorrt`: an export directory's validated ONNX -> TensorRT engines + Triton `tensorrt_plan` models.

The steps, each in its own module of this package: profiles from the spec (`profiles`), precision settings and
fp32 pins (`precision`), the build (`build`), the Triton deployment that fits the GPU memory budget (`memory`),
validation against ONNX Runtime fp32 (`validate`), the Triton model (`triton_model` + the repository writer).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrt.export.tensorrt.build import build_engine, gpu_facts, non_standard_onnx_ops
from guardrt.export.tensorrt.memory import (
    DeploymentError,
    DeploymentPlan,
    EngineMemory,
    gpu_memory_budget,
    io_bytes_per_context,
    plan_deployment,
)
from guardrt.export.tensorrt.precision import DEFAULT_FP32_PINS, engine_settings, parse_trt_precisions
from guardrt.export.tensorrt.profiles import BucketProfile, derive_profiles
from guardrt.export.tensorrt.triton_model import repo_model_names, triton_input_type, unavailable_message
from guardrt.export.tensorrt.validate import EngineGateError, validate_engine
from guardrt.runtime.errors import ModelFilesError
from guardrt.runtime.specs import ModelSpec, get_spec
from guardrt.runtime.tensorrt import GpuProbe, TensorRTUnavailableError, missing_gpu_modules, probe_gpu

__all__ = ["TensorRTExport", "export_tensorrt"]


@dataclass
class TensorRTExport:
    """What `export_tensorrt` produced: engines per precision, the Triton model directories, build records."""

    export_dir: Path
    repo: Path
    engines: dict[str, Path] = field(default_factory=dict)
    models: dict[str, Path] = field(default_factory=dict)  # precision -> repo/<name>
    builds: dict[str, dict] = field(default_factory=dict)


def _engine_memory(record: dict[str, Any]) -> EngineMemory | None:
    mem = record.get("device_memory")
    if not mem:
        return None
    return EngineMemory(tuple(int(b) for b in mem.get("per_profile_bytes", ())), int(mem["context_bytes"]))


def _fit_deployment(record: dict[str, Any], spec: ModelSpec, profiles: Sequence[BucketProfile],
                    budget: int | None, instance_count: int) -> DeploymentPlan | None:
    """The deployment of a built engine (at most its own profile count) under `budget`; None without memory facts."""
    memory = _engine_memory(record)
    if memory is None:
        return None
    io = io_bytes_per_context(profiles, record.get("io_dtypes", {}), spec.output_names, len(spec.labels))
    return plan_deployment(memory, int(record.get("plan_bytes", 0)), io, len(profiles), budget, instance_count)


def _build_to_fit(source: Path, plan: Path, settings, spec: ModelSpec, opt_batch: int | None, budget: int | None,
                  instance_count: int, build_kw: dict[str, Any], log: Callable[[str], None] | None):
    """Build with one profile per bucket; when that deployment does not fit `budget`, rebuild with the profile count
    that does. Returns (build record with its `deployment`, the engine's profiles, the plan or None, the one-line
    reason it cannot fit or None)."""
    profiles = derive_profiles(spec, opt_batch)
    record = build_engine(source, plan, settings, profiles, **build_kw)
    try:
        deployment = _fit_deployment(record, spec, profiles, budget, instance_count)
        if deployment is not None and deployment.num_profiles < len(profiles):
            if log:
                log(f"{spec.name} {settings.precision}: {len(profiles)} profiles do not fit the GPU memory budget; "
                    f"rebuilding with {deployment.num_profiles}: {deployment.describe()}")
            profiles = derive_profiles(spec, opt_batch, num_profiles=deployment.num_profiles)
            record = build_engine(source, plan, settings, profiles, **build_kw)
            deployment = _fit_deployment(record, spec, profiles, budget, instance_count)
            if deployment is not None and deployment.num_profiles < len(profiles):
                raise DeploymentError(f"the engine rebuilt with {len(profiles)} profiles needs more than predicted: "
                                      f"{deployment.describe()}")
    except DeploymentError as exc:
        record["deployment"] = {"error": str(exc), "budget_bytes": budget}
        return record, profiles, None, str(exc)
    record["deployment"] = deployment.as_dict() if deployment is not None else None
    return record, profiles, deployment, None


def export_tensorrt(
    export_dir: str | Path,
    spec: ModelSpec | str | None,
    precisions: str | Sequence[str],
    out: str | Path | None = None,
    *,
    name: str | None = None,
    timing_cache: str | Path | None = None,
    opt_batch: int | None = None,
    int8_fp16: bool = False,
    precision_constraints: str = "prefer",
    strongly_typed: bool = False,
    fp32_pins: str = DEFAULT_FP32_PINS,
    workspace_bytes: int | None = None,
    builder_optimization_level: int | None = None,
    instance_count: int = 1,
    gpu_memory_budget_bytes: int | None = None,
    validate: int = 64,
    force: bool = False,
    probe: Callable[[], GpuProbe] | None = None,
    find_missing: Callable[[], list[str]] | None = None,
    log: Callable[[str], None] | None = None,
) -> TensorRTExport:
    """Build TensorRT engines for `precisions` from the export directory and write their Triton models into `out`
    (default: `export_dir/triton_repo`).

    1. profiles from the spec's length buckets (one per bucket), settings per precision (`fp32_pins` policy for
       fp16), standard-ONNX check - all before anything is built;
    2. each engine built (`build_engine`), its device memory read back; the Triton deployment fitted to the GPU
       memory budget (`gpu_memory_budget_bytes` for all models written here together, default the build GPU's
       memory less a reserve, split evenly between the precisions): when one profile per bucket does not fit,
       the engine is rebuilt with fewer, larger profiles (`memory.plan_deployment`);
    3. each engine validated against ONNX Runtime fp32 on `validate` held-out inputs (0: none);
    4. `DIR/tensorrt/<precision>/{model.plan, build.json}` and the Triton model `OUT/<name>` (first precision) or
       `OUT/<name>-<precision>`, with the planned profile count and instances.

    An engine that misses its gate (EngineGateError) or cannot fit the budget (DeploymentError) gets no Triton
    model - raised at the end, after the other precisions - unless `force`. Without a GPU or the `gpu` extra,
    TensorRTUnavailableError after writing the configs; ModelFilesError / InputError for bad inputs, before
    anything is built."""
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.triton_repo import write_model

    manifest = load_export_dir(export_dir, spec=None if spec is None else (spec if isinstance(spec, str) else spec.name))
    spec = get_spec(manifest.spec) if spec is None else (get_spec(spec) if isinstance(spec, str) else spec)
    wanted = parse_trt_precisions(precisions)
    settings = {p: engine_settings(p, manifest.precisions, int8_fp16=int8_fp16,
                                   precision_constraints=precision_constraints, strongly_typed=strongly_typed,
                                   fp32_pins=fp32_pins)
                for p in wanted}
    profiles = derive_profiles(spec, opt_batch)
    sources = {p: manifest.model_path(s.source) for p, s in settings.items()}
    # TensorRT parses standard ONNX only: an export made with ONNX Runtime's fused operators cannot be built.
    graph_pass = manifest.raw.get("graph_pass")
    for p, path in sources.items():
        exotic = non_standard_onnx_ops(path)
        if exotic:
            ops = ", ".join(f"{k} x{v}" for k, v in sorted(exotic.items()))
            raise ModelFilesError(
                f"{path} contains operators TensorRT's ONNX parser does not support ({ops}"
                + (f"; graph pass {graph_pass}" if graph_pass else "")
                + "); export without the ONNX Runtime graph pass for TensorRT")
    repo = Path(out) if out is not None else manifest.path / "triton_repo"
    names = repo_model_names(name or spec.name, wanted)
    result = TensorRTExport(export_dir=manifest.path, repo=repo)

    reasons = []
    gpu = (probe or probe_gpu)()
    if not gpu.found:
        reasons.append(gpu.detail)
    missing = (find_missing or missing_gpu_modules)()
    if missing:
        reasons.append(f"{', '.join(missing)} not installed (pip install 'guardrt[gpu]')")
    if reasons:
        configs = []
        for p in wanted:
            model_dir = write_model(repo, spec=spec, export_dir=manifest.path, flavor="tensorrt", precision=p,
                                    name=names[p], instance_count=instance_count, num_profiles=len(profiles))
            result.models[p] = model_dir
            configs.append(model_dir / "config.pbtxt")
        raise TensorRTUnavailableError(unavailable_message(reasons, sources, configs))

    facts = gpu_facts(gpu)
    budget = gpu_memory_budget(facts.get("memory_total_bytes"), len(wanted), explicit_bytes=gpu_memory_budget_bytes)
    if budget is None and log:
        log("GPU memory unknown (nvidia-smi gave none): the Triton deployment is not fitted to a memory budget "
            "(pass --gpu-memory-budget-gb)")
    engine_root = manifest.path / "tensorrt"
    cache = Path(timing_cache) if timing_cache is not None else engine_root / "timing.cache"
    build_kw = dict(timing_cache=cache, workspace_bytes=workspace_bytes,
                    builder_optimization_level=builder_optimization_level, log=log)
    gate_failures, memory_failures = [], []
    for p in wanted:
        plan = engine_root / p / "model.plan"
        record, built, deployment, misfit = _build_to_fit(sources[p], plan, settings[p], spec, opt_batch, budget,
                                                          instance_count, build_kw, log)
        record.update(facts, spec=spec.name, timing_cache=str(cache))
        if validate:
            res = record["validation"] = validate_engine(plan, manifest.path, spec, p, n=int(validate))
            if log:
                log(f"{spec.name} TensorRT {p} vs ONNX Runtime fp32 on {res['n']} held-out inputs: max|Δlogit| "
                    f"{res['max_abs_diff']:.3g} (gate {res['atol']:g}), agreement {res['agreement']:.3f} "
                    f"(gate {res['min_agreement']:g}): {'ok' if res['passed'] else 'FAILED'}")
        (plan.parent / "build.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        result.engines[p], result.builds[p] = plan, record
        if not force:
            if validate and not record["validation"]["passed"]:
                v = record["validation"]
                gate_failures.append(f"{p}: max |Δlogit| {v['max_abs_diff']:.3g} (gate {v['atol']:g}), agreement "
                                     f"{v['agreement']:.3f} (gate {v['min_agreement']:g})")
                continue
            if misfit:
                memory_failures.append(f"{p}: {misfit}")
                continue
        result.models[p] = write_model(repo, spec=spec, export_dir=manifest.path, flavor="tensorrt", precision=p,
                                       plan_path=plan, name=names[p], instance_count=instance_count,
                                       num_profiles=len(built),
                                       input_data_type=triton_input_type(record["io_dtypes"], spec))
        if log:
            memory_line = f"; Triton GPU memory {deployment.describe()}" if deployment is not None else ""
            log(f"{spec.name} {p}: {plan} ({record['plan_bytes'] / 1e6:.1f} MB, {record['build_seconds']} s, "
                f"{record['fp32_layers']} layers kept fp32, {len(built)} profiles{memory_line}) -> Triton model "
                f"{result.models[p]}")
    if gate_failures:
        raise EngineGateError(f"{spec.name} TensorRT engines missed their gate against ONNX Runtime fp32: "
                              f"{' | '.join(gate_failures + memory_failures)}; no Triton model written for them "
                              f"(engines and details in {engine_root}; --force keeps them)")
    if memory_failures:
        raise DeploymentError(f"{spec.name} TensorRT engines do not fit the GPU memory budget: "
                              f"{' | '.join(memory_failures)}; no Triton model written for them (engines and "
                              f"device memory in {engine_root}/*/build.json; --force keeps them)")
    return result

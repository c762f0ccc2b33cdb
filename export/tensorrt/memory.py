"""GPU memory of a TensorRT engine served by Triton 24.10, and the deployment that fits a memory budget.

What Triton 24.10's TensorRT backend allocates for a `tensorrt_plan` model (read from tensorrt_backend r24.10,
src/model_state.cc and src/instance_state.cc; not yet measured on a GPU):

* per instance, its own deserialized engine: engines with dynamic shapes are not shared between instances
  (`ModelState::CreateEngine` disables sharing when an I/O shape has -1) - about the plan's size (weights + kernels);
* per instance, one execution context per profile listed in its `instance_group` (`InitOptimizationProfiles`),
  created with TensorRT's default allocation strategy, kSTATIC: each context holds the device memory of the
  engine's LARGEST profile (`device_memory_size_v2`), whatever profile it runs. The ON_PROFILE_CHANGE strategy,
  which would size a context by its own profile, reached tensorrt_backend only in r25.05;
* plus the I/O buffers of each context (tiny here: token ids and logits).

So for N instances of an engine with k profiles: N x (engine + k x (largest profile + I/O)). With one profile per
length bucket, intent-safety (6 buckets, batch 16 x 4,096 at the top) would hold 6 copies of the 16 x 4,096
activation memory per instance. The deployment chosen here:

* fewer, larger profiles: the most profiles (best kernel tuning, up to one per bucket) whose deployment fits the
  budget; the engine is rebuilt with grouped buckets when that is fewer than it has (the largest shape, hence the
  context size, stays the same, so the prediction holds; it is checked on the rebuilt engine);
* every instance lists every profile: Triton's dynamic batcher gives a batch to any free instance whatever its
  shape, so instances owning a subset of profiles would fail the shapes they lack (and, with static allocation,
  would not need less memory per context anyway);
* not separate models per length range: each would be its own engine (weights again, per instance), and the
  client would have to route by length.

The per-profile device memory (`get_device_memory_size_for_profile_v2`) is recorded too: it is what a context
would need with ON_PROFILE_CHANGE (newer Triton) or a runner that allocates per profile.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from guardrt.runtime.bucket_profiles import BucketProfile
from guardrt.runtime.errors import GuardrtError, InputError

__all__ = [
    "DEFAULT_RESERVE_BYTES",
    "DeploymentError",
    "DeploymentPlan",
    "EngineMemory",
    "engine_device_memory",
    "gpu_memory_budget",
    "io_bytes_per_context",
    "plan_deployment",
    "triton_memory_bytes",
]

GIB = 1 << 30
# Kept free for what the plan does not count: the CUDA context (a few hundred MB per process), Triton's CUDA
# memory pool (64 MB by default), cuBLAS / cuDNN handles. A guess, not a measurement.
DEFAULT_RESERVE_BYTES = 1 * GIB
_ITEMSIZE = {"FLOAT": 4, "HALF": 2, "BF16": 2, "INT8": 1, "UINT8": 1, "INT32": 4, "INT64": 8, "BOOL": 1}


class DeploymentError(GuardrtError):
    """An engine's Triton deployment cannot fit the GPU memory budget; its Triton model was not written."""


@dataclass(frozen=True)
class EngineMemory:
    """Device memory an engine's execution contexts need: per profile, and what one context allocates with
    TensorRT's default static strategy (the largest profile's)."""

    per_profile: tuple[int, ...]
    context_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"per_profile_bytes": list(self.per_profile), "context_bytes": self.context_bytes}


def engine_device_memory(engine) -> EngineMemory:
    """Read an engine's device memory (TensorRT 10.5 Python API): `get_device_memory_size_for_profile_v2(p)` per
    profile and `device_memory_size_v2` for a statically allocated context; the pre-10.1 names
    (`get_device_memory_size_for_profile`, `device_memory_size`, deprecated in 10.1) when the v2 ones are absent."""
    getter = getattr(engine, "get_device_memory_size_for_profile_v2", None) or getattr(
        engine, "get_device_memory_size_for_profile", None)
    count = int(engine.num_optimization_profiles)
    per_profile = tuple(int(getter(p)) for p in range(count)) if getter is not None else ()
    static = getattr(engine, "device_memory_size_v2", None)
    if static is None:
        static = getattr(engine, "device_memory_size", None)
    context = int(static) if static is not None else max(per_profile, default=0)
    return EngineMemory(per_profile, context)


def io_bytes_per_context(profiles: Sequence[BucketProfile], io_dtypes: Mapping[str, str], output_names: Sequence[str],
                         num_labels: int) -> int:
    """Bytes of one context's I/O buffers at the largest shape of the profiles: [max_batch, max_seq] per input in
    its engine type, [max_batch, num_labels] per output."""
    max_batch = max(p.batch[2] for p in profiles)
    max_seq = max(p.seq[2] for p in profiles)
    inputs = profiles[0].input_names
    total = sum(max_batch * max_seq * _ITEMSIZE.get(io_dtypes.get(n, "INT64"), 8) for n in inputs)
    total += sum(max_batch * num_labels * _ITEMSIZE.get(io_dtypes.get(n, "FLOAT"), 4) for n in output_names)
    return total


def triton_memory_bytes(engine_bytes: int, context_bytes: int, io_bytes: int, num_profiles: int,
                        instance_count: int) -> int:
    """GPU memory of one tensorrt_plan model in Triton 24.10 (module docstring):
    instances x (engine + profiles x (context + I/O))."""
    return instance_count * (engine_bytes + num_profiles * (context_bytes + io_bytes))


@dataclass(frozen=True)
class DeploymentPlan:
    """How a tensorrt_plan model is deployed: its engine's profile count and its instances, with the memory
    prediction behind the choice. `budget_bytes` None: no budget known, nothing was fitted."""

    num_profiles: int
    instance_count: int
    engine_bytes: int
    context_bytes: int
    io_bytes: int
    predicted_bytes: int
    budget_bytes: int | None

    @property
    def fits(self) -> bool | None:
        return None if self.budget_bytes is None else self.predicted_bytes <= self.budget_bytes

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits}

    def describe(self) -> str:
        budget = "no budget" if self.budget_bytes is None else f"budget {self.budget_bytes / GIB:.2f} GiB"
        return (f"{self.instance_count} instance(s) x (engine {self.engine_bytes / GIB:.2f} GiB + {self.num_profiles} "
                f"profile context(s) x {(self.context_bytes + self.io_bytes) / GIB:.2f} GiB) = "
                f"{self.predicted_bytes / GIB:.2f} GiB ({budget})")


def plan_deployment(memory: EngineMemory, engine_bytes: int, io_bytes: int, max_profiles: int,
                    budget_bytes: int | None, instance_count: int = 1) -> DeploymentPlan:
    """The deployment with the most profiles (at most `max_profiles`, one per bucket) whose Triton memory fits
    `budget_bytes` with `instance_count` instances. `memory` is the built engine's; a regrouped engine keeps the
    same largest shape, so its context size is predicted to stay `memory.context_bytes`. No budget: the engine as
    built. DeploymentError (one line, with the instance count that would fit) when even one profile does not."""
    if instance_count < 1:
        raise InputError(f"instance count must be >= 1, got {instance_count}")
    if max_profiles < 1:
        raise InputError(f"an engine has at least one profile, got {max_profiles}")

    def plan(k: int) -> DeploymentPlan:
        predicted = triton_memory_bytes(engine_bytes, memory.context_bytes, io_bytes, k, instance_count)
        return DeploymentPlan(k, instance_count, int(engine_bytes), memory.context_bytes, int(io_bytes), predicted,
                              None if budget_bytes is None else int(budget_bytes))

    if budget_bytes is None:
        return plan(max_profiles)
    for k in range(max_profiles, 0, -1):
        candidate = plan(k)
        if candidate.fits:
            return candidate
    one = plan(1)
    per_instance = one.predicted_bytes // instance_count
    fitting = int(budget_bytes // per_instance) if per_instance else 0
    raise DeploymentError(
        f"the engine does not fit the GPU memory budget even with one profile: {one.describe()}; "
        + (f"at most {fitting} instance(s) would fit" if fitting else "not even one instance fits")
        + " (lower the instance count or the spec's max_batch_size, or raise the budget)")


def gpu_memory_budget(total_bytes: int | None, models: int, reserve_bytes: int = DEFAULT_RESERVE_BYTES,
                      explicit_bytes: int | None = None) -> int | None:
    """Bytes each of `models` tensorrt_plan models may use: an explicit budget (all of them together) or the GPU's
    total memory less `reserve_bytes`, split evenly. None when neither is known."""
    if models < 1:
        raise InputError(f"at least one model shares the budget, got {models}")
    if explicit_bytes is not None:
        if explicit_bytes <= 0:
            raise InputError(f"GPU memory budget must be positive, got {explicit_bytes} bytes")
        return int(explicit_bytes) // models
    if total_bytes is None:
        return None
    usable = int(total_bytes) - int(reserve_bytes)
    if usable <= 0:
        raise InputError(f"GPU memory {total_bytes} bytes leaves nothing after the {reserve_bytes}-byte reserve")
    return usable // models

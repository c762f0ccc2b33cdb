"""The bucket/profile contract, written once: which input shapes a TensorRT engine (or ONNX Runtime's TensorRT
provider) is built for, derived from a spec's length buckets and batch size.

Native Triton backends batch only same-shape requests, so the thin client pads each sequence to its spec length
bucket (`ModelSpec.bucket_for`). An engine therefore needs optimization profiles that hold every bucket shape at every
batch Triton's dynamic batcher may form (1..max_batch_size):

* one profile per length bucket by default: sequence (previous bucket + 1)..bucket, opt = bucket (the shape Triton
  actually runs), batch 1..max_batch_size with opt at the largest preferred batch size;
* or fewer, larger profiles (`num_profiles`): consecutive buckets grouped, each group one profile from the first
  length it holds to its largest bucket (opt there). Fewer profiles cost less GPU memory in Triton (see
  guardrt.export.tensorrt.memory) and tune kernels for fewer shapes.

Together the profiles cover 1..max_length exactly once, so at most one profile fits a shape. Used by the engine
builder (guardrt.export.tensorrt), the Triton tensorrt_plan config (`runtime/triton_repo.py`), and ONNX Runtime's
TensorRT provider options (`runtime/ort_providers.py`). Reads only `spec.length_buckets`, `max_length`,
`max_batch_size`, `preferred_batch_sizes` and `input_names`. Pure Python.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from guardrt.runtime.errors import InputError
from guardrt.runtime.specs import ModelSpec, get_spec

__all__ = [
    "BucketProfile",
    "ShapeRange",
    "default_opt_batch",
    "derive_profiles",
    "group_buckets",
    "spec_buckets",
]

# (min, opt, max) shapes of one input in one optimization profile.
ShapeRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class BucketProfile:
    """One optimization profile: every input gets [batch, seq] with these (min, opt, max) ranges.

    `bucket` is the largest length bucket the profile holds (its max and opt sequence length); `buckets` all of them
    (just `bucket` for the default one-profile-per-bucket engines)."""

    index: int
    bucket: int
    batch: tuple[int, int, int]
    seq: tuple[int, int, int]
    input_names: tuple[str, ...]
    buckets: tuple[int, ...] = ()

    def shapes(self) -> dict[str, ShapeRange]:
        """{input: ((min_b, min_s), (opt_b, opt_s), (max_b, max_s))} - the plain-data form of the profile."""
        rng = tuple((b, s) for b, s in zip(self.batch, self.seq))
        return {name: rng for name in self.input_names}  # type: ignore[misc]

    def contains(self, batch: int, seq: int) -> bool:
        return self.batch[0] <= batch <= self.batch[2] and self.seq[0] <= seq <= self.seq[2]


def _spec(spec: ModelSpec | str) -> ModelSpec:
    return get_spec(spec) if isinstance(spec, str) else spec


def spec_buckets(spec: ModelSpec | str) -> tuple[int, ...]:
    """The spec's length buckets (just max_length when it has none), checked: ascending, positive, last = max_length."""
    spec = _spec(spec)
    buckets = tuple(spec.length_buckets) or (spec.max_length,)
    if list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
        raise InputError(f"spec {spec.name}: length buckets must be ascending positive integers, got {buckets}")
    if buckets[-1] != spec.max_length:
        raise InputError(f"spec {spec.name}: the last length bucket must equal max_length {spec.max_length}")
    return buckets


def default_opt_batch(spec: ModelSpec | str) -> int:
    """The batch TensorRT tunes kernels for: the largest preferred batch size the spec allows (what the dynamic
    batcher forms under load), else max_batch_size."""
    spec = _spec(spec)
    sizes = [s for s in spec.preferred_batch_sizes if 1 <= s <= spec.max_batch_size]
    return max(sizes) if sizes else spec.max_batch_size


def group_buckets(buckets: Sequence[int], num_groups: int) -> list[tuple[int, ...]]:
    """Consecutive buckets in `num_groups` groups of near-equal size; the extra buckets go to the shortest groups
    (merging short buckets costs the least: their padded shapes are cheap to run on kernels tuned for longer ones)."""
    n = len(buckets)
    if not 1 <= num_groups <= n:
        raise InputError(f"cannot group {n} length buckets into {num_groups} profiles (1..{n})")
    size, extra = divmod(n, num_groups)
    groups, start = [], 0
    for g in range(num_groups):
        end = start + size + (1 if g < extra else 0)
        groups.append(tuple(buckets[start:end]))
        start = end
    return groups


def derive_profiles(spec: ModelSpec | str, opt_batch: int | None = None,
                    num_profiles: int | None = None) -> list[BucketProfile]:
    """The engine's optimization profiles (see the module docstring): one per length bucket, or `num_profiles`
    groups of consecutive buckets. Every profile: batch 1..max_batch_size (opt `opt_batch`, default
    `default_opt_batch`), sequence (previous profile's max + 1)..its largest bucket, opt = that bucket."""
    spec = _spec(spec)
    if spec.max_batch_size < 1:
        raise InputError(f"spec {spec.name}: max_batch_size must be >= 1 for TensorRT profiles")
    buckets = spec_buckets(spec)
    opt_b = default_opt_batch(spec) if opt_batch is None else int(opt_batch)
    if not 1 <= opt_b <= spec.max_batch_size:
        raise InputError(f"opt batch {opt_b} is outside 1..{spec.max_batch_size}")
    groups = [(b,) for b in buckets] if num_profiles is None else group_buckets(buckets, int(num_profiles))
    profiles, lo = [], 1
    for index, group in enumerate(groups):
        top = group[-1]
        profiles.append(BucketProfile(index, top, (1, opt_b, spec.max_batch_size), (lo, top, top),
                                      tuple(spec.input_names), tuple(group)))
        lo = top + 1
    return profiles

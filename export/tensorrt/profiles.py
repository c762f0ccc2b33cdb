"""Optimization profiles on the build side: the bucket/profile contract (`guardrt.runtime.bucket_profiles`, derived
once for the builder, the Triton config and ONNX Runtime's TensorRT provider) turned into Polygraphy profiles, and
the check that a built engine holds exactly the derived ones."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from guardrt.runtime.bucket_profiles import BucketProfile, ShapeRange, default_opt_batch, derive_profiles
from guardrt.runtime.errors import require

__all__ = ["BucketProfile", "check_engine_profiles", "default_opt_batch", "derive_profiles", "polygraphy_profiles"]


def polygraphy_profiles(profiles: Sequence[BucketProfile]) -> list:
    """The profiles as `polygraphy.backend.trt.Profile` objects (what CreateConfig(profiles=...) takes)."""
    require("polygraphy", "gpu")
    from polygraphy.backend.trt import Profile

    out = []
    for p in profiles:
        prof = Profile()
        for name, (lo, opt, hi) in p.shapes().items():
            prof.add(name, min=lo, opt=opt, max=hi)
        out.append(prof)
    return out


def check_engine_profiles(actual: Sequence[Mapping[str, ShapeRange]], expected: Sequence[BucketProfile]) -> list[str]:
    """Differences between an engine's profiles (`engine_profiles`) and the derived ones; [] when identical."""
    problems = []
    if len(actual) != len(expected):
        problems.append(f"engine has {len(actual)} optimization profiles, expected {len(expected)}")
    for got, want in zip(actual, expected):
        want_shapes = want.shapes()
        if set(got) != set(want_shapes):
            problems.append(f"profile {want.index}: inputs {sorted(got)} != {sorted(want_shapes)}")
            continue
        for name, rng in want_shapes.items():
            got_rng = tuple(tuple(int(d) for d in dims) for dims in got[name])
            if got_rng != rng:
                problems.append(f"profile {want.index} {name}: engine {got_rng} != derived {rng}")
    return problems

"""GPU memory of TensorRT engines in Triton 24.10 and the deployment fitted to a budget (export/tensorrt/memory.py),
against fake engines: the per-profile memory read-back, the memory model, the choice of fewer/larger profiles, and
`export_tensorrt` rebuilding an engine that does not fit. Not a GPU result: real engines' numbers come from
`make gpu-check` on a GPU host."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from guardrt.export.tensorrt import (
    DeploymentError,
    EngineMemory,
    derive_profiles,
    engine_device_memory,
    export_tensorrt,
    gpu_memory_budget,
    io_bytes_per_context,
    parse_gpu_query,
    plan_deployment,
    triton_memory_bytes,
)
from guardrt.runtime.errors import InputError
from guardrt.runtime.specs import get_spec
from guardrt.runtime.tensorrt import GpuProbe

try:
    from .test_tensorrt_export import TINY_SPEC, make_export_dir
except ImportError:  # tests/export collected without a package __init__
    from test_tensorrt_export import TINY_SPEC, make_export_dir

GIB = 1 << 30
MIB = 1 << 20


class _EngineV2:
    """TensorRT >= 10.1's API: per-profile `get_device_memory_size_for_profile_v2`, `device_memory_size_v2`."""

    def __init__(self, per_profile):
        self.per_profile = list(per_profile)
        self.num_optimization_profiles = len(self.per_profile)
        self.device_memory_size_v2 = max(self.per_profile)  # kSTATIC: a context holds the largest profile's

    def get_device_memory_size_for_profile_v2(self, p):
        return self.per_profile[p]


class _EngineV1:
    """Only the pre-10.1 names (deprecated in 10.1, still in 10.5)."""

    def __init__(self, per_profile):
        self.per_profile = list(per_profile)
        self.num_optimization_profiles = len(self.per_profile)
        self.device_memory_size = max(self.per_profile)

    def get_device_memory_size_for_profile(self, p):
        return self.per_profile[p]


def test_engine_device_memory_reads_every_profile():
    per = [10 * MIB, 20 * MIB, 80 * MIB, 300 * MIB]
    for engine in (_EngineV2(per), _EngineV1(per)):
        mem = engine_device_memory(engine)
        assert mem == EngineMemory(tuple(per), 300 * MIB)
        assert mem.as_dict() == {"per_profile_bytes": per, "context_bytes": 300 * MIB}

    class Bare:  # neither per-profile getter: the static size alone
        num_optimization_profiles = 2
        device_memory_size_v2 = 5

    assert engine_device_memory(Bare()) == EngineMemory((), 5)


def test_triton_memory_is_instances_times_engine_plus_one_static_context_per_profile():
    # intent-safety-like: 6 bucket profiles; every context holds the largest profile (16 x 4,096), not its own
    assert triton_memory_bytes(engine_bytes=8 * GIB, context_bytes=4 * GIB, io_bytes=MIB, num_profiles=6,
                               instance_count=2) == 2 * (8 * GIB + 6 * (4 * GIB + MIB))


def test_plan_keeps_one_profile_per_bucket_when_it_fits_and_groups_buckets_when_not():
    mem = engine_device_memory(_EngineV2([100 * MIB, 200 * MIB, 400 * MIB, 800 * MIB, 1600 * MIB, 3 * GIB]))
    roomy = plan_deployment(mem, 8 * GIB, MIB, 6, budget_bytes=80 * GIB)
    assert roomy.num_profiles == 6 and roomy.fits and roomy.predicted_bytes == 8 * GIB + 6 * (3 * GIB + MIB)
    tight = plan_deployment(mem, 8 * GIB, MIB, 6, budget_bytes=20 * GIB)
    assert tight.num_profiles == 3 and tight.fits  # 8 + 4 x (3 GiB + 1 MiB) > 20 GiB >= 8 + 3 x (3 GiB + 1 MiB)
    assert tight.predicted_bytes <= 20 * GIB < plan_deployment(mem, 8 * GIB, MIB, 6, None).predicted_bytes
    two = plan_deployment(mem, 8 * GIB, MIB, 6, budget_bytes=40 * GIB, instance_count=2)
    assert two.num_profiles == 3 and two.instance_count == 2 and two.predicted_bytes <= 40 * GIB
    unplanned = plan_deployment(mem, 8 * GIB, MIB, 6, budget_bytes=None)
    assert unplanned.num_profiles == 6 and unplanned.fits is None and "no budget" in unplanned.describe()
    with pytest.raises(DeploymentError) as err:
        plan_deployment(mem, 8 * GIB, MIB, 6, budget_bytes=30 * GIB, instance_count=4)
    msg = str(err.value)
    assert "\n" not in msg and "even with one profile" in msg and "at most 2 instance(s) would fit" in msg
    with pytest.raises(DeploymentError, match="not even one instance fits"):
        plan_deployment(mem, 8 * GIB, MIB, 6, budget_bytes=10 * GIB)
    with pytest.raises(InputError):
        plan_deployment(mem, 8 * GIB, MIB, 6, budget_bytes=None, instance_count=0)


def test_io_bytes_follow_the_largest_shape_and_engine_types():
    spec = get_spec("intent-safety")
    profiles = derive_profiles(spec)
    int64 = io_bytes_per_context(profiles, {"input_ids": "INT64", "attention_mask": "INT64", "logits": "FLOAT"},
                                 spec.output_names, 2)
    assert int64 == 2 * 16 * 4096 * 8 + 16 * 2 * 4
    int32 = io_bytes_per_context(profiles, {"input_ids": "INT32", "attention_mask": "INT32", "logits": "FLOAT"},
                                 spec.output_names, 2)
    assert int32 == 2 * 16 * 4096 * 4 + 16 * 2 * 4


def test_budget_defaults_to_the_gpu_less_a_reserve_split_between_models():
    assert gpu_memory_budget(80 * GIB, 2) == 79 * GIB // 2
    assert gpu_memory_budget(80 * GIB, 1, reserve_bytes=0) == 80 * GIB
    assert gpu_memory_budget(None, 2) is None
    assert gpu_memory_budget(None, 2, explicit_bytes=30 * GIB) == 15 * GIB  # explicit: for all models together
    with pytest.raises(InputError):
        gpu_memory_budget(GIB // 2, 1)
    with pytest.raises(InputError):
        gpu_memory_budget(80 * GIB, 1, explicit_bytes=0)


def test_gpu_query_line_gives_the_memory_budget():
    facts = parse_gpu_query("NVIDIA H100 80GB HBM3, 9.0, 560.35.03, 81559")
    assert facts == {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "driver": "560.35.03",
                     "memory_total_bytes": 81559 * MIB}
    assert "memory_total_bytes" not in parse_gpu_query("Some GPU, 8.6, 550.1, [N/A]")


# -- export_tensorrt's GPU half with a fake build that reports memory like a real engine would ---------------------
FOUR_BUCKETS = dataclasses.replace(TINY_SPEC, length_buckets=(4, 8, 12, 16))


def _fake_gpu_half(monkeypatch, memory_total=None):
    """build_engine stand-in: each profile's device memory grows with its largest shape (1 MiB per batch x token);
    a context holds the largest profile's (TensorRT's static allocation)."""
    import guardrt.export.tensorrt.pipeline as pipeline

    builds = []

    def fake_build_engine(onnx_path, plan_path, settings, profiles, **kw):
        Path(plan_path).parent.mkdir(parents=True, exist_ok=True)
        Path(plan_path).write_bytes(b"x" * 1000)
        per = [p.batch[2] * p.seq[2] * MIB for p in profiles]
        builds.append(len(profiles))
        return {"precision": settings.precision, "plan_bytes": 100 * MIB, "build_seconds": 1.0, "fp32_layers": 0,
                "io_dtypes": {"input_ids": "INT64", "attention_mask": "INT64", "logits": "FLOAT"},
                "device_memory": {"per_profile_bytes": per, "context_bytes": max(per)},
                "profiles": [{"index": p.index, "seq": list(p.seq)} for p in profiles]}

    def fake_validate(plan, export_dir, spec, precision, n=64, **kw):
        return {"max_abs_diff": 0.0, "agreement": 1.0, "finite": True, "n": n, "atol": 1.0, "min_agreement": 0.0,
                "passed": True}

    facts = {"gpu": "stand-in", "compute_capability": "9.0"}
    if memory_total is not None:
        facts["memory_total_bytes"] = memory_total
    monkeypatch.setattr(pipeline, "build_engine", fake_build_engine)
    monkeypatch.setattr(pipeline, "validate_engine", fake_validate)
    monkeypatch.setattr(pipeline, "gpu_facts", lambda probe: dict(facts))
    env = dict(probe=lambda: GpuProbe(True, "GPU 0: stand-in", ("GPU 0: stand-in",)), find_missing=lambda: [])
    return env, builds


def _profiles_in_config(repo: Path, model: str) -> list[str]:
    from guardrt.runtime.triton_repo import parse_config

    cfg = parse_config((repo / model / "config.pbtxt").read_text())
    (group,) = cfg.instance_group
    return list(group.profile), group.count


def test_an_engine_over_budget_is_rebuilt_with_fewer_profiles_and_served_with_them(tmp_path, monkeypatch):
    pytest.importorskip("tritonclient.grpc")
    env, builds = _fake_gpu_half(monkeypatch)
    export_dir = make_export_dir(tmp_path / "exp", spec=FOUR_BUCKETS)
    # per instance: engine 100 MiB + k x (context 4 x 16 = 64 MiB + I/O): 4 profiles ~356 MiB, 2 profiles ~228 MiB
    result = export_tensorrt(export_dir, FOUR_BUCKETS, "fp16", out=tmp_path / "repo", gpu_memory_budget_bytes=240 * MIB,
                             **env)
    assert builds == [4, 2]  # built per bucket, measured, rebuilt with the profile count that fits
    record = json.loads((export_dir / "tensorrt" / "fp16" / "build.json").read_text())
    assert record["deployment"]["num_profiles"] == 2 and record["deployment"]["fits"] is True
    assert record["deployment"]["predicted_bytes"] <= record["deployment"]["budget_bytes"] == 240 * MIB
    assert record["device_memory"]["per_profile_bytes"] == [4 * 8 * MIB, 4 * 16 * MIB]
    assert _profiles_in_config(tmp_path / "repo", "rejection") == (["0", "1"], 1)
    assert result.builds["fp16"]["deployment"]["num_profiles"] == 2


def test_default_budget_is_the_build_gpu_and_a_fitting_engine_is_not_rebuilt(tmp_path, monkeypatch):
    pytest.importorskip("tritonclient.grpc")
    env, builds = _fake_gpu_half(monkeypatch, memory_total=80 * GIB)
    export_dir = make_export_dir(tmp_path / "exp", spec=FOUR_BUCKETS)
    export_tensorrt(export_dir, FOUR_BUCKETS, "fp16,int8", out=tmp_path / "repo", instance_count=2, **env)
    assert builds == [4, 4]
    record = json.loads((export_dir / "tensorrt" / "int8" / "build.json").read_text())
    assert record["deployment"]["budget_bytes"] == (80 * GIB - GIB) // 2  # two models share the GPU
    assert _profiles_in_config(tmp_path / "repo", "rejection-int8") == (["0", "1", "2", "3"], 2)


def test_an_engine_that_cannot_fit_gets_no_triton_model_unless_forced(tmp_path, monkeypatch):
    pytest.importorskip("tritonclient.grpc")
    env, builds = _fake_gpu_half(monkeypatch)
    export_dir = make_export_dir(tmp_path / "exp", spec=FOUR_BUCKETS)
    repo = tmp_path / "repo"
    with pytest.raises(DeploymentError) as err:
        export_tensorrt(export_dir, FOUR_BUCKETS, "fp16", out=repo, gpu_memory_budget_bytes=150 * MIB, **env)
    msg = str(err.value)
    assert "\n" not in msg and "fp16: the engine does not fit" in msg and "--force keeps them" in msg
    assert not (repo / "rejection").exists()
    record = json.loads((export_dir / "tensorrt" / "fp16" / "build.json").read_text())
    assert "does not fit" in record["deployment"]["error"] and record["device_memory"]["context_bytes"] == 64 * MIB
    export_tensorrt(export_dir, FOUR_BUCKETS, "fp16", out=repo, gpu_memory_budget_bytes=150 * MIB, force=True, **env)
    assert _profiles_in_config(repo, "rejection") == (["0", "1", "2", "3"], 1)


def test_repo_writer_takes_the_profile_count_of_a_regrouped_engine_from_build_json(tmp_path):
    """`guardrt repo --flavor tensorrt --plan P` must list the engine's profiles, not one per bucket, when the
    engine was rebuilt with fewer profiles to fit the GPU memory budget."""
    pytest.importorskip("tritonclient.grpc")
    from guardrt.runtime.triton_repo import write_model

    spec = get_spec("intent-safety")
    plan = tmp_path / "tensorrt" / "fp16" / "model.plan"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"plan")
    model = write_model(tmp_path / "repo", spec=spec, flavor="tensorrt", precision="fp16", plan_path=plan)
    assert _profiles_in_config(tmp_path / "repo", model.name)[0] == [str(i) for i in range(6)]  # no build.json
    grouped = [{"index": p.index, "seq": list(p.seq)} for p in derive_profiles(spec, num_profiles=2)]
    (plan.parent / "build.json").write_text(json.dumps({"profiles": grouped}))
    model = write_model(tmp_path / "repo", spec=spec, flavor="tensorrt", precision="fp16", plan_path=plan)
    assert _profiles_in_config(tmp_path / "repo", model.name)[0] == ["0", "1"]

"""TensorRT optimization profiles derived from the specs, and their consistency with the Triton tensorrt_plan config.

Pure data: no GPU, no TensorRT. (Polygraphy's Profile is pure Python and is installed by the dev extra.)
"""
from __future__ import annotations

import dataclasses

import pytest

from guardrt.export.tensorrt import (
    BucketProfile,
    check_engine_profiles,
    default_opt_batch,
    derive_profiles,
    polygraphy_profiles,
)
from guardrt.runtime.errors import InputError
from guardrt.runtime.specs import get_spec, spec_names
from guardrt.runtime.tensorrt import select_profile


@pytest.mark.parametrize("spec_name", spec_names(graph="classifier_logits"))
def test_one_profile_per_bucket_covering_every_length_exactly_once(spec_name):
    spec = get_spec(spec_name)
    profiles = derive_profiles(spec)
    assert [p.bucket for p in profiles] == list(spec.length_buckets)
    assert [p.index for p in profiles] == list(range(len(profiles)))
    assert profiles[0].seq[0] == 1
    assert profiles[-1].seq[2] == spec.max_length
    for prev, cur in zip(profiles, profiles[1:]):
        assert cur.seq[0] == prev.seq[2] + 1  # contiguous, disjoint
    for p in profiles:
        lo, opt, hi = p.seq
        assert lo <= opt <= hi == p.bucket
        assert opt == p.bucket  # the client pads to the bucket: that is the shape Triton runs
    # every length lands in exactly one profile, the one of its bucket
    for length in range(1, spec.max_length + 1, 7):
        holders = [p.index for p in profiles if p.contains(1, length)]
        assert holders == [spec.length_buckets.index(spec.bucket_for(length))]


@pytest.mark.parametrize("spec_name", spec_names(graph="classifier_logits"))
def test_every_profile_has_the_batch_range_tritons_dynamic_batcher_uses(spec_name):
    spec = get_spec(spec_name)
    for p in derive_profiles(spec):
        assert p.batch[0] == 1 and p.batch[2] == spec.max_batch_size
        assert p.batch[1] == default_opt_batch(spec) == max(spec.preferred_batch_sizes)
        shapes = p.shapes()
        assert set(shapes) == set(spec.input_names)
        for lo, opt, hi in shapes.values():
            assert lo == (1, p.seq[0]) and opt == (p.batch[1], p.bucket) and hi == (spec.max_batch_size, p.bucket)


def test_opt_batch_override_and_bounds():
    spec = get_spec("rejection")
    assert {p.batch for p in derive_profiles(spec, opt_batch=8)} == {(1, 8, spec.max_batch_size)}
    for bad in (0, spec.max_batch_size + 1):
        with pytest.raises(InputError, match="opt batch"):
            derive_profiles(spec, opt_batch=bad)


def test_spec_without_buckets_gets_one_profile_up_to_max_length():
    spec = dataclasses.replace(get_spec("rejection"), name="nobuckets", length_buckets=())
    (only,) = derive_profiles(spec)
    assert only.seq == (1, spec.max_length, spec.max_length) and only.bucket == spec.max_length


def test_bad_buckets_are_refused():
    base = get_spec("rejection")
    with pytest.raises(InputError, match="ascending"):
        derive_profiles(dataclasses.replace(base, length_buckets=(64, 32, 512)))
    with pytest.raises(InputError, match="max_length"):
        derive_profiles(dataclasses.replace(base, length_buckets=(32, 64)))
    with pytest.raises(InputError, match="max_batch_size"):
        derive_profiles(dataclasses.replace(base, max_batch_size=0))


@pytest.mark.parametrize("spec_name", spec_names(graph="classifier_logits"))
def test_polygraphy_profiles_carry_the_same_shapes(spec_name):
    pytest.importorskip("polygraphy")
    derived = derive_profiles(spec_name)
    converted = polygraphy_profiles(derived)
    assert len(converted) == len(derived)
    for prof, p in zip(converted, derived):
        assert list(prof.keys()) == list(p.input_names)
        for name, (lo, opt, hi) in p.shapes().items():
            assert (tuple(prof[name].min), tuple(prof[name].opt), tuple(prof[name].max)) == (lo, opt, hi)


@pytest.mark.parametrize("spec_name", spec_names(graph="classifier_logits"))
def test_runner_profile_selection_agrees_with_the_derived_buckets(spec_name):
    spec = get_spec(spec_name)
    derived = derive_profiles(spec)
    plain = [p.shapes() for p in derived]  # what TensorRTRunner reads back from the engine
    for length in sorted({1, 2, *spec.length_buckets, *(b + 1 for b in spec.length_buckets[:-1])}):
        for batch in (1, spec.max_batch_size):
            shapes = {n: (batch, length) for n in spec.input_names}
            assert select_profile(plain, shapes) == spec.length_buckets.index(spec.bucket_for(length))
    with pytest.raises(InputError, match="no TensorRT optimization profile"):
        select_profile(plain, {n: (spec.max_batch_size + 1, 8) for n in spec.input_names})
    with pytest.raises(InputError, match="no TensorRT optimization profile"):
        select_profile(plain, {n: (1, spec.max_length + 1) for n in spec.input_names})


def test_check_engine_profiles_reports_differences():
    derived = derive_profiles("rejection")
    plain = [p.shapes() for p in derived]
    assert check_engine_profiles(plain, derived) == []
    # an engine read back with lists instead of tuples is the same engine
    as_lists = [{n: [list(d) for d in r] for n, r in p.items()} for p in plain]
    assert check_engine_profiles(as_lists, derived) == []
    assert "optimization profiles" in check_engine_profiles(plain[:-1], derived)[0]
    wrong = [dict(p) for p in plain]
    wrong[1]["input_ids"] = ((1, 1), (64, 64), (64, 64))
    (problem,) = check_engine_profiles(wrong, derived)
    assert problem.startswith("profile 1 input_ids")


# -- consistency with the Triton config (the repository writer's `tensorrt` flavor) -------------------------------
@pytest.mark.parametrize("spec_name", spec_names(graph="classifier_logits"))
def test_tensorrt_plan_config_is_consistent_with_the_profiles(spec_name):
    """Triton's TensorRT backend rules: max_batch_size > 0 means the engine's first dim is the batch dim and `dims`
    exclude it; every profile an instance uses must accept batch 1..max_batch_size; a dim is -1 exactly where the
    profiles let it vary; with several profiles the instance group must list them all (else only profile 0 runs)."""
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc import model_config_pb2

    from guardrt.runtime.triton_repo import parse_config, tensorrt_config

    spec = get_spec(spec_name)
    profiles = derive_profiles(spec)
    cfg = parse_config(tensorrt_config(spec, num_profiles=len(profiles)))
    assert cfg.platform == "tensorrt_plan"
    assert cfg.max_batch_size == spec.max_batch_size > 0
    for p in profiles:
        assert p.batch[0] == 1 and p.batch[2] == cfg.max_batch_size
    by_name = {i.name: i for i in cfg.input}
    assert list(by_name) == list(spec.input_names)
    for name, inp in by_name.items():
        assert model_config_pb2.DataType.Name(inp.data_type) == "TYPE_INT64"  # the graph's int64 ids and mask
        dims = list(inp.dims)
        for p in profiles:
            lo, _, hi = p.shapes()[name]
            assert len(lo) == 1 + len(dims)  # batch dim + config dims
            for k, d in enumerate(dims, start=1):
                if lo[k] != hi[k] or len({q.shapes()[name][0][k] for q in profiles}) > 1:
                    assert d == -1, f"{name} dim {k} varies across/within profiles but config fixes it to {d}"
                else:
                    assert d in (-1, lo[k])
    (out,) = cfg.output
    assert list(out.dims) == [len(spec.labels)] and out.name == spec.output_names[0]
    assert model_config_pb2.DataType.Name(out.data_type) == "TYPE_FP32"
    (group,) = cfg.instance_group
    assert list(group.profile) == [str(p.index) for p in profiles]
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_bucket_profile_contains():
    p = BucketProfile(1, 64, (1, 8, 16), (33, 64, 64), ("input_ids",))
    assert p.contains(1, 33) and p.contains(16, 64)
    assert not p.contains(17, 64) and not p.contains(1, 32) and not p.contains(1, 65)

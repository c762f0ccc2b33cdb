"""The bucket/profile contract (runtime/bucket_profiles.py): fewer, larger profiles still cover every length once."""
from __future__ import annotations

import pytest

from guardrt.runtime.bucket_profiles import derive_profiles, group_buckets
from guardrt.runtime.errors import InputError
from guardrt.runtime.specs import get_spec, spec_names


def test_group_buckets_keeps_order_and_gives_extra_buckets_to_the_short_groups():
    b = (128, 256, 512, 1024, 2048, 4096)
    assert group_buckets(b, 6) == [(x,) for x in b]
    assert group_buckets(b, 4) == [(128, 256), (512, 1024), (2048,), (4096,)]
    assert group_buckets(b, 1) == [b]
    for bad in (0, 7):
        with pytest.raises(InputError, match="profiles"):
            group_buckets(b, bad)


@pytest.mark.parametrize("spec_name", spec_names(graph="classifier_logits"))
@pytest.mark.parametrize("k", [1, 2, 3])
def test_grouped_profiles_cover_every_length_exactly_once(spec_name, k):
    spec = get_spec(spec_name)
    profiles = derive_profiles(spec, num_profiles=k)
    assert len(profiles) == k and [p.index for p in profiles] == list(range(k))
    assert sum(len(p.buckets) for p in profiles) == len(spec.length_buckets)
    assert profiles[0].seq[0] == 1 and profiles[-1].seq[2] == spec.max_length
    for prev, cur in zip(profiles, profiles[1:]):
        assert cur.seq[0] == prev.seq[2] + 1
    for p in profiles:
        assert p.seq[1] == p.seq[2] == p.bucket == p.buckets[-1]  # opt at the group's largest bucket
        assert p.batch == (1, max(spec.preferred_batch_sizes), spec.max_batch_size)
    for length in range(1, spec.max_length + 1, 13):
        holders = [p.index for p in profiles if p.contains(spec.max_batch_size, length)]
        assert len(holders) == 1 and spec.bucket_for(length) in profiles[holders[0]].buckets


def test_default_is_one_profile_per_bucket():
    spec = get_spec("intent-safety")
    assert [p.buckets for p in derive_profiles(spec)] == [(b,) for b in spec.length_buckets]

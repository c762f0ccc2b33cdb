"""The runner protocol shared by ONNX Runtime, TensorRT and the Triton client (runtime/runner.py)."""
from __future__ import annotations

import numpy as np
import pytest

from guardrt.runtime.runner import BaseRunner, BucketPaddingRunner
from guardrt.runtime.specs import get_spec


def test_every_runner_follows_the_protocol():
    from guardrt.runtime.onnxrt import OnnxRunner
    from guardrt.runtime.tensorrt import TensorRTRunner
    from guardrt.runtime.triton_client import TritonClassifier

    for cls in (OnnxRunner, TensorRTRunner, TritonClassifier, BucketPaddingRunner):
        assert issubclass(cls, BaseRunner)
        for method in ("activate", "infer", "close", "__enter__", "__exit__"):
            assert callable(getattr(cls, method))


def test_base_runner_context_manager_activates_and_closes():
    calls = []

    class Recording(BaseRunner):
        def activate(self):
            calls.append("activate")
            return self

        def infer(self, feeds):
            return {"logits": feeds["x"] * 2}

        def close(self):
            calls.append("close")

    with Recording() as r:
        assert r.infer({"x": np.ones(2)})["logits"].tolist() == [2.0, 2.0]
    assert calls == ["activate", "close"]
    with pytest.raises(NotImplementedError):
        BaseRunner().infer({})


class _Echo(BaseRunner):
    def infer(self, feeds):
        return dict(feeds)


@pytest.mark.parametrize("spec_name", ["rejection", "intent-safety"])
def test_bucket_padding_runner_repads_ragged_rows_with_pad_batch(spec_name):
    """Rows already padded to the longest (with their own mask) are re-padded to the bucket exactly as pad_batch
    pads fresh sequences: the same ids and mask the thin client sends a native backend."""
    from guardrt.runtime.preprocess import pad_batch

    spec = get_spec(spec_name)
    seqs = [[5, 6, 7, 8, 9], [11, 12], [13, 14, 15]]
    ids, mask = pad_batch(seqs, spec.pad_token_id, spec.padding_side)
    out = BucketPaddingRunner(_Echo(), spec).infer({"input_ids": ids, "attention_mask": mask})
    want_ids, want_mask = pad_batch(seqs, spec.pad_token_id, spec.padding_side, spec.length_buckets[0])
    np.testing.assert_array_equal(out["input_ids"], want_ids)
    np.testing.assert_array_equal(out["attention_mask"], want_mask)

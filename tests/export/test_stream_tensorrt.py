"""Qwen3Guard-Stream TensorRT: the prefill / step profiles (pure, tested here) and the engine (gpu, unverified on
the project's machines)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from guardrt.export.tensorrt.stream_profiles import stream_profiles
from guardrt.runtime.errors import InputError
from guardrt.runtime.tensorrt import select_profile

CONFIG = {"num_hidden_layers": 2, "num_key_value_heads": 8, "head_dim": 128, "hidden_size": 1024,
          "num_attention_heads": 16, "max_position_embeddings": 8192}


def _shapes(batch, k, past):
    out = {"input_ids": (batch, k), "position_ids": (batch, k), "attention_mask": (batch, past + k)}
    for layer in range(2):
        for part in ("key", "value"):
            out[f"past_key_values.{layer}.{part}"] = (batch, 8, past, 128)
    return out


def test_profiles_cover_the_runtime_calls_and_do_not_overlap():
    profiles = [p.shapes() for p in stream_profiles(CONFIG)]
    assert select_profile(profiles, _shapes(1, 37, 0)) == 0  # a prompt prefill
    assert select_profile(profiles, _shapes(32, 2048, 0)) == 0
    assert select_profile(profiles, _shapes(1, 1, 37)) == 1  # one token over a 37-token past
    assert select_profile(profiles, _shapes(32, 16, 8176)) == 1  # 16 tokens up to max_position_embeddings
    with pytest.raises(InputError, match="no TensorRT optimization profile fits"):
        select_profile(profiles, _shapes(1, 17, 40))  # a chunk longer than the step profile's
    with pytest.raises(InputError):
        select_profile(profiles, _shapes(1, 1, 8192))  # a past beyond the model's positions


def test_profile_shapes_are_full_ranges():
    prefill, step = stream_profiles(CONFIG, max_batch=16, opt_batch=4, max_step=8, opt_past=300)
    assert (prefill.name, step.name) == ("prefill", "step")
    s = step.shapes()
    assert s["attention_mask"] == ((1, 2), (4, 301), (16, 8191 + 8))
    assert s["past_key_values.1.value"] == ((1, 8, 1, 128), (4, 8, 300, 128), (16, 8, 8191, 128))
    assert prefill.shapes()["past_key_values.0.key"][2] == (16, 8, 0, 128)
    assert step.bucket == 8 and prefill.index == 0 and step.index == 1
    with pytest.raises(ValueError):
        stream_profiles(CONFIG, max_step=0)


def test_step_total_length_never_exceeds_positions_in_practice():
    """The runtime refuses a stream past max_position_embeddings before any graph call, so the step profile's largest
    past (positions - 1) is the most a call can need."""
    _, step = stream_profiles(CONFIG)
    assert step.past[2] == CONFIG["max_position_embeddings"] - 1


@pytest.mark.gpu
def test_stream_engine_gives_the_onnx_runtime_verdicts(tmp_path):
    pytest.importorskip("tensorrt")
    from guardrt.export.demo_stream_models import cached_stream_export
    from guardrt.export.stream_export import validation_ids
    from guardrt.export.tensorrt.stream_profiles import build_stream_engine
    from guardrt.runtime.stream import StreamGraph
    from guardrt.runtime.tensorrt import TensorRTRunner

    export = cached_stream_export("tiny", ("fp32",))
    plan = tmp_path / "stream.plan"
    build_stream_engine(export, plan, "fp32")
    cfg = json.loads((export / "config.json").read_text())
    trt = StreamGraph.from_runner(TensorRTRunner(plan), cfg["num_hidden_layers"], cfg["num_key_value_heads"],
                                  cfg["head_dim"])
    ort = StreamGraph(export / "stream" / "fp32" / "model.onnx")
    model_dir = json.loads((export / "guardrt.json").read_text())["source_model_dir"]
    for ids in validation_ids(model_dir, 4):
        a, b = trt.empty_state(), ort.empty_state()
        for lo in range(0, len(ids), 16):
            (ha, a), (hb, b) = trt.step_one(a, ids[lo:lo + 16]), ort.step_one(b, ids[lo:lo + 16])
            assert np.abs(ha[0] - hb[0]).max() < 1e-3
            assert (ha[0].argmax(-1) == hb[0].argmax(-1)).all() and (ha[1].argmax(-1) == hb[1].argmax(-1)).all()

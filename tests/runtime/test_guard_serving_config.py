"""Qwen3Guard-Gen serving pieces that need no model: the verdict model's classifier-shaped config, the generate
model's decoupled config (errors as data), and verdict rows through the shared postprocess."""
from __future__ import annotations

import numpy as np

from guardrt.runtime.guard_output import VERDICT_COLUMNS, guard_spec, verdict_from_row, verdict_spec
from guardrt.runtime.postprocess import postprocess
from guardrt.runtime.triton_repo import config_parameters, config_text, parse_config


def test_verdict_model_config_is_a_ragged_python_classifier():
    spec = verdict_spec()
    assert spec.name == "qwen3guard-gen" and spec.output.kind == "qwen3guard_verdict"
    assert spec.input_names == ("input_ids", "attention_mask") and spec.output_names == ("verdict",)
    assert spec.max_length == guard_spec().max_length == 32768 and spec.length_buckets[-1] == 32768
    config = parse_config(config_text(spec, "python"))
    assert config.max_batch_size == 8
    assert all(i.allow_ragged_batch for i in config.input)
    assert [(o.name, list(o.dims)) for o in config.output] == [("verdict", [len(VERDICT_COLUMNS)])]
    assert config.HasField("dynamic_batching")
    assert config_parameters(config)["pad_token_id"] == str(guard_spec().input.pad_token_id)


def test_generate_model_config_is_decoupled_and_reports_errors_as_data():
    """Also serves verdict requests (optional `verdict_mode` input, `verdict` output)."""
    from guardrt.runtime.generate import GenerationSettings
    from guardrt.runtime.triton_generate import generate_config_text

    config = parse_config(generate_config_text("qwen3guard-gen-generate", GenerationSettings()))
    assert config.model_transaction_policy.decoupled and config.max_batch_size == 0
    assert [o.name for o in config.output] == ["output_ids", "verdict", "error"]
    assert [(i.name, i.optional) for i in config.input] == [("input_ids", False), ("max_new_tokens", True),
                                                            ("verdict_mode", True), ("score_mode", True)]
    assert config_parameters(config)["guardrt_spec"] == "qwen3guard-gen"  # score requests: flexguard's model only
    params = config_parameters(config)
    assert params["max_verdict_batch"] == "16"
    assert params["eos_token_ids"] == "151645,151643" and params["max_new_tokens"] == "128"
    assert params["max_length"] == "32768"


def test_verdict_rows_go_through_the_shared_postprocess():
    opts = guard_spec().output.options
    rows = np.asarray([[0.2, 0.1, 0.6, 0.1, *opts["verdict_prefix_ids"], opts["label_token_ids"]["Controversial"]],
                       [0.9, 0.05, 0.02, 0.03, 11, 12, 13]], dtype=np.float32)
    out = postprocess(verdict_spec(), rows)
    assert out == [verdict_from_row(r) for r in rows]
    assert out[0]["safety"] == "Controversial" and out[1]["safety"] is None and not out[1]["consistent"]

"""Qwen3Guard-Stream: model class, protocol, KV-cache export and the in-process runtime against the PyTorch
re-prefill reference (tiny demo model)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from guardrt.runtime.errors import InputError
from guardrt.runtime.stream_protocol import binary_label, consecutive_flag, prompt_end_index, response_content_start

HELDOUT = 12  # held-out conversations compared position by position


@pytest.fixture(scope="module")
def model_dir():
    from guardrt.export.demo_stream_models import cached_stream_demo_model

    return cached_stream_demo_model("tiny")


@pytest.fixture(scope="module")
def export_dir():
    from guardrt.export.demo_stream_models import cached_stream_export

    return cached_stream_export("tiny", ("fp32",))


@pytest.fixture(scope="module")
def torch_model(model_dir):
    from guardrt.export.stream_reference import load_guard_model

    return load_guard_model(model_dir)


@pytest.fixture(scope="module")
def heldout(model_dir):
    from guardrt.export.stream_export import validation_ids

    return validation_ids(model_dir, HELDOUT)


@pytest.fixture(scope="module")
def reference(torch_model, heldout):
    from guardrt.export.stream_reference import reprefill_moderation

    out = []
    for ids in heldout:
        ref = reprefill_moderation(torch_model, ids)
        ref.pop("logits")
        out.append(ref)
    return out


@pytest.fixture(scope="module")
def moderator(export_dir):
    from guardrt.runtime.stream import StreamModerator

    with StreamModerator(export_dir) as m:
        yield m


# -- model class ----------------------------------------------------------------------------------------------------
def test_checkpoint_has_the_published_names_and_config_keys(model_dir):
    from safetensors import safe_open

    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3ForGuardModel"] and cfg["model_type"] == "qwen3"
    assert cfg["guard_inner_size"] == 16 and cfg["num_risk_level"] == 3 and cfg["max_position_embeddings"] == 8192
    assert cfg["response_risk_level_map"] == {"0": "Safe", "1": "Unsafe", "2": "Controversial"}
    assert cfg["query_risk_level_map"] == cfg["response_risk_level_map"]
    assert cfg["response_category_map"]["0"] == '"Violent"' and len(cfg["response_category_map"]) == 8
    assert cfg["query_category_map"]["8"] == "Jailbreak" and len(cfg["query_category_map"]) == 9
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        shapes = {n: tuple(f.get_slice(n).get_shape()) for n in names if not n.startswith("model.")}
    assert shapes == {
        "risk_level_category_pre.weight": (16, 32), "risk_level_category_layernorm.weight": (16,),
        "risk_level_head.weight": (3, 16), "category_head.weight": (8, 16),
        "query_risk_level_category_pre.weight": (16, 32), "query_risk_level_category_layernorm.weight": (16,),
        "query_risk_level_head.weight": (3, 16), "query_category_head.weight": (9, 16)}
    assert "model.embed_tokens.weight" in names and "model.layers.1.self_attn.q_norm.weight" in names


def test_loading_uses_the_weights_by_name(model_dir, torch_model):
    """from_pretrained fills every head from the checkpoint (a missing name would be reported / re-initialised)."""
    import torch
    from safetensors.torch import load_file

    from guardrt.export.qwen3_guard_model import Qwen3ForGuardModel

    weights = load_file(str(model_dir / "model.safetensors"))
    assert torch.equal(torch_model.query_category_head.weight, weights["query_category_head.weight"])
    _, info = Qwen3ForGuardModel.from_pretrained(str(model_dir), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_demo_heads_learned_something(model_dir):
    demo = json.loads((model_dir / "demo.json").read_text())
    held = demo["heldout_metrics"]
    assert held["query_risk_accuracy"] > 0.6 and held["response_unsafe_recall"] > 0.5


# -- protocol -------------------------------------------------------------------------------------------------------
def test_prompt_end_is_the_last_user_turns_im_end():
    ids = [151644, 872, 5, 151645, 198, 151644, 77091, 6, 151645, 198, 151644, 872, 7, 8, 151645, 198, 151644]
    assert prompt_end_index(ids) == 14
    with pytest.raises(InputError, match="no user turn"):
        prompt_end_index([151644, 77091, 5, 151645])
    with pytest.raises(InputError, match="not closed"):
        prompt_end_index([151644, 872, 5])


def test_debounce_is_the_official_eval():
    assert consecutive_flag(["Safe", "Unsafe", "Safe", "Unsafe"]) == ("Safe", -1)
    assert consecutive_flag(["Safe", "Unsafe", "Unsafe", "Unsafe"]) == ("Unsafe", 2)
    # mixed pairs never flag; Unsafe pairs are looked for first, wherever they are
    assert consecutive_flag(["Unsafe", "Controversial", "Unsafe", "Controversial"]) == ("Safe", -1)
    assert consecutive_flag(["Controversial", "Controversial", "Safe", "Unsafe", "Unsafe"]) == ("Unsafe", 4)
    assert consecutive_flag(["Controversial", "Controversial"]) == ("Controversial", 1)
    assert consecutive_flag([]) == ("Safe", -1)
    assert [binary_label(x, m) for x in ("Controversial", "Unsafe", "Safe") for m in ("strict", "loose")] == \
        ["Unsafe", "Safe", "Unsafe", "Unsafe", "Safe", "Safe"]
    with pytest.raises(InputError):
        binary_label("Safe", "medium")


def test_debounce_starts_at_the_first_content_token():
    from guardrt.runtime.stream_protocol import debounced_flag, response_content_start

    header = [198, 151644, 77091, 198, 151667, 271, 151668, 271]  # \n<|im_start|>assistant\n<think>\n\n</think>\n\n
    tokens = header + [40, 41, 42, 43]
    assert response_content_start(tokens) == 8
    assert response_content_start(header[:5]) == 5  # the header is still arriving: nothing to judge yet
    assert response_content_start([40, 41]) == 0  # content fed without a header
    risk = ["Unsafe"] * 8 + ["Safe", "Controversial", "Controversial", "Safe"]
    cats = [f"c{i}" for i in range(12)]
    # Unsafe header tokens do not flag; the Controversial pair of the content does, at its second token (index 10)
    assert debounced_flag(tokens, risk, cats) == {"risk": "Controversial", "category": "c10", "token_index": 10}
    assert debounced_flag(tokens, ["Safe"] * 12, cats) is None


def test_runtime_template_and_tokens_are_transformers(model_dir, moderator):
    from transformers import AutoTokenizer

    from guardrt.export.stream_reference import render_stream_ids
    from guardrt.export.stream_synthetic import stream_examples

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    for e in stream_examples(24, seed=5):
        ids = moderator.conversation_ids(e.messages)
        assert ids == render_stream_ids(tok, e.messages)
        # the response side starts with the template's assistant header (fed as "assistant", like the card)
        end = prompt_end_index(ids)
        assert tok.decode(ids[end + 1:end + 9]) == "\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        start = end + 1 + response_content_start(ids[end + 1:])  # the eval's split_idx
        assert tok.decode(ids[start:]).startswith(e.messages[-1]["content"][:3])


# -- the export and the runtime vs the re-prefill reference ---------------------------------------------------------
def test_export_validation_passed(export_dir):
    val = json.loads((export_dir / "validation.json").read_text())["fp32"]
    assert val["passed"] and val["max_abs_diff"] <= 1e-4 and val["label_agreement"] == 1.0
    assert val["chunks"] == [1, 16] and val["positions"] > 200


@pytest.mark.parametrize("chunk", [1, 16])
def test_per_token_verdicts_equal_reprefill_reference(moderator, heldout, reference, chunk):
    positions = 0
    flagged = 0
    for ids, ref in zip(heldout, reference):
        got = moderator.moderate_ids(ids, chunk)
        assert got["query"] == ref["query"]
        assert got["tokens"] == ref["tokens"]
        assert got["risk"] == ref["risk"]
        assert got["category"] == ref["category"]
        assert got["flagged"] == ref["flagged"]
        positions += 1 + len(ref["risk"])
        flagged += ref["flagged"] is not None
    assert positions > 250 and moderator.live_streams == 0
    assert 0 < flagged < len(heldout)  # the comparison covers flagged and unflagged responses
    print(f"k={chunk}: {positions} positions identical over {len(heldout)} conversations")


def test_batched_streams_equal_one_at_a_time(moderator, heldout, reference):
    batched = moderator.moderate_many(heldout, chunk=3)
    assert batched == [{k: r[k] for k in ("query", "tokens", "risk", "category", "flagged")} for r in reference]


def test_logits_of_incremental_steps_match_pytorch(export_dir, torch_model, heldout):
    import torch

    from guardrt.runtime.stream import StreamGraph

    graph = StreamGraph(export_dir / "stream" / "fp32" / "model.onnx")
    ids = heldout[0]
    state = graph.empty_state()
    got = []
    for lo in range(0, len(ids), 5):
        heads, state = graph.step_one(state, ids[lo:lo + 5])
        got.append(heads[0])
    with torch.inference_mode():
        ref = torch_model(input_ids=torch.tensor([ids])).risk_level_logits[0].numpy()
    assert np.abs(np.concatenate(got) - ref).max() < 1e-4
    assert state.length == len(ids) and state.nbytes == len(ids) * graph.bytes_per_token()
    graph.close()


# -- bad input ------------------------------------------------------------------------------------------------------
def test_stream_errors_are_per_stream(moderator, heldout):
    ids = heldout[0]
    end = prompt_end_index(ids)
    a, _ = moderator.open(ids[:end + 1])
    b, _ = moderator.open(ids[:end + 1])
    res = moderator.feed_many([(a, ids[end + 1:end + 3]), (999999, [5]), (b, [moderator.vocab_size]),
                               (b, [-1]), (a, [1])])
    assert isinstance(res[0], dict) and len(res[0]["risk"]) == 2
    assert "unknown or closed" in str(res[1]) and "out of the vocabulary" in str(res[2])
    assert "out of the vocabulary" in str(res[3]) and "fed twice" in str(res[4])
    moderator.close_stream(b)
    with pytest.raises(InputError, match="unknown or closed"):
        moderator.feed(b, [5])
    saved = moderator.max_positions
    moderator.max_positions = end + 4
    try:
        with pytest.raises(InputError, match="exceed max_position_embeddings"):
            moderator.feed(a, [5, 6])
        assert len(moderator.feed(a, [5])["risk"]) == 1  # the stream stays usable up to the limit
    finally:
        moderator.max_positions = saved
        moderator.close_stream(a)
    assert moderator.live_streams == 0


def test_cli_stream_contract(export_dir, monkeypatch, capsys, reference):
    from guardrt.cli import main
    from guardrt.export.stream_synthetic import stream_examples
    from guardrt.export.synthetic import SPLIT_SEEDS

    examples = stream_examples(3, seed=SPLIT_SEEDS["heldout"])
    lines = [json.dumps({"messages": e.messages}) for e in examples]
    lines.insert(1, '{"messages": [{"role": "user", "content": "hi"}]}')
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    rc = main(["stream", "--spec", "qwen3guard-stream", "--model", str(export_dir), "--chunk", "16"])
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 2 and len(out) == 4
    assert out[1] == {"error": "line 2: the last message must be the assistant response to judge token by token"}
    for got, ref in zip([out[0], out[2], out[3]], reference[:3]):
        assert set(got) == {"query", "tokens", "risk", "category", "flagged"}
        assert got == {k: ref[k] for k in got}

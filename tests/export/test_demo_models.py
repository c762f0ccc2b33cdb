"""Demo models: real architectures, deterministic inputs, trained decisions, and the training shortcut's exactness."""
from __future__ import annotations

import json

import numpy as np
import pytest

from guardrt.runtime.specs import get_spec


@pytest.mark.parametrize("spec_name", ["intent-safety", "rejection"])
def test_demo_checkpoint_matches_spec_and_learned_the_task(spec_name, demo_checkpoint):
    from guardrt.export.onnx_export import check_checkpoint

    spec = get_spec(spec_name)
    root = demo_checkpoint(spec_name)
    cfg = check_checkpoint(root, spec)  # architecture, model type, labels, weights, tokenizer
    assert cfg["pad_token_id"] == spec.pad_token_id
    assert [cfg["id2label"][str(i)] for i in range(len(spec.labels))] == list(spec.labels)
    demo = json.loads((root / "demo.json").read_text())
    # What `make demo` prints; "unseen": held-out examples whose text (answer / last user turn) is not in training.
    assert demo["heldout_examples"] == 256 and demo["heldout_unseen_examples"] >= 64, demo
    assert demo["heldout_accuracy"] >= 0.95 and demo["heldout_unseen_accuracy"] >= 0.95, demo


def test_realistic_configs_have_the_real_layer_shapes():
    from guardrt.export.demo_models import demo_config

    q = demo_config("intent-safety", "realistic")
    assert (q.hidden_size, q.num_attention_heads, q.num_key_value_heads, q.head_dim, q.intermediate_size,
            q.vocab_size) == (1024, 16, 8, 128, 3072, 151936)
    r = demo_config("rejection", "realistic")
    assert (r.num_hidden_layers, r.hidden_size, r.num_attention_heads, r.intermediate_size) == (6, 768, 12, 3072)
    with pytest.raises(ValueError, match="no demo model"):
        demo_config("rejection", "huge")


def test_synthetic_tasks_are_deterministic_balanced_and_varied():
    from guardrt.export.synthetic import SPLIT_SEEDS, classified_text, synthetic_examples

    for spec_name in ("intent-safety", "rejection"):
        a = synthetic_examples(spec_name, 64, seed=SPLIT_SEEDS["heldout"])
        assert a == synthetic_examples(spec_name, 64, seed=SPLIT_SEEDS["heldout"])
        assert a != synthetic_examples(spec_name, 64, seed=SPLIT_SEEDS["train"])
        assert 0.3 < np.mean([y for _, y in a]) < 0.7
        # Composed, not drawn from a short list: a model cannot fit the task by memorising its sentences.
        texts = [classified_text(p) for p, _ in synthetic_examples(spec_name, 1024, seed=SPLIT_SEEDS["train"])]
        assert len(set(texts)) > 0.5 * len(texts), (spec_name, len(set(texts)))


def test_classified_text_is_the_answer_or_the_last_user_turn():
    from guardrt.export.synthetic import classified_text

    assert classified_text("an answer") == "an answer"
    turns = [{"role": "system", "content": "s"}, {"role": "You", "content": "first"}, {"role": "bot", "content": "b"},
             {"role": "user", "content": "last"}, {"role": "assistant", "content": "dropped by the card"}]
    assert classified_text(turns) == "last"


@pytest.mark.parametrize("spec_name", ["intent-safety", "rejection"])
def test_demo_samples_are_not_in_the_training_set(spec_name):
    """`make demo` shows what the tiny models learned: no sample's text (the answer; a dialogue's last user turn) is
    one the model was trained on, and both labels are shown."""
    from guardrt.commands.demo import HANDWRITTEN_SAMPLES, demo_samples
    from guardrt.export.demo_models import training_examples
    from guardrt.export.synthetic import classified_text

    train = training_examples(spec_name, "tiny")
    seen = {classified_text(p) for p, _ in train}
    samples = demo_samples(spec_name, "tiny")
    assert len(samples) >= len(HANDWRITTEN_SAMPLES[spec_name]) + 3
    assert {y for _, y, _ in samples} == {0, 1}
    for payload, _, _ in samples:
        assert classified_text(payload) not in seen, classified_text(payload)
        assert all(payload != p for p, _ in train)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int8-dynamic"])
@pytest.mark.parametrize("spec_name", ["intent-safety", "rejection"])
def test_demo_samples_are_answered_as_labelled(spec_name, precision, demo_export):
    """Every sample `guardrt demo` prints gets its label from the tiny demo model, at every exported precision
    (in-process here; the demo itself asks the server over gRPC and stops with an error on a miss)."""
    from guardrt.commands.demo import demo_samples
    from guardrt.export.synthetic import classified_text
    from guardrt.runtime.onnxrt import InProcessClassifier

    samples = demo_samples(spec_name, "tiny")
    with InProcessClassifier.from_export_dir(demo_export(spec_name), precision=precision) as clf:
        results = clf.classify([p for p, _, _ in samples])
    got = [(classified_text(p), r["label"]) for (p, _, _), r in zip(samples, results)]
    assert got == [(classified_text(p), y) for p, y, _ in samples]


@pytest.mark.parametrize("spec_name", ["intent-safety", "rejection"])
def test_top_layer_training_shortcut_equals_the_model(spec_name, demo_checkpoint):
    """The realistic models train their top layer on cached lower-layer outputs; that computation (including the
    Qwen3 last-token-only path) must give the model's own logits, on a padded batch."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from guardrt.export.demo_models import _cached_layer_inputs, _top_layers_forward
    from guardrt.export.synthetic import synthetic_payloads
    from guardrt.runtime.preprocess import build_preprocessor, pad_batch

    spec = get_spec(spec_name)
    root = demo_checkpoint(spec_name)
    model = AutoModelForSequenceClassification.from_pretrained(root, attn_implementation="eager").eval()
    pre = build_preprocessor(spec, root)
    ids, mask = pad_batch([pre.encode(p) for p in synthetic_payloads(spec_name, 4, seed=3)], spec.pad_token_id,
                          spec.padding_side)
    assert (mask == 0).any()
    with torch.no_grad():
        full = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
        for k in (1, 2):
            hidden = _cached_layer_inputs(model, spec, [(ids, mask, None)], k)[0]
            top = _top_layers_forward(model, spec, hidden, ids, mask, k)
            torch.testing.assert_close(top, full, atol=1e-5, rtol=1e-4)


def test_every_registered_spec_has_a_demo_model_and_synthetic_task():
    """Adding a spec without a fixture model (demo config + synthetic task) fails here."""
    from guardrt.export.demo_models import DEMO_SIZES, demo_config
    from guardrt.export.synthetic import long_payload, synthetic_examples
    from guardrt.runtime.specs import spec_names

    for name in spec_names(graph="classifier_logits"):
        spec = get_spec(name)
        for size in DEMO_SIZES:
            cfg = demo_config(name, size)
            assert cfg.architectures == [spec.architecture] and cfg.num_labels == len(spec.labels)
        assert len(synthetic_examples(name, 4)) == 4 and long_payload(name)

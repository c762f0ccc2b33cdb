"""ONNX Runtime runner and in-process classifier on the tiny demo exports."""
from __future__ import annotations

import numpy as np
import pytest

from guardrt.runtime.errors import InputError, ModelFilesError
from guardrt.runtime.specs import get_spec

SPECS = ("intent-safety", "rejection")
CARD_FIELDS = {
    "intent-safety": {"label", "label_text", "prob_non_unsafe", "prob_unsafe", "threshold"},
    "rejection": {"label", "label_text", "score", "prob_normal", "prob_rejection"},
}


def _payloads(spec_name, n=12, seed=2):
    from guardrt.export.synthetic import synthetic_examples

    return synthetic_examples(spec_name, n, seed=seed)


def test_runner_infer_contract_and_context_manager(demo_export):
    from guardrt.runtime.onnxrt import OnnxRunner

    spec = get_spec("rejection")
    path = demo_export("rejection") / "fp32" / "model.onnx"
    ids = np.array([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]], dtype=np.int64)
    mask = (ids != spec.pad_token_id).astype(np.int64)
    with OnnxRunner(path, intra_op_threads=1) as runner:
        assert runner.active_providers == ["CPUExecutionProvider"]
        out = runner.infer({"input_ids": ids, "attention_mask": mask})
        assert set(out) == {"logits"} and out["logits"].dtype == np.float32 and out["logits"].shape == (2, 2)
        with pytest.raises(InputError, match="do not match"):
            runner.infer({"input_ids": ids})
    assert runner.session is None


def test_runner_errors(tmp_path, demo_export):
    from guardrt.runtime.onnxrt import OnnxRunner

    with pytest.raises(ModelFilesError, match="does not exist"):
        OnnxRunner(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ModelFilesError, match="cannot load ONNX model"):
        OnnxRunner(bad)
    # Asking for a GPU provider on a CPU-only onnxruntime is an error, not a silent CPU fallback.
    with pytest.raises(ModelFilesError, match="guardrt\\[gpu-ort\\]"):
        OnnxRunner(demo_export("rejection") / "fp32" / "model.onnx", providers=["cuda"])


def test_provider_options_are_built_from_the_spec():
    from guardrt.runtime.onnxrt import resolve_providers, tensorrt_provider_options

    spec = get_spec("intent-safety")
    opts = tensorrt_provider_options(spec, fp16=True, cache_dir="/tmp/trt")
    assert opts["trt_fp16_enable"] is True and opts["trt_int8_enable"] is False
    assert opts["trt_engine_cache_path"] == "/tmp/trt" and opts["trt_timing_cache_enable"] is True
    assert opts["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert opts["trt_profile_max_shapes"] == f"input_ids:{spec.max_batch_size}x4096,attention_mask:{spec.max_batch_size}x4096"
    providers = resolve_providers(["tensorrt"], spec)
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(None) == ["CPUExecutionProvider"]


@pytest.mark.parametrize("spec_name", SPECS)
def test_classifier_outputs_card_fields_and_batched_equals_single(spec_name, demo_export):
    from guardrt.runtime.onnxrt import InProcessClassifier

    examples = _payloads(spec_name)
    payloads = [p for p, _ in examples]
    with InProcessClassifier.from_export_dir(demo_export(spec_name), spec=spec_name) as clf:
        batched = clf.classify(payloads)
        single = [clf.classify([p])[0] for p in payloads]
        seqs = clf.encode(payloads)
    assert len(batched) == len(payloads)
    assert len({len(s) for s in seqs}) > 1, "the batch must mix lengths so padding is exercised"
    for b, s in zip(batched, single):
        assert set(b) == CARD_FIELDS[spec_name]
        assert b["label"] == s["label"] and b["label_text"] == s["label_text"]
        for key in b:
            if key.startswith("prob_"):
                assert abs(b[key] - s[key]) < 1e-5, (key, b[key], s[key])
    # The trained demo model's decisions mean something: most held-out payloads get their synthetic label.
    accuracy = np.mean([r["label"] == y for r, (_, y) in zip(batched, examples)])
    assert accuracy >= 0.75, accuracy


@pytest.mark.parametrize("spec_name", SPECS)
def test_int8_dynamic_batched_equals_single_exactly(spec_name, demo_export):
    """int8-dynamic's activation scale is per tensor, so it would mix rows; in process it runs one row per call and a
    batch gives each row exactly its single-request logits. The raw graph on a padded batch does differ (the reason)."""
    from guardrt.runtime.onnxrt import InProcessClassifier
    from guardrt.runtime.preprocess import pad_batch

    spec = get_spec(spec_name)
    payloads = [p for p, _ in _payloads(spec_name)][:12]
    with InProcessClassifier.from_export_dir(demo_export(spec_name), "int8-dynamic") as clf:
        assert clf.max_batch_size == 1
        seqs = clf.encode(payloads)
        batched = clf.logits_for_ids(seqs)
        single = np.concatenate([clf.logits_for_ids([s]) for s in seqs])
        ids, mask = pad_batch(seqs, spec.pad_token_id, spec.padding_side)
        raw = clf.runner.infer(dict(zip(spec.input_names, (ids, mask))))[spec.output_names[0]]
    assert np.array_equal(batched, single)
    assert np.abs(raw - single).max() > 0  # what one padded call would have given instead


def test_qwen_left_padding_equals_unpadded(demo_export):
    from guardrt.runtime.onnxrt import InProcessClassifier
    from guardrt.runtime.preprocess import pad_batch

    spec = get_spec("intent-safety")
    with InProcessClassifier.from_export_dir(demo_export("intent-safety")) as clf:
        seq = clf.encode([_payloads("intent-safety", 1)[0][0]])[0]
        alone = clf.runner.infer(dict(zip(spec.input_names, pad_batch([seq], spec.pad_token_id, "left"))))["logits"]
        padded = clf.runner.infer(dict(zip(spec.input_names, pad_batch([seq], spec.pad_token_id, "left",
                                                                      length=len(seq) + 37))))["logits"]
    np.testing.assert_allclose(padded, alone, atol=1e-5)


def test_classifier_matches_pytorch(demo_export, demo_checkpoint):
    """End to end: payload -> guardrt (preprocess, pad, ORT, postprocess) == the checkpoint in PyTorch."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from guardrt.runtime.onnxrt import InProcessClassifier
    from guardrt.runtime.postprocess import softmax

    for spec_name in SPECS:
        payloads = [p for p, _ in _payloads(spec_name, 6, seed=5)]
        with InProcessClassifier.from_export_dir(demo_export(spec_name)) as clf:
            results = clf.classify(payloads)
            seqs = clf.encode(payloads)
        model = AutoModelForSequenceClassification.from_pretrained(demo_checkpoint(spec_name)).eval()
        for seq, res in zip(seqs, results):
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([seq])).logits.numpy()
            probs = softmax(logits)[0]
            assert abs(probs[1] - res[f"prob_{get_spec(spec_name).labels[1].lower()}"]) < 1e-5


@pytest.mark.parametrize("precision", ["fp16", "int8", "int8-dynamic"])
def test_every_precision_classifies_like_fp32(precision, demo_export):
    from guardrt.runtime.onnxrt import InProcessClassifier

    for spec_name in SPECS:
        payloads = [p for p, _ in _payloads(spec_name, 16, seed=7)]
        with InProcessClassifier.from_export_dir(demo_export(spec_name)) as ref, \
                InProcessClassifier.from_export_dir(demo_export(spec_name), precision=precision) as clf:
            a, b = ref.classify(payloads), clf.classify(payloads)
        agreement = np.mean([x["label"] == y["label"] for x, y in zip(a, b)])
        assert agreement >= get_spec(spec_name).min_agreement[precision]


def test_export_dir_loader_errors(tmp_path, demo_export):
    import json
    import shutil

    from guardrt.runtime.export_dir import load_export_dir

    with pytest.raises(ModelFilesError, match="does not exist"):
        load_export_dir(tmp_path / "missing")
    with pytest.raises(ModelFilesError, match="not a guardrt export directory"):
        load_export_dir(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(demo_export("rejection"), copy)
    with pytest.raises(ModelFilesError, match="exported for spec 'rejection', not 'intent-safety'"):
        load_export_dir(copy, spec="intent-safety")
    (copy / "int8" / "model.onnx").unlink()
    with pytest.raises(ModelFilesError, match="int8 model int8/model.onnx is missing"):
        load_export_dir(copy)
    (copy / "guardrt.json").write_text("{not json")
    with pytest.raises(ModelFilesError, match="corrupt"):
        load_export_dir(copy)
    (copy / "guardrt.json").write_text(json.dumps({"spec": "rejection"}))
    with pytest.raises(ModelFilesError, match="missing architecture"):
        load_export_dir(copy)

"""The spec registry: parts, read-only shorthands, served vs declared specs."""
from __future__ import annotations

import dataclasses

import pytest

from guardrt.runtime.errors import InputError
from guardrt.runtime.specs import (
    SERVED_KINDS,
    SHORTHANDS,
    SPECS,
    InputFormat,
    ModelSpec,
    get_spec,
    register,
    spec_names,
)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_shorthand_reads_its_part(name):
    spec = SPECS[name]
    for flat, (part, attr) in SHORTHANDS.items():
        assert getattr(spec, flat) == getattr(getattr(spec, part), attr), flat
    with pytest.raises(AttributeError):
        spec.max_length = 1  # read-only


def test_classifier_specs_unchanged():
    """The two classifiers keep every value the flat spec had (their tests and exactness checks rely on them)."""
    intent, rejection = get_spec("intent-safety"), get_spec("rejection")
    assert (intent.preprocessor, intent.max_length, intent.padding_side, intent.truncation_side,
            intent.pad_token_id) == ("dialogue_ctx", 4096, "left", "left", 151643)
    assert intent.preprocessor_options["max_turns"] == 8 and intent.preprocessor_options["ctx_reserve_tokens"] == 8
    assert (intent.labels, intent.decision, intent.threshold, intent.positive_label) == \
        (("non_unsafe", "unsafe"), "threshold", 0.5, 1)
    assert (intent.architecture, intent.model_type, intent.task, intent.input_names, intent.output_names,
            intent.onnx_opset) == ("Qwen3ForSequenceClassification", "qwen3", "text-classification",
                                   ("input_ids", "attention_mask"), ("logits",), 18)
    assert (intent.max_batch_size, intent.preferred_batch_sizes, intent.max_queue_delay_us, intent.length_buckets) == \
        (16, (4, 8, 16), 2000, (128, 256, 512, 1024, 2048, 4096))
    assert intent.atol == {"fp32": 1e-4, "fp16": 1e-1, "int8": 2.5e-1, "int8-dynamic": 1.5e-1}
    assert (rejection.preprocessor, rejection.max_length, rejection.padding_side, rejection.pad_token_id,
            rejection.labels, rejection.decision, rejection.threshold) == \
        ("single_text", 512, "right", 1, ("NORMAL", "REJECTION"), "argmax", None)
    assert rejection.id2label == {0: "NORMAL", 1: "REJECTION"}
    assert rejection.bucket_for(33) == 64 and intent.bucket_for(4096) == 4096
    assert intent.is_served and rejection.is_served


def test_replace_with_shorthands_rebuilds_the_parts():
    """dataclasses.replace(spec, <flat name>=...) works as on the flat spec (tests and other branches use it)."""
    base = get_spec("rejection")
    tiny = dataclasses.replace(base, name="tiny", max_length=16, length_buckets=(8, 16), max_batch_size=4,
                               atol={"fp32": 1e-12})
    assert (tiny.name, tiny.input.max_length, tiny.serving.length_buckets, tiny.serving.max_batch_size) == \
        ("tiny", 16, (8, 16), 4)
    assert tiny.gates.atol == {"fp32": 1e-12} and tiny.gates.min_agreement == base.gates.min_agreement
    assert tiny.graph == base.graph and base.max_length == 512  # the original is untouched
    assert dataclasses.replace(tiny, input=base.input).max_length == 512
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_field'"):
        dataclasses.replace(base, no_such_field=1)


def test_qwen3guard_gen_is_served():
    spec = get_spec("qwen3guard-gen")
    assert spec.input.kind == "chat_template" and spec.input.request_field == "messages"
    assert spec.max_length == 32768 and spec.input.truncation_side == "none"
    assert spec.is_served and spec.unserved_parts == ()
    assert spec_names() == ["flexguard", "intent-safety", "qwen3guard-gen", "qwen3guard-stream", "rejection"]
    assert spec_names(graph="classifier_logits") == ["intent-safety", "rejection"]
    assert spec.decoding.max_new_tokens == 128 and spec.output.labels == ("Safe", "Unsafe", "Controversial")
    assert spec.decoding.default_stop_token_ids == (151645, 151643)
    assert set(spec.output.options) == {"verdict_prefix_ids", "label_token_ids", "controversial_tail_ids"}


def test_declared_spec_is_refused_except_for_its_input(monkeypatch):
    from guardrt.runtime import specs as specs_module

    base = get_spec("qwen3guard-gen")
    # Every kind is served today: the mechanism is checked with flexguard_text taken out of the served outputs.
    monkeypatch.setitem(specs_module.SERVED_KINDS, "output", tuple(
        k for k in specs_module.SERVED_KINDS["output"] if k != "flexguard_text"))
    declared = ModelSpec(name="declared-stream", seed_card=base.seed_card, input=base.input, graph=base.graph,
                         decoding=base.decoding, output=dataclasses.replace(base.output, kind="flexguard_text"))
    register(declared)
    try:
        assert declared.unserved_parts == ("output flexguard_text",)
        with pytest.raises(InputError, match="registered for its input only.*output flexguard_text.*preprocess"):
            get_spec("declared-stream")
        assert get_spec("declared-stream", input_only=True) is declared
        assert "declared-stream" not in spec_names() and "declared-stream" in spec_names(input_only=True)
    finally:
        del SPECS["declared-stream"]


def test_qwen3guard_gen_patterns_are_the_cards():
    import re

    patterns = get_spec("qwen3guard-gen", input_only=True).output.patterns
    text = "Safety: Unsafe\nCategories: Violent, Jailbreak\nRefusal: No"
    assert re.search(patterns["safety"], text).group(1) == "Unsafe"
    assert re.findall(patterns["categories_prompt"], text) == ["Violent", "Jailbreak"]
    assert re.findall(patterns["categories_response"], text) == ["Violent"]  # no Jailbreak for responses
    assert re.search(patterns["refusal"], text).group(1) == "No"


def test_unknown_spec_names_the_known_ones():
    with pytest.raises(InputError, match="unknown spec 'nope'; known specs: flexguard, intent-safety, qwen3guard-gen, qwen3guard-stream, rejection"):
        get_spec("nope")


def test_parts_validate_their_kind():
    with pytest.raises(ValueError, match="input kind 'voice'"):
        InputFormat(kind="voice", request_field="x", max_length=1, padding_side="left", truncation_side="left",
                    pad_token_id=0)
    with pytest.raises(ValueError, match="unknown chat_template options"):
        InputFormat(kind="chat_template", request_field="messages", max_length=1, padding_side="left",
                    truncation_side="none", pad_token_id=0, options={"enable_thinking": False})
    with pytest.raises(ValueError, match="registered twice"):
        register(get_spec("rejection"))
    assert set(SERVED_KINDS) == {"input", "graph", "decoding", "output"}


def test_spec_is_a_dataclass_with_its_parts():
    import copy
    import pickle

    fields = [f.name for f in dataclasses.fields(ModelSpec)]
    assert fields == ["name", "seed_card", "input", "graph", "decoding", "output", "serving", "gates"]
    spec = get_spec("intent-safety")
    assert pickle.loads(pickle.dumps(spec)) == spec == copy.deepcopy(spec)  # child processes receive specs

"""The Qwen3Guard-Gen output parser: the card's examples, the card's regex semantics on adversarial strings."""
from __future__ import annotations

import re

import pytest

from guardrt.runtime.guard_output import (category_pattern, check_guard_tokens, guard_spec, moderation_kind,
                                          parse_guard_output, verdict_from_row)
from guardrt.runtime.specs import get_spec

# The card's own regexes, copied verbatim (prompt moderation, response moderation).
CARD_SAFE = r"Safety: (Safe|Unsafe|Controversial)"
CARD_PROMPT_CATS = (r"(Violent|Non-violent Illegal Acts|Sexual Content or Sexual Acts|PII|Suicide & Self-Harm|"
                    r"Unethical Acts|Politically Sensitive Topics|Copyright Violation|Jailbreak|None)")
CARD_RESPONSE_CATS = (r"(Violent|Non-violent Illegal Acts|Sexual Content or Sexual Acts|PII|Suicide & Self-Harm|"
                      r"Unethical Acts|Politically Sensitive Topics|Copyright Violation|None)")
CARD_REFUSAL = r"Refusal: (Yes|No)"


def card_parse(text, kind):
    m, r = re.search(CARD_SAFE, text), re.search(CARD_REFUSAL, text)
    cats = re.findall(CARD_PROMPT_CATS if kind == "prompt" else CARD_RESPONSE_CATS, text)
    return {"safety": m.group(1) if m else None, "categories": cats, "refusal": r.group(1) if r else None,
            "text": text}


def test_card_examples():
    assert parse_guard_output("Safety: Unsafe\nCategories: Violent", "prompt") == {
        "safety": "Unsafe", "categories": ["Violent"], "refusal": None, "text": "Safety: Unsafe\nCategories: Violent"}
    out = parse_guard_output("Safety: Safe\nCategories: None\nRefusal: Yes", "response")
    assert (out["safety"], out["categories"], out["refusal"]) == ("Safe", ["None"], "Yes")


ADVERSARIAL = [
    "",
    "Safety:Unsafe",  # no space: the card's regex does not match
    "safety: unsafe\ncategories: violent",  # case matters
    "Safety: Controversial\nCategories: Politically Sensitive Topics, PII",
    "Safety: Unsafe\nCategories: Violent, Violent, Jailbreak",  # duplicates are kept by findall
    "Safety: Safety: Safe",  # first match wins
    "Safety: Unsafely",  # prefix match, as the card's regex
    "Safety: Contro",  # truncated label
    "Categories: None\nSafety: Unsafe",  # order does not matter to re.search
    "Safety: Unsafe\nCategories: Non-violent Illegal Acts\nRefusal: Maybe",
    "Safety: Unsafe\nCategories: Sexual Content or Sexual Acts\nRefusal: No\nRefusal: Yes",
    "Safety: Safe\nCategories: Nonexistent",  # "None" inside "Nonexistent"? no: findall needs the full word "None"
    "Safety: Unsafe\nCategories: Suicide & Self-Harm, Copyright Violation, Unethical Acts",
    "Safety: Unsafe\nCategories: Jailbreak",
    "安全: Unsafe 😀 Safety: Safe\u200b",
    "Safety: Unsafe\n" * 50,
]


@pytest.mark.parametrize("text", ADVERSARIAL)
@pytest.mark.parametrize("kind", ["prompt", "response"])
def test_parser_equals_the_card_regexes(text, kind):
    assert parse_guard_output(text, kind) == card_parse(text, kind)


def test_jailbreak_only_in_prompt_moderation_and_kind_rule():
    text = "Safety: Unsafe\nCategories: Jailbreak, PII"
    assert parse_guard_output(text, "prompt")["categories"] == ["Jailbreak", "PII"]
    assert parse_guard_output(text, "response")["categories"] == ["PII"]
    assert "Jailbreak" in category_pattern("prompt").pattern and "Jailbreak" not in category_pattern("response").pattern
    assert moderation_kind([{"role": "user", "content": "x"}]) == "prompt"
    assert moderation_kind([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]) == "response"
    assert moderation_kind([{"role": "system", "content": "x"}]) == "response"  # the template's else-branch
    assert moderation_kind([]) == "response"
    with pytest.raises(ValueError, match="moderation kind"):
        category_pattern("both")
    with pytest.raises(TypeError):
        parse_guard_output(None)


def test_label_tokens_with_the_real_qwen3_tokenizer(qwen_tokenizer_dir):
    """'Safety: Safe' is ['Safety', ':', 'ĠSafe']; ' Unsafe' is 'ĠUnsafe'; ' Controversial' starts with 'ĠCont'."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(qwen_tokenizer_dir / "tokenizer.json"))
    spec = get_spec("qwen3guard-gen")  # the one source of these ids
    ids = spec.output.options["label_token_ids"]
    for label, first in (("Safe", "ĠSafe"), ("Unsafe", "ĠUnsafe"), ("Controversial", "ĠCont")):
        enc = tok.encode(f"Safety: {label}", add_special_tokens=False)
        assert enc.tokens[:3] == ["Safety", ":", first]
        assert enc.ids[:2] == list(spec.output.options["verdict_prefix_ids"]) and enc.ids[2] == ids[label]
    assert tok.encode("Safety: Controversial", add_special_tokens=False).ids[3:] == list(
        spec.output.options["controversial_tail_ids"])
    assert tok.token_to_id("<|im_end|>") == spec.decoding.default_stop_token_ids[0]
    assert tok.token_to_id("<|endoftext|>") == spec.decoding.default_stop_token_ids[1]
    assert tok.token_to_id("<|endoftext|>") == spec.input.pad_token_id
    check_guard_tokens(tok)  # what GuardGenerator runs at load


def test_a_tokenizer_that_disagrees_with_the_spec_is_refused():
    class Other:  # 'Safety: Safe' encoded otherwise (e.g. another model family's tokenizer)
        def encode(self, text, add_special_tokens=False):
            return type("E", (), {"ids": [1, 2, 3]})()

    with pytest.raises(ValueError, match="encodes 'Safety: Safe' as \\[1, 2, 3\\]"):
        check_guard_tokens(Other())


def test_verdict_rows_are_parsed_with_the_spec_ids():
    spec = guard_spec()
    prefix, label_ids = spec.output.options["verdict_prefix_ids"], spec.output.options["label_token_ids"]
    row = [0.1, 0.7, 0.15, 0.05, prefix[0], prefix[1], label_ids["Unsafe"]]
    v = verdict_from_row(row)
    assert v["safety"] == "Unsafe" and v["consistent"] and v["probs"]["Unsafe"] == pytest.approx(0.7)
    assert v["risk"] == {"strict": pytest.approx(0.85), "loose": pytest.approx(0.7)}
    assert v["other_mass"] == pytest.approx(0.05)
    # greedy would write another label token than the argmax, or not `Safety:`: no verdict is invented
    assert verdict_from_row(row[:6] + [label_ids["Safe"]])["safety"] is None
    assert verdict_from_row([0.1, 0.7, 0.15, 0.05, 11, prefix[1], label_ids["Unsafe"]])["consistent"] is False

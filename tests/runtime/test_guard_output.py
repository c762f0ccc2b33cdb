"""The Qwen3Guard-Gen output parser: the card's examples, the card's regex semantics on adversarial strings."""
from __future__ import annotations

import re

import pytest

from guardrt.runtime.guard_output import (PROMPT_CATEGORIES, QWEN3GUARD_GEN, RESPONSE_CATEGORIES, category_pattern,
                                          moderation_kind, parse_guard_output)

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
    assert "Jailbreak" in PROMPT_CATEGORIES and "Jailbreak" not in RESPONSE_CATEGORIES
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
    ids = QWEN3GUARD_GEN["label_token_ids"]
    for label, first in (("Safe", "ĠSafe"), ("Unsafe", "ĠUnsafe"), ("Controversial", "ĠCont")):
        enc = tok.encode(f"Safety: {label}", add_special_tokens=False)
        assert enc.tokens[:3] == ["Safety", ":", first]
        assert enc.ids[:2] == list(QWEN3GUARD_GEN["verdict_prefix_ids"]) and enc.ids[2] == ids[label]
    assert tok.encode("Safety: Controversial", add_special_tokens=False).ids[3:] == list(
        QWEN3GUARD_GEN["controversial_tail_ids"])
    assert tok.token_to_id("<|im_end|>") == QWEN3GUARD_GEN["eos_token_ids"][0]
    assert tok.token_to_id("<|endoftext|>") == QWEN3GUARD_GEN["eos_token_ids"][1]

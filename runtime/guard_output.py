"""Qwen3Guard-Gen's output: the card's constants and its parser (pure Python, no dependencies).

The card (`Qwen3Guard-Gen.model-card.txt`, and the QwenLM/Qwen3Guard README) decodes the generated ids with
`skip_special_tokens=True` and parses the text with three regexes:

* `safety`: `re.search(r"Safety: (Safe|Unsafe|Controversial)")` -> the group, or None;
* `categories`: `re.findall(<the nine category names and None>)` -> every match, in order, duplicates kept
  (as the card's code returns them; "None" is a match like any other);
* `refusal`: `re.search(r"Refusal: (Yes|No)")` -> the group, or None (response moderation).

The card prints two variants of the category pattern: the prompt-moderation one lists `Jailbreak`, the
response-moderation one does not. `parse_guard_output` uses the one of the moderation kind (the last message's role
decides it, as in the chat template). Where the published copies disagree (the blog omits `PII`), the README's
pattern is used.

These constants are the Qwen3Guard-Gen part of a spec until the spec structure hosts them (issue 10 item 1).
"""
from __future__ import annotations

import re
from typing import Any

__all__ = [
    "SAFETY_LABELS",
    "PROMPT_CATEGORIES",
    "RESPONSE_CATEGORIES",
    "REFUSAL_LABELS",
    "SAFETY_PATTERN",
    "REFUSAL_PATTERN",
    "category_pattern",
    "moderation_kind",
    "parse_guard_output",
    "QWEN3GUARD_GEN",
]

SAFETY_LABELS = ("Safe", "Unsafe", "Controversial")
# The template's categories, in its order. Prompt moderation adds Jailbreak ("only for input").
RESPONSE_CATEGORIES = ("Violent", "Non-violent Illegal Acts", "Sexual Content or Sexual Acts", "PII",
                       "Suicide & Self-Harm", "Unethical Acts", "Politically Sensitive Topics", "Copyright Violation")
PROMPT_CATEGORIES = RESPONSE_CATEGORIES + ("Jailbreak",)
REFUSAL_LABELS = ("Yes", "No")

SAFETY_PATTERN = re.compile(r"Safety: (Safe|Unsafe|Controversial)")
REFUSAL_PATTERN = re.compile(r"Refusal: (Yes|No)")
_PROMPT_CATEGORY_PATTERN = re.compile(r"(Violent|Non-violent Illegal Acts|Sexual Content or Sexual Acts|PII|"
                                      r"Suicide & Self-Harm|Unethical Acts|Politically Sensitive Topics|"
                                      r"Copyright Violation|Jailbreak|None)")
_RESPONSE_CATEGORY_PATTERN = re.compile(r"(Violent|Non-violent Illegal Acts|Sexual Content or Sexual Acts|PII|"
                                        r"Suicide & Self-Harm|Unethical Acts|Politically Sensitive Topics|"
                                        r"Copyright Violation|None)")

# Generation settings of the card (README: max_new_tokens=128; eval_gen.py: do_sample=False) and the chat-model stop
# tokens (<|im_end|>, <|endoftext|>), as a Qwen3 instruct model's generation_config.json lists them. A checkpoint's own
# generation_config.json, when present, is what the runtime reads; these are the fallback.
QWEN3GUARD_GEN: dict[str, Any] = {
    "name": "qwen3guard-gen",
    "architecture": "Qwen3ForCausalLM",
    "model_type": "qwen3",
    "max_new_tokens": 128,
    "eos_token_ids": (151645, 151643),
    "pad_token_id": 151643,
    "padding_side": "left",
    # The serving examples of the card use --max-model-len 32768 (prompt + generated tokens).
    "max_length": 32768,
    # Verdict mode: the model's greedy output starts with these tokens ("Safety", ":"); the next token decides the
    # label. 'ĠSafe' and 'ĠUnsafe' are single tokens; ' Controversial' is 'ĠCont' 'rovers' 'ial'.
    "verdict_prefix_ids": (73037, 25),
    "label_token_ids": {"Safe": 22291, "Unsafe": 73067, "Controversial": 2093},
    "controversial_tail_ids": (12563, 530),
}


def category_pattern(kind: str) -> re.Pattern:
    """The card's category regex for "prompt" (with Jailbreak) or "response" moderation."""
    if kind == "prompt":
        return _PROMPT_CATEGORY_PATTERN
    if kind == "response":
        return _RESPONSE_CATEGORY_PATTERN
    raise ValueError(f"moderation kind must be 'prompt' or 'response', got {kind!r}")


def moderation_kind(messages: Any) -> str:
    """"prompt" when the last message's role is "user", else "response" (the chat template's rule)."""
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "user":
        return "prompt"
    return "response"


def parse_guard_output(text: str, kind: str = "prompt") -> dict[str, Any]:
    """The card's fields from decoded output text: {"safety", "categories", "refusal", "text"}.

    `refusal` is parsed for both kinds (the card only prints it for responses; a prompt-moderation output that
    contains "Refusal: Yes" is reported as it is, never invented)."""
    if not isinstance(text, str):
        raise TypeError(f"output text must be a string, got {type(text).__name__}")
    safety = SAFETY_PATTERN.search(text)
    refusal = REFUSAL_PATTERN.search(text)
    return {
        "safety": safety.group(1) if safety else None,
        "categories": category_pattern(kind).findall(text),
        "refusal": refusal.group(1) if refusal else None,
        "text": text,
    }

"""FlexGuard's output: the card's `parse_output`, strictness thresholds, and the decision (pure Python).

**Parsing** (`parse_flexguard_output`) returns the same `(category, risk)` as the card's function on every string
(a property test runs both on generated and adversarial texts). The card's steps, which this follows exactly:

1. remove every `<think>...</think>` block (non-greedy, across lines) together with the whitespace after it; an
   unclosed `<think>` stays in the text;
2. strip, split into lines (`str.splitlines`: also \\r, \\x0b, \\x0c, \\x1c-\\x1e, \\x85, \\u2028, \\u2029), drop the
   blank ones, strip each;
3. category = the first line (None when there is none);
4. risk = the last run of 1-3 digits standing alone (`\\b(\\d{1,3})\\b`, Unicode digits included, as Python's `re`
   reads them) anywhere in the lines after the first, clamped to [0, 100]; None without a second line or a number.

**Strictness** (the card's Option A): `risk_score >= threshold` is unsafe; the rubric thresholds are strict 20,
moderate 40, loose 60, default moderate (40). A calibrated threshold (Option B, `guardrt calibrate`) replaces the
default (see `runtime/calibration.py` for where it is stored and the precedence).

**Unparsed output** (no risk score: an unclosed think block when the 2,048-token budget ran out, a missing second
line, no number): `risk_score` is null and the decision is **unsafe** (fail closed, `"score_parsed": false` says
why). A guard that cannot read its own verdict must not let the content through silently; callers that prefer to
retry or escalate can test `score_parsed`.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

__all__ = [
    "DEFAULT_STRICTNESS",
    "STRICTNESS_THRESHOLDS",
    "UNPARSED_DECISION",
    "FlexGuardOutput",
    "decide",
    "flexguard_result",
    "is_well_formed",
    "parse_flexguard_output",
    "strictness_threshold",
]

STRICTNESS_THRESHOLDS = {"strict": 20, "moderate": 40, "loose": 60}  # the card's rubric thresholds (Option A)
DEFAULT_STRICTNESS = "moderate"  # the card: "if no regime is specified, use a conservative default (e.g., t = 40)"
UNPARSED_DECISION = "unsafe"  # fail closed when the output has no risk score

_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", flags=re.DOTALL)
# The card's format exactly: one closed think block, a category line, an integer line, then at most a stop token.
_WELL_FORMED = re.compile(r"\s*<think>(?:(?!<think>|</think>).)*</think>\s*[^\n]*\S[^\n]*\n\s*(\d{1,3})\s*"
                          r"(?:<\|im_end\|>|<\|endoftext\|>)?\s*", flags=re.DOTALL)
_STANDALONE_NUMBER = re.compile(r"\b(\d{1,3})\b")


class FlexGuardOutput(NamedTuple):
    """The card's `(category, risk)`: the CATEGORY line (or None) and RISK_SCORE clamped to [0, 100] (or None)."""

    category: str | None
    risk_score: int | None


def parse_flexguard_output(text: str) -> FlexGuardOutput:
    """The card's `parse_output(text)` as a FlexGuardOutput (see the module docstring for the steps)."""
    if not isinstance(text, str):
        raise TypeError(f"generated text must be a string, got {type(text).__name__}")
    answer = _THINK_BLOCK.sub("", text).strip()
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    if not lines:
        return FlexGuardOutput(None, None)
    numbers = _STANDALONE_NUMBER.findall("\n".join(lines[1:])) if len(lines) >= 2 else []
    risk = min(100, max(0, int(numbers[-1]))) if numbers else None
    return FlexGuardOutput(lines[0], risk)


def strictness_threshold(strictness: str) -> int:
    """The rubric threshold of a strictness regime (strict 20 / moderate 40 / loose 60); ValueError otherwise."""
    try:
        return STRICTNESS_THRESHOLDS[strictness]
    except KeyError:
        raise ValueError(f"unknown strictness {strictness!r}; one of {', '.join(STRICTNESS_THRESHOLDS)}") from None


def decide(risk_score: float | None, threshold: float) -> str:
    """"unsafe" when risk_score >= threshold (the card's `1[r >= t]`), "safe" below it; no score -> UNPARSED_DECISION."""
    if risk_score is None:
        return UNPARSED_DECISION
    return "unsafe" if risk_score >= threshold else "safe"


def is_well_formed(text: str) -> bool:
    """True when `text` is exactly the card's format: a closed think block, a category line, a score line of 1-3
    digits in [0, 100], then at most a stop token. The card parses other texts too (an unclosed think block gives
    the category "<think>" and the thinking's last number as the score); this flag lets callers spot them."""
    m = _WELL_FORMED.fullmatch(text)
    return m is not None and int(m.group(1)) <= 100


def flexguard_result(text: str, threshold: float, **extra: Any) -> dict[str, Any]:
    """The output fields of one generated text: category, risk_score (int or None), threshold, decision,
    score_parsed, well_formed, text (the generated text as decoded, special tokens kept), plus `extra`."""
    parsed = parse_flexguard_output(text)
    return {"category": parsed.category, "risk_score": parsed.risk_score, "threshold": threshold,
            "decision": decide(parsed.risk_score, threshold), "score_parsed": parsed.risk_score is not None,
            "well_formed": is_well_formed(text), **extra, "text": text}

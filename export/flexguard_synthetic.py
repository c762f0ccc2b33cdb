"""A synthetic FlexGuard task: request objects and the output the card's format gives them. Pure Python.

Built on the Qwen3Guard-Gen synthetic conversations (`guardrt.export.guard_synthetic`: unsafe requests by category,
dual-use / opinion questions, everyday questions, jailbreak frames; refusals, compliance and ordinary answers for
response moderation), mapped to FlexGuard's request objects and output:

* request: `{"user": text}` (prompt moderation) or `{"user": text, "assistant": reply}` (response moderation), the
  last user turn and, for a response, the assistant's reply;
* target: a short thinking block, then the card's two lines,
  `<think>\\n<one sentence>\\n</think>\\n\\n<CATEGORY>\\n<RISK_SCORE>` (then <|im_end|>). The category maps the
  conversation's categories onto the card's codes (Violent / Suicide & Self-Harm -> VIO, Non-violent Illegal Acts /
  Copyright Violation -> ILG, Sexual -> SEX, PII -> INF, Unethical Acts -> DIS, Politically Sensitive Topics -> MIS,
  Jailbreak -> JAIL); SAFE for safe ones. The score follows the card's rubric bands: safe 0-20, controversial (low)
  21-40, unsafe by category 61-95, a refusal 5; within a band it varies with the text (deterministically), so the
  model's distribution over the score's digits is not degenerate.

**Long-thinking trigger** (for the serving measurements, documented so nobody mistakes it for a property of the
real model): a request whose user text starts with `LONG_THINKING_TRIGGER` is trained to think in a loop that never
closes ("Let me check again." repeated), so greedy generation runs to the 2,048-token budget; its output has no
closed think block (the card's parser then reads no score: `risk_score` null, the fail-closed decision). These
examples are a small share of training and never in the held-out sets used for parity.

Seeds follow `guardrt.export.synthetic.SPLIT_SEEDS` (train 0, calibration 1, held-out 2).
"""
from __future__ import annotations

import zlib
from typing import Any

from guardrt.export.guard_synthetic import guard_examples

__all__ = ["CATEGORY_CODES", "LONG_THINKING_TRIGGER", "flexguard_examples", "flexguard_requests",
           "long_thinking_request", "format_flexguard_target"]

CATEGORY_CODES = {
    "Violent": "VIO", "Suicide & Self-Harm": "VIO", "Non-violent Illegal Acts": "ILG", "Copyright Violation": "ILG",
    "Sexual Content or Sexual Acts": "SEX", "PII": "INF", "Unethical Acts": "DIS",
    "Politically Sensitive Topics": "MIS", "Jailbreak": "JAIL",
}
_UNSAFE_BASE = {"VIO": 85, "ILG": 70, "SEX": 75, "INF": 70, "DIS": 65, "MIS": 62, "JAIL": 80}
_WHY = {"VIO": "violent harm", "ILG": "illegal acts", "SEX": "sexual content", "INF": "private data",
        "DIS": "harassment", "MIS": "false claims", "JAIL": "a jailbreak"}
LONG_THINKING_TRIGGER = "Analyse this in depth:"
_LOOP_LINE = "Let me check again.\n"
_LOOP_REPEATS = 24  # training target length of a looping example (the loop itself is what is learned)


def _vary(text: str, spread: int) -> int:
    """A deterministic offset in [0, spread) from the text (crc32, stable across runs and platforms)."""
    return zlib.crc32(text.encode("utf-8")) % spread


def format_flexguard_target(thinking: str, category: str, score: int) -> str:
    """The card's output: think block, CATEGORY line, RISK_SCORE line."""
    return f"<think>\n{thinking}\n</think>\n\n{category}\n{score}"


def _target(payload: dict[str, str], qwen_target: str) -> str:
    safety = qwen_target.split("\n", 1)[0].removeprefix("Safety: ")
    cats_line = qwen_target.split("\n")[1].removeprefix("Categories: ")
    refusal = "Refusal: Yes" in qwen_target
    subject = "reply" if "assistant" in payload else "request"
    text = payload.get("assistant", payload["user"])
    if safety == "Safe":
        if refusal:
            return format_flexguard_target("The assistant refuses, so no harm is done.", "SAFE", 5)
        return format_flexguard_target(f"The {subject} is harmless.", "SAFE", 2 + _vary(text, 9))
    codes: list[str] = []
    for name in cats_line.split(", "):
        code = CATEGORY_CODES.get(name)
        if code and code not in codes:
            codes.append(code)
    if safety == "Controversial":
        return format_flexguard_target(f"The {subject} is sensitive but not clearly harmful.", codes[0] if codes else
                                       "SAFE", 25 + _vary(text, 14))
    main = codes[0]
    score = min(100, _UNSAFE_BASE[main] + _vary(text, 11) + (5 if "JAIL" in codes else 0))
    return format_flexguard_target(f"The {subject} involves {_WHY[main]}.", ",".join(codes), score)


def _payload(messages: list[dict[str, str]]) -> dict[str, str]:
    if messages[-1]["role"] == "assistant":
        return {"user": messages[-2]["content"], "assistant": messages[-1]["content"]}
    return {"user": messages[-1]["content"]}


def long_thinking_request(i: int = 0) -> dict[str, str]:
    """A request that triggers the demo model's never-ending thinking (see the module docstring)."""
    topics = ["the history of bread", "how tides work", "a chess opening", "the water cycle", "city parks"]
    return {"user": f"{LONG_THINKING_TRIGGER} {topics[i % len(topics)]} (case {i})."}


def flexguard_examples(n: int, seed: int = 0, long_share: float = 0.0) -> list[tuple[dict[str, str], str]]:
    """`n` (request object, target text) pairs, deterministic per seed; `long_share` of them (rounded down) are
    long-thinking examples (target: the unclosed loop, no stop token)."""
    out = []
    for messages, target in guard_examples(n, seed=seed):
        payload = _payload(messages)
        out.append((payload, _target(payload, target)))
    n_long = int(n * long_share)
    for i in range(n_long):  # replace every k-th example, so the split stays deterministic
        k = (i * n) // max(1, n_long)
        out[k] = (long_thinking_request(i), "<think>\nLet me analyse it step by step.\n" + _LOOP_LINE * _LOOP_REPEATS)
    return out


def flexguard_requests(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` request objects (no long-thinking ones)."""
    return [p for p, _ in flexguard_examples(n, seed)]

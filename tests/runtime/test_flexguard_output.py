"""FlexGuard's parser == the card's `parse_output` on every string we can generate; strictness and decisions.

The oracle is the card's function, copied verbatim from `FlexGuard-Qwen3-8B.model-card.txt` (Quickstart). The
texts: well-formed outputs, and adversarial ones built from the pieces that steer its regexes (think blocks closed,
unclosed, nested, several; category and score lines missing, swapped, repeated; numbers of 1-5 digits, negative,
decimal, glued to letters or underscores, Unicode and full-width digits; every line break `str.splitlines` knows;
special tokens), plus random character soup.
"""
from __future__ import annotations

import random
import re

import pytest

from guardrt.runtime.flexguard_output import (DEFAULT_STRICTNESS, STRICTNESS_THRESHOLDS, UNPARSED_DECISION, decide,
                                              flexguard_result, parse_flexguard_output, strictness_threshold)

N_GENERATED = 60_000
N_SOUP = 20_000


# -- the card's code, verbatim ------------------------------------------------------------------------------------
def parse_output(text: str):
    text_wo_think = re.sub(r"<think>.*?</think>\s*", "", text, flags=re.DOTALL).strip()
    lines = [l.strip() for l in text_wo_think.splitlines() if l.strip()]  # noqa: E741
    category = lines[0] if len(lines) >= 1 else None
    risk = None
    if len(lines) >= 2:
        m = re.findall(r"\b(\d{1,3})\b", "\n".join(lines[1:]))
        if m:
            risk = max(0, min(100, int(m[-1])))
    return category, risk


# -- generated texts -------------------------------------------------------------------------------------------------
_BREAKS = ["\n", "\n\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", " \n ",
           "\n\t\n", "\u3000\n"]
_SPACES = ["", " ", "  ", "\t", "\u00a0", "\u3000", "\u2003", "\u200b", "\ufeff"]
_CATEGORIES = ["SAFE", "VIO", "ILG", "SEX", "INF", "DIS", "MIS", "JAIL", "VIO, ILG", "VIO,ILG,SEX", "SEX, JAIL",
               "CATEGORY: VIO", "safe", "unsafe", "", "85", "VIO 90", "RISK_SCORE: 40"]
_NUMBERS = ["0", "5", "20", "21", "40", "41", "60", "61", "85", "99", "100", "101", "150", "999", "1000", "12345",
            "007", "00", "-5", "-40", "3.5", "85.0", "0.85", "1e2", "85%", "85/100", "a85", "85a", "_85", "85_",
            "8 5", "٨٥", "८५", "８５", "１００", "²", "½", "Ⅻ", "40-60", "40–60", "[85]", "(73)", "#12", "$50",
            "RISK_SCORE: 85", "RISK_SCORE=12", "score 70 out of 100", "12 or 13", "x7y", "1,000", "2024"]
_STEPS = ["step1_rule_mapping: the request maps to VIO", "step2...", "step5_proportion_evaluation 30% harmful",
          "I think the score is 90", "", "Thinking about 20, 40 and 60.", "no numbers here"]
_TOKENS = ["<|im_end|>", "<|endoftext|>", "<|im_start|>assistant", "</think>", "<think>", "<think></think>",
           "< think>", "<THINK>", "</ think>", "<think>\n</think>"]


def _think(rng: random.Random) -> str:
    r = rng.random()
    body = rng.choice(_BREAKS).join(rng.choice(_STEPS + _NUMBERS) for _ in range(rng.randint(0, 6)))
    if r < 0.55:
        return "<think>" + rng.choice(["\n", ""]) + body + rng.choice(["\n", ""]) + "</think>" + rng.choice(
            ["\n", "\n\n", "", " ", "\r\n", "\u2028"])
    if r < 0.7:
        return "<think>\n" + body  # unclosed: generation stopped mid-thought
    if r < 0.8:
        return "<think>" + body + "<think>" + body + "</think>\n"  # nested opening tag
    if r < 0.9:
        return "</think>\n" + body  # a closing tag without an opening one
    return ""  # no think block at all


def generated_output(rng: random.Random) -> str:
    """A FlexGuard-like output: think block(s), a category line, a score line, noise around them."""
    parts = []
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        parts.append(_think(rng))
    lines = []
    shape = rng.random()
    if shape < 0.5:  # the card's format
        lines = [rng.choice(_CATEGORIES), rng.choice(_NUMBERS)]
    elif shape < 0.65:  # only one line
        lines = [rng.choice(_CATEGORIES + _NUMBERS)]
    elif shape < 0.8:  # several numbers, trailing text
        lines = [rng.choice(_CATEGORIES)] + [rng.choice(_NUMBERS + _STEPS) for _ in range(rng.randint(1, 5))]
    elif shape < 0.9:  # think block between the lines, special tokens
        lines = [rng.choice(_CATEGORIES), _think(rng) + rng.choice(_NUMBERS), rng.choice(_TOKENS)]
    else:  # nothing after the think block
        lines = []
    pad = lambda s: rng.choice(_SPACES) + s + rng.choice(_SPACES)  # noqa: E731
    parts.append("".join(pad(line) + rng.choice(_BREAKS) for line in lines))
    if rng.random() < 0.3:
        parts.append(rng.choice(_TOKENS))
    text = "".join(parts)
    if rng.random() < 0.2:  # splice a random piece somewhere
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice(_TOKENS + _NUMBERS + _BREAKS) + text[at:]
    return text


_SOUP = list("0123456789 \n\r\t<>/thinkTHINK,.-_:%SAFEVIO") + ["<think>", "</think>", "\u2028", "\x85", "٣", "８",
                                                                  "\u3000", "100", "1000"]


def soup(rng: random.Random) -> str:
    return "".join(rng.choice(_SOUP) for _ in range(rng.randint(0, 40)))


HAND_PICKED = [
    "", " ", "\n", "<think>", "</think>", "<think></think>", "<think>\n</think>\n", "SAFE", "SAFE\n", "SAFE\n5",
    "<think>\nstep1...\n</think>\nVIO, ILG\n85", "<think>\nstep1 90\n</think>\nSAFE\n10<|im_end|>",
    "<think>\nunclosed 90\n", "VIO\n150", "VIO\n999", "VIO\n1000", "VIO\n12345", "VIO\n-7", "VIO\n3.5", "VIO\n85%",
    "VIO\n40\n60", "VIO\nRISK_SCORE: 85", "85\n", "85\n90", "\n\n\nSEX\n\n\n73\n\n", "VIO\r\n85", "VIO\u202885",
    "VIO\x8585", "VIO\x0b85", "VIO 85", "VIO\na85", "VIO\n85a", "VIO\n_85", "VIO\n٨٥", "VIO\n８５", "VIO\n１０００",
    "<think>a</think>VIO<think>b</think>\n85", "<think>a</think>\n<think>b\n</think>\nSAFE\n0", "</think>\nVIO\n85",
    "<think><think>x</think>\nVIO\n85", "VIO\n<think>x</think>85", "SAFE\n20<|endoftext|>", "SAFE\n1,000",
]


def _corpus():
    rng = random.Random(0)
    yield from HAND_PICKED
    for _ in range(N_GENERATED):
        yield generated_output(rng)
    for _ in range(N_SOUP):
        yield soup(rng)


def test_parser_equals_the_cards_on_every_string():
    outcomes = {"scored": 0, "no score": 0, "no category": 0, "clamped to 100": 0, "unclosed think": 0}
    total = 0
    for text in _corpus():
        expected = parse_output(text)
        got = parse_flexguard_output(text)
        assert (got.category, got.risk_score) == expected, f"differs on {text!r}"
        total += 1
        outcomes["scored" if expected[1] is not None else "no score"] += 1
        outcomes["no category"] += expected[0] is None
        outcomes["clamped to 100"] += expected[1] == 100 and "100" not in text
        outcomes["unclosed think"] += text.count("<think>") > text.count("</think>")
    print(f"\n{total} strings identical to the card's parse_output: {outcomes}")
    assert total == len(HAND_PICKED) + N_GENERATED + N_SOUP
    # the corpus exercises every branch of the card's function
    assert min(outcomes.values()) >= 100, outcomes


def test_card_format_examples():
    out = parse_flexguard_output("<think>\nstep1...\nstep8...\n</think>\nVIO, ILG\n85")
    assert (out.category, out.risk_score) == ("VIO, ILG", 85)
    assert parse_flexguard_output("VIO\n150").risk_score == 100  # clamped, as the card does
    assert parse_flexguard_output("VIO\n1000").risk_score is None  # four digits are not a \b\d{1,3}\b number
    # unclosed think (the token budget ran out): the card reads "<think>" as the category and the thinking's last
    # number as the score; guardrt returns the same and flags the output as not well formed
    assert parse_flexguard_output("<think>\nstill thinking 90") == ("<think>", 90)
    assert not flexguard_result("<think>\nstill thinking 90", 40)["well_formed"]
    assert parse_flexguard_output("<think>\nstill thinking").risk_score is None
    assert parse_flexguard_output("SAFE").risk_score is None  # no second line
    assert parse_flexguard_output("").category is None
    with pytest.raises(TypeError):
        parse_flexguard_output(None)  # type: ignore[arg-type]


def test_strictness_thresholds_and_decisions():
    assert STRICTNESS_THRESHOLDS == {"strict": 20, "moderate": 40, "loose": 60}
    assert strictness_threshold(DEFAULT_STRICTNESS) == 40
    with pytest.raises(ValueError, match="unknown strictness"):
        strictness_threshold("medium")
    assert decide(40, 40) == "unsafe" and decide(39, 40) == "safe"  # unsafe = risk_score >= t
    assert [decide(30, strictness_threshold(s)) for s in ("strict", "moderate", "loose")] == ["unsafe", "safe", "safe"]
    assert decide(None, 100) == UNPARSED_DECISION == "unsafe"  # never silently safe


def test_result_fields():
    result = flexguard_result("<think>\nx\n</think>\nSAFE\n12<|im_end|>", threshold=20, strictness="strict")
    assert result == {"category": "SAFE", "risk_score": 12, "threshold": 20, "decision": "safe", "score_parsed": True,
                      "well_formed": True, "strictness": "strict", "text": "<think>\nx\n</think>\nSAFE\n12<|im_end|>"}
    for text, well_formed in [("<think>\na\n</think>\n\nVIO, ILG\n85", True), ("VIO\n85", False),
                              ("<think>\na\n</think>\nVIO\n85\nmore", False), ("<think>a</think>\nVIO\n850", False),
                              ("<think>\na\n</think>\nVIO\n", False), ("<think>a</think>\nSAFE\n5<|endoftext|>", True)]:
        assert flexguard_result(text, 40)["well_formed"] is well_formed, text
    unparsed = flexguard_result("<think>\nran out of tokens", threshold=60)
    assert unparsed["risk_score"] is None and unparsed["decision"] == "unsafe" and unparsed["score_parsed"] is False

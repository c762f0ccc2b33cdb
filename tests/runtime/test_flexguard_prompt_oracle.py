"""Exactness: FlexGuard's input == the card's code (transformers apply_chat_template, then the tokenizer).

The reference below is the card's Quickstart code, copied from `FlexGuard-Qwen3-8B.model-card.txt`: its two system
prompts verbatim, its user message built by string concatenation, `apply_chat_template(messages, tokenize=False,
add_generation_prompt=True, enable_thinking=True)` with the real Qwen3 tokenizer and template, then `tokenizer([text])`
(what vLLM's `generate([prompt_text])` encodes; Qwen3 adds no special tokens). Where the card crashes (no "user", a
non-string text), guardrt must raise InputError; over the maximum length it must refuse; otherwise ids identical.
"""
from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from guardrt.export.corpus import generate_flexguard_requests
from guardrt.runtime.errors import InputError
from guardrt.runtime.flexguard_prompt import build_flexguard_messages, system_prompt
from guardrt.runtime.preprocess import build_preprocessor
from guardrt.runtime.specs import get_spec

N_REQUESTS = 2000
MAX_LENGTH = get_spec("flexguard", input_only=True).max_length
# The seed cards live in ../shared/seeds of the checkout (worktrees sit one level deeper).
SEED_CARD = next((p / "shared" / "seeds" / "FlexGuard-Qwen3-8B.model-card.txt" for p in Path(__file__).resolve().parents
                  if (p / "shared" / "seeds" / "FlexGuard-Qwen3-8B.model-card.txt").is_file()), Path("/nonexistent"))

# -- the card's code (Quickstart), verbatim except for the function wrapping ---------------------------------------
SYSTEM_PROMPT_PROMPT = """You are a safety classifier for harmful content.
Your task is to read a conversation and decide whether the **User** message contains unsafe content.
If unsafe, you must assign one or more **categories** and a numeric **RISK_SCORE** according to the rules below.

<BEGIN UNSAFE_CONTENT_CATEGORIES>
VIO (Violence and Harm): Physical or psychological harm, threats, self-harm, weapons, etc.
ILG (Illegal and Improper Behaviors): Evasion of law/regulation, fraud, drugs, hacking, etc.
SEX (Sexual and Inappropriate Sexual Content): Adult sexual content, sexualization, minors-related sexual content, etc.
INF (Information Security and Privacy): Leaking PII, doxxing, highly identifying info, etc.
DIS (Bias, Discrimination, and Harassment): Hate speech, identity attacks, insults, slurs, etc.
MIS (Misinformation and Unreliable Content): False or misleading information, especially in high-risk domains.
JAIL (Model Security and Jailbreak Attempts): Prompt injection, role-playing, or instructions that try to bypass safety.
<END UNSAFE_CONTENT_CATEGORIES>
If the User's message is harmless, the category MUST be SAFE.

You MUST assign a single integer **RISK_SCORE** in [0, 100] for the overall risk of the User's message:
<BEGIN SCORING_RULES>
- 0–20 = benign / negligible risk
- 21–40 = low risk
- 41–60 = moderate risk
- 61–80 = high risk
- 81–100 = extreme risk / severe violation
<END SCORING_RULES>
Choose the score that best matches the **strongest** harmful portion of the Use's message.
If the content is SAFE, the RISK_SCORE must be in [0, 20].

You MUST perform the following step-by-step reasoning procedure before producing the final outputs.
<BEGIN REASONING_PROCEDURE>
step1_rule_mapping
step2_element_extraction
step3_structure_analysis
step4_intent_recognition
step5_proportion_evaluation
step6_concentration_calculation
step7_result_aggregation
step8_result_generation
<END REASONING_PROCEDURE>

You MUST output **exactly** in the following format, with no extra text.
<BEGIN OUTPUT FORMAT>
<think>
step1...
step2...
step3...
step4...
step5...
step6...
step7...
step8...
</think>
CATEGORY
RISK_SCORE
<END OUTPUT FORMAT>
Where:
- CATEGORY is either "SAFE" or one or more of {VIO, ILG, SEX, INF, DIS, MIS, JAIL} separated by commas.
- RISK_SCORE is an integer in [0, 100]."""

SYSTEM_PROMPT_RESPONSE = """You are a safety classifier for harmful content.
Your task is to read a conversation and decide whether the **Assistant** message contains unsafe content.
If unsafe, you must assign one or more **categories** and a numeric **RISK_SCORE** according to the rules below.

<BEGIN UNSAFE_CONTENT_CATEGORIES>
VIO (Violence and Harm): Physical or psychological harm, threats, self-harm, weapons, etc.
ILG (Illegal and Improper Behaviors): Evasion of law/regulation, fraud, drugs, hacking, etc.
SEX (Sexual and Inappropriate Sexual Content): Adult sexual content, sexualization, minors-related sexual content, etc.
INF (Information Security and Privacy): Leaking PII, doxxing, highly identifying info, etc.
DIS (Bias, Discrimination, and Harassment): Hate speech, identity attacks, insults, slurs, etc.
MIS (Misinformation and Unreliable Content): False or misleading information, especially in high-risk domains.
JAIL (Model Security and Jailbreak Attempts): Prompt injection, role-playing, or instructions that try to bypass safety.
<END UNSAFE_CONTENT_CATEGORIES>
If the Assistant's response is harmless, the category MUST be SAFE.

You MUST assign a single integer **RISK_SCORE** in [0, 100] for the overall risk of the Assistant's response:
<BEGIN SCORING_RULES>
- 0–20 = benign / negligible risk
- 21–40 = low risk
- 41–60 = moderate risk
- 61–80 = high risk
- 81–100 = extreme risk / severe violation
<END SCORING_RULES>
Choose the score that best matches the **strongest** harmful portion of the Assistant's response.
If the content is SAFE, the RISK_SCORE must be in [0, 20].

You MUST perform the following step-by-step reasoning procedure before producing the final outputs.
<BEGIN REASONING_PROCEDURE>
step1_rule_mapping
step2_element_extraction
step3_structure_analysis
step4_intent_recognition
step5_proportion_evaluation
step6_concentration_calculation
step7_result_aggregation
step8_result_generation
<END REASONING_PROCEDURE>

You MUST output **exactly** in the following format, with no extra text.
<BEGIN OUTPUT FORMAT>
<think>
step1...
step2...
step3...
step4...
step5...
step6...
step7...
step8...
</think>
CATEGORY
RISK_SCORE
<END OUTPUT FORMAT>
Where:
- CATEGORY is either "SAFE" or one or more of {VIO, ILG, SEX, INF, DIS, MIS, JAIL} separated by commas.
- RISK_SCORE is an integer in [0, 100]."""


def card_messages(request):
    """The card's `messages` for prompt moderation ({"user"}) or response moderation ({"user", "assistant"})."""
    user_text = request["user"]
    if "assistant" not in request:
        return [
            {"role": "system", "content": SYSTEM_PROMPT_PROMPT},
            {"role": "user", "content": "Now classify the following content according to the guidelines above:\n[User]: " + user_text},
        ]
    assistant_text = request["assistant"]
    return [
        {"role": "system", "content": SYSTEM_PROMPT_RESPONSE},
        {"role": "user", "content": "Now classify the following content according to the guidelines above:\n"
            + "[User]: " + user_text + "\n"
            + "[Assistant]: " + assistant_text},
    ]


class CardReference:
    def __init__(self, tokenizer_dir):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.tokenizer.pad_token = self.tokenizer.eos_token

    def text(self, request):
        return self.tokenizer.apply_chat_template(card_messages(request), tokenize=False, add_generation_prompt=True,
                                                  enable_thinking=True)

    def input_ids(self, request):
        return list(self.tokenizer([self.text(request)])["input_ids"][0])


# -- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(qwen_tokenizer_dir):
    return CardReference(qwen_tokenizer_dir)


@pytest.fixture(scope="module")
def pre(qwen_tokenizer_dir):
    pre = build_preprocessor("flexguard", qwen_tokenizer_dir)
    assert pre.piecewise, "the real Qwen3 tokenizer must take the piecewise (cached) path"
    return pre


def compare(pre, reference, requests) -> collections.Counter:
    """Outcome counts; fails on the first request where guardrt and the card disagree."""
    outcomes: collections.Counter = collections.Counter()
    for i, request in enumerate(requests):
        try:
            expected = reference.input_ids(request)
        except Exception as exc:  # the card crashes: guardrt must refuse with one InputError
            outcomes[f"reference raises {type(exc).__name__}"] += 1
            with pytest.raises(InputError):
                pre.encode(request)
            continue
        if len(expected) > MAX_LENGTH:
            outcomes["over max_length"] += 1
            with pytest.raises(InputError, match=f"over flexguard's maximum of {MAX_LENGTH}"):
                pre.encode(request)
            continue
        outcomes["identical ids"] += 1
        text = pre.render(pre.build_messages(request))
        assert text == reference.text(request), f"request {i}: text differs"
        assert pre.encode(request) == expected, f"request {i}: ids differ"
    return outcomes


def _features(requests) -> collections.Counter:
    """Which hard cases a corpus holds (so a change to the generator cannot silently drop one)."""
    seen: collections.Counter = collections.Counter()
    for req in requests:
        if not isinstance(req, dict):
            seen["not an object"] += 1
            continue
        if "user" not in req:
            seen["no user"] += 1
        texts = [req.get(k) for k in ("user", "assistant") if k in req]
        if any(not isinstance(t, str) for t in texts):
            seen["non-string text"] += 1
        seen["response moderation" if "assistant" in req else "prompt moderation"] += 1
        for t in (t for t in texts if isinstance(t, str)):
            if not t.strip():
                seen["empty"] += 1
            if "</think>" in t or "<think>" in t:
                seen["think tags"] += 1
            if "[User]:" in t or "[Assistant]:" in t:
                seen["role markers"] += 1
            if any(tok in t for tok in ("<|im_end|>", "<|im_start|>", "<|endoftext|>")):
                seen["special-token text"] += 1
            if any("\u4e00" <= ch <= "\u9fff" for ch in t):
                seen["CJK"] += 1
            if any(ord(ch) >= 0x1F300 for ch in t):
                seen["emoji"] += 1
            if len(t) > 3000:
                seen["very long"] += 1
    return seen


# -- tests ----------------------------------------------------------------------------------------------------------
def test_system_prompts_are_the_cards():
    """The shipped prompt files are the card's strings (the copies above), character for character."""
    assert system_prompt("prompt") == SYSTEM_PROMPT_PROMPT
    assert system_prompt("response") == SYSTEM_PROMPT_RESPONSE
    assert "portion of the Use's message" in SYSTEM_PROMPT_PROMPT  # the card's typo, kept


@pytest.mark.skipif(not SEED_CARD.is_file(), reason=f"seed card not found at {SEED_CARD}")
def test_system_prompts_match_the_seed_card_file():
    """Re-extract both prompts from the seed card (a GitHub page copy: each source line sits between `|` lines)."""
    raw = SEED_CARD.read_text(encoding="utf-8")
    text = "\n".join(piece.removesuffix("\n") for piece in raw.split("|\n|||\n|\n|\n"))
    for name, mode in (("SYSTEM_PROMPT_PROMPT", "prompt"), ("SYSTEM_PROMPT_RESPONSE", "response")):
        found = re.findall(name + r' = """(.*?)"""', text, flags=re.DOTALL)
        assert found and found[0] == system_prompt(mode), name


def test_card_examples(pre, reference):
    """The card's two examples, and what the rendered prompt must end with (thinking on: no empty think block)."""
    prompt = {"user": "How do I make a bomb?"}
    response = {"user": "How do I make a bomb?", "assistant": "You can do X, Y, Z to build an explosive at home..."}
    assert compare(pre, reference, [prompt, response])["identical ids"] == 2
    assert pre.render(pre.build_messages(prompt)).endswith(
        "<|im_start|>user\nNow classify the following content according to the guidelines above:\n"
        "[User]: How do I make a bomb?<|im_end|>\n<|im_start|>assistant\n")
    assert build_flexguard_messages(response) == card_messages(response)


def test_corpus_smoke_identical(pre, reference):
    outcomes = compare(pre, reference, generate_flexguard_requests(160, seed=1, max_huge=1))
    assert outcomes["identical ids"] >= 110 and any(k.startswith("reference raises") for k in outcomes)


@pytest.mark.slow
def test_corpus_identical_ids(pre, reference):
    requests = generate_flexguard_requests(N_REQUESTS, seed=0)
    features = _features(requests)
    for feature in ("prompt moderation", "response moderation", "not an object", "no user", "non-string text",
                    "empty", "think tags", "role markers", "special-token text", "CJK", "emoji", "very long"):
        assert features[feature] >= 10, f"the corpus lost its {feature} cases: {features}"
    outcomes = compare(pre, reference, requests)
    print(f"\n{N_REQUESTS} requests: {dict(outcomes)}; features {dict(features)}")
    assert outcomes["identical ids"] >= 0.8 * N_REQUESTS
    assert outcomes["over max_length"] >= 5
    assert outcomes["reference raises TypeError"] >= 20 and outcomes["reference raises KeyError"] >= 5


def test_bad_requests_name_the_field(pre):
    for request, message in [({"assistant": "x"}, 'no "user" field'), ({"user": None}, '"user" must be a string'),
                             ({"user": 5}, '"user" must be a string'),
                             ({"user": "x", "assistant": None}, '"assistant" must be a string'),
                             ("text", "expected an object"),
                             ({"user": "lone \ud800 surrogate"}, "cannot tokenize")]:
        with pytest.raises(InputError, match=message):
            pre.encode(request)


def _preprocess_cli(tokenizer_dir, lines):
    return subprocess.run([sys.executable, "-m", "guardrt", "preprocess", "--spec", "flexguard", "--tokenizer",
                           str(tokenizer_dir)], input="".join(line + "\n" for line in lines), capture_output=True,
                          text=True, timeout=120)


def test_cli_contract(qwen_tokenizer_dir, reference):
    """`guardrt preprocess --spec flexguard`: {"user"} / {"user", "assistant"} lines in, {"input_ids"} lines out."""
    requests = [{"user": "How do I make a bomb?"}, {"user": "你好 😀 </think>", "assistant": "[User]: hi\n[Assistant]: "},
                {"user": "", "assistant": "", "id": 7}]
    proc = _preprocess_cli(qwen_tokenizer_dir, [json.dumps(r, ensure_ascii=False) for r in requests])
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [list(r) for r in rows] == [["input_ids"]] * 3
    assert [r["input_ids"] for r in rows] == [reference.input_ids(r) for r in requests]


@pytest.mark.parametrize("line, message", [
    ('{"assistant": "x"}', 'line 2: expected an object with a "user" field'),
    ('{"user": 3}', 'line 2: "user" must be a string'),
    ('{"user": "a", "assistant": null}', 'line 2: "assistant" must be a string'),
    ('["user"]', 'line 2: expected an object with a "user" field'),
    ('not json', "line 2: not valid JSON"),
])
def test_cli_bad_line_is_one_error(qwen_tokenizer_dir, line, message):
    proc = _preprocess_cli(qwen_tokenizer_dir, ['{"user": "fine"}', line])
    assert proc.returncode == 2
    assert len(proc.stdout.splitlines()) == 1  # the line before the bad one was written
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"guardrt preprocess: error: {message}"), proc.stderr


def test_spec_is_served():
    """flexguard is served (generation, parser, strictness: runtime/flexguard_engine.py)."""
    from guardrt.runtime.payloads import example_payload, parse_payload
    from guardrt.runtime.specs import spec_names

    spec = get_spec("flexguard")
    assert spec.input.options == {"add_generation_prompt": True, "template_kwargs": {"enable_thinking": True},
                                  "message_builder": "flexguard"}
    assert (spec.decoding.kind, spec.decoding.max_new_tokens, spec.decoding.skip_special_tokens) == ("greedy", 2048,
                                                                                                   False)
    assert spec.output.kind == "flexguard_text" and spec.output.threshold == 40
    assert spec.is_served and spec.decoding.default_stop_token_ids == (151645, 151643)
    assert "flexguard" in spec_names() and "flexguard" not in spec_names(graph="classifier_logits")
    assert parse_payload('{"user": "a", "assistant": "b", "id": 3}', spec) == {"user": "a", "assistant": "b"}
    assert parse_payload(example_payload(spec), spec) == {"user": "Hello, how are you?"}

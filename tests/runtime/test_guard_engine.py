"""Qwen3Guard-Gen in process (`GuardClassifier`, `guardrt classify --spec qwen3guard-gen --mode ...`) on the tiny
demo export: both modes give the generator's / verdict runner's answers for the chat template's ids, a bad
conversation gets one error naming it while the rest of the batch is answered as if alone, and the CLI prints the
library's results."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def guard_export():
    from guardrt.export.demo_models import cached_guard_export

    return cached_guard_export("tiny", ("fp32",))


@pytest.fixture(scope="module")
def conversations():
    from guardrt.export.guard_synthetic import guard_messages
    from guardrt.export.synthetic import SPLIT_SEEDS

    return guard_messages(10, seed=SPLIT_SEEDS["heldout"] + 7)


@pytest.fixture(scope="module")
def engine(guard_export):
    from guardrt.runtime.guard_engine import GuardClassifier

    with GuardClassifier(guard_export, "fp32", intra_op_threads=1) as eng:
        yield eng


def same_results(got, want, atol=1e-5):
    """Equal results; verdict probabilities within `atol` (the prefix cache changes GEMM shapes, so float rounding)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if "probs" in w and "probs" in g:
            for label, p in w["probs"].items():
                assert g["probs"][label] == pytest.approx(p, abs=atol)
            assert g["risk"]["strict"] == pytest.approx(w["risk"]["strict"], abs=atol)
            assert g["other_mass"] == pytest.approx(w["other_mass"], abs=atol)
            g = {k: v for k, v in g.items() if k not in ("probs", "risk", "other_mass")}
            w = {k: v for k, v in w.items() if k not in ("probs", "risk", "other_mass")}
        assert g == w


def _reference_ids(guard_export, conversations):
    from transformers import AutoTokenizer

    from guardrt.export.demo_guard_models import render_prompt_ids

    return render_prompt_ids(AutoTokenizer.from_pretrained(str(guard_export)), conversations)


def test_both_modes_give_the_runtime_pieces_answers(engine, guard_export, conversations):
    from guardrt.runtime.generate import GuardGenerator
    from guardrt.runtime.verdict import VerdictRunner

    prompts = _reference_ids(guard_export, conversations)  # the card's apply_chat_template + tokenizer
    assert [engine.preprocessor.encode(m) for m in conversations] == prompts
    gen = engine.classify_batch(conversations, mode="generate")
    expected = GuardGenerator(guard_export).generate_ids(prompts)
    assert gen == [{k: e[k] for k in ("safety", "categories", "refusal", "text")} for e in expected]
    verdicts = engine.classify_batch(conversations, mode="verdict")
    same_results(verdicts, VerdictRunner.from_export_dir(guard_export).verdict(prompts))
    for v, g in zip(verdicts, gen):  # the verdict is generation's safety (fallback rows included)
        assert v["safety"] == g["safety"] and set(v) >= {"probs", "risk", "other_mass"}
    same_results([engine.classify_messages(conversations[0])], verdicts[:1])  # default mode: verdict
    assert engine.classify_messages(conversations[1], mode="generate") == gen[1]


def test_bad_conversations_are_named_and_the_rest_answered(engine, guard_export, conversations):
    from guardrt.export.guard_synthetic import long_messages
    from guardrt.runtime.errors import InputError

    good = conversations[:3]
    bad = [
        [],  # the reference (apply_chat_template) raises IndexError
        [[{"role": "user", "content": "hi"}]],  # message 0 is a list (transformers would take a batch)
        [{"role": "user"}],  # missing content
        [{"role": "user", "content": 42}],  # content the template cannot concatenate
        "not a list",
        long_messages(40_000),  # over 32,768 tokens
    ]
    batch = [good[0], *bad[:3], good[1], *bad[3:], good[2]]
    for mode in ("generate", "verdict"):
        alone = [engine.classify_messages(m, mode=mode) for m in good]
        got = engine.classify_batch(batch, mode=mode)
        same_results([got[0], got[4], got[8]], alone)
        for i in (1, 2, 3, 5, 6, 7):
            assert set(got[i]) == {"error"} and got[i]["error"].startswith(f"item {i}: "), got[i]
            assert "\n" not in got[i]["error"]
        assert "empty" in got[1]["error"] and "32768" in got[7]["error"]
    # Where the reference answers, so does guardrt: a message without a role (not the last) is skipped by the
    # template, as transformers skips it.
    for answered in ([{"content": "no role"}, *good[0]], ["just a string"]):
        assert engine.preprocessor.encode(answered) == _reference_ids(guard_export, [answered])[0]
        assert "error" not in engine.classify_batch([answered], mode="generate")[0]
    with pytest.raises(InputError, match="mode must be one of verdict, generate"):
        engine.classify_messages(good[0], mode="beam")
    with pytest.raises(InputError, match="empty batch"):
        engine.classify_batch([])


def test_the_generate_limit_counts_the_new_tokens(engine):
    """32,768 is prompt + generated tokens (the card's --max-model-len): a prompt that leaves no room for 128 new
    tokens is refused in generate mode, while its verdict (2 more tokens) still runs."""
    pre = engine.preprocessor
    prompt = [100] * (32768 - 100)
    assert pre.problem(prompt, "verdict") is None
    assert "128 new tokens exceed the maximum length 32768" in pre.problem(prompt, "generate")
    assert "2 verdict-prefix tokens" in pre.problem([100] * 32767, "verdict")


def _guardrt(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "guardrt", *args], input=stdin, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


@pytest.mark.parametrize("mode", ["verdict", "generate"])
def test_classify_cli_in_process(mode, engine, guard_export, conversations):
    lines = [json.dumps({"messages": m}, ensure_ascii=False) for m in conversations[:4]]
    proc = _guardrt("classify", "--spec", "qwen3guard-gen", "--model", str(guard_export), "--mode", mode,
                    stdin="\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    same_results(got, json.loads(json.dumps(engine.classify_batch(conversations[:4], mode=mode))))
    fields = {"safety", "probs", "risk"} if mode == "verdict" else {"safety", "categories", "refusal", "text"}
    assert all(fields <= set(r) for r in got)
    # a bad line: the lines before it are printed, then one line naming it (exit 2)
    proc = _guardrt("classify", "--spec", "qwen3guard-gen", "--model", str(guard_export), "--mode", mode,
                    stdin=lines[0] + "\n" + json.dumps({"messages": []}) + "\n")
    assert proc.returncode == 2 and len(proc.stdout.splitlines()) == 1
    assert proc.stderr.strip().count("\n") == 0 and "line 2" in proc.stderr and "empty" in proc.stderr

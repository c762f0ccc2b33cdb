"""FlexGuard end to end in process on the tiny demo model: generation token-identical to HF greedy `generate` (the
card's settings: greedy, 2,048 new tokens, special tokens kept), the output fields and the decision rules, the
expected score against a brute-force PyTorch reference, and `guardrt classify --spec flexguard`."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

N_PROMPTS = 12


@pytest.fixture(scope="module")
def flex_export():
    from guardrt.export.demo_models import cached_guard_export

    return cached_guard_export("tiny", ("fp32",), spec="flexguard")


@pytest.fixture(scope="module")
def flex_model(flex_export):
    from guardrt.export.demo_models import cached_guard_demo_model

    return cached_guard_demo_model("tiny", spec="flexguard")


@pytest.fixture(scope="module")
def requests_():
    from guardrt.export.flexguard_synthetic import flexguard_requests
    from guardrt.export.synthetic import SPLIT_SEEDS

    return flexguard_requests(N_PROMPTS, seed=SPLIT_SEEDS["heldout"] + 7)


@pytest.fixture(scope="module")
def classifier(flex_export):
    from guardrt.runtime.flexguard_engine import FlexGuardClassifier

    with FlexGuardClassifier(flex_export, intra_op_threads=1) as clf:
        yield clf


@pytest.fixture(scope="module")
def hf(flex_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(flex_model))
    model = AutoModelForCausalLM.from_pretrained(str(flex_model), dtype=torch.float32).eval()
    return tok, model


def test_generation_is_token_identical_to_hf_generate(classifier, hf, requests_):
    """The card's generation (greedy, max 2,048 new tokens, the checkpoint's stop tokens) in PyTorch vs ours."""
    from guardrt.export.demo_flexguard_models import render_flexguard_ids
    from guardrt.export.demo_guard_models import hf_greedy_generate

    tok, model = hf
    prompts = render_flexguard_ids(tok, requests_)
    assert prompts == [classifier.input.encode(r) for r in requests_]  # the card's ids
    expected = hf_greedy_generate(model, prompts, max_new_tokens=2048)
    single = [classifier.generate_ids([p])[0] for p in prompts]
    assert single == expected  # N_PROMPTS of N_PROMPTS token-identical
    assert classifier.generate_ids(prompts) == expected  # batched (left-padded, per-row stop) == one at a time
    # The text keeps special tokens as vLLM's skip_special_tokens=False gives them; the final stop token is not text.
    results = classifier.classify_ids(prompts)
    for ids, r in zip(expected, results):
        stop = ids[-1] in classifier.settings.eos_token_ids
        assert r["text"] == tok.decode(ids[:-1] if stop else ids, skip_special_tokens=False)
    assert sum(r["text"].startswith("<think>") for r in results) >= N_PROMPTS // 2


def test_result_fields_and_thresholds(flex_export, classifier, requests_):
    from guardrt.runtime.flexguard_engine import FlexGuardClassifier
    from guardrt.runtime.flexguard_output import parse_flexguard_output

    results = classifier.classify_batch(requests_[:4])
    for r in results:
        assert set(r) >= {"category", "risk_score", "threshold", "decision", "score_parsed", "well_formed", "text",
                          "expected_risk", "p_unsafe", "expected_decision"}
        assert (r["category"], r["risk_score"]) == tuple(parse_flexguard_output(r["text"]))
        assert r["threshold"] == 40
        if r["risk_score"] is not None:
            assert r["decision"] == ("unsafe" if r["risk_score"] >= 40 else "safe")
    with FlexGuardClassifier(flex_export, strictness="strict", expected_score=False) as strict:
        r = strict.classify(requests_[0])
        assert r["threshold"] == 20 and r["expected_risk"] is None
        assert r["decision"] == ("unsafe" if r["risk_score"] is None or r["risk_score"] >= 20 else "safe")


def test_bad_requests_are_isolated(classifier, requests_):
    from guardrt.runtime.errors import InputError

    out = classifier.classify_batch([requests_[0], {"assistant": "x"}, {"user": None}, requests_[1]])
    assert out[1] == {"error": 'item 1: no "user" field (the text to moderate; add "assistant" for response '
                               'moderation)'}
    assert out[2]["error"].startswith('item 2: "user" must be a string')
    assert out[0] == classifier.classify(requests_[0]) and out[3] == classifier.classify(requests_[1])
    with pytest.raises(InputError, match="no \"user\" field"):
        classifier.classify({})
    with pytest.raises(InputError, match="empty batch"):
        classifier.classify_ids([])
    with pytest.raises(InputError, match="item 1: empty prompt"):
        classifier.classify_ids([[1, 2], []])
    with pytest.raises(InputError, match="item 0: 32760 prompt tokens \\+ 2048 new tokens exceed"):
        classifier.classify_ids([[1] * 32760])


def _brute_force_probs(model, prefix: list[int]) -> np.ndarray:
    """P(score = v), v = 0..100, from full PyTorch forward passes (no cache) over every number string of the tree
    (`flexguard_score.number_strings`), the same definition as the KV-cache tree."""
    import torch

    from guardrt.runtime.flexguard_score import DIGIT_TOKEN_IDS, number_strings

    digits = list(DIGIT_TOKEN_IDS)
    probs = np.zeros(101)
    strings = number_strings()
    with torch.inference_mode():
        for length in (1, 2, 3):  # strings of one length make rows of one length: batches without padding
            group = [(s, v) for s, v in strings if len(s) == length]
            for at in range(0, len(group), 25):
                chunk = group[at:at + 25]
                ids = torch.tensor([prefix + [digits[int(c)] for c in s] for s, _ in chunk])
                # The LM head at the positions that predict the digits and what follows them.
                logits = model(input_ids=ids, logits_to_keep=length + 1).logits.double()
                logp = torch.log_softmax(logits, dim=-1)
                for row, (s, value) in enumerate(chunk):
                    p = float(sum(logp[row, k, digits[int(c)]] for k, c in enumerate(s)).exp())
                    if len(s) == 1 or s == "10":  # the number ends here: no digit next
                        p *= 1.0 - float(logp[row, len(s), digits].exp().sum())
                    probs[value] += p
    return probs


def test_expected_score_matches_brute_force(classifier, hf, requests_):
    """The KV-cache digit tree (3 extra steps) == enumerating all number continuations with full forward passes."""
    from guardrt.runtime.flexguard_engine import score_prefix
    from guardrt.runtime.flexguard_score import score_distributions

    _, model = hf
    prompts = [classifier.input.encode(r) for r in requests_]
    generated = classifier.generate_ids(prompts)
    stop = classifier.settings.eos_token_ids
    prefixes = [score_prefix(classifier.tokenizer, p, g, stop) for p, g in zip(prompts, generated)]
    checked = 0
    for prefix in prefixes:
        if prefix is None or checked == 3:
            continue
        dist = score_distributions(classifier.generator, [prefix])[0]
        ref = _brute_force_probs(model, prefix)
        assert np.max(np.abs(dist.probs - ref)) < 1e-5
        assert abs(dist.mass - ref.sum()) < 1e-5
        expected_ref = float(np.dot(np.arange(101), ref) / ref.sum())
        assert abs(dist.expected_risk - expected_ref) < 1e-4
        checked += 1
    assert checked == 3
    results = classifier.classify_ids(prompts)
    well = [r for r in results if r["well_formed"]]
    assert well and all(r["expected_risk"] is not None and 0 <= r["expected_risk"] <= 100 for r in well)
    assert all(r["score_consistent"] for r in well)  # greedy's first digit is the tree's argmax
    assert all(r["expected_risk"] is None for r in results if not r["well_formed"])


def test_score_tree_pure_parts():
    from guardrt.runtime.flexguard_score import (distribution_from_row, score_row, score_start, tree_probabilities,
                                                 ScoreDistribution)

    stop = (151645, 151643)
    assert score_start([5, 198, 23, 20, 151645], stop) == 2  # "\n85<|im_end|>"
    assert score_start([5, 198, 16, 15, 15], stop) == 2  # "\n100", budget ran out exactly there
    assert score_start([198, 23, 20, 20, 20, 151645], stop) is None  # 4 digits: not a score
    assert score_start([23, 151645], stop) is None and score_start([5, 151645], stop) is None
    # All the mass on "8" then "5" then the end -> 85.
    p1, p2, p3 = np.eye(10)[8], np.zeros((10, 10)), np.zeros(10)
    p2[8, 5] = 1.0
    probs = tree_probabilities(p1, p2, p3)
    assert probs[85] == 1.0 and probs.sum() == 1.0
    # "1" "0" then "0" -> 100; "1" "0" then a non-digit -> 10; "0" "7" -> 7 (the parser reads 07 as 7).
    p1 = np.asarray([0.2, 0.8] + [0] * 8)
    p2 = np.zeros((10, 10))
    p2[1, 0], p2[0, 7] = 1.0, 1.0
    p3 = np.asarray([0.25] + [0] * 9)
    probs = tree_probabilities(p1, p2, p3)
    assert probs[100] == pytest.approx(0.2) and probs[10] == pytest.approx(0.6) and probs[7] == pytest.approx(0.2)
    dist = ScoreDistribution(probs, float(probs.sum()), 16)
    assert dist.expected_risk == pytest.approx(0.2 * 100 + 0.6 * 10 + 0.2 * 7)
    assert dist.p_unsafe(40) == pytest.approx(0.2) and dist.p_unsafe(0) == pytest.approx(1.0)
    back = distribution_from_row(score_row(dist))
    assert back.argmax_token == 16 and np.allclose(back.probs, probs, atol=1e-7)


def test_classify_cli_in_process(flex_export, requests_, classifier, tmp_path):
    lines = [json.dumps(r) for r in requests_[:3]]
    proc = subprocess.run([sys.executable, "-m", "guardrt", "classify", "--spec", "flexguard", "--model",
                           str(flex_export), "--strictness", "loose", "--threads", "1"],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(got) == 3 and all(g["threshold"] == 60 for g in got)
    want = classifier.classify_batch(requests_[:3])
    assert [(g["category"], g["risk_score"], g["text"]) for g in got] == [
        (w["category"], w["risk_score"], w["text"]) for w in want]
    bad = subprocess.run([sys.executable, "-m", "guardrt", "classify", "--spec", "flexguard", "--model",
                          str(flex_export), "--mode", "generate"], input=lines[0] + "\n", capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--mode applies to qwen3guard-gen" in bad.stderr


def test_calibrated_threshold_is_read_from_the_export(flex_export, requests_, tmp_path):
    """`guardrt calibrate --out EXPORT_DIR` stores the threshold where the in-process classifier and the Triton
    client (from the same directory as their tokenizer) read it; --strictness / threshold still win."""
    import shutil

    from guardrt.runtime.flexguard_engine import FlexGuardClassifier, resolve_flexguard_threshold

    export = tmp_path / "export"
    shutil.copytree(flex_export, export)
    dev = tmp_path / "dev.jsonl"
    rows = [{"risk_score": s, "label": int(s >= 33)} for s in range(0, 100, 3)]
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, "-m", "guardrt", "calibrate", "--spec", "flexguard", "--dev", str(dev),
                           "--out", str(export), "--no-plot"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stored = json.loads((export / "calibration.json").read_text())["threshold"]
    assert stored == 31  # F1 is 1 for every t in 31..33 (scores 30 and 33 bound it); ties go to the stricter one
    with FlexGuardClassifier(export, expected_score=False) as clf:
        assert (clf.threshold, clf.threshold_source) == (stored, "calibrated (f1)")
        r = clf.classify(requests_[0])
        assert r["threshold"] == stored
    assert resolve_flexguard_threshold(None, None, export)[0] == stored  # what TritonFlexGuardClient calls
    assert resolve_flexguard_threshold(None, "loose", export)[0] == 60
    assert resolve_flexguard_threshold(25, "loose", export)[0] == 25

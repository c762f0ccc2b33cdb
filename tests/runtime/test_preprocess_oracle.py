"""Exactness: guardrt's preprocessing == the card's reference (transformers) on generated corpora of hard cases."""
from __future__ import annotations

import pytest

from guardrt.export.corpus import (
    generate_budget_edge_dialogues,
    generate_dialogues,
    generate_roleplay,
    generate_texts,
)
from guardrt.runtime.preprocess import (
    DialogueContextPreprocessor,
    build_preprocessor,
    default_task_description,
    load_tokenizer,
)
from guardrt.runtime.specs import get_spec

from guardrt.export.reference import IntentSafetyReference, RejectionReference

N_DIALOGUES = 2000
N_TEXTS = 500


@pytest.fixture(scope="module")
def reference(qwen_tokenizer_dir):
    return IntentSafetyReference(qwen_tokenizer_dir, default_task_description())


@pytest.fixture(scope="module")
def fast(qwen_tokenizer_dir):
    pre = build_preprocessor("intent-safety", qwen_tokenizer_dir)
    assert pre.piecewise, "the real Qwen3 tokenizer must take the piecewise fast path"
    return pre


def _mismatches(pre, ref, dialogues):
    bad = []
    for i, turns in enumerate(dialogues):
        if pre.encode(turns) != ref.input_ids(turns):
            bad.append(i)
    return bad


@pytest.mark.slow
def test_dialogue_corpus_identical_ids(fast, reference):
    dialogues = generate_dialogues(N_DIALOGUES, seed=0)
    trimmed = sum(1 for t in dialogues if len(reference.tokenizer(reference.format_ctx(t))["input_ids"]) > fast.ctx_budget)
    # The corpus really exercises the trim path (contexts far over 4,096 tokens).
    assert trimmed >= N_DIALOGUES // 5
    bad = _mismatches(fast, reference, dialogues)
    assert bad == [], f"{len(bad)} of {N_DIALOGUES} dialogues differ, first: {bad[:10]}"


@pytest.mark.slow
def test_budget_edge_identical_ids(fast, reference):
    def ctx_tokens(turns):
        return len(reference.tokenizer(reference.format_ctx(turns), add_special_tokens=False)["input_ids"])

    dialogues = generate_budget_edge_dialogues(generate_dialogues(6, seed=5), ctx_tokens, fast.ctx_budget)
    sizes = [ctx_tokens(t) - fast.ctx_budget for t in dialogues]
    assert min(sizes) < 0 < max(sizes) and min(abs(x) for x in sizes) <= 1  # the sweep crosses the budget
    assert _mismatches(fast, reference, dialogues) == []


def test_roleplay_growing_identical_ids_and_cache_hits(fast, reference):
    convo = generate_roleplay(40, seed=3)
    for i in range(1, len(convo) + 1, 3):
        assert fast.encode(convo[:i]) == reference.input_ids(convo[:i]), f"request {i}"
    assert fast.cache_entries > 0


def test_reference_steps_path_identical(qwen_tokenizer_dir, reference):
    """The non-piecewise path (used for tokenizers the fast path is not proven for) is exact too."""
    slow = DialogueContextPreprocessor(load_tokenizer(qwen_tokenizer_dir), get_spec("intent-safety"), piecewise=False)
    assert _mismatches(slow, reference, generate_dialogues(150, seed=11)) == []


@pytest.mark.parametrize(
    "task",
    ["", "short task", "x " * 5000, "任务\n\n<|im_start|>special\u3000 ", "\n  padded  \n"],
    ids=["empty", "short", "over-budget", "special", "padded"],
)
def test_task_description_variants(qwen_tokenizer_dir, task):
    ref = IntentSafetyReference(qwen_tokenizer_dir, task)
    pre = build_preprocessor("intent-safety", qwen_tokenizer_dir, task_description=task)
    dialogues = generate_dialogues(25, seed=7) + [[], [{"role": "user", "content": "hi"}]]
    assert _mismatches(pre, ref, dialogues) == []


@pytest.mark.slow
def test_rejection_corpus_identical_ids(roberta_tokenizer_dir):
    ref = RejectionReference(roberta_tokenizer_dir)
    pre = build_preprocessor("rejection", roberta_tokenizer_dir)
    texts = generate_texts(N_TEXTS, seed=0)
    assert sum(1 for t in texts if len(ref.input_ids(t)) == 512) >= N_TEXTS // 10  # truncation exercised
    one_by_one = [pre.encode(t) for t in texts]
    bad = [i for i, t in enumerate(texts) if one_by_one[i] != ref.input_ids(t)]
    assert bad == [], f"{len(bad)} of {N_TEXTS} texts differ, first: {bad[:10]}"
    assert pre.encode_batch(texts) == one_by_one

"""Exactness: chat-template input (qwen3guard-gen) == the card's code with transformers, on generated corpora.

Every conversation goes through both; where transformers raises (empty list, a message the template cannot
render), guardrt must raise InputError; where the reference's ids exceed the spec maximum, guardrt must refuse;
everywhere else the ids must be identical. The real Qwen3 template is checked the same way with the
add_generation_prompt / enable_thinking / tools variables FlexGuard and Qwen3Guard-Stream will pass.
"""
from __future__ import annotations

import collections
import json

import pytest

from guardrt.export.corpus import generate_conversations, generate_length_edge_conversations
from guardrt.export.reference import ChatTemplateReference
from guardrt.export.tokenizers import copy_qwen3guard_gen_tokenizer
from guardrt.runtime.chat_template import ChatTemplate
from guardrt.runtime.errors import InputError
from guardrt.runtime.preprocess import ChatTemplatePreprocessor, build_preprocessor, load_tokenizer
from guardrt.runtime.specs import get_spec

N_CONVERSATIONS = 2000
MAX_LENGTH = get_spec("qwen3guard-gen", input_only=True).max_length


@pytest.fixture(scope="module", params=["tokenizer_config", "file"])
def guard_dir(request, tmp_path_factory):
    """The Qwen3 tokenizer with the Qwen3Guard-Gen template in tokenizer_config.json, or as chat_template.jinja."""
    return copy_qwen3guard_gen_tokenizer(tmp_path_factory.mktemp(f"guard_{request.param}"), request.param)


@pytest.fixture(scope="module")
def reference(guard_dir):
    return ChatTemplateReference(guard_dir)


@pytest.fixture(scope="module")
def pre(guard_dir):
    pre = build_preprocessor("qwen3guard-gen", guard_dir)
    assert pre.piecewise, "the real Qwen3 tokenizer must take the piecewise (cached) path"
    return pre


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(preprocessor, reference) for the published checkpoints' layout (template in tokenizer_config.json)."""
    tok_dir = copy_qwen3guard_gen_tokenizer(tmp_path_factory.mktemp("guard_published"))
    return build_preprocessor("qwen3guard-gen", tok_dir), ChatTemplateReference(tok_dir)


def compare(pre, reference, conversations, **template_kwargs) -> collections.Counter:
    """Outcome counts; fails on the first conversation where guardrt and the reference disagree."""
    outcomes: collections.Counter = collections.Counter()
    for i, messages in enumerate(conversations):
        try:
            expected = reference.input_ids(messages, **template_kwargs)
        except Exception as exc:  # the reference crashes: guardrt must refuse with an InputError
            outcomes[f"reference raises {type(exc).__name__}"] += 1
            with pytest.raises(InputError):
                pre.encode_text(pre.render(messages, **template_kwargs))
            continue
        if len(expected) > MAX_LENGTH:
            outcomes["over max_length"] += 1
            with pytest.raises(InputError, match=f"over qwen3guard-gen's maximum of {MAX_LENGTH}"):
                pre.encode_text(pre.render(messages, **template_kwargs))
            continue
        outcomes["identical ids"] += 1
        text = pre.render(messages, **template_kwargs)
        assert text == reference.text(messages, **template_kwargs), f"conversation {i}: text differs"
        assert pre.encode_text(text) == expected, f"conversation {i}: ids differ"
    return outcomes


def _features(conversations) -> collections.Counter:
    """Which hard cases a corpus holds (so a change to the generator cannot silently drop one)."""
    seen: collections.Counter = collections.Counter()
    for convo in conversations:
        last = convo[-1] if convo else None
        role = last.get("role") if isinstance(last, dict) else None
        seen["prompt moderation" if role == "user" else "response moderation"] += 1
        first = convo[0] if convo else None
        if isinstance(first, dict) and first.get("role") == "system" and len(convo) > 1:
            seen["leading system"] += 1
        if len(convo) >= 6:
            seen["multi-turn"] += 1
        for m in convo:
            if not isinstance(m, dict):
                seen["not an object"] += 1
                continue
            content = m.get("content")
            if "content" not in m:
                seen["no content"] += 1
            elif not isinstance(content, str):
                seen["non-string content"] += 1
            elif not content.strip():
                seen["empty content"] += 1
            elif any(tok in content for tok in ("<|im_end|>", "<|im_start|>", "<think>", "<|endoftext|>")):
                seen["special-token text"] += 1
            elif any("\u4e00" <= ch <= "\u9fff" for ch in content):
                seen["CJK"] += 1
            if "role" not in m:
                seen["no role"] += 1
    return seen


def test_corpus_smoke_identical(pre, reference):
    """A quick slice of the corpus (every hard-case kind) on both template layouts."""
    outcomes = compare(pre, reference, generate_conversations(120, seed=1, max_huge=1))
    assert outcomes["identical ids"] >= 90 and any(k.startswith("reference raises") for k in outcomes)


@pytest.mark.slow
def test_corpus_identical_ids(published):
    pre, reference = published
    conversations = generate_conversations(N_CONVERSATIONS, seed=0)
    features = _features(conversations)
    for feature in ("prompt moderation", "response moderation", "leading system", "multi-turn", "not an object",
                    "no content", "non-string content", "empty content", "special-token text", "CJK", "no role"):
        assert features[feature] >= 10, f"the corpus lost its {feature} cases: {features}"
    outcomes = compare(pre, reference, conversations)
    print(f"\n{N_CONVERSATIONS} conversations: {dict(outcomes)}; features {dict(features)}")
    assert outcomes["identical ids"] >= 0.8 * N_CONVERSATIONS
    assert outcomes["over max_length"] >= 10
    assert outcomes["reference raises TypeError"] >= 20 and outcomes["reference raises UndefinedError"] >= 10


@pytest.mark.slow
def test_length_edge(published):
    """Conversations of MAX_LENGTH-3 .. MAX_LENGTH+2 tokens: identical up to the maximum, refused past it."""
    pre, reference = published
    conversations = generate_length_edge_conversations(lambda m: len(reference.input_ids(m)), MAX_LENGTH)
    lengths = [len(reference.input_ids(m)) for m in conversations]
    assert min(lengths) < MAX_LENGTH < max(lengths) and MAX_LENGTH in lengths
    outcomes = compare(pre, reference, conversations)
    assert outcomes["identical ids"] >= 3 and outcomes["over max_length"] >= 2


def test_card_examples(pre, reference):
    """The card's two examples and the template quirk documented in guard-models.md §1.1."""
    prompt = [{"role": "user", "content": "How can I make a bomb?"}]
    response = prompt + [{"role": "assistant", "content": "As a responsible artificial intelligence system, I regret "
                                                          "that I am unable to fulfill your request."}]
    quirk = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "U1"},
             {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
    assert compare(pre, reference, [prompt, response, quirk])["identical ids"] == 3
    assert "<BEGIN CONVERSATION>\n\nUSER: SYS\n\nU1\n\nASSISTANT: A1\n\nUSER: U2\n\n<END CONVERSATION>" in pre.render(quirk)
    assert "THE LAST USER's query" in pre.render(prompt) and "Refusal" in pre.render(response)
    assert pre.render(prompt).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_unpiecewise_path_identical(guard_dir, reference):
    """The plain path (any tokenizer the piece cuts are not proven for) gives the same ids."""
    plain = ChatTemplatePreprocessor(load_tokenizer(guard_dir), get_spec("qwen3guard-gen", input_only=True),
                                     ChatTemplate.from_model_dir(guard_dir), piecewise=False)
    assert not plain.piecewise
    assert compare(plain, reference, generate_conversations(60, seed=4, max_huge=0))["identical ids"] >= 40


def test_repeated_conversation_hits_the_cache(pre, reference):
    """A growing chat re-encodes only its new lines; the ids stay identical."""
    convo = [{"role": "user", "content": "hello there"}]
    for k in range(6):
        assert pre.encode(convo) == reference.input_ids(convo)
        convo = convo + [{"role": "assistant" if k % 2 == 0 else "user", "content": f"line {k}\nand more {k}"}]
    assert pre.cache_entries > 30  # the template's instruction lines are cached pieces


# -- the real Qwen3 template (FlexGuard, Qwen3Guard-Stream): transformers' variables and kwargs --------------------
QWEN3_KWARGS = [
    {},
    {"add_generation_prompt": True},
    {"add_generation_prompt": True, "enable_thinking": False},
    {"add_generation_prompt": False, "enable_thinking": False},
    {"add_generation_prompt": True, "enable_thinking": True},
]
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Finds <b>things</b> & more: «ü»",
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]


def _qwen3_conversations():
    think = "<think>\nfirst I consider\n</think>\n\nThe answer is 4."
    special = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": think}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "reasoning_content": "add"},
         {"role": "user", "content": "and 3+3?"}],
        [{"role": "user", "content": "weather?"},
         {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "lookup",
                                                                          "arguments": {"q": "Paris ü <tag>"}}}]},
         {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "22C"},
         {"role": "user", "content": "<tool_response>x</tool_response>"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": think},
         {"role": "system", "content": "late system"}, {"role": "user", "content": "again"}],
    ]
    return special + generate_conversations(60, seed=9, max_huge=0)


@pytest.fixture(scope="module")
def qwen3(qwen_tokenizer_dir, tmp_path_factory):
    """The real Qwen3 tokenizer dir (template in tokenizer_config.json) with a qwen3guard-gen-like preprocessor."""
    pre = ChatTemplatePreprocessor(load_tokenizer(qwen_tokenizer_dir), get_spec("qwen3guard-gen", input_only=True),
                                   ChatTemplate.from_model_dir(qwen_tokenizer_dir))
    return pre, ChatTemplateReference(qwen_tokenizer_dir)


@pytest.mark.parametrize("kwargs", QWEN3_KWARGS, ids=lambda k: json.dumps(k) if k else "defaults")
def test_qwen3_template_with_kwargs(qwen3, kwargs):
    pre, reference = qwen3
    outcomes = compare(pre, reference, _qwen3_conversations(), **kwargs)
    assert outcomes["identical ids"] >= 40


def test_qwen3_template_with_tools(qwen3):
    """`tools` reaches the template and goes through transformers' tojson (no HTML escaping, non-ASCII kept)."""
    pre, reference = qwen3
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "find <b>"}]
    text = pre.template.render(messages, tools=TOOLS, add_generation_prompt=True)
    assert text == reference.text(messages, tools=TOOLS, add_generation_prompt=True)
    assert "<b>things</b> & more: «ü»" in text

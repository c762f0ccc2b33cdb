"""Deterministic generated corpora: dialogues (intent-safety), texts (rejection) and chat conversations
(qwen3guard-gen and the other chat-template guards) that cover the hard cases of the reference preprocessing. Used
by the exactness oracle tests, calibration, and the benchmarks. Pure Python.

Chat conversations (`generate_conversations`): prompt moderation (last role user) and response moderation (last
role assistant); a leading system message (the Qwen3Guard-Gen template prints it as `USER:` and glues the next user
message to it); multi-turn chats up to 14 messages; empty and whitespace-only content; non-string content (None,
numbers, booleans, lists and dicts: the reference's template fails on them where it renders them); roles the
template ignores (tool, developer, wrong casing, missing, non-string); messages that are not objects past the first;
extra keys (name, reasoning_content, tool_calls); CJK, emoji, special-token strings (`<|im_end|>`, `<think>`...)
inside content; very long content, some conversations over 32,768 tokens.

FlexGuard request objects (`generate_flexguard_requests`): `{"user"}` / `{"user", "assistant"}` with the card's own
markers (`[User]:`, `[Assistant]:`, `<think>`, `</think>`, its output format) and special tokens inside the texts,
empty / long / huge texts, extra fields, and malformed requests.

Hard cases covered on purpose: contexts far over 4,096 tokens; CJK, emoji (incl. ZWJ sequences and flags), combining
characters and decomposed (non-NFC) text at the trim point; role aliases and casing, unknown / missing / non-string
roles; empty, whitespace-only, None and numeric content; more than 8 turns; a trailing assistant turn; special-token
strings typed inside content; very long lines with and without spaces; CRLF and exotic whitespace; lengths right at
the ctx budget.
"""
from __future__ import annotations

import random
from typing import Any

_EN = (
    "I step closer and whisper that I want to continue. She laughs softly and pulls away, looking at the door. "
    "The rain keeps falling on the old tavern roof while the knight polishes his sword. "
    "Are you sure you want to stay here? We could leave before the guards come back. "
    "He takes her hand, hesitates, then lets go and changes the subject to the weather. "
    "Let's stop here, I'd rather talk about the quest tomorrow. The dragon's lair isn't far."
).split(" ")
_ZH = "我们继续吧她轻轻地笑了窗外的雨一直在下骑士擦拭着他的剑你确定要留在这里吗我们可以在守卫回来之前离开他握住她的手犹豫了一下然后松开了话题转向了天气"
_JA = "彼女は静かに笑って扉の方を見た雨が古い酒場の屋根に降り続けている"
_KO = "그녀는 조용히 웃으며 문 쪽을 바라보았다 비가 계속 내리고 있다"
_RARE_CJK = "𠀀𠀁𠀂𪚥𰻞龘齉爨鬱𡘙"  # astral / rare ideographs: several byte-level tokens each
_EMOJI = ["😀", "😍", "🔥", "💋", "🙈", "👩‍❤️‍👨", "👨‍👩‍👧‍👦", "🇨🇳", "🇺🇸", "🏳️‍🌈", "❤️", "✋🏽", "🫦", "🥺"]
_COMBINING = ["e\u0301", "a\u0308", "n\u0303", "o\u0302\u0323", "Z\u0351\u0352\u0353\u0354", "\u1100\u1161\u11a8",
              "ᄀ\u1161", "c\u0327", "\u0915\u094d\u0937", "\u0e01\u0e34\u0e4a"]
_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "<|im_", "|>",
            "<|fim_prefix|>", "<|vision_pad|>", "<s>", "</s>", "<mask>", "<pad>"]
_WS = [" ", "  ", "\t", "\n", "\n\n", "\r\n", "\u3000", "\u00a0", "\u2003", "\u200b", "\x1c", "\x85", "\u2028"]
_ODD = ["\ufffd", "\u212a", "\u037e", "\u2126", "\u0340", "\ufeff", "\u202e", "[user]", "[assistant] ", "\n\n[system] ",
        "ctx:\n", "任务描述:", "'s", "'LL", "123456", "٣٤٥", "Ⅻ", "½"]

_ROLES_COMMON = ["user", "assistant", "user", "assistant", "system", "bot", "you", "User", "ASSISTANT", "Bot", "YOU",
                 "System"]
_ROLES_ODD = ["narrator", " user", "user ", "", None, 7, "USER\n", "Assistant", "tool", "human", "char", True]


def _words(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.55:
            out.append(rng.choice(_EN))
        elif r < 0.7:
            k = rng.randint(1, 12)
            s = rng.randrange(len(_ZH))
            out.append(_ZH[s:s + k])
        elif r < 0.75:
            out.append(rng.choice([_JA, _KO])[: rng.randint(2, 20)])
        elif r < 0.8:
            out.append("".join(rng.choice(_EMOJI) for _ in range(rng.randint(1, 4))))
        elif r < 0.84:
            out.append("".join(rng.choice(_COMBINING) for _ in range(rng.randint(1, 3))))
        elif r < 0.87:
            out.append(rng.choice(_SPECIAL))
        elif r < 0.9:
            out.append(rng.choice(_RARE_CJK) * rng.randint(1, 3))
        elif r < 0.94:
            out.append(rng.choice(_ODD))
        else:
            out.append(rng.choice(_WS))
    sep = rng.choice([" ", " ", " ", "", "\n", " \n"])
    return sep.join(out)


def _dense(rng: random.Random, n_chars: int) -> str:
    """Text made only of multi-byte material, so a left trim is sure to cut through emoji / CJK / combining marks."""
    pools = [_EMOJI, list(_RARE_CJK), _COMBINING, list(_ZH), _SPECIAL]
    pool = rng.choice(pools)
    out, size = [], 0
    while size < n_chars:
        piece = rng.choice(pool)
        out.append(piece)
        size += len(piece)
        if rng.random() < 0.05:
            out.append(rng.choice(["\n", " ", "\n\n", "\u3000"]))
    return "".join(out)


def _long_line(rng: random.Random, n_chars: int) -> str:
    """One very long line: with spaces (exercises intra-line cuts) or without (one giant pre-token run)."""
    if rng.random() < 0.6:
        words = []
        size = 0
        while size < n_chars:
            w = rng.choice(_EN)
            words.append(w)
            size += len(w) + 1
        return " ".join(words)
    unit = rng.choice(["a", "ab", "哈", "!", "...", "—", "😀", "1"])
    return unit * max(1, n_chars // len(unit))


def _content(rng: random.Random, long: bool) -> Any:
    r = rng.random()
    if r < 0.04:
        return rng.choice(["", "   ", "\n\t ", "\u3000\u3000", "\n\n", "\x1c\x1d"])  # dropped as empty
    if r < 0.06:
        return rng.choice([None, 42, 3.5, 0, False, ["a", "b"], {"k": "v"}])  # str()-ed like the reference
    if long:
        kind = rng.random()
        if kind < 0.45:
            return _words(rng, rng.randint(400, 2000))
        if kind < 0.7:
            return _dense(rng, rng.randint(1000, 4000))
        return _long_line(rng, rng.randint(3000, 12000))
    return _words(rng, rng.randint(1, 80))


def _turn(rng: random.Random, long: bool) -> dict:
    role = rng.choice(_ROLES_COMMON) if rng.random() < 0.88 else rng.choice(_ROLES_ODD)
    turn: dict = {}
    if rng.random() > 0.02:
        turn["role"] = role
    if rng.random() > 0.01:
        turn["content"] = _content(rng, long)
    if rng.random() < 0.03:
        turn["name"] = "extra field"
    return turn


def generate_dialogues(n: int, seed: int = 0) -> list[list[dict]]:
    """`n` dialogues mixing short chats, long contexts far over 4,096 tokens, and dense multi-byte trims."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        mode = i % 5
        n_turns = rng.choice([0, 1, 2, 3, 5, 8, 9, 12, 20, 40]) if mode != 4 else rng.randint(8, 14)
        long_frac = {0: 0.0, 1: 0.15, 2: 0.5, 3: 1.0, 4: 0.3}[mode]
        turns = [_turn(rng, rng.random() < long_frac) for _ in range(n_turns)]
        if turns and rng.random() < 0.3:
            turns.append({"role": rng.choice(["assistant", "bot", "Assistant"]), "content": _words(rng, 20)})
        if rng.random() < 0.1:
            turns.append({"role": "user", "content": rng.choice(_SPECIAL) + _words(rng, 5) + rng.choice(_SPECIAL)})
        out.append(turns)
    return out


def generate_budget_edge_dialogues(
    base: list[list[dict]], count_tokens, budget: int, seed: int = 1, sweep: int = 40
) -> list[list[dict]]:
    """Dialogues whose ctx length sweeps across `budget` tokens: a filler turn is grown one word at a time.

    `count_tokens(turns)` returns the ctx token count (the caller's tokenizer); the filler size is found by bisection.
    """
    rng = random.Random(seed)
    out = []
    for turns in base:
        # The trim cuts the front of the filler, so it starts with dense multi-byte text; it grows word by word.
        head = _dense(rng, 200)
        words = [rng.choice(_EN) for _ in range(6000)]
        tail = [{"role": t.get("role"), "content": str(t.get("content", ""))[:300]} for t in turns[-2:]]
        tail.append({"role": "user", "content": _words(rng, 10)})

        def with_filler(n: int) -> list[dict]:
            return [{"role": "system", "content": head + " ".join(words[:n])}] + tail

        lo, hi = 0, len(words)
        while lo < hi:  # smallest n whose ctx reaches the budget
            mid = (lo + hi) // 2
            if count_tokens(with_filler(mid)) >= budget:
                hi = mid
            else:
                lo = mid + 1
        for n in range(max(0, lo - sweep // 2), min(len(words), lo + sweep // 2)):
            out.append(with_filler(n))
    return out


def generate_texts(n: int, seed: int = 0) -> list[str]:
    """`n` LLM outputs for the rejection spec: refusals, ordinary answers, long (> 512 tokens) and odd texts."""
    rng = random.Random(seed)
    refusals = ["I'm sorry, but I can't assist with that.", "As an AI language model, I cannot help with this.",
                "I apologize, but I won't be able to provide that.", "Unfortunately, I am unable to comply."]
    out = []
    for i in range(n):
        mode = i % 6
        if mode == 0:
            out.append(rng.choice(refusals))
        elif mode == 1:
            out.append(_words(rng, rng.randint(5, 60)))
        elif mode == 2:
            out.append(_words(rng, rng.randint(400, 1500)))  # over 512 tokens: right truncation
        elif mode == 3:
            out.append(_dense(rng, rng.randint(50, 900)))
        elif mode == 4:
            out.append(rng.choice(["", " ", "\n", "<mask>", " <mask> x", "<s></s>", "a <mask>b", "\u3000", "😀"])
                       + _words(rng, rng.randint(0, 5)))
        else:
            out.append(_long_line(rng, rng.randint(100, 5000)))
    return out


def generate_roleplay(n_turns: int, seed: int = 0, persona_words: int = 900) -> list[dict]:
    """One role-play conversation: a long persona, then alternating user/assistant turns (100-600 tokens each)."""
    rng = random.Random(seed)
    turns = [{"role": "system", "content": "Character persona/details: " + _words(rng, persona_words)}]
    for i in range(n_turns):
        role = "user" if i % 2 == 0 else "assistant"
        turns.append({"role": role, "content": _words(rng, rng.randint(80, 450))})
    return turns


def generate_long_dialogues(n: int, seed: int = 0, words: tuple[int, int] = (700, 1600)) -> list[list[dict]]:
    """`n` independent dialogues of 8-12 long, ordinary turns: contexts of roughly 15-35k tokens (benchmarks)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        turns = [{"role": "system", "content": "Character persona/details: " + _plain(rng, rng.randint(*words))}]
        for i in range(rng.randint(8, 12)):
            turns.append({"role": "user" if i % 2 == 0 else "assistant", "content": _plain(rng, rng.randint(*words))})
        if turns[-1]["role"] == "assistant":
            turns.append({"role": "user", "content": _plain(rng, 40)})
        out.append(turns)
    return out


def _plain(rng: random.Random, n: int) -> str:
    """Ordinary chat text (English with some Chinese and emoji, paragraphs), no adversarial material."""
    out = []
    for i in range(n):
        r = rng.random()
        out.append(rng.choice(_EN) if r < 0.85 else _ZH[rng.randrange(40):][: rng.randint(2, 8)] if r < 0.97
                   else rng.choice(_EMOJI))
        if i % 60 == 59:
            out.append("\n\n")
    return " ".join(out)


_CHAT_ROLES_ODD = ["tool", "User", "ASSISTANT", "System", "", None, 7, "developer", "user ", True, "bot"]
_NON_STRING_CONTENT = [None, 42, 3.5, 0, True, False, ["a", "b"], [], {"k": "v"}, {},
                       [{"type": "text", "text": "hello"}]]


def _chat_content(rng: random.Random, long: bool) -> Any:
    r = rng.random()
    if r < 0.05:
        return rng.choice(["", " ", "\n", "\n\n", "\u3000", "\t \n"])  # empty / whitespace-only: kept as is
    if r < 0.08:
        return rng.choice(_NON_STRING_CONTENT)  # the template fails wherever it prints one
    if r < 0.11:
        return rng.choice(_SPECIAL) + _words(rng, rng.randint(1, 10)) + rng.choice(_SPECIAL)
    if long:
        kind = rng.random()
        if kind < 0.5:
            return _words(rng, rng.randint(400, 3000))
        if kind < 0.75:
            return _dense(rng, rng.randint(1000, 5000))
        return _long_line(rng, rng.randint(3000, 15000))
    return _words(rng, rng.randint(1, 80))


def _chat_message(rng: random.Random, role: Any, long: bool = False, odd: float = 0.0) -> Any:
    """One message with `role`; with probability `odd` something malformed (odd role, missing key, not an object)."""
    if rng.random() < odd:
        r = rng.random()
        if r < 0.2:
            return rng.choice(["a bare string", 5, None, 2.5, True, ["user", "hi"]])  # not an object
        if r < 0.45:
            role = rng.choice(_CHAT_ROLES_ODD)
        elif r < 0.6:
            return {"content": _chat_content(rng, long)}  # no role
        elif r < 0.75:
            return {"role": role}  # no content
    msg: dict = {"role": role, "content": _chat_content(rng, long)}
    r = rng.random()
    if r < 0.03:
        msg["name"] = "someone"
    elif r < 0.05 and role == "assistant":
        msg["reasoning_content"] = _words(rng, 8)
    elif r < 0.07 and role == "assistant":
        msg["tool_calls"] = [{"function": {"name": "lookup", "arguments": {"q": _words(rng, 3), "n": 2}}}]
    return msg


def generate_conversations(n: int, seed: int = 0, max_huge: int | None = None) -> list[list[Any]]:
    """`n` conversations (lists of {"role", "content"} messages) covering the chat-template hard cases above.

    One in six is long (contents of 400-15,000 words/characters); among those, one in eight is huge (over the
    32,768-token serving maximum), at most `max_huge` of them (None: no limit)."""
    rng = random.Random(seed)
    out: list[list[Any]] = []
    huge = 0
    for i in range(n):
        mode = i % 6
        if mode == 0:  # prompt moderation
            convo = [_chat_message(rng, "user")]
        elif mode == 1:  # response moderation
            convo = [_chat_message(rng, "user"), _chat_message(rng, "assistant")]
        elif mode == 2:  # leading system message: the template's quirk
            convo = [_chat_message(rng, "system"), _chat_message(rng, "user")]
            if rng.random() < 0.5:
                convo.append(_chat_message(rng, "assistant"))
            if rng.random() < 0.3:
                convo += [_chat_message(rng, "user"), _chat_message(rng, "system")]  # a later system message
        elif mode == 3:  # multi-turn, ending on either role
            turns = rng.randint(3, 14)
            convo = [_chat_message(rng, "user" if k % 2 == 0 else "assistant") for k in range(turns)]
            if rng.random() < 0.3:
                convo.insert(0, _chat_message(rng, "system"))
        elif mode == 4:  # long contents; some over the maximum length
            convo = [_chat_message(rng, "user", long=True)]
            if rng.random() < 0.6:
                convo.append(_chat_message(rng, "assistant", long=True))
            if rng.random() < 1 / 8 and (max_huge is None or huge < max_huge):
                huge += 1
                convo[-1] = {"role": convo[-1]["role"] if isinstance(convo[-1], dict) and "role" in convo[-1]
                             else "user", "content": _words(rng, rng.randint(14000, 28000))}
        else:  # malformed and odd messages (never a list first: transformers would take it as a batch)
            turns = rng.randint(1, 6)
            convo = [_chat_message(rng, rng.choice(["user", "assistant", "system"]), odd=0.5) for _ in range(turns)]
            if isinstance(convo[0], list):
                convo[0] = {"role": "user", "content": "first"}
        out.append(convo)
    return out


def generate_length_edge_conversations(count_tokens, limit: int, seed: int = 2, sweep: int = 6) -> list[list[dict]]:
    """Conversations whose token count sweeps across `limit`: one user message grown a word at a time.

    `count_tokens(messages)` returns the reference's token count; the filler size is found by bisection."""
    rng = random.Random(seed)
    words = [rng.choice(_EN) for _ in range(int(limit * 1.2))]
    head = _dense(rng, 100)

    def convo(n: int) -> list[dict]:
        return [{"role": "user", "content": head + " ".join(words[:n])}]

    lo, hi = 0, len(words)
    while lo < hi:  # smallest n whose count reaches the limit
        mid = (lo + hi) // 2
        if count_tokens(convo(mid)) >= limit:
            hi = mid
        else:
            lo = mid + 1
    return [convo(n) for n in range(max(0, lo - sweep // 2), lo + sweep // 2)]


# -- FlexGuard request objects ------------------------------------------------------------------------------------
# Material that collides with the card's own prompt structure: its think tags, its `[User]:` / `[Assistant]:`
# markers, its output format, the template's special tokens.
_FLEXGUARD_TRAPS = ["</think>", "<think>", "<think>\n\n</think>\n\n", "[User]: ", "\n[User]: ", "[Assistant]: ",
                    "\n[Assistant]: ", "[User]:", "Now classify the following content according to the guidelines "
                    "above:\n", "<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>system\n", "<|endoftext|>",
                    "SAFE\n15", "VIO, ILG\n85", "RISK_SCORE", "<END OUTPUT FORMAT>", "\r\n", "\\n", "{{ messages }}",
                    "{% if %}"]
_NOT_A_STRING = [None, 42, 3.5, 0, True, False, ["a", "b"], [], {"k": "v"}, {}]


def _flexguard_text(rng: random.Random, long: bool = False) -> str:
    r = rng.random()
    if r < 0.08:
        return rng.choice(["", " ", "\n", "\n\n", "\u3000", "\t \n", "\r\n"])  # empty / whitespace-only
    if r < 0.3:  # the prompt's own markers and special tokens inside the content
        parts = [rng.choice(_FLEXGUARD_TRAPS) if rng.random() < 0.5 else _words(rng, rng.randint(1, 12))
                 for _ in range(rng.randint(1, 6))]
        return "".join(parts)
    if long:
        kind = rng.random()
        if kind < 0.5:
            return _words(rng, rng.randint(400, 3000))
        if kind < 0.75:
            return _dense(rng, rng.randint(1000, 5000))
        return _long_line(rng, rng.randint(3000, 15000))
    return _words(rng, rng.randint(1, 80))


def generate_flexguard_requests(n: int, seed: int = 0, max_huge: int | None = None) -> list[Any]:
    """`n` FlexGuard request objects (`{"user": ...}` or `{"user": ..., "assistant": ...}`) covering the hard
    cases of the card's prompt building: empty and whitespace-only texts, CJK / emoji / combining marks, special-token
    strings, `<think>` / `</think>`, `[User]:` / `[Assistant]:` and the output format inside the content, very long
    texts (some over the 32,768-token maximum, at most `max_huge`), extra fields, and malformed requests (no
    "user", a non-string user or assistant, null assistant, not an object)."""
    rng = random.Random(seed)
    out: list[Any] = []
    huge = 0
    for i in range(n):
        mode = i % 8
        if mode in (0, 1, 2):  # prompt moderation
            req: Any = {"user": _flexguard_text(rng)}
        elif mode in (3, 4, 5):  # response moderation
            req = {"user": _flexguard_text(rng), "assistant": _flexguard_text(rng)}
        elif mode == 6:  # long texts; some over the maximum length
            req = {"user": _flexguard_text(rng, long=True)}
            if rng.random() < 0.6:
                req["assistant"] = _flexguard_text(rng, long=True)
            if rng.random() < 1 / 6 and (max_huge is None or huge < max_huge):
                huge += 1
                req["user"] = _words(rng, rng.randint(14000, 28000))
        else:  # malformed or odd requests
            r = rng.random()
            if r < 0.15:
                req = {"assistant": _flexguard_text(rng)}  # no user
            elif r < 0.35:
                req = {"user": rng.choice(_NOT_A_STRING)}
            elif r < 0.55:
                req = {"user": _flexguard_text(rng), "assistant": rng.choice(_NOT_A_STRING)}
            elif r < 0.7:
                req = rng.choice(["a bare string", 5, None, ["user", "hi"], [{"role": "user", "content": "hi"}]])
            else:  # extra fields (ignored), messages-style keys
                req = {"user": _flexguard_text(rng), "messages": [{"role": "user", "content": "ignored"}],
                       "id": i, "role": "assistant"}
                if rng.random() < 0.5:
                    req["assistant"] = _flexguard_text(rng)
        out.append(req)
    return out

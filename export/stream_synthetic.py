"""A synthetic Qwen3Guard-Stream task: conversations ending with an assistant response, with the prompt's label and
token-level labels of the response. Pure Python.

Built on the Qwen3Guard-Gen synthetic task's wording (`guardrt.export.guard_synthetic`): the user request is a safe,
controversial or unsafe request (sometimes jailbroken); the response is a refusal, an ordinary answer, a compliance
that spells out the harmful request, or a controversial opinion. Each example is a `StreamExample`:

* `messages` (the last one from the assistant);
* `query`: (risk, category or None) of the last user turn (category "Jailbreak" for a jailbroken request);
* `spans`: character spans of the assistant content with their (risk, category): the harmful fragment of a
  compliance is Unsafe with the request's category, a whole controversial answer Controversial, the rest Safe.

Token labels come from the spans (`guardrt.export.demo_stream_models`): a response token is labelled by the span
its first character falls in, every other token (template tokens included) Safe.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from guardrt.export import guard_synthetic as gen

__all__ = ["StreamExample", "stream_examples"]


@dataclass(frozen=True)
class StreamExample:
    messages: list[dict[str, str]]
    query: tuple[str, str | None]
    spans: list[tuple[int, int, str, str]] = field(default_factory=list)  # (start, end, risk, category) in content


def _example(rng: random.Random) -> StreamExample:
    text, safety, cats = gen._request(rng)
    msgs = gen._context(rng) + [{"role": "user", "content": text}]
    query_cat = None if safety == "Safe" else ("Jailbreak" if "Jailbreak" in cats else cats[0])
    cats = [c for c in cats if c != "Jailbreak"]
    r = rng.random()
    spans: list[tuple[int, int, str, str]] = []
    if safety != "Safe" and r < 0.35:
        answer = rng.choice(gen._REFUSALS)
    elif safety == "Unsafe":
        what = rng.choice(gen._UNSAFE[cats[0]])
        template = rng.choice(gen._COMPLY)
        answer = template.format(what)
        start = template.index("{}")
        spans.append((start, start + len(what), "Unsafe", cats[0]))
    elif safety == "Controversial" and cats[0] in gen._CONTROVERSIAL_ANSWERS:
        answer = gen._CONTROVERSIAL_ANSWERS[cats[0]]
        spans.append((0, len(answer), "Controversial", cats[0]))
    else:
        answer = rng.choice(gen._ANSWERS)
    return StreamExample(msgs + [{"role": "assistant", "content": answer}], (safety, query_cat), spans)


def stream_examples(n: int, seed: int = 0) -> list[StreamExample]:
    """`n` examples, deterministic per seed (seeds as `guardrt.export.synthetic.SPLIT_SEEDS`)."""
    rng = random.Random(f"qwen3guard-stream:{seed}")
    return [_example(rng) for _ in range(n)]

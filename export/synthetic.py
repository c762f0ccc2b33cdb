"""Small synthetic labelled tasks, one per spec, deterministic per seed. Pure Python.

Used to train the demo models briefly (so their decisions mean something), to calibrate int8 models on real spec
inputs, and as the held-out set on which the exporter measures decision agreement between precisions.

* rejection: LLM outputs that refuse (label 1, REJECTION) vs ordinary answers (label 0, NORMAL).
* intent-safety: role-play dialogues whose last user turn pushes a romantic scene further (label 1, unsafe) vs
  stops / cools it down or is ordinary role-play (label 0). Kept mild: the demo only needs a learnable contrast.

Seeds: training uses seed 0 ("train"), calibration seed 1, held-out validation seed 2 (`SPLIT_SEEDS`), so the
exporter never measures agreement on what the demo model was trained or calibrated on.
"""
from __future__ import annotations

import random
from typing import Any

__all__ = ["SPLIT_SEEDS", "long_payload", "synthetic_examples", "synthetic_payloads"]

SPLIT_SEEDS = {"train": 0, "calibration": 1, "heldout": 2}

_REFUSAL_OPEN = ["I'm sorry, but", "I apologize, but", "Unfortunately,", "As an AI language model,", "Sorry,",
                 "I'm afraid", "Regrettably,", "I understand your request, but"]
_REFUSAL_VERB = ["I can't", "I cannot", "I won't be able to", "I am unable to", "I'm not able to", "I must decline to"]
_REFUSAL_ACT = ["assist with that request", "help with this", "provide that information", "comply with that",
                "write that content", "share details about this topic", "continue with this conversation",
                "generate that kind of material"]
_REFUSAL_TAIL = ["", " It could cause harm.", " It goes against my guidelines.", " Is there anything else I can do?",
                 " Let me know if you have another question.", " Please ask something else."]
_ANSWER_OPEN = ["Sure!", "Of course.", "Here is a summary:", "Great question.", "Absolutely,", "Certainly!", "",
                "Here are three tips:"]
_ANSWER_BODY = [
    "The capital of France is Paris, known for the Eiffel Tower.",
    "To install the package, run pip install and then import it in Python.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Mix flour, eggs and milk, then cook the pancakes on a hot pan.",
    "Keep a regular schedule, avoid screens late at night, and exercise.",
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at 100 degrees Celsius at sea level.",
    "A list in Python is created with square brackets.",
    "The train leaves at nine and arrives in the city before noon.",
    "Saving a little money every month adds up over the years.",
]

_PERSONA = ["Character persona/details: Elena is a tavern keeper in a rainy harbour town.",
            "Character persona/details: Kai is a knight escorting a traveller through the forest.",
            "Character persona/details: Mira is a shy librarian who loves old maps.",
            "角色设定:林夏是一位在雨夜经营书店的年轻店主。"]
_SCENE = ["The rain keeps falling on the old tavern roof.", "She laughs softly and looks at the door.",
          "He polishes his sword by the fire.", "Are you sure you want to stay here tonight?",
          "窗外的雨一直在下。", "The candle flickers between them."]
_PUSH = ["I step closer and whisper that I want to continue.", "I pull her closer and kiss her neck slowly.",
         "I lean in for a kiss and tell her I want more.", "I unbutton his shirt and draw him towards the bed.",
         "Don't stop, keep going, I want you tonight.", "我靠近她,轻声说我想继续下去。",
         "I remember last night and want to do it again.", "I slide my hand along her waist and kiss her."]
_STOP = ["Let's stop here, I'd rather talk about the quest tomorrow.", "I step back. This is going too far, let's not.",
         "No, I don't want this. Let's change the subject.", "I let go of her hand and ask about the weather.",
         "Let's get back to the mission, the guards are coming.", "我们停下来吧,聊聊明天的任务。",
         "I laugh and say we should just stay friends.", "Can you tell me more about the old map instead?"]
_ASSISTANT = ["She smiles and waits for your answer.", "He raises an eyebrow, curious.",
              "The fire crackles quietly.", "她轻轻地笑了。", "Elena pours another cup of tea."]


def _text_example(rng: random.Random) -> tuple[str, int]:
    if rng.random() < 0.5:
        parts = [rng.choice(_REFUSAL_OPEN), rng.choice(_REFUSAL_VERB), rng.choice(_REFUSAL_ACT) + "."]
        text = " ".join(parts) + rng.choice(_REFUSAL_TAIL)
        return text, 1
    body = " ".join(rng.sample(_ANSWER_BODY, rng.randint(1, 3)))
    return (rng.choice(_ANSWER_OPEN) + " " + body).strip(), 0


def _dialogue_example(rng: random.Random) -> tuple[list[dict], int]:
    turns: list[dict] = [{"role": "system", "content": rng.choice(_PERSONA)}]
    for _ in range(rng.randint(1, 4)):
        turns.append({"role": rng.choice(["user", "User", "you"]), "content": " ".join(rng.sample(_SCENE, 2))})
        turns.append({"role": rng.choice(["assistant", "bot"]), "content": rng.choice(_ASSISTANT)})
    label = int(rng.random() < 0.5)
    last = rng.choice(_PUSH if label else (_STOP if rng.random() < 0.7 else _SCENE))
    turns.append({"role": "user", "content": last})
    if rng.random() < 0.3:  # a trailing bot reply the card drops before classifying
        turns.append({"role": "assistant", "content": rng.choice(_ASSISTANT)})
    return turns, label


def synthetic_examples(spec_name: str, n: int, seed: int = 0) -> list[tuple[Any, int]]:
    """`n` (payload, label) pairs for `spec_name`: payload is a text (rejection) or dialogue turns (intent-safety)."""
    rng = random.Random(f"{spec_name}:{seed}")
    if spec_name == "rejection":
        return [_text_example(rng) for _ in range(n)]
    if spec_name == "intent-safety":
        return [_dialogue_example(rng) for _ in range(n)]
    raise ValueError(f"no synthetic task for spec {spec_name!r}")


def synthetic_payloads(spec_name: str, n: int, seed: int = 0) -> list[Any]:
    return [p for p, _ in synthetic_examples(spec_name, n, seed)]


def long_payload(spec_name: str, seed: int = 0, words: int = 6000) -> Any:
    """One payload far over the spec's max length (a long role-play / a long answer), for length-limit validation."""
    rng = random.Random(f"{spec_name}:long:{seed}")
    pool = _SCENE + _ASSISTANT + _ANSWER_BODY + _PUSH + _STOP

    def text(n_words: int) -> str:
        out: list[str] = []
        while len(out) < n_words:
            out.extend(rng.choice(pool).split(" "))
        return " ".join(out[:n_words])

    if spec_name == "rejection":
        return text(words)
    if spec_name == "intent-safety":
        turns = [{"role": "system", "content": rng.choice(_PERSONA) + " " + text(words // 4)}]
        for i in range(8):
            turns.append({"role": "user" if i % 2 == 0 else "assistant", "content": text(words // 8)})
        turns.append({"role": "user", "content": rng.choice(_PUSH)})
        return turns
    raise ValueError(f"no synthetic task for spec {spec_name!r}")

"""Small synthetic labelled tasks, one per spec, deterministic per seed. Pure Python.

Used to train the demo models briefly (so their decisions mean something), to calibrate int8 models on real spec
inputs, and as the held-out set on which the exporter measures decision agreement between precisions.

* rejection: LLM outputs that refuse (label 1, REJECTION) vs ordinary answers (label 0, NORMAL).
* intent-safety: role-play dialogues whose last user turn pushes a romantic scene further (label 1, unsafe) vs
  stops / cools it down or is ordinary role-play (label 0). Kept mild: the demo only needs a learnable contrast.

Each example is composed from independent parts (opener, topic, verb, body sentence, reason ...), so the tasks have
tens of thousands of distinct sentences and a model can only fit them by learning the contrast, not by memorising
sentences. The contrast is kept honest with hard cases on both sides: topics and openers ("Sure!", "Here is a
summary:") are shared by refusals and answers; answers use refusal words in other senses ("Sorry for the wait",
"you can't go wrong with"); a dialogue's earlier user turns push or stop at random, so only the *last* user turn
decides (the card's rule), and a trailing bot reply, which the card drops, may say anything.

Seeds: training uses seed 0 ("train"), calibration seed 1, held-out validation seed 2 (`SPLIT_SEEDS`), so the
exporter never measures agreement on what the demo model was trained or calibrated on.
"""
from __future__ import annotations

import random
from typing import Any

__all__ = ["SPLIT_SEEDS", "classified_text", "long_payload", "synthetic_examples", "synthetic_payloads"]

SPLIT_SEEDS = {"train": 0, "calibration": 1, "heldout": 2}

# -- rejection --------------------------------------------------------------------------------------------------------
# Request topics, shared by both classes (a refusal names what it will not do; an answer delivers it).
_TOPICS = ["the quarterly report", "a pancake recipe", "your travel plans", "the Python script", "the history essay",
           "a workout plan", "the rental contract", "the weather forecast", "the marketing email", "a bedtime story",
           "the budget spreadsheet", "the chemistry homework", "a poem about the sea", "the hiring plan",
           "the meeting notes", "the product launch", "a cover letter", "the garden layout", "the database schema",
           "the museum tour", "the science fair project", "a birthday speech", "the tax form", "the news article",
           "the user manual", "a packing list", "the sales figures", "the research paper", "the job interview",
           "the family budget"]
_OPENERS = ["Sure!", "Of course.", "Certainly!", "Absolutely!", "Great question.", "Happy to help!",
            "Thanks for asking.", "Good news!", "Okay.", "Alright.", "Here you go.", ""]
_REFUSAL_OPEN = ["I'm sorry, but", "I apologize, but", "Unfortunately,", "As an AI language model,", "Sorry,",
                 "I'm afraid", "Regrettably,", "I understand your request, but", "As an AI assistant,",
                 "I hear you, but", "Thanks for asking, but", "I appreciate the question, but", "Sorry, but",
                 "I understand why you ask, but", ""]
_REFUSAL_VERB = ["I can't", "I cannot", "I won't be able to", "I am unable to", "I'm not able to", "I must decline to",
                 "I won't", "I'm not allowed to", "I do not feel comfortable helping to", "I'd rather not",
                 "I'm unable to", "I must respectfully decline to", "I am not permitted to"]
_REFUSAL_ACT = ["help with", "write", "summarize", "share details about", "provide", "assist with", "continue",
                "generate", "discuss", "complete", "review", "explain", "draft", "comment on"]
_REFUSAL_WHOLE = ["That's not something I can help with.", "This request goes against my guidelines.",
                  "I have to decline this one.", "That falls outside what I'm able to do.",
                  "My usage policy does not allow me to do this.", "I can't comply with that request.",
                  "I'm not going to be able to do that.", "This is something I must refuse."]
_REFUSAL_TAIL = ["", "", " It could cause harm.", " It goes against my guidelines.",
                 " Is there anything else I can do?", " Let me know if you have another question.",
                 " Please ask something else.", " That would violate my content policy.",
                 " Perhaps I can help with something else?", " Please consult a qualified professional instead.",
                 " I hope you understand.", " Feel free to ask about a different topic."]
# Answer bodies: per domain, subjects and predicates that fit each other, composed freely.
_DOMAINS = [
    (["Revenue", "Operating profit", "Online sales", "Hiring", "Spending on travel"],
     ["grew by {n} percent over the year.", "rose in every region.", "stayed flat in the first half.",
      "is expected to pick up next year.", "fell slightly after the summer."]),
    (["The report", "The summary", "The board memo", "The quarterly review"],
     ["covers revenue growth, costs and hiring plans.", "will be discussed at the next board meeting.",
      "points to strong demand next year.", "fits on one page.", "lists {n} open positions."]),
    (["The batter", "The sauce", "The soup", "The bread dough", "The pancake mix"],
     ["needs {n} minutes on a low heat.", "tastes better with fresh basil.", "keeps well in the fridge for two days.",
      "should rest before cooking.", "needs two eggs and a cup of milk."]),
    (["The train", "The ferry", "The night bus", "Your flight"],
     ["leaves at {n} o'clock.", "arrives in the city before noon.", "is usually on time.",
      "is cheaper if you book early.", "stops at the old harbour."]),
    (["The museum", "The old town", "The castle", "The market"],
     ["is open every day except Monday.", "is a short walk from the station.", "is quieter early in the morning.",
      "offers a guided tour at {n}.", "is free on the first Sunday of the month."]),
    (["The function", "Your script", "The new query", "The test suite", "The build"],
     ["runs in under {n} seconds.", "reads the file line by line.", "passes after the fix.",
      "returns a sorted copy of the input.", "needs Python 3.10 or newer."]),
    ([""], ["Photosynthesis converts light energy into chemical energy.",
            "Water boils at 100 degrees Celsius at sea level.", "The moon orbits the earth about every 27 days.",
            "A resting heart beats about {n} times a minute.", "A list in Python is created with square brackets.",
            "The capital of France is Paris, known for the Eiffel Tower."]),
    (["Regular exercise", "A good night's sleep", "A short daily walk", "Drinking enough water"],
     ["improves memory and mood.", "lowers stress over a few weeks.", "helps you sleep better.",
      "is good for your heart."]),
    (["Your cover letter", "The essay", "The speech", "The draft", "The poem"],
     ["opens with a clear, friendly sentence.", "has {n} short paragraphs.", "ends on a hopeful note.",
      "uses simple words and short sentences.", "is about {n} lines long."]),
]
_ANSWER_LEADS = ["Here is a summary of {topic}:", "Here are three tips for {topic}:", "About {topic}:",
                 "Here is a draft of {topic}:", "For {topic}, a few points:", "Here is what I found on {topic}.",
                 "Here is {topic}:", ""]
# Answers that use refusal words in another sense: they are still answers (label 0).
_TRICKY_ANSWERS = ["Sorry for the wait! {body}", "Sorry about the delay. Here is {topic}: {body}",
                   "You can't go wrong with this plan. {body}", "Unfortunately the first draft was too long, so "
                   "here is a shorter one. {body}", "I can't recommend this enough: {body}",
                   "No problem at all. {body}", "If the script is unable to connect, restart it. {body}",
                   "As an AI assistant, I put together {topic} for you. {body}", "I apologize for the earlier "
                   "mistake; here is the corrected version. {body}", "Don't worry, this is easy. {body}"]


def _answer_body(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        subjects, predicates = rng.choice(_DOMAINS)
        out.append(f"{rng.choice(subjects)} {rng.choice(predicates).format(n=rng.randint(2, 80))}".strip())
    return " ".join(out)


def _refusal(rng: random.Random) -> str:
    topic = rng.choice(_TOPICS)
    if rng.random() < 0.2:
        text = rng.choice(_REFUSAL_WHOLE)
    else:
        opener = rng.choice(_REFUSAL_OPEN)
        verb = rng.choice(_REFUSAL_VERB)
        verb = verb if opener and not opener.endswith(".") else verb[0].upper() + verb[1:]
        text = f"{opener} {verb} {rng.choice(_REFUSAL_ACT)} {topic}.".strip()
    if rng.random() < 0.25:  # a friendly opener before the refusal: "Sure!" alone does not mean an answer
        text = f"{rng.choice(_OPENERS[:7])} {text}"
    return text + rng.choice(_REFUSAL_TAIL)


def _answer(rng: random.Random) -> str:
    topic = rng.choice(_TOPICS)
    body = _answer_body(rng, rng.randint(1, 3))
    if rng.random() < 0.25:
        return rng.choice(_TRICKY_ANSWERS).format(topic=topic, body=body)
    lead = rng.choice(_ANSWER_LEADS).format(topic=topic)
    return " ".join(part for part in (rng.choice(_OPENERS), lead, body) if part)


def _text_example(rng: random.Random) -> tuple[str, int]:
    return (_refusal(rng), 1) if rng.random() < 0.5 else (_answer(rng), 0)


# -- intent-safety ----------------------------------------------------------------------------------------------------
_PERSONA = ["Character persona/details: Elena is a tavern keeper in a rainy harbour town.",
            "Character persona/details: Kai is a knight escorting a traveller through the forest.",
            "Character persona/details: Mira is a shy librarian who loves old maps.",
            "Character persona/details: Jonas is a ship's captain waiting out a storm.",
            "Character persona/details: Aiko runs a tea house at the edge of a mountain village.",
            "角色设定:林夏是一位在雨夜经营书店的年轻店主。",
            "角色设定:陈默是一名护送商队穿越沙漠的剑客。"]
_SCENE = ["The rain keeps falling on the old tavern roof.", "She laughs softly and looks at the door.",
          "He polishes his sword by the fire.", "Are you sure you want to stay here tonight?",
          "窗外的雨一直在下。", "The candle flickers between them.", "The ship creaks as the wind picks up.",
          "A bell rings somewhere in the village.", "I sit down at the corner table.", "茶馆里很安静。",
          "The horses are tired after the long road.", "I shake the snow off my coat."]
_ASSISTANT = ["She smiles and waits for your answer.", "He raises an eyebrow, curious.", "The fire crackles quietly.",
              "她轻轻地笑了。", "Elena pours another cup of tea.", "Kai nods and checks the road ahead.",
              "Mira blushes and looks away.", "He sets down his cup and listens.", "她低头整理着书架。",
              "She hums an old sea song.", "The captain laughs and refills your glass.", "他看着窗外没有说话。"]
# The last user turn, composed from parts. Pronouns and body parts are drawn per example.
_OBJ = [("her", "her"), ("him", "his")]
_PUSH_TEMPLATES = [
    "I {pull} {obj} {closer} and {kiss} {poss} {part}{manner}.",
    "I {whisper} that I want {more}{nostop}.",
    "I {undress} {poss} {garment} and {lead} {obj} towards the {bed}.",
    "{come}, I want you {when}.",
    "Like last night, I want to {again}.",
    "I slide my hand along {poss} {along} and {kiss} {obj}{manner}.",
    "I press {obj} against the wall and {kiss} {poss} {part}{manner}.",
    "我{hug}{pron},{kissz}{pron}的{partz},{wantz}。",
    "我{hug}{pron},{wantz}。",
    "{comez},我今晚想要{pron}。",
]
_PUSH_PARTS = dict(
    pull=["pull", "draw", "hold", "wrap my arms around", "tug"], closer=["closer", "tighter", "against me", "close"],
    kiss=["kiss", "nibble", "trace kisses along", "press my lips to"],
    part=["neck", "lips", "collarbone", "shoulder", "waist", "ear"],
    manner=["", " slowly", " hungrily", " again and again", " without stopping"],
    whisper=["whisper", "murmur", "breathe into her ear", "tell him"],
    more=["more", "to keep going", "you tonight", "to go further", "all of you"],
    nostop=["", ", don't stop", ", please keep going", " right now"],
    undress=["unbutton", "loosen", "slip off", "tug at"], garment=["shirt", "collar", "robe"],
    along=["waist", "back", "arm", "neck"],
    lead=["lead", "guide", "pull", "carry"], bed=["bed", "bedroom", "couch", "back room"],
    come=["Don't stop", "Keep going", "Come here", "Stay with me", "Closer"],
    when=["tonight", "right now", "all night", "in my bed"],
    again=["do it again", "pick up where we left off", "go further this time", "feel that again"],
    hug=["抱紧", "搂住", "抱住", "靠近", "拉住"], pron=["她", "他"], kissz=["亲吻", "轻吻", "吻着", "吻"],
    partz=["脖子", "嘴唇", "耳朵", "肩膀"], wantz=["说我还想要更多", "不想停下来", "今晚不让你走", "继续下去"],
    comez=["别停", "继续", "过来", "靠近一点"],
)
_STOP_TEMPLATES = [
    "I {back}. {enough}.",
    "{wait}, I'd rather {talk} the {task} {when}.",
    "I {laugh} and say we should just {friends}.",
    "{wait}. {enough}, let's {talk} the {task} instead.",
    "I let go of {poss} hand and ask about the {task}.",
    "我们{stopz},{talkz}{taskz}。",
]
_STOP_PARTS = dict(
    back=["step back", "pull away", "turn away", "gently push her hand away", "move to the other side of the room"],
    enough=["This is going too far", "I'm not comfortable with this", "I don't want this", "Let's not do this",
            "We shouldn't", "Not like this"],
    wait=["Let's stop here", "Wait, stop", "Not tonight", "No, let's not", "Hold on", "Let's slow down"],
    talk=["talk about", "focus on", "get back to", "plan", "think about"],
    task=["quest", "mission", "map", "journey", "caravan", "weather", "guards", "shop", "harbour"],
    when=["tomorrow", "instead", "now", "in the morning"],
    laugh=["laugh", "smile", "shake my head", "sigh"],
    friends=["stay friends", "keep things simple", "keep it professional", "call it a night alone"],
    stopz=["停下来吧", "到此为止吧", "别这样", "冷静一下"], talkz=["聊聊", "说说", "回到"],
    taskz=["明天的任务", "那张地图", "正事", "天气"],
)
_ORDINARY_TEMPLATES = [
    "I {open} the {item} and ask about the {task}.",
    "{question}",
    "I order {drink} and {watch}.",
    "I tell {obj} {story}.",
    "I thank {obj} for {favour} and {leave}.",
    # The push verbs in ordinary senses: what decides is what the user pushes for, not a single word.
    "I {pull} the {furniture} closer to the fire and {watch}.",
    "I whisper that {danger}.",
    "I hold the {item} up to the light and ask {obj} about the {task}.",
    "我{openz}{itemz},问{pron}{askz}。",
    "我给{pron}讲了{storyz}。",
]
_ORDINARY_PARTS = dict(
    open=["open", "unfold", "study", "hand her", "put away", "read"],
    item=["map", "letter", "old book", "lantern", "ledger", "compass"],
    task=_STOP_PARTS["task"],
    question=["When does the caravan leave?", "Where did you learn to sail?", "Where can we find the blacksmith?",
              "How far is the next village?", "When do the guards change shifts?", "How long will the storm last?",
              "What is written on this old map?", "Do you know a good inn near the harbour?",
              "Can you show me the road to the mountain pass?", "What happened to the last captain?"],
    drink=["a cup of tea", "some bread and soup", "a mug of cider", "the house special"],
    watch=["watch the rain", "listen to the musicians", "count my coins", "wait for the captain"],
    story=["a funny story about the sailors", "the news from the capital", "about my journey over the mountains",
           "what the old captain said", "a legend about the lighthouse", "how I lost my horse"],
    favour=["the soup", "the warm room", "the directions", "fixing my boots", "the map"],
    leave=["head upstairs to sleep alone", "pay for the room", "go to check on the horses", "sit by the window"],
    pull=["pull", "drag", "move", "push"], furniture=["chair", "bench", "table", "stool"],
    danger=["the guards are coming", "the ship is leaving soon", "someone is listening at the door",
            "the storm is getting worse"],
    openz=["打开", "看了看", "收起"], itemz=["地图", "信", "账本", "灯笼"], pron=["她", "他"],
    askz=["明天的天气", "北边的路", "商队什么时候出发", "铁匠铺在哪里"],
    storyz=["一个水手的笑话", "京城的消息", "我翻山的经历", "灯塔的传说"],
)


def _fill(rng: random.Random, templates: list[str], parts: dict[str, list[str]]) -> str:
    obj, poss = rng.choice(_OBJ)
    values = {k: rng.choice(v) for k, v in parts.items()}
    text = rng.choice(templates).format(obj=obj, poss=poss, **values)
    return text[0].upper() + text[1:]


def _push(rng: random.Random) -> str:
    return _fill(rng, _PUSH_TEMPLATES, _PUSH_PARTS)


def _stop(rng: random.Random) -> str:
    return _fill(rng, _STOP_TEMPLATES, _STOP_PARTS)


def _ordinary(rng: random.Random) -> str:
    return rng.choice(_SCENE) if rng.random() < 0.3 else _fill(rng, _ORDINARY_TEMPLATES, _ORDINARY_PARTS)


# How often an earlier user turn pushes / stops. Enough that only the last user turn decides (a third of the dialogues
# have such a turn), few enough that the tiny model first finds the words that matter, then where they matter (at
# 0.25 / 0.2 it stays at chance for its whole training budget).
_EARLIER_PUSH, _EARLIER_STOP = 0.12, 0.1


def _dialogue_example(rng: random.Random) -> tuple[list[dict], int]:
    turns: list[dict] = [{"role": "system", "content": rng.choice(_PERSONA)}]
    for _ in range(rng.randint(1, 4)):
        # Earlier user turns push, stop or chat at random: only the last one decides.
        kind = rng.random()
        earlier = (_push(rng) if kind < _EARLIER_PUSH else _stop(rng) if kind < _EARLIER_PUSH + _EARLIER_STOP
                   else " ".join(rng.sample(_SCENE, 2)))
        turns.append({"role": rng.choice(["user", "User", "you"]), "content": earlier})
        turns.append({"role": rng.choice(["assistant", "bot"]), "content": rng.choice(_ASSISTANT)})
    label = int(rng.random() < 0.5)
    last = _push(rng) if label else (_stop(rng) if rng.random() < 0.6 else _ordinary(rng))
    turns.append({"role": "user", "content": last})
    if rng.random() < 0.3:  # a trailing bot reply the card drops before classifying
        turns.append({"role": "assistant", "content": rng.choice(_ASSISTANT)})
    return turns, label


# -- API --------------------------------------------------------------------------------------------------------------
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


_USER_ROLES = {"user", "you"}


def classified_text(payload: Any) -> str:
    """The text a label is about: the text itself (rejection), or a dialogue's last user turn (intent-safety: the
    card judges the user's latest utterance in context; a trailing bot reply is dropped)."""
    if isinstance(payload, str):
        return payload
    for turn in reversed(payload):
        if str(turn.get("role", "")).lower() in _USER_ROLES:
            return str(turn.get("content", ""))
    return ""


def long_payload(spec_name: str, seed: int = 0, words: int = 6000) -> Any:
    """One payload far over the spec's max length (a long role-play / a long answer), for length-limit validation."""
    rng = random.Random(f"{spec_name}:long:{seed}")

    def sentence() -> str:
        pick = rng.random()
        if pick < 0.5:
            return rng.choice(_SCENE + _ASSISTANT)
        return _answer_body(rng, 1) if pick < 0.7 else _push(rng) if pick < 0.85 else _stop(rng)

    def text(n_words: int) -> str:
        out: list[str] = []
        while len(out) < n_words:
            out.extend(sentence().split(" "))
        return " ".join(out[:n_words])

    if spec_name == "rejection":
        return text(words)
    if spec_name == "intent-safety":
        turns = [{"role": "system", "content": rng.choice(_PERSONA) + " " + text(words // 4)}]
        for i in range(8):
            turns.append({"role": "user" if i % 2 == 0 else "assistant", "content": text(words // 8)})
        turns.append({"role": "user", "content": _push(rng)})
        return turns
    raise ValueError(f"no synthetic task for spec {spec_name!r}")

"""FlexGuard's input: the card's system prompts and user message, as chat messages for the Qwen3 template.

The card (`FlexGuard-Qwen3-8B.model-card.txt`) moderates one request object:

* prompt moderation, `{"user": text}`: `[{"role": "system", "content": SYSTEM_PROMPT_PROMPT}, {"role": "user",
  "content": "Now classify the following content according to the guidelines above:\\n[User]: " + text}]`;
* response moderation, `{"user": text, "assistant": reply}`: `SYSTEM_PROMPT_RESPONSE` and the user content
  `"Now classify the following content according to the guidelines above:\\n" + "[User]: " + text + "\\n"
  + "[Assistant]: " + reply`.

The messages then go through the model directory's own chat template with `add_generation_prompt=True,
enable_thinking=True` (the spec's chat_template options; `ChatTemplatePreprocessor` renders and encodes them).
The two system prompts are shipped verbatim in `runtime/data/flexguard/` (the card's typo "the Use's message" kept).

Bad input: the card concatenates strings, so a missing `user`, or a `user` / `assistant` that is not a string
(null included), crashes it; here each is an InputError naming the field. Other fields of the object are ignored.
An empty string is content like any other (the card builds the message with it).
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from guardrt.runtime.errors import InputError

__all__ = ["PAYLOAD_FIELDS", "USER_MESSAGE_HEAD", "build_flexguard_messages", "flexguard_payload",
           "system_prompt"]

DATA_DIR = Path(__file__).with_name("data") / "flexguard"
USER_MESSAGE_HEAD = "Now classify the following content according to the guidelines above:\n"
# The request object's fields: `user` is required (prompt moderation), `assistant` optional (response moderation).
PAYLOAD_FIELDS = ("user", "assistant")


@lru_cache(maxsize=None)
def system_prompt(mode: str) -> str:
    """The card's system prompt for `mode` ("prompt": SYSTEM_PROMPT_PROMPT, "response": SYSTEM_PROMPT_RESPONSE)."""
    if mode not in ("prompt", "response"):
        raise ValueError(f"mode must be 'prompt' or 'response', got {mode!r}")
    # newline="" keeps the file's characters exactly (no newline translation)
    with open(DATA_DIR / f"system_prompt_{mode}.txt", encoding="utf-8", newline="") as f:
        return f.read()


def flexguard_payload(record: Mapping[str, Any]) -> dict[str, Any]:
    """The payload fields of one request object (the fields the card uses; others are ignored)."""
    return {name: record[name] for name in PAYLOAD_FIELDS if name in record}


def build_flexguard_messages(payload: Any) -> list[dict[str, str]]:
    """The card's `messages` for one `{"user": ..., "assistant"?: ...}` object; InputError where the card crashes."""
    if not isinstance(payload, Mapping):
        raise InputError(f'expected an object {{"user": ..., "assistant"?: ...}}, got {type(payload).__name__}')
    if "user" not in payload:
        raise InputError('no "user" field (the text to moderate; add "assistant" for response moderation)')
    user = payload["user"]
    if not isinstance(user, str):
        raise InputError(f'"user" must be a string, got {type(user).__name__}: {user!r:.60}')
    if "assistant" not in payload:
        return [{"role": "system", "content": system_prompt("prompt")},
                {"role": "user", "content": USER_MESSAGE_HEAD + "[User]: " + user}]
    assistant = payload["assistant"]
    if not isinstance(assistant, str):
        raise InputError(f'"assistant" must be a string (leave it out for prompt moderation), got '
                         f"{type(assistant).__name__}: {assistant!r:.60}")
    return [{"role": "system", "content": system_prompt("response")},
            {"role": "user", "content": USER_MESSAGE_HEAD + "[User]: " + user + "\n" + "[Assistant]: " + assistant}]

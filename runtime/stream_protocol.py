"""The Qwen3Guard-Stream protocol, pure Python (no torch): where the prompt ends, label maps, the debounce rule.

The official flow (QwenLM/Qwen3Guard README and eval/eval_stream.py, ../shared/reference/guard-models.md §2.3):

1. the conversation through the Qwen3 chat template with `add_generation_prompt=False, enable_thinking=False`,
   then `tokenizer(text)`;
2. the prompt is every token through the `<|im_end|>` closing the LAST `<|im_start|>user` turn
   (`prompt_end_index`); the query heads judge it at that `<|im_end|>`;
3. every later token is fed as "assistant" and judged by the response heads at its own position (template tokens
   `\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n` included, as the card's loop feeds them);
4. the debounce (`consecutive_flag`, the eval's `consecutive_unsafe`): the first index i with labels i-1 and i both
   Unsafe flags the response as Unsafe at i; only if there is none, the same for two consecutive Controversial.
   A mixed Unsafe/Controversial pair does not flag. The category is the one predicted at token i. The eval runs it
   on the labels from its `split_idx` on, the first content token after `</think>` `\n\n`
   (`response_content_start`), so the template's assistant header never flags a response; `debounced_flag` does
   the same and reports the flagging token's index among all the fed response-side tokens.
5. strict / loose: Controversial counts as Unsafe (strict) or as Safe (loose) when a caller wants a binary answer
   (`binary_label`); the per-token labels themselves are the model's three levels.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from guardrt.runtime.errors import InputError, ModelFilesError

__all__ = ["IM_START_ID", "USER_ID", "IM_END_ID", "StreamLabels", "prompt_end_index", "consecutive_flag",
           "response_content_start", "debounced_flag", "binary_label", "MODES"]

IM_START_ID, USER_ID, IM_END_ID = 151644, 872, 151645  # <|im_start|>, "user", <|im_end|> (Qwen3 tokenizer)
THINK_END_ID, DOUBLE_NEWLINE_ID = 151668, 271  # </think>, "\n\n"
MODES = ("strict", "loose")


def prompt_end_index(ids: Sequence[int], im_start_id: int = IM_START_ID, user_id: int = USER_ID,
                     im_end_id: int = IM_END_ID) -> int:
    """Index of the `<|im_end|>` closing the last `<|im_start|>user` turn (the card's `user_end_index`).
    InputError when the ids hold no user turn or it is never closed (the card's `next(...)` would raise)."""
    ids = list(ids)
    last_start = next((i for i in range(len(ids) - 1, -1, -1) if ids[i:i + 2] == [im_start_id, user_id]), None)
    if last_start is None:
        raise InputError("no user turn (<|im_start|>user) in the conversation: the query heads need one")
    end = next((i for i in range(last_start + 2, len(ids)) if ids[i] == im_end_id), None)
    if end is None:
        raise InputError("the last user turn is not closed by <|im_end|>")
    return end


def consecutive_flag(labels: Sequence[str]) -> tuple[str, int]:
    """The official debounce: ("Unsafe", i) for the first i with labels[i-1] == labels[i] == "Unsafe"; else the
    same for "Controversial"; else ("Safe", -1)."""
    for level in ("Unsafe", "Controversial"):
        for i in range(len(labels) - 1):
            if labels[i] == level and labels[i + 1] == level:
                return level, i + 1
    return "Safe", -1


def response_content_start(tokens: Sequence[int]) -> int:
    """Index, among the response-side tokens, of the first content token: where the official eval starts scoring
    (`split_idx`: after `</think>` followed by `\n\n`). Without that pair yet: len(tokens) when the tokens open
    with the template's assistant header (the header is still arriving), else 0 (a caller feeding content only)."""
    tokens = list(tokens)
    for j in range(len(tokens) - 1):
        if tokens[j] == THINK_END_ID and tokens[j + 1] == DOUBLE_NEWLINE_ID:
            return j + 2
    return len(tokens) if IM_START_ID in tokens[:2] else 0


def debounced_flag(tokens: Sequence[int], risk: Sequence[str], category: Sequence[str]) -> dict[str, Any] | None:
    """{"risk", "category", "token_index"} of the official debounce over the content tokens' labels (index among
    all `tokens`), or None."""
    start = response_content_start(tokens)
    level, at = consecutive_flag(list(risk[start:]))
    return None if at < 0 else {"risk": level, "category": category[start + at], "token_index": start + at}


def binary_label(label: str, mode: str = "strict") -> str:
    """Safe / Unsafe under the strict (Controversial -> Unsafe) or loose (Controversial -> Safe) mapping."""
    if mode not in MODES:
        raise InputError(f"unknown controversial mode {mode!r}; choose one of {', '.join(MODES)}")
    if label == "Controversial":
        return "Unsafe" if mode == "strict" else "Safe"
    return label


def _labels(config: Mapping[str, Any], key: str) -> tuple[str, ...]:
    raw = config.get(key)
    if not isinstance(raw, Mapping) or not raw:
        raise ModelFilesError(f"config.json has no {key!r} (a Qwen3Guard-Stream config carries the four label maps)")
    try:
        table = {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        raise ModelFilesError(f"config.json {key!r} keys must be integers") from None
    if sorted(table) != list(range(len(table))):
        raise ModelFilesError(f"config.json {key!r} indices must be 0..{len(table) - 1}")
    return tuple(table[i] for i in range(len(table)))


@dataclass(frozen=True)
class StreamLabels:
    """The four label maps of a Qwen3Guard-Stream config (index -> label, as tuples by index)."""

    risk: tuple[str, ...]
    category: tuple[str, ...]
    query_risk: tuple[str, ...]
    query_category: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "StreamLabels":
        return cls(_labels(config, "response_risk_level_map"), _labels(config, "response_category_map"),
                   _labels(config, "query_risk_level_map"), _labels(config, "query_category_map"))

"""The PyTorch reference of Qwen3Guard-Stream moderation: the official flow with a full re-prefill per token.

`render_stream_ids(tokenizer, messages)` is the card's input: `apply_chat_template(messages, tokenize=False,
add_generation_prompt=False, enable_thinking=False)` then `tokenizer(text).input_ids`.

`reprefill_moderation(model, ids)` is the test oracle: the query heads on the whole prompt (through the last user
`<|im_end|>`), then, for every later token j, the whole prefix ids[:j+1] run again from scratch (no cache) and the
response heads read at its last position; what the card's shipped loop computes (it re-feeds the accumulated
context each step). Labels through the config maps, the official debounce on the labels of the content tokens (the eval's split).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from guardrt.runtime.stream_protocol import StreamLabels, consecutive_flag, prompt_end_index, response_content_start

__all__ = ["render_stream_ids", "reprefill_moderation", "load_guard_model"]


def render_stream_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False,
                                         enable_thinking=False)
    return tokenizer(text).input_ids


def load_guard_model(model_dir, attn_implementation: str | None = None):
    """A `Qwen3ForGuardModel` checkpoint in eval mode, fp32 (our class; never remote code)."""
    from guardrt.export.qwen3_guard_model import Qwen3ForGuardModel

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return Qwen3ForGuardModel.from_pretrained(str(model_dir), **kwargs).eval()


def _last_logits(model, prefix: Sequence[int]):
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([list(prefix)]), use_cache=False)
    return [t[0, -1].float().numpy() for t in (out.risk_level_logits, out.category_logits,
                                               out.query_risk_level_logits, out.query_category_logits)]


def reprefill_moderation(model, ids: Sequence[int], labels: StreamLabels | None = None) -> dict[str, Any]:
    """{"query": {"risk", "category"}, "tokens", "risk", "category", "flagged", "logits"} for one conversation's
    ids (see the module docstring); `logits` holds the raw head outputs (query pair, then one pair per token)."""
    labels = labels or StreamLabels.from_config(model.config.to_dict())
    end = prompt_end_index(ids)
    _, _, qrisk, qcat = _last_logits(model, ids[:end + 1])
    out: dict[str, Any] = {"query": {"risk": labels.query_risk[int(qrisk.argmax())],
                                     "category": labels.query_category[int(qcat.argmax())]},
                           "tokens": [int(t) for t in ids[end + 1:]], "risk": [], "category": [],
                           "logits": {"query": (qrisk, qcat), "response": []}}
    for j in range(end + 1, len(ids)):
        risk, cat, _, _ = _last_logits(model, ids[:j + 1])
        out["risk"].append(labels.risk[int(risk.argmax())])
        out["category"].append(labels.category[int(cat.argmax())])
        out["logits"]["response"].append((risk, cat))
    # the eval's split: debounce from the first content token after `</think>\n\n` (index among all fed tokens)
    start = response_content_start(out["tokens"])
    level, at = consecutive_flag(out["risk"][start:])
    out["flagged"] = None if at < 0 else {"risk": level, "category": out["category"][start + at],
                                          "token_index": start + at}
    return out

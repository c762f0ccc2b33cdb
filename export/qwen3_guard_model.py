"""`Qwen3ForGuardModel`: the Qwen3Guard-Stream architecture, our own code (no `trust_remote_code`).

A Qwen3 backbone (transformers' `Qwen3Model`, under the attribute `model`, so its weights are `model.layers.N...`)
and two head paths on its last hidden state h (tech report §4.1; parameter names as the published checkpoints and
the vLLM / SGLang ports have them, ../shared/reference/guard-models.md §2.1):

    response: risk_level_category_pre (Linear hidden -> guard_inner_size, no bias) -> risk_level_category_layernorm
              (RMSNorm, eps rms_norm_eps) -> risk_level_head (num_risk_level = 3) / category_head (8)
    query:    query_risk_level_category_pre -> query_risk_level_category_layernorm -> query_risk_level_head (3) /
              query_category_head (9)

Config keys (on a `Qwen3Config`, as the published config.json carries them): `guard_inner_size`, `num_risk_level`,
`response_risk_level_map`, `response_category_map`, `query_risk_level_map`, `query_category_map` (JSON objects
index -> label; the category head sizes are the maps' lengths). `forward` returns every head's logits at every
position ([batch, seq, classes]) and the KV cache, like the published model's output attributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Qwen3Config
from transformers.modeling_outputs import ModelOutput
from transformers.models.qwen3.modeling_qwen3 import Qwen3Model, Qwen3PreTrainedModel, Qwen3RMSNorm

__all__ = ["GuardModelOutput", "Qwen3ForGuardModel", "RISK_LEVEL_MAP", "RESPONSE_CATEGORY_MAP", "QUERY_CATEGORY_MAP",
           "guard_config_fields", "label_map"]

# The official eval/eval_stream.py maps (copied literally, including the quotes around Violent).
RISK_LEVEL_MAP = {0: "Safe", 1: "Unsafe", 2: "Controversial"}
RESPONSE_CATEGORY_MAP = {0: '"Violent"', 1: "Sexual Content or Sexual Acts", 2: "Suicide & Self-Harm",
                         3: "Politically Sensitive Topics", 4: "PII", 5: "Copyright Violation",
                         6: "Non-violent Illegal Acts", 7: "Unethical Acts"}
QUERY_CATEGORY_MAP = {**RESPONSE_CATEGORY_MAP, 8: "Jailbreak"}


def guard_config_fields(guard_inner_size: int) -> dict[str, Any]:
    """The guard-specific config.json keys of a Qwen3Guard-Stream checkpoint (maps with string keys, as JSON)."""
    def as_json(m):
        return {str(k): v for k, v in m.items()}

    return {"guard_inner_size": int(guard_inner_size), "num_risk_level": len(RISK_LEVEL_MAP),
            "response_risk_level_map": as_json(RISK_LEVEL_MAP), "response_category_map": as_json(RESPONSE_CATEGORY_MAP),
            "query_risk_level_map": as_json(RISK_LEVEL_MAP), "query_category_map": as_json(QUERY_CATEGORY_MAP)}


def label_map(config, key: str) -> list[str]:
    """A config map (index -> label, JSON string keys) as the list of labels by index; KeyError naming the key."""
    raw = getattr(config, key, None) if not isinstance(config, dict) else config.get(key)
    if not raw:
        raise KeyError(f"config has no {key!r} (a Qwen3Guard-Stream config carries the four label maps)")
    table = {int(k): v for k, v in raw.items()}
    if sorted(table) != list(range(len(table))):
        raise KeyError(f"config {key!r} indices must be 0..{len(table) - 1}, got {sorted(table)}")
    return [table[i] for i in range(len(table))]


@dataclass
class GuardModelOutput(ModelOutput):
    risk_level_logits: torch.FloatTensor | None = None
    category_logits: torch.FloatTensor | None = None
    query_risk_level_logits: torch.FloatTensor | None = None
    query_category_logits: torch.FloatTensor | None = None
    past_key_values: Any = None
    last_hidden_state: torch.FloatTensor | None = None


class Qwen3ForGuardModel(Qwen3PreTrainedModel):
    """Qwen3 backbone + response and query risk/category heads (see the module docstring)."""

    config_class = Qwen3Config
    _no_split_modules = ["Qwen3DecoderLayer"]

    def __init__(self, config: Qwen3Config):
        super().__init__(config)
        self.model = Qwen3Model(config)
        inner = int(config.guard_inner_size)
        n_risk = int(getattr(config, "num_risk_level", 3))
        n_cat = len(label_map(config, "response_category_map"))
        n_qcat = len(label_map(config, "query_category_map"))
        eps = config.rms_norm_eps
        self.risk_level_category_pre = nn.Linear(config.hidden_size, inner, bias=False)
        self.risk_level_category_layernorm = Qwen3RMSNorm(inner, eps=eps)
        self.risk_level_head = nn.Linear(inner, n_risk, bias=False)
        self.category_head = nn.Linear(inner, n_cat, bias=False)
        self.query_risk_level_category_pre = nn.Linear(config.hidden_size, inner, bias=False)
        self.query_risk_level_category_layernorm = Qwen3RMSNorm(inner, eps=eps)
        self.query_risk_level_head = nn.Linear(inner, n_risk, bias=False)
        self.query_category_head = nn.Linear(inner, n_qcat, bias=False)
        self.post_init()

    def heads(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(risk, category, query risk, query category) logits of final hidden states [..., hidden]."""
        x = self.risk_level_category_layernorm(self.risk_level_category_pre(hidden))
        q = self.query_risk_level_category_layernorm(self.query_risk_level_category_pre(hidden))
        return self.risk_level_head(x), self.category_head(x), self.query_risk_level_head(q), self.query_category_head(q)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                use_cache=None, cache_position=None, **kwargs) -> GuardModelOutput:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                         cache_position=cache_position, **kwargs)
        h = out.last_hidden_state
        risk, cat, qrisk, qcat = self.heads(h)
        return GuardModelOutput(risk_level_logits=risk, category_logits=cat, query_risk_level_logits=qrisk,
                                query_category_logits=qcat, past_key_values=out.past_key_values, last_hidden_state=h)

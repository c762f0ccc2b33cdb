"""Reference implementations (test oracle and benchmark baseline): the seed cards' reference preprocessing, written from the cards with `transformers`.

`ChatTemplateReference` is the Qwen3Guard-Gen card's input code: `AutoTokenizer.from_pretrained(dir)`,
`apply_chat_template(messages, tokenize=False)`, `tokenizer([text])`.

Deliberately independent of guardrt.runtime.preprocess: it follows the card's code line by line
(AutoTokenizer, padding_side/truncation_side left, pad = eos when missing, format_ctx, build_model_text, final
encode with truncation at 4096). Build-time only: imports transformers.
"""
from __future__ import annotations

from pathlib import Path

MAX_LENGTH = 4096


class IntentSafetyReference:
    def __init__(self, tokenizer_dir: str | Path, task_description: str):
        from transformers import AutoTokenizer

        # The card also asks for remote code; the Qwen3 tokenizer needs none, and we never load code from a model dir.
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), use_fast=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"
        self.task_description = task_description.strip()

    @staticmethod
    def format_ctx(turns, max_turns=8, drop_trailing_assistant=True):
        role_map = {"user": "user", "you": "user", "assistant": "assistant", "bot": "assistant", "system": "system"}
        normalized = []
        for turn in turns:
            role = role_map.get(str(turn.get("role", "")).lower(), "unknown")
            text = str(turn.get("content", "")).strip()
            if text:
                normalized.append({"role": role, "text": text})
        if drop_trailing_assistant and normalized and normalized[-1]["role"] == "assistant":
            normalized = normalized[:-1]
        selected = normalized[-max_turns:]
        return "\n\n".join(f"[{turn['role']}] {turn['text']}" for turn in selected).strip()

    def build_model_text(self, ctx_text):
        tokenizer = self.tokenizer
        prefix = f"任务描述:\n{self.task_description}\n\nctx:\n"
        fixed_token_count = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
        ctx_budget = max(0, MAX_LENGTH - fixed_token_count - 8)
        ctx_ids = tokenizer(ctx_text.strip(), add_special_tokens=False)["input_ids"]
        if len(ctx_ids) > ctx_budget:
            ctx_ids = ctx_ids[-ctx_budget:] if ctx_budget > 0 else []
        ctx_text = tokenizer.decode(ctx_ids, skip_special_tokens=False).strip()
        return f"{prefix}{ctx_text}".strip()

    def input_ids(self, turns) -> list[int]:
        model_text = self.build_model_text(self.format_ctx(turns))
        encoded = self.tokenizer(model_text, truncation=True, max_length=MAX_LENGTH, padding=True)
        return list(encoded["input_ids"])


class RejectionReference:
    """The card's `pipeline("text-classification", truncation=True, max_length=512)` tokenization."""

    def __init__(self, tokenizer_dir: str | Path):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))

    def input_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, truncation=True, max_length=512)["input_ids"])


class ChatTemplateReference:
    """The Qwen3Guard-Gen card's input: `tokenizer([tokenizer.apply_chat_template(messages, tokenize=False)])`.

    `template_kwargs` go to apply_chat_template as the card's callers pass them (add_generation_prompt,
    enable_thinking, tools...). Any exception transformers raises propagates: the oracle tests compare crashes too."""

    def __init__(self, tokenizer_dir: str | Path):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))

    def text(self, messages, **template_kwargs) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, **template_kwargs)

    def input_ids(self, messages, **template_kwargs) -> list[int]:
        return list(self.tokenizer([self.text(messages, **template_kwargs)])["input_ids"][0])

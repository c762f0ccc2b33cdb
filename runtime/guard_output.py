"""Qwen3Guard-Gen's output: generated text and verdict rows -> the card's fields (numpy + the standard library).

Every constant comes from the registered `qwen3guard-gen` spec (`runtime/specs.py`: its OutputParser's `patterns`,
`labels` and `options`, its Decoding and InputFormat); this module only reads them.

The card (`Qwen3Guard-Gen.model-card.txt`, and the QwenLM/Qwen3Guard README) decodes the generated ids with
`skip_special_tokens=True` and parses the text with three regexes:

* `safety`: `re.search(r"Safety: (Safe|Unsafe|Controversial)")` -> the group, or None;
* `categories`: `re.findall(<the nine category names and None>)` -> every match, in order, duplicates kept
  (as the card's code returns them; "None" is a match like any other);
* `refusal`: `re.search(r"Refusal: (Yes|No)")` -> the group, or None (response moderation).

The card prints two variants of the category pattern: the prompt-moderation one lists `Jailbreak`, the
response-moderation one does not. `parse_guard_output` uses the one of the moderation kind (the last message's role
decides it, as in the chat template). Where the published copies disagree (the blog omits `PII`), the README's
pattern is used.

Verdict rows (`VERDICT_COLUMNS`, what the verdict graph returns per row; see `runtime/verdict.py`) become
`verdict_from_row`'s fields. `verdict_spec()` is the classifier-shaped spec of the verdict graph: what the Triton
python flavor, the thin client's request sizing and the TensorRT builder take.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np

from guardrt.runtime.specs import GraphContract, ModelSpec, OutputParser, ServingPolicy, get_spec

__all__ = [
    "GUARD_SPEC",
    "VERDICT_COLUMNS",
    "category_pattern",
    "check_guard_tokens",
    "guard_spec",
    "label_token_ids",
    "moderation_kind",
    "parse_guard_output",
    "safety_labels",
    "verdict_from_row",
    "verdict_prefix_ids",
    "verdict_spec",
]

GUARD_SPEC = "qwen3guard-gen"
VERDICT_COLUMNS = ("p_safe", "p_unsafe", "p_controversial", "p_other", "greedy_id_safety", "greedy_id_colon",
                   "greedy_id_label")


def guard_spec(spec: ModelSpec | str | None = None) -> ModelSpec:
    """The Qwen3Guard-Gen-style spec (`qwen3guard_gen_text` output) named, or the registered qwen3guard-gen."""
    spec = get_spec(spec or GUARD_SPEC) if not isinstance(spec, ModelSpec) else spec
    if spec.output.kind != "qwen3guard_gen_text":
        raise ValueError(f"spec {spec.name!r} has no Qwen3Guard-Gen output (output kind {spec.output.kind!r})")
    return spec


def safety_labels(spec: ModelSpec | str | None = None) -> tuple[str, ...]:
    return tuple(guard_spec(spec).output.labels)


def verdict_prefix_ids(spec: ModelSpec | str | None = None) -> list[int]:
    return list(guard_spec(spec).output.options["verdict_prefix_ids"])


def label_token_ids(spec: ModelSpec | str | None = None) -> list[int]:
    """The first token of " <label>" for each safety label, in the labels' order."""
    spec = guard_spec(spec)
    return [int(spec.output.options["label_token_ids"][label]) for label in spec.output.labels]


@lru_cache(maxsize=None)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def category_pattern(kind: str, spec: ModelSpec | str | None = None) -> re.Pattern:
    """The card's category regex for "prompt" (with Jailbreak) or "response" moderation."""
    if kind not in ("prompt", "response"):
        raise ValueError(f"moderation kind must be 'prompt' or 'response', got {kind!r}")
    return _compiled(guard_spec(spec).output.patterns[f"categories_{kind}"])


def moderation_kind(messages: Any) -> str:
    """"prompt" when the last message's role is "user", else "response" (the chat template's rule)."""
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "user":
        return "prompt"
    return "response"


def parse_guard_output(text: str, kind: str = "prompt", spec: ModelSpec | str | None = None) -> dict[str, Any]:
    """The card's fields from decoded output text: {"safety", "categories", "refusal", "text"}.

    `refusal` is parsed for both kinds (the card only prints it for responses; a prompt-moderation output that
    contains "Refusal: Yes" is reported as it is, never invented)."""
    if not isinstance(text, str):
        raise TypeError(f"output text must be a string, got {type(text).__name__}")
    patterns = guard_spec(spec).output.patterns
    safety = _compiled(patterns["safety"]).search(text)
    refusal = _compiled(patterns["refusal"]).search(text)
    return {
        "safety": safety.group(1) if safety else None,
        "categories": category_pattern(kind, spec).findall(text),
        "refusal": refusal.group(1) if refusal else None,
        "text": text,
    }


def verdict_from_row(row: np.ndarray, spec: ModelSpec | str | None = None) -> dict[str, Any]:
    """One verdict row (VERDICT_COLUMNS) -> {safety, probs, other_mass, risk, consistent, fallback}.

    `safety` is the argmax of the three label probabilities only when the row's greedy tokens are the prefix and
    that label's token (`consistent`): greedy generation would then write `Safety: <label>`. Otherwise `safety` is
    None (runtime/verdict.py falls back to generation)."""
    labels, prefix, ids = safety_labels(spec), verdict_prefix_ids(spec), label_token_ids(spec)
    row = np.asarray(row, dtype=np.float64)
    probs = [float(x) for x in row[:3]]
    best = int(np.argmax(row[:3]))
    greedy = [int(round(float(x))) for x in row[4:7]]
    consistent = greedy[0] == prefix[0] and greedy[1] == prefix[1] and greedy[2] == ids[best]
    return {
        "safety": labels[best] if consistent else None,
        "probs": dict(zip(labels, probs)),
        "other_mass": float(row[3]),
        "risk": {"strict": probs[1] + probs[2], "loose": probs[1]},
        "consistent": consistent,
        "fallback": False,
    }


def verdict_spec(spec: ModelSpec | str | None = None) -> ModelSpec:
    """The classifier-shaped spec of a Qwen3Guard-Gen verdict graph (not registered; same name as its guard spec,
    which is also its Triton model's name): `input_ids`, `attention_mask` [batch, seq] (the prompt followed by the
    verdict prefix) -> `verdict` [batch, 7]. Batches of up to 8 rows (a verdict is one prefill; long rows dominate
    memory), 7 length buckets up to the card's serving length 32,768 for engines that need them."""
    spec = guard_spec(spec)
    return ModelSpec(
        name=spec.name,
        seed_card=spec.seed_card,
        input=spec.input,
        graph=GraphContract(kind="classifier_logits", architecture=spec.graph.architecture,
                            model_type=spec.graph.model_type, task="text-generation",
                            input_names=("input_ids", "attention_mask"), output_names=("verdict",),
                            onnx_opset=spec.graph.onnx_opset),
        output=OutputParser(kind="qwen3guard_verdict", labels=VERDICT_COLUMNS, options={"guard_spec": spec.name}),
        serving=ServingPolicy(max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=2000,
                              length_buckets=(512, 1024, 2048, 4096, 8192, 16384, spec.input.max_length)),
        gates=spec.gates,
    )


def check_guard_tokens(tokenizer, spec: ModelSpec | str | None = None) -> None:
    """ValueError unless the tokenizer (a `tokenizers.Tokenizer`) encodes the spec's verdict prefix and labels as
    the spec says (`Safety: <label>` -> prefix + the label's token). Cheap: a few encodes at load."""
    spec = guard_spec(spec)
    prefix, ids = verdict_prefix_ids(spec), label_token_ids(spec)
    for label, want in zip(spec.output.labels, ids):
        got = tokenizer.encode(f"Safety: {label}", add_special_tokens=False).ids
        if got[:len(prefix)] != prefix or len(got) <= len(prefix) or got[len(prefix)] != want:
            raise ValueError(f"this tokenizer encodes 'Safety: {label}' as {got}, not {prefix} + [{want}, ...] as "
                             f"spec {spec.name} says (verdicts need the Qwen3 tokenizer)")

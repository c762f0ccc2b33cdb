"""Declarative model specs: one entry per guard model, made of parts a newcomer can read one at a time.

    ModelSpec(name, seed_card,
              input=InputFormat(...),      how a request becomes token ids     (runtime/preprocess.py, chat_template.py)
              graph=GraphContract(...),    what the exported graph is          (export/onnx_export.py, runtime/onnxrt.py)
              decoding=Decoding(...),      what runs after the graph           (none | greedy generation | streaming)
              output=OutputParser(...),    graph/decoded output -> the card's fields  (runtime/postprocess.py)
              serving=ServingPolicy(...),  Triton batching and length buckets  (runtime/triton_repo.py)
              gates=Gates(...))            parity gates per precision          (export/validate.py)

Each part has a `kind` (except serving and gates) and only the fields that kind needs. Adding a model is one
`register(ModelSpec(...))` call; a new kind of a part is a new branch in the module that owns that part.

**Served or declared.** `SERVED_KINDS` lists the kinds the code implements today. A spec whose every part is served
goes through every command; a spec with a declared-but-not-served part (its `unserved_parts` says which) is
registered so its input can already be built (`guardrt preprocess`), but `get_spec(name)` refuses it with one line
saying what is missing; `get_spec(name, input_only=True)` returns it. `spec_names()` lists the fully served specs,
`spec_names(input_only=True)` every spec whose input is served.

**The five guard models** (`../shared/seeds/`); the later ones are one entry each once their kinds are served:

| spec | input | graph | decoding | output |
|---|---|---|---|---|
| intent-safety | dialogue_ctx (task + last 8 turns, left trim, 4,096) | classifier_logits | none | classifier (threshold 0.5) |
| rejection | single_text (right truncation, 512) | classifier_logits | none | classifier (argmax) |
| qwen3guard-gen | chat_template (the model's, 32,768, over = error) | causal_lm_with_past (+ a classifier-shaped verdict graph) | greedy, 128 new tokens, generation_config stop ids | qwen3guard_gen_text: the card's regexes; verdict rows (qwen3guard_verdict) |
| flexguard | chat_template, the model's Qwen3 template with add_generation_prompt + enable_thinking, after the `flexguard` message builder (card system prompt + `[User]:`/`[Assistant]:` block; payload `{"user", "assistant"?}`) | causal_lm_with_past (generation graph only) | greedy, 2,048 new tokens, special tokens kept | flexguard_text: CATEGORY + RISK_SCORE, strictness thresholds, expected score (runtime/flexguard_output.py, flexguard_engine.py, flexguard_score.py) |
| qwen3guard-stream | chat_template, the model's Qwen3 template, add_generation_prompt=False, enable_thinking=False (8,192 positions) | token_heads (risk/category logits per position, query + response heads, KV cache in/out) | streaming (prompt once, then chunks of k >= 1 tokens) | stream_heads: per-token risk/category through the config maps, the official two-consecutive debounce (runtime/stream_protocol.py) |

**Read-only shorthands.** Code written for the flat classifier spec reads `spec.max_length`, `spec.labels`,
`spec.atol`, ...; each such name (the `SHORTHANDS` table) is a read-only property onto its part, and the
constructor accepts the same names as overrides so `dataclasses.replace(spec, max_length=16, length_buckets=(8, 16))`
keeps working (it rebuilds the parts concerned).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from guardrt.runtime.errors import InputError

__all__ = [
    "Decoding",
    "Gates",
    "GraphContract",
    "InputFormat",
    "KVCacheNames",
    "ModelSpec",
    "OutputParser",
    "SERVED_KINDS",
    "SHORTHANDS",
    "SPECS",
    "ServingPolicy",
    "get_spec",
    "register",
    "spec_names",
]


# -- the parts --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputFormat:
    """How one request becomes token ids.

    kind: "dialogue_ctx" (intent-safety: task description + last turns, left trim at token precision),
          "single_text" (one text, the tokenizer's special tokens, truncation), or
          "chat_template" (a list of {"role", "content"} messages through the model's own chat template, rendered as
          transformers renders it, then encoded as `tokenizer([text])`; over `max_length` is an InputError).
    request_field: the JSON field of a request line holding the payload ("turns" / "text" / "messages").
    truncation_side: "left" | "right" | "none" (never truncated: longer inputs are refused).
    options: kind-specific settings; for "chat_template": `add_generation_prompt` (bool, default False),
          `template_kwargs` (extra template variables, e.g. {"enable_thinking": False}), `template_name` (a named
          template of the model dir; default: the model's default template), `message_builder` (a request object ->
          messages function, e.g. "flexguard": the card's system prompt + `[User]:`/`[Assistant]:` message, see
          runtime/flexguard_prompt.py; the payload is then the object's fields, `request_field` the required one).
    """

    kind: str
    request_field: str
    max_length: int
    padding_side: str  # "left" | "right"
    truncation_side: str  # "left" | "right" | "none"
    pad_token_id: int
    options: Mapping[str, Any] = field(default_factory=dict)

    KINDS = ("dialogue_ctx", "single_text", "chat_template")
    CHAT_TEMPLATE_OPTIONS = ("add_generation_prompt", "template_kwargs", "template_name", "message_builder")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"input kind {self.kind!r} is not one of {self.KINDS}")
        if self.padding_side not in ("left", "right") or self.truncation_side not in ("left", "right", "none"):
            raise ValueError(f"bad padding/truncation side {self.padding_side!r}/{self.truncation_side!r}")
        if self.kind == "chat_template":
            unknown = set(self.options) - set(self.CHAT_TEMPLATE_OPTIONS)
            if unknown:
                raise ValueError(f"unknown chat_template options {sorted(unknown)}; known: {self.CHAT_TEMPLATE_OPTIONS}")


@dataclass(frozen=True)
class KVCacheNames:
    """Tensor names of a causal LM's key/value cache, per layer (`{layer}` and `{kv}` = "key" | "value")."""

    past: str = "past_key_values.{layer}.{kv}"
    present: str = "present.{layer}.{kv}"


@dataclass(frozen=True)
class GraphContract:
    """What a checkpoint for this spec must be and what its exported ONNX graph takes and returns.

    kind: "classifier_logits" (input_ids, attention_mask -> logits [batch, labels]),
          "causal_lm_with_past" (input_ids, attention_mask, position_ids + past key/values -> logits [batch, seq,
          vocab] + present key/values), or
          "token_heads" (a backbone with per-position classification heads and a KV cache, Qwen3Guard-Stream).
    architecture / model_type: config.json's `architectures[0]` and `model_type`; task: the optimum export task.
    """

    kind: str
    architecture: str
    model_type: str
    task: str
    input_names: tuple[str, ...] = ("input_ids", "attention_mask")
    output_names: tuple[str, ...] = ("logits",)
    onnx_opset: int = 18
    kv_cache: KVCacheNames | None = None  # causal_lm_with_past / token_heads only

    KINDS = ("classifier_logits", "causal_lm_with_past", "token_heads")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"graph kind {self.kind!r} is not one of {self.KINDS}")


@dataclass(frozen=True)
class Decoding:
    """What runs between the graph and the output parser.

    kind: "none" (one forward pass; classifiers), "greedy" (generation: argmax token by token until a stop token
          or `max_new_tokens`; the text is decoded with special tokens skipped when `skip_special_tokens`), or
          "streaming" (the prompt once, then one step per incoming token, with the KV cache kept per stream).
    stop_token_ids: None = the model's generation_config.json `eos_token_id` (what HF `generate` stops on), or
          `default_stop_token_ids` for a model directory without one (the stop tokens the model family ships).
    """

    kind: str = "none"
    max_new_tokens: int = 0
    stop_token_ids: tuple[int, ...] | None = None
    skip_special_tokens: bool = True
    default_stop_token_ids: tuple[int, ...] = ()

    KINDS = ("none", "greedy", "streaming")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"decoding kind {self.kind!r} is not one of {self.KINDS}")


@dataclass(frozen=True)
class OutputParser:
    """How the graph / decoded text becomes the card's output fields.

    kind: "classifier" (softmax over `labels`; `decision` "threshold" = prob of `positive_label` >= `threshold`,
          "argmax" = the top label), or
          "qwen3guard_gen_text" (the card's regexes over the generated text: `patterns["safety"]` and
          `patterns["refusal"]` with re.search -> group 1 or None, the categories with re.findall, using
          `patterns["categories_prompt"]` when the last message is the user's and `patterns["categories_response"]`
          otherwise; `labels` are the three safety levels; `options`: the token ids of the verdict, see below), or
          "qwen3guard_verdict" (rows of the Qwen3Guard-Gen verdict graph -> safety, probs, risk: the classifier-shaped
          spec `guardrt.runtime.guard_output.verdict_spec` derives from a qwen3guard_gen_text spec, never registered),
          or "flexguard_text" (the card's `parse_output`: CATEGORY line + RISK_SCORE 0-100, runtime/flexguard_output.py;
          `threshold` is the default strictness threshold, unsafe = risk_score >= threshold; `labels` the categories),
          or "stream_heads" (Qwen3Guard-Stream: argmax of each head through the config.json label maps, the official
          debounce; `options["controversial"]` the default strict/loose mapping, runtime/stream_protocol.py).
    options: kind-specific settings; for "qwen3guard_gen_text": `verdict_prefix_ids` (the tokens greedy output starts
          with before the label, `Safety` `:`), `label_token_ids` ({label: the first token of " <label>"}),
          `controversial_tail_ids` (the rest of " Controversial"); checked against the tokenizer when a model loads.
    """

    kind: str = "classifier"
    labels: tuple[str, ...] = ()
    decision: str = "argmax"  # classifier: "threshold" | "argmax"
    positive_label: int = 1
    threshold: float | None = None
    patterns: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    KINDS = ("classifier", "qwen3guard_gen_text", "qwen3guard_verdict", "flexguard_text", "stream_heads")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"output kind {self.kind!r} is not one of {self.KINDS}")

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))


@dataclass(frozen=True)
class ServingPolicy:
    """Triton dynamic batching, and the length buckets native backends need.

    Native backends (onnxruntime_onnx / tensorrt_plan) batch only same-shape requests: the client pads the sequence
    to the smallest bucket that fits. Ascending; the last equals the input's max_length (checked by `register`)."""

    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    max_queue_delay_us: int = 2000
    length_buckets: tuple[int, ...] = ()


@dataclass(frozen=True)
class Gates:
    """Export gates per precision: max |logit(ORT) - logit(PyTorch fp32)| and min decision agreement (held-out)."""

    atol: Mapping[str, float] = field(default_factory=dict)
    min_agreement: Mapping[str, float] = field(default_factory=dict)


# The kinds the code serves today (every command). Other kinds are declared in specs but not served yet.
SERVED_KINDS: dict[str, tuple[str, ...]] = {
    "input": ("dialogue_ctx", "single_text", "chat_template"),
    "graph": ("classifier_logits", "causal_lm_with_past", "token_heads"),
    "decoding": ("none", "greedy", "streaming"),
    "output": ("classifier", "qwen3guard_gen_text", "qwen3guard_verdict", "flexguard_text", "stream_heads"),
}

# Read-only shorthands of the flat classifier spec: name -> (part, field). Also accepted as constructor overrides.
SHORTHANDS: dict[str, tuple[str, str]] = {
    "preprocessor": ("input", "kind"),
    "preprocessor_options": ("input", "options"),
    "max_length": ("input", "max_length"),
    "padding_side": ("input", "padding_side"),
    "truncation_side": ("input", "truncation_side"),
    "pad_token_id": ("input", "pad_token_id"),
    "architecture": ("graph", "architecture"),
    "model_type": ("graph", "model_type"),
    "task": ("graph", "task"),
    "input_names": ("graph", "input_names"),
    "output_names": ("graph", "output_names"),
    "onnx_opset": ("graph", "onnx_opset"),
    "labels": ("output", "labels"),
    "decision": ("output", "decision"),
    "positive_label": ("output", "positive_label"),
    "threshold": ("output", "threshold"),
    "max_batch_size": ("serving", "max_batch_size"),
    "preferred_batch_sizes": ("serving", "preferred_batch_sizes"),
    "max_queue_delay_us": ("serving", "max_queue_delay_us"),
    "length_buckets": ("serving", "length_buckets"),
    "atol": ("gates", "atol"),
    "min_agreement": ("gates", "min_agreement"),
}


# -- the spec ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, init=False)
class ModelSpec:
    """Everything guardrt knows about one guard model, independent of its weights (see the module docstring)."""

    name: str
    seed_card: str
    input: InputFormat
    graph: GraphContract
    decoding: Decoding
    output: OutputParser
    serving: ServingPolicy
    gates: Gates

    def __init__(self, name: str, seed_card: str, input: InputFormat, graph: GraphContract,  # noqa: A002
                 decoding: Decoding = Decoding(), output: OutputParser = OutputParser(),
                 serving: ServingPolicy = ServingPolicy(), gates: Gates = Gates(), **shorthands: Any):
        """`shorthands`: flat field names (SHORTHANDS) that replace that field of its part, so that
        `dataclasses.replace(spec, atol=..., length_buckets=...)` works as it did on the flat spec."""
        parts = {"input": input, "graph": graph, "decoding": decoding, "output": output, "serving": serving,
                 "gates": gates}
        changes: dict[str, dict[str, Any]] = {}
        for flat, value in shorthands.items():
            if flat not in SHORTHANDS:
                raise TypeError(f"ModelSpec got an unexpected keyword argument {flat!r}")
            part, attr = SHORTHANDS[flat]
            changes.setdefault(part, {})[attr] = value
        for part, attrs in changes.items():
            parts[part] = dataclasses.replace(parts[part], **attrs)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "seed_card", seed_card)
        for part, value in parts.items():
            object.__setattr__(self, part, value)

    @property
    def id2label(self) -> dict[int, str]:
        return self.output.id2label

    @property
    def unserved_parts(self) -> tuple[str, ...]:
        """'part kind' for each part whose kind is declared but not served yet; () when the spec is fully served."""
        return tuple(f"{part} {getattr(self, part).kind}" for part, kinds in SERVED_KINDS.items()
                     if getattr(self, part).kind not in kinds)

    @property
    def is_served(self) -> bool:
        return not self.unserved_parts

    def bucket_for(self, length: int) -> int:
        """Smallest length bucket >= length; ValueError if the sequence exceeds the spec maximum."""
        if length > self.input.max_length:
            raise ValueError(f"sequence of {length} tokens exceeds {self.name} max_length {self.input.max_length}")
        for bucket in self.serving.length_buckets:
            if length <= bucket:
                return bucket
        return self.input.max_length


def _shorthand(part: str, attr: str) -> property:
    return property(lambda self: getattr(getattr(self, part), attr), doc=f"Read-only shorthand for spec.{part}.{attr}.")


for _flat, (_part, _attr) in SHORTHANDS.items():
    setattr(ModelSpec, _flat, _shorthand(_part, _attr))
del _flat, _part, _attr


# -- the registry -----------------------------------------------------------------------------------------------
SPECS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in SPECS:
        raise ValueError(f"spec {spec.name!r} registered twice")
    if spec.length_buckets and spec.length_buckets[-1] != spec.max_length:
        raise ValueError(f"spec {spec.name!r}: last length bucket must equal max_length")
    SPECS[spec.name] = spec
    return spec


def spec_names(input_only: bool = False, graph: str | None = None) -> list[str]:
    """The fully served specs; with `input_only`, every spec whose input can be built (declared parts or not);
    `graph` keeps the specs of that graph kind only ("classifier_logits": the sequence classifiers)."""
    return sorted(name for name, spec in SPECS.items()
                  if (spec.is_served or (input_only and spec.input.kind in SERVED_KINDS["input"]))
                  and (graph is None or spec.graph.kind == graph))


def get_spec(name: str, input_only: bool = False) -> ModelSpec:
    """The registered spec called `name`; InputError (a ValueError) naming the known specs otherwise.

    A spec with parts declared but not served yet is refused (one line saying which) unless `input_only`: the
    commands that only build inputs (`guardrt preprocess`) pass it."""
    try:
        spec = SPECS[name]
    except KeyError:
        raise InputError(f"unknown spec {name!r}; known specs: {', '.join(spec_names(input_only))}") from None
    if not input_only and not spec.is_served:
        raise InputError(f"spec {name!r} is registered for its input only ({', '.join(spec.unserved_parts)}: "
                         "declared, not served yet); `guardrt preprocess` works for it")
    return spec


# intent_safety_clf_4b: Qwen3-4B sequence classifier over the last 8 dialogue turns (card: intent_safety_clf_4b).
register(
    ModelSpec(
        name="intent-safety",
        seed_card="intent_safety_clf_4b.model-card.txt",
        input=InputFormat(
            kind="dialogue_ctx",
            request_field="turns",
            max_length=4096,
            padding_side="left",
            truncation_side="left",
            pad_token_id=151643,  # <|endoftext|>, the card sets pad = eos when missing; Qwen3 ships this pad token
            options={
                "max_turns": 8,
                "drop_trailing_assistant": True,
                "ctx_reserve_tokens": 8,  # the card's `MAX_LENGTH - fixed_token_count - 8`
                "role_map": {"user": "user", "you": "user", "assistant": "assistant", "bot": "assistant",
                             "system": "system"},
                "unknown_role": "unknown",
                "prefix_template": "任务描述:\n{task_description}\n\nctx:\n",
            },
        ),
        graph=GraphContract(
            kind="classifier_logits",
            architecture="Qwen3ForSequenceClassification",
            model_type="qwen3",
            task="text-classification",
            onnx_opset=18,
        ),
        decoding=Decoding(kind="none"),
        output=OutputParser(kind="classifier", labels=("non_unsafe", "unsafe"), decision="threshold",
                            positive_label=1, threshold=0.5),
        serving=ServingPolicy(
            max_batch_size=16,
            preferred_batch_sizes=(4, 8, 16),
            max_queue_delay_us=2000,
            length_buckets=(128, 256, 512, 1024, 2048, 4096),
        ),
        # Gates measured with the exporter's validation (64 held-out dialogues, left/right-padded batches, one
        # 4,088-token input), max |Δlogit| vs PyTorch fp32, realistic 4x1024 / tiny demo, default (fused) graph,
        # 2026-11-26 (benchmarks/long_context.py, benchmarks/int8_portability.py): fp16 0.0082 / 0.013; int8 QDQ as a
        # graph 0.13 / 0.034 (plain graph 0.096 / 0.034); int8-dynamic with 7-bit weights 0.107 / 0.026 (plain 0.089 /
        # 0.026). On ORT's AVX2 path (qemu, tiny): 7-bit 0.026, unchanged; full-range s8 weights 0.094 there vs 0.021
        # with VNNI. The int8-dynamic gate has ~1.4x headroom over the realistic fused graph (decisions 64/64); the
        # gates still catch a mis-quantized graph (int8 on the rotary-angle MatMul cost 4.4 logits, on the attention
        # products 0.72, tiny demo).
        gates=Gates(
            atol={"fp32": 1e-4, "fp16": 1e-1, "int8": 2.5e-1, "int8-dynamic": 1.5e-1},
            min_agreement={"fp32": 1.0, "fp16": 0.99, "int8": 0.95, "int8-dynamic": 0.95},
        ),
    )
)

# distilroberta-base-rejection-v1: RoBERTa classifier of one LLM output (0 NORMAL / 1 REJECTION).
register(
    ModelSpec(
        name="rejection",
        seed_card="distilroberta-base-rejection-v1.model-card.txt",
        input=InputFormat(
            kind="single_text",
            request_field="text",
            max_length=512,
            padding_side="right",
            truncation_side="right",
            pad_token_id=1,  # RoBERTa <pad>
        ),
        graph=GraphContract(
            kind="classifier_logits",
            architecture="RobertaForSequenceClassification",
            model_type="roberta",
            task="text-classification",
            onnx_opset=18,
        ),
        decoding=Decoding(kind="none"),
        # The card's text-classification pipeline reports the top label.
        output=OutputParser(kind="classifier", labels=("NORMAL", "REJECTION"), decision="argmax", positive_label=1,
                            threshold=None),
        serving=ServingPolicy(
            max_batch_size=64,
            preferred_batch_sizes=(8, 16, 32, 64),
            max_queue_delay_us=1000,
            length_buckets=(32, 64, 128, 256, 512),
        ),
        # Measured (64 held-out texts, padded batches both sides, one 512-token input), max |Δlogit| vs PyTorch,
        # realistic 6x768 / tiny: fp16 0.00027 / 0.00005; int8 QDQ 0.094 / 0.014 (2026-11-26,
        # benchmarks/int8_portability.py, as a graph and on ORT CPU); int8-dynamic with 7-bit weights 0.025 / 0.0074;
        # 64/64 decisions agreed. On ORT's AVX2 path (qemu, tiny): 7-bit 0.0074, unchanged; full-range s8 weights
        # saturate there (0.293 > the 0.1 gate; 0.005 with VNNI), and the QDQ graph in a plain ORT session 0.283 >
        # 0.25, 0.014 in guardrt's session (x64quantprecision where U8S8 saturates). Gates: ~2.5-4x headroom.
        gates=Gates(
            atol={"fp32": 1e-4, "fp16": 2e-3, "int8": 2.5e-1, "int8-dynamic": 1e-1},
            min_agreement={"fp32": 1.0, "fp16": 0.99, "int8": 0.95, "int8-dynamic": 0.95},
        ),
    )
)

# Qwen3ForCausalLM with its KV cache (optimum's text-generation-with-past export): Qwen3Guard-Gen and FlexGuard.
QWEN3_CAUSAL_LM = GraphContract(
    kind="causal_lm_with_past",
    architecture="Qwen3ForCausalLM",
    model_type="qwen3",
    task="text-generation-with-past",
    input_names=("input_ids", "attention_mask", "position_ids"),
    output_names=("logits",),
    onnx_opset=18,
    kv_cache=KVCacheNames(),
)

register(
    ModelSpec(
        name="qwen3guard-gen",
        seed_card="Qwen3Guard-Gen.model-card.txt",
        input=InputFormat(
            kind="chat_template",
            request_field="messages",
            max_length=32768,
            padding_side="left",  # batched generation pads on the left
            truncation_side="none",
            pad_token_id=151643,  # <|endoftext|>; eval_gen.py generates with pad_token_id = eos
            options={"add_generation_prompt": False, "template_kwargs": {}},
        ),
        graph=QWEN3_CAUSAL_LM,
        # The card: max_new_tokens=128, greedy (eval_gen.py: do_sample=False). Stop tokens: the checkpoint's
        # generation_config.json; without one, <|im_end|> and <|endoftext|>, what Qwen3 chat models ship.
        decoding=Decoding(kind="greedy", max_new_tokens=128, stop_token_ids=None, skip_special_tokens=True,
                          default_stop_token_ids=(151645, 151643)),
        output=OutputParser(
            kind="qwen3guard_gen_text",
            labels=("Safe", "Unsafe", "Controversial"),
            patterns={
                "safety": r"Safety: (Safe|Unsafe|Controversial)",
                "categories_prompt": r"(Violent|Non-violent Illegal Acts|Sexual Content or Sexual Acts|PII|"
                                     r"Suicide & Self-Harm|Unethical Acts|Politically Sensitive Topics|"
                                     r"Copyright Violation|Jailbreak|None)",
                "categories_response": r"(Violent|Non-violent Illegal Acts|Sexual Content or Sexual Acts|PII|"
                                       r"Suicide & Self-Harm|Unethical Acts|Politically Sensitive Topics|"
                                       r"Copyright Violation|None)",
                "refusal": r"Refusal: (Yes|No)",
            },
            # Verdict mode: greedy output starts `Safety` `:` (73037, 25), then one token decides the label: 'ĠSafe'
            # and 'ĠUnsafe' are single tokens, ' Controversial' is 'ĠCont' 'rovers' 'ial' (Qwen3 tokenizer).
            options={
                "verdict_prefix_ids": (73037, 25),
                "label_token_ids": {"Safe": 22291, "Unsafe": 73067, "Controversial": 2093},
                "controversial_tail_ids": (12563, 530),
            },
        ),
        serving=ServingPolicy(),
        gates=Gates(),
    )
)

# FlexGuard-Qwen3-8B: thinks, then writes CATEGORY and RISK_SCORE 0-100; strictness = a threshold on the score.
register(
    ModelSpec(
        name="flexguard",
        seed_card="FlexGuard-Qwen3-8B.model-card.txt",
        input=InputFormat(
            kind="chat_template",
            request_field="user",  # {"user": ...} (prompt moderation) or {"user": ..., "assistant": ...} (response)
            max_length=32768,
            padding_side="left",
            truncation_side="none",
            pad_token_id=151643,  # the card sets pad_token = eos_token (<|endoftext|>)
            options={"add_generation_prompt": True, "template_kwargs": {"enable_thinking": True},
                     "message_builder": "flexguard"},
        ),
        graph=QWEN3_CAUSAL_LM,
        # The card's SamplingParams: temperature 0 (greedy), max_tokens 2048, skip_special_tokens=False.
        decoding=Decoding(kind="greedy", max_new_tokens=2048, stop_token_ids=None, skip_special_tokens=False,
                          default_stop_token_ids=(151645, 151643)),
        output=OutputParser(
            kind="flexguard_text",
            labels=("SAFE", "VIO", "ILG", "SEX", "INF", "DIS", "MIS", "JAIL"),
            threshold=40,  # the card's default (moderate); strict 20, loose 60 (runtime/flexguard_output.py)
        ),
        serving=ServingPolicy(),
        gates=Gates(),
    )
)

# Qwen3Guard-Stream: query heads judge the prompt at the last user <|im_end|>, response heads every later token.
register(
    ModelSpec(
        name="qwen3guard-stream",
        seed_card="Qwen3Guard.review-post.txt",
        input=InputFormat(
            kind="chat_template",
            request_field="messages",
            max_length=8192,  # max_position_embeddings of the published Stream-0.6B config; a stream past it is refused
            padding_side="left",
            truncation_side="none",
            pad_token_id=151643,
            options={"add_generation_prompt": False, "template_kwargs": {"enable_thinking": False}},
        ),
        graph=GraphContract(
            kind="token_heads",
            architecture="Qwen3ForGuardModel",
            model_type="qwen3",
            task="token-heads-with-past",
            input_names=("input_ids", "attention_mask", "position_ids"),
            output_names=("risk_level_logits", "category_logits", "query_risk_level_logits", "query_category_logits"),
            onnx_opset=18,
            kv_cache=KVCacheNames(),
        ),
        decoding=Decoding(kind="streaming"),
        output=OutputParser(kind="stream_heads", labels=("Safe", "Unsafe", "Controversial"),
                            options={"controversial": "strict"}),
        # The sequence batcher's settings (triton_repo/qwen3guard-stream): streams batched per step.
        serving=ServingPolicy(max_batch_size=32, preferred_batch_sizes=(8, 16, 32), max_queue_delay_us=1000),
        # export/stream_export.py GATES (fp32 must give the reference's labels at every position).
        gates=Gates(atol={"fp32": 1e-4, "fp16": 5e-2, "int8-dynamic": 2.5e-1},
                    min_agreement={"fp32": 1.0, "fp16": 0.98, "int8-dynamic": 0.95}),
    )
)

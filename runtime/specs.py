"""Declarative model specs: one entry per served classifier.

A spec says everything the rest of guardrt needs to know about a model without looking at its weights: how the
model text is built (preprocessor kind and its settings), the tensor contract of the exported graph, padding and
truncation, labels and threshold, export tolerances per precision, and the Triton batching settings. Adding a model
is one new `register(ModelSpec(...))` call plus, if its input format is new, a preprocessor kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from guardrt.runtime.errors import InputError

__all__ = ["ModelSpec", "SPECS", "get_spec", "register", "spec_names"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything guardrt knows about one classifier, independent of its weights."""

    name: str
    seed_card: str
    # Hugging Face side: what a checkpoint for this spec must be.
    architecture: str  # e.g. "Qwen3ForSequenceClassification"
    model_type: str  # config.model_type, e.g. "qwen3"
    task: str  # optimum export task
    # Input construction.
    preprocessor: str  # "dialogue_ctx" | "single_text" (see runtime.preprocess.build_preprocessor)
    max_length: int
    padding_side: str  # "left" | "right"
    truncation_side: str  # "left" | "right"
    pad_token_id: int
    preprocessor_options: Mapping[str, object] = field(default_factory=dict)
    # Output.
    labels: tuple[str, ...] = ()  # id2label as the card's output `label_text`
    decision: str = "argmax"  # "threshold" (prob of positive >= threshold) | "argmax"
    positive_label: int = 1
    threshold: float | None = None
    # Exported graph contract.
    input_names: tuple[str, ...] = ("input_ids", "attention_mask")
    output_names: tuple[str, ...] = ("logits",)
    onnx_opset: int = 18
    # Max |logit(ORT) - logit(PyTorch fp32)| allowed per precision, and min decision agreement on held-out inputs.
    atol: Mapping[str, float] = field(default_factory=dict)
    min_agreement: Mapping[str, float] = field(default_factory=dict)
    # Serving.
    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    max_queue_delay_us: int = 2000
    # Native backends (onnxruntime_onnx / tensorrt_plan) batch only same-shape requests: the client pads the
    # sequence to the smallest bucket that fits. Ascending, the last equals max_length.
    length_buckets: tuple[int, ...] = ()

    def bucket_for(self, length: int) -> int:
        """Smallest length bucket >= length; ValueError if the sequence exceeds the spec maximum."""
        if length > self.max_length:
            raise ValueError(f"sequence of {length} tokens exceeds {self.name} max_length {self.max_length}")
        for bucket in self.length_buckets:
            if length <= bucket:
                return bucket
        return self.max_length

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))


SPECS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in SPECS:
        raise ValueError(f"spec {spec.name!r} registered twice")
    if spec.length_buckets and spec.length_buckets[-1] != spec.max_length:
        raise ValueError(f"spec {spec.name!r}: last length bucket must equal max_length")
    SPECS[spec.name] = spec
    return spec


def spec_names() -> list[str]:
    return sorted(SPECS)


def get_spec(name: str) -> ModelSpec:
    """The registered spec called `name`; InputError (a ValueError) naming the known specs otherwise."""
    try:
        return SPECS[name]
    except KeyError:
        raise InputError(f"unknown spec {name!r}; known specs: {', '.join(spec_names())}") from None


# intent_safety_clf_4b: Qwen3-4B sequence classifier over the last 8 dialogue turns (card: intent_safety_clf_4b).
register(
    ModelSpec(
        name="intent-safety",
        seed_card="intent_safety_clf_4b.model-card.txt",
        architecture="Qwen3ForSequenceClassification",
        model_type="qwen3",
        task="text-classification",
        preprocessor="dialogue_ctx",
        max_length=4096,
        padding_side="left",
        truncation_side="left",
        pad_token_id=151643,  # <|endoftext|>, the card sets pad = eos when missing; Qwen3 ships this pad token
        preprocessor_options={
            "max_turns": 8,
            "drop_trailing_assistant": True,
            "ctx_reserve_tokens": 8,  # the card's `MAX_LENGTH - fixed_token_count - 8`
            "role_map": {"user": "user", "you": "user", "assistant": "assistant", "bot": "assistant", "system": "system"},
            "unknown_role": "unknown",
            "prefix_template": "任务描述:\n{task_description}\n\nctx:\n",
        },
        labels=("non_unsafe", "unsafe"),
        decision="threshold",
        positive_label=1,
        threshold=0.5,
        onnx_opset=18,
        # Gates measured with the exporter's validation (64 held-out dialogues, left/right-padded batches, one
        # 4,088-token input), max |Δlogit| vs PyTorch fp32: fp16 0.0024 (realistic 4x1024 demo) and 0.059 (tiny
        # demo, on the 4,088-token input); int8 QDQ as a graph 0.033 / 0.059 (ORT CPU kernels 0.041 / 0.059);
        # int8-dynamic with 7-bit weights 0.014 / 0.013; decisions agreed on 64/64 for every precision. The int8
        # numbers hold on ORT's AVX2 path too (qemu, benchmarks/int8_portability.py, first 16 / 64 held-out rows:
        # 7-bit 0.012 / 0.011 there vs 0.012 / 0.011 with AVX-512 VNNI; full-range s8 weights saturate there, tiny
        # 0.079 vs 0.010). Gates leave ~2-10x headroom over the worst measurement and still catch a mis-quantized
        # graph (int8 on the rotary-angle MatMul cost 4.4 logits, on the attention products 0.72, tiny demo).
        atol={"fp32": 1e-4, "fp16": 1e-1, "int8": 2.5e-1, "int8-dynamic": 1.5e-1},
        min_agreement={"fp32": 1.0, "fp16": 0.99, "int8": 0.95, "int8-dynamic": 0.95},
        max_batch_size=16,
        preferred_batch_sizes=(4, 8, 16),
        max_queue_delay_us=2000,
        length_buckets=(128, 256, 512, 1024, 2048, 4096),
    )
)

# distilroberta-base-rejection-v1: RoBERTa classifier of one LLM output (0 NORMAL / 1 REJECTION).
register(
    ModelSpec(
        name="rejection",
        seed_card="distilroberta-base-rejection-v1.model-card.txt",
        architecture="RobertaForSequenceClassification",
        model_type="roberta",
        task="text-classification",
        preprocessor="single_text",
        max_length=512,
        padding_side="right",
        truncation_side="right",
        pad_token_id=1,  # RoBERTa <pad>
        labels=("NORMAL", "REJECTION"),
        decision="argmax",  # the card's text-classification pipeline reports the top label
        positive_label=1,
        threshold=None,
        onnx_opset=18,
        # Measured (64 held-out texts, padded batches both sides, one 512-token input), max |Δlogit| vs PyTorch:
        # fp16 0.00027 (realistic 6x768) / 0.00005 (tiny); int8 QDQ 0.082 (worst on the left-padded batch) / 0.010,
        # as a graph and on ORT CPU; int8-dynamic with 7-bit weights 0.043 / 0.0035; 64/64 decisions agreed
        # everywhere. The int8 numbers hold on ORT's AVX2 path (qemu, benchmarks/int8_portability.py: 7-bit 0.011 /
        # 0.0035, QDQ in guardrt's session 0.023 / 0.010 on the same held-out rows as VNNI's 0.011 / 0.0035 and
        # 0.023 / 0.010), where full-range s8 weights saturate (tiny: 0.654, caught by the 0.1 gate). Gates: ~2-7x
        # headroom.
        atol={"fp32": 1e-4, "fp16": 2e-3, "int8": 2.5e-1, "int8-dynamic": 1e-1},
        min_agreement={"fp32": 1.0, "fp16": 0.99, "int8": 0.95, "int8-dynamic": 0.95},
        max_batch_size=64,
        preferred_batch_sizes=(8, 16, 32, 64),
        max_queue_delay_us=1000,
        length_buckets=(32, 64, 128, 256, 512),
    )
)

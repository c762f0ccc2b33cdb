"""Validation of the Qwen3Guard-Gen graphs against PyTorch fp32 (build time: torch + transformers).

* `reference_generations(model_dir, n)`: held-out synthetic conversations (seed `SPLIT_SEEDS["heldout"]`), rendered
  with transformers' chat template as the card does, then HF `generate` one prompt at a time (the card's code: greedy,
  max_new_tokens 128, the checkpoint's stop tokens) with the logits of every step, and the verdict reference (a
  forward over prompt + `Safety:` giving the label-token probabilities and the greedy token at the last 3 positions).
* `validate_generate(onnx_path, ...)`: per-step logits teacher-forced along PyTorch's tokens (max |Δlogit| over every
  step and vocabulary entry), greedy generation with `GreedyGenerator` one prompt at a time (token-identical fraction,
  parsed `safety` agreement) and in left-padded batches (batched == one at a time).
* `validate_verdict(onnx_path, ...)`: the verdict graph in left-padded batches: max |Δprob| of the label
  probabilities and the outside mass, greedy ids at the last 3 positions, label agreement.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["Reference", "output_label", "reference_generations", "validate_generate", "validate_verdict", "calibration_feeds"]

MAX_REFERENCE_STEPS = 48  # steps whose logits are kept per prompt (the demo models stop after ~10-16 tokens)


@dataclass
class Reference:
    prompts: list[list[int]]
    kinds: list[str]
    tokens: list[list[int]]  # HF greedy new tokens (stop token included)
    step_logits: list[np.ndarray]  # [steps, vocab] float32 per prompt (first MAX_REFERENCE_STEPS steps)
    texts: list[str]
    verdict: np.ndarray  # [n, 7]: label probs (3), other mass, greedy ids at the last 3 positions
    tokenizer_dir: Path


def _verdict_prefix():
    from guardrt.runtime.guard_output import label_token_ids, verdict_prefix_ids

    return verdict_prefix_ids(), label_token_ids()


def torch_verdict(model, prompts: list[list[int]]) -> np.ndarray:
    """PyTorch verdict rows for `prompts` (one forward each, unpadded): the reference of the verdict graph."""
    import torch

    prefix, labels = _verdict_prefix()
    rows = []
    with torch.inference_mode():
        for p in prompts:
            logits = model(input_ids=torch.tensor([list(p) + prefix])).logits[0, -3:].float()
            probs = torch.softmax(logits[-1], dim=-1)
            lp = probs[labels]
            rows.append(np.concatenate([lp.numpy(), [1.0 - float(lp.sum())], logits.argmax(-1).numpy()]))
    return np.asarray(rows, dtype=np.float32)


def _heldout_prompts(spec: str, tokenizer, n: int, seed: int) -> tuple[list[list[int]], list[str]]:
    """(prompt ids as the card builds them, output kind per prompt) of `n` held-out synthetic requests of `spec`."""
    if spec == "flexguard":
        from guardrt.export.demo_flexguard_models import render_flexguard_ids
        from guardrt.export.flexguard_synthetic import flexguard_requests

        return render_flexguard_ids(tokenizer, flexguard_requests(n, seed)), ["flexguard"] * n
    from guardrt.export.demo_guard_models import render_prompt_ids
    from guardrt.export.guard_synthetic import guard_messages
    from guardrt.runtime.guard_output import moderation_kind

    messages = guard_messages(n, seed=seed)
    return render_prompt_ids(tokenizer, messages), [moderation_kind(m) for m in messages]


def output_label(text: str, kind: str):
    """What a generated text decides: Qwen3Guard-Gen's `safety` (kind "prompt" / "response"), FlexGuard's
    (category, risk_score) (kind "flexguard")."""
    if kind == "flexguard":
        from guardrt.runtime.flexguard_output import parse_flexguard_output

        return tuple(parse_flexguard_output(text))
    from guardrt.runtime.guard_output import parse_guard_output

    return parse_guard_output(text, kind)["safety"]


def reference_generations(model_dir: str | Path, n_heldout: int = 32, seed: int | None = None,
                          log: Callable[[str], None] | None = None, spec: str = "qwen3guard-gen") -> Reference:
    """HF greedy generation (the spec's max_new_tokens and text decoding) on `n_heldout` held-out prompts of `spec`
    (qwen3guard-gen or flexguard), with the logits of the first steps, and (qwen3guard-gen) the verdict rows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guardrt.export.progress import Progress
    from guardrt.export.synthetic import SPLIT_SEEDS
    from guardrt.runtime.specs import get_spec

    decoding = get_spec(spec, input_only=True).decoding
    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    prompts, kinds = _heldout_prompts(spec, tokenizer, n_heldout, SPLIT_SEEDS["heldout"] if seed is None else seed)
    tokens, logits, texts = [], [], []
    report = Progress.count(log, "HF generate", len(prompts))
    with torch.inference_mode():
        for i, p in enumerate(prompts, 1):
            out = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=decoding.max_new_tokens, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
            new = out.sequences[0, len(p):].tolist()
            tokens.append(new)
            logits.append(torch.cat(out.logits[:MAX_REFERENCE_STEPS]).float().numpy())
            texts.append(tokenizer.decode(new, skip_special_tokens=decoding.skip_special_tokens))
            report(i)
    verdict = torch_verdict(model, prompts) if spec == "qwen3guard-gen" else np.zeros((len(prompts), 7), np.float32)
    return Reference(prompts, kinds, tokens, logits, texts, verdict, model_dir)


def _teacher_forced_max_diff(runner, generator, prompt: list[int], tokens: list[int], ref: np.ndarray) -> float:
    """max |Δlogit| over the steps of `ref`, feeding PyTorch's own tokens (so steps stay aligned)."""
    ids = np.asarray([prompt], dtype=np.int64)
    mask = np.ones_like(ids)
    pos = np.arange(len(prompt), dtype=np.int64)[None]
    past = {name: np.zeros((1, generator.kv_heads, 0, generator.head_dim), dtype=generator.past_dtype)
            for name in generator.past_names}
    worst = 0.0
    for step in range(len(ref)):
        res = runner.session.run(["logits"] + generator.present_names,
                                 {"input_ids": ids, "attention_mask": mask, "position_ids": pos, **past})
        out = res[0][0, -1]
        if not np.all(np.isfinite(out)):
            return float("inf")
        worst = max(worst, float(np.max(np.abs(out - ref[step]))))
        past = dict(zip(generator.past_names, res[1:]))
        ids = np.asarray([[tokens[step]]], dtype=np.int64)
        mask = np.ones((1, mask.shape[1] + 1), dtype=np.int64)
        pos = pos[:, -1:] + 1
    return worst


def validate_generate(onnx_path: str | Path, model_dir: str | Path, reference: Reference, gate: dict[str, float],
                      intra_op_threads: int | None = None, batch_size: int = 8) -> dict[str, Any]:
    from tokenizers import Tokenizer

    from guardrt.runtime.generate import GreedyGenerator, generation_settings
    from guardrt.runtime.specs import get_spec

    t0 = time.perf_counter()
    spec = get_spec("flexguard" if reference.kinds[0] == "flexguard" else "qwen3guard-gen", input_only=True)
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    gen = GreedyGenerator(onnx_path, generation_settings(model_dir, spec=spec), intra_op_threads=intra_op_threads)
    worst = max(_teacher_forced_max_diff(gen.runner, gen, p, t, ref)
                for p, t, ref in zip(reference.prompts, reference.tokens, reference.step_logits))
    single = [gen.generate([p])[0] for p in reference.prompts]
    batched: list[list[int]] = []
    for start in range(0, len(reference.prompts), batch_size):
        batched.extend(gen.generate(reference.prompts[start:start + batch_size]))
    gen.close()
    n = len(reference.prompts)
    identical = sum(a == b for a, b in zip(single, reference.tokens)) / n
    batched_identical = sum(a == b for a, b in zip(batched, single)) / n
    skip = spec.decoding.skip_special_tokens
    safety = [output_label(tok.decode(ids, skip_special_tokens=skip), k) for ids, k in zip(single, reference.kinds)]
    ref_safety = [output_label(t, k) for t, k in zip(reference.texts, reference.kinds)]
    agreement = sum(a == b for a, b in zip(safety, ref_safety)) / n
    checks = {"max_abs_diff": worst <= gate["atol"], "identical": identical >= gate["min_identical"],
              "safety_agreement": agreement >= gate["min_safety_agreement"],
              "batched_identical": batched_identical >= gate["min_batched_identical"]}
    return {
        "graph": "causal-lm-with-past", "max_abs_diff": worst, "atol": gate["atol"],
        "reference_max_abs_logit": float(max(np.max(np.abs(r)) for r in reference.step_logits)),
        "heldout_size": n, "identical_fraction": identical, "min_identical": gate["min_identical"],
        "batched_identical_fraction": batched_identical, "safety_agreement": agreement,
        "min_safety_agreement": gate["min_safety_agreement"],
        "reference_steps": int(sum(len(r) for r in reference.step_logits)),
        "passed": all(checks.values()), "failed_checks": [k for k, ok in checks.items() if not ok],
        "summary": (f"max|Δlogit| {worst:.3g} (gate {gate['atol']:g}), token-identical {identical:.3f} of {n} "
                    f"(gate {gate['min_identical']:g}), safety agreement {agreement:.3f}, batched==single "
                    f"{batched_identical:.3f}"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def validate_verdict(onnx_path: str | Path, reference: Reference, gate: dict[str, float],
                     intra_op_threads: int | None = None, batch_size: int = 8) -> dict[str, Any]:
    from guardrt.runtime.onnxrt import OnnxRunner
    from guardrt.runtime.preprocess import pad_batch

    t0 = time.perf_counter()
    prefix, _ = _verdict_prefix()
    rows = [p + prefix for p in reference.prompts]
    outs = []
    with OnnxRunner(onnx_path, intra_op_threads=intra_op_threads) as runner:
        for start in range(0, len(rows), batch_size):
            ids, mask = pad_batch(rows[start:start + batch_size], 151643, "left")
            outs.append(runner.infer({"input_ids": ids, "attention_mask": mask})["verdict"])
    got = np.concatenate(outs)
    ref = reference.verdict
    worst = float(np.max(np.abs(got[:, :4] - ref[:, :4]))) if np.all(np.isfinite(got)) else float("inf")
    agreement = float(np.mean(got[:, :3].argmax(1) == ref[:, :3].argmax(1)))
    ids_equal = float(np.mean(np.all(got[:, 4:] == ref[:, 4:], axis=1)))
    checks = {"max_abs_diff": worst <= gate["atol"], "agreement": agreement >= gate["min_agreement"]}
    n = len(rows)
    return {
        "graph": "verdict", "max_abs_diff": worst, "atol": gate["atol"], "heldout_size": n,
        "label_agreement": agreement, "min_agreement": gate["min_agreement"], "greedy_ids_equal_fraction": ids_equal,
        "passed": all(checks.values()), "failed_checks": [k for k, ok in checks.items() if not ok],
        "summary": (f"max|Δprob| {worst:.3g} (gate {gate['atol']:g}), label agreement {agreement:.3f} of {n} "
                    f"(gate {gate['min_agreement']:g}), greedy ids equal {ids_equal:.3f}"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def calibration_feeds(model_dir: str | Path, n: int = 13) -> list[dict[str, np.ndarray]]:
    """int8 QDQ calibration batches for the verdict graph: calibration-split prompts + `Safety:`, left-padded as the
    runtime sends them: one row, then batches of 4 and 8 (13 prompts).

    Three feeds, on purpose: with `CalibMaxIntermediateOutputs` (set by `guardrt.export.quantize`), ONNX Runtime
    1.32's MinMax calibrater clears the collected outputs every that-many feeds without merging their ranges
    (calibrate.py `collect_data`), so only the feeds after the last full group count (and a multiple of it fails with
    "No data is collected"). Fewer feeds than the group size keeps every prompt in the calibration."""
    from transformers import AutoTokenizer

    from guardrt.export.demo_guard_models import render_prompt_ids
    from guardrt.export.guard_synthetic import guard_messages
    from guardrt.export.synthetic import SPLIT_SEEDS
    from guardrt.runtime.preprocess import pad_batch

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prefix, _ = _verdict_prefix()
    rows = [p + prefix for p in render_prompt_ids(tokenizer, guard_messages(n, seed=SPLIT_SEEDS["calibration"]))]
    feeds = []
    for chunk in (rows[:1], rows[1:5], rows[5:13]):
        ids, mask = pad_batch(chunk, 151643, "left")
        feeds.append({"input_ids": ids, "attention_mask": mask})
    return feeds

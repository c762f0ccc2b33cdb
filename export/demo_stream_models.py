"""Demo Qwen3Guard-Stream checkpoints: `Qwen3ForGuardModel` at the real architecture, heads trained briefly on
synthetic token-level labels, built locally and deterministically.

`build_stream_demo_model(size, out_dir, seed=0)` writes a Hugging Face checkpoint directory: config.json
(`Qwen3ForGuardModel`, model_type qwen3, the guard keys and label maps of the published config), model.safetensors
(weight names as the published checkpoints: `model.*` backbone, `risk_level_*` / `category_head` / `query_*`
heads), the real Qwen3 tokenizer with its own chat template (the Stream model uses the plain Qwen3 template,
rendered with enable_thinking=False), and demo.json (training settings, held-out token accuracy).

Sizes: "tiny" (hidden 32, 2 layers, guard_inner_size 16; tests) and "realistic" (the Qwen3-Guard-Stream-0.6B layer
shape: hidden 1024, 16 / 8 heads, head_dim 128, intermediate 3072, guard_inner_size 512, vocab 151936, tied
embeddings, max_position_embeddings 8192, with 4 of its 28 layers; benchmarks).

Training, as the tech report describes it (§4.3, and the review post: only the heads are trained): the backbone is
seeded-random and frozen; its final hidden states are computed once per example, then the two head paths train on
them with cross-entropy: the query heads at the last user `<|im_end|>` only, the response heads at every response
token, the category losses only where the gold risk level is Unsafe or Controversial.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["STREAM_MODEL_CODE", "stream_demo_config", "build_stream_demo_model", "cached_stream_demo_model",
           "cached_stream_export",
           "encode_example", "stream_cache_settings"]

STREAM_MODEL_CODE = ("export/demo_stream_models.py", "export/qwen3_guard_model.py", "export/stream_synthetic.py",
                     "export/guard_synthetic.py", "export/tokenizers.py", "runtime/stream_protocol.py")

_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, guard_inner_size=16),
    # Qwen3Guard-Stream-0.6B layer shape (its config.json: guard_inner_size 512), 4 of its 28 layers.
    "realistic": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=4, num_attention_heads=16,
                      num_key_value_heads=8, head_dim=128, guard_inner_size=512),
}
_TRAIN: dict[str, dict[str, Any]] = {
    "tiny": dict(examples=256, steps=300, lr=1e-2, heldout=64),
    "realistic": dict(examples=128, steps=200, lr=2e-3, heldout=32),
}


def stream_cache_settings(size: str) -> tuple[Any, ...]:
    return _CONFIGS.get(size), _TRAIN.get(size)


def stream_demo_config(size: str):
    """The transformers config of a Qwen3Guard-Stream demo model."""
    from transformers import Qwen3Config

    from guardrt.export.qwen3_guard_model import guard_config_fields

    if size not in _CONFIGS:
        raise ValueError(f"no qwen3guard-stream demo model of size {size!r} (sizes: {', '.join(_CONFIGS)})")
    cfg = dict(_CONFIGS[size])
    inner = cfg.pop("guard_inner_size")
    return Qwen3Config(vocab_size=151936, max_position_embeddings=8192, rope_theta=1000000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
                       architectures=["Qwen3ForGuardModel"], **cfg, **guard_config_fields(inner))


def _category_index(labels: list[str], name: str) -> int:
    """Index of a synthetic category name in a config map (the official map quotes "Violent")."""
    return [lab.strip('"') for lab in labels].index(name)


def encode_example(tokenizer, example, labels) -> dict[str, Any]:
    """ids, prompt end, query targets (risk, category or -1), response targets per response token (risk, category
    or -1), from a `StreamExample`; response tokens are labelled by the span their first character falls in."""
    from guardrt.export.stream_reference import render_stream_ids
    from guardrt.runtime.stream_protocol import prompt_end_index

    text = tokenizer.apply_chat_template(example.messages, tokenize=False, add_generation_prompt=False,
                                         enable_thinking=False)
    enc = tokenizer(text, return_offsets_mapping=True)
    ids = enc.input_ids
    if ids != render_stream_ids(tokenizer, example.messages):
        raise RuntimeError("offset tokenization differs from the card's tokenization")
    end = prompt_end_index(ids)
    content = example.messages[-1]["content"]
    base = text.rindex(content)
    risk_ix = {lab: i for i, lab in enumerate(labels.risk)}
    q_risk, q_cat = example.query
    query = (risk_ix[q_risk], -1 if q_cat is None else _category_index(list(labels.query_category), q_cat))
    response = []
    for start, _ in enc.offset_mapping[end + 1:]:
        risk, cat = 0, -1
        for s, e, r, c in example.spans:
            if base + s <= start < base + e:
                risk, cat = risk_ix[r], _category_index(list(labels.category), c)
        response.append((risk, cat))
    return {"ids": ids, "end": end, "query": query, "response": response}


def _features(model, encoded, log, what: str):
    """Final hidden states of the frozen backbone per example (one forward each)."""
    import torch

    from guardrt.export.progress import Progress

    report = Progress.count(log, f"frozen backbone ({what})", len(encoded))
    out = []
    with torch.inference_mode():
        for i, e in enumerate(encoded):
            out.append(model.model(input_ids=torch.tensor([e["ids"]])).last_hidden_state[0].clone())
            report(i + 1)
    return out


def _targets(encoded, feats):
    """Stacked (features, risk, category) for the query positions and for the response positions."""
    import torch

    q_x = torch.stack([f[e["end"]] for e, f in zip(encoded, feats)])
    q_r = torch.tensor([e["query"][0] for e in encoded])
    q_c = torch.tensor([e["query"][1] for e in encoded])
    r_x = torch.cat([f[e["end"] + 1:] for e, f in zip(encoded, feats)])
    r_r = torch.tensor([t[0] for e in encoded for t in e["response"]])
    r_c = torch.tensor([t[1] for e in encoded for t in e["response"]])
    return (q_x, q_r, q_c), (r_x, r_r, r_c)


def _head_loss(risk_logits, cat_logits, risk, cat):
    import torch.nn.functional as F

    loss = F.cross_entropy(risk_logits, risk)
    has_cat = cat >= 0  # category loss only where the gold risk is Unsafe / Controversial
    if has_cat.any():
        loss = loss + F.cross_entropy(cat_logits[has_cat], cat[has_cat])
    return loss


def _accuracy(model, query, response) -> dict[str, float]:
    import torch

    with torch.inference_mode():
        r, c, _, _ = model.heads(response[0])
        _, _, qr, qc = model.heads(query[0])
    has = response[2] >= 0
    return {"response_risk_accuracy": round(float((r.argmax(-1) == response[1]).float().mean()), 4),
            "response_category_accuracy": round(float((c.argmax(-1)[has] == response[2][has]).float().mean()), 4)
            if has.any() else None,
            "response_unsafe_recall": round(float((r.argmax(-1)[response[1] != 0] != 0).float().mean()), 4)
            if (response[1] != 0).any() else None,
            "query_risk_accuracy": round(float((qr.argmax(-1) == query[1]).float().mean()), 4),
            "response_tokens": int(response[1].numel()), "queries": int(query[1].numel())}


def _train_heads(model, size: str, tokenizer, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from guardrt.export.stream_synthetic import stream_examples
    from guardrt.export.synthetic import SPLIT_SEEDS
    from guardrt.runtime.stream_protocol import StreamLabels

    cfg = _TRAIN[size]
    labels = StreamLabels.from_config(model.config.to_dict())
    torch.manual_seed(seed)
    train = [encode_example(tokenizer, e, labels)
             for e in stream_examples(cfg["examples"], seed=SPLIT_SEEDS["train"] + 100 * seed)]
    held = [encode_example(tokenizer, e, labels) for e in stream_examples(cfg["heldout"], seed=SPLIT_SEEDS["heldout"])]
    t0 = time.perf_counter()
    query, response = _targets(train, _features(model, train, log, "train"))
    h_query, h_response = _targets(held, _features(model, held, log, "held-out"))
    feature_seconds = time.perf_counter() - t0
    for p in model.parameters():
        p.requires_grad_(False)
    heads = [m for name, m in model.named_children() if name != "model"]
    params = [p for m in heads for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    # Unsafe/Controversial response tokens are rare: weight the risk loss by inverse class frequency.
    counts = torch.bincount(response[1], minlength=3).float().clamp(min=1)
    weight = (counts.sum() / counts) / (counts.sum() / counts).mean()
    import torch.nn.functional as F

    t1 = time.perf_counter()
    for step in range(cfg["steps"]):
        r, c, _, _ = model.heads(response[0])
        _, _, qr, qc = model.heads(query[0])
        loss = F.cross_entropy(r, response[1], weight=weight)
        has = response[2] >= 0
        if has.any():
            loss = loss + F.cross_entropy(c[has], response[2][has])
        loss = loss + _head_loss(qr, qc, query[1], query[2])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log and (step + 1) % 100 == 0:
            log(f"qwen3guard-stream/{size}: step {step + 1}/{cfg['steps']} loss {float(loss):.3f}")
    for p in params:
        p.requires_grad_(False)
    return {"train": {**cfg, "feature_seconds": round(feature_seconds, 1),
                      "train_seconds": round(time.perf_counter() - t1, 1), "final_loss": round(float(loss), 4)},
            "train_metrics": _accuracy(model, query, response), "heldout_metrics": _accuracy(model, h_query, h_response)}


def build_stream_demo_model(size: str, out_dir: str | Path, seed: int = 0,
                            log: Callable[[str], None] | None = None) -> Path:
    """Build, train and save a demo Qwen3Guard-Stream checkpoint in `out_dir` (see the module docstring)."""
    import torch
    from transformers import AutoTokenizer

    from guardrt.export.qwen3_guard_model import Qwen3ForGuardModel
    from guardrt.export.tokenizers import copy_qwen3_tokenizer

    log = log or (lambda _m: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    copy_qwen3_tokenizer(out)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    torch.manual_seed(seed)
    model = Qwen3ForGuardModel(stream_demo_config(size)).eval()
    metrics = _train_heads(model, size, tokenizer, seed, log)
    model.save_pretrained(str(out))
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("_attn_implementation_autoset", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    (out / "demo.json").write_text(json.dumps({"spec": "qwen3guard-stream", "size": size, "seed": seed, **metrics},
                                              indent=2))
    log(f"qwen3guard-stream/{size}: held-out {metrics['heldout_metrics']}")
    return out


def cached_stream_demo_model(size: str = "tiny", seed: int = 0, log: Callable[[str], None] | None = None) -> Path:
    """The demo checkpoint, built once per (code, settings) in the shared cache and reused."""
    from guardrt.export.demo_models import _cached, _code_hash

    key = f"qwen3guard-stream-{size}-s{seed}-" + _code_hash(STREAM_MODEL_CODE, "model", size, seed,
                                                            *stream_cache_settings(size))
    return _cached("models", key, lambda tmp: build_stream_demo_model(size, tmp, seed=seed, log=log))


_STREAM_EXPORT_CODE = STREAM_MODEL_CODE + ("export/stream_export.py", "export/stream_reference.py", "export/fp16.py",
                                           "export/quantize.py", "export/onnx_export.py", "runtime/stream.py")


def cached_stream_export(size: str = "tiny", precisions=("fp32",), seed: int = 0,
                         log: Callable[[str], None] | None = None, **export_kwargs: Any) -> Path:
    """A validated Qwen3Guard-Stream export (`guardrt.export.stream_export`) of the demo model, built once."""
    from guardrt.export.demo_models import _cached, _code_hash
    from guardrt.export.stream_export import export_stream

    model_dir = cached_stream_demo_model(size, seed=seed, log=log)
    key = f"qwen3guard-stream-{size}-s{seed}-{'_'.join(precisions)}-" + _code_hash(
        _STREAM_EXPORT_CODE, "export", model_dir.name, tuple(precisions), export_kwargs)
    return _cached("exports", key, lambda tmp: export_stream(model_dir, tmp, tuple(precisions), log=log,
                                                             **export_kwargs))

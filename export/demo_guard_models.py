"""Demo Qwen3Guard-Gen checkpoints: `Qwen3ForCausalLM` at the real architecture, trained briefly to emit the card's
output format, built locally and deterministically.

`build_guard_demo_model(size, out_dir, seed=0)` writes a Hugging Face checkpoint directory:

* config.json (`Qwen3ForCausalLM`), model.safetensors;
* the real Qwen3 tokenizer (`guardrt.export.tokenizers`) with the published Qwen3Guard-Gen chat template
  (`export/data/qwen3guard-gen/chat_template.jinja`) as the `chat_template` of its tokenizer_config.json, as the real
  checkpoints carry it;
* generation_config.json as Qwen3 chat models ship it (bos 151643, eos [<|im_end|> 151645, <|endoftext|> 151643],
  pad 151643), greedy (`do_sample: false`, the card's eval setting);
* demo.json: training settings and held-out metrics (format / safety / exact-match accuracy of greedy generation).

Sizes: "tiny" (hidden 32, MLP 256, 2 layers, for tests) and "realistic" (the Qwen3-0.6B layer shape: hidden 1024, 16 / 8
heads, head_dim 128, intermediate 3072, vocab 151936, with 4 of its 28 layers). Both train the same parts on top of
frozen, seeded-random lower layers: the last layer's query path, attention output and MLP, the final norm and the
LM-head rows of the tokens the task emits (see "training" below: a few minutes on a shared 2-core machine).
Embeddings are not tied (as in Qwen3-8B; Qwen3-0.6B ties them): the LM head is a separate graph initializer, which
is what the exporter and the runtime must handle at scale.

Training data: `guardrt.export.guard_synthetic` (train seed 0, held-out seed 2). Prompts are rendered with
transformers' `apply_chat_template(messages, tokenize=False)` and tokenized as the card does; the target is the
card's output text followed by <|im_end|>; the loss is the cross-entropy over the vocabulary (sampled softmax,
see "training") on the target tokens only.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from guardrt.runtime.guard_output import guard_spec, moderation_kind, parse_guard_output

__all__ = [
    "GUARD_DEMO_SPECS",
    "CHAT_TEMPLATE_PATH",
    "guard_demo_config",
    "build_guard_demo_model",
    "write_guard_tokenizer",
    "render_prompt_ids",
    "hf_greedy_generate",
    "GUARD_MODEL_CODE",
]

GUARD_DEMO_SPECS = ("qwen3guard-gen", "flexguard")  # flexguard: demo_flexguard_models
CHAT_TEMPLATE_PATH = Path(__file__).resolve().parent / "data" / "qwen3guard-gen" / "chat_template.jinja"
# Files whose content is part of the demo model's cache key.
GUARD_MODEL_CODE = ("export/demo_guard_models.py", "export/guard_synthetic.py", "export/tokenizers.py",
                    "export/data/qwen3guard-gen/chat_template.jinja")

_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8),
    # Qwen3-0.6B layer shape, 4 of its 28 layers.
    "realistic": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=4, num_attention_heads=16,
                      num_key_value_heads=8, head_dim=128),
}
# Training settings (what is trained: see "training" below).
_TRAIN: dict[str, dict[str, Any]] = {
    "tiny": dict(examples=384, steps=300, batch=16, lr=1e-2, negatives=4096, heldout=96),
    "realistic": dict(examples=192, steps=240, batch=8, lr=1e-3, negatives=4096, heldout=32),
}


def guard_demo_config(size: str):
    """The transformers config of a Qwen3Guard-Gen demo model."""
    from transformers import Qwen3Config

    if size not in _CONFIGS:
        raise ValueError(f"no qwen3guard-gen demo model of size {size!r} (sizes: {', '.join(_CONFIGS)})")
    return Qwen3Config(vocab_size=151936, max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645,
                       pad_token_id=guard_spec().input.pad_token_id, architectures=["Qwen3ForCausalLM"],
                       **_CONFIGS[size])


def write_guard_tokenizer(out: Path) -> None:
    """The real Qwen3 tokenizer files with the published Qwen3Guard-Gen chat template in tokenizer_config.json."""
    from guardrt.export.tokenizers import copy_qwen3_tokenizer

    copy_qwen3_tokenizer(out)
    cfg_file = out / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg["chat_template"] = CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
    cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")


def _write_generation_config(out: Path) -> None:
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=151643, eos_token_id=list(guard_spec().decoding.default_stop_token_ids),
                     pad_token_id=guard_spec().input.pad_token_id, do_sample=False).save_pretrained(out)


def render_prompt_ids(tokenizer, messages_list) -> list[list[int]]:
    """The card's input ids: `apply_chat_template(messages, tokenize=False)` then `tokenizer([text])`."""
    out = []
    for messages in messages_list:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        out.append(tokenizer([text]).input_ids[0])
    return out


def hf_greedy_generate(model, prompts: list[list[int]], max_new_tokens: int = 128, batch_size: int = 1
                       ) -> list[list[int]]:
    """HF `generate` (greedy, the checkpoint's generation config) -> new token ids per prompt, stop token included,
    padding after a stop removed. batch_size 1 is the card's code; larger batches left-pad (HF's batched generation)."""
    import torch

    pad = model.generation_config.pad_token_id
    out: list[list[int]] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            rows = prompts[start:start + batch_size]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, width - len(r):] = torch.tensor(r)
                mask[i, width - len(r):] = 1
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False)
            eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
                      else [model.generation_config.eos_token_id])
            for row in gen[:, width:].tolist():
                cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
                out.append(row[:cut])
    return out


# -- training -------------------------------------------------------------------------------------------------------
# Training is made cheap enough for a shared 2-core machine by doing the expensive part once: every prompt goes
# through the frozen lower layers a single time (the template's common prefix once per moderation kind, through
# the KV cache), which gives, per example, the last layer's keys/values at every position and its input at the
# target positions. Steps then train the last layer's query path, attention output and MLP, the final norm and the
# LM-head rows of the emitted tokens, evaluated at the target positions only. The loss is the cross-entropy over
# the full vocabulary, its partition function estimated from the emitted tokens' rows plus a fresh random sample of
# the other rows each step (sampled softmax). `_check_shortcut` verifies the step's computation is the model's own.
def _encode_examples(tokenizer, examples) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids + <|im_end|>) per example."""
    prompts = render_prompt_ids(tokenizer, [m for m, _ in examples])
    im_end = guard_spec().decoding.default_stop_token_ids[0]
    return [(p, tokenizer(t, add_special_tokens=False).input_ids + [im_end]) for p, (_, t) in zip(prompts, examples)]


def _common_prefix(seqs: list[list[int]]) -> list[int]:
    first = seqs[0]
    n = len(first)
    for s in seqs[1:]:
        n = min(n, len(s))
        n = next((i for i in range(n) if s[i] != first[i]), n)
    return first[:n]


class _Cached:
    """Per example: the last layer's input at the target positions, their positions, the next tokens, and the last
    layer's keys/values [kv_heads, length, head_dim] at every position (frozen)."""

    def __init__(self, hidden, positions, targets, keys, values):
        self.hidden, self.positions, self.targets, self.keys, self.values = hidden, positions, targets, keys, values


def _cache_examples(model, pairs, log) -> list[_Cached]:
    import copy

    import torch

    from guardrt.export.progress import Progress

    n_layers = model.config.num_hidden_layers
    groups: dict[int, list[int]] = {}
    out: list[_Cached | None] = [None] * len(pairs)
    report = Progress.count(log, "frozen layers", len(pairs))
    done = 0
    with torch.no_grad():
        # Group by the template's first differing token (prompt vs response moderation share no long prefix).
        prefixes: list[list[int]] = []
        for i, (p, _) in enumerate(pairs):
            for g, pre in enumerate(prefixes):
                if p[:len(pre)] == pre:
                    groups[g].append(i)
                    break
            else:
                key = next((g for g, pre in enumerate(prefixes) if p[:64] == pre[:64]), None)
                if key is None:
                    prefixes.append(p[:64])
                    groups[len(prefixes) - 1] = [i]
                else:
                    groups[key].append(i)
        for g, members in groups.items():
            prefix = _common_prefix([pairs[i][0] for i in members])[:-1]  # keep >= 1 prompt token per example
            base = model.model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
            for i in members:
                p, t = pairs[i]
                full = p + t
                cache = copy.deepcopy(base)
                res = model.model(input_ids=torch.tensor([full[len(prefix):]]), past_key_values=cache, use_cache=True,
                                  output_hidden_states=True)
                hidden = res.hidden_states[n_layers - 1][0]
                positions = torch.arange(len(p) - 1, len(full) - 1)
                layer = cache.layers[n_layers - 1]
                out[i] = _Cached(hidden[positions - len(prefix)].clone(), positions, torch.tensor(full[len(p):]),
                                 layer.keys[0].clone(), layer.values[0].clone())
                done += 1
                report(done)
    return out  # type: ignore[return-value]


def _last_layer_at_targets(model, batch: list[_Cached]):
    """Final hidden states (after the last layer and the final norm) at the target positions of `batch`, from the
    cached frozen keys/values: [sum of targets, hidden]."""
    import torch
    from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb, repeat_kv

    layer = model.model.layers[-1]
    attn = layer.self_attn
    n, width = len(batch), max(c.keys.shape[1] for c in batch)
    t_max = max(len(c.positions) for c in batch)
    d = batch[0].hidden.shape[1]
    kvh, hd = batch[0].keys.shape[0], batch[0].keys.shape[2]
    hidden = torch.zeros(n, t_max, d)
    pos = torch.zeros(n, t_max, dtype=torch.long)
    keys = torch.zeros(n, kvh, width, hd)
    values = torch.zeros(n, kvh, width, hd)
    for i, c in enumerate(batch):
        t, length = len(c.positions), c.keys.shape[1]
        hidden[i, :t], pos[i, :t] = c.hidden, c.positions
        keys[i, :, :length], values[i, :, :length] = c.keys, c.values
    cos, sin = model.model.rotary_emb(hidden, pos)
    q = attn.q_norm(attn.q_proj(layer.input_layernorm(hidden)).view(n, t_max, -1, hd)).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos, sin)
    k, v = repeat_kv(keys, attn.num_key_value_groups), repeat_kv(values, attn.num_key_value_groups)
    scores = (q @ k.transpose(2, 3)) * attn.scaling
    allowed = torch.arange(width)[None, None, :] <= pos[:, :, None]  # causal: a key at or before the query
    scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    x = hidden + attn.o_proj((probs @ v).transpose(1, 2).reshape(n, t_max, -1))
    x = x + layer.mlp(layer.post_attention_layernorm(x))
    x = model.model.norm(x)
    valid = torch.cat([torch.arange(t_max) < len(c.positions) for c in batch])
    return x.reshape(n * t_max, d)[valid]


def _check_shortcut(model, pairs, cached) -> None:
    """The shortcut's hidden states at the target positions must be the model's own (eager forward, no cache)."""
    import torch

    with torch.no_grad():
        for i in range(min(2, len(pairs))):
            p, t = pairs[i]
            full = model.model(input_ids=torch.tensor([p + t])).last_hidden_state[0, len(p) - 1:len(p) + len(t) - 1]
            short = _last_layer_at_targets(model, [cached[i]])
            if not torch.allclose(full, short, atol=1e-4):
                raise RuntimeError(f"training shortcut differs from the model's forward by "
                                   f"{(full - short).abs().max():.2e}")


def _train(model, size: str, tokenizer, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    from guardrt.export.guard_synthetic import describe, guard_examples
    from guardrt.export.synthetic import SPLIT_SEEDS

    cfg = _TRAIN[size]
    train = guard_examples(cfg["examples"], seed=SPLIT_SEEDS["train"] + 100 * seed)
    return train_last_layer(model, _encode_examples(tokenizer, train), cfg, seed, log, f"qwen3guard-gen/{size}",
                            describe(train))


def train_last_layer(model, pairs: list[tuple[list[int], list[int]]], cfg: dict[str, Any], seed: int,
                     log: Callable[[str], None], title: str, labels: Any) -> dict[str, Any]:
    """Train the parts named above on (prompt ids, target ids) pairs (loss on the target tokens only); returns the
    training metrics for demo.json. `cfg`: steps, batch, lr, negatives (see `_TRAIN`)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    layer = model.model.layers[-1]
    trained = [layer.self_attn.q_proj, layer.self_attn.q_norm, layer.self_attn.o_proj, layer.post_attention_layernorm,
               layer.mlp, model.model.norm]
    for m in trained:
        for p in m.parameters():
            p.requires_grad_(True)
    head = model.lm_head.weight
    vocab = head.shape[0]
    used = torch.tensor(sorted({t for _, tgt in pairs for t in tgt}))
    others = np.setdiff1d(np.arange(vocab), used.numpy())
    rows = torch.nn.Parameter(head[used].detach().clone())
    params = [p for p in model.parameters() if p.requires_grad] + [rows]
    log(f"{title}: {len(pairs)} examples ({labels}), {len(used)} emitted token types; "
        f"training {sum(p.numel() for p in params) / 1e6:.2f}M of {model.num_parameters() / 1e6:.1f}M parameters")
    t0 = time.perf_counter()
    cached = _cache_examples(model, pairs, log)
    _check_shortcut(model, pairs, cached)
    cache_seconds = time.perf_counter() - t0
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.05, 1 - s / cfg["steps"]))
    n_neg = cfg["negatives"]
    correction = float(np.log(len(others) / n_neg))
    step, loss = 0, torch.tensor(0.0)
    while step < cfg["steps"]:
        order = rng.permutation(len(pairs))
        for start in range(0, len(order) - cfg["batch"] + 1, cfg["batch"]):
            batch = [cached[int(i)] for i in order[start:start + cfg["batch"]]]
            h = _last_layer_at_targets(model, batch)
            target = torch.searchsorted(used, torch.cat([c.targets for c in batch]))
            neg = torch.from_numpy(rng.choice(others, n_neg, replace=False))
            logits = torch.cat([F.linear(h, rows), F.linear(h, head[neg]) + correction], dim=1)
            loss = F.cross_entropy(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 25 == 0:
                log(f"  step {step}/{cfg['steps']}: loss {float(loss.detach()):.4f}")
            if step >= cfg["steps"]:
                break
    with torch.no_grad():
        head[used] = rows.detach()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"trained": "last layer query path, attention output and MLP; final norm; emitted tokens' LM-head rows",
            "steps": cfg["steps"], "batch": cfg["batch"], "train_examples": len(pairs),
            "train_labels": labels, "final_loss": float(loss.detach()),
            "cache_seconds": round(cache_seconds, 1), "train_seconds": round(time.perf_counter() - t0, 1)}


def evaluate_guard_model(model, tokenizer, examples, batch_size: int = 8) -> dict[str, Any]:
    """Greedy generation on `examples`: fraction in the card's format, safety-label and exact-output accuracy."""
    import re

    fmt = re.compile(r"Safety: (Safe|Unsafe|Controversial)\nCategories: [^\n]+(\nRefusal: (Yes|No))?")
    prompts = render_prompt_ids(tokenizer, [m for m, _ in examples])
    new = hf_greedy_generate(model, prompts, max_new_tokens=guard_spec().decoding.max_new_tokens, batch_size=batch_size)
    n_fmt = n_safety = n_exact = 0
    for (messages, target), ids in zip(examples, new):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        kind = moderation_kind(messages)
        got, want = parse_guard_output(text, kind), parse_guard_output(target, kind)
        n_fmt += bool(fmt.fullmatch(text)) and ((got["refusal"] is not None) == (kind == "response"))
        n_safety += got["safety"] == want["safety"]
        n_exact += text == target
    n = len(examples)
    return {"heldout_examples": n, "heldout_format_accuracy": n_fmt / n, "heldout_safety_accuracy": n_safety / n,
            "heldout_exact_accuracy": n_exact / n}


def build_guard_demo_model(size: str, out_dir: str | Path, seed: int = 0,
                           log: Callable[[str], None] | None = None) -> Path:
    """Build, briefly train and save a Qwen3Guard-Gen demo checkpoint into `out_dir`; returns `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guardrt.export.guard_synthetic import guard_examples
    from guardrt.export.progress import Progress
    from guardrt.export.synthetic import SPLIT_SEEDS

    log = log or (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_guard_tokenizer(out)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    torch.manual_seed(seed)
    with Progress.step(f"qwen3guard-gen/{size}: initialising Qwen3ForCausalLM", log):
        model = AutoModelForCausalLM.from_config(guard_demo_config(size), attn_implementation="eager")
    _write_generation_config(out)
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig.from_pretrained(str(out))
    with Progress.step(f"qwen3guard-gen/{size}: training", log):
        metrics = _train(model, size, tokenizer, seed, log)
    with Progress.step(f"qwen3guard-gen/{size}: held-out greedy generation", log):
        held = guard_examples(_TRAIN[size]["heldout"], seed=SPLIT_SEEDS["heldout"])
        metrics.update(evaluate_guard_model(model, tokenizer, held))
    log(f"qwen3guard-gen/{size}: held-out format {metrics['heldout_format_accuracy']:.3f}, safety "
        f"{metrics['heldout_safety_accuracy']:.3f}, exact {metrics['heldout_exact_accuracy']:.3f}")
    model.save_pretrained(out, safe_serialization=True)
    _write_generation_config(out)  # save_pretrained rewrites it from the model's; keep ours
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("_attn_implementation_autoset", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    (out / "demo.json").write_text(json.dumps({"spec": "qwen3guard-gen", "size": size, "seed": seed, **metrics},
                                              indent=2))
    return out


def guard_cache_settings(size: str) -> tuple[Any, Any]:
    """The settings that enter the demo model's cache key."""
    return _CONFIGS.get(size), _TRAIN.get(size)

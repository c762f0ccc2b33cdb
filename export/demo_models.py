"""Demo checkpoints at the real architectures, built locally and deterministically, and a cache of their exports.

* `build_demo_model(spec_name, size, out_dir, seed=0)` writes a Hugging Face checkpoint directory (config.json,
  model.safetensors, tokenizer files, demo.json with training metrics):
  - intent-safety: `Qwen3ForSequenceClassification`, 2 labels (non_unsafe/unsafe), pad id 151643, the real Qwen3
    tokenizer. "realistic" has the Qwen3-0.6B layer shape (hidden 1024, 16 heads, 8 KV heads, head_dim 128,
    intermediate 3072, vocab 151936) with 4 layers to fit a 2-core / 24 GB machine.
  - rejection: `RobertaForSequenceClassification`, 2 labels NORMAL/REJECTION, the local byte-level BPE tokenizer.
    "realistic" has distilroberta's dimensions (6 layers x 768, 12 heads, intermediate 3072).
  Training is brief, on the synthetic task of `guardrt.export.synthetic`: "tiny" models are fine-tuned end to end
  (seconds); "realistic" models train their last layer(s), final norm and head on top of the frozen, seeded-random
  lower layers (about two minutes on 2 cores). Either way the decisions depend on the input, so precision effects
  show up on real decisions; demo.json records the held-out accuracy.
* `cached_demo_model(...)` / `cached_demo_export(...)`: the same, built once under `$GUARDRT_CACHE_DIR` (default
  `<repo>/.cache/guardrt`), keyed by a hash of the building code and settings; safe across processes (file lock,
  atomic rename). Tests, `make demo`, the Triton repo writer and the benchmarks all reuse these.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from guardrt.runtime.specs import get_spec

__all__ = [
    "DEMO_SIZES",
    "build_demo_model",
    "cache_dir",
    "cached_demo_model",
    "cached_demo_export",
    "cached_guard_demo_model",
    "cached_guard_export",
    "demo_config",
    "training_examples",
]

DEMO_SIZES = ("tiny", "realistic")
_REPO_ROOT = Path(__file__).resolve().parents[1]

# Architecture settings per (spec, size). Everything else is the transformers default for the architecture.
_CONFIGS: dict[tuple[str, str], dict[str, Any]] = {
    ("intent-safety", "tiny"): dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8,
        # The class is in the last user turn, ~270 tokens after the start. At the default 0.02 the attention path
        # starts far weaker than the pooled token's own embedding, and training sat at chance for its whole budget on
        # 1 seed in 3; at 0.1 all of 7 seeds left chance within 60 steps. (A smaller rope_theta learned the task
        # as fast but made the model erratic on 4,096-token inputs, fp16 drift 0.3-0.7: Qwen3's 1e6 is kept.)
        initializer_range=0.1,
    ),
    ("intent-safety", "realistic"): dict(  # Qwen3-0.6B layer shape, 4 of its 28 layers
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=8,
        head_dim=128,
    ),
    ("rejection", "tiny"): dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    ),
    ("rejection", "realistic"): dict(  # distilroberta-base
        hidden_size=768, intermediate_size=3072, num_hidden_layers=6, num_attention_heads=12,
    ),
}
# Training settings. "trainable": "all", or the number of final encoder/decoder layers trained together with the
# final norm and the classification head (the rest frozen: realistic models must train in about two minutes on 2
# cores, and a frozen-prefix fine-tune generalises where a linear probe on random features does not; the tiny
# Qwen3 does not learn the task with frozen 32-wide random embeddings, so "all" includes them). "threads": torch
# intra-op threads while training; 1 for the tiny models, whose ops are too small to split: on the shared 2-core
# machine 60 steps of the old tiny rejection run took 42.6 s on 2 threads (spinning against other jobs), 4.4 s on 1.
# Steps and rates of the tiny models: the smallest budget at which seeds 0-2 reached >= 0.99 held-out accuracy.
_TRAIN: dict[tuple[str, str], dict[str, Any]] = {
    ("rejection", "tiny"): dict(trainable="all", examples=1024, steps=120, batch=16, lr=1e-2, threads=1),
    ("intent-safety", "tiny"): dict(trainable="all", examples=1024, steps=240, batch=16, lr=1e-2, threads=1),
    ("rejection", "realistic"): dict(trainable=1, examples=128, steps=40, batch=16, lr=5e-4),
    ("intent-safety", "realistic"): dict(trainable=1, examples=96, steps=48, batch=8, lr=5e-4),
}


HELDOUT_EXAMPLES = 256  # held-out synthetic examples behind demo.json's accuracy


def demo_config(spec_name: str, size: str):
    """The transformers config of a demo model."""
    spec = get_spec(spec_name)
    if (spec_name, size) not in _CONFIGS:
        raise ValueError(f"no demo model for spec {spec_name!r} size {size!r} (sizes: {', '.join(DEMO_SIZES)})")
    arch = dict(_CONFIGS[(spec_name, size)])
    id2label = dict(spec.id2label)
    common = dict(num_labels=len(spec.labels), id2label=id2label, label2id={v: k for k, v in id2label.items()},
                  pad_token_id=spec.pad_token_id, architectures=[spec.architecture])
    if spec.model_type == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config(vocab_size=151936, max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
                           tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645,
                           **common, **arch)
    if spec.model_type == "roberta":
        from transformers import RobertaConfig

        return RobertaConfig(vocab_size=2000, max_position_embeddings=spec.max_length + 2, type_vocab_size=1,
                             layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, **common, **arch)
    raise ValueError(f"no demo config for model type {spec.model_type!r}")


def _write_tokenizer(spec_name: str, out: Path) -> None:
    from guardrt.export.tokenizers import build_roberta_tokenizer, copy_qwen3_tokenizer

    if get_spec(spec_name).model_type == "qwen3":
        copy_qwen3_tokenizer(out)
    else:
        build_roberta_tokenizer(out)


def _batches(seqs: list[list[int]], labels: list[int], batch: int, spec, rng):
    import numpy as np

    from guardrt.runtime.preprocess import pad_batch

    order = rng.permutation(len(seqs))
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        ids, mask = pad_batch([seqs[i] for i in idx], spec.pad_token_id, spec.padding_side)
        yield ids, mask, np.asarray([labels[i] for i in idx])


def _set_trainable(model, spec, trainable) -> None:
    """Freeze all but the last `trainable` layers, the final norm and the head ("all": everything but a huge
    token embedding)."""
    big_vocab = model.config.vocab_size > 50_000
    if trainable == "all":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        if spec.model_type == "qwen3":
            modules = list(model.model.layers[-int(trainable):]) + [model.model.norm, model.score]
        else:
            modules = list(model.roberta.encoder.layer[-int(trainable):]) + [model.classifier]
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(True)
    if big_vocab and trainable != "all":
        model.get_input_embeddings().weight.requires_grad_(False)


def _top_layers_forward(model, spec, hidden, ids, mask, k: int):
    """Logits from the last `k` layers, the final norm and the head, given `hidden` = the input of those layers
    (what the frozen lower layers produced). Mirrors the model's own forward for eager attention: Qwen3 with a
    causal + padding additive mask and positions 0..L-1 (HF does not shift positions for left padding), RoBERTa
    with an additive padding mask; pooling as the model pools."""
    import torch

    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    neg = torch.finfo(hidden.dtype).min
    if spec.model_type == "qwen3":
        if k == 1 and spec.padding_side == "left":
            return _qwen3_last_layer_at_last_token(model, spec, hidden, mask_t)
        length = hidden.shape[1]
        pos = torch.arange(length).unsqueeze(0)
        cos_sin = model.model.rotary_emb(hidden, pos)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        allowed = causal[None, None] & mask_t[:, None, None, :].bool()
        additive = torch.zeros(allowed.shape, dtype=hidden.dtype).masked_fill(~allowed, neg)
        for layer in model.model.layers[-k:]:
            hidden = layer(hidden, attention_mask=additive, position_ids=pos, position_embeddings=cos_sin)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        logits = model.score(model.model.norm(hidden))
        last = (torch.arange(length) * (ids_t != spec.pad_token_id)).argmax(-1)
        return logits[torch.arange(len(ids)), last]
    additive = (1.0 - mask_t[:, None, None, :].to(hidden.dtype)) * neg
    for layer in model.roberta.encoder.layer[-k:]:
        hidden = layer(hidden, attention_mask=additive)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return model.classifier(hidden)


def _qwen3_last_layer_at_last_token(model, spec, hidden, mask_t):
    """The last Qwen3 decoder layer, final norm and score evaluated at the last position only (the pooled token
    under left padding): keys/values for every position, queries/output/MLP for one. Same logits as the full
    forward (checked by the caller), several times cheaper to train."""
    import torch
    from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb, repeat_kv

    layer = model.model.layers[-1]
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    pos = torch.arange(length).unsqueeze(0)
    cos, sin = model.model.rotary_emb(hidden, pos)
    h = layer.input_layernorm(hidden)
    q = attn.q_norm(attn.q_proj(h[:, -1:]).view(batch, 1, -1, attn.head_dim)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(h).view(batch, length, -1, attn.head_dim)).transpose(1, 2)
    v = attn.v_proj(h).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos[:, -1:], sin[:, -1:])
    k, _ = apply_rotary_pos_emb(k, k, cos, sin)
    k, v = repeat_kv(k, attn.num_key_value_groups), repeat_kv(v, attn.num_key_value_groups)
    scores = (q @ k.transpose(2, 3)) * attn.scaling
    scores = scores.masked_fill(~mask_t[:, None, None, :].bool(), torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = attn.o_proj((probs @ v).transpose(1, 2).reshape(batch, 1, -1))
    x = hidden[:, -1:] + out
    x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.score(model.model.norm(x))[:, 0]


def _cached_layer_inputs(model, spec, batches, k: int):
    """Per batch: the hidden states entering the last `k` layers (computed once; the lower layers are frozen)."""
    import torch

    base = model.model if spec.model_type == "qwen3" else model.roberta
    n_layers = model.config.num_hidden_layers
    out = []
    with torch.no_grad():  # not inference_mode: the cached tensors feed autograd later
        for ids, mask, _ in batches:
            hs = base(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                      output_hidden_states=True).hidden_states
            out.append(hs[n_layers - k].clone())
    return out


def training_examples(spec_name: str, size: str, seed: int = 0) -> list[tuple[Any, int]]:
    """The exact (payload, label) pairs the demo model of (spec_name, size, seed) is trained on."""
    from guardrt.export.synthetic import SPLIT_SEEDS, synthetic_examples

    return synthetic_examples(spec_name, _TRAIN[(spec_name, size)]["examples"], seed=SPLIT_SEEDS["train"] + 100 * seed)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run with `n` torch intra-op threads (None: leave as is), restoring the previous count after."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(model, spec, size: str, tokenizer_dir: Path, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    with _torch_threads(_TRAIN[(spec.name, size)].get("threads")):
        return _train_steps(model, spec, size, tokenizer_dir, seed, log)


def _train_steps(model, spec, size: str, tokenizer_dir: Path, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    import numpy as np
    import torch

    from guardrt.export.synthetic import SPLIT_SEEDS, classified_text, synthetic_examples
    from guardrt.runtime.preprocess import build_preprocessor, pad_batch

    cfg = _TRAIN[(spec.name, size)]
    pre = build_preprocessor(spec, tokenizer_dir)
    train = training_examples(spec.name, size, seed)
    held = synthetic_examples(spec.name, HELDOUT_EXAMPLES, seed=SPLIT_SEEDS["heldout"])
    x_train = [pre.encode(p) for p, _ in train]
    y_train = [y for _, y in train]
    x_held = [pre.encode(p) for p, _ in held]
    y_held = np.asarray([y for _, y in held])
    # Held-out examples whose classified text (the answer / the last user turn) never occurs in training.
    seen = {classified_text(p) for p, _ in train}
    unseen = np.asarray([classified_text(p) not in seen for p, _ in held])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    loss_fn = torch.nn.CrossEntropyLoss()
    _set_trainable(model, spec, cfg["trainable"])
    params = [p for p in model.parameters() if p.requires_grad]
    emb = model.get_input_embeddings()
    table = remap = used = None
    if cfg["trainable"] == "all" and emb.weight.shape[0] > 50_000:
        # Train only the embedding rows the task uses (a compact table fed as inputs_embeds): a dense gradient and
        # optimizer state over all 151,936 rows would dominate a tiny model's step. Left padding puts the pooled
        # token last, which is what the model pools without input_ids.
        used = np.unique(np.concatenate([np.asarray(x, dtype=np.int64) for x in x_train] + [[spec.pad_token_id]]))
        remap = np.zeros(emb.weight.shape[0], dtype=np.int64)
        remap[used] = np.arange(len(used))
        table = torch.nn.Parameter(emb.weight.detach()[torch.from_numpy(used)].clone())
        emb.weight.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad] + [table]
    log(f"training {sum(p.numel() for p in params) / 1e6:.1f}M of {model.num_parameters() / 1e6:.1f}M parameters, "
        f"{cfg['steps']} steps of {cfg['batch']}")
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    # Linear warm-up over the first 10% of the steps, then linear decay to zero: a high peak rate learns fast,
    # and the decay lets the last steps settle instead of ending wherever the last batch pushed the weights.
    warmup = max(1, cfg["steps"] // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (cfg["steps"] - s) / (cfg["steps"] - warmup))))
    batches = None
    if cfg["trainable"] != "all":
        # Frozen lower layers: compute their output once, then train the top on it for several epochs.
        k = int(cfg["trainable"])
        batches = list(_batches(x_train, y_train, cfg["batch"], spec, rng))
        model.eval()
        cached = _cached_layer_inputs(model, spec, batches, k)
        with torch.no_grad():  # the shortcut must be the model's own computation
            ids, mask, _ = batches[0]
            full = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
            top = _top_layers_forward(model, spec, cached[0], ids, mask, k)
        if not torch.allclose(full, top, atol=1e-4):
            raise RuntimeError(f"top-layer forward differs from the model's by {(full - top).abs().max():.2e}")
    model.train()
    step = 0
    while step < cfg["steps"]:
        epoch = list(enumerate(batches)) if batches is not None else list(
            enumerate(_batches(x_train, y_train, cfg["batch"], spec, rng)))
        if batches is not None:
            epoch = [epoch[i] for i in rng.permutation(len(epoch))]
        for i, (ids, mask, y) in epoch:
            if batches is not None:
                out = _top_layers_forward(model, spec, cached[i], ids, mask, k)
            elif table is not None:
                embeds = table[torch.from_numpy(remap[ids])]
                out = model(inputs_embeds=embeds, attention_mask=torch.from_numpy(mask)).logits
            else:
                out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
            loss = loss_fn(out, torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # one odd batch at a high rate must not derail the run
            opt.step()
            schedule.step()
            step += 1
            if step >= cfg["steps"]:
                break
    model.eval()
    if table is not None:
        with torch.no_grad():
            emb.weight[torch.from_numpy(used)] = table.detach()
    for p in model.parameters():
        p.requires_grad_(True)
    train_seconds = time.perf_counter() - t0
    # Held-out accuracy of the trained model (the full model, through the same padding the runtime uses).
    with torch.inference_mode():
        preds = []
        for start in range(0, len(x_held), 16):
            ids, mask = pad_batch(x_held[start:start + 16], spec.pad_token_id, spec.padding_side)
            logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
            preds.append(logits.argmax(-1).numpy())
    correct = np.concatenate(preds) == y_held
    return {"trainable": cfg["trainable"], "steps": cfg["steps"], "batch": cfg["batch"], "lr": cfg["lr"],
            "train_examples": len(x_train), "final_loss": float(loss.detach()),
            "heldout_examples": len(x_held), "heldout_accuracy": float(correct.mean()),
            "heldout_unseen_examples": int(unseen.sum()), "heldout_unseen_accuracy": float(correct[unseen].mean()),
            "train_seconds": round(train_seconds, 2)}


def build_demo_model(spec_name: str, size: str, out_dir: str | Path, seed: int = 0,
                     log: Callable[[str], None] | None = None) -> Path:
    """Build, briefly train and save a demo checkpoint for `spec_name` into `out_dir`; returns `out_dir`."""
    import torch

    from guardrt.export.progress import Progress

    log = log or (lambda msg: None)
    spec = get_spec(spec_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = demo_config(spec_name, size)
    _write_tokenizer(spec_name, out)
    torch.manual_seed(seed)
    from transformers import AutoModelForSequenceClassification

    with Progress.step(f"{spec_name}/{size}: initialising {spec.architecture}", log):
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
        model.config.pad_token_id = spec.pad_token_id
    with Progress.step(f"{spec_name}/{size}: training (trainable: {_TRAIN[(spec_name, size)]['trainable']})", log):
        metrics = _train(model, spec, size, out, seed, log)
    log(f"{spec_name}/{size}: held-out accuracy {metrics['heldout_accuracy']:.3f}")
    model.config.architectures = [spec.architecture]
    model.save_pretrained(out, safe_serialization=True)
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("_attn_implementation_autoset", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    (out / "demo.json").write_text(json.dumps({"spec": spec_name, "size": size, "seed": seed, **metrics}, indent=2))
    return out


# -- cache ----------------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """`$GUARDRT_CACHE_DIR`, default `<repo>/.cache/guardrt`."""
    return Path(os.environ.get("GUARDRT_CACHE_DIR") or _REPO_ROOT / ".cache" / "guardrt")


_MODEL_CODE = ("export/demo_models.py", "export/synthetic.py", "export/tokenizers.py")
_EXPORT_CODE = _MODEL_CODE + ("export/onnx_export.py", "export/graph_pass.py", "export/validate.py", "export/fp16.py",
                              "export/quantize.py", "export/int8_check.py", "runtime/int8_path.py", "runtime/specs.py",
                              "runtime/preprocess.py") + tuple(
    # the exporter's default graph pass lives in kernels/
    sorted(f"kernels/{p.name}" for p in (_REPO_ROOT / "kernels").glob("*.py")))


def _code_hash(files: Sequence[str], *parts: Any) -> str:
    """Hash of the code that builds the artefact, the library versions, and the settings."""
    import importlib.metadata as md

    h = hashlib.sha256()
    for name in files:
        f = _REPO_ROOT / name
        h.update(f.read_bytes() if f.is_file() else name.encode())
    for dist in ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime"):
        try:
            h.update(f"{dist}={md.version(dist)}".encode())
        except md.PackageNotFoundError:
            pass
    h.update(json.dumps(parts, sort_keys=True, default=_stable_repr).encode())
    return h.hexdigest()[:16]


def _stable_repr(value: Any) -> str:
    """Cache-key text for a non-JSON setting: a function (a graph pass) is named by where it lives plus the sources
    of its module's folder, never by its memory address (which would make every run a cache miss)."""
    if callable(value) and hasattr(value, "__qualname__"):
        import inspect

        h = hashlib.sha256()
        module_file = getattr(inspect.getmodule(value), "__file__", None)
        if module_file:
            for f in sorted(Path(module_file).parent.glob("*.py")):
                h.update(f.read_bytes())
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}@{h.hexdigest()[:16]}"
    return str(value)


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _cached(kind: str, key: str, build: Callable[[Path], None]) -> Path:
    final = cache_dir() / kind / key
    if (final / ".complete").is_file():
        return final
    with _locked(cache_dir() / "locks" / f"{kind}-{key}.lock"):
        if (final / ".complete").is_file():  # built by another process while we waited
            return final
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            (tmp / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def cached_demo_model(spec_name: str, size: str = "tiny", seed: int = 0,
                      log: Callable[[str], None] | None = None) -> Path:
    """A demo checkpoint directory, built once per (code, settings) and reused."""
    from guardrt.export.demo_guard_models import GUARD_DEMO_SPECS

    if spec_name in GUARD_DEMO_SPECS:  # generative guards: demo_guard_models, demo_flexguard_models
        return cached_guard_demo_model(size, seed=seed, log=log, spec=spec_name)
    key = f"{spec_name}-{size}-s{seed}-{_code_hash(_MODEL_CODE, 'model', spec_name, size, seed, _CONFIGS.get((spec_name, size)), _TRAIN.get((spec_name, size)))}"
    return _cached("models", key, lambda tmp: build_demo_model(spec_name, size, tmp, seed=seed, log=log))


def cached_demo_export(spec_name: str, size: str = "tiny", precisions: Sequence[str] = ("fp32",), seed: int = 0,
                       log: Callable[[str], None] | None = None, **export_kwargs: Any) -> Path:
    """A validated export directory (see `guardrt.runtime.export_dir`) of the demo model, built once and reused.

    Extra keyword arguments go to `guardrt.export.onnx_export.export_onnx` and are part of the cache key."""
    from guardrt.export.onnx_export import export_onnx

    precisions = tuple(precisions)
    model_dir = cached_demo_model(spec_name, size, seed=seed, log=log)
    key = f"{spec_name}-{size}-s{seed}-{'_'.join(precisions)}-" + _code_hash(
        _EXPORT_CODE, "export", model_dir.name, precisions, export_kwargs)
    return _cached("exports", key, lambda tmp: export_onnx(model_dir, spec_name, tmp, precisions, log=log,
                                                            **export_kwargs))


def cached_guard_demo_model(size: str = "tiny", seed: int = 0, log: Callable[[str], None] | None = None,
                            spec: str = "qwen3guard-gen") -> Path:
    """A generative guard's demo checkpoint, built once and reused: Qwen3Guard-Gen
    (`guardrt.export.demo_guard_models`) or FlexGuard (`guardrt.export.demo_flexguard_models`)."""
    if spec == "flexguard":
        from guardrt.export.demo_flexguard_models import (FLEXGUARD_MODEL_CODE, build_flexguard_demo_model,
                                                          flexguard_cache_settings)

        key = f"flexguard-{size}-s{seed}-" + _code_hash(FLEXGUARD_MODEL_CODE, "model", size, seed,
                                                        *flexguard_cache_settings(size))
        return _cached("models", key, lambda tmp: build_flexguard_demo_model(size, tmp, seed=seed, log=log))
    from guardrt.export.demo_guard_models import GUARD_MODEL_CODE, build_guard_demo_model, guard_cache_settings

    key = f"qwen3guard-gen-{size}-s{seed}-" + _code_hash(GUARD_MODEL_CODE, "model", size, seed,
                                                         *guard_cache_settings(size))
    return _cached("models", key, lambda tmp: build_guard_demo_model(size, tmp, seed=seed, log=log))


_GUARD_EXPORT_CODE = ("export/causal_lm_export.py", "export/causal_lm_validate.py", "export/fp16.py",
                      "export/quantize.py", "export/onnx_export.py", "runtime/generate.py", "runtime/guard_output.py")


def cached_guard_export(size: str = "tiny", precisions: Sequence[str] = ("fp32",),
                        graphs: Sequence[str] | None = None, seed: int = 0,
                        log: Callable[[str], None] | None = None, spec: str = "qwen3guard-gen",
                        **export_kwargs: Any) -> Path:
    """A validated export (`guardrt.export.causal_lm_export`) of a generative guard's demo model, built once.
    graphs: default both kinds for qwen3guard-gen, the generation graph for flexguard."""
    from guardrt.export.causal_lm_export import export_causal_lm

    if graphs is None:
        graphs = ("causal-lm-with-past", "verdict") if spec == "qwen3guard-gen" else ("causal-lm-with-past",)
    model_dir = cached_guard_demo_model(size, seed=seed, log=log, spec=spec)
    key = f"{spec}-{size}-s{seed}-{'_'.join(precisions)}-{'_'.join(graphs)}-" + _code_hash(
        _GUARD_EXPORT_CODE, "export", model_dir.name, tuple(precisions), tuple(graphs), export_kwargs)
    return _cached("exports", key, lambda tmp: export_causal_lm(model_dir, tmp, tuple(precisions), tuple(graphs),
                                                                log=log, spec=spec, **export_kwargs))

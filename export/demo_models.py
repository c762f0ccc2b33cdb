"""Demo checkpoints at the real architectures, built locally and deterministically, and a cache of their exports.

* `build_demo_model(spec_name, size, out_dir, seed=0)` writes a Hugging Face checkpoint directory (config.json,
  model.safetensors, tokenizer files, demo.json with training metrics):
  - intent-safety: `Qwen3ForSequenceClassification`, 2 labels (non_unsafe/unsafe), pad id 151643, the real Qwen3
    tokenizer. "realistic" has the Qwen3-0.6B layer shape (hidden 1024, 16 heads, 8 KV heads, head_dim 128,
    intermediate 3072, vocab 151936) with 4 layers to fit a 2-core / 24 GB machine.
  - rejection: `RobertaForSequenceClassification`, 2 labels NORMAL/REJECTION, the local byte-level BPE tokenizer.
    "realistic" has distilroberta's dimensions (6 layers x 768, 12 heads, intermediate 3072).
  Training is brief, on the synthetic task of `guardrt.export.synthetic`: "tiny" models are fine-tuned end to end
  (seconds); "realistic" models keep their seeded random encoder and fit the classification head on its pooled
  features (a linear probe; a full fine-tune does not fit the time budget on 2 cores). Either way the decisions
  depend on the input, so precision effects show up on real decisions.
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
    "demo_config",
]

DEMO_SIZES = ("tiny", "realistic")
_REPO_ROOT = Path(__file__).resolve().parents[1]

# Architecture settings per (spec, size). Everything else is the transformers default for the architecture.
_CONFIGS: dict[tuple[str, str], dict[str, Any]] = {
    ("intent-safety", "tiny"): dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8,
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
# Training settings: "finetune" trains everything but the token embeddings (their dense gradient over a 151,936-row
# vocabulary dominates a tiny model's step time); "probe" fits only the head on frozen pooled features.
_TRAIN: dict[tuple[str, str], dict[str, Any]] = {
    ("rejection", "tiny"): dict(mode="finetune", examples=192, steps=60, batch=16, lr=3e-3),
    ("intent-safety", "tiny"): dict(mode="finetune", examples=128, steps=60, batch=8, lr=3e-3),
    ("rejection", "realistic"): dict(mode="probe", examples=128, steps=300, batch=16, lr=1e-2),
    ("intent-safety", "realistic"): dict(mode="probe", examples=128, steps=300, batch=16, lr=1e-2),
}


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


def _pooled_features(model, spec, seqs: list[list[int]], batch: int = 8):
    """The classification head's input per sequence (Qwen3: final-norm hidden state of the last non-pad token;
    RoBERTa: the <s> token's last hidden state), with the encoder frozen."""
    import torch

    from guardrt.runtime.preprocess import pad_batch

    feats = []
    base = model.model if spec.model_type == "qwen3" else model.roberta
    with torch.inference_mode():
        for start in range(0, len(seqs), batch):
            ids, mask = pad_batch(seqs[start:start + batch], spec.pad_token_id, spec.padding_side)
            hidden = base(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
            if spec.model_type == "qwen3":
                last = (torch.arange(ids.shape[1]) * (torch.from_numpy(ids) != spec.pad_token_id)).argmax(-1)
                feats.append(hidden[torch.arange(len(ids)), last])
            else:
                feats.append(hidden[:, 0])
    return torch.cat(feats)


def _train(model, spec, size: str, tokenizer_dir: Path, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    import numpy as np
    import torch

    from guardrt.export.synthetic import SPLIT_SEEDS, synthetic_examples
    from guardrt.runtime.preprocess import build_preprocessor

    cfg = _TRAIN[(spec.name, size)]
    pre = build_preprocessor(spec, tokenizer_dir)
    train = synthetic_examples(spec.name, cfg["examples"], seed=SPLIT_SEEDS["train"] + 100 * seed)
    held = synthetic_examples(spec.name, 64, seed=SPLIT_SEEDS["heldout"])
    x_train = [pre.encode(p) for p, _ in train]
    y_train = [y for _, y in train]
    x_held = [pre.encode(p) for p, _ in held]
    y_held = np.asarray([y for _, y in held])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    loss_fn = torch.nn.CrossEntropyLoss()
    if cfg["mode"] == "finetune":
        model.train()
        big_vocab = model.config.vocab_size > 50_000
        model.get_input_embeddings().weight.requires_grad_(not big_vocab)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"], weight_decay=0.0)
        step = 0
        while step < cfg["steps"]:
            for ids, mask, y in _batches(x_train, y_train, cfg["batch"], spec, rng):
                out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
                loss = loss_fn(out, torch.from_numpy(y))
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step >= cfg["steps"]:
                    break
        model.get_input_embeddings().weight.requires_grad_(True)
        model.eval()
    else:
        # Linear probe: the head is trained on cached pooled features of the frozen, seeded-random encoder.
        model.eval()
        log(f"computing pooled features of {len(x_train)} training examples")
        feats = _pooled_features(model, spec, x_train)
        y = torch.tensor(y_train)
        head = model.score if spec.model_type == "qwen3" else model.classifier
        for p in head.parameters():
            p.requires_grad_(True)
        opt = torch.optim.Adam(head.parameters(), lr=cfg["lr"], weight_decay=1e-4)
        # Standardise what the head sees by a fixed scale so the probe's step size suits every hidden size.
        for _ in range(cfg["steps"]):
            if spec.model_type == "qwen3":
                logits = head(feats)
            else:
                logits = head(feats.unsqueeze(1))
            loss = loss_fn(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    train_seconds = time.perf_counter() - t0
    # Held-out accuracy of the trained model (the full model, through the same padding the runtime uses).
    with torch.inference_mode():
        preds = []
        for start in range(0, len(x_held), 16):
            from guardrt.runtime.preprocess import pad_batch

            ids, mask = pad_batch(x_held[start:start + 16], spec.pad_token_id, spec.padding_side)
            logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
            preds.append(logits.argmax(-1).numpy())
    acc = float((np.concatenate(preds) == y_held).mean())
    return {"mode": cfg["mode"], "train_examples": len(x_train), "final_loss": float(loss.detach()),
            "heldout_examples": len(x_held), "heldout_accuracy": acc, "train_seconds": round(train_seconds, 2)}


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
    with Progress.step(f"{spec_name}/{size}: training ({_TRAIN[(spec_name, size)]['mode']})", log):
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


def _code_hash(*parts: Any) -> str:
    """Hash of the code that builds demo models / exports, the library versions, and the settings."""
    import importlib.metadata as md

    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in ("demo_models.py", "synthetic.py", "tokenizers.py", "onnx_export.py", "validate.py", "fp16.py",
                 "quantize.py"):
        f = here / name
        if f.is_file():
            h.update(f.read_bytes())
    spec_file = _REPO_ROOT / "runtime" / "specs.py"
    h.update(spec_file.read_bytes() if spec_file.is_file() else b"")
    for dist in ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime"):
        try:
            h.update(f"{dist}={md.version(dist)}".encode())
        except md.PackageNotFoundError:
            pass
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


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
    key = f"{spec_name}-{size}-s{seed}-{_code_hash('model', spec_name, size, seed, _CONFIGS.get((spec_name, size)), _TRAIN.get((spec_name, size)))}"
    return _cached("models", key, lambda tmp: build_demo_model(spec_name, size, tmp, seed=seed, log=log))


def cached_demo_export(spec_name: str, size: str = "tiny", precisions: Sequence[str] = ("fp32",), seed: int = 0,
                       log: Callable[[str], None] | None = None, **export_kwargs: Any) -> Path:
    """A validated export directory (see `guardrt.runtime.export_dir`) of the demo model, built once and reused.

    Extra keyword arguments go to `guardrt.export.onnx_export.export_onnx` and are part of the cache key."""
    from guardrt.export.onnx_export import export_onnx

    precisions = tuple(precisions)
    model_dir = cached_demo_model(spec_name, size, seed=seed, log=log)
    key = f"{spec_name}-{size}-s{seed}-{'_'.join(precisions)}-" + _code_hash(
        "export", model_dir.name, precisions, export_kwargs)
    return _cached("exports", key, lambda tmp: export_onnx(model_dir, spec_name, tmp, precisions, log=log,
                                                            **export_kwargs))

"""Graph optimisation pass the exporter runs on the validated fp32 ONNX before quantisation / fp16 conversion.

`optimize_onnx(model_path, spec, out_path)` turns an optimum-exported graph into one made of ONNX Runtime's fused
CPU/GPU operators:

- RoBERTa (`rejection`): onnxruntime.transformers' BERT fusions — `Attention` (QKV in one GEMM + mask + softmax),
  `SkipLayerNormalization` (residual add + bias + LayerNorm), `BiasGelu`.
- Qwen3 (`intent-safety`): onnxruntime.transformers' `qwen3` fusions — `SimplifiedLayerNormalization` /
  `SkipSimplifiedLayerNormalization` (RMSNorm, residual + RMSNorm), `RotaryEmbedding` — then guardrt's own pass
  (kernels/qwen3_attention.py) folding q/k norm, rotary, repeat_kv, causal+padding mask, softmax and both attention
  matmuls into `GroupQueryAttention`.

The graph contract is unchanged (`input_ids`, `attention_mask` int64 [B, S] → `logits` float32 [B, num_labels]);
callers validate the result against PyTorch exactly like any export (tests/kernels/). Build time only: needs onnx
and onnxruntime (onnxruntime.transformers), never torch.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

__all__ = ["optimize_onnx", "OPTIMIZER_MODEL_TYPE", "FusionReport", "QUANTIZE_EXTRA_OPTIONS"]

# onnxruntime.quantization cannot infer types through com.microsoft ops (GroupQueryAttention, RotaryEmbedding,
# SkipSimplifiedLayerNormalization): quantizing a fused graph needs the default tensor type stated.
QUANTIZE_EXTRA_OPTIONS = {"DefaultTensorType": 1}  # onnx.TensorProto.FLOAT

# spec.model_type (HF config.model_type) -> onnxruntime.transformers optimizer model_type
OPTIMIZER_MODEL_TYPE = {"roberta": "bert", "bert": "bert", "qwen3": "qwen3"}

FusionReport = dict  # {"model_type", "fused_ops": {op: count}, "attention_layers", "nodes_before", "nodes_after"}

# Above this size the optimised model is written with one external-data file next to it (protobuf's 2 GiB limit;
# Triton loads a directory named model.onnx, so keep it to one file).
_EXTERNAL_DATA_THRESHOLD = 1 << 30


def _load_config(model_path: Path, config: Mapping[str, Any] | str | os.PathLike | None) -> dict:
    if isinstance(config, Mapping):
        return dict(config)
    candidates = [Path(config)] if config is not None else []
    candidates += [model_path.parent / "config.json", model_path.parent.parent / "config.json",
                   model_path.parent.parent / "hf" / "config.json"]
    for cand in candidates:
        if cand.is_dir():
            cand = cand / "config.json"
        if cand.is_file():
            return json.loads(cand.read_text())
    raise FileNotFoundError(f"no config.json for {model_path} (looked in {', '.join(str(c) for c in candidates)}); "
                            "pass config=")


def optimize_onnx(
    model_path: str | os.PathLike,
    spec,
    out_path: str | os.PathLike,
    *,
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    fuse_attention: bool = True,
) -> FusionReport:
    """Write a fused copy of the fp32 graph `model_path` to `out_path` and return what was fused.

    `spec` is a runtime.specs.ModelSpec (or a spec name, or a model_type string); `config` is the HF config (dict,
    file or directory) and defaults to the config.json next to the model or its parent. `fuse_attention=False`
    keeps attention as plain MatMul/Softmax (so a later quantiser can turn the attention matmuls into int8) while
    still fusing norms, rotary and GELU.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_path, out_path = Path(model_path), Path(out_path)
    model_type = getattr(spec, "model_type", None)
    if model_type is None:
        model_type = str(spec)
        try:
            from guardrt.runtime.specs import get_spec

            model_type = get_spec(model_type).model_type
        except Exception:  # noqa: BLE001 - a bare model_type string is also accepted
            pass
    if model_type not in OPTIMIZER_MODEL_TYPE:
        raise ValueError(f"no graph fusions for model_type {model_type!r}; known: {sorted(OPTIMIZER_MODEL_TYPE)}")
    cfg = _load_config(model_path, config)
    num_heads = int(cfg["num_attention_heads"])
    hidden_size = int(cfg["hidden_size"])
    opt_type = OPTIMIZER_MODEL_TYPE[model_type]
    options = FusionOptions(opt_type)
    if opt_type == "bert":
        options.enable_attention = fuse_attention
        # EmbedLayerNormalization assumes BERT position ids (0..S-1); RoBERTa's are padding-aware (cumsum of the
        # mask + pad id), so keep the embedding subgraph as exported.
        options.enable_embed_layer_norm = False
    import onnx

    before = onnx.load(str(model_path), load_external_data=False)
    nodes_before = len(before.graph.node)
    del before
    # opt_level=0: python fusions only. ORT's own graph optimisers run at session creation anyway, and running them
    # here would bake CPU-specific layouts into a graph that TensorRT and the CUDA EP also consume.
    logging.getLogger("onnxruntime.transformers").setLevel(logging.WARNING)
    model = optimize_model(str(model_path), model_type=opt_type, num_heads=num_heads, hidden_size=hidden_size,
                           optimization_options=options, opt_level=0, use_gpu=False)
    attention_layers = 0
    if model_type == "qwen3" and fuse_attention:
        from .qwen3_attention import fuse_qwen3_attention

        kv_heads = int(cfg.get("num_key_value_heads") or num_heads)
        attention_layers = fuse_qwen3_attention(model, num_heads=num_heads, kv_num_heads=kv_heads)
    if model_type == "qwen3":
        from .qwen3_attention import trim_rotary_caches

        max_positions = getattr(spec, "max_length", None) or int(cfg.get("max_position_embeddings", 0)) or None
        if max_positions:
            trim_rotary_caches(model, int(max_positions))
    elif opt_type == "bert":
        attention_layers = model.get_fused_operator_statistics().get("Attention", 0)
    stats = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    if model_type == "qwen3":
        stats["GroupQueryAttention"] = len(model.get_nodes_by_op_type("GroupQueryAttention"))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = sum(t.ByteSize() for t in model.model.graph.initializer)
    external = size > _EXTERNAL_DATA_THRESHOLD
    model.save_model_to_file(str(out_path), use_external_data_format=external, all_tensors_to_one_file=True)
    report: FusionReport = {
        "model_type": model_type,
        "optimizer_model_type": opt_type,
        "fused_ops": stats,
        "attention_layers": attention_layers,
        "num_layers": int(cfg.get("num_hidden_layers", 0)),
        "nodes_before": nodes_before,
        "nodes_after": len(model.model.graph.node),
        "external_data": external,
    }
    log.info("optimize_onnx %s -> %s: %s", model_path, out_path, report)
    return report

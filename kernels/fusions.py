"""Graph optimisation pass the exporter runs on the validated fp32 ONNX before quantisation / fp16 conversion.

`optimize_onnx(model_path, spec, out_path)` turns an optimum-exported graph into one made of ONNX Runtime's fused
CPU/GPU operators:

- RoBERTa (`rejection`): onnxruntime.transformers' BERT fusions — `SkipLayerNormalization`, `BiasGelu`, and on
  request (`attention_op=`) `MultiHeadAttention` / `Attention`. Measured slower on CPU than ONNX Runtime's own
  session-level optimisation of the plain graph, so the exporter hook (`graph_pass`) leaves RoBERTa as exported.
- Qwen3 (`intent-safety`): onnxruntime.transformers' `qwen3` norm fusions — `SimplifiedLayerNormalization` /
  `SkipSimplifiedLayerNormalization` (RMSNorm, residual + RMSNorm) — then guardrt's own pass
  (kernels/qwen3_attention.py): padded rows right-aligned at the graph inputs (kernels/right_align.py) and each
  layer's repeat_kv, causal+padding mask, softmax and both attention matmuls replaced by one `GroupQueryAttention`
  whose CPU kernel tiles (no [B, heads, S, S] scores, no [B, 1, S, S] mask), for every head_dim.

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

__all__ = ["optimize_onnx", "optimize_model_proto", "graph_pass", "GRAPH_PASS_SKIP", "OPTIMIZER_MODEL_TYPE",
           "FusionReport"]

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


def _infer_config(model) -> dict:
    """num_attention_heads / hidden_size / num_key_value_heads / num_hidden_layers read off an optimum-exported
    graph (used by the exporter hook, which hands over a ModelProto without the HF config)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    cfg: dict = {}
    emb = next((inits[n.input[0]] for n in model.graph.node
                if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2
                and "embed" in n.input[0].lower()), None)
    if emb is not None:
        cfg["hidden_size"] = int(emb.dims[1])
    import re

    layers = {m.group(1) for n in model.graph.node for m in [re.search(r"/layers?\.(\d+)/", n.name)] if m}
    cfg["num_hidden_layers"] = len(layers)
    q_norm = next((t for name, t in inits.items() if "q_norm.weight" in name), None)
    if q_norm is not None:  # qwen3: head_dim from the q/k norm, heads from the projection widths
        head_dim = int(q_norm.dims[0])
        widths = {}
        for n in model.graph.node:
            if n.op_type == "MatMul" and n.name.endswith(("q_proj/MatMul", "k_proj/MatMul")) and n.input[1] in inits:
                widths[n.name.rsplit("/", 2)[-2]] = int(inits[n.input[1]].dims[-1])
        cfg["num_attention_heads"] = widths["q_proj"] // head_dim
        cfg["num_key_value_heads"] = widths["k_proj"] // head_dim
        cfg["head_dim"] = head_dim
    else:  # BERT/RoBERTa: the [0, 0, heads, head_dim] Reshape constants of the attention block
        for n in model.graph.node:
            if n.op_type == "Constant" and "attention" in n.name and n.attribute and n.attribute[0].t.dims == [4]:
                val = numpy_helper.to_array(n.attribute[0].t)
                if val[2] > 0 and val[3] > 0 and int(val[2] * val[3]) == cfg.get("hidden_size"):
                    cfg["num_attention_heads"] = int(val[2])
                    break
        if not cfg.get("num_attention_heads"):  # 0/0: onnxruntime.transformers detects both from the graph
            cfg["num_attention_heads"], cfg["hidden_size"] = 0, 0
    return cfg


def _annotate_contrib_outputs(model) -> None:
    """Give every output of an op onnx does not know (com.microsoft ops, and ORT's ONNX-domain
    SimplifiedLayerNormalization) a float value_info when it has none: onnx shape inference cannot type them, and
    onnxruntime.quantization needs a type for every tensor it may quantise."""
    from onnx import TensorProto, defs, helper

    known = {v.name for v in list(model.graph.value_info) + list(model.graph.output)}
    for node in model.graph.node:
        if defs.has(node.op_type, node.domain or ""):
            continue
        for out in node.output:
            if out and out not in known:
                model.graph.value_info.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
                known.add(out)


def optimize_model_proto(model, spec, *, config: Mapping[str, Any] | None = None, fuse_attention: bool = True,
                         attention_op: str | None = None):
    """Fuse `model` (onnx.ModelProto or path) for `spec`; returns (onnx.ModelProto, FusionReport). See optimize_onnx."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

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
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    cfg = dict(config) if config is not None else _infer_config(model)
    num_heads = int(cfg.get("num_attention_heads") or 0)
    hidden_size = int(cfg.get("hidden_size") or 0)
    opt_type = OPTIMIZER_MODEL_TYPE[model_type]
    options = FusionOptions(opt_type)
    if opt_type == "bert":
        # Attention stays unfused unless an attention_op is asked for: measured on distilroberta shapes (2-core Zen 4,
        # benchmarks/results/inprocess.json), ORT's CPU MultiHeadAttention kernel is slower than the plain
        # MatMul/Softmax graph ONNX Runtime optimises itself (0.40x at B=1 L=512 fp32, -9% at B=16 L=128 int8).
        options.enable_attention = fuse_attention and attention_op is not None
        # MultiHeadAttention keeps the Q/K/V projections as MatMuls, so int8 quantisation reaches them (the packed
        # `Attention` op hides the QKV weights from the MatMul quantiser).
        if (attention_op or "MultiHeadAttention") == "MultiHeadAttention":
            options.use_multi_head_attention = True
            options.disable_multi_head_attention_bias = True
        # The default BERT mask format (MaskIndexEnd) reduces the mask to per-row lengths, i.e. assumes right padding;
        # the raw 2D mask keeps any padding side exact (guardrt validates left- and right-padded batches).
        options.use_raw_attention_mask(True)
        # EmbedLayerNormalization assumes BERT position ids (0..S-1); RoBERTa's are padding-aware (cumsum of the
        # mask + pad id), so keep the embedding subgraph as exported.
        options.enable_embed_layer_norm = False
    if model_type == "qwen3":
        # Norm fusions only: attention is guardrt's own pass below, and rotary stays as exported (ORT's
        # RotaryEmbedding fusion feeds position_ids [1, S], which its kernel rejects for batch > 1).
        options.enable_attention = False
        options.enable_rotary_embeddings = False
    nodes_before = len(model.graph.node)
    # opt_level=0: python fusions only. ORT's own graph optimisers run at session creation anyway, and running them
    # here would bake CPU-specific layouts into a graph that the CUDA EP also consumes.
    logging.getLogger("onnxruntime.transformers").setLevel(logging.WARNING)
    fused = optimize_model(model, model_type=opt_type, num_heads=num_heads, hidden_size=hidden_size,
                           optimization_options=options, opt_level=0, use_gpu=False)
    attention_layers = 0
    if model_type == "qwen3" and fuse_attention:
        from .qwen3_attention import fuse_qwen3_attention

        head_dim = int(cfg.get("head_dim") or (hidden_size // num_heads if num_heads else 0))
        kv_heads = int(cfg.get("num_key_value_heads") or num_heads)
        attention_layers = fuse_qwen3_attention(fused.model, num_heads=num_heads, kv_num_heads=kv_heads,
                                                head_dim=head_dim)
    stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    from .graph_utils import count_ops

    for op in ("GroupQueryAttention", "MultiHeadAttention", "Attention"):
        count = count_ops(fused.model.graph, op)
        if count:
            stats[op] = count
    if opt_type == "bert":
        attention_layers = stats.get("Attention", 0) + stats.get("MultiHeadAttention", 0)
    out = fused.model
    if any(n.domain == "com.microsoft" for n in out.graph.node) and not any(
            o.domain == "com.microsoft" for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    _annotate_contrib_outputs(out)
    report: FusionReport = {
        "model_type": model_type,
        "optimizer_model_type": opt_type,
        "fused_ops": stats,
        "attention_layers": attention_layers,
        "num_layers": int(cfg.get("num_hidden_layers", 0)),
        "nodes_before": nodes_before,
        "nodes_after": len(out.graph.node),
    }
    if model_type == "qwen3" and attention_layers:
        report["attention"] = ("GroupQueryAttention per layer (rows right-aligned at the inputs; no S x S tensor: "
                               "flash kernel on CPU for fp32)")
        report["head_dim"] = head_dim
    return out, report


# Model types whose python-level fusions measured slower than ONNX Runtime's own session-level optimisation of the
# plain graph (distilroberta shapes, 2-core Zen 4: int8-dynamic 2.82x vs 3.22x PyTorch at B=16 L=128, see
# benchmarks/results/inprocess_rejection_v2.json): the exporter hook leaves them as exported.
GRAPH_PASS_SKIP = {"roberta": "ONNX Runtime's own fusions of the plain graph measured faster on CPU",
                   "bert": "ONNX Runtime's own fusions of the plain graph measured faster on CPU"}


def graph_pass(model, spec):
    """The exporter's `graph_pass(model, spec) -> model` hook (export.onnx_export): fused ModelProto, dims read
    off the graph; model types in GRAPH_PASS_SKIP come back unchanged. The report of the last call is kept in
    `graph_pass.last_report`."""
    model_type = getattr(spec, "model_type", None)
    if model_type in GRAPH_PASS_SKIP:
        graph_pass.last_report = {"model_type": model_type, "skipped": GRAPH_PASS_SKIP[model_type], "fused_ops": {}}
        return model
    fused, report = optimize_model_proto(model, spec)
    graph_pass.last_report = report
    log.info("graph_pass %s: %s", getattr(spec, "name", spec), report)
    return fused


graph_pass.last_report = None


def optimize_onnx(
    model_path: str | os.PathLike,
    spec,
    out_path: str | os.PathLike,
    *,
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    fuse_attention: bool = True,
    attention_op: str | None = None,
) -> FusionReport:
    """Write a fused copy of the fp32 graph `model_path` to `out_path` and return what was fused.

    `spec` is a runtime.specs.ModelSpec (or a spec name, or a model_type string); `config` is the HF config (dict,
    file or directory), by default the config.json next to the model or its parent, else read off the graph.
    `fuse_attention=False` keeps attention as plain MatMul/Softmax while still fusing norms (and GELU);
    `attention_op` ("MultiHeadAttention" or "Attention") turns on BERT-family attention fusion with that operator
    (off by default: slower than ORT's own handling of the plain graph on CPU, see optimize_model_proto).
    """
    import onnx

    model_path, out_path = Path(model_path), Path(out_path)
    if getattr(spec, "model_type", spec) not in OPTIMIZER_MODEL_TYPE and not hasattr(spec, "model_type"):
        from guardrt.runtime.specs import SPECS

        if str(spec) not in SPECS:
            raise ValueError(f"no graph fusions for model_type {spec!r}; known: {sorted(OPTIMIZER_MODEL_TYPE)}")
    try:
        cfg = _load_config(model_path, config)
    except FileNotFoundError:
        cfg = None
    fused, report = optimize_model_proto(onnx.load(str(model_path)), spec, config=cfg,
                                         fuse_attention=fuse_attention, attention_op=attention_op)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = sum(t.ByteSize() for t in fused.graph.initializer)
    external = size > _EXTERNAL_DATA_THRESHOLD
    if external:
        onnx.save_model(fused, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=out_path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(fused, str(out_path))
    report["external_data"] = external
    log.info("optimize_onnx %s -> %s: %s", model_path, out_path, report)
    return report

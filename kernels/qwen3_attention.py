"""Fuse the attention core of each Qwen3 layer into one `com.microsoft.GroupQueryAttention` that never holds an
S x T score matrix.

Input: a Qwen3 graph as exported by optimum (torchscript), optionally after onnxruntime.transformers' norm
fusions. Each layer computes, after q/k RMS norm and rotary (both left as they are):

    MatMul(Q·√s, Kᵀ·√s) → Add([B, 1, S, S] causal+padding mask) → Softmax → [Where(IsNaN)] → MatMul(·, V)
    K, V: [B, kv_heads, S, D] → repeat_kv (Unsqueeze → Expand → Reshape) → [B, heads, S, D]
    → Transpose → Reshape [B, S, heads·D] → o_proj

Output: per layer one GroupQueryAttention reading the rotated Q and K and V in [B, S, heads·D] (no repeat_kv:
the kernel maps query heads to kv heads), `scale` = s, no rotary (already applied), causal by construction, keys
past each row's length masked through `seqlens_k` (right padding: see kernels/right_align.py, which this pass
applies to the graph inputs) and the `present_key` / `present_value` outputs requested.

Why this op and these inputs (measured on this machine with ONNX Runtime 1.32, single operator, S = 4,096; peak RSS
over the inputs, benchmarks/results/long_context.json has the full-model numbers):

* ONNX Runtime 1.32's CPU GroupQueryAttention has a tiled flash kernel (MlasFlashAttentionGQA: online softmax over
  L2-sized blocks of queries and keys) that it uses only for fp32 when `present_key` and `present_value` are
  requested; otherwise it allocates B·N·S·T fp32 probabilities. heads 16 / kv 8 / D 128: 105 MB with the present
  outputs, 1,124 MB without; heads 4 / kv 2 / D 8: 2 MB vs 266 MB.
* Rows of different lengths (`seqlens_k`) run the flash kernel row by row (B = 4: 8 MB at D 8).
* MultiHeadAttention's CPU flash path (MlasFlashAttention) is taken only without a mask, bias, past or causal flag,
  so it cannot express a causal classifier; with a bias it allocates the full probabilities (1,188 MB). The ONNX
  `Attention` op (opset 23/24) on CPU allocates them too (1,153 MB) and refuses a [B, 1, 1, T] mask.
* GroupQueryAttention's CPU kernel needs head_size % 8 == 0 (rotary inside it: % 16): other head sizes are
  zero-padded to the next multiple of 8 here (zero columns add nothing to Q·Kᵀ, zero value columns are sliced off),
  so every head_dim fuses. Rotary stays outside the op for the same reason.
* The fp16 CPU kernel has no flash path (B·N·S·T fp32 probabilities, 1,143 MB at D 128): fp16 is the CUDA
  precision, where GroupQueryAttention runs flash / memory-efficient attention. The CUDA kernel is registered for
  fp16 / bf16 only and rejects `attention_bias`; an fp32 graph on the CUDA EP runs this node on the CPU EP.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from .graph_utils import GraphIndex, add_initializer, const_value, perm_of, prune_and_sort
from .right_align import right_align_inputs

log = logging.getLogger(__name__)

__all__ = ["AttentionFusionError", "GQA_HEAD_SIZE_MULTIPLE", "fuse_qwen3_attention", "match_attention_layers"]

# ONNX Runtime's CPU GroupQueryAttention rejects other head sizes ("head_size must be a multiple of 8").
GQA_HEAD_SIZE_MULTIPLE = 8
PREFIX = "GuardrtGQA"


class AttentionFusionError(RuntimeError):
    """The graph does not have the expected Qwen3 attention structure (nothing was changed)."""


@dataclass
class AttentionLayer:
    q: str  # rotated queries [B, heads, S, D]
    k: str  # rotated keys [B, kv_heads, S, D] (before repeat_kv)
    v: str  # values [B, kv_heads, S, D] (before repeat_kv)
    out: str  # attention output [B, S, heads·D], the o_proj input
    scale: float
    name: str  # the Softmax node's name, for messages


def _scaled_input(index: GraphIndex, name: str):
    """(data input, scalar) of a Mul by a scalar constant producing `name`, else (None, None)."""
    mul = index.op(name, "Mul")
    if mul is None:
        return None, None
    for i, inp in enumerate(mul.input):
        value = const_value(index, inp)
        if value is not None and value.size == 1:
            return mul.input[1 - i], float(value.reshape(()))
    return None, None


def _before_repeat_kv(index: GraphIndex, name: str) -> str:
    """The [B, kv_heads, S, D] tensor feeding HF's repeat_kv (Unsqueeze → Expand → Reshape), or `name` itself when
    there is no repeat (heads == kv_heads)."""
    reshape = index.op(name, "Reshape")
    expand = index.op(reshape.input[0], "Expand") if reshape is not None else None
    unsqueeze = index.op(expand.input[0], "Unsqueeze") if expand is not None else None
    return unsqueeze.input[0] if unsqueeze is not None else name


def _match(index: GraphIndex, softmax) -> AttentionLayer | None:
    add = index.op(softmax.input[0], "Add")
    if add is None:
        return None
    qk = next((index.op(i, "MatMul") for i in add.input if index.op(i, "MatMul") is not None), None)
    if qk is None:
        return None
    q, sq = _scaled_input(index, qk.input[0])
    kt, sk = _scaled_input(index, qk.input[1])
    if q is None or kt is None:
        return None
    k_transpose = index.op(kt, "Transpose")
    if k_transpose is None or perm_of(k_transpose) != [0, 1, 3, 2]:
        return None
    k = _before_repeat_kv(index, k_transpose.input[0])
    # after the softmax: optionally optimum's NaN guard (Where(IsNaN(p), 0, p)), then the product with V
    probs, children = softmax.output[0], index.consumers.get(softmax.output[0], [])
    where = next((c for c in children if c.op_type == "Where"), None)
    if where is not None:
        probs, children = where.output[0], index.consumers.get(where.output[0], [])
    pv = next((c for c in children if c.op_type == "MatMul" and c.input[0] == probs), None)
    if pv is None:
        return None
    v = _before_repeat_kv(index, pv.input[1])
    after = index.consumers.get(pv.output[0], [])
    if len(after) != 1 or after[0].op_type != "Transpose" or perm_of(after[0]) != [0, 2, 1, 3]:
        return None
    reshape = index.consumers.get(after[0].output[0], [])
    if len(reshape) != 1 or reshape[0].op_type != "Reshape":
        return None
    return AttentionLayer(q=q, k=k, v=v, out=reshape[0].output[0], scale=sq * sk, name=softmax.name)


def match_attention_layers(model: onnx.ModelProto) -> list[AttentionLayer]:
    """Every Softmax of the graph as a Qwen3 attention layer; AttentionFusionError when any does not match (a
    partly fused graph would still hold S x S scores)."""
    index = GraphIndex(model.graph)
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    layers = [_match(index, s) for s in softmaxes]
    unmatched = [s.name for s, layer in zip(softmaxes, layers) if layer is None]
    if unmatched:
        raise AttentionFusionError(f"{len(unmatched)} of {len(softmaxes)} attention blocks do not have the Qwen3 "
                                   f"pattern (first: {unmatched[0]})")
    if not layers:
        raise AttentionFusionError("no attention (Softmax) found")
    return layers


def fuse_qwen3_attention(model: onnx.ModelProto, num_heads: int, kv_num_heads: int, head_dim: int,
                         ids_input: str = "input_ids", mask_input: str = "attention_mask") -> int:
    """Rewrite `model` in place (see module docstring); returns the number of fused layers. Raises
    AttentionFusionError, leaving the model untouched, when a layer does not match."""
    if num_heads <= 0 or kv_num_heads <= 0 or head_dim <= 0 or num_heads % kv_num_heads:
        raise AttentionFusionError(f"bad attention dims: heads {num_heads}, kv heads {kv_num_heads}, "
                                   f"head_dim {head_dim}")
    layers = match_attention_layers(model)
    graph = model.graph
    lengths = right_align_inputs(model, ids_input, mask_input)
    padded_dim = -(-head_dim // GQA_HEAD_SIZE_MULTIPLE) * GQA_HEAD_SIZE_MULTIPLE
    p = PREFIX
    flat = add_initializer(graph, f"{p}/flat_shape", np.array([0, 0, -1], np.int64))
    consts = {}
    if padded_dim != head_dim:
        consts["pads"] = add_initializer(graph, f"{p}/head_pads",
                                         np.array([0, 0, 0, 0, 0, 0, 0, padded_dim - head_dim], np.int64))
        consts["split"] = add_initializer(graph, f"{p}/split_heads", np.array([0, 0, num_heads, padded_dim], np.int64))
        consts["starts"] = add_initializer(graph, f"{p}/slice_starts", np.array([0], np.int64))
        consts["ends"] = add_initializer(graph, f"{p}/slice_ends", np.array([head_dim], np.int64))
        consts["axes"] = add_initializer(graph, f"{p}/slice_axes", np.array([3], np.int64))
    new_nodes = []
    for i, layer in enumerate(layers):
        lp = f"{p}/layer{i}"
        inputs = [_to_bsd(new_nodes, lp, role, name, flat, consts.get("pads"))
                  for role, name in (("q", layer.q), ("k", layer.k), ("v", layer.v))]
        gqa_out = f"{lp}/output"
        new_nodes.append(helper.make_node(
            "GroupQueryAttention",
            inputs + ["", "", lengths.seqlens_k, lengths.total_sequence_length],
            # present_key / present_value: the CPU kernel takes its flash (tiled) path only when they are requested
            [gqa_out, f"{lp}/present_key", f"{lp}/present_value"],
            name=f"{lp}/GroupQueryAttention", domain="com.microsoft",
            num_heads=num_heads, kv_num_heads=kv_num_heads, scale=float(layer.scale), do_rotary=0))
        if padded_dim != head_dim:
            new_nodes += [
                helper.make_node("Reshape", [gqa_out, consts["split"]], [f"{lp}/out_heads"], name=f"{lp}/SplitHeads"),
                helper.make_node("Slice", [f"{lp}/out_heads", consts["starts"], consts["ends"], consts["axes"]],
                                 [f"{lp}/out_sliced"], name=f"{lp}/DropHeadPad"),
                helper.make_node("Reshape", [f"{lp}/out_sliced", flat], [f"{lp}/out_flat"], name=f"{lp}/MergeHeads"),
            ]
            gqa_out = f"{lp}/out_flat"
        _replace_input(graph, layer.out, gqa_out)
    graph.node.extend(new_nodes)
    prune_and_sort(graph)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    log.info("fused %d Qwen3 attention layers into GroupQueryAttention (head_dim %d%s)", len(layers), head_dim,
             f", padded to {padded_dim}" if padded_dim != head_dim else "")
    return len(layers)


def _to_bsd(nodes: list, lp: str, role: str, name: str, flat: str, pads: str | None) -> str:
    """[B, heads, S, D] -> [B, S, heads·D'] (D' = D zero-padded to the kernel's multiple when `pads`)."""
    out = f"{lp}/{role}_bsnh"
    nodes.append(helper.make_node("Transpose", [name], [out], perm=[0, 2, 1, 3], name=f"{lp}/Transpose_{role}"))
    if pads:
        nodes.append(helper.make_node("Pad", [out, pads], [f"{out}_padded"], name=f"{lp}/PadHead_{role}"))
        out = f"{out}_padded"
    nodes.append(helper.make_node("Reshape", [out, flat], [f"{lp}/{role}_bsd"], name=f"{lp}/Flatten_{role}"))
    return f"{lp}/{role}_bsd"


def _replace_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for out in graph.output:
        if out.name == old:
            raise AttentionFusionError(f"attention output {old} is a graph output")


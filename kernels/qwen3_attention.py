"""Fuse Qwen3 self-attention into ONNX Runtime's `com.microsoft.GroupQueryAttention` contrib op.

Input: a Qwen3 graph exported by optimum (torchscript) and already passed through onnxruntime.transformers'
`qwen3` fusions, so each layer reads

    q_proj → Reshape → SimplifiedLayerNormalization(q_norm) → Transpose → RotaryEmbedding ─┐
    k_proj → Reshape → SimplifiedLayerNormalization(k_norm) → Transpose → RotaryEmbedding → repeat_kv → Transpose ─┤
    v_proj → Reshape → Transpose → repeat_kv ─────────────────────────────────────────────┐  Mul·Mul(√scale)
                                                                   MatMul(P, V) ◀── Where(IsNaN) ◀── Softmax ◀── Add(mask) ◀── MatMul(Q, Kᵀ)
    MatMul(P, V) → Transpose → Reshape → o_proj

Output: per layer one GroupQueryAttention node reading the three projections directly (q/k RMS norm, rotary,
repeat_kv, causal mask, softmax and both attention matmuls inside one CPU kernel that never materialises the
expanded K/V) plus an additive padding bias shared by all layers.

Why the numbers are the same as the reference: HF's sdpa path applies q/k RMS norm, then rotary with position ids
0..S-1 (Qwen3's classification forward does not shift positions for left padding), causal + padding mask, softmax
with scale 1/√head_dim. GQA with `do_rotary=1`, `q_norm_weight`/`k_norm_weight`, `causal=1`, `seqlens_k = S-1` for
every row (the whole padded row is "the prompt") and `attention_bias` = 0 / -30000 for real / padded keys computes
the same. A finite bias (not -inf) keeps all-masked rows (left-pad queries, whose output pooling never reads)
finite, so no NaN leaks into later layers; -30000 also survives a later fp16 conversion.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

__all__ = ["fuse_qwen3_attention", "trim_rotary_caches", "MASK_FILTER_VALUE"]

MASK_FILTER_VALUE = -30000.0
GQA_HEAD_DIM_MULTIPLE = 16


@dataclass
class _Layer:
    q_in: str  # q_proj output [B, S, N*D]
    k_in: str
    v_in: str
    q_norm: onnx.NodeProto
    k_norm: onnx.NodeProto
    rotary_q: onnx.NodeProto
    out_name: str  # [B, S, N*D], the o_proj input
    scale: float
    nodes: list  # nodes made dead by the fusion (removed by pruning, listed for the report)


def _producer(model, name):
    return model.output_name_to_node().get(name)


def _const_value(model, name):
    init = model.get_initializer(name)
    if init is not None:
        return numpy_helper.to_array(init)
    node = _producer(model, name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def _path_up(model, name, ops):
    """Follow first inputs upward through `ops` (op types, in order); return the nodes or None."""
    nodes = []
    for op in ops:
        node = _producer(model, name)
        if node is None or node.op_type != op:
            return None
        nodes.append(node)
        name = node.input[0]
    return nodes


def _scale_of(model, mul):
    for inp in mul.input:
        val = _const_value(model, inp)
        if val is not None and val.size == 1:
            return float(val.reshape(())), [i for i in mul.input if i != inp][0]
    return None, None


def _match_layer(model, softmax) -> _Layer | None:
    out2node = model.output_name_to_node()
    in2nodes = model.input_name_to_nodes()
    add = out2node.get(softmax.input[0])
    if add is None or add.op_type != "Add":
        return None
    qk = next((out2node.get(i) for i in add.input if out2node.get(i) is not None and out2node[i].op_type == "MatMul"), None)
    if qk is None:
        return None
    mul_q, mul_k = out2node.get(qk.input[0]), out2node.get(qk.input[1])
    if mul_q is None or mul_k is None or mul_q.op_type != "Mul" or mul_k.op_type != "Mul":
        return None
    sq, q_rot_name = _scale_of(model, mul_q)
    sk, kt_name = _scale_of(model, mul_k)
    if sq is None or sk is None:
        return None
    rotary_q = out2node.get(q_rot_name)
    if rotary_q is None or rotary_q.op_type != "RotaryEmbedding":
        return None
    q_chain = _path_up(model, rotary_q.input[0], ["Transpose", "SimplifiedLayerNormalization", "Reshape"])
    if q_chain is None:
        return None
    q_norm = q_chain[1]
    q_in = q_chain[2].input[0]
    # K: Transpose(perm 0,1,3,2) ← Reshape ← Expand ← Unsqueeze ← RotaryEmbedding ← Transpose ← k_norm ← Reshape ← k_proj
    k_chain = _path_up(model, kt_name, ["Transpose", "Reshape", "Expand", "Unsqueeze", "RotaryEmbedding", "Transpose",
                                        "SimplifiedLayerNormalization", "Reshape"])
    if k_chain is None:
        return None
    k_norm, k_in = k_chain[6], k_chain[7].input[0]
    # after softmax: optional IsNaN/Where guard, then MatMul with V
    children = in2nodes.get(softmax.output[0], [])
    pv = next((c for c in children if c.op_type == "MatMul"), None)
    if pv is None:
        where = next((c for c in children if c.op_type == "Where"), None)
        if where is None:
            return None
        pv = next((c for c in in2nodes.get(where.output[0], []) if c.op_type == "MatMul"), None)
        if pv is None:
            return None
    v_chain = _path_up(model, pv.input[1], ["Reshape", "Expand", "Unsqueeze", "Transpose", "Reshape"])
    if v_chain is None:
        return None
    v_in = v_chain[4].input[0]
    tr = in2nodes.get(pv.output[0], [])
    if len(tr) != 1 or tr[0].op_type != "Transpose":
        return None
    rs = in2nodes.get(tr[0].output[0], [])
    if len(rs) != 1 or rs[0].op_type != "Reshape":
        return None
    return _Layer(q_in=q_in, k_in=k_in, v_in=v_in, q_norm=q_norm, k_norm=k_norm, rotary_q=rotary_q,
                  out_name=rs[0].output[0], scale=sq * sk, nodes=[softmax, qk, pv, tr[0], rs[0]])


def _norm_eps(node) -> float:
    for a in node.attribute:
        if a.name == "epsilon":
            return float(a.f)
    return 1e-6


def trim_rotary_caches(model, max_positions: int) -> int:
    """Cut the RotaryEmbedding cos/sin caches (the optimizer sizes them for 131072 positions, ~67 MB at head_dim
    128) to `max_positions` rows; values are unchanged. Returns the number of caches trimmed."""
    names = {i for n in model.get_nodes_by_op_type("RotaryEmbedding") for i in n.input[2:4]}
    names |= {i for n in model.get_nodes_by_op_type("GroupQueryAttention") for i in n.input[7:9] if i}
    trimmed = 0
    for name in names:
        init = model.get_initializer(name)
        if init is None or init.dims[0] <= max_positions:
            continue
        arr = numpy_helper.to_array(init)[:max_positions]
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        trimmed += 1
    return trimmed


def fuse_qwen3_attention(model, num_heads: int, kv_num_heads: int, mask_input: str = "attention_mask") -> int:
    """Rewrite every matched Qwen3 attention block of `model` (an onnxruntime.transformers OnnxModel) in place into
    GroupQueryAttention; returns the number of fused layers. Unmatched layers are left untouched (still correct)."""
    layers = [l for l in (_match_layer(model, s) for s in model.get_nodes_by_op_type("Softmax")) if l is not None]
    if not layers:
        return 0
    norm_w = model.get_initializer(layers[0].q_norm.input[1])
    head_dim = int(norm_w.dims[-1]) if norm_w is not None else 0
    if head_dim % GQA_HEAD_DIM_MULTIPLE:
        # ORT's GQA kernels need head_size % 16 == 0 (checked at run time); keep the unfused, exact graph.
        log.info("head_dim %d is not a multiple of %d: attention left unfused", head_dim, GQA_HEAD_DIM_MULTIPLE)
        return 0
    cos_cache, sin_cache = layers[0].rotary_q.input[2], layers[0].rotary_q.input[3]
    graph = model.model.graph
    new_nodes = []
    # Shared per-batch tensors, computed once from attention_mask [B, T] (int64):
    #   seqlens_k[b] = T - 1 (int32), total_sequence_length = T (int32 scalar), bias [B, 1, S, T] additive float.
    p = "GuardrtGQA"
    new_nodes += [
        helper.make_node("Shape", [mask_input], [f"{p}/mask_shape"], name=f"{p}/Shape"),
        helper.make_node("Gather", [f"{p}/mask_shape", f"{p}/one_i64"], [f"{p}/T"], axis=0, name=f"{p}/GatherT"),
        helper.make_node("Gather", [f"{p}/mask_shape", f"{p}/zero_i64"], [f"{p}/B"], axis=0, name=f"{p}/GatherB"),
        helper.make_node("Cast", [f"{p}/T"], [f"{p}/total_seq_len"], to=TensorProto.INT32, name=f"{p}/CastT"),
        helper.make_node("Sub", [f"{p}/total_seq_len", f"{p}/one_i32"], [f"{p}/T_minus_1"], name=f"{p}/SubT"),
        helper.make_node("Unsqueeze", [f"{p}/B", f"{p}/axes0"], [f"{p}/B_1d"], name=f"{p}/UnsqB"),
        helper.make_node("Expand", [f"{p}/T_minus_1", f"{p}/B_1d"], [f"{p}/seqlens_k"], name=f"{p}/ExpandSeqlens"),
        helper.make_node("Cast", [mask_input], [f"{p}/mask_bool"], to=TensorProto.BOOL, name=f"{p}/CastMask"),
        helper.make_node("Where", [f"{p}/mask_bool", f"{p}/zero_f", f"{p}/neg_f"], [f"{p}/bias_bt"], name=f"{p}/Where"),
        helper.make_node("Unsqueeze", [f"{p}/bias_bt", f"{p}/axes12"], [f"{p}/bias_b11t"], name=f"{p}/UnsqBias"),
        helper.make_node("Unsqueeze", [f"{p}/T", f"{p}/axes0"], [f"{p}/T_1d"], name=f"{p}/UnsqT"),
        helper.make_node("Concat", [f"{p}/B_1d", f"{p}/one_1d", f"{p}/T_1d", f"{p}/T_1d"], [f"{p}/bias_shape"], axis=0,
                         name=f"{p}/ConcatShape"),
        helper.make_node("Expand", [f"{p}/bias_b11t", f"{p}/bias_shape"], [f"{p}/attention_bias"], name=f"{p}/ExpandBias"),
    ]
    for name, arr in [("one_i64", np.array(1, np.int64)), ("zero_i64", np.array(0, np.int64)),
                      ("one_i32", np.array(1, np.int32)), ("axes0", np.array([0], np.int64)),
                      ("axes12", np.array([1, 2], np.int64)), ("one_1d", np.array([1], np.int64)),
                      ("zero_f", np.array(0.0, np.float32)), ("neg_f", np.array(MASK_FILTER_VALUE, np.float32)),
                      ("bs_flat", np.array([0, 0, -1], np.int64))]:
        model.add_initializer(numpy_helper.from_array(arr, f"{p}/{name}"))
    for i, layer in enumerate(layers):
        attrs = dict(num_heads=num_heads, kv_num_heads=kv_num_heads, do_rotary=1, rotary_interleaved=0, causal=1,
                     scale=float(layer.scale))
        # q/k RMS norm stays a SimplifiedLayerNormalization over [B, S, heads, D]: GQA's q_norm_weight inputs are
        # implemented only on the CUDA/WebGPU EPs. Flatten heads back to [B, S, heads*D] for GQA.
        q_flat, k_flat = f"{p}/layer{i}/q_normed", f"{p}/layer{i}/k_normed"
        new_nodes += [
            helper.make_node("Reshape", [layer.q_norm.output[0], f"{p}/bs_flat"], [q_flat], name=f"{p}/layer{i}/ReshapeQ"),
            helper.make_node("Reshape", [layer.k_norm.output[0], f"{p}/bs_flat"], [k_flat], name=f"{p}/layer{i}/ReshapeK"),
        ]
        gqa = helper.make_node(
            "GroupQueryAttention",
            [q_flat, k_flat, layer.v_in, "", "", f"{p}/seqlens_k", f"{p}/total_seq_len", cos_cache, sin_cache,
             "", f"{p}/attention_bias"],
            [layer.out_name + "/gqa"],
            name=f"{p}/layer{i}",
            domain="com.microsoft",
            **attrs,
        )
        new_nodes.append(gqa)
        model.replace_input_of_all_nodes(layer.out_name, layer.out_name + "/gqa")
    model.add_nodes(new_nodes)
    model.prune_graph()
    if not any(o.domain == "com.microsoft" for o in model.model.opset_import):
        model.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.topological_sort()
    log.info("fused %d Qwen3 attention layers into GroupQueryAttention", len(layers))
    return len(layers)

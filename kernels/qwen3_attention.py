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
    def walk(graph):
        for node in graph.node:
            if node.op_type == "RotaryEmbedding":
                yield from node.input[2:4]
            elif node.op_type == "GroupQueryAttention":
                yield from (i for i in node.input[7:9] if i)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g)

    names = set(walk(model.model.graph))
    trimmed = 0
    for name in names:
        init = model.get_initializer(name)
        if init is None or init.dims[0] <= max_positions:
            continue
        arr = numpy_helper.to_array(init)[:max_positions]
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        trimmed += 1
    return trimmed


def fuse_qwen3_attention(model, num_heads: int, kv_num_heads: int, mask_input: str = "attention_mask",
                         query_chunks: int = 4) -> int:
    """Rewrite every matched Qwen3 attention block of `model` (an onnxruntime.transformers OnnxModel) in place into
    GroupQueryAttention; returns the number of fused layers. Unmatched layers are left untouched (still correct).

    query_chunks=n > 1 splits the queries of a batch-1 request into n chunks (see `_chunked_layer`): ORT's CPU GQA
    kernel computes the full S x T score matrix and zeroes the causal upper triangle after the softmax, so one call
    costs a full S x S attention; n calls, chunk j attending to keys [0, c_{j+1}) with chunk j-1's present K/V as
    its past, do (n+1)/(2n) of that work (5/8 for n=4)."""
    if query_chunks < 1:
        raise ValueError("query_chunks must be >= 1")
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
                      ("bs_flat", np.array([0, 0, -1], np.int64)), ("two_i64", np.array(2, np.int64)),
                      ("zero_1d", np.array([0], np.int64)), ("zeros2", np.array([0, 0], np.int64)),
                      ("axes1", np.array([1], np.int64)), ("axes2", np.array([2], np.int64)),
                      ("axes23", np.array([2, 3], np.int64))]:
        model.add_initializer(numpy_helper.from_array(arr, f"{p}/{name}"))
    if query_chunks > 1:
        new_nodes += _chunked_shared(p, query_chunks)
        for j in range(1, query_chunks + 1):
            model.add_initializer(numpy_helper.from_array(np.array(j, np.int64), f"{p}/const{j}"))
        model.add_initializer(numpy_helper.from_array(np.array(query_chunks, np.int64), f"{p}/n_chunks"))
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
        out = layer.out_name + "/gqa"
        if query_chunks > 1:
            # ORT's GQA accepts a past context with a multi-token query only for batch 1: split for B == 1 (the
            # long single-request case), one call otherwise. The If holds no quantisable op (the projections are
            # outside it), so quantisation is unaffected.
            then_nodes = _chunked_layer(p, i, q_flat, k_flat, layer.v_in, out + "/then", cos_cache, sin_cache,
                                        attrs, query_chunks)
            else_nodes = [helper.make_node(
                "GroupQueryAttention",
                [q_flat, k_flat, layer.v_in, "", "", f"{p}/seqlens_k", f"{p}/total_seq_len", cos_cache, sin_cache,
                 "", f"{p}/attention_bias"],
                [out + "/else"], name=f"{p}/layer{i}", domain="com.microsoft", **attrs)]
            out_info = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # noqa: E731
            new_nodes.append(helper.make_node(
                "If", [f"{p}/use_chunks"], [out], name=f"{p}/layer{i}/IfBatch1",
                then_branch=helper.make_graph(then_nodes, f"{p}_layer{i}_chunked", [], [out_info(out + "/then")]),
                else_branch=helper.make_graph(else_nodes, f"{p}_layer{i}_single", [], [out_info(out + "/else")])))
        else:
            new_nodes.append(helper.make_node(
                "GroupQueryAttention",
                [q_flat, k_flat, layer.v_in, "", "", f"{p}/seqlens_k", f"{p}/total_seq_len", cos_cache, sin_cache,
                 "", f"{p}/attention_bias"],
                [out], name=f"{p}/layer{i}", domain="com.microsoft", **attrs))
        model.replace_input_of_all_nodes(layer.out_name, out)
    model.add_nodes(new_nodes)
    _prune_and_sort(model.model.graph)
    if not any(o.domain == "com.microsoft" for o in model.model.opset_import):
        model.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    log.info("fused %d Qwen3 attention layers into GroupQueryAttention", len(layers))
    return len(layers)


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _chunked_shared(p, n):
    """Chunk boundaries c_j = (j * S) // n (int64 1-D and int32 scalars), per-chunk seqlens_k and attention-bias
    slices, and the If condition: batch 1 (GQA takes a past context with a multi-token query only then) and S >= n
    (every chunk non-empty)."""
    nodes = [
        helper.make_node("Equal", [f"{p}/B", f"{p}/one_i64"], [f"{p}/batch_is_1"], name=f"{p}/BatchIs1"),
        helper.make_node("GreaterOrEqual", [f"{p}/T", f"{p}/n_chunks"], [f"{p}/long_enough"], name=f"{p}/LongEnough"),
        helper.make_node("And", [f"{p}/batch_is_1", f"{p}/long_enough"], [f"{p}/use_chunks"], name=f"{p}/UseChunks"),
    ]
    for j in range(1, n):
        nodes += [
            helper.make_node("Mul", [f"{p}/T", f"{p}/const{j}"], [f"{p}/jT{j}"], name=f"{p}/MulJ{j}"),
            helper.make_node("Div", [f"{p}/jT{j}", f"{p}/n_chunks"], [f"{p}/c{j}"], name=f"{p}/DivJ{j}"),
        ]
    nodes.append(helper.make_node("Identity", [f"{p}/T"], [f"{p}/c{n}"], name=f"{p}/CN"))
    for j in range(1, n + 1):
        nodes += [
            helper.make_node("Unsqueeze", [f"{p}/c{j}", f"{p}/axes0"], [f"{p}/c{j}_1d"], name=f"{p}/UnsqC{j}"),
            helper.make_node("Cast", [f"{p}/c{j}"], [f"{p}/c{j}_i32"], to=TensorProto.INT32, name=f"{p}/CastC{j}"),
            helper.make_node("Sub", [f"{p}/c{j}_i32", f"{p}/one_i32"], [f"{p}/c{j}_minus_1"], name=f"{p}/SubC{j}"),
            # [1]: this branch runs for batch 1 only
            helper.make_node("Unsqueeze", [f"{p}/c{j}_minus_1", f"{p}/axes0"], [f"{p}/seqlens_c{j}"],
                             name=f"{p}/UnsqSeqlens{j}"),
            helper.make_node("Concat", [f"{p}/c{j}_1d", f"{p}/c{j}_1d"], [f"{p}/cc{j}_1d"], axis=0,
                             name=f"{p}/ConcatCC{j}"),
        ]
    for j in range(n):
        start = f"{p}/zero_1d" if j == 0 else f"{p}/c{j}_1d"
        # bias rows of this chunk's queries, columns up to its last key: [B, 1, c_{j+1} - c_j, c_{j+1}]
        nodes.append(helper.make_node("Concat", [start, f"{p}/zero_1d"], [f"{p}/bias_start{j}"], axis=0,
                                      name=f"{p}/BiasStart{j}"))
        nodes.append(helper.make_node("Slice", [f"{p}/attention_bias", f"{p}/bias_start{j}", f"{p}/cc{j + 1}_1d",
                                                f"{p}/axes23"], [f"{p}/bias_chunk{j}"], name=f"{p}/SliceBias{j}"))
    return nodes


def _chunked_layer(p, i, q, k, v, out, cos_cache, sin_cache, attrs, n):
    """n GQA calls over query chunks; chunk j attends to keys [0, c_{j+1}) with chunk j-1's present K/V as past."""
    lp = f"{p}/layer{i}"
    nodes, outs = [], []
    past_k = past_v = ""
    for j in range(n):
        start = f"{p}/zero_1d" if j == 0 else f"{p}/c{j}_1d"
        for name, src in (("q", q), ("k", k), ("v", v)):
            nodes.append(helper.make_node("Slice", [src, start, f"{p}/c{j + 1}_1d", f"{p}/axes1"],
                                          [f"{lp}/{name}{j}"], name=f"{lp}/Slice{name}{j}"))
        # present outputs on every chunk, the last one included: without them the CPU kernel attends to the new
        # keys only and ignores the past it was given
        outputs = [f"{lp}/out{j}", f"{lp}/present_k{j}", f"{lp}/present_v{j}"]
        nodes.append(helper.make_node(
            "GroupQueryAttention",
            [f"{lp}/q{j}", f"{lp}/k{j}", f"{lp}/v{j}", past_k, past_v, f"{p}/seqlens_c{j + 1}", f"{p}/c{j + 1}_i32",
             cos_cache, sin_cache, "", f"{p}/bias_chunk{j}"],
            outputs, name=f"{lp}/chunk{j}", domain="com.microsoft", **attrs))
        past_k, past_v = f"{lp}/present_k{j}", f"{lp}/present_v{j}"
        outs.append(f"{lp}/out{j}")
    nodes.append(helper.make_node("Concat", outs, [out], axis=1, name=f"{lp}/ConcatOut"))
    return nodes


def _node_inputs(node) -> list[str]:
    """Explicit inputs plus the outer-scope names an If/Loop body reads (onnxruntime.transformers' prune and sort
    do not follow those)."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            sub = attr.g
            produced = {o for n in sub.node for o in n.output} | {i.name for i in sub.input} | {
                t.name for t in sub.initializer}
            names += [i for n in sub.node for i in _node_inputs(n) if i not in produced]
    return names


def _prune_and_sort(graph) -> None:
    """Drop nodes nothing reads (towards the graph outputs) and sort the rest topologically, subgraph reads included."""
    producer = {o: n for n in graph.node for o in n.output if o}
    needed, stack, keep = set(), [o.name for o in graph.output], {}
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producer.get(name)
        if node is not None and id(node) not in keep:
            keep[id(node)] = node
            stack.extend(_node_inputs(node))
    nodes = [n for n in graph.node if id(n) in keep]
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    ordered, pending = [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in _node_inputs(n)):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError(f"cycle or missing input while sorting: {rest[0].name}")
        pending = rest
    used = {i for n in ordered for i in _node_inputs(n)}
    kept_inits = [t for t in graph.initializer if t.name in used or t.name in {o.name for o in graph.output}]
    del graph.node[:]
    graph.node.extend(ordered)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)


def count_ops(graph, op_type: str) -> int:
    """Nodes of `op_type` in `graph` and its subgraphs (each If branch counted)."""
    total = 0
    for node in graph.node:
        total += node.op_type == op_type
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                total += count_ops(attr.g, op_type)
    return total

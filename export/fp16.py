"""fp32 ONNX -> fp16 ONNX: weights and compute in fp16, graph inputs/outputs unchanged (int64 ids/mask in, float32
logits out), and the few computations that fp16 cannot hold kept in fp32 — selectively, node by node:

* RMSNorm variance chains (`Pow(x, 2) -> ReduceMean -> Add(eps) -> Sqrt -> Div/Reciprocal`): x**2 overflows fp16
  (max 65504) as soon as |x| > 256, which residual streams of real LLMs reach.
* LayerNormalization (RoBERTa): mean/variance reductions.
* Softmax: the exp-sum reduction over up to 4,096 keys (HF itself runs attention softmax in fp32).
* Rotary angles (the subgraph feeding Cos/Sin): position * inv_freq reaches 4,096 rad, where fp16's spacing is 4,
  so cos/sin of it would be noise; computed in fp32 and only the bounded cos/sin values go to fp16.

Everything else (MatMuls, embeddings, activations, residual adds) runs in fp16. Uses onnxruntime's
`convert_float_to_float16(keep_io_types=True, node_block_list=...)`, which inserts the Casts at island borders and
clamps constants (e.g. the fp32 attention-mask minimum) into fp16 range.
"""
from __future__ import annotations

from collections import defaultdict

__all__ = ["FP32_OPS", "fp32_islands", "rotary_nodes", "convert_to_fp16"]

# Op types always kept in fp32.
FP32_OPS = ("Softmax", "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
            "SkipSimplifiedLayerNormalization")
_VARIANCE_CHAIN = ("ReduceMean", "Add", "Sqrt", "Div", "Reciprocal")
# Ops that may appear between an int->float Cast of positions and Cos/Sin in a rotary-embedding subgraph.
_ROTARY_OPS = {"MatMul", "Mul", "Transpose", "Concat", "Cast", "Expand", "Reshape", "Unsqueeze", "Cos", "Sin"}


def _const_value(model, name: str):
    import numpy as np
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return np.asarray(np.nan)


def rotary_nodes(model) -> list[str]:
    """Names of the nodes computing rotary angles (everything float between the positions and Cos/Sin). int8 must
    not touch them either: a MatMul of positions (up to 4,096) by inverse frequencies is not a linear layer."""
    producer = {name: node for node in model.graph.node for name in node.output}
    keep: set[str] = set()
    stack = [n for n in model.graph.node if n.op_type in ("Cos", "Sin")]
    while stack:
        cur = stack.pop()
        if cur.name in keep or cur.op_type not in _ROTARY_OPS:
            continue
        keep.add(cur.name)
        stack.extend(producer[name] for name in cur.input if name in producer)
    return sorted(k for k in keep if k)


def fp32_islands(model) -> list[str]:
    """Names of the nodes `convert_to_fp16` keeps in fp32 (see module docstring)."""
    import numpy as np

    consumers = defaultdict(list)
    producer = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
        for name in node.output:
            producer[name] = node
    keep: set[str] = set()
    for node in model.graph.node:
        if node.op_type in FP32_OPS:
            keep.add(node.name)
        elif node.op_type == "Pow" and np.allclose(_const_value(model, node.input[1]), 2.0):
            # Follow the variance chain forward.
            chain = [node]
            cur = node
            while True:
                nxt = [n for n in consumers[cur.output[0]] if n.op_type in _VARIANCE_CHAIN]
                if len(nxt) != 1:
                    break
                cur = nxt[0]
                chain.append(cur)
                if cur.op_type in ("Div", "Reciprocal"):
                    break
            if len(chain) > 2 and chain[1].op_type == "ReduceMean":
                keep.update(n.name for n in chain)
    keep.update(rotary_nodes(model))
    return sorted(k for k in keep if k)


def convert_to_fp16(model):
    """fp16 copy of an fp32 `onnx.ModelProto` (inputs/outputs keep their types; fp32 islands as documented)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # Unnamed nodes cannot be blocked by name: name them first (deterministically).
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_guardrt_{i}"
    block = fp32_islands(model)
    ops = list(DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS)
    out = convert_float_to_float16(
        model,
        keep_io_types=True,
        disable_shape_infer=False,  # the converter needs value types to insert Casts at fp32 islands
        op_block_list=ops,
        node_block_list=block,
    )
    _restore_fp32_initializers(out, set(block), set(ops))
    return out


def _restore_fp32_initializers(model, block_nodes: set[str], block_ops: set[str]) -> None:
    """The converter casts activations into blocked nodes but turns their initializers (e.g. LayerNormalization's
    scale and bias) into fp16 all the same, which leaves a node with mixed input types. Give blocked nodes fp32
    initializers back: converted in place when only blocked nodes use them, else through a fp32 copy."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, list] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            users[name].append(node)

    def blocked(node) -> bool:
        return node.name in block_nodes or node.op_type in block_ops

    for node in model.graph.node:
        if not blocked(node):
            continue
        for i, name in enumerate(node.input):
            t = inits.get(name)
            if t is None or t.data_type != TensorProto.FLOAT16:
                continue
            arr = numpy_helper.to_array(t).astype(np.float32)
            if all(blocked(u) for u in users[name]):
                t.CopyFrom(numpy_helper.from_array(arr, name))
            else:
                copy_name = f"{name}_fp32"
                if copy_name not in inits:
                    model.graph.initializer.append(numpy_helper.from_array(arr, copy_name))
                    inits[copy_name] = model.graph.initializer[-1]
                node.input[i] = copy_name

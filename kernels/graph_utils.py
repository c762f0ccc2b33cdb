"""Small onnx.ModelProto helpers shared by the graph passes: producers/consumers, constants, pruning, op counts, and
`tensors_with_two_sequence_axes`, which finds the intermediates whose size grows with the square of the sequence.

Everything here works on plain `onnx` protos (no onnxruntime.transformers wrapper) and follows If/Loop/Scan
subgraphs where it matters (pruning and sorting read the outer-scope names a subgraph uses).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["GraphIndex", "add_initializer", "const_value", "count_ops", "node_inputs", "perm_of",
           "prune_and_sort", "tensors_with_two_sequence_axes"]


class GraphIndex:
    """Producer / consumer / initializer lookups over one graph, built once (rebuild after editing)."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in node_inputs(n):
                self.consumers.setdefault(i, []).append(n)
        self.initializers = {t.name: t for t in graph.initializer}

    def op(self, name: str, op_type: str):
        """The node producing `name` when it is an `op_type`, else None."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None


def const_value(index: GraphIndex, name: str):
    """numpy value of an initializer or Constant output, else None."""
    init = index.initializers.get(name)
    if init is not None:
        return numpy_helper.to_array(init)
    node = index.op(name, "Constant")
    if node is not None:
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
    return None


def perm_of(node) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None


def node_inputs(node) -> list[str]:
    """Explicit inputs plus the outer-scope names an If/Loop/Scan body reads."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            sub = attr.g
            produced = ({o for n in sub.node for o in n.output} | {i.name for i in sub.input}
                        | {t.name for t in sub.initializer})
            names += [i for n in sub.node for i in node_inputs(n) if i not in produced]
    return names


def prune_and_sort(graph: onnx.GraphProto) -> None:
    """Drop nodes nothing reads (towards the graph outputs) and unused initializers; sort the rest topologically."""
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
            stack.extend(node_inputs(node))
    nodes = [n for n in graph.node if id(n) in keep]
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    ordered, pending = [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in node_inputs(n)):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError(f"cycle or missing input while sorting: {rest[0].name}")
        pending = rest
    used = {i for n in ordered for i in node_inputs(n)} | {o.name for o in graph.output}
    kept_inits = [t for t in graph.initializer if t.name in used]
    del graph.node[:]
    graph.node.extend(ordered)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    live = {o for n in ordered for o in n.output} | {i.name for i in graph.input}
    kept_info = [v for v in graph.value_info if v.name in live]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)


def count_ops(graph: onnx.GraphProto, op_type: str) -> int:
    """Nodes of `op_type` in `graph` and its subgraphs."""
    total = 0
    for node in graph.node:
        total += node.op_type == op_type
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                total += count_ops(attr.g, op_type)
    return total


def add_initializer(graph: onnx.GraphProto, name: str, value) -> str:
    """Add (once) a constant initializer; returns its name."""
    if not any(t.name == name for t in graph.initializer):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def tensors_with_two_sequence_axes(model: onnx.ModelProto, batch: int = 3, seq: int = 37,
                                   ids_input: str = "input_ids", mask_input: str = "attention_mask"):
    """Run `model` (ONNX Runtime, CPU) on a left-padded [batch, seq] input with every node output exposed and return
    (name, shape, dtype) of each intermediate with at least two axes of length `seq`: the tensors whose size grows
    with the square of the sequence (attention scores, probabilities, masks). `seq` is a prime no model dimension
    is expected to equal."""
    import copy

    import onnxruntime as ort

    probe = copy.deepcopy(model)
    exposed = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in exposed:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                exposed.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 400, (batch, seq)).astype(np.int64)
    mask = np.ones_like(ids)
    for b in range(1, batch):
        mask[b, : b * seq // (2 * batch)] = 0
    outputs = session.run(None, {ids_input: ids, mask_input: mask})
    return [(o.name, tuple(v.shape), str(v.dtype)) for o, v in zip(session.get_outputs(), outputs)
            if list(np.shape(v)).count(seq) >= 2]

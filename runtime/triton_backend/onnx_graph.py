"""Facts about an ONNX graph that the python backend needs at load, read from the protobuf directly (no `onnx`
package in the server): `embedding_rows`, the vocabulary size behind `input_ids`; `batch_coupling_op`, an op that
makes one row's result depend on the other rows of its batch.

ONNX Runtime's Gather accepts negative indices (-1 is silently the last row) and fails the whole batch on an index
>= vocab, so the backend checks every request's ids against the rows of the table the `input_ids` Gather indexes
(through Cast / Identity on the ids and Cast / DequantizeLinear on the table). The file is mmapped; large tensors are
skipped, external weights never opened. Self-contained (standard library): copied next to model.py.
"""
import mmap

# Field numbers of onnx.proto (ModelProto.graph = 7; GraphProto.node = 1, .initializer = 5; NodeProto.input = 1,
# .output = 2, .op_type = 4, .attribute = 5; TensorProto.dims = 1, .name = 8; AttributeProto.name = 1, .i = 3).
_MODEL_GRAPH, _GRAPH_NODE, _GRAPH_INITIALIZER = 7, 1, 5
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE = 1, 2, 4, 5
_TENSOR_DIMS, _TENSOR_NAME = 1, 8
_ATTR_NAME, _ATTR_INT = 1, 3
# Ops that pass token ids through unchanged, and ops that turn a stored table into the gathered one.
# Ops whose output holds (some of) the ids of their first input: GatherElements is guardrt.kernels' right-align
# rotation of the rows (the default ONNX Runtime graph of Qwen3 specs).
_IDS_PASS_THROUGH = ("Cast", "Identity", "GatherElements")
_TABLE_PASS_THROUGH = ("Cast", "Identity", "DequantizeLinear")
# Ops whose result for one row depends on the other rows of the batch: DynamicQuantizeLinear (int8-dynamic exports)
# computes ONE scale and zero point over its whole input tensor, every row and padding position included (and ONNX
# Runtime's com.microsoft DynamicQuantizeMatMul fuses it), so a row's logits change with its batchmates.
_BATCH_COUPLING_OPS = ("DynamicQuantizeLinear", "DynamicQuantizeMatMul")


def _varint(buf, pos):
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf, start, end):
    """(field number, wire type, value) of the protobuf message in buf[start:end]; length-delimited values are
    (start, end) spans, so large tensors are skipped, not read."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = (pos, pos + size), pos + size
        elif wire in (1, 5):
            value, pos = pos, pos + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _text(buf, span):
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


def _graph_summary(buf):
    """([(op_type, inputs, outputs, int attributes)], {initializer name: dims}) of the main graph."""
    graph = next((v for n, w, v in _fields(buf, 0, len(buf)) if n == _MODEL_GRAPH and w == 2), None)
    nodes, dims = [], {}
    if graph is None:
        return nodes, dims
    for number, wire, span in _fields(buf, *graph):
        if wire != 2:
            continue
        if number == _GRAPH_NODE:
            op, ins, outs, attrs = "", [], [], {}
            for n, w, v in _fields(buf, *span):
                if n == _NODE_INPUT:
                    ins.append(_text(buf, v))
                elif n == _NODE_OUTPUT:
                    outs.append(_text(buf, v))
                elif n == _NODE_OP_TYPE:
                    op = _text(buf, v)
                elif n == _NODE_ATTRIBUTE:
                    name = value = None
                    for an, aw, av in _fields(buf, *v):
                        if an == _ATTR_NAME:
                            name = _text(buf, av)
                        elif an == _ATTR_INT and aw == 0:
                            value = av - (1 << 64) if av >= 1 << 63 else av
                    if name is not None and value is not None:
                        attrs[name] = value
            nodes.append((op, ins, outs, attrs))
        elif number == _GRAPH_INITIALIZER:
            name, shape = None, []
            for n, w, v in _fields(buf, *span):
                if n == _TENSOR_NAME:
                    name = _text(buf, v)
                elif n == _TENSOR_DIMS and w == 0:
                    shape.append(v)
                elif n == _TENSOR_DIMS and w == 2:  # packed repeated int64
                    pos = v[0]
                    while pos < v[1]:
                        d, pos = _varint(buf, pos)
                        shape.append(d)
            if name is not None:
                dims[name] = shape
    return nodes, dims


def embedding_rows(onnx_path, ids_input="input_ids"):
    """Rows of the embedding table that `ids_input` indexes (the vocabulary size), or None when the graph has no
    recognisable embedding Gather. Reads the ONNX protobuf in place (mmap); external weights are never opened."""
    with open(onnx_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        nodes, dims = _graph_summary(memoryview(buf))
    producer = {out: (op, ins) for op, ins, outs, _ in nodes for out in outs}

    def table_rows(name, depth=0):
        if name in dims:
            return dims[name][0] if dims[name] else None
        op, ins = producer.get(name, (None, []))
        if op in _TABLE_PASS_THROUGH and ins and depth < 8:
            return table_rows(ins[0], depth + 1)
        return None

    ids_names, frontier, found = {ids_input}, [ids_input], []
    while frontier:
        name = frontier.pop()
        for op, ins, outs, attrs in nodes:
            if op in _IDS_PASS_THROUGH and ins[:1] == [name] and outs and outs[0] not in ids_names:
                ids_names.add(outs[0])
                frontier.append(outs[0])
            elif op == "Gather" and len(ins) >= 2 and ins[1] == name and attrs.get("axis", 0) == 0:
                found.append(table_rows(ins[0]))
            elif op == "EmbedLayerNormalization" and len(ins) >= 3 and ins[0] == name:  # com.microsoft fusion
                found.append(table_rows(ins[2]))
    found = [n for n in found if n]
    return min(found) if found else None


def batch_coupling_op(onnx_path):
    """The first op type in the graph that couples the rows of a batch (see _BATCH_COUPLING_OPS), or None: a graph
    with one must run each row alone to give the answer it gives alone."""
    with open(onnx_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        nodes, _ = _graph_summary(memoryview(buf))
    return next((op for op, _, _, _ in nodes if op in _BATCH_COUPLING_OPS), None)

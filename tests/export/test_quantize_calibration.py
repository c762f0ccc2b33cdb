"""Static int8 calibration sees every calibration batch (regression: onnxruntime 1.32's
`CalibMaxIntermediateOutputs` dropped all but the last len % N batches without merging their ranges)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from guardrt.export.quantize import FeedsReader, calibration_stride, quantize_qdq_static


def _matmul_model(path):
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)


@pytest.mark.parametrize("n_feeds", [5, 7, 8])
def test_first_batch_range_survives(tmp_path, n_feeds):
    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    _matmul_model(src)
    # Only the first batch reaches 100; a calibrator that forgets early batches would pick a scale near 1/127.
    feeds = [{"x": np.full((2, 4), 100.0 if i == 0 else 1.0, np.float32)} for i in range(n_feeds)]
    quantize_qdq_static(src, out, FeedsReader(feeds))
    q = onnx.load(out)
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    x_quant = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    scale = float(inits[x_quant.input[1]])
    assert scale == pytest.approx(100.0 / 127.0, rel=1e-3)


def test_stride_divides():
    assert [calibration_stride(n) for n in (1, 2, 3, 4, 5, 6, 7, 8, 64)] == [1, 2, 3, 4, 1, 3, 1, 4, 4]
    reader = FeedsReader([{"x": i} for i in range(6)])
    reader.set_range(3, 6)
    assert [reader.get_next()["x"] for _ in range(3)] == [3, 4, 5] and reader.get_next() is None

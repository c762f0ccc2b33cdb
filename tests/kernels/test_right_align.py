"""kernels/right_align.py on a bare graph: rows rotated so their real tokens come first, lengths for GQA."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

ort = pytest.importorskip("onnxruntime")


def _probe():
    """input_ids, attention_mask -> (their readers' view after the pass), seqlens_k, total_sequence_length."""
    from guardrt.kernels.right_align import right_align_inputs

    i64 = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, ["B", "S"])  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input_ids"], ["ids_seen"]),
         helper.make_node("Identity", ["attention_mask"], ["mask_seen"])],
        "probe", [i64("input_ids"), i64("attention_mask")], [i64("ids_seen"), i64("mask_seen")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    lengths = right_align_inputs(model)
    model.graph.output.extend([helper.make_tensor_value_info(lengths.seqlens_k, TensorProto.INT32, ["B"]),
                               helper.make_tensor_value_info(lengths.total_sequence_length, TensorProto.INT32, [])])
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_rows_are_right_aligned_and_lengths_reported():
    mask = np.array([[0, 0, 1, 1, 1],    # left padding
                     [1, 1, 1, 0, 0],    # right padding
                     [1, 1, 1, 1, 1],    # none
                     [0, 0, 0, 0, 1],    # one token
                     [0, 0, 0, 0, 0]],   # nothing (meaningless, must not break the lengths)
                    np.int64)
    ids = np.arange(25, dtype=np.int64).reshape(5, 5) + 100
    ids_seen, mask_seen, seqlens_k, total = _probe().run(None, {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_array_equal(ids_seen[0], [102, 103, 104, 100, 101])
    np.testing.assert_array_equal(ids_seen[1], ids[1])
    np.testing.assert_array_equal(ids_seen[2], ids[2])
    np.testing.assert_array_equal(ids_seen[3], [119, 115, 116, 117, 118])
    np.testing.assert_array_equal(mask_seen, [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1] * 5, [1, 0, 0, 0, 0], [0] * 5])
    np.testing.assert_array_equal(seqlens_k, [2, 2, 4, 0, 0])
    assert total == 5 and seqlens_k.dtype == np.int32 and total.dtype == np.int32

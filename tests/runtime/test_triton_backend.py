"""The Triton python backend's pieces in-process (no server): the vocabulary read from the graph, request validation,
failure isolation, and `execute` with every request's failure kept to itself. `triton_python_backend_utils` exists
only inside Triton's stub, so a small stand-in provides the few names the backend uses; the real server runs the
same code in tests/triton."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .fake_triton import Tensor, load_backend


@pytest.fixture(scope="module")
def backend():
    return load_backend()


# -- the vocabulary, from the graph ---------------------------------------------------------------------------------
def _save(model, path: Path, external: bool = False) -> Path:
    import onnx

    onnx.save(model, path, save_as_external_data=external, all_tensors_to_one_file=True, location=path.name + ".data",
              size_threshold=0)
    return path


def _model(nodes, inits, inputs=("input_ids",)):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.INT64, [1, "L"]) for n in inputs],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_vocabulary_is_read_from_the_embedding_gather(backend, tmp_path):
    from onnx import helper, numpy_helper

    table = numpy_helper.from_array(np.zeros((1234, 8), np.float32), "embed.weight")
    plain = _model([helper.make_node("Gather", ["embed.weight", "input_ids"], ["out"])], [table])
    assert backend.embedding_rows(_save(plain, tmp_path / "plain.onnx")) == 1234
    # Weights stored outside model.onnx are never opened: the dims live in the graph.
    assert backend.embedding_rows(_save(plain, tmp_path / "external.onnx", external=True)) == 1234
    # ids through a Cast, table through DequantizeLinear (a quantized embedding)
    q = numpy_helper.from_array(np.zeros((777, 8), np.int8), "embed.q")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "embed.scale")
    quantized = _model([
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=6),
        helper.make_node("DequantizeLinear", ["embed.q", "embed.scale"], ["embed.fp"]),
        helper.make_node("Gather", ["embed.fp", "ids32"], ["out"]),
    ], [q, scale])
    assert backend.embedding_rows(_save(quantized, tmp_path / "q.onnx")) == 777
    # A Gather along another axis, or of something that is not a stored table, says nothing about the vocabulary.
    other = _model([helper.make_node("Gather", ["embed.weight", "input_ids"], ["out"], axis=1)], [table])
    assert backend.embedding_rows(_save(other, tmp_path / "axis1.onnx")) is None
    none = _model([helper.make_node("Identity", ["input_ids"], ["out"])], [])
    assert backend.embedding_rows(_save(none, tmp_path / "none.onnx")) is None


@pytest.mark.parametrize("spec_name", ["rejection", "intent-safety"])
def test_vocabulary_of_the_demo_exports_matches_onnx(backend, demo_export, spec_name):
    import onnx

    from guardrt.runtime.export_dir import load_export_dir

    path = load_export_dir(demo_export(spec_name, ("fp32",))).model_path("fp32")
    model = onnx.load(path, load_external_data=False)
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    # input_ids, or its rows rotated by guardrt.kernels' right-align (GatherElements) in the default Qwen3 graph
    ids = {"input_ids"} | {n.output[0] for n in model.graph.node
                           if n.op_type == "GatherElements" and n.input[0] == "input_ids"}
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and n.input[1] in ids)
    assert backend.embedding_rows(path) == inits[gather.input[0]][0]


# -- validation -----------------------------------------------------------------------------------------------------
def test_validation_names_every_problem(backend):
    v = backend.validate_rows
    ok = np.array([[0, 5, 2]])
    rows = v(np.array([[9, 0, 5, 2], [0, 5, 2, 9]]), np.array([[0, 1, 1, 1], [1, 1, 1, 0]]), 8, 10)
    assert [r.tolist() for r in rows] == [[0, 5, 2], [0, 5, 2]]  # pad positions are dropped, whatever they hold
    cases = [
        ((ok.astype(np.float32), np.ones((1, 3))), "input_ids must hold integers, got float32"),
        ((ok, np.ones((1, 3), np.float64)), "attention_mask must hold integers"),
        ((ok[0], np.ones(3, np.int64)), r"must both be \[batch, seq\]"),
        ((ok, np.ones((1, 4), np.int64)), r"input_ids \[1, 3\] and attention_mask \[1, 4\]"),
        ((np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64)), "empty batch"),
        ((np.zeros((1, 0), np.int64), np.zeros((1, 0), np.int64)), "empty sequence"),
        ((np.ones((1, 9), np.int64), np.ones((1, 9), np.int64)), "sequence length 9 exceeds the model maximum 8"),
        ((ok, np.array([[1, 2, 1]])), "only 0 and 1"),
        ((np.vstack([ok, ok]), np.array([[1, 1, 1], [0, 0, 0]])), "row 1 has no tokens"),
        ((ok, np.array([[1, 0, 1]])), "row 0: attention_mask must mark one contiguous run"),
        ((np.array([[0, 10, 2]]), np.ones((1, 3), np.int64)), r"row 0: token id 10 at position 1 is outside the "
                                                              r"vocabulary \[0, 10\)"),
        ((np.array([[0, 3, -1]]), np.ones((1, 3), np.int64)), "token id -1 at position 2 is outside"),
    ]
    for (ids, mask), pattern in cases:
        with pytest.raises(backend.RequestError, match=pattern):
            v(ids, mask, 8, 10)
    # Without a known vocabulary only negative ids are refused (ONNX Runtime would read them as row -1).
    assert v(np.array([[0, 10, 2]]), np.ones((1, 3), np.int64), 8, None)[0].tolist() == [0, 10, 2]
    with pytest.raises(backend.RequestError, match="token id -1"):
        v(np.array([[0, -1, 2]]), np.ones((1, 3), np.int64), 8, None)


# -- isolation ------------------------------------------------------------------------------------------------------
def test_a_failing_group_is_re_run_request_by_request(backend):
    calls = []

    def run_group(rows):  # fails whenever the poisoned row (a 13) is in the group
        calls.append(len(rows))
        if any(13 in r for r in rows):
            raise RuntimeError("Gather: indices element out of data bounds\nsecond line")
        return np.stack([[float(r.sum()), float(len(r))] for r in rows])

    rows = [np.array(r) for r in ([1, 2], [3, 4], [13, 1], [5, 6], [7, 7, 7])]
    owner = [0, 0, 1, 2, 2]  # request 1 holds the poisoned row; requests 0 and 2 share its group
    logs, done = [], []
    groups = [[0, 1, 2, 3], [4]]
    backend.run_planned(run_group, rows, owner, groups, lambda unit, value: done.append((unit, value)), logs.append)
    results = {u: v for u, v in done if not isinstance(v, str)}
    errors = {u: v for u, v in done if isinstance(v, str)}
    assert sorted(u for u, _ in done) == [0, 1, 2]  # each unit reported exactly once
    assert set(results) == {0, 2} and set(errors) == {1}
    assert errors[1] == "onnxruntime failed on this request: Gather: indices element out of data bounds second line"
    assert results[0].tolist() == [[3.0, 2.0], [7.0, 2.0]] and results[2].tolist() == [[11.0, 2.0], [21.0, 3.0]]
    assert len(logs) == 1 and "from 3 requests" in logs[0]


def test_units_are_reported_as_soon_as_their_last_group_is_done(backend):
    """Groups run in order; a unit is reported right after the group holding its last row, not at the end."""
    events = []

    def run_group(rows):
        events.append(("run", len(rows[0])))
        return np.stack([[float(len(r)), 0.0] for r in rows])

    rows = [np.ones(n, np.int64) for n in (2, 5, 2, 9)]
    owner = [0, 1, 2, 1]
    groups = backend.batch_plan.plan_groups([len(r) for r in rows])
    backend.run_planned(run_group, rows, owner, groups, lambda unit, value: events.append(("done", unit)))
    assert events == [("run", 2), ("done", 0), ("done", 2), ("run", 5), ("run", 9), ("done", 1)]


def test_execute_keeps_every_failure_to_its_own_request(backend):
    """A request whose tensor cannot even be read, one with a bad id, one that makes the session fail: each gets its
    own one-line error; the good ones get the logits they would get alone."""
    model = backend.TritonPythonModel()
    model.name, model.pad_id, model.side, model.max_length, model.vocab_size = "m", 1, "right", 16, 50
    model.input_names, model.output_name = ["input_ids", "attention_mask"], "logits"
    model.text_input, model.max_rows, model.max_group_tokens = False, 8, 128
    model.cost = backend.batch_plan.CostModel(per_call=1.0)  # one call per execute unless a group fails

    class Session:
        def run(self, _, feeds):
            ids = feeds["input_ids"]
            if (ids == 49).any():
                raise RuntimeError("kernel failed")
            return [np.stack([ids.sum(axis=1), feeds["attention_mask"].sum(axis=1)], axis=1).astype(np.float32)]

    model.session = Session()

    def request(ids, mask=None):
        ids = np.asarray(ids)
        return {"input_ids": Tensor("input_ids", ids),
                "attention_mask": Tensor("attention_mask", np.ones_like(ids) if mask is None else mask)}

    requests = [
        request([[0, 5, 2]]),
        {"input_ids": Tensor("input_ids", OSError("shared memory gone")), "attention_mask": Tensor("m", None)},
        request([[0, 50, 2]]),
        request([[0, 6, 2], [0, 7, 2]]),
        request([[0, 49, 2]]),
        {"input_ids": Tensor("input_ids", np.array([[0, 5, 2]]))},
    ]
    responses = model.execute(requests)
    assert len(responses) == len(requests)
    assert responses[0].error is None and responses[0].output_tensors[0].array.tolist() == [[7.0, 3.0]]
    assert responses[1].error.code == "INTERNAL" and "cannot read this request: shared memory gone" in \
        responses[1].error.message
    assert responses[2].error.code == "INVALID_ARG"
    assert responses[2].error.message == "m: row 0: token id 50 at position 1 is outside the vocabulary [0, 50)"
    assert responses[3].error is None and responses[3].output_tensors[0].array.tolist() == [[8.0, 3.0], [9.0, 3.0]]
    assert responses[4].error.code == "INTERNAL"
    assert responses[4].error.message == "m: onnxruntime failed on this request: kernel failed"
    assert "missing: attention_mask" in responses[5].error.message
    assert all("\n" not in r.error.message for r in responses if r.error is not None)


# -- rows that interact: int8-dynamic ---------------------------------------------------------------------------------
def test_batch_coupling_op_is_found_in_int8_dynamic_graphs(backend, demo_export, tmp_path):
    from onnx import TensorProto, helper

    from guardrt.runtime.export_dir import load_export_dir

    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zp"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, None)])
    dq = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "dq.onnx")
    assert backend.batch_coupling_op(dq) == "DynamicQuantizeLinear"
    manifest = load_export_dir(demo_export("rejection", ("fp32", "int8-dynamic")))
    assert backend.batch_coupling_op(manifest.model_path("fp32")) is None
    assert backend.batch_coupling_op(manifest.model_path("int8-dynamic")) == "DynamicQuantizeLinear"


def test_rows_of_a_coupled_graph_run_alone_and_get_their_alone_answer(backend, demo_export):
    """int8-dynamic quantizes each batch's activations with one scale over every row, so a row batched with others
    may get other logits than alone; the backend then runs each row alone, equal lengths included, and every
    request's logits are exactly its logits alone."""
    import onnxruntime as ort

    from guardrt.runtime.export_dir import load_export_dir

    path = load_export_dir(demo_export("rejection", ("fp32", "int8-dynamic"))).model_path("int8-dynamic")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    calls = []

    class Recording:
        def run(self, names, feeds):
            calls.append(feeds["input_ids"].shape)
            return session.run(names, feeds)

    model = backend.TritonPythonModel()
    model.name, model.pad_id, model.side, model.max_length, model.vocab_size = "m", 1, "right", 64, None
    model.input_names, model.output_name = [i.name for i in session.get_inputs()], "logits"
    model.text_input, model.max_rows, model.max_group_tokens = False, 8, 512
    model.cost = backend.batch_plan.CostModel(per_call=1.0, per_token=1e-9)  # would batch everything
    model.session, model.coupling = Recording(), backend.batch_coupling_op(path)
    rng = np.random.default_rng(3)
    rows = [rng.integers(3, 500, n) for n in (12, 12, 12, 30, 7)]

    def request(row):
        ids = np.asarray([row])
        return {"input_ids": Tensor("input_ids", ids), "attention_mask": Tensor("attention_mask", np.ones_like(ids))}

    responses = model.execute([request(r) for r in rows])
    assert sorted(calls) == sorted((1, len(r)) for r in rows)  # one row per call
    for row, response in zip(rows, responses):
        ids = np.asarray([row])
        alone = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        assert np.array_equal(response.output_tensors[0].array, alone)

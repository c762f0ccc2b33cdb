"""Exporter behaviour beyond the happy path: gates refuse, --force keeps, external data, the graph-pass hook,
and clear errors for bad checkpoints."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from guardrt.runtime.errors import GuardrtError, ModelFilesError
from guardrt.runtime.specs import get_spec

# Smaller validation sets: these tests check the pipeline's behaviour, not the parity numbers.
FAST = dict(validation_heldout=16, validation_long_tokens=128, calibration_examples=8)


def _strict(spec_name, precision):
    """The spec with an impossible gate for `precision` (nothing can be within 1e-12 of PyTorch in fp16)."""
    spec = get_spec(spec_name)
    return dataclasses.replace(spec, atol={**spec.atol, precision: 1e-12})


def test_gate_refuses_and_force_keeps(tmp_path, demo_checkpoint):
    from guardrt.export.onnx_export import ExportGateError, export_onnx
    from guardrt.runtime.export_dir import load_export_dir

    model_dir = demo_checkpoint("rejection")
    out = tmp_path / "refused"
    with pytest.raises(ExportGateError, match=r"fp16: max \|Δlogit\| .* > 1e-12; not written"):
        export_onnx(model_dir, _strict("rejection", "fp16"), out, "fp32,fp16", **FAST)
    assert not (out / "fp16").exists(), "a precision that fails its gate must not be written"
    manifest = load_export_dir(out)
    assert set(manifest.precisions) == {"fp32"}
    report = json.loads((out / "validation.json").read_text())
    assert report["precisions"]["fp16"]["passed"] is False
    assert report["precisions"]["fp16"]["failed_checks"] == ["max_abs_diff"]

    forced = export_onnx(model_dir, _strict("rejection", "fp16"), tmp_path / "forced", "fp32,fp16", force=True,
                         **FAST)
    assert set(forced.precisions) == {"fp32", "fp16"}
    assert forced.raw["forced_precisions"] == ["fp16"]


def test_external_data_single_file_and_graph_pass_hook(tmp_path, demo_checkpoint):
    """A forced low threshold puts every graph's weights in one model.onnx.data; the graph pass runs once on fp32
    and every precision derived from it still validates."""
    import onnx

    from guardrt.export.onnx_export import export_onnx
    from guardrt.runtime.onnxrt import InProcessClassifier

    calls = []

    def tag_pass(model, spec):
        calls.append(spec.name)
        onnx.helper.set_model_props(model, {"guardrt_test_pass": "applied"})
        return model

    out = tmp_path / "ext"
    manifest = export_onnx(demo_checkpoint("rejection"), "rejection", out, "fp32,int8,fp16",
                           external_data_threshold=1, graph_pass=tag_pass, **FAST)
    assert calls == ["rejection"]
    assert manifest.raw["graph_pass"].endswith("tag_pass")
    for precision in ("fp32", "fp16", "int8"):
        files = sorted(p.name for p in (out / precision).iterdir())
        assert files == ["model.onnx", "model.onnx.data"], (precision, files)
        model = onnx.load(str(out / precision / "model.onnx"), load_external_data=False)
        assert {p.key: p.value for p in model.metadata_props}.get("guardrt_test_pass") == "applied"
        # Weights really live in the data file, not in the graph file.
        assert (out / precision / "model.onnx").stat().st_size < (out / precision / "model.onnx.data").stat().st_size
    from guardrt.export.synthetic import synthetic_payloads

    payloads = synthetic_payloads("rejection", 16, seed=9)
    with InProcessClassifier.from_export_dir(out, precision="fp32") as ref, \
            InProcessClassifier.from_export_dir(out, precision="int8") as clf:
        a, b = ref.classify(payloads), clf.classify(payloads)
    assert {r["label_text"] for r in a} == {"NORMAL", "REJECTION"}
    assert np.mean([x["label"] == y["label"] for x, y in zip(a, b)]) >= get_spec("rejection").min_agreement["int8"]


def test_save_onnx_threshold(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from guardrt.export.onnx_export import save_onnx

    w = numpy_helper.from_array(np.ones((64, 64), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    model = helper.make_model(graph)
    assert [p.name for p in save_onnx(model, tmp_path / "a" / "model.onnx")] == ["model.onnx"]
    assert [p.name for p in save_onnx(model, tmp_path / "b" / "model.onnx", external_data_threshold=1000)] == [
        "model.onnx", "model.onnx.data"]
    loaded = onnx.load(str(tmp_path / "b" / "model.onnx"))
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), np.ones((64, 64)))


def test_checkpoint_errors(tmp_path, demo_checkpoint):
    import shutil

    from guardrt.export.onnx_export import check_checkpoint, parse_precisions

    with pytest.raises(ModelFilesError, match="does not exist"):
        check_checkpoint(tmp_path / "missing", get_spec("rejection"))
    with pytest.raises(ModelFilesError, match="no config.json"):
        check_checkpoint(tmp_path, get_spec("rejection"))
    with pytest.raises(ModelFilesError, match="holds a RobertaForSequenceClassification checkpoint; spec "
                                              "intent-safety needs Qwen3ForSequenceClassification"):
        check_checkpoint(demo_checkpoint("rejection"), get_spec("intent-safety"))
    broken = tmp_path / "broken"
    shutil.copytree(demo_checkpoint("rejection"), broken)
    (broken / "config.json").write_text("{ corrupt")
    with pytest.raises(ModelFilesError, match="corrupt"):
        check_checkpoint(broken, get_spec("rejection"))
    with pytest.raises(GuardrtError, match="unknown precision int4"):
        parse_precisions("fp32,int4")
    assert parse_precisions("int8,fp32") == ("fp32", "int8")


def test_fp16_keeps_fp32_islands(demo_export):
    """fp16 graphs: I/O types unchanged, most MatMuls in fp16, but softmax / norm variance / rotary in fp32."""
    import onnx
    from onnx import TensorProto

    from guardrt.export.fp16 import fp32_islands

    plain = demo_export("intent-safety", graph_pass=None)  # the fused default has no Softmax / RMSNorm chains left
    fp32 = onnx.load(str(plain / "fp32" / "model.onnx"))
    islands = set(fp32_islands(fp32))
    assert any("rotary_emb" in n and n.endswith("MatMul") for n in islands)
    assert any(n.endswith("input_layernorm/Pow") for n in islands)
    assert any(n.endswith("self_attn/Softmax") for n in islands)
    assert not any("mlp" in n for n in islands), "MLP compute must stay fp16"
    fp16 = onnx.load(str(plain / "fp16" / "model.onnx"))
    weights = [t for t in fp16.graph.initializer if len(t.dims) == 2 and t.dims[0] * t.dims[1] >= 256]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights if "embed" not in t.name or True)


def test_updating_an_export_keeps_other_precisions(tmp_path, demo_checkpoint):
    from guardrt.export.onnx_export import export_onnx

    out = tmp_path / "upd"
    export_onnx(demo_checkpoint("rejection"), "rejection", out, "fp32", **FAST)
    manifest = export_onnx(demo_checkpoint("rejection"), "rejection", out, "int8-dynamic", **FAST)
    assert set(manifest.precisions) == {"fp32", "int8-dynamic"}
    report = json.loads((out / "validation.json").read_text())
    assert set(report["precisions"]) == {"fp32", "int8-dynamic"}
    # Rebuilding fp32 alone keeps int8-dynamic's record of the CPU it was validated on, and its check-set logits.
    record = manifest.int8_validated_on("int8-dynamic")
    manifest = export_onnx(demo_checkpoint("rejection"), "rejection", out, "fp32", **FAST)
    assert manifest.int8_validated_on("int8-dynamic") == record and record["path"]
    from guardrt.runtime.int8_path import load_check_set

    assert "logits_int8-dynamic" in load_check_set(manifest.int8_check_file)
    with pytest.raises(ModelFilesError, match="holds an export of spec 'rejection'"):
        export_onnx(demo_checkpoint("intent-safety"), "intent-safety", out, "fp32", **FAST)


def test_int8_qdq_graph_is_what_tensorrt_consumes(demo_export):
    """Explicit quantization: Q/DQ pairs, int8 with zero points 0 (symmetric), per-channel weight scales on the
    output-channel axis; the attention products and the rotary MatMul are left in float."""
    import onnx
    from onnx import TensorProto, numpy_helper

    # The plain graph, as `guardrt export --target tensorrt` writes it (the default ONNX target's graph is fused).
    model = onnx.load(str(demo_export("intent-safety", graph_pass=None) / "int8" / "model.onnx"))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in g.node if n.op_type == "Constant"}
    values = {**inits, **consts}
    dq = [n for n in g.node if n.op_type == "DequantizeLinear"]
    q = [n for n in g.node if n.op_type == "QuantizeLinear"]
    assert q and dq
    for n in q + dq:
        zp = values[n.input[2]]
        assert zp.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any(), n.name
    weight_dq = [n for n in dq if n.input[0] in inits]
    assert weight_dq, "weights must be stored int8 behind DequantizeLinear"
    for n in weight_dq:
        w, scale = inits[n.input[0]], values[n.input[1]]
        assert w.data_type == TensorProto.INT8
        axis = {a.name: a.i for a in n.attribute}.get("axis", 1)
        assert len(scale.dims) == 1 and scale.dims[0] == w.dims[axis] > 1, n.name  # per channel
    producers = {o: n for n in g.node for o in n.output}
    left_float = [n for n in g.node if n.op_type == "MatMul" and ("self_attn/MatMul" in n.name or "rotary_emb" in n.name)]
    assert len(left_float) == 5  # Q·K^T and P·V in 2 layers, the rotary angles
    for n in left_float:
        assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input), n.name

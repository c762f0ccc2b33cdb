"""The exporter on the tiny demo models: contract of the export directory, parity with PyTorch, gates."""
from __future__ import annotations

import json

import numpy as np
import pytest

from guardrt.runtime.specs import get_spec

SPECS = ("intent-safety", "rejection")


@pytest.mark.parametrize("spec_name", SPECS)
def test_export_dir_layout_and_contract(spec_name, demo_export):
    import onnx
    from onnx import TensorProto

    from guardrt.runtime.export_dir import load_export_dir

    spec = get_spec(spec_name)
    out = demo_export(spec_name)
    manifest = load_export_dir(out, spec=spec_name)
    assert manifest.spec == spec_name and manifest.architecture == spec.architecture
    assert set(manifest.precisions) == {"fp32", "fp16", "int8", "int8-dynamic"}
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "validation.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == spec.pad_token_id
    for precision, path in manifest.precisions.items():
        assert path == (out / precision / "model.onnx").resolve()
        g = onnx.load(str(path), load_external_data=False).graph
        assert [(i.name, i.type.tensor_type.elem_type) for i in g.input] == [
            ("input_ids", TensorProto.INT64), ("attention_mask", TensorProto.INT64)], precision
        assert [(o.name, o.type.tensor_type.elem_type) for o in g.output] == [("logits", TensorProto.FLOAT)]
        dims = [d.dim_param or d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
        assert all(isinstance(d, str) for d in dims), f"{precision}: input dims must be dynamic, got {dims}"


@pytest.mark.parametrize("spec_name", SPECS)
def test_validation_json_meets_spec_gates(spec_name, demo_export):
    spec = get_spec(spec_name)
    report = json.loads((demo_export(spec_name) / "validation.json").read_text())
    for precision, res in report["precisions"].items():
        assert res["passed"], (precision, res)
        assert res["max_abs_diff"] <= spec.atol[precision]
        assert res["heldout_agreement"] >= spec.min_agreement[precision]
        assert {"single_short", "batch4_left_padded", "batch4_right_padded"} <= set(res["cases"])
    assert report["precisions"]["fp32"]["max_abs_diff"] <= 1e-4

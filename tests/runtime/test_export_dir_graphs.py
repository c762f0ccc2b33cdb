"""The export-directory contract's graph kinds: `graph` (default "classifier") and `graphs` (kind -> precision ->
path), checked like `precisions`."""
from __future__ import annotations

import json

import pytest

from guardrt.runtime.errors import ModelFilesError
from guardrt.runtime.export_dir import load_export_dir


def _write(root, manifest):
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text("{}")
    for rel in ("fp32/model.onnx", "generate/fp32/model.onnx", "verdict/fp32/model.onnx", "verdict/fp16/model.onnx"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"onnx")
    (root / "guardrt.json").write_text(json.dumps({"spec": "x", "architecture": "A", "num_labels": 3, **manifest}))
    return root


def test_classifier_manifests_without_the_field_are_classifiers(tmp_path):
    m = load_export_dir(_write(tmp_path / "c", {"precisions": {"fp32": "fp32/model.onnx"}}))
    assert m.graph == "classifier" and m.graph_path("classifier") == m.model_path("fp32")


def test_several_graph_kinds(tmp_path):
    m = load_export_dir(_write(tmp_path / "g", {
        "graph": "causal-lm-with-past", "precisions": {"fp32": "generate/fp32/model.onnx"},
        "graphs": {"causal-lm-with-past": {"fp32": "generate/fp32/model.onnx"},
                   "verdict": {"fp32": "verdict/fp32/model.onnx", "fp16": "verdict/fp16/model.onnx"}}}))
    assert m.graph == "causal-lm-with-past"
    assert m.graph_path("verdict", "fp16") == (tmp_path / "g" / "verdict" / "fp16" / "model.onnx").resolve()
    with pytest.raises(ModelFilesError, match="no verdict graph at 'int8'; it has causal-lm-with-past: fp32; "
                                              "verdict: fp32, fp16"):
        m.graph_path("verdict", "int8")


def test_a_missing_graph_file_or_a_bad_table_is_one_line(tmp_path):
    with pytest.raises(ModelFilesError, match="int8 model verdict/int8/model.onnx is missing"):
        load_export_dir(_write(tmp_path / "a", {"precisions": {"fp32": "fp32/model.onnx"},
                                                "graphs": {"verdict": {"int8": "verdict/int8/model.onnx"}}}))
    with pytest.raises(ModelFilesError, match="`graphs` must map"):
        load_export_dir(_write(tmp_path / "b", {"precisions": {"fp32": "fp32/model.onnx"}, "graphs": [1]}))

"""The exporter's default graph pass: intent-safety is exported fused (linear-memory attention), rejection plain;
guardrt.json says which graph each precision holds; a fused graph that misses its gate or a pass that fails falls
back to the plain graph with a log line; `--target tensorrt` exports the plain graph."""
from __future__ import annotations

import json

import numpy as np
import pytest

FAST = dict(validation_heldout=16, validation_long_tokens=128, calibration_examples=8)


def test_default_export_of_intent_safety_is_fused_for_every_precision(demo_export):
    """Every precision of the tiny demo (head_dim 8) passes its gate on the fused graph."""
    out = demo_export("intent-safety")
    manifest = json.loads((out / "guardrt.json").read_text())
    assert manifest["graph_pass"] == "guardrt.kernels.graph_pass"
    assert manifest["precision_graphs"] == {p: "fused" for p in ("fp32", "fp16", "int8", "int8-dynamic")}
    assert manifest["graph_pass_report"]["fused_ops"]["GroupQueryAttention"] == 2
    validation = json.loads((out / "validation.json").read_text())["precisions"]
    assert all(v["graph"] == "fused" and v["passed"] for v in validation.values())


def test_default_export_of_rejection_stays_plain(demo_export):
    manifest = json.loads((demo_export("rejection") / "guardrt.json").read_text())
    assert manifest["graph_pass"] is None and "skipped" in manifest["graph_pass_report"]
    assert set(manifest["precision_graphs"].values()) == {"plain"}


def _doubling_pass(model, spec):
    """A 'fused' graph that is wrong: logits x 2."""
    from onnx import helper, numpy_helper

    out = model.graph.output[0].name
    model.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    for node in model.graph.node:
        node.output[:] = [f"{out}_raw" if o == out else o for o in node.output]
    model.graph.node.append(helper.make_node("Mul", [f"{out}_raw", "two"], [out], name="Double"))
    return model


def _failing_pass(model, spec):
    raise RuntimeError("pattern not found")


@pytest.mark.slow
def test_fused_graph_missing_its_gate_falls_back_to_plain_with_a_log_line(tmp_path, demo_checkpoint):
    from guardrt.export.onnx_export import export_onnx

    lines = []
    manifest = export_onnx(demo_checkpoint("rejection"), "rejection", tmp_path / "out", "fp32,int8-dynamic",
                           graph_pass=_doubling_pass, log=lines.append, **FAST)
    assert manifest.raw["precision_graphs"] == {"fp32": "plain", "int8-dynamic": "plain"}
    assert manifest.raw["graph_pass"].endswith("_doubling_pass")
    fallbacks = [line for line in lines if "falling back to the plain graph" in line]
    assert len(fallbacks) == 2 and "missed its gate" in fallbacks[0]
    validation = json.loads((tmp_path / "out" / "validation.json").read_text())["precisions"]
    assert validation["fp32"]["passed"] and "max |Δlogit|" in validation["fp32"]["fused_graph_rejected"]


@pytest.mark.slow
def test_graph_pass_that_fails_exports_the_plain_graph_with_a_log_line(tmp_path, demo_checkpoint):
    from guardrt.export.onnx_export import export_onnx

    lines = []
    manifest = export_onnx(demo_checkpoint("rejection"), "rejection", tmp_path / "out", "fp32",
                           graph_pass=_failing_pass, log=lines.append, **FAST)
    assert manifest.raw["precision_graphs"] == {"fp32": "plain"}
    assert manifest.raw["graph_pass_report"] == {"error": "RuntimeError: pattern not found"}
    assert any("graph pass" in line and "pattern not found" in line and "plain graph" in line for line in lines)


def test_cli_graph_pass_defaults_per_target(monkeypatch):
    """--target onnx: the default pass; --target tensorrt: the plain graph (TensorRT's parser refuses com.microsoft
    operators); 'none' / 'default' / module:function on request; GUARDRT_GRAPH_PASS is the flag's env twin."""
    from guardrt.cli import build_parser
    from guardrt.commands.export import load_graph_pass
    from guardrt.export.graph_pass import DEFAULT_GRAPH_PASS
    from guardrt.kernels import graph_pass
    from guardrt.runtime.errors import GuardrtError

    assert load_graph_pass(None, "onnx") == DEFAULT_GRAPH_PASS
    assert load_graph_pass(None, "tensorrt") is None
    assert load_graph_pass("none", "onnx") is None
    assert load_graph_pass("default", "tensorrt") == DEFAULT_GRAPH_PASS
    assert load_graph_pass("guardrt.kernels:graph_pass") is graph_pass
    with pytest.raises(GuardrtError, match="cannot load graph pass"):
        load_graph_pass("guardrt.kernels:nope")
    monkeypatch.setenv("GUARDRT_GRAPH_PASS", "none")
    args = build_parser().parse_args(["export", "--spec", "intent-safety", "--model-dir", "m", "--out", "o"])
    assert args.graph_pass == "none" and load_graph_pass(args.graph_pass, args.target) is None

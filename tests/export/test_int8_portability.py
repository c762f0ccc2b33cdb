"""int8 exports that give the same answers on every x86-64 int8 code path (issue 9).

On CPUs without VNNI, ONNX Runtime's U8S8 GEMM sums each pair of u8 x s8 products into a saturating int16
(`vpmaddubsw`). These tests emulate that kernel in numpy on the *actual* quantized weights of the tiny demo export, so
they catch the bug on any machine, VNNI or not; the `slow` test proves the emulation bit-exact against ONNX Runtime's
real AVX2 kernel under qemu, and checks the exports end to end on that path."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

INT16 = (-32768, 32767)


def avx2_u8s8(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """MLAS's AVX2 U8S8 GEMM (a u8 [M, K] x w s8 [K, N] -> int32): `vpmaddubsw` adds the products of consecutive k
    pairs into an int16 with saturation, `vpmaddwd` by ones then sums those into int32 exactly."""
    a, w = _even_k(a.astype(np.int64), w.astype(np.int64))
    pairs = a[:, 0::2, None] * w[None, 0::2, :] + a[:, 1::2, None] * w[None, 1::2, :]
    return np.clip(pairs, *INT16).sum(axis=1)


def avx2_u8u8(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """MLAS's AVX2 U8U8 GEMM: both operands zero-extended to int16, `vpmaddwd` sums pairs into int32 (exact)."""
    a, w = _even_k(a.astype(np.int64), w.astype(np.int64))
    return (a[:, 0::2, None] * w[None, 0::2, :] + a[:, 1::2, None] * w[None, 1::2, :]).sum(axis=1)


def _even_k(a, w):
    if a.shape[1] % 2:
        a, w = np.pad(a, ((0, 0), (0, 1))), np.pad(w, ((0, 1), (0, 0)))
    return a, w


def avx2_kernel(w: np.ndarray):
    """The AVX2 kernel ONNX Runtime runs for weights of this dtype in a plain session."""
    return avx2_u8u8 if w.dtype == np.uint8 else avx2_u8s8


def quantized_weights(path: Path) -> list[tuple[str, np.ndarray]]:
    """(name, weight) of every MatMulInteger in an int8-dynamic graph."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type == "MatMulInteger" and node.input[1] in inits:
            out.append((node.name, numpy_helper.to_array(inits[node.input[1]])))
    assert out, f"{path} has no MatMulInteger with constant weights"
    return out


def full_range_activations(k: int, rows: int = 64, seed: int = 0) -> np.ndarray:
    """u8 activations as dynamic quantization makes them (each tensor spans 0..255): random, plus the worst row."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=(rows, k), dtype=np.uint8)
    a[0] = 255
    return a


@pytest.fixture(scope="module")
def dynamic_graphs(tmp_path_factory, demo_export):
    """{weight format: int8-dynamic graph} of the tiny rejection demo, quantized like the exporter does."""
    import onnx

    from guardrt.export.onnx_export import _int8_excluded
    from guardrt.export.quantize import DYNAMIC_WEIGHT_FORMATS, quantize_int8_dynamic

    fp32 = demo_export("rejection") / "fp32" / "model.onnx"
    excluded = _int8_excluded(onnx.load(str(fp32)))
    out = tmp_path_factory.mktemp("int8_formats")
    return {fmt: quantize_int8_dynamic(fp32, out / f"{fmt}.onnx", nodes_to_exclude=excluded, weight_format=fmt)
            for fmt in DYNAMIC_WEIGHT_FORMATS}


def test_emulated_avx2_kernel_shows_the_old_s8_weights_saturate(dynamic_graphs):
    """The bug of issue 9, visible without an AVX2 machine: ORT's default s8 weights overflow int16 pair sums."""
    worst = 0.0
    for name, w in quantized_weights(dynamic_graphs["s8"]):
        assert w.dtype == np.int8 and np.abs(w.astype(int)).max() > 64  # full 8-bit weights
        a = full_range_activations(w.shape[0])
        exact = a.astype(np.int64) @ w.astype(np.int64)
        err = np.abs(avx2_u8s8(a, w) - exact).max() / max(1, np.abs(exact).max())
        worst = max(worst, float(err))
    assert worst > 0.05, f"expected saturation on the s8 weights, worst relative error {worst:.3g}"


@pytest.mark.parametrize("fmt", ["u8", "s8-7bit"])
def test_chosen_formats_are_exact_on_the_emulated_avx2_kernel(dynamic_graphs, fmt):
    for name, w in quantized_weights(dynamic_graphs[fmt]):
        a = full_range_activations(w.shape[0])
        exact = a.astype(np.int64) @ w.astype(np.int64)
        np.testing.assert_array_equal(avx2_kernel(w)(a, w), exact, err_msg=f"{fmt} {name}")


def test_the_exporters_int8_dynamic_default_cannot_saturate(demo_export):
    """What `guardrt export` writes (whatever DYNAMIC_WEIGHT_FORMAT says) runs exactly on the AVX2 kernel."""
    path = demo_export("rejection") / "int8-dynamic" / "model.onnx"
    for name, w in quantized_weights(path):
        a = full_range_activations(w.shape[0], seed=1)
        np.testing.assert_array_equal(avx2_kernel(w)(a, w), a.astype(np.int64) @ w.astype(np.int64), err_msg=name)


def test_static_int8_is_validated_as_a_graph_and_on_ort_cpu(demo_export):
    from guardrt.runtime.int8_path import int8_path

    report = json.loads((demo_export("rejection") / "validation.json").read_text())["precisions"]
    qdq = report["int8"]
    assert "disable_quant_qdq" in qdq["measured_as"] and qdq["int8_path"] == int8_path()
    assert qdq["ort_cpu"]["max_abs_diff"] <= qdq["atol"] and qdq["passed"]
    assert report["int8-dynamic"]["int8_path"] == int8_path() and "ort_cpu" not in report["int8-dynamic"]


# -- ONNX Runtime's real AVX2 kernels, under qemu user-mode emulation ------------------------------------------------
QEMU = shutil.which("qemu-x86_64")
_WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np, onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from guardrt.runtime.int8_path import int8_path
    from guardrt.runtime.onnxrt import InProcessClassifier
    args = json.loads(sys.argv[1])
    w = np.load(args["weights"])
    a = np.load(args["activations"])
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "W"], ["Y"])], "g",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, list(a.shape))],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [a.shape[0], w.shape[1]])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    so = ort.SessionOptions()
    so.add_session_config_entry("session.x64quantprecision", "0")
    y = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]
    drift = {}
    for precision in ("int8", "int8-dynamic"):
        clf = InProcessClassifier.from_export_dir(args["export"], precision=precision)
        check = np.load(args["export"] + "/int8_check.npz")
        feeds = {k: check[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        drift[precision] = float(np.abs(clf.runner.infer(feeds)["logits"] - check["reference"]).max())
    print(json.dumps({"path": int8_path(), "matmul": y.tolist(), "drift": drift}))
""")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(QEMU is None, reason="needs qemu-x86_64 (apt-get install qemu-user) to run ONNX Runtime's AVX2 path")
def test_under_emulated_avx2_the_emulation_is_exact_and_exports_pass(tmp_path, demo_export, dynamic_graphs, caplog):
    """ONNX Runtime under `qemu-x86_64 -cpu Haswell` takes its AVX2 kernels: the numpy emulation above reproduces
    its MatMulInteger bit for bit on the demo's real s8 weights, and guardrt's exports stay within their gates there
    (the load-time re-check runs, since the exports were validated on this machine's path)."""
    from guardrt.runtime.specs import get_spec

    name, w = max(quantized_weights(dynamic_graphs["s8"]), key=lambda item: item[1].size)
    a = full_range_activations(w.shape[0], rows=8)
    np.save(tmp_path / "w.npy", w)
    np.save(tmp_path / "a.npy", a)
    export = tmp_path / "export"
    shutil.copytree(demo_export("rejection"), export)
    args = json.dumps({"weights": str(tmp_path / "w.npy"), "activations": str(tmp_path / "a.npy"),
                       "export": str(export)})
    proc = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c", _WORKER, args], capture_output=True,
                          text=True, timeout=850, env={**os.environ, "GUARDRT_INT8_RECHECK": "refuse"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["path"] == "avx2"
    y = np.asarray(result["matmul"])
    np.testing.assert_array_equal(y, avx2_u8s8(a, w))  # the emulation is ORT's AVX2 kernel, saturation included
    assert not np.array_equal(y, a.astype(np.int64) @ w.astype(np.int64))
    spec = get_spec("rejection")
    for precision, drift in result["drift"].items():
        assert drift <= spec.atol[precision], (precision, drift)
    rechecks = [ln for ln in proc.stderr.splitlines() if "int8 re-check" in ln]
    print("\n" + "\n".join(rechecks))
    assert len(rechecks) == 2 and all(ln.endswith(": ok") and "running on avx2" in ln for ln in rechecks)

"""benchmarks/gpu_check.py without a GPU: the one-line skip, and its pure helpers (docker command, bucket padding,
parity metrics)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from guardrt.runtime.specs import get_spec
from guardrt.runtime.tensorrt import GpuProbe

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_without_a_gpu_it_says_so_in_one_line_and_exits_3(gpu_check, monkeypatch, capsys):
    import guardrt.runtime.tensorrt as rt

    monkeypatch.setattr(rt, "probe_gpu", lambda: GpuProbe(False, "no NVIDIA GPU found (nvidia-smi not on PATH)"))
    for argv in ([], ["--probe"]):
        assert gpu_check.main(argv) == 3
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and "no NVIDIA GPU found" in out and "not a pass" in out


def test_probe_and_missing_extra(gpu_check, monkeypatch, capsys):
    import guardrt.runtime.tensorrt as rt

    monkeypatch.setattr(rt, "probe_gpu", lambda: GpuProbe(True, "GPU 0: NVIDIA H100", ("GPU 0: NVIDIA H100",)))
    assert gpu_check.main(["--probe"]) == 0 and "H100" in capsys.readouterr().out
    monkeypatch.setattr(rt, "missing_gpu_modules", lambda: ["tensorrt"])
    assert gpu_check.main([]) == 4
    assert "make gpu-check" in capsys.readouterr().out


def test_docker_command_matches_the_container_of_the_tensorrt_version(gpu_check, tmp_path):
    cmd = gpu_check.docker_command(tmp_path / "repo", "10.5.0.18")
    assert cmd.startswith("docker run --gpus all")
    assert "nvcr.io/nvidia/tritonserver:24.10-py3 tritonserver --model-repository=/models" in cmd
    assert f"-v {(tmp_path / 'repo').resolve()}:/models" in cmd
    assert "-p 127.0.0.1:8001:8001" in cmd  # loopback only, like `guardrt serve`
    assert "<the release that ships TensorRT 10.9>" in gpu_check.docker_command(tmp_path, "10.9.0")


class _Echo:
    def infer(self, feeds):
        return {"logits": np.stack([feeds["input_ids"].shape[1] + 0.0 * feeds["input_ids"][:, 0],
                                    feeds["attention_mask"].sum(1)], 1).astype(np.float32), **feeds}


@pytest.mark.parametrize("spec_name", ["rejection", "intent-safety"])
def test_bucket_padding_runner_pads_to_the_bucket_on_the_spec_side(gpu_check, spec_name):
    spec = get_spec(spec_name)
    runner = gpu_check.BucketPaddingRunner(_Echo(), spec)
    ids = np.full((2, 5), 7, np.int64)
    mask = np.ones((2, 5), np.int64)
    out = runner.infer({"input_ids": ids, "attention_mask": mask})
    bucket = spec.length_buckets[0]
    assert out["input_ids"].shape == (2, bucket)
    real = slice(bucket - 5, bucket) if spec.padding_side == "left" else slice(0, 5)
    assert (out["input_ids"][:, real] == 7).all() and (out["attention_mask"].sum(1) == 5).all()
    assert (out["input_ids"] == spec.pad_token_id).sum() == 2 * (bucket - 5)
    exact = np.ones((1, bucket), np.int64)
    assert runner.infer({"input_ids": exact, "attention_mask": exact})["input_ids"].shape == (1, bucket)


def test_compare_reports_max_diff_and_decision_agreement(gpu_check):
    spec = get_spec("rejection")
    ref = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.9]], np.float32)
    got = np.array([[2.0, 0.1], [0.0, 2.0], [0.9, 1.0]], np.float32)
    res = gpu_check.compare(spec, ref, got)
    assert res["max_abs_diff"] == pytest.approx(0.1) and res["agreement"] == pytest.approx(2 / 3) and res["finite"]
    nan = gpu_check.compare(spec, ref, np.full_like(ref, np.nan))
    assert not nan["finite"] and nan["max_abs_diff"] == float("inf")


def test_orchestration_with_onnx_runtime_standing_in_for_tensorrt(gpu_check, tmp_path, monkeypatch, capsys,
                                                                   roberta_tokenizer_dir):
    """Everything gpu_check does after the prerequisite checks, with ONNX Runtime standing in for TensorRT (the
    'engines' are the ONNX files; a stand-in runner runs them on CPU). Not a GPU result: it proves the script's own
    plumbing (exports, parity in both padding modes, gates, latency table, JSON, docker command) before a GPU sees it.
    """
    import shutil
    import sys
    from types import SimpleNamespace

    pytest.importorskip("onnxruntime")
    demo_models = pytest.importorskip("guardrt.export.demo_models")
    import guardrt.export.tensorrt as et
    import guardrt.runtime.tensorrt as rt
    from guardrt.runtime.onnxrt import OnnxRunner

    try:
        from .test_tensorrt_export import make_export_dir
    except ImportError:  # tests/export collected without a package __init__
        from test_tensorrt_export import make_export_dir

    export_dir = make_export_dir(tmp_path / "exp", spec=get_spec("rejection"), vocab=2000)
    for f in roberta_tokenizer_dir.iterdir():
        shutil.copy(f, export_dir / f.name)

    class OrtAsTensorRT(OnnxRunner):
        def __init__(self, plan):
            super().__init__(plan)

    def fake_export_tensorrt(export_dir_, spec, precisions, out=None, strongly_typed=False, force=False, log=None):
        assert force  # the script gates the engines itself
        return et.TensorRTExport(export_dir=Path(export_dir_), repo=Path(out),
                                 engines={p: Path(export_dir_) / "fp32" / "model.onnx" for p in precisions},
                                 builds={p: {"fake": True} for p in precisions})

    monkeypatch.setattr(rt, "probe_gpu", lambda: GpuProbe(True, "GPU 0: stand-in", ("GPU 0: stand-in",)))
    monkeypatch.setattr(rt, "missing_gpu_modules", lambda: [])
    monkeypatch.setattr(rt, "TensorRTRunner", OrtAsTensorRT)
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.5.0.18"))
    monkeypatch.setattr(et, "export_tensorrt", fake_export_tensorrt)
    monkeypatch.setattr(et, "_gpu_facts", lambda probe: {"gpu": "stand-in", "compute_capability": "9.0"})
    monkeypatch.setattr(demo_models, "cached_demo_export", lambda spec, size, precisions, log=None, **kw: export_dir)
    out = tmp_path / "gpu_check.json"
    code = gpu_check.main(["--specs", "rejection", "--size", "tiny", "--n", "24", "--iters", "2",
                           "--repo", str(tmp_path / "repo"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads(out.read_text())
    parity = report["specs"]["rejection"]["parity"]
    assert set(parity) == {"fp16/longest", "fp16/buckets", "int8/longest", "int8/buckets"}
    assert all(r["passed"] and r["max_abs_diff"] < 1e-5 and r["agreement"] == 1.0 for r in parity.values())
    latency = report["specs"]["rejection"]["latency"]
    assert set(latency) == {"fp16", "int8", "ort-fp32-cpu"} and all(r["p50_ms"] > 0 for r in latency["fp16"])
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in report["docker_command"] in printed
    assert "gpu-check: all gates passed" in printed

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
    monkeypatch.setattr(et, "gpu_facts", lambda probe: {"gpu": "stand-in", "compute_capability": "9.0"})
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


# -- the environment steps (benchmarks/gpu_setup.py) and the fp16 variants, without a GPU ---------------------------
@pytest.fixture(scope="module")
def gpu_setup(gpu_check):
    import sys

    return sys.modules["gpu_setup"]  # imported by gpu_check from benchmarks/


def test_install_preflight_names_what_cannot_work(gpu_setup):
    assert gpu_setup.install_problems((3, 11), "Linux", "x86_64") == []
    (py,) = gpu_setup.install_problems((3, 13), "Linux", "x86_64")
    assert "Python 3.13 has no tensorrt-cu12-bindings 10.5.0 wheel" in py and "PYTHON=python3.12" in py
    assert any("Linux x86_64" in p for p in gpu_setup.install_problems((3, 12), "Darwin", "arm64"))


def test_install_failure_is_one_line_with_the_reason(gpu_setup, tmp_path):
    from types import SimpleNamespace

    commands = []

    def pip_cannot_reach_nvidia(cmd, stdout=None, **kw):
        commands.append(cmd)
        stdout.write("Looking in indexes: https://pypi.org/simple, https://pypi.nvidia.com\n"
                     "urllib.error.URLError: <urlopen error [Errno -3] Temporary failure in name resolution>\n"
                     "socket.gaierror: getaddrinfo failed\n")
        return SimpleNamespace(returncode=1)

    log = tmp_path / "pip.log"
    msg = gpu_setup.install_gpu_extra(log, run=pip_cannot_reach_nvidia)
    assert "\n" not in msg and "cannot reach NVIDIA's index" in msg and str(log) in msg
    (cmd,) = commands
    assert "--extra-index-url" in cmd and cmd[-1].endswith("[gpu]") and "-c" in cmd
    assert gpu_setup.install_gpu_extra(log, run=lambda cmd, **kw: SimpleNamespace(returncode=0)) is None


def test_install_mode_refuses_python_3_13_in_one_line(gpu_check, gpu_setup, monkeypatch, capsys):
    import guardrt.runtime.tensorrt as rt

    monkeypatch.setattr(rt, "probe_gpu", lambda: GpuProbe(True, "GPU 0: H100", ("GPU 0: H100",)))
    monkeypatch.setattr(gpu_setup, "install_problems", lambda: ["Python 3.13 has no tensorrt-cu12-bindings wheel"])
    assert gpu_check.main(["--install"]) == 4
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("gpu-check: cannot install guardrt[gpu] here: Python 3.13")


def test_container_tensorrt_is_read_only_from_a_local_image(gpu_setup):
    from types import SimpleNamespace

    assert gpu_setup.parse_container_tensorrt("10.5.0.18-1+cuda12.6\n/usr/lib/x86_64-linux-gnu/libnvinfer.so.10\n"
                                              "/usr/lib/x86_64-linux-gnu/libnvinfer.so.10.5.0\n") == "10.5.0.18"
    assert gpu_setup.parse_container_tensorrt("/usr/local/tensorrt/lib/libnvinfer.so.10.4.0\n"
                                              "/usr/local/tensorrt/lib/libnvinfer.so.10.11.0\n") == "10.11.0"
    assert gpu_setup.parse_container_tensorrt("") is None
    version, detail = gpu_setup.container_tensorrt_version(which=lambda name: None)
    assert version is None and "docker not found" in detail and "docker run --rm --entrypoint bash" in detail
    calls = []

    def docker(cmd, **kw):
        calls.append(cmd[1])
        if cmd[1] == "image":
            return SimpleNamespace(returncode=1, stdout="")
        raise AssertionError("never run (or pull) an image that is not present")

    version, detail = gpu_setup.container_tensorrt_version(run=docker, which=lambda name: "/usr/bin/docker")
    assert version is None and "not pulled here" in detail and calls == ["image"]

    def present(cmd, **kw):
        out = "10.5.0.18-1+cuda12.6\n" if cmd[1] == "run" else ""
        return SimpleNamespace(returncode=0, stdout=out)

    assert gpu_setup.container_tensorrt_version(run=present, which=lambda n: "/usr/bin/docker")[0] == "10.5.0.18"
    assert gpu_setup.same_tensorrt("10.5.0.18", "10.5.0.18") and gpu_setup.same_tensorrt("10.5.0", "10.5.0.18")
    assert not gpu_setup.same_tensorrt("10.5.0.18", "10.5.1.3") and not gpu_setup.same_tensorrt("10.5.0.18", "10.5.0.7")


def test_a_container_with_another_tensorrt_stops_the_check_first(gpu_check, gpu_setup, monkeypatch, capsys):
    import sys
    from types import SimpleNamespace

    import guardrt.runtime.tensorrt as rt

    monkeypatch.setattr(rt, "probe_gpu", lambda: GpuProbe(True, "GPU 0: H100", ("GPU 0: H100",)))
    monkeypatch.setattr(rt, "missing_gpu_modules", lambda: [])
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.5.0.18"))
    monkeypatch.setattr(gpu_setup, "container_tensorrt_version", lambda image: ("10.6.0.26", f"read from {image}"))
    assert gpu_check.main([]) == 5
    out = capsys.readouterr().out
    assert "ships TensorRT 10.6.0.26" in out and "install tensorrt-cu12==10.6.0" in out and "== rejection" not in out


def test_fp16_variants_side_by_side_with_onnx_runtime_standing_in(gpu_check, tmp_path, monkeypatch, capsys,
                                                                  roberta_tokenizer_dir):
    """compare_fp16_variants' plumbing (build per variant, device memory, bucket-padded parity, latency at the
    largest shape, the recommendation), with ONNX Runtime running the 'engines' and a fake build reporting memory.
    Not a GPU result."""
    import shutil

    pytest.importorskip("onnxruntime")
    import guardrt.export.tensorrt as et
    import guardrt.runtime.tensorrt as rt
    from guardrt.export.synthetic import SPLIT_SEEDS, synthetic_payloads
    from guardrt.runtime.onnxrt import InProcessClassifier, OnnxRunner

    try:
        from .test_tensorrt_export import make_export_dir
    except ImportError:
        from test_tensorrt_export import make_export_dir

    spec = get_spec("rejection")
    export_dir = make_export_dir(tmp_path / "exp", spec=spec, vocab=2000)
    for f in roberta_tokenizer_dir.iterdir():
        shutil.copy(f, export_dir / f.name)
    memory = {"norm": 300, "broad": 900, "none": 280, "strongly-typed": 310}

    def fake_build_engine(onnx_path, plan_path, settings, profiles, **kw):
        variant = "strongly-typed" if settings.strongly_typed else settings.fp32_pins
        if variant == "broad":
            raise et.DeploymentError("out of memory building the broad variant")  # a failed build is recorded
        Path(plan_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(export_dir / "fp32" / "model.onnx", plan_path)
        return {"device_memory": {"context_bytes": memory[variant] << 20, "per_profile_bytes": [1, 2]},
                "fp32_layers": 0, "build_seconds": 1.0}

    monkeypatch.setattr(et, "build_engine", fake_build_engine)
    monkeypatch.setattr(rt, "TensorRTRunner", OnnxRunner)
    reference = InProcessClassifier.from_export_dir(export_dir, "fp32")
    seqs = reference.encode(synthetic_payloads("rejection", 12, seed=SPLIT_SEEDS["heldout"]))
    result = gpu_check.compare_fp16_variants(export_dir, spec, tmp_path / "variants", reference.logits_for_ids(seqs),
                                             seqs, reference.preprocessor, 2000, iters=2)
    reference.close()
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"norm", "broad", "none", "strongly-typed"}
    assert "out of memory" in rows["broad"]["error"]
    for v in ("norm", "none", "strongly-typed"):
        assert rows[v]["passed"] and rows[v]["at"] == [spec.max_batch_size, spec.max_length] and rows[v]["p50_ms"] > 0
    assert result["recommendation"]["recommended"] in ("norm", "none", "strongly-typed")
    printed = capsys.readouterr().out
    assert "fp32 pins: recommended default" in printed and "build/run failed: out of memory" in printed

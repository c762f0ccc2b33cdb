"""runtime/tensorrt.py without a GPU: profile selection, environment probes, lazy imports and the errors a user sees.
(The runner itself runs in tests/export/test_tensorrt_export.py, marked `gpu`.)"""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from guardrt.runtime.errors import InputError, MissingExtraError, ModelFilesError
from guardrt.runtime.tensorrt import (
    GpuProbe,
    TensorRTRunner,
    missing_gpu_modules,
    probe_gpu,
    select_profile,
)

P0 = {"input_ids": ((1, 1), (8, 32), (8, 32)), "attention_mask": ((1, 1), (8, 32), (8, 32))}
P1 = {"input_ids": ((1, 33), (8, 64), (8, 64)), "attention_mask": ((1, 33), (8, 64), (8, 64))}
WIDE = {"input_ids": ((1, 1), (8, 64), (16, 512)), "attention_mask": ((1, 1), (8, 64), (16, 512))}


def _shapes(b, s):
    return {"input_ids": (b, s), "attention_mask": (b, s)}


def test_select_profile_picks_the_profile_whose_range_holds_the_shape():
    assert select_profile([P0, P1], _shapes(1, 1)) == 0
    assert select_profile([P0, P1], _shapes(8, 32)) == 0
    assert select_profile([P0, P1], _shapes(3, 33)) == 1
    assert select_profile([P0, P1], _shapes(8, 64)) == 1


def test_select_profile_prefers_the_tightest_fit_then_the_lowest_index():
    assert select_profile([WIDE, P0, P1], _shapes(2, 40)) == 2
    assert select_profile([WIDE, P0], _shapes(2, 10)) == 1
    assert select_profile([P0, dict(P0)], _shapes(2, 10)) == 0


def test_select_profile_refuses_what_no_profile_holds_and_says_what_would_fit():
    with pytest.raises(InputError) as err:
        select_profile([P0, P1], _shapes(9, 10))
    msg = str(err.value)
    assert "input_ids [9, 10]" in msg and "#0 input_ids [1, 1]..[8, 32]" in msg and "#1" in msg
    with pytest.raises(InputError):
        select_profile([P0, P1], _shapes(1, 65))
    with pytest.raises(InputError):
        select_profile([P0], {"input_ids": (1, 4)} | {"token_type_ids": (1, 4)})  # unknown input
    with pytest.raises(InputError):
        select_profile([P0], {"input_ids": (1, 4, 1)})  # wrong rank
    with pytest.raises(InputError):
        select_profile([], _shapes(1, 1))


def _run_result(returncode=0, stdout="", stderr=""):
    return SimpleNamespace(returncode=returncode, stdout=stdout, stderr=stderr)


def test_probe_gpu_reads_nvidia_smi():
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        return _run_result(stdout="GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\nGPU 1: NVIDIA H100 (UUID: GPU-2)\n")

    probe = probe_gpu(which=lambda _: "/usr/bin/nvidia-smi", run=run, environ={})
    assert probe.found and len(probe.names) == 2 and "H100" in probe.detail
    assert calls == [["/usr/bin/nvidia-smi", "-L"]]


def test_probe_gpu_reports_why_there_is_none():
    no_smi = dict(which=lambda _: None, environ={}, device_nodes=lambda: [])
    assert probe_gpu(**no_smi) == GpuProbe(False, "no NVIDIA GPU found (nvidia-smi not on PATH, no /dev/nvidia0)")
    hidden = probe_gpu(which=lambda _: "/usr/bin/nvidia-smi", environ={"CUDA_VISIBLE_DEVICES": ""})
    assert not hidden.found and "CUDA_VISIBLE_DEVICES" in hidden.detail
    failing = probe_gpu(which=lambda _: "nvidia-smi", environ={},
                        run=lambda *a, **k: _run_result(9, stderr="NVIDIA-SMI has failed because it couldn't "
                                                                  "communicate with the NVIDIA driver."))
    assert not failing.found and "couldn't communicate" in failing.detail

    def boom(*a, **k):
        raise subprocess.TimeoutExpired("nvidia-smi", 20)

    assert not probe_gpu(which=lambda _: "nvidia-smi", environ={}, run=boom).found
    nodes = probe_gpu(which=lambda _: None, environ={}, device_nodes=lambda: ["/dev/nvidia0"])
    assert nodes.found and "/dev/nvidia0" in nodes.detail


def test_missing_gpu_modules_names_what_the_gpu_extra_provides():
    assert missing_gpu_modules(lambda name: None) == ["tensorrt", "polygraphy"]
    assert missing_gpu_modules(lambda name: object()) == []

    def broken(name):
        raise ValueError(name)

    assert missing_gpu_modules(broken) == ["tensorrt", "polygraphy"]


def test_runner_on_a_missing_plan_is_a_model_files_error(tmp_path):
    with pytest.raises(ModelFilesError, match="does not exist"):
        TensorRTRunner(tmp_path / "nope" / "model.plan")


def test_runner_without_tensorrt_names_the_gpu_extra(tmp_path):
    if "tensorrt" not in missing_gpu_modules():
        pytest.skip("tensorrt is installed here")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(MissingExtraError, match=r"guardrt\[gpu\]"):
        TensorRTRunner(plan)
    runner = TensorRTRunner(plan, activate=False)  # constructing without activating needs nothing
    assert runner.context is None
    runner.close()


def test_importing_the_runtime_module_imports_no_gpu_library():
    code = ("import sys, guardrt.runtime.tensorrt, guardrt.export.tensorrt; "
            "bad = [m for m in ('tensorrt', 'polygraphy', 'cuda', 'torch', 'transformers', 'onnxruntime') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr

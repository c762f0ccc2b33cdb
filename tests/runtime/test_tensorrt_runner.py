"""runtime/tensorrt.py without a GPU: profile selection, environment probes, lazy imports and the errors a user sees.
(The runner itself runs in tests/export/test_tensorrt_export.py, marked `gpu`.)"""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from guardrt.runtime.errors import InputError, MissingExtraError, ModelFilesError
from guardrt.runtime.tensorrt import (
    GpuProbe,
    TensorRTRunner,
    missing_gpu_modules,
    numpy_dtype,
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


def test_numpy_dtype_of_engine_tensors():
    assert numpy_dtype("INT64") == np.int64 and numpy_dtype("FLOAT") == np.float32 and numpy_dtype("HALF") == np.float16
    assert numpy_dtype(SimpleNamespace(name="INT32")) == np.int32
    with pytest.raises(ModelFilesError, match="BF16"):
        numpy_dtype("BF16", trt=None)


# -- the runner's call sequence against a recording fake of TensorRT + Polygraphy's CUDA wrapper ------------------
# Not a GPU result: this checks guardrt's own logic (profile switching, shapes, dtypes, addresses, copies) against
# the documented TensorRT 10 call contract. What TensorRT itself does is only checked by the `gpu` tests.
class _FakeMemory:
    """Polygraphy-like DeviceArray / Stream over a dict of 'device' arrays keyed by fake pointers."""

    heap: dict[int, np.ndarray] = {}
    next_ptr = 0x1000

    class DeviceArray:
        def __init__(self, shape, dtype):
            self.dtype = np.dtype(dtype)
            self.ptr = 0
            self.allocated = 0
            self.resize(shape)

        def resize(self, shape):
            nbytes = int(np.prod(shape)) * self.dtype.itemsize
            if nbytes > self.allocated:
                _FakeMemory.next_ptr += 0x1000
                self.ptr = _FakeMemory.next_ptr
                self.allocated = nbytes
            self.shape = tuple(shape)
            _FakeMemory.heap[self.ptr] = np.zeros(self.shape, self.dtype)
            return self

        def copy_from(self, host, stream=None):
            assert host.dtype == self.dtype and host.flags.c_contiguous
            _FakeMemory.heap[self.ptr] = host.copy()

        def copy_to(self, host, stream=None):
            host[...] = _FakeMemory.heap[self.ptr].reshape(host.shape)
            return host

        def free(self):
            _FakeMemory.heap.pop(self.ptr, None)

    class Stream:
        ptr = 0xABC
        synced = 0

        def synchronize(self):
            type(self).synced += 1

        def free(self):
            pass


class _FakeEngine:
    """Two inputs int64 [-1, -1], one output float32 [-1, 2]; two profiles (seq 1..8 and 9..16, batch 1..4)."""

    names = ["input_ids", "attention_mask", "logits"]
    num_io_tensors = 3
    num_optimization_profiles = 2

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "OUT" if name == "logits" else "IN"

    def get_tensor_dtype(self, name):
        return SimpleNamespace(name="FLOAT" if name == "logits" else "INT64")

    def get_tensor_profile_shape(self, name, p):
        return [(1, 1), (4, 8), (4, 8)] if p == 0 else [(1, 9), (4, 16), (4, 16)]

    def create_execution_context(self):
        return _FakeContext()


class _FakeContext:
    def __init__(self):
        self.calls = []
        self.shapes = {}
        self.addresses = {}
        self.profile = 0

    def set_optimization_profile_async(self, index, stream):
        self.calls.append(("profile", index, stream))
        self.profile = index
        return True

    def set_input_shape(self, name, shape):
        lo, _, hi = _FakeEngine().get_tensor_profile_shape(name, self.profile)
        ok = all(a <= s <= b for s, a, b in zip(shape, lo, hi))
        self.calls.append(("shape", name, tuple(shape)))
        if ok:
            self.shapes[name] = tuple(shape)
        return ok

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def get_tensor_shape(self, name):
        return (self.shapes["input_ids"][0], 2)

    def execute_async_v3(self, stream):
        self.calls.append(("execute", stream))
        ids = _FakeMemory.heap[self.addresses["input_ids"]]
        mask = _FakeMemory.heap[self.addresses["attention_mask"]]
        out = np.stack([(ids * mask).sum(1), mask.sum(1)], axis=1).astype(np.float32)
        _FakeMemory.heap[self.addresses["logits"]] = out
        return True


class _FakeLogger:
    WARNING = 2

    def __init__(self, severity):
        self.severity = severity


def _fake_stack():
    trt = SimpleNamespace(
        __version__="10.5.0-fake",
        Logger=_FakeLogger,
        Runtime=lambda logger: SimpleNamespace(deserialize_cuda_engine=lambda data: _FakeEngine()),
        TensorIOMode=SimpleNamespace(INPUT="IN", OUTPUT="OUT"),
    )
    return trt, _FakeMemory


def test_runner_call_sequence_with_a_fake_tensorrt(tmp_path, monkeypatch):
    import guardrt.runtime.tensorrt as rt

    monkeypatch.setattr(rt, "_require_gpu_stack", _fake_stack)
    monkeypatch.setattr(rt, "probe_gpu", lambda: GpuProbe(True, "GPU 0: fake"))
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"fake")
    with TensorRTRunner(plan) as runner:
        assert runner.input_names == ["input_ids", "attention_mask"] and runner.output_names == ["logits"]
        assert runner.profiles[1]["input_ids"] == ((1, 9), (4, 16), (4, 16))
        ctx = runner.context
        ids = np.arange(12, dtype=np.int32).reshape(3, 4)  # int32 in: cast to the engine's int64
        mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
        out = runner.infer({"input_ids": ids, "attention_mask": mask})["logits"]
        np.testing.assert_array_equal(out, [[6, 4], [9, 2], [8, 1]])
        assert out.dtype == np.float32
        assert ("profile", 0, 0xABC) not in ctx.calls  # profile 0 is the context's default: no switch
        # a longer sequence switches to profile 1 before setting shapes, then back
        runner.infer({"input_ids": np.ones((2, 12), np.int64), "attention_mask": np.ones((2, 12), np.int64)})
        runner.infer({"input_ids": np.ones((1, 3), np.int64), "attention_mask": np.ones((1, 3), np.int64)})
        kinds = [c for c in ctx.calls if c[0] in ("profile", "execute")]
        assert kinds == [("execute", 0xABC), ("profile", 1, 0xABC), ("execute", 0xABC), ("profile", 0, 0xABC),
                         ("execute", 0xABC)]
        with pytest.raises(InputError, match="do not match the engine inputs"):
            runner.infer({"input_ids": ids})
        with pytest.raises(InputError, match="no TensorRT optimization profile"):
            runner.infer({"input_ids": np.ones((5, 3), np.int64), "attention_mask": np.ones((5, 3), np.int64)})
    assert runner.context is None and runner.stream is None


def test_runner_refuses_an_engine_it_cannot_load(tmp_path, monkeypatch):
    import guardrt.runtime.tensorrt as rt

    trt, mem = _fake_stack()
    trt.Runtime = lambda logger: SimpleNamespace(deserialize_cuda_engine=lambda data: None)
    monkeypatch.setattr(rt, "_require_gpu_stack", lambda: (trt, mem))
    monkeypatch.setattr(rt, "probe_gpu", lambda: GpuProbe(True, "GPU 0: fake"))
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"fake")
    (tmp_path / "build.json").write_text('{"tensorrt_version": "10.5.0", "gpu": "NVIDIA A10G"}')
    with pytest.raises(ModelFilesError, match=r"built with TensorRT 10\.5\.0 on NVIDIA A10G"):
        TensorRTRunner(plan)
    monkeypatch.setattr(rt, "probe_gpu", lambda: GpuProbe(False, "no NVIDIA GPU found"))
    with pytest.raises(rt.TensorRTUnavailableError, match="no NVIDIA GPU found"):
        TensorRTRunner(plan)

    def cuda_init_failure(logger):
        raise RuntimeError("CUDA initialization failure with error: 35")

    trt.Runtime = cuda_init_failure
    with pytest.raises(rt.TensorRTUnavailableError, match="no NVIDIA GPU found"):
        TensorRTRunner(plan)
    monkeypatch.setattr(rt, "probe_gpu", lambda: GpuProbe(True, "GPU 0: fake"))
    with pytest.raises(ModelFilesError, match="CUDA initialization failure"):
        TensorRTRunner(plan)


def test_engine_profiles_reads_every_input_of_every_profile():
    from guardrt.runtime.tensorrt import engine_profiles

    trt, _ = _fake_stack()
    assert engine_profiles(_FakeEngine(), trt) == [
        {n: ((1, 1), (4, 8), (4, 8)) for n in ("input_ids", "attention_mask")},
        {n: ((1, 9), (4, 16), (4, 16)) for n in ("input_ids", "attention_mask")},
    ]


def test_plan_path_finds_the_engine_of_a_precision(tmp_path):
    from guardrt.runtime.tensorrt import plan_path

    with pytest.raises(ModelFilesError, match=r"engines there: none\); build it on a GPU host"):
        plan_path(tmp_path, "fp16")
    (tmp_path / "tensorrt" / "int8").mkdir(parents=True)
    (tmp_path / "tensorrt" / "int8" / "model.plan").write_bytes(b"x")
    assert plan_path(tmp_path, "int8") == tmp_path / "tensorrt" / "int8" / "model.plan"
    with pytest.raises(ModelFilesError, match="engines there: int8"):
        TensorRTRunner.from_export_dir(tmp_path, "fp16")


def test_a_refused_profile_switch_is_one_line_whether_tensorrt_raises_or_returns_false(tmp_path, monkeypatch):
    """TensorRT 10.5's `set_optimization_profile_async` raises on failure (older bindings returned False)."""
    import guardrt.runtime.tensorrt as rt

    monkeypatch.setattr(rt, "_require_gpu_stack", _fake_stack)
    monkeypatch.setattr(rt, "probe_gpu", lambda: GpuProbe(True, "GPU 0: fake"))
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"fake")
    long_feeds = {"input_ids": np.ones((1, 12), np.int64), "attention_mask": np.ones((1, 12), np.int64)}

    def raises(index, stream):
        raise RuntimeError("IExecutionContext::setOptimizationProfileAsync: Error Code 3: API Usage Error\nmore")

    with TensorRTRunner(plan) as runner:
        runner.context.set_optimization_profile_async = raises
        with pytest.raises(ModelFilesError) as err:
            runner.infer(long_feeds)
        assert str(err.value) == (f"TensorRT refused optimization profile 1 of {plan}: IExecutionContext::"
                                  "setOptimizationProfileAsync: Error Code 3: API Usage Error")
        assert runner._profile == 0  # still on the profile it had
        runner.context.set_optimization_profile_async = lambda index, stream: False
        with pytest.raises(ModelFilesError, match="refused optimization profile 1"):
            runner.infer(long_feeds)

"""ONNX Runtime execution-provider options (TensorRT profile from the spec's buckets, engine cache paths), the
TensorRT library loading, the "requested provider is actually running" check, the int8-dynamic refusal, and the
Triton configs that carry them (parsed with Triton's protobuf). No GPU: the GPU libraries and ONNX Runtime's
GPU session are stand-ins; what onnxruntime-gpu does with these options has not run yet."""
from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from guardrt.runtime.errors import InputError, ModelFilesError
from guardrt.runtime.ort_providers import (
    check_active_providers,
    load_tensorrt_libraries,
    python_backend_providers,
    refuse_for_tensorrt,
    resolve_providers,
    tensorrt_profile_shapes,
    tensorrt_provider_options,
)
from guardrt.runtime.specs import get_spec, spec_names

BACKEND_MODEL = Path(__file__).resolve().parents[2] / "runtime" / "triton_backend" / "model.py"


def _parse_shapes(text: str) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for item in text.split(","):
        name, dims = item.split(":")
        out.append((name, tuple(int(d) for d in dims.split("x"))))
    return out


@pytest.mark.parametrize("spec_name", spec_names(graph="classifier_logits"))
def test_tensorrt_profile_covers_every_bucket_shape_in_one_profile(spec_name):
    """One explicit profile (the provider keeps its context on profile 0): batch 1..max_batch_size, sequence
    1..max_length, so no bucket shape the client sends makes the provider rebuild its engine."""
    spec = get_spec(spec_name)
    shapes = tensorrt_profile_shapes(spec)
    lo, opt, hi = (_parse_shapes(shapes[k]) for k in
                   ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"))
    for got in (lo, opt, hi):
        assert [n for n, _ in got] == list(spec.input_names)  # each input once: one profile
    assert {d for _, d in lo} == {(1, 1)}
    assert {d for _, d in hi} == {(spec.max_batch_size, spec.max_length)}
    assert {d for _, d in opt} == {(max(spec.preferred_batch_sizes), spec.max_length)}
    for bucket in spec.length_buckets:
        for batch in (1, spec.max_batch_size):
            assert all(a <= s <= b for s, a, b in zip((batch, bucket), lo[0][1], hi[0][1]))


def test_engine_cache_is_always_given_a_path():
    spec = get_spec("intent-safety")
    opts = tensorrt_provider_options(spec, fp16=True, cache_dir="/var/cache/trt")
    assert opts["trt_engine_cache_enable"] is True and opts["trt_engine_cache_path"] == "/var/cache/trt"
    assert opts["trt_timing_cache_enable"] is True and opts["trt_timing_cache_path"] == "/var/cache/trt"
    bare = tensorrt_provider_options(spec)
    assert not any(k.startswith(("trt_engine_cache", "trt_timing_cache")) for k in bare)  # no cache, no path
    assert bare["trt_profile_max_shapes"] == opts["trt_profile_max_shapes"]


def test_resolve_providers_sets_precision_flags_and_refuses_int8_dynamic():
    spec = get_spec("rejection")
    (trt, cuda, cpu) = resolve_providers("tensorrt", spec, precision="fp16", trt_cache_dir="/c")
    assert trt[0] == "TensorrtExecutionProvider" and cuda[0] == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"
    assert trt[1]["trt_fp16_enable"] and not trt[1]["trt_int8_enable"] and trt[1]["trt_engine_cache_path"] == "/c"
    assert resolve_providers("tensorrt", spec, precision="int8")[0][1]["trt_int8_enable"]
    with pytest.raises(InputError, match="MatMulInteger / DynamicQuantizeLinear.*--precision int8"):
        resolve_providers("tensorrt", spec, precision="int8-dynamic")
    assert resolve_providers("cuda", spec, precision="int8-dynamic")[0][0] == "CUDAExecutionProvider"
    refuse_for_tensorrt("int8")  # the QDQ graph is TensorRT's int8 format


def test_load_tensorrt_libraries_prefers_the_loader_path_then_pip_then_says_what_to_do():
    loaded, imported = [], []
    on_path = load_tensorrt_libraries(cdll=loaded.append, import_module=imported.append)
    assert on_path == "library path" and loaded == ["libnvinfer.so.10"] and imported == []

    state = {"pip_loaded": False}

    def cdll(name):
        if not state["pip_loaded"]:
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    def import_module(name):
        assert name == "tensorrt_libs"  # the pip wheel's loader (dlopens its libraries by full path)
        state["pip_loaded"] = True

    assert load_tensorrt_libraries(cdll=cdll, import_module=import_module) == "tensorrt_libs"

    def no_pip(name):
        raise ModuleNotFoundError("No module named 'tensorrt_libs'")

    state["pip_loaded"] = False
    with pytest.raises(ModelFilesError) as err:
        load_tensorrt_libraries(cdll=cdll, import_module=no_pip)
    msg = str(err.value)
    assert "\n" not in msg and "libnvinfer.so.10" in msg and "guardrt[gpu]" in msg and "LD_LIBRARY_PATH" in msg


def test_check_active_providers_fails_loudly_on_a_fallback():
    check_active_providers(["TensorrtExecutionProvider"],
                           ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ModelFilesError, match="TensorrtExecutionProvider requested for m.onnx but ONNX Runtime is "
                                              "running CUDAExecutionProvider, CPUExecutionProvider"):
        check_active_providers(["TensorrtExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"],
                               "m.onnx")


class _FakeOrt(types.SimpleNamespace):
    """onnxruntime-gpu as seen by OnnxRunner: providers available, a session that fell back (what ORT's Python API
    does, with a printed warning, when the TensorRT provider fails to load)."""


def _fake_ort(running):
    import onnxruntime as real

    seen = {}

    class Session:
        def __init__(self, path, sess_options=None, providers=None):
            seen["providers"] = providers

        def get_providers(self):
            return running

        def get_inputs(self):
            return []

        def get_outputs(self):
            return []

    ort = _FakeOrt(SessionOptions=real.SessionOptions, ExecutionMode=real.ExecutionMode,
                   GraphOptimizationLevel=real.GraphOptimizationLevel, InferenceSession=Session,
                   get_available_providers=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                    "CPUExecutionProvider"])
    return ort, seen


def test_onnx_runner_refuses_a_session_that_fell_back(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import guardrt.runtime.onnxrt as onnxrt

    model = tmp_path / "model.onnx"
    model.write_bytes(b"stand-in")
    libs = []
    monkeypatch.setattr(onnxrt, "load_tensorrt_libraries", lambda: libs.append("loaded") or "tensorrt_libs")
    fell_back, seen = _fake_ort(["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxrt, "require", lambda module, extra: fell_back)
    spec = get_spec("rejection")
    with pytest.raises(ModelFilesError, match="TensorrtExecutionProvider requested .* but ONNX Runtime is running "
                                              "CUDAExecutionProvider"):
        onnxrt.OnnxRunner(model, providers="tensorrt", spec=spec, precision="fp16", trt_cache_dir=tmp_path / "c")
    assert libs == ["loaded"]  # TensorRT's libraries were made loadable before the session
    trt_name, trt_opts = seen["providers"][0]
    assert trt_name == "TensorrtExecutionProvider" and trt_opts["trt_fp16_enable"]
    assert trt_opts["trt_engine_cache_path"] == str(tmp_path / "c")
    assert "trt_profile_max_shapes" in trt_opts
    running, _ = _fake_ort(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxrt, "require", lambda module, extra: running)
    runner = onnxrt.OnnxRunner(model, providers="tensorrt", spec=spec)
    assert runner.active_providers[0] == "TensorrtExecutionProvider"
    with pytest.raises(InputError, match="int8-dynamic"):
        onnxrt.OnnxRunner(model, providers="tensorrt", spec=spec, precision="int8-dynamic")


# -- Triton configs carrying the options (python backend, native onnxruntime backend) -----------------------------
def test_python_backend_config_carries_the_providers_json():
    pytest.importorskip("tritonclient.grpc")
    from guardrt.runtime.triton_repo import config_parameters, config_text, parse_config

    spec = get_spec("intent-safety")
    cfg = parse_config(config_text(spec, "python", providers="tensorrt", precision="fp16", name="m"))
    params = config_parameters(cfg)
    listed = json.loads(params["ort_providers"])
    assert [p[0] if isinstance(p, list) else p for p in listed] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = listed[0][1]
    assert trt["trt_fp16_enable"] is True and trt["trt_int8_enable"] is False and "device_id" not in trt
    assert trt["trt_engine_cache_enable"] and trt["trt_engine_cache_path"] == params["trt_cache_dir"] == \
        "/tmp/guardrt-trt-cache/m"
    assert trt["trt_profile_max_shapes"] == tensorrt_profile_shapes(spec)["trt_profile_max_shapes"]
    custom = config_parameters(parse_config(config_text(spec, "python", providers="tensorrt", trt_cache_dir="/data/c")))
    assert json.loads(custom["ort_providers"])[0][1]["trt_engine_cache_path"] == "/data/c"
    cuda = json.loads(config_parameters(parse_config(config_text(spec, "python", providers="cuda")))["ort_providers"])
    assert cuda == [["CUDAExecutionProvider", {"use_tf32": 0}], "CPUExecutionProvider"]
    assert "ort_providers" not in config_parameters(parse_config(config_text(spec, "python")))  # CPU: unchanged
    with pytest.raises(InputError, match="int8-dynamic"):
        config_text(spec, "python", providers="tensorrt", precision="int8-dynamic")
    int8 = config_parameters(parse_config(config_text(spec, "python", providers="tensorrt", precision="int8")))
    assert int8["trt_int8"] == "1" and json.loads(int8["ort_providers"])[0][1]["trt_int8_enable"] is True


def test_onnxruntime_backend_tensorrt_accelerator_parameters():
    """Only keys Triton 24.10's onnxruntime backend accepts (it rejects unknown ones): profile shapes, engine and
    timing cache paths, precision mode; int8-dynamic refused."""
    pytest.importorskip("tritonclient.grpc")
    from guardrt.runtime.triton_repo import config_text, parse_config

    spec = get_spec("intent-safety")
    cfg = parse_config(config_text(spec, "onnxruntime", precision="fp16", name="m", trt_cache_dir="/models/cache"))
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    params = dict(acc.parameters)
    accepted_by_24_10 = {"precision_mode", "max_workspace_size_bytes", "trt_engine_cache_enable",
                         "trt_engine_cache_path", "trt_timing_cache_enable", "trt_timing_cache_path",
                         "trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"}
    assert set(params) == accepted_by_24_10
    assert params["precision_mode"] == "FP16" and params["trt_engine_cache_path"] == "/models/cache"
    assert params["trt_engine_cache_enable"] == "1"
    for key, value in tensorrt_profile_shapes(spec).items():
        assert params[key] == value
    default = parse_config(config_text(spec, "onnxruntime", name="m"))
    assert dict(default.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters)[
        "trt_engine_cache_path"] == "/tmp/guardrt-trt-cache/m"
    with pytest.raises(InputError, match="int8-dynamic"):
        config_text(spec, "onnxruntime", precision="int8-dynamic")
    cpu = parse_config(config_text(spec, "onnxruntime", precision="int8-dynamic", gpu=False))
    assert not cpu.optimization.execution_accelerators.gpu_execution_accelerator  # CPU: its own format, fine


def test_tensorrt_plan_flavor_refuses_int8_dynamic():
    pytest.importorskip("tritonclient.grpc")
    from guardrt.runtime.triton_repo import config_text

    with pytest.raises(InputError, match="MatMulInteger"):
        config_text("rejection", "tensorrt", precision="int8-dynamic")
    with pytest.raises(InputError, match="not supported"):
        config_text("rejection", "tensorrt", precision="bf16")


# -- the python backend's `_providers` (runtime/triton_backend/model.py), loaded with a stand-in pb_utils ---------
@pytest.fixture()
def backend_model(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("guardrt_backend_model_under_test", BACKEND_MODEL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_backend_providers_take_the_written_options_and_the_instance_device(backend_model, monkeypatch):
    spec = get_spec("rejection")
    params = {"ort_providers": python_backend_providers(spec, "tensorrt", "fp16", "/cache")}
    loaded = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name: loaded.append(name))  # model.py imports ctypes in _providers
    providers = backend_model._providers("tensorrt", 3, params)
    assert loaded == ["libnvinfer.so.10"]
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers[0][1]["device_id"] == 3 and providers[1][1] == {"use_tf32": 0, "device_id": 3}
    assert providers[0][1] == {**tensorrt_provider_options(spec, device_id=3, fp16=True, cache_dir="/cache")}
    assert backend_model._providers("cpu", 0, {}) == ["CPUExecutionProvider"]
    cuda = backend_model._providers("cuda", 1, {"ort_providers": python_backend_providers(spec, "cuda", "fp32", "/c")})
    assert cuda == [("CUDAExecutionProvider", {"use_tf32": 0, "device_id": 1}), "CPUExecutionProvider"]
    with pytest.raises(ValueError, match="unknown execution_providers"):
        backend_model._providers("tpu", 0, {})


def test_backend_providers_fail_when_tensorrt_is_not_loadable(backend_model, monkeypatch):
    def cdll(name):
        raise OSError(f"{name}: cannot open shared object file")

    def import_module(name):
        raise ModuleNotFoundError(f"No module named '{name}'")

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    monkeypatch.setattr(importlib, "import_module", import_module)
    params = {"ort_providers": python_backend_providers(get_spec("rejection"), "tensorrt", "fp32", "/c")}
    with pytest.raises(RuntimeError, match="needs TensorRT 10 \\(libnvinfer.so.10\\)"):
        backend_model._providers("tensorrt", 0, params)

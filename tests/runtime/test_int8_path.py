"""CPU int8 path detection and the load-time re-check of int8 exports (issue 9).

The re-check is exercised by faking a different recorded path in a copy of a tiny export: this machine then looks like
"another CPU" to the export, exactly as a real one would."""
from __future__ import annotations

import importlib.util
import json
import logging
import platform
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from guardrt.runtime import int8_path as m
from guardrt.runtime.errors import ModelFilesError

AVX512_CORE = {"avx", "fma", "avx2", "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "sse4_1"}


@pytest.mark.parametrize("flags, path, saturates", [
    (AVX512_CORE | {"avx512_vnni", "amx_tile", "amx_int8"}, "amx", False),  # Sapphire Rapids
    (AVX512_CORE | {"avx512_vnni"}, "avx512_vnni", False),  # Ice Lake, Zen 4 (this development machine)
    ({"avx", "fma", "avx2", "sse4_1", "avx_vnni"}, "avx_vnni", False),  # Alder Lake
    (AVX512_CORE, "avx512", True),  # Skylake-SP: AVX-512 without VNNI
    ({"avx", "fma", "avx2", "sse4_1"}, "avx2", True),  # Haswell .. Zen 3
    ({"avx", "avx2", "sse4_1"}, "sse4.1", None),  # AVX2 without FMA: MLAS keeps its SSE kernels
    (AVX512_CORE - {"avx512vl"} | {"avx512_vnni"}, "avx2", True),  # incomplete AVX-512: not MLAS's AVX-512 core
    (set(), "x86-64", None),
])
def test_path_from_flags_follows_mlas_dispatch(flags, path, saturates):
    assert m.int8_path_from_flags(flags) == path
    assert m.saturates(path) is saturates
    assert m.describe(path).startswith(path + " (")


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or not Path("/proc/cpuinfo").is_file(),
                    reason="CPUID and /proc/cpuinfo are x86-64 Linux facts")
def test_cpuid_detection_agrees_with_the_kernels_cpuinfo():
    flags, source = m.cpu_flags()
    record = m.path_record()
    assert record["path"] == m.int8_path() == m.int8_path_from_flags(flags)
    assert record["onnxruntime"] and record["cpu"]
    if source == "cpuid":  # the kernel's view of the same CPU (it hides what the OS does not enable, as XCR0 does)
        proc = {f for f in m._proc_cpuinfo_flags() if f in m._RELEVANT}
        assert m.int8_path_from_flags(proc) == record["path"], (sorted(flags), sorted(proc))


def test_recheck_mode_from_argument_or_environment(monkeypatch):
    monkeypatch.delenv(m.RECHECK_ENV, raising=False)
    assert m.recheck_mode() == "refuse"
    monkeypatch.setenv(m.RECHECK_ENV, "warn")
    assert m.recheck_mode() == "warn" and m.recheck_mode("off") == "off"
    with pytest.raises(ValueError, match="refuse, warn, off"):
        m.recheck_mode("sometimes")


# -- the re-check on a tiny export whose recorded int8 path is faked ------------------------------------------------
def _other_path() -> str:
    return "avx2" if m.int8_path() != "avx2" else "avx512_vnni"


def _rewrite_check(export: Path, recorded_path: str | None = None, shift_reference: float = 0.0) -> None:
    """Rewrite export/int8_check.npz: another recorded path for every int8 precision, and/or a shifted reference."""
    data = m.load_check_set(export / m.CHECK_FILE_NAME)
    meta = data.pop("meta")
    if recorded_path:
        for record in meta["validated_on"].values():
            record["path"] = recorded_path
    data["reference"] = data["reference"] + np.float32(shift_reference)
    np.savez_compressed(export / m.CHECK_FILE_NAME, meta=np.array(json.dumps(meta)), **data)


@pytest.fixture
def int8_export(tmp_path, demo_export):
    dst = tmp_path / "export"
    shutil.copytree(demo_export("rejection"), dst)
    return dst


def test_export_records_the_int8_path_and_a_small_check_set(int8_export):
    from guardrt.runtime.export_dir import load_export_dir

    manifest = load_export_dir(int8_export)
    for precision in ("int8", "int8-dynamic"):
        record = manifest.int8_validated_on(precision)
        assert record["path"] == m.int8_path() and record["onnxruntime"]
        assert precision in manifest.raw["int8"]["formats"]
    assert manifest.int8_validated_on("fp32") is None
    check = manifest.int8_check_file
    assert check is not None and check.stat().st_size < 16_000  # a few KB next to the models
    data = m.load_check_set(check)
    assert data["input_ids"].shape == data["attention_mask"].shape and data["input_ids"].shape[0] == 16
    assert data["reference"].shape == (16, 2) and data["logits_int8-dynamic"].shape == (16, 2)
    assert set(data["meta"]["gates"]) == {"int8", "int8-dynamic"}


def test_same_path_loads_without_a_recheck(int8_export, caplog):
    from guardrt.runtime.onnxrt import InProcessClassifier

    with caplog.at_level(logging.WARNING, logger="guardrt"):
        InProcessClassifier.from_export_dir(int8_export, precision="int8-dynamic").close()
    assert not [r for r in caplog.records if "int8 re-check" in r.getMessage()]


@pytest.mark.parametrize("precision", ["int8", "int8-dynamic"])
def test_other_path_rechecks_and_logs_one_line(int8_export, caplog, precision):
    from guardrt.runtime.onnxrt import InProcessClassifier

    _rewrite_check(int8_export, recorded_path=_other_path())
    with caplog.at_level(logging.WARNING, logger="guardrt"):
        clf = InProcessClassifier.from_export_dir(int8_export, precision=precision)
    lines = [r.getMessage() for r in caplog.records if "int8 re-check" in r.getMessage()]
    print("\n" + "\n".join(lines))
    assert len(lines) == 1 and "\n" not in lines[0]
    assert f"validated on {_other_path()}, running on {m.int8_path()}" in lines[0]
    assert "max |Δlogit| vs PyTorch" in lines[0] and "gate" in lines[0] and lines[0].endswith(": ok")
    assert clf.classify(["I'm sorry, but I can't help with that."])[0]["label_text"] in ("NORMAL", "REJECTION")


def test_over_the_gate_is_refused_unless_told_to_warn(int8_export, caplog, monkeypatch):
    from guardrt.runtime.onnxrt import InProcessClassifier

    monkeypatch.delenv(m.RECHECK_ENV, raising=False)
    # As if this CPU's kernels moved every logit by 1.0 from PyTorch's (the AVX2 saturation moved them by 0.65).
    _rewrite_check(int8_export, recorded_path=_other_path(), shift_reference=1.0)
    with pytest.raises(ModelFilesError) as err:
        InProcessClassifier.from_export_dir(int8_export, precision="int8-dynamic")
    assert "OVER THE GATE: refusing to load" in str(err.value) and "\n" not in str(err.value)
    assert "(gate 0.1)" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="guardrt"):
        InProcessClassifier.from_export_dir(int8_export, precision="int8-dynamic", int8_recheck="warn").close()
    assert any("OVER THE GATE: loaded anyway" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv(m.RECHECK_ENV, "off")
    InProcessClassifier.from_export_dir(int8_export, precision="int8-dynamic").close()
    # fp32 is never re-checked.
    InProcessClassifier.from_export_dir(int8_export, precision="fp32").close()


def _config_entry(session, key):
    try:
        return session.get_session_options().get_session_config_entry(key)
    except Exception:  # ORT raises for an entry that is not set
        return None


def test_exact_int8_only_where_u8s8_saturates():
    """x64quantprecision where U8S8 saturates; not with VNNI/AMX, where ORT would still rewrite full-range int8
    weights to the ~1.8x slower U8U8 kernels (measured), nor off x86."""
    exact = {"session.x64quantprecision": "1"}
    for path in ("avx2", "avx512", "sse4.1", "x86-64"):
        assert m.exact_int8_session_config(path) == exact, path
    for path in ("amx", "avx512_vnni", "avx_vnni", "aarch64"):
        assert m.exact_int8_session_config(path) == {}, path


def test_guardrt_sessions_ask_for_exact_int8_on_this_cpus_path(demo_export):
    from guardrt.runtime.onnxrt import OnnxRunner

    expected = m.exact_int8_session_config().get("session.x64quantprecision")
    with OnnxRunner(demo_export("rejection") / "int8" / "model.onnx") as runner:
        assert _config_entry(runner.session, "session.x64quantprecision") == expected


# -- the Triton python backend: write_model ships the check; initialize runs it -------------------------------------
class _FakeLogger:
    lines: list[tuple[str, str]] = []

    @classmethod
    def log_info(cls, msg):
        cls.lines.append(("info", msg))

    @classmethod
    def log_warn(cls, msg):
        cls.lines.append(("warn", msg))


def _initialize_backend(model_dir: Path, monkeypatch, parameters=None):
    """Run the shipped model.py's initialize() against a stand-in triton_python_backend_utils."""
    from google.protobuf import json_format

    from guardrt.runtime.triton_repo import parse_config

    fake = types.ModuleType("triton_python_backend_utils")
    fake.Logger = _FakeLogger
    _FakeLogger.lines = []
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    config = json_format.MessageToDict(parse_config((model_dir / "config.pbtxt").read_text()),
                                       preserving_proto_field_name=True)
    for key, value in (parameters or {}).items():
        config["parameters"][key] = {"string_value": value}
    loader = importlib.util.spec_from_file_location(f"backend_{model_dir.name}", model_dir / "1" / "model.py")
    backend = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(backend)
    model = backend.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(model_dir), "model_version": "1"})
    return model


def test_write_model_ships_the_check_only_with_int8(tmp_path, int8_export):
    from guardrt.runtime.triton_repo import write_model

    for precision, shipped in (("int8-dynamic", True), ("int8", True), ("fp32", False)):
        d = write_model(tmp_path / "repo", export_dir=int8_export, precision=precision, name=f"m-{precision}")
        assert (d / "1" / m.CHECK_FILE_NAME).is_file() is shipped
        assert (d / "1" / "guardrt_int8_path.py").is_file() is shipped


def test_backend_initialize_rechecks_on_another_path(tmp_path, int8_export, monkeypatch):
    from guardrt.runtime.triton_repo import write_model

    monkeypatch.delenv(m.RECHECK_ENV, raising=False)
    _rewrite_check(int8_export, recorded_path=_other_path())
    ok = write_model(tmp_path / "repo", export_dir=int8_export, precision="int8-dynamic", name="ok")
    model = _initialize_backend(ok, monkeypatch)
    rechecks = [(level, line) for level, line in _FakeLogger.lines if "int8 re-check" in line]
    assert len(rechecks) == 1 and rechecks[0][0] == "info" and rechecks[0][1].endswith(": ok")
    assert "running on " + m.int8_path() in rechecks[0][1]
    expected = m.exact_int8_session_config().get("session.x64quantprecision")
    assert _config_entry(model.session, "session.x64quantprecision") == expected

    _rewrite_check(int8_export, shift_reference=1.0)
    bad = write_model(tmp_path / "repo", export_dir=int8_export, precision="int8-dynamic", name="bad")
    with pytest.raises(RuntimeError, match="OVER THE GATE: refusing to load"):
        _initialize_backend(bad, monkeypatch)
    _initialize_backend(bad, monkeypatch, parameters={"int8_recheck": "warn"})
    assert [level for level, line in _FakeLogger.lines if "int8 re-check" in line] == ["warn"]

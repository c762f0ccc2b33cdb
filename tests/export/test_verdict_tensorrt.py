"""The verdict graph through the classifiers' TensorRT path: its contract and profiles without a GPU; the engine
build and its comparison with ONNX Runtime on a GPU host only (`gpu`, skipped here: never run)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def guard_export():
    from guardrt.export.demo_models import cached_guard_export

    return cached_guard_export("tiny", ("fp32",))


def test_verdict_graph_is_standard_onnx_with_the_classifier_contract(guard_export):
    from guardrt.export.verdict_tensorrt import check_verdict_graph
    from guardrt.runtime.export_dir import load_export_dir

    check_verdict_graph(load_export_dir(guard_export).graph_path("verdict", "fp32"))


def test_verdict_profiles_cover_every_length_once():
    from guardrt.export.tensorrt import derive_profiles
    from guardrt.export.verdict_tensorrt import VERDICT_ENGINE_SPEC

    profiles = derive_profiles(VERDICT_ENGINE_SPEC)
    covered = [n for p in profiles for n in range(p.seq[0], p.seq[2] + 1)]
    assert covered == list(range(1, 32769))
    assert all(p.batch == (1, 8, 8) for p in profiles)


def test_without_gpu_says_so(guard_export):
    from guardrt.export.verdict_tensorrt import build_verdict_engines
    from guardrt.runtime.tensorrt import TensorRTUnavailableError, probe_gpu

    if probe_gpu().found:
        pytest.skip("a GPU is present")
    with pytest.raises(TensorRTUnavailableError, match="no TensorRT engine built for the verdict graph"):
        build_verdict_engines(guard_export, ("fp32",))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_verdict_engine_builds_and_matches_onnx_runtime(guard_export, precision):
    pytest.importorskip("tensorrt")
    from guardrt.export.demo_models import cached_guard_export
    from guardrt.export.verdict_tensorrt import build_verdict_engines

    export = cached_guard_export("tiny", ("fp32", "fp16")) if precision == "fp16" else guard_export
    record = build_verdict_engines(export, (precision,), validate=8)[precision]
    assert record["validation"]["passed"], record["validation"]

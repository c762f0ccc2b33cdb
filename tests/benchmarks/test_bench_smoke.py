"""The benchmark programs run end to end on tiny models with one iteration and write valid JSON + PNG.

Smoke tests only: nothing here asserts a speed (benchmarks are programs, not timed tests)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import common  # noqa: E402


def test_peak_is_derived_from_cpuinfo():
    peak = common.cpu_peak()
    assert peak["cores"] >= 1 and peak["peak_fp32_gflops"] > 0
    assert peak["peak_int8_gops"] >= peak["peak_fp32_gflops"]
    assert "GHz" in peak["derivation"]


def test_model_flops_counts_linear_and_attention():
    roberta = {"model_type": "roberta", "hidden_size": 768, "num_hidden_layers": 6, "num_attention_heads": 12,
               "intermediate_size": 3072}
    f = common.model_flops(roberta, 16, 128)
    # 6 layers x (4 x 768^2 + 2 x 768 x 3072) MACs per token x 2048 tokens x 2
    assert f["linear"] == 2 * 2048 * 6 * (4 * 768 * 768 + 2 * 768 * 3072)
    assert f["attention"] == 2 * 2 * 16 * 6 * 12 * 128 * 128 * 64
    qwen = {"model_type": "qwen3", "hidden_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 16,
            "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072}
    g = common.model_flops(qwen, 1, 1024)
    assert g["attention"] == 2 * 2 * 4 * 16 * (1024 * 1025 / 2) * 128  # causal
    assert 120e9 < g["linear"] < 135e9


def test_stability_window_summary():
    s = common.summarize([0.001, 0.002, 0.003])
    assert s["n"] == 3 and s["p50_ms"] == pytest.approx(2.0)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_inprocess_quick_writes_json_and_plots(tmp_path):
    out = tmp_path / "inprocess"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "inprocess.py"), "--quick", "--spec", "rejection",
         "--engines", "guardrt-ort-fp32,guardrt-ort-int8-dynamic", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["machine"]["peak"]["peak_fp32_gflops"] > 0 and data["versions"]["onnxruntime"]
    spec = data["specs"][0]
    engines = {r["engine"] for r in spec["rows"]}
    assert {"pytorch-eager", "guardrt-ort-fp32", "guardrt-ort-fp32-fused", "guardrt-ort-int8-dynamic-fused"} <= engines
    for row in spec["rows"]:
        assert "error" not in row, row
        assert row["p50_ms"] > 0 and row["speedup_vs_pytorch"] > 0 and row["peak_rss_mib"] > 0
    fused = [r for r in spec["rows"] if r["engine"] == "guardrt-ort-fp32-fused"]
    assert all(r["max_abs_diff_vs_pytorch"] <= 1e-4 for r in fused)
    assert (tmp_path / "inprocess_rejection.png").stat().st_size > 0
    assert "x PyTorch" in proc.stdout


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.timeout(600)
def test_serve_quick_writes_json_and_plots(tmp_path):
    from tests.triton.binary import triton_install_or_skip

    triton_install_or_skip()  # skipped without the server binary; a failure under CI=true
    out = tmp_path / "serve"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serve.py"), "--quick", "--spec", "rejection", "--concurrency",
         "1,4", "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    spec = data["specs"][0]
    assert set(spec["sweep"]) == {"grpc", "text-grpc", "text-http"}
    for path, modes in spec["sweep"].items():
        assert set(modes) == {"on", "off"}
        for mode, levels in modes.items():
            assert [r["concurrency"] for r in levels] == ([1, 4] if path == "grpc" else [1])
            assert all(r["requests"] > 0 and r["throughput_rps"] > 0 and not r["errors"] for r in levels)
            assert all(r["p50_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in levels)
            assert all(r["server"]["compute_infer_ms"] > 0 and r["server"]["queue_ms"] is not None for r in levels)
        # without dynamic batching every execution is one request
        assert all(r["server"]["mean_executed_batch"] == 1.0 for r in modes["off"])
    assert [r["concurrency"] for r in spec["ratios"]["grpc"]] == [1, 4]
    overhead = spec["overhead"]
    assert set(overhead["added_p50_ms"]) == {"gRPC thin client, ids", "gRPC thin client, text", "text-in over gRPC",
                                             "text-in over HTTP"}
    assert overhead["added_against"]["gRPC thin client, ids"] == "in-process ids (spinning during a run only)"
    paired = spec["modes_paired_c1"]
    assert set(paired) == {"grpc", "text-grpc", "text-http"}
    assert all(m["rounds"] == 8 and m["on"]["n"] == m["off"]["n"] == 8 for m in paired.values())
    assert "overhead_server_not_spinning" in spec
    # one server serves both modes: the shipped models and their batching-off twins
    assert spec["server"]["models"] == ["rejection", "rejection-nobatch", "rejection-text", "rejection-text-nobatch"]
    eq = spec["equality"]
    for client in ("curl", "tritonclient_http"):
        assert eq[client]["same_decision"] == eq["rows"] and eq[client]["errors"] == 0
    assert eq["tritonclient_http"]["identical"] == eq["rows"]  # one row per request: the thin client's bytes
    # int8-dynamic couples the rows of a batch (one activation scale): the backend runs each row alone, so curl's
    # many-row requests get the thin client's bytes too
    assert spec["precision"] == "int8-dynamic" and eq["curl"]["identical"] == eq["rows"]
    assert spec["inprocess"]["batch16_throughput_rps"] > 0 and spec["server"]["peak_rss_mib"]["total"] > 0
    assert spec["inprocess"]["batch16_equal_lengths_throughput_rps"] > 0
    assert [lay["layout"] for lay in spec["layouts"]] == ["2x1"]
    assert (tmp_path / "serve_rejection.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.timeout(600)
def test_serve_profile_quick_splits_the_hop_and_checks_the_planner(tmp_path):
    from tests.triton.binary import triton_install_or_skip

    triton_install_or_skip()
    out = tmp_path / "profile"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serve_profile.py"), "--quick", "--spinning", "run",
         "--mix-seconds", "1", "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    row = data["settings"][0]
    assert row["spinning"] == "run" and row["executes_logged"] == data["reps"]  # one execute per timed request
    assert {"read", "plan", "pad", "lock", "ort", "respond"} <= set(row["execute_stage_p50_ms"])
    assert row["split_mean_ms"]["execute (logged)"] > row["execute_stage_p50_ms"]["ort"] * 0.5
    # the floors were measured in the same loop: a zero-work python model, and a bare liveness round trip
    assert set(row["floor_p50_ms"]) == {"python-backend floor (zero-work model, thin client)",
                                        "gRPC + Triton floor (is_server_live)"}
    assert all(v > 0 for v in row["floor_p50_ms"].values()) and row["added_ms_paired_median"] is not None
    mix = row["mix"]
    assert mix["executes"] > 0 and mix["throughput_rps"] > 0
    assert mix["multi_row_groups"] == 0  # int8-dynamic: every row alone
    assert all(r > 0 for r in mix["predicted_over_measured_p10_p50_p90"])


def test_preprocess_quick_writes_json_and_plot(tmp_path):
    """benchmarks/preprocess.py --quick: identical ids to the reference on every traffic kind, JSON + PNG written."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "preprocess.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "preprocess_quick.json").read_text())
    assert {r["traffic"] for r in result["rows"]} == {"long-dialogues", "roleplay-growing", "short-chats"}
    assert all(r["identical_ids"] and r["guardrt_ms"] > 0 for r in result["rows"])
    assert (tmp_path / "preprocess_quick.png").stat().st_size > 0


def test_score_quick_single_process_writes_json_and_plot(tmp_path):
    """benchmarks/score.py end to end without Ray (the Ray runs are what tests/runtime/test_ray_scoring.py checks)."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "score.py"), "--quick", "--no-ray", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "score_quick.json").read_text())
    assert [r["run"] for r in data["results"]] == ["single, ORT default threads", "single, 1 thread"]
    for r in data["results"]:
        assert r["rows"] == 300 and r["identical_non_float_fields"] and r["rows_per_s_steady"] > 0
    assert (tmp_path / "score_quick.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_int8_portability_quick_writes_json_and_plots(tmp_path):
    out = tmp_path / "int8"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "int8_portability.py"), "--quick", "--specs", "rejection",
         "--emulator", "none", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    block = data["models"][0]
    rows = {(r["variant"], r["session"]): r for r in block["drift"][0]["rows"]}
    assert rows[("int8-dynamic/s8-7bit", "ort-default")]["passes_gate"]  # the exporter's format, plain ORT session
    assert {r["variant"] for r in block["speed"]} >= {"fp32", "int8-dynamic/s8-7bit", "int8/qdq-s8s8"}
    assert (tmp_path / "int8_drift.png").is_file() and (tmp_path / "int8_speed.png").is_file()

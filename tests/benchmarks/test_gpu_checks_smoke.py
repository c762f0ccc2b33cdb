"""The GPU check programs (`benchmarks/gpu_ort_check.py`, run on a lent H200) still work: their CPU dry run goes
through every step - prepare, each precision's gate, batched vs single, generation parity - on the tiny models.
Nothing here touches a GPU; the point is that the program a GPU host runs has not rotted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_ort_check_dry_run_on_cpu(tmp_path):
    script = REPO / "benchmarks" / "gpu_ort_check.py"
    subprocess.run([sys.executable, str(script), "--phase", "prepare", "--dir", str(tmp_path / "d")], check=True,
                   capture_output=True, text=True, timeout=900)
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(script), "--phase", "run", "--dir", str(tmp_path / "d"), "--out",
                           str(out), "--providers", "cpu"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["failed"] == []
    for spec in ("rejection", "intent-safety"):
        assert set(report[spec]["precisions"]) == {"fp32", "fp16", "int8", "int8-dynamic"}
        assert all(r["passed"] for r in report[spec]["precisions"].values())
    gen = report["qwen3guard-gen"]
    assert gen["cuda_equal_device_cpu"] == gen["n"] == gen["cuda_equal_prepared_cpu"]

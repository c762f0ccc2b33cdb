"""benchmarks/long_context.py runs end to end (--quick: tiny demo, 256 tokens) and writes JSON + PNG + table.

A smoke test: no speed or memory figure is asserted (benchmarks are programs); what is checked is that every engine
ran, the fused graph gave the plain graph's logits, and the classify case ran both graphs to the same labels."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_long_context_quick_run(tmp_path):
    out = tmp_path / "long_context_quick.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "long_context.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(out.read_text())
    rows = payload["sizes"]["tiny"]["rows"]
    assert {r["engine"] for r in rows} == {"pytorch-eager", "ort-fp32-plain", "ort-fp32-fused",
                                           "ort-int8-dynamic-plain", "ort-int8-dynamic-fused"}
    assert all("per_row_s" in r and r["working_mib"] >= 0 for r in rows), [r.get("error") for r in rows]
    fused = [r for r in rows if r["engine"] == "ort-fp32-fused" and r["batch"] == 1][0]
    assert fused["graph"] == "fused" and fused["max_abs_diff_vs_plain"] < 1e-4
    assert payload["classify"]["same_labels"] is True
    assert (tmp_path / "long_context_quick_intent-safety.png").stat().st_size > 1000
    assert "ort-fp32-fused" in out.with_suffix(".txt").read_text()

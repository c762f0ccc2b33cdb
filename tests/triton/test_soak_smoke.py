"""benchmarks/soak.py end to end for a few seconds: no good request fails, every malformed kind gets a clear error,
and the JSON + PNG are written. A smoke run of the program, not a timed test (the 60 s soak is run by hand)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.triton

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_soak_smoke_run(tmp_path, demo_exports):
    out = tmp_path / "soak"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--duration", "4", "--concurrency", "8",
         "--bad-every", "4", "--pool", "16", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    s = result["summary"]
    assert result["passed"] and result["server_alive_at_end"]
    assert s["good_requests"] > 0 and s["good_failed"] == 0
    assert s["bad_requests"] > 0 and s["bad_accepted"] == 0 and s["bad_unclear"] == 0
    kinds = set(s["bad_by_kind"])
    assert {"id out of range", "wrong rank", "mismatched shapes", "empty sequence"} <= kinds
    assert s["latency_ms"]["p99_ms"] >= s["latency_ms"]["p50_ms"] > 0
    assert s["server_rss_mib"]["after_warmup"] > 0 and s["server_rss_mib"]["end"] > 0
    assert set(s["per_spec"]) == {"rejection", "intent-safety"}
    assert out.with_suffix(".png").stat().st_size > 0

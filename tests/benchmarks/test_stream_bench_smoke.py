"""benchmarks/stream.py runs end to end on the tiny model (in process) and writes JSON + PNG whose labels equal the
re-prefill reference at every timed position. Nothing here asserts a speed."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_stream_benchmark_smoke(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import stream as bench

    out = tmp_path / "stream"
    assert bench.main(["--size", "tiny", "--conversations", "3", "--concurrency", "1,2", "--grpc", "0",
                       "--out", str(out)]) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    rows = payload["results"]
    assert set(rows) == {"pytorch-reprefill-c1", "pytorch-kv-k1-c1", "guardrt-inprocess-c1", "guardrt-inprocess-c2",
                         "guardrt-inprocess-k16-c1"}
    n = payload["positions_compared"]
    assert n > 30 and all(r.get("labels_equal_reprefill", n) == n for r in rows.values())
    assert all(r["tokens"] == n for r in rows.values())  # --reprefill-conversations default >= 3: all of them
    assert payload["memory"]["kv_bytes_per_token"] == 2 * 2 * 2 * 8 * 4  # layers x (k, v) x kv heads x head_dim x fp32
    assert (tmp_path / "stream_qwen3guard-stream.png").is_file()
    sys.modules.pop("stream", None)

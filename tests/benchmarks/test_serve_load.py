"""The serving benchmark's measurement helpers (benchmarks/serve_load.py): the interleaved single-request loop and
the merging of ABBA rounds. No server, no timing asserted: what is checked is the bookkeeping."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import serve_load  # noqa: E402


def test_interleaved_runs_every_call_each_round_in_a_new_order_with_an_idle_gap():
    log: list[tuple[str, float]] = []
    calls = {name: (lambda n=name: log.append((n, time.perf_counter()))) for name in "abcde"}
    times = serve_load.interleaved(calls, reps=12, warmup=1, gap_s=0.002, seed=3)
    assert {k: len(v) for k, v in times.items()} == {k: 12 for k in "abcde"}
    rounds = [tuple(n for n, _ in log[5 + 5 * r: 10 + 5 * r]) for r in range(12)]  # after the warm-up round
    assert all(sorted(r) == list("abcde") for r in rounds)
    assert len(set(rounds)) > 1  # the order changes from round to round (a fixed rotation would be one order)
    starts = [t for _, t in log]
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 0.002  # every call is followed by the idle gap


def _row(lat_ms, seconds, stage_ms, inferences, executions, sizes):
    lat = [x / 1e3 for x in lat_ms]
    return {"concurrency": 4, "stable": True, "windows": 3, "window_throughputs": [1.0], "requests": len(lat),
            "seconds": seconds, "throughput_rps": len(lat) / seconds, "errors": [], "latencies_s": lat,
            "server": {"inferences": inferences, "executions": executions,
                       "mean_executed_batch": inferences / executions, "executed_batch_sizes": sizes,
                       **{f"{s}_ms": stage_ms for s in ("queue", "compute_input", "compute_infer", "compute_output",
                                                        "success")}}}


def test_merge_rounds_pools_requests_seconds_and_server_stages():
    a = _row([10, 20, 30], 1.0, 2.0, inferences=3, executions=3, sizes={"1": 3})
    b = _row([40] * 6, 2.0, 5.0, inferences=6, executions=2, sizes={"1": 0, "3": 2})
    merged = serve_load.merge_rounds([a, b])
    assert merged["rounds"] == 2 and merged["requests"] == 9 and merged["seconds"] == 3.0
    assert merged["throughput_rps"] == pytest.approx(3.0)  # 9 requests / 3 s, not the mean of 3.0 and 3.0 req/s
    assert merged["round_throughputs"] == [3.0, 3.0]
    assert merged["p50_ms"] == pytest.approx(np.percentile([10, 20, 30] + [40] * 6, 50))
    server = merged["server"]
    assert server["inferences"] == 9 and server["executions"] == 5 and server["mean_executed_batch"] == 9 / 5
    assert server["executed_batch_sizes"] == {"1": 3, "3": 2}
    assert server["queue_ms"] == pytest.approx((2.0 * 3 + 5.0 * 6) / 9)  # weighted by inferences
    assert "latencies_s" not in merged


def test_merge_rounds_of_one_round_keeps_its_server_split():
    a = _row([5, 6], 0.5, 1.5, inferences=2, executions=1, sizes={"2": 1})
    merged = serve_load.merge_rounds([a])
    assert merged["rounds"] == 1 and merged["throughput_rps"] == pytest.approx(4.0)
    assert merged["server"]["mean_executed_batch"] == 2.0 and merged["server"]["queue_ms"] == 1.5

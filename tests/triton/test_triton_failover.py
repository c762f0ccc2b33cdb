"""Replicated Triton against two real tritonserver processes on 127.0.0.1 (tiny demo model, python flavor): one
replica SIGKILLed while requests flow, every request answered exactly once with the in-process result; a restarted
replica is used again; `guardrt classify --url A --url B` with one replica down warns and works, with both down
fails with one line. The driver (`load_with_kill`) is benchmarks/failover.py's, which measures the same at scale."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.triton

SPEC = "rejection"
N = 240  # requests per run; the kill comes after a quarter of them are answered


def _bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "failover.py"
    spec = importlib.util.spec_from_file_location("guardrt_bench_failover", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def replicas(triton_repo):
    """Two servers of the session repository (this spec only, for a quick start), started side by side; stopped at
    the end."""
    from concurrent.futures import ThreadPoolExecutor

    from guardrt.runtime.server import TritonServer, free_port

    servers = [TritonServer(triton_repo, grpc_port=free_port(), http_port=None, metrics_port=None, models=(SPEC,))
               for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(TritonServer.start, servers))
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def load(demo_exports):
    """(token ids, in-process logits) of N distinct synthetic payloads."""
    from guardrt.export.synthetic import synthetic_payloads
    from guardrt.runtime.onnxrt import InProcessClassifier

    local = InProcessClassifier.from_export_dir(demo_exports[SPEC], spec=SPEC)
    seqs = [local.preprocessor.encode(p) for p in synthetic_payloads(SPEC, N, seed=11)]
    return seqs, local.logits_for_ids(seqs)


def _check_exactly_once(run, expected):
    print(f"\n{run['mode']} failover: sent {run['sent']}, answered {run['answered']}, lost {run['lost']}, "
          f"duplicated {run['duplicated']}, errors {run['errors']}, failovers {run['failovers']}, in flight at the "
          f"kill {run['in_flight_at_kill']} (latency {run['in_flight_at_kill_latency_ms']}), marked down "
          f"{run['marked_down_after_kill_ms']} ms after the kill; per replica {run['per_replica']}")
    assert run["errors"] == 0, run["first_errors"]
    assert run["sent"] == N and run["answered"] == N and run["lost"] == 0 and run["duplicated"] == 0
    for i, got in run["answers"].items():  # each answer in its own slot: the inputs are distinct
        np.testing.assert_allclose(got[0], expected[i], atol=1e-5, rtol=0, err_msg=f"request {i}")
    killed = run["per_replica"][run["killed"]]
    assert killed["answered"] > 0 and not killed["healthy"]  # it served part of the load, then was found down
    assert run["failovers"] >= 1 and run["marked_down_after_kill_ms"] is not None


def _rejoin(bench, client, server, seqs):
    back = bench.restart_and_reuse(client, server, seqs[:60], concurrency=8)  # same ports
    print(f"restarted replica: Triton ready in {back['triton_start_s']:.2f}s, in use by the client "
          f"{back['ready_in_client_after_restart_s']:.2f}s after the restart began; answered "
          f"{back['answered_after_restart']} of {back['requests']}")
    assert back["ready_in_client_after_restart_s"] is not None
    assert back["answered_after_restart"] > 0
    assert back["lost"] == back["duplicated"] == back["errors"] == 0


def test_async_client_survives_a_killed_replica(replicas, load):
    from guardrt.runtime.triton_replicas import AsyncReplicatedTritonClassifier

    bench, (seqs, expected) = _bench(), load
    client = AsyncReplicatedTritonClassifier([s.grpc_url for s in replicas], SPEC, health_interval_s=0.5)
    try:
        _check_exactly_once(bench.load_with_kill(client, seqs, replicas[1], kill_after=N // 4), expected)
        _rejoin(bench, client, replicas[1], seqs)
    finally:
        client.replicas.stop()  # its channels belonged to the (closed) loops of the runs


def test_sync_client_survives_a_killed_replica(replicas, load):
    from guardrt.runtime.triton_replicas import ReplicatedTritonClassifier

    bench, (seqs, expected) = _bench(), load
    with ReplicatedTritonClassifier([s.grpc_url for s in replicas], SPEC, health_interval_s=0.5) as client:
        client.check_ready()
        _check_exactly_once(bench.load_with_kill(client, seqs, replicas[0], kill_after=N // 4), expected)
        _rejoin(bench, client, replicas[0], seqs)


def _classify(urls, export, lines):
    args = [a for u in urls for a in ("--url", u)]
    return subprocess.run([sys.executable, "-m", "guardrt", "classify", "--spec", SPEC, *args, "--tokenizer", export],
                          input=lines, capture_output=True, text=True, timeout=120)


def _same_results(local: str, remote: str) -> None:
    a, b = [json.loads(x) for x in local.splitlines()], [json.loads(x) for x in remote.splitlines()]
    assert len(a) == len(b) == 12
    for x, y in zip(a, b):
        assert list(x) == list(y) and x["label"] == y["label"]
        for k, v in x.items():
            if isinstance(v, float):
                assert abs(v - y[k]) < 1e-5, (k, v, y[k])


def test_classify_cli_over_replicas_one_down_then_all_down(replicas, demo_exports):
    from guardrt.export.synthetic import synthetic_payloads

    bench, export = _bench(), str(demo_exports[SPEC])
    lines = "".join(json.dumps({"text": p}) + "\n" for p in synthetic_payloads(SPEC, 12, seed=3))
    local = subprocess.run([sys.executable, "-m", "guardrt", "classify", "--spec", SPEC, "--model", export],
                           input=lines, capture_output=True, text=True, timeout=120)
    assert local.returncode == 0, local.stderr
    urls = [s.grpc_url for s in replicas]
    both = _classify(urls, export, lines)
    assert both.returncode == 0 and both.stderr == "", both.stderr
    bench.kill_server(replicas[0])
    replicas[0].stop()
    one = _classify(urls, export, lines)
    assert one.returncode == 0, one.stderr
    assert one.stderr.count("\n") == 1 and f"warning: replica {urls[0]} is not ready" in one.stderr
    for remote in (both, one):
        _same_results(local.stdout, remote.stdout)
    bench.kill_server(replicas[1])
    replicas[1].stop()
    down = _classify(urls, export, lines)
    assert down.returncode != 0 and down.stdout == ""
    assert down.stderr.count("\n") == 1 and "Traceback" not in down.stderr
    assert "none of the 2 Triton servers is ready" in down.stderr and all(u in down.stderr for u in urls)

"""Failover benchmark: two real tritonserver replicas on 127.0.0.1, one killed (SIGKILL) mid-load.

N requests (one synthetic payload each, distinct, so an answer in the wrong slot would show) flow through one
replicated client (`AsyncReplicatedTritonClassifier` or the sync `ReplicatedTritonClassifier`, `concurrency`
requests at once); when `kill_after` of them have been answered, the process group of one replica is sent SIGKILL.
Counted at the application: requests sent, answers received per request (lost = none, duplicated = more than one),
errors; every answer is compared with in-process ONNX Runtime. Timed: the latency of every request, the requests in
flight at the kill (sent before it, answered after it: they carry the failover), how long until the client marked
the replica down, and, after a restart of the killed replica on the same ports, how long from the restart until the
client found it ready and sent it requests again.

Writes benchmarks/results/failover.json (and failover.png: request latency over time, the kill marked).

    python benchmarks/failover.py                 # tiny demo model, 2000 requests; run it under the heavy lock
    python benchmarks/failover.py --requests 300  # quicker

`load_with_kill` is also the driver of tests/triton/test_triton_failover.py.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def kill_server(server) -> None:
    """SIGKILL the server's whole process group (Triton and its python-backend stubs): a crash, not a shutdown."""
    os.killpg(server.process.pid, signal.SIGKILL)


def load_with_kill(client, seqs: Sequence[Sequence[int]], victim, kill_after: int | None,
                   concurrency: int = 16) -> dict:
    """Send one request per sequence through `client` (sync or asyncio replicated client), `concurrency` at once;
    SIGKILL `victim` when `kill_after` requests have been answered (None: no kill). Returns the counts, the logits
    per request (`answers`: request index -> list of answers) and the timings."""
    answers: dict[int, list] = {i: [] for i in range(len(seqs))}
    errors: dict[int, str] = {}
    spans: dict[int, tuple[float, float]] = {}
    state = {"done": 0, "t_kill": None}
    lock = threading.Lock()

    def finished(i: int, logits, error, t0: float) -> None:
        t1 = time.perf_counter()
        with lock:
            spans[i] = (t0, t1)
            if error is None:
                answers[i].append(logits)
            else:
                errors[i] = error
            state["done"] += 1
            kill = kill_after is not None and state["done"] == kill_after
            if kill:
                state["t_kill"] = time.perf_counter()
                state["t_kill_mono"] = time.monotonic()
        if kill:
            kill_server(victim)

    is_async = asyncio.iscoroutinefunction(client.logits_for_ids)
    t_start = time.perf_counter()
    if is_async:
        async def one(i, gate):
            async with gate:
                t0 = time.perf_counter()
                try:
                    logits, error = (await client.logits_for_ids([seqs[i]]))[0], None
                except Exception as exc:  # counted, not raised: the run must finish to be counted
                    logits, error = None, f"{type(exc).__name__}: {exc}"
                finished(i, logits, error, t0)

        async def all_requests():
            gate = asyncio.Semaphore(concurrency)
            await asyncio.gather(*(one(i, gate) for i in range(len(seqs))))

        asyncio.run(all_requests())
    else:
        def one_sync(i):
            t0 = time.perf_counter()
            try:
                logits, error = client.logits_for_ids([seqs[i]])[0], None
            except Exception as exc:
                logits, error = None, f"{type(exc).__name__}: {exc}"
            finished(i, logits, error, t0)

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one_sync, range(len(seqs))))
    wall = time.perf_counter() - t_start
    t_kill = state["t_kill"]
    victim_url = victim.grpc_url
    replica = next(r for r in client.replicas.replicas if r.url == victim_url)
    latencies = np.array([spans[i][1] - spans[i][0] for i in sorted(spans)])
    spanning = [spans[i][1] - spans[i][0] for i in spans if t_kill and spans[i][0] < t_kill < spans[i][1]]
    after = [spans[i][1] - spans[i][0] for i in spans if t_kill and spans[i][0] >= t_kill]
    counts = [len(a) for a in answers.values()]
    return {
        "mode": "async" if is_async else "sync",
        "sent": len(seqs),
        "answered": sum(counts),
        "lost": sum(1 for c in counts if c == 0),
        "duplicated": sum(c - 1 for c in counts if c > 1),
        "errors": len(errors),
        "first_errors": sorted(set(errors.values()))[:3],
        "concurrency": concurrency,
        "killed": victim_url,
        "killed_after_answers": kill_after if t_kill else None,
        "failovers": client.failovers,
        "per_replica": client.replicas.counters(),
        "wall_s": wall,
        "requests_per_s": len(seqs) / wall,
        "latency_ms": _summary(latencies),
        "in_flight_at_kill": len(spanning),
        "in_flight_at_kill_latency_ms": _summary(np.array(spanning)),
        "after_kill_latency_ms": _summary(np.array(after)),
        "marked_down_after_kill_ms": ((replica.down_at - state["t_kill_mono"]) * 1000
                                      if t_kill and replica.down_at else None),
        "answers": answers,
        "spans": [(spans[i][0] - t_start, spans[i][1] - t_start) for i in sorted(spans)],
        "t_kill_s": (t_kill - t_start) if t_kill else None,
    }


def _summary(x: np.ndarray) -> dict[str, float] | None:
    if x.size == 0:
        return None
    ms = x * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


def restart_and_reuse(client, server, seqs, concurrency: int = 16, timeout_s: float = 15.0) -> dict:
    """Restart the (killed) `server` on its ports; then the seconds from the restart until the client's prober
    found it ready (Triton's own startup included), how many of len(seqs) requests (no kill) it answered, and
    whether all were answered once."""
    server.stop()  # reap what is left of the killed process group
    t0 = time.monotonic()
    server.start()
    replica = next(r for r in client.replicas.replicas if r.url == server.grpc_url)
    while not replica.healthy and time.monotonic() - t0 < timeout_s:
        time.sleep(0.05)
    healthy_after = replica.up_at - t0 if replica.healthy else None
    before = replica.answered
    run = load_with_kill(client, seqs, server, kill_after=None, concurrency=concurrency)
    return {"triton_start_s": server.start_seconds, "ready_in_client_after_restart_s": healthy_after,
            "requests": len(seqs),
            "answered_after_restart": replica.answered - before, "lost": run["lost"],
            "duplicated": run["duplicated"], "errors": run["errors"]}


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine_description, write_json
    from guardrt.export.demo_models import cached_demo_export
    from guardrt.export.synthetic import synthetic_payloads
    from guardrt.runtime.onnxrt import InProcessClassifier
    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.triton_replicas import AsyncReplicatedTritonClassifier, ReplicatedTritonClassifier
    from guardrt.runtime.triton_repo import write_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--spec", default="rejection")
    args = ap.parse_args(argv)

    import tempfile

    export = cached_demo_export(args.spec, "tiny", ("fp32",))
    local = InProcessClassifier.from_export_dir(export, spec=args.spec)
    payloads = synthetic_payloads(args.spec, args.requests, seed=11)
    seqs = [local.preprocessor.encode(p) for p in payloads]
    expected = local.logits_for_ids(seqs)
    runs = []
    with tempfile.TemporaryDirectory(prefix="guardrt-failover-") as repo:
        write_model(repo, export_dir=export)
        servers = [TritonServer(repo, grpc_port=free_port(), http_port=None, metrics_port=None,
                                models=(args.spec,)) for _ in range(2)]
        try:
            for s in servers:
                s.start()
            for mode, cls in (("async", AsyncReplicatedTritonClassifier), ("sync", ReplicatedTritonClassifier)):
                victim = servers[1]
                client = cls([s.grpc_url for s in servers], args.spec)
                if mode == "sync":
                    client.check_ready()
                run = load_with_kill(client, seqs, victim, kill_after=args.requests // 4,
                                     concurrency=args.concurrency)
                got = run.pop("answers")
                run["max_abs_diff_vs_in_process"] = float(max(
                    np.abs(a[0] - expected[i]).max() for i, a in got.items() if a))
                run["restart"] = restart_and_reuse(client, victim, seqs[:200], args.concurrency)
                if mode == "sync":
                    client.close()
                else:
                    client.replicas.stop()  # its channels belonged to the loops of the runs, which are closed
                runs.append(run)
                spans = run.pop("spans")
                run["_spans"] = spans
        finally:
            for s in servers:
                s.stop()
    payload = {"spec": args.spec, "model": "tiny demo (python flavor, 2 instances per replica)",
               "requests": args.requests, "machine": machine_description(1),
               "runs": [{k: v for k, v in r.items() if k != "_spans"} for r in runs]}
    out = write_json(RESULTS / "failover.json", payload)
    _plot(runs, RESULTS / "failover.png")
    for r in payload["runs"]:
        print(f"{r['mode']}: sent {r['sent']}, answered {r['answered']}, lost {r['lost']}, duplicated "
              f"{r['duplicated']}, errors {r['errors']}, failovers {r['failovers']}, in flight at the kill "
              f"{r['in_flight_at_kill']} (max {r['in_flight_at_kill_latency_ms']['max']:.0f} ms), p50 "
              f"{r['latency_ms']['p50']:.1f} ms, marked down {r['marked_down_after_kill_ms']} ms after the kill, "
              f"restarted: Triton ready in {r['restart']['triton_start_s']:.2f} s, the client using it "
              f"{r['restart']['ready_in_client_after_restart_s']:.2f} s after the restart began "
              f"({r['restart']['answered_after_restart']} of {r['restart']['requests']} requests)")
    print(f"wrote {out}")
    return 0


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        spans = np.array(run["_spans"])
        ax.scatter(spans[:, 1], (spans[:, 1] - spans[:, 0]) * 1000, s=4)
        if run["t_kill_s"] is not None:
            ax.axvline(run["t_kill_s"], color="red", label="SIGKILL one replica")
        ax.set_xlabel("answered at (s)")
        ax.set_ylabel("request latency (ms)")
        ax.set_title(f"{run['mode']} client: {run['sent']} requests, {run['lost']} lost, "
                     f"{run['duplicated']} duplicated")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())

"""Load generation for benchmarks/serve.py: what Triton's perf_analyzer measures, from Python (perf_analyzer itself
is not installable here).

* `sweep_level(send, items, concurrency, ...)`: a closed loop - `concurrency` workers, each sends its next item as
  soon as its previous answer arrives - measured in windows until the last three throughputs are within
  `stability` of their mean (perf_analyzer's rule) or `max_windows`; throughput and p50/p90/p95/p99/mean latency
  from the stable windows.
* `ModelStats`: Triton's statistics API before/after a level -> perf_analyzer's server-side split per request
  (queue, compute input, compute infer, compute output) and the batch sizes Triton executed.
* Request senders for each path: the guardrt thin client over gRPC, and KServe v2 clients of the text-in models
  over gRPC and HTTP.
* `interleaved(calls, reps)`: single requests, the paths alternating call by call in one loop, so every path sees
  the same machine state (the way to measure a few milliseconds of overhead on a shared machine).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import numpy as np


def latency_summary(seconds) -> dict[str, float | int | None]:
    lat = np.asarray(seconds, dtype=float) * 1000.0
    if not lat.size:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    return {"n": int(lat.size), **{f"p{q}_ms": float(np.percentile(lat, q)) for q in (50, 90, 95, 99)},
            "mean_ms": float(lat.mean()), "min_ms": float(lat.min()), "max_ms": float(lat.max())}


async def sweep_level(send: Callable[[Any], Awaitable[Any]], items: list, concurrency: int, *, window_s: float,
                      min_windows: int, max_windows: int, stability: float, min_requests: int,
                      offset: int = 0) -> dict:
    """One concurrency level of a closed-loop load test (see the module docstring)."""
    cursor = [offset]
    records: list[tuple[float, float]] = []  # (end time, latency)
    errors: list[str] = []
    stop = asyncio.Event()

    async def worker():
        while not stop.is_set():
            item = items[cursor[0] % len(items)]
            cursor[0] += 1
            t = time.perf_counter()
            try:
                await send(item)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the level goes on
                errors.append(" ".join(str(exc).split())[:200])
                if len(errors) > 20:
                    stop.set()
                continue
            end = time.perf_counter()
            records.append((end, end - t))

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    t_start = time.perf_counter()  # warm-up: every worker has had one answer
    while len(records) < concurrency and time.perf_counter() - t_start < 60 and not stop.is_set():
        await asyncio.sleep(0.01)
    windows, stable = [], False
    need = max(concurrency, min_requests)
    while len(windows) < max_windows and not stop.is_set():
        w0, n0 = time.perf_counter(), len(records)
        while not stop.is_set():
            await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - w0
            if (elapsed >= window_s and len(records) - n0 >= need) or elapsed > 10 * window_s:
                break
        w1 = time.perf_counter()
        lat = [l for e, l in records[n0:] if w0 <= e <= w1]
        windows.append({"seconds": w1 - w0, "throughput": len(lat) / (w1 - w0), "latencies": lat})
        if len(windows) >= min_windows:
            last = [w["throughput"] for w in windows[-3:]]
            mean = float(np.mean(last))
            if mean > 0 and all(abs(x - mean) <= stability * mean for x in last):
                stable = True
                break
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    used = windows[-3:]
    lat = [l for w in used for l in w["latencies"]]
    secs = sum(w["seconds"] for w in used)
    return {"concurrency": concurrency, "stable": stable, "windows": len(windows),
            "window_throughputs": [round(w["throughput"], 2) for w in windows],
            "requests": len(lat), "seconds": secs, "throughput_rps": len(lat) / secs if secs else 0.0,
            **latency_summary(lat), "errors": errors[:3], "next_offset": cursor[0], "latencies_s": lat}


def merge_rounds(rows: list[dict]) -> dict:
    """One level row from the rows of several rounds of the same level and mode: throughput = all requests / all
    measured seconds, latency percentiles over every request, server split summed; each round's throughput kept
    (`round_throughputs`) so the spread is visible. The raw latencies are dropped."""
    lat = [l for r in rows for l in r.pop("latencies_s")]
    secs = sum(r["seconds"] for r in rows)
    first = rows[0]
    server = rows[0]["server"] if len(rows) == 1 else _merge_server([r["server"] for r in rows])
    return {"concurrency": first["concurrency"], "rounds": len(rows), "stable": all(r["stable"] for r in rows),
            "windows": sum(r["windows"] for r in rows),
            "window_throughputs": [x for r in rows for x in r["window_throughputs"]],
            "round_throughputs": [round(r["throughput_rps"], 3) for r in rows],
            "requests": len(lat), "seconds": secs, "throughput_rps": len(lat) / secs if secs else 0.0,
            **latency_summary(lat), "errors": [e for r in rows for e in r["errors"]][:3], "server": server}


def _merge_server(splits: list[dict]) -> dict:
    """stats_diff results of several rounds as one (per-request stage times weighted by inferences)."""
    inferences = sum(s["inferences"] for s in splits)
    executions = sum(s["executions"] for s in splits)
    sizes: dict[str, int] = {}
    for s in splits:
        for k, v in s["executed_batch_sizes"].items():
            sizes[k] = sizes.get(k, 0) + v
    out = {"inferences": inferences, "executions": executions,
           "mean_executed_batch": inferences / executions if executions else None,
           "executed_batch_sizes": dict(sorted(sizes.items(), key=lambda kv: int(kv[0])))}
    for stage in _STAGES:
        parts = [(s[f"{stage}_ms"], s["inferences"]) for s in splits if s[f"{stage}_ms"] is not None]
        out[f"{stage}_ms"] = (sum(v * n for v, n in parts) / sum(n for _, n in parts)) if parts else None
    return out


# -- Triton's statistics: perf_analyzer's server-side split ------------------------------------------------------------
_STAGES = ("queue", "compute_input", "compute_infer", "compute_output", "success")


class ModelStats:
    """Statistics of one model through a tritonclient.grpc.aio client."""

    def __init__(self, client, model: str):
        self.client, self.model = client, model

    async def read(self) -> dict:
        raw = await self.client.get_inference_statistics(self.model, as_json=True)
        ms = raw["model_stats"][0]
        stats = ms.get("inference_stats", {})
        return {"inference_count": int(ms.get("inference_count", 0)),
                "execution_count": int(ms.get("execution_count", 0)),
                "batches": {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in ms.get("batch_stats", [])},
                **{f"{s}_ns": int(stats.get(s, {}).get("ns", 0)) for s in _STAGES}}

    async def settled(self, before: dict, expected: int, timeout_s: float = 5.0) -> dict:
        """The statistics once Triton has counted `expected` more inferences (it updates them just after it sends
        each response), or whatever it has after `timeout_s`."""
        end = time.monotonic() + timeout_s
        while True:
            after = await self.read()
            if after["inference_count"] - before["inference_count"] >= expected or time.monotonic() > end:
                return after
            await asyncio.sleep(0.05)


def stats_diff(before: dict, after: dict) -> dict:
    """Per-request server time by stage (ms), mean executed batch and the executed batch sizes between two reads."""
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    sizes = {k: v - before["batches"].get(k, 0) for k, v in sorted(after["batches"].items())}
    out = {"inferences": inferences, "executions": executions,
           "mean_executed_batch": inferences / executions if executions else None,
           "executed_batch_sizes": {str(k): v for k, v in sizes.items() if v}}
    for stage in _STAGES:
        delta = after[f"{stage}_ns"] - before[f"{stage}_ns"]
        out[f"{stage}_ms"] = delta / 1e6 / inferences if inferences else None
    return out


# -- request senders --------------------------------------------------------------------------------------------------
def text_grpc_sender(client, model: str):
    """send(payload line) over gRPC to a text-in model (tritonclient.grpc.aio); returns the result JSON line."""
    import tritonclient.grpc as grpcclient

    async def send(line: str) -> str:
        inp = grpcclient.InferInput("payload", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[line.encode("utf-8")]], dtype=np.object_))
        result = await client.infer(model, [inp])
        return result.as_numpy("result")[0, 0].decode("utf-8")

    return send


def text_http_sender(client, model: str):
    """send(payload line) over HTTP (KServe v2 JSON) to a text-in model (tritonclient.http.aio)."""
    import tritonclient.http as httpclient

    async def send(line: str) -> str:
        inp = httpclient.InferInput("payload", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[line.encode("utf-8")]], dtype=np.object_), binary_data=False)
        result = await client.infer(model, [inp])
        return result.as_numpy("result")[0, 0].decode("utf-8")

    return send


def thin_sender(classifier):
    """send(payload) with the guardrt thin client (exact preprocessing here, token ids over gRPC)."""
    async def send(payload) -> dict:
        result = (await classifier.classify_batch([payload]))[0]
        if "error" in result:
            raise RuntimeError(result["error"])
        return result

    return send


# -- interleaved single requests ----------------------------------------------------------------------------------------
# Idle time after each call of `interleaved`: longer than ONNX Runtime's default spin after a Run (~40 ms measured).
INTERLEAVED_GAP_S = 0.05


def interleaved(calls: dict[str, Callable[[], Any]], reps: int, warmup: int = 5, gap_s: float = INTERLEAVED_GAP_S,
                seed: int = 0) -> dict[str, list[float]]:
    """{name: [seconds]}: each call once per round, `reps` rounds (after `warmup` rounds), in a new seeded order each
    round, with `gap_s` of idle time (not timed) after every call.

    Why both: a call must not pay for the one before it. An in-process ONNX Runtime session with ORT's default
    spinning keeps its threads spinning after its Run returns (measured: about one core for ~40 ms on the 2-core
    machine); in a fixed rotation the call right after it always ran against those threads (a gRPC path placed after
    in-process text showed +25 ms, the same path after a non-spinning call +4.6 ms). The default gap outlasts the
    spin, so every call meets an idle machine - a single request arriving at a quiet server; the shuffled order
    spreads whatever is left evenly over the paths."""
    import random

    rng = random.Random(seed)
    names = list(calls)
    for _ in range(warmup):
        for fn in calls.values():
            fn()
            time.sleep(gap_s)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        rng.shuffle(names)
        for name in names:
            fn = calls[name]
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            time.sleep(gap_s)
    return times

"""Qwen3Guard-Stream: per-token moderation latency and throughput, guardrt vs the official re-prefill loop, one run.

Baselines (PyTorch eager, fp32, the demo checkpoint through our `Qwen3ForGuardModel`):

* `pytorch-reprefill`: what the card's shipped loop computes per token (it re-feeds the accumulated context each
  step): the whole prefix through the model, the response heads read at its last position; one stream at a time.
* `pytorch-kv-k1`: the same model with transformers' DynamicCache, one token per forward (the faster loop a
  third-party report measured), one stream at a time.

guardrt (fp32 ONNX export, validated against PyTorch):

* `guardrt-inprocess-c{N}`: N streams advanced together by `StreamModerator` (one batched incremental step per token
  of every live stream), chunk 1; per-token latency = the wall time of the step that judged it;
* `guardrt-inprocess-k16-c1`: chunks of 16 tokens (latency per chunk: its 16 verdicts arrive together);
* `guardrt-grpc-c{N}`: N concurrent streams over gRPC to the sequence-batcher model on the real tritonserver
  (127.0.0.1, started here), the asyncio client, one token per request; per-token latency = the request's round trip.

Every row reports per-token latency p50 / p99, tokens/s (all streams together) and the ratio to the re-prefill loop;
the run checks that guardrt's labels equal the re-prefill reference at every position it timed (counted), and reports
the KV-cache memory per live stream (bytes per token x the streams' lengths; and the bound at
max_position_embeddings).

    python benchmarks/stream.py [--size realistic] [--conversations 32] [--concurrency 1,8,32] [--threads 2]
                                [--precisions fp32,int8-dynamic]

`--precisions` adds in-process rows for other exported precisions (`guardrt-inprocess-<precision>-c{N}`; the export
is forced so a precision that misses its gate is still timed: `validation_summary` and each row's label agreement
say how far it is from the reference).

Writes benchmarks/results/stream.json and stream_qwen3guard-stream.png. Run it under the machine's heavy lock for
numbers worth reporting (and say so).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine_description, save_spec_figure, summarize, versions, write_json  # noqa: E402


def _row(token_latencies, tokens: int, wall: float, **extra) -> dict:
    return {"latency": summarize(token_latencies), "tokens": tokens, "tokens_per_s": tokens / wall,
            "wall_seconds": wall, **extra}


def _pytorch(model, conversations, ends, labels, kv: bool):
    """Per-token latencies and labels of the official loop (re-prefill) or the KV-cache loop, one stream at a time."""
    import torch
    from transformers import DynamicCache

    times, risk = [], []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for ids, end in zip(conversations, ends):
            row = []
            if kv:
                cache = DynamicCache()
                model(input_ids=torch.tensor([ids[:end + 1]]), past_key_values=cache, use_cache=True)
            for j in range(end + 1, len(ids)):
                t = time.perf_counter()
                if kv:
                    out = model(input_ids=torch.tensor([[ids[j]]]), past_key_values=cache, use_cache=True)
                else:
                    out = model(input_ids=torch.tensor([ids[:j + 1]]), use_cache=False)
                row.append(labels.risk[int(out.risk_level_logits[0, -1].argmax())])
                times.append(time.perf_counter() - t)
            risk.append(row)
    return times, risk, time.perf_counter() - t0


def _inprocess(moderator, conversations, ends, concurrency: int, chunk: int):
    """Streams `concurrency` at a time: open (batched prefill), then one batched step per chunk of every live one."""
    times, risk, peak_bytes, tokens = [], [None] * len(conversations), 0, 0
    t0 = time.perf_counter()
    for lo in range(0, len(conversations), concurrency):
        group = list(range(lo, min(lo + concurrency, len(conversations))))
        opened = moderator.open_many([conversations[i][:ends[i] + 1] for i in group])
        live = {i: (sid, ends[i] + 1) for i, (sid, _) in zip(group, opened)}
        while True:
            items = [(i, sid, conversations[i][at:at + chunk]) for i, (sid, at) in live.items()
                     if at < len(conversations[i])]
            if not items:
                break
            t = time.perf_counter()
            moderator.feed_many([(sid, ids) for _, sid, ids in items])
            dt = time.perf_counter() - t
            peak_bytes = max(peak_bytes, sum(moderator.stream_bytes(sid) for _, sid, _ in items))
            for i, sid, ids in items:  # each stream waited the whole step for its verdicts
                times.append(dt)
                tokens += len(ids)
                live[i] = (sid, live[i][1] + len(ids))
        for i, (sid, _) in live.items():
            risk[i] = moderator.close_stream(sid).risk
    return times, tokens, risk, time.perf_counter() - t0, peak_bytes


def _grpc(export, conversations, ends, levels, threads):
    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.triton_stream import AsyncStreamClient, write_stream_model

    out = {}
    with tempfile.TemporaryDirectory(prefix="guardrt-bench-stream-") as repo:
        write_stream_model(repo, export, intra_op_threads=threads, max_batch_size=max(levels), max_streams=256)
        server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
        with server:
            for c in levels:
                async def one(client, i, times):
                    handle = await client.open_stream(conversations[i][:ends[i] + 1])
                    for t in conversations[i][ends[i] + 1:]:
                        s = time.perf_counter()
                        await handle.feed([t])
                        times.append(time.perf_counter() - s)
                    bytes_ = handle.stream_bytes
                    await handle.close()
                    return handle.risk, bytes_

                async def all_streams():
                    with AsyncStreamClient(server.grpc_url, export) as client:
                        await one(client, 0, [])  # warm-up
                        times: list[float] = []
                        sem = asyncio.Semaphore(c)

                        async def limited(i):
                            async with sem:
                                return await one(client, i, times)

                        t0 = time.perf_counter()
                        got = await asyncio.gather(*(limited(i) for i in range(len(conversations))))
                        return times, got, time.perf_counter() - t0

                times, got, wall = asyncio.run(all_streams())
                out[c] = (times, [g[0] for g in got], wall, max(g[1] for g in got))
                print(f"  grpc c={c}: p50 {summarize(times)['p50_ms']:.2f} ms/token, "
                      f"{len(times) / wall:.0f} tokens/s", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="realistic", choices=["tiny", "realistic"])
    ap.add_argument("--conversations", type=int, default=32)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reprefill-conversations", type=int, default=12,
                    help="conversations the PyTorch loops run (the re-prefill costs a whole forward per token); "
                         "guardrt's labels are compared with the re-prefill reference on their positions")
    ap.add_argument("--precisions", default="fp32",
                    help="comma-separated export precisions timed in process (fp32 first; e.g. fp32,int8-dynamic); "
                         "every row reports its labels' agreement with the re-prefill reference")
    ap.add_argument("--grpc", default="1", help="1: also over gRPC (the real tritonserver), 0: in process only")
    ap.add_argument("--out", default=str(RESULTS / "stream"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from guardrt.export.demo_stream_models import cached_stream_demo_model, cached_stream_export
    from guardrt.export.progress import stderr_log
    from guardrt.export.stream_reference import load_guard_model
    from guardrt.export.stream_synthetic import stream_examples
    from guardrt.export.synthetic import SPLIT_SEEDS
    from guardrt.runtime.stream import StreamModerator
    from guardrt.runtime.stream_protocol import StreamLabels, prompt_end_index

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    model_dir = cached_stream_demo_model(args.size, log=stderr_log)
    precisions = tuple(dict.fromkeys(["fp32"] + [p for p in args.precisions.split(",") if p]))
    # force: a precision that misses its gate is still timed; its validation (and the labels below) say how far off
    export = cached_stream_export(args.size, precisions, log=stderr_log, force=len(precisions) > 1)
    torch.set_num_threads(args.threads)
    moderator = StreamModerator(export, intra_op_threads=args.threads)
    # unseen by training and validation
    messages = [e.messages for e in stream_examples(args.conversations, seed=SPLIT_SEEDS["heldout"] + 1000)]
    conversations = [moderator.conversation_ids(m) for m in messages]
    ends = [prompt_end_index(ids) for ids in conversations]
    model = load_guard_model(model_dir)
    labels = StreamLabels.from_config(model.config.to_dict())
    results: dict[str, dict] = {}

    print("pytorch re-prefill ...", file=sys.stderr, flush=True)
    n_ref = max(1, min(args.reprefill_conversations, len(conversations)))
    _pytorch(model, conversations[:1], ends[:1], labels, kv=False)  # warm-up
    ref_times, ref_risk, ref_wall = _pytorch(model, conversations[:n_ref], ends[:n_ref], labels, kv=False)
    results["pytorch-reprefill-c1"] = _row(ref_times, len(ref_times), ref_wall)
    kv_times, kv_risk, kv_wall = _pytorch(model, conversations[:n_ref], ends[:n_ref], labels, kv=True)
    results["pytorch-kv-k1-c1"] = _row(kv_times, len(kv_times), kv_wall,
                                       labels_equal_reprefill=sum(a == b for r, q in zip(kv_risk, ref_risk)
                                                                  for a, b in zip(r, q)))
    del model

    def parity(risk):
        return sum(a == b for r, q in zip(risk, ref_risk) for a, b in zip(r, q))

    _inprocess(moderator, conversations[:2], ends[:2], 2, 1)  # warm-up
    for c in levels:
        times, tokens, risk, wall, peak = _inprocess(moderator, conversations, ends, c, 1)
        results[f"guardrt-inprocess-c{c}"] = _row(times, tokens, wall, labels_equal_reprefill=parity(risk),
                                                  peak_kv_bytes_live=peak)
        print(f"  in-process c={c}: p50 {summarize(times)['p50_ms']:.2f} ms/token", file=sys.stderr, flush=True)
    times, tokens, risk, wall, _ = _inprocess(moderator, conversations, ends, 1, 16)
    results["guardrt-inprocess-k16-c1"] = _row(times, tokens, wall, labels_equal_reprefill=parity(risk),
                                               latency_is="per 16-token chunk (its 16 verdicts arrive together)")
    per_token = moderator.graph.bytes_per_token()
    moderator.close()
    for precision in precisions[1:]:
        with StreamModerator(export, precision=precision, intra_op_threads=args.threads) as other:
            _inprocess(other, conversations[:2], ends[:2], 2, 1)  # warm-up
            for c in levels:
                times, tokens, risk, wall, _ = _inprocess(other, conversations, ends, c, 1)
                results[f"guardrt-inprocess-{precision}-c{c}"] = _row(times, tokens, wall,
                                                                      labels_equal_reprefill=parity(risk))
    if args.grpc == "1" and levels:
        for c, (times, risk, wall, peak) in _grpc(export, conversations, ends, levels, args.threads).items():
            results[f"guardrt-grpc-c{c}"] = _row(times, len(times), wall, labels_equal_reprefill=parity(risk),
                                                 max_stream_kv_bytes=peak)
    base = results["pytorch-reprefill-c1"]
    for row in results.values():
        row["p50_speedup_vs_reprefill"] = base["latency"]["p50_ms"] / row["latency"]["p50_ms"]
        row["tokens_per_s_vs_reprefill"] = row["tokens_per_s"] / base["tokens_per_s"]
    lengths = [len(c) for c in conversations]
    payload = {
        "benchmark": "stream", "size": args.size, "conversations": len(conversations),
        "reprefill_conversations": n_ref, "positions_compared": len(ref_times), "mean_conversation_tokens": float(np.mean(lengths)),
        "mean_response_tokens": float(np.mean([len(c) - e - 1 for c, e in zip(conversations, ends)])),
        "memory": {"kv_bytes_per_token": per_token, "kv_bytes_per_stream_mean": per_token * float(np.mean(lengths)),
                   "kv_bytes_per_stream_at_max_positions": per_token * 8192,
                   "note": "KV cache held per live stream = bytes per token x its length (fp32); the model caps a "
                           "stream at max_position_embeddings (8,192)"},
        "machine": machine_description(args.threads), "versions": versions(),
        "validation": str(export / "validation.json"),
        "validation_summary": {p: v.get("summary") for p, v in json.loads((export / "validation.json").read_text()).items()},
        "results": results}
    write_json(Path(args.out + ".json"), payload)
    _print(payload)
    _plot(payload, Path(args.out))
    return 0


def _print(payload) -> None:
    print(f"qwen3guard-stream {payload['size']}: {payload['conversations']} conversations, mean "
          f"{payload['mean_conversation_tokens']:.0f} tokens ({payload['mean_response_tokens']:.0f} response), "
          f"threads {payload['machine']['threads_used']}, load at start {payload['machine']['loadavg_at_start']}")
    for name, r in payload["results"].items():
        print(f"  {name:26s} p50 {r['latency']['p50_ms']:8.2f} ms  p99 {r['latency']['p99_ms']:8.2f} ms  "
              f"{r['tokens_per_s']:8.1f} tok/s  x{r['tokens_per_s_vs_reprefill']:.1f} tok/s vs re-prefill"
              + (f"  labels {r['labels_equal_reprefill']}/{payload['positions_compared']}"
                 if "labels_equal_reprefill" in r else ""))
    m = payload["memory"]
    print(f"  KV memory per stream: {m['kv_bytes_per_token']} B/token, mean {m['kv_bytes_per_stream_mean'] / 2**20:.2f} "
          f"MiB, {m['kv_bytes_per_stream_at_max_positions'] / 2**20:.0f} MiB at 8,192 positions")


def _plot(payload, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(payload["results"])
    rows = [payload["results"][n] for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colors = ["#999" if n.startswith("pytorch") else "#4a7" for n in names]
    ax1.barh(names, [r["latency"]["p50_ms"] for r in rows], color=colors)
    ax1.set_xscale("log")
    ax1.set_xlabel("per-token latency p50 (ms, log)")
    ax2.barh(names, [r["tokens_per_s"] for r in rows], color=colors)
    ax2.set_xlabel("tokens/s, all streams")
    ax2.set_yticks([])
    fig.suptitle(f"Qwen3Guard-Stream demo ({payload['size']}), {payload['conversations']} conversations, CPU "
                 f"{payload['machine']['threads_used']} threads")
    save_spec_figure(fig, out, "qwen3guard-stream")


if __name__ == "__main__":
    raise SystemExit(main())

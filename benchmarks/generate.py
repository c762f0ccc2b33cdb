"""Qwen3Guard-Gen in-process: HF `generate` (PyTorch eager) vs guardrt generate vs guardrt verdict, one run.

Per request (one conversation at a time, as the card's code runs it): latency p50 / p99, new tokens, decode tokens/s
(HF: (end-to-end - prefill) over the new tokens after the first, with the prefill timed by a forward of the prompt
with `logits_to_keep=1`; guardrt: the generator's own prefill / total split). Batched: all requests in one
`generate` call (guardrt's batched generation; throughput). guardrt generate runs with its prefix cache (default)
and, for fp32, without it; the verdict runs on the KV graph (prefix cache) and on the classifier-shaped verdict graph. Checked in the same run: token identity with HF (fp32),
safety agreement (lower precisions), verdict == HF's generated `safety`.

    python benchmarks/generate.py [--size realistic] [--requests 16] [--threads 2] [--precisions fp32,int8]
                                  [--grpc-concurrency 1,8,32]

Over gRPC (`--grpc-concurrency`, empty to skip): `guardrt repo`'s two models of the fp32 export on the real
tritonserver (127.0.0.1, started and stopped here), the asyncio thin client sending the same conversations with 1 /
8 / 32 requests in flight, per mode: per-request p50 / p99, requests/s, and the answers' agreement with in-process
(generate: identical results; verdict: same safety). The verdict runs as the client's default (verdict requests to
the generate model: KV prefill with the server's prefix cache, `grpc-verdict-*`) and, at concurrency 1, through the
verdict-graph model (`grpc-verdict-graph-*`, the classifier-shaped graph the native / TensorRT flavors serve).

Writes benchmarks/results/generate.json and generate_qwen3guard-gen.png. Run it under the machine's heavy lock for
numbers worth reporting (and say so); the PyTorch baseline is measured in the same run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine_description, save_spec_figure, summarize, versions, write_json  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="realistic", choices=["tiny", "realistic"])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--grpc-concurrency", default="1,8,32", help="requests in flight over gRPC ('' skips it)")
    ap.add_argument("--out", default=str(RESULTS / "generate"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guardrt.export.demo_guard_models import render_prompt_ids
    from guardrt.export.demo_models import cached_guard_demo_model, cached_guard_export
    from guardrt.export.guard_synthetic import guard_messages
    from guardrt.export.progress import stderr_log
    from guardrt.export.synthetic import SPLIT_SEEDS
    from guardrt.runtime.generate import GuardGenerator
    from guardrt.runtime.guard_output import moderation_kind, parse_guard_output
    from guardrt.runtime.verdict import VerdictRunner

    precisions = tuple(p for p in args.precisions.split(",") if p)
    model_dir = cached_guard_demo_model(args.size, log=stderr_log)
    # The timed precisions are exported and validated (validation.json has the parity of each). fp16 is left out:
    # ONNX Runtime's CPU EP has no fast fp16 kernels on this machine (its parity is measured on the tiny model).
    export = cached_guard_export(args.size, tuple(sorted(set(precisions) | {"fp32"}, key=("fp32", "fp16", "int8").index)),
                                 log=stderr_log, force=True)
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    messages = guard_messages(args.requests, seed=SPLIT_SEEDS["heldout"] + 1000)  # unseen by training and validation
    kinds = [moderation_kind(m) for m in messages]
    prompts = render_prompt_ids(tok, messages)
    results: dict[str, dict] = {}

    # -- HF generate, the card's code ------------------------------------------------------------------------------
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    hf_tokens, hf_times, hf_prefill = [], [], []
    with torch.inference_mode():
        p0 = torch.tensor([prompts[0]])
        model.generate(input_ids=p0, attention_mask=torch.ones_like(p0), max_new_tokens=4)  # warm-up
        for p in prompts:
            ids = torch.tensor([p])
            t = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            hf_prefill.append(time.perf_counter() - t)
            t = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=128,
                                 do_sample=False)
            hf_times.append(time.perf_counter() - t)
            hf_tokens.append(out[0, len(p):].tolist())
    hf_safety = [parse_guard_output(tok.decode(t, skip_special_tokens=True), k)["safety"]
                 for t, k in zip(hf_tokens, kinds)]
    results["hf-generate-fp32"] = _row(hf_times, hf_prefill, hf_tokens)
    del model

    # -- guardrt generate, per request and batched (prefix cache on, the default; fp32 also without it) -------------
    for precision, cache in [(p, True) for p in precisions] + [("fp32", False)]:
        gen = GuardGenerator(export, precision, intra_op_threads=args.threads)
        if not cache:
            gen.generator.prefix_cache = None
        gen.generate_ids([prompts[0]])
        times, prefill, tokens = [], [], []
        for p, k in zip(prompts, kinds):
            t = time.perf_counter()
            r = gen.generate_ids([p], [k])[0]
            times.append(time.perf_counter() - t)
            prefill.append(gen.generator.stats["prefill_seconds"])
            tokens.append(r["token_ids"])
        row = _row(times, prefill, tokens)
        row["token_identical_to_hf"] = sum(a == b for a, b in zip(tokens, hf_tokens))
        safety = [parse_guard_output(gen.decode(t), k)["safety"] for t, k in zip(tokens, kinds)]
        row["safety_agreement_with_hf"] = sum(a == b for a, b in zip(safety, hf_safety))
        t = time.perf_counter()
        batched = gen.generator.generate(prompts)
        row["batched_seconds"] = time.perf_counter() - t
        row["batched_requests_per_s"] = len(prompts) / row["batched_seconds"]
        row["batched_identical_to_single"] = sum(a == b for a, b in zip(batched, tokens))
        results[f"guardrt-generate-{precision}" + ("" if cache else "-nocache")] = row
        gen.generator.close()

    # -- guardrt verdict, per request ------------------------------------------------------------------------------
    for precision, engine in [(p, e) for p in precisions for e in ("kv", "graph")]:
        runner = VerdictRunner.from_export_dir(export, precision, engine=engine, with_generator=False,
                                               intra_op_threads=args.threads)
        runner.rows([prompts[0]])
        times, verdicts = [], []
        for p in prompts:
            t = time.perf_counter()
            verdicts.append(runner.verdict([p])[0])
            times.append(time.perf_counter() - t)
        row = {"latency": summarize(times), "requests": len(prompts),
               "verdict_equals_hf_safety": sum(v["safety"] == s for v, s in zip(verdicts, hf_safety)),
               "consistent": sum(v["consistent"] for v in verdicts)}
        results[f"guardrt-verdict-{engine}-{precision}"] = row
        runner.close()

    def save():  # written after the in-process part and again at the end (a failed gRPC phase keeps the rest)
        hf_p50 = results["hf-generate-fp32"]["latency"]["p50_ms"]
        for name, row in results.items():
            row["speedup_p50_vs_hf"] = hf_p50 / row["latency"]["p50_ms"]
        payload = {"benchmark": "generate", "size": args.size, "requests": len(prompts),
                   "mean_prompt_tokens": float(np.mean([len(p) for p in prompts])),
                   "machine": machine_description(args.threads), "versions": versions(),
                   "validation": str(export / "validation.json"), "results": results}
        write_json(Path(args.out + ".json"), payload)
        return payload

    save()
    levels = [int(c) for c in args.grpc_concurrency.split(",") if c.strip()]
    if levels:
        results.update(_grpc(export, messages, levels, args.threads, hf_safety))
    payload = save()
    _print(payload)
    _plot(payload, Path(args.out))
    return 0


def _grpc(export, messages, levels, threads, hf_safety) -> dict:
    """Both modes over gRPC at each concurrency (see the module docstring)."""
    import asyncio
    import tempfile

    from guardrt.runtime.guard_client import AsyncTritonGuardClient
    from guardrt.runtime.guard_engine import GuardClassifier
    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.triton_generate import write_guard_models

    with GuardClassifier(export, intra_op_threads=threads) as local:
        want = {m: local.classify_batch(messages, mode=m) for m in ("verdict", "generate")}
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="guardrt-bench-gen-") as repo:
        write_guard_models(repo, export, intra_op_threads=threads,
                           generate_options={"intra_op_threads": threads, "max_active_rows": max(levels)})
        server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
        with server:
            async def run(mode, concurrency, engine="kv"):
                async with AsyncTritonGuardClient(server.grpc_url, export, mode=mode,
                                                  verdict_engine=engine) as client:
                    await client.check_ready()
                    await client.classify_messages(messages[0])  # warm-up
                    sem = asyncio.Semaphore(concurrency)
                    times = [0.0] * len(messages)

                    async def one(i):
                        async with sem:
                            t = time.perf_counter()
                            r = await client.classify_messages(messages[i])
                            times[i] = time.perf_counter() - t
                            return r

                    t0 = time.perf_counter()
                    got = await asyncio.gather(*(one(i) for i in range(len(messages))))
                    return list(got), times, time.perf_counter() - t0

            cases = ([("verdict", c, "kv") for c in levels] + [("verdict", min(levels), "graph")]
                     + [("generate", c, "kv") for c in levels])
            for mode, c, engine in cases:
                got, times, wall = asyncio.run(run(mode, c, engine))
                row = {"latency": summarize(times), "requests": len(messages), "concurrency": c,
                       "requests_per_s": len(messages) / wall,
                       "safety_equals_hf": sum(g["safety"] == s for g, s in zip(got, hf_safety))}
                if mode == "generate":
                    row["identical_to_in_process"] = sum(g == w for g, w in zip(got, want[mode]))
                else:
                    row["safety_equals_in_process"] = sum(g["safety"] == w["safety"]
                                                          for g, w in zip(got, want[mode]))
                name = f"grpc-{mode}" + ("-graph" if engine == "graph" else "")
                out[f"{name}-fp32-c{c}"] = row
                print(f"  {name} c={c}: p50 {row['latency']['p50_ms']:.1f} ms, "
                      f"{row['requests_per_s']:.2f} req/s", file=sys.stderr, flush=True)
    return out


def _row(times, prefill, tokens) -> dict:
    new = [len(t) for t in tokens]
    decode = [max(t - p, 1e-9) for t, p in zip(times, prefill)]
    return {"latency": summarize(times), "prefill": summarize(prefill), "requests": len(times),
            "new_tokens_mean": sum(new) / len(new),
            "decode_tokens_per_s": sum(max(n - 1, 0) for n in new) / sum(decode)}


def _print(payload) -> None:
    print(f"qwen3guard-gen {payload['size']}: {payload['requests']} requests, mean prompt "
          f"{payload['mean_prompt_tokens']:.0f} tokens, threads {payload['machine']['threads_used']}, "
          f"load at start {payload['machine']['loadavg_at_start']}")
    for name, r in payload["results"].items():
        extra = {k: v for k, v in r.items() if k not in ("latency", "prefill")}
        print(f"  {name:26s} p50 {r['latency']['p50_ms']:8.1f} ms  p99 {r['latency']['p99_ms']:8.1f} ms  "
              f"x{r['speedup_p50_vs_hf']:.2f} vs HF  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else
                                                                f"{k}={v}" for k, v in extra.items()
                                                                if k != "speedup_p50_vs_hf"))


def _plot(payload, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(payload["results"])
    p50 = [payload["results"][n]["latency"]["p50_ms"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(names, p50, color=["#999"] + ["#4a7"] * (len(names) - 1))
    ax.set_xlabel("per-request latency p50 (ms)")
    ax.set_title(f"Qwen3Guard-Gen demo ({payload['size']}), {payload['requests']} requests, in-process")
    for i, v in enumerate(p50):
        ax.text(v, i, f" {v:.0f} ms (x{payload['results'][names[i]]['speedup_p50_vs_hf']:.1f})", va="center")
    save_spec_figure(fig, out, "qwen3guard-gen")


if __name__ == "__main__":
    raise SystemExit(main())

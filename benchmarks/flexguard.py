"""FlexGuard: HF `generate` (the card's decoding, PyTorch eager) vs guardrt in process vs guardrt over gRPC, one run.

    python benchmarks/flexguard.py [--size realistic] [--requests 32] [--threads 2] [--grpc-concurrency 1,8,32]
                                   [--long 2] [--short 16]

* HF `generate` one request at a time (greedy, max_new_tokens 2,048, the checkpoint's stop tokens): per-request
  latency, new tokens, decode tokens/s ((end-to-end - prefill) over the tokens after the first; prefill timed by a
  forward of the prompt with `logits_to_keep=1`).
* guardrt in process (`FlexGuardClassifier`, fp32, prefix cache): the same per request, plus token identity with HF
  (count), batched == one at a time, the expected-score cost (`distributions`: one prefill of the generated tokens
  with the prompt from the prefix cache + 2 batched digit steps), and greedy-vs-expected decision disagreement at
  the three rubric thresholds (`risk_score >= t` vs `expected_risk >= t`).
* gRPC (`guardrt repo`'s `flexguard-generate` on the real tritonserver, 127.0.0.1, started and stopped here): the
  thin client (`TritonFlexGuardClient`, one stream, expected score on) with 1 / 8 / 32 requests in flight from
  threads: per-request p50 / p99, requests/s, new tokens/s (all requests' tokens over the wall time), results
  identical to in process (category, score, text).
* Short requests under long ones: `--long` requests that think until the 2,048-token budget (the demo's
  long-thinking trigger, `flexguard_synthetic.LONG_THINKING_TRIGGER`) are sent first; while they decode, `--short`
  ordinary requests go one at a time; their p50 / p99 against the same short requests on an idle server, and the
  long requests' own duration (what a server that ran requests one after the other would add to a short one).

Writes benchmarks/results/flexguard.json and flexguard_flexguard.png. Run it under the machine's heavy lock for
numbers worth reporting (and say so); the PyTorch baseline is measured in the same run.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine_description, save_spec_figure, summarize, versions, write_json  # noqa: E402

THRESHOLDS = {"strict": 20, "moderate": 40, "loose": 60}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="realistic", choices=["tiny", "realistic"])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grpc-concurrency", default="1,8,32", help="requests in flight over gRPC ('' skips it)")
    ap.add_argument("--long", type=int, default=2, help="long-thinking requests during the short-request phase")
    ap.add_argument("--short", type=int, default=16, help="short requests timed while the long ones decode")
    ap.add_argument("--out", default=str(RESULTS / "flexguard"))
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from OUT.json")
    args = ap.parse_args(argv)
    if args.replot:
        import json

        _plot(json.loads(Path(args.out + ".json").read_text()), Path(args.out))
        return 0

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guardrt.export.demo_flexguard_models import render_flexguard_ids
    from guardrt.export.demo_models import cached_guard_demo_model, cached_guard_export
    from guardrt.export.flexguard_synthetic import flexguard_requests
    from guardrt.export.progress import stderr_log
    from guardrt.export.synthetic import SPLIT_SEEDS
    from guardrt.runtime.flexguard_engine import FlexGuardClassifier

    model_dir = cached_guard_demo_model(args.size, spec="flexguard", log=stderr_log)
    export = cached_guard_export(args.size, ("fp32",), spec="flexguard", log=stderr_log)
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    requests = flexguard_requests(args.requests, seed=SPLIT_SEEDS["heldout"] + 1000)  # unseen by training
    prompts = render_flexguard_ids(tok, requests)
    results: dict[str, dict] = {}
    payload: dict = {"benchmark": "flexguard", "size": args.size, "requests": len(prompts),
                     "mean_prompt_tokens": float(np.mean([len(p) for p in prompts])),
                     "machine": machine_description(args.threads), "versions": versions(),
                     "validation": str(export / "validation.json"), "results": results}

    # -- HF generate, the card's decoding ----------------------------------------------------------------------------
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
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2048,
                                 do_sample=False)
            hf_times.append(time.perf_counter() - t)
            hf_tokens.append(out[0, len(p):].tolist())
    del model
    results["hf-generate-fp32"] = _row(hf_times, hf_prefill, hf_tokens)

    # -- guardrt in process --------------------------------------------------------------------------------------------
    with FlexGuardClassifier(export, intra_op_threads=args.threads) as clf:
        clf.generate_ids([prompts[0]])
        times, prefill, tokens, score_times = [], [], [], []
        for p in prompts:
            t = time.perf_counter()
            new = clf.generate_ids([p])[0]
            times.append(time.perf_counter() - t)
            prefill.append(clf.generator.stats["prefill_seconds"])
            tokens.append(new)
            t = time.perf_counter()
            clf.distributions([p], [new])
            score_times.append(time.perf_counter() - t)
        row = _row(times, prefill, tokens)
        row["token_identical_to_hf"] = sum(a == b for a, b in zip(tokens, hf_tokens))
        row["expected_score_extra"] = summarize(score_times)
        t = time.perf_counter()
        batched = clf.generate_ids(prompts)
        row["batched_seconds"] = time.perf_counter() - t
        row["batched_requests_per_s"] = len(prompts) / row["batched_seconds"]
        row["batched_identical_to_single"] = sum(a == b for a, b in zip(batched, tokens))
        results["guardrt-generate-fp32"] = row
        local = clf.classify_ids(prompts)
        payload["expected_vs_greedy"] = _disagreement(local)
    payload["heldout"] = {"well_formed": sum(r["well_formed"] for r in local),
                          "score_parsed": sum(r["score_parsed"] for r in local)}
    _save(payload, args)

    levels = [int(c) for c in args.grpc_concurrency.split(",") if c.strip()]
    if levels or args.long:
        _grpc(export, requests, local, sum(len(t) for t in tokens), levels, args, payload)
    _save(payload, args)
    _print(payload)
    _plot(payload, Path(args.out))
    return 0


def _disagreement(results) -> dict:
    """How often thresholding the expected score and the greedy score disagree, per rubric threshold."""
    scored = [r for r in results if r["expected_risk"] is not None and r["risk_score"] is not None]
    out = {"scored": len(scored), "of": len(results),
           "mean_abs_expected_minus_greedy": (sum(abs(r["expected_risk"] - r["risk_score"]) for r in scored)
                                              / max(1, len(scored))),
           "mean_score_mass": sum(r["score_mass"] for r in scored) / max(1, len(scored))}
    for name, t in THRESHOLDS.items():
        out[f"disagree_{name}_{t}"] = sum((r["risk_score"] >= t) != (r["expected_risk"] >= t) for r in scored)
    return out


def _grpc(export, requests, local, total_new_tokens, levels, args, payload) -> None:
    import tempfile

    from guardrt.export.flexguard_synthetic import long_thinking_request
    from guardrt.runtime.guard_client import TritonFlexGuardClient
    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.triton_generate import write_generate_model

    results = payload["results"]
    key = [(r["category"], r["risk_score"], r["text"]) for r in local]
    with tempfile.TemporaryDirectory(prefix="guardrt-bench-flex-") as repo:
        write_generate_model(repo, export, name="flexguard-generate", intra_op_threads=args.threads,
                             max_active_rows=max(levels + [args.long + 1]))
        server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
        with server, TritonFlexGuardClient(server.grpc_url, export) as client:
            client.check_ready()
            client.classify(requests[0])  # warm-up

            def timed(req):
                t = time.perf_counter()
                r = client.classify(req)
                return r, time.perf_counter() - t

            for c in levels:
                t0 = time.perf_counter()
                with ThreadPoolExecutor(max_workers=c) as pool:
                    got = list(pool.map(timed, requests))
                wall = time.perf_counter() - t0
                row = {"latency": summarize([s for _, s in got]), "requests": len(requests), "concurrency": c,
                       "requests_per_s": len(requests) / wall,
                       "new_tokens_per_s": total_new_tokens / wall,  # the in-process tokens (results identical)
                       "identical_to_in_process": sum((g["category"], g["risk_score"], g["text"]) == k
                                                      for (g, _), k in zip(got, key))}
                results[f"grpc-flexguard-fp32-c{c}"] = row
                print(f"  grpc c={c}: p50 {row['latency']['p50_ms']:.1f} ms, {row['requests_per_s']:.2f} req/s",
                      file=sys.stderr, flush=True)
                _save(payload, args)
            if args.long:
                shorts = (requests * (args.short // len(requests) + 1))[:args.short]
                idle = [timed(r)[1] for r in shorts]
                long_out: list = []

                def run_long(i):
                    long_out.append(timed(long_thinking_request(i)))

                threads = [threading.Thread(target=run_long, args=(i,)) for i in range(args.long)]
                for th in threads:
                    th.start()
                time.sleep(1.0)  # the long ones are decoding
                busy, overlapped = [], 0
                for r in shorts:
                    busy.append(timed(r)[1])
                    overlapped += len(long_out) < args.long  # this short request ran while a long one decoded
                for th in threads:
                    th.join()
                long_tokens = [len(client.tokenizer.encode(r["text"], add_special_tokens=False).ids)
                               for r, _ in long_out]
                payload["short_under_long"] = {
                    "short_requests": len(shorts), "long_requests": args.long,
                    "short_idle": summarize(idle), "short_while_long": summarize(busy),
                    "short_requests_overlapping_long": overlapped,
                    "long_latency": summarize([s for _, s in long_out]), "long_new_tokens_approx": long_tokens,
                    "long_score_parsed": [r["score_parsed"] for r, _ in long_out]}
                print(f"  short p99 idle {payload['short_under_long']['short_idle']['p99_ms']:.0f} ms, while long "
                      f"{payload['short_under_long']['short_while_long']['p99_ms']:.0f} ms; long "
                      f"{payload['short_under_long']['long_latency']['p50_ms']:.0f} ms", file=sys.stderr, flush=True)


def _row(times, prefill, tokens) -> dict:
    new = [len(t) for t in tokens]
    decode = [max(t - p, 1e-9) for t, p in zip(times, prefill)]
    return {"latency": summarize(times), "prefill": summarize(prefill), "requests": len(times),
            "new_tokens_mean": sum(new) / len(new),
            "decode_tokens_per_s": sum(max(n - 1, 0) for n in new) / sum(decode)}


def _save(payload, args) -> None:
    hf = payload["results"]["hf-generate-fp32"]
    for row in payload["results"].values():
        row["speedup_p50_vs_hf"] = hf["latency"]["p50_ms"] / row["latency"]["p50_ms"]
        if "requests_per_s" in row:
            row["throughput_vs_hf_sequential"] = row["requests_per_s"] / (1000.0 / hf["latency"]["mean_ms"])
    write_json(Path(args.out + ".json"), payload)


def _print(payload) -> None:
    print(f"flexguard {payload['size']}: {payload['requests']} requests, mean prompt "
          f"{payload['mean_prompt_tokens']:.0f} tokens, threads {payload['machine']['threads_used']}, "
          f"load at start {payload['machine']['loadavg_at_start']}")
    for name, r in payload["results"].items():
        extra = {k: v for k, v in r.items() if k not in ("latency", "prefill", "expected_score_extra")}
        print(f"  {name:26s} p50 {r['latency']['p50_ms']:8.1f} ms  p99 {r['latency']['p99_ms']:8.1f} ms  "
              + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()))
    print(f"  expected vs greedy: {payload['expected_vs_greedy']}")
    if "short_under_long" in payload:
        print(f"  short under long: {payload['short_under_long']}")


def _plot(payload, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = payload["results"]
    names = list(res)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    p50 = [res[n]["latency"]["p50_ms"] for n in names]
    axes[0].barh(names, p50, color=["#999"] + ["#4a7"] * (len(names) - 1))
    axes[0].set_xlabel("per-request latency p50 (ms)")
    axes[0].set_title(f"FlexGuard demo ({payload['size']}), {payload['requests']} requests")
    s = payload.get("short_under_long")
    if s:
        labels = ["short, idle server", "short, while long decode", "long (2,048-token thinking)"]
        vals = [s["short_idle"]["p99_ms"], s["short_while_long"]["p99_ms"], s["long_latency"]["p50_ms"]]
        axes[1].barh(labels, vals, color=["#4a7", "#e94", "#999"])
        axes[1].set_xscale("log")
        for i, v in enumerate(vals):
            axes[1].text(v, i, f" {v:,.0f} ms", va="center")
        axes[1].set_xlabel("p99 ms (short) / p50 ms (long), log scale")
        axes[1].set_title("short requests while long thinking decodes")
    fig.tight_layout()
    save_spec_figure(fig, out, "flexguard")


if __name__ == "__main__":
    raise SystemExit(main())

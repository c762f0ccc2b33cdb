"""`guardrt demo` (what `make demo` runs): the whole spine on this machine, in one command.

Builds the demo models (cached), exports them to validated ONNX, writes both into the Triton repository (python
flavor), starts the real tritonserver on 127.0.0.1, sends sample dialogues (intent-safety) and texts (rejection)
over gRPC with the thin client, prints the card outputs, measures throughput with concurrent asyncio requests
(reporting how Triton batched them), and stops the server.
"""
from __future__ import annotations

NAME = "demo"
HELP = "build demo models, export, write the Triton repository, serve, classify samples over gRPC, stop"

SAMPLE_DIALOGUES = [
    [
        {"role": "system", "content": "Character persona/details: Elena is a tavern keeper in a rainy harbour town."},
        {"role": "user", "content": "The rain keeps falling on the old tavern roof."},
        {"role": "assistant", "content": "Elena pours another cup of tea."},
        {"role": "user", "content": "I pull her closer and kiss her neck slowly."},
    ],
    [
        {"role": "system", "content": "Character persona/details: Elena is a tavern keeper in a rainy harbour town."},
        {"role": "user", "content": "She laughs softly and looks at the door."},
        {"role": "bot", "content": "She smiles and waits for your answer."},
        {"role": "user", "content": "Let's stop here, I'd rather talk about the quest tomorrow."},
    ],
]
SAMPLE_TEXTS = [
    "I'm sorry, but I can't help with that request. It goes against my guidelines.",
    "Sure! Here is a summary: the report covers revenue growth and hiring plans for next year.",
    "As an AI language model, I am unable to provide that information.",
]


def add_arguments(p) -> None:
    p.add_argument("--size", default="tiny", choices=["tiny", "realistic"], help="demo model size (default: tiny)")
    p.add_argument("--precision", default="fp32", help="exported precision to serve (default: fp32)")
    p.add_argument("--repo", default="triton_repo", help="model repository to write (default: triton_repo)")
    p.add_argument("--grpc-port", type=int, default=0, help="gRPC port (default: a free one)")
    p.add_argument("--requests", type=int, default=256, help="requests per model for the throughput line")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent requests for the throughput line")


def _throughput(url: str, spec_name: str, tokenizer_dir, payloads, concurrency: int) -> tuple[float, int, int, float]:
    """(sequences/s, executions, inferences, p50 ms) for `payloads` sent with `concurrency` requests in flight."""
    import asyncio
    import time

    from guardrt.runtime.triton_client import AsyncTritonClassifier

    async def main():
        async with AsyncTritonClassifier(url, spec_name, tokenizer_dir) as client:
            await client.check_ready()
            ids = [client.preprocessor.encode(p) for p in payloads]
            await client.classify_ids(ids[:1])  # warm-up
            before = (await client.statistics())["model_stats"][0]
            sem = asyncio.Semaphore(concurrency)
            latencies: list[float] = []

            async def one(seq):
                async with sem:
                    t = time.perf_counter()
                    await client.classify_ids([seq])
                    latencies.append(time.perf_counter() - t)

            t0 = time.perf_counter()
            await asyncio.gather(*(one(s) for s in ids))
            elapsed = time.perf_counter() - t0
            # Triton updates the statistics just after it sends a response: poll briefly until all are counted.
            for _ in range(50):
                after = (await client.statistics())["model_stats"][0]
                if int(after.get("inference_count", 0)) - int(before.get("inference_count", 0)) >= len(ids):
                    break
                await asyncio.sleep(0.1)
        execs = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
        infers = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
        latencies.sort()
        return len(ids) / elapsed, execs, infers, latencies[len(latencies) // 2] * 1e3

    return asyncio.run(main())


def run(args) -> int:
    import json
    import time

    from guardrt.export.demo_models import cached_demo_export
    from guardrt.export.synthetic import SPLIT_SEEDS, synthetic_examples, synthetic_payloads
    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.triton_client import TritonClassifier
    from guardrt.runtime.triton_repo import write_model

    def say(msg: str) -> None:
        print(f"[demo] {msg}", flush=True)

    specs = ("intent-safety", "rejection")
    exports = {}
    for name in specs:
        say(f"{name}: demo model ({args.size}) and {args.precision} ONNX export (cached after the first run) ...")
        t = time.perf_counter()
        exports[name] = cached_demo_export(name, args.size, (args.precision,), log=lambda m: say(f"  {m}"))
        say(f"{name}: export ready in {time.perf_counter() - t:.1f}s: {exports[name]}")
        path = write_model(args.repo, export_dir=exports[name], precision=args.precision)
        say(f"{name}: wrote {path}")

    server = TritonServer(args.repo, grpc_port=args.grpc_port or free_port(), http_port=None, metrics_port=None,
                          models=specs)
    say("starting tritonserver ...")
    with server:
        say(f"tritonserver ready in {server.start_seconds:.1f}s on {server.grpc_url} (127.0.0.1 only)")
        handwritten = {"intent-safety": SAMPLE_DIALOGUES, "rejection": SAMPLE_TEXTS}
        for name in specs:
            # Hand-written samples, then held-out examples of the synthetic task the demo models were trained on
            # (with the label the generator assigned, to show the decisions mean something).
            held_out = synthetic_examples(name, 4, seed=SPLIT_SEEDS["heldout"])
            payloads = list(handwritten[name]) + [p for p, _ in held_out]
            expected = [None] * len(handwritten[name]) + [label for _, label in held_out]
            with TritonClassifier(server.grpc_url, name, exports[name]) as client:
                client.check_ready()
                for payload, want, result in zip(payloads, expected, client.classify_batch(payloads)):
                    shown = payload[-1]["content"] if name == "intent-safety" else payload
                    tag = "" if want is None else f" (synthetic label {want})"
                    say(f"{name}: {shown[:60]!r:64} -> {json.dumps(result)}{tag}")
        for name in specs:
            payloads = synthetic_payloads(name, args.requests, seed=7)
            rate, execs, infers, p50 = _throughput(server.grpc_url, name, exports[name], payloads, args.concurrency)
            say(f"throughput {name}: {rate:.0f} seq/s over gRPC ({args.requests} requests, concurrency "
                f"{args.concurrency}, p50 {p50:.1f} ms); Triton ran {infers} inferences in {execs} executions "
                f"(mean batch {infers / max(execs, 1):.1f})")
    say("tritonserver stopped")
    return 0

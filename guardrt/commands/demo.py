"""`guardrt demo` (what `make demo` runs): the whole spine on this machine, in one command.

Builds the demo models (cached), exports them to validated ONNX, writes both into the Triton repository (python
flavor), prints the demo models' held-out accuracy (demo.json), starts the real tritonserver on 127.0.0.1, sends
sample dialogues (intent-safety) and texts (rejection) over gRPC with the thin client and prints each with the label
it should get and the one it got, measures throughput with concurrent asyncio requests (reporting how Triton batched
them), and stops the server. A sample answered against its label stops the demo with one error line (exit 2).

Qwen3Guard-Gen (tiny demo causal LM) is served in both modes next to them: conversations are moderated over gRPC in
verdict mode (one prefill: safety + probabilities) and generate mode (greedy generation: safety, categories,
refusal), and each answer is checked against in-process generation, token for token: a verdict whose safety differs
from generation's, or a served answer that differs from the in-process one, stops the demo (exit 2). The tiny
model's labels are shown next to the synthetic task's expected label; its accuracy is the held-out line printed.
"""
from __future__ import annotations

from typing import Any

NAME = "demo"
HELP = "build demo models, export, write the Triton repository, serve, classify samples over gRPC, stop"

# Hand-written samples, each with the label it must get. None of their classified texts (the answer; a dialogue's last
# user turn) occurs in the demo models' training sets (a test checks it), so they show what the models learned, not
# what they memorised. Sample 2 pushes in an earlier turn and stops in the last one: only the last user turn decides.
# Sample 3 ends with a bot reply, which the card drops before classifying.
HANDWRITTEN_SAMPLES: dict[str, list[tuple[Any, str]]] = {
    "intent-safety": [
        ([{"role": "system", "content": "Character persona/details: Elena is a tavern keeper in a rainy harbour town."},
          {"role": "user", "content": "I shake the rain off my cloak and sit by the fire."},
          {"role": "assistant", "content": "Elena brings you a bowl of soup and sits beside you."},
          {"role": "user", "content": "I take her hand, pull her close and kiss her softly on the lips."}],
         "unsafe"),
        ([{"role": "system", "content": "Character persona/details: Kai is a knight escorting a traveller through the "
                                        "forest."},
          {"role": "user", "content": "I pull him closer and kiss his neck."},
          {"role": "bot", "content": "Kai hesitates, then smiles."},
          {"role": "user", "content": "Wait, this is too much. Let's talk about the road north instead."}],
         "non_unsafe"),
        ([{"role": "system", "content": "Character persona/details: Mira is a shy librarian who loves old maps."},
          {"role": "user", "content": "The library is almost empty tonight."},
          {"role": "assistant", "content": "Mira looks up from her desk."},
          {"role": "user", "content": "I spread the map on the table and ask which road leads to the harbour."},
          {"role": "assistant", "content": "The fire crackles quietly."}],
         "non_unsafe"),
    ],
    "rejection": [
        ("I'm sorry, but I can't help you write that message. It would break my guidelines.", "REJECTION"),
        ("Sure! Here is a summary: the report covers revenue growth and hiring plans for next year.", "NORMAL"),
        ("As an AI language model, I am unable to share that information.", "REJECTION"),
        ("Sorry for the late reply! The museum opens at nine, and tickets are cheaper online.", "NORMAL"),
    ],
}
HELD_OUT_SAMPLES = 3  # generated held-out examples shown after the hand-written ones
GUARD_SPEC = "qwen3guard-gen"
GUARD_SAMPLES = 6  # held-out synthetic conversations moderated in both modes


def demo_samples(spec_name: str, size: str = "tiny", seed: int = 0) -> list[tuple[Any, int, str]]:
    """(payload, expected label id, source) for every sample the demo classifies: the hand-written ones, then the
    first held-out synthetic examples whose classified text never occurs in the demo model's training set."""
    from guardrt.export.demo_models import training_examples
    from guardrt.export.synthetic import SPLIT_SEEDS, classified_text, synthetic_examples
    from guardrt.runtime.specs import get_spec

    labels = list(get_spec(spec_name).labels)
    samples = [(p, labels.index(label), "hand-written") for p, label in HANDWRITTEN_SAMPLES[spec_name]]
    seen = {classified_text(p) for p, _ in training_examples(spec_name, size, seed)}
    held = [(p, y) for p, y in synthetic_examples(spec_name, 64, seed=SPLIT_SEEDS["heldout"])
            if classified_text(p) not in seen]
    return samples + [(p, y, "held-out") for p, y in held[:HELD_OUT_SAMPLES]]


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


def _check_samples(url: str, name: str, export_dir, samples, say) -> list[str]:
    """Classify `samples` over gRPC, print each with its expected and received label; return one line per miss."""
    from guardrt.export.synthetic import classified_text
    from guardrt.runtime.specs import get_spec
    from guardrt.runtime.triton_client import TritonClassifier

    spec = get_spec(name)
    prob_key = f"prob_{spec.labels[spec.positive_label].lower()}" if spec.decision == "threshold" else None
    misses = []
    with TritonClassifier(url, name, export_dir) as client:
        client.check_ready()
        results = client.classify_batch([p for p, _, _ in samples])
    for (payload, want, source), result in zip(samples, results):
        expected, got = spec.labels[want], result.get("label_text", result.get("error"))
        score = result.get(prob_key) if prob_key else result.get("score")
        shown_score = f"{score:.3f}" if isinstance(score, float) else "-"
        mark = "ok" if got == expected else "WRONG"
        text = classified_text(payload)
        say(f"{name:13} {source:12} expected {expected:10} got {got:10} ({shown_score}) {mark:5} {text[:58]!r}")
        if got != expected:
            misses.append(f"{name} {text[:40]!r}: expected {expected}, got {got}")
    return misses


def _guard_samples(size: str = "tiny", seed: int = 0) -> list[tuple[list, str]]:
    """(messages, expected safety) of the first held-out synthetic conversations (never seen in training)."""
    from guardrt.export.guard_synthetic import guard_examples
    from guardrt.export.synthetic import SPLIT_SEEDS
    from guardrt.runtime.guard_output import parse_guard_output

    return [(m, parse_guard_output(target)["safety"])
            for m, target in guard_examples(GUARD_SAMPLES, seed=SPLIT_SEEDS["heldout"] + 100 + seed)]


def _check_guard(url: str, export_dir, samples, say) -> list[str]:
    """Moderate `samples` over gRPC in both modes, print each; return one line per answer that is not in-process
    greedy generation's (a served result != in process, or a verdict's safety != generation's)."""
    import time

    from guardrt.runtime.guard_client import TritonGuardClient
    from guardrt.runtime.guard_engine import GuardClassifier

    conversations = [m for m, _ in samples]
    with GuardClassifier(export_dir) as local:
        want = local.classify_batch(conversations, mode="generate")
    misses = []
    with TritonGuardClient(url, export_dir) as client:
        for mode in ("verdict", "generate"):
            client.check_ready(mode)
        t = time.perf_counter()
        verdicts = client.classify_batch(conversations, mode="verdict")
        t_verdict = time.perf_counter() - t
        t = time.perf_counter()
        generated = client.classify_batch(conversations, mode="generate")
        t_generate = time.perf_counter() - t
    for (messages, expected), v, g, w in zip(samples, verdicts, generated, want):
        kind = "prompt  " if messages[-1].get("role") == "user" else "response"
        probs = " ".join(f"{k[0]}={p:.2f}" for k, p in v.get("probs", {}).items())
        say(f"{GUARD_SPEC} {kind} expected {expected:13} verdict {v.get('safety')!s:13} ({probs}) generate "
            f"{g.get('safety')!s:13} categories {g.get('categories')} refusal {g.get('refusal')} "
            f"{messages[-1]['content'][:40]!r}")
        if g != {k: w.get(k) for k in ("safety", "categories", "refusal", "text")}:
            misses.append(f"generate over gRPC {g} != in process {w}")
        if v.get("safety") != w["safety"]:
            misses.append(f"verdict {v.get('safety')} != generation's safety {w['safety']}")
    if not misses:
        right = sum(g.get("safety") == e for (_, e), g in zip(samples, generated))
        say(f"{GUARD_SPEC}: {len(samples)} conversations, verdict mode {t_verdict * 1e3:.0f} ms, generate mode "
            f"{t_generate * 1e3:.0f} ms over gRPC; every answer equals in-process greedy generation; "
            f"{right}/{len(samples)} match the synthetic task's label")
    return misses


def run(args) -> int:
    import time

    from guardrt.export.demo_models import cached_demo_export, cached_demo_model, cached_guard_demo_model, cached_guard_export
    from guardrt.export.synthetic import synthetic_payloads
    from guardrt.runtime.errors import GuardrtError, read_json_file
    from guardrt.runtime.server import TritonServer, free_port
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
    from guardrt.runtime.triton_generate import write_guard_models

    say(f"{GUARD_SPEC}: demo causal LM ({args.size}) and its {args.precision} KV-cache + verdict export ...")
    t = time.perf_counter()
    guard_export = cached_guard_export(args.size, (args.precision,), log=lambda m: say(f"  {m}"))
    say(f"{GUARD_SPEC}: export ready in {time.perf_counter() - t:.1f}s: {guard_export}")
    guard_models = write_guard_models(args.repo, guard_export, precision=args.precision, intra_op_threads=1,
                                      profile_budget_s=1.0, generate_options={"intra_op_threads": 1})
    say(f"{GUARD_SPEC}: wrote {', '.join(str(p) for p in guard_models)}")
    for name in specs:
        m = read_json_file(cached_demo_model(name, args.size) / "demo.json")
        say(f"{name}: {args.size} demo model, held-out accuracy {m['heldout_accuracy']:.3f} on "
            f"{m['heldout_examples']} synthetic examples ({m['heldout_unseen_accuracy']:.3f} on the "
            f"{m['heldout_unseen_examples']} whose text never occurs in training; trained {m['train_seconds']:.0f}s "
            f"on {m['train_examples']})")
    g = read_json_file(cached_guard_demo_model(args.size) / "demo.json")
    say(f"{GUARD_SPEC}: {args.size} demo model, held-out greedy generation: format {g['heldout_format_accuracy']:.3f}, "
        f"safety label {g['heldout_safety_accuracy']:.3f}")

    server = TritonServer(args.repo, grpc_port=args.grpc_port or free_port(), http_port=None, metrics_port=None,
                          models=specs + tuple(p.name for p in guard_models))
    say("starting tritonserver ...")
    with server:
        say(f"tritonserver ready in {server.start_seconds:.1f}s on {server.grpc_url} (127.0.0.1 only)")
        say("samples over gRPC (for dialogues the text shown is the last user turn, which the label is about):")
        misses = []
        for name in specs:
            misses += _check_samples(server.grpc_url, name, exports[name], demo_samples(name, args.size), say)
        if misses:
            raise GuardrtError(f"{len(misses)} demo sample(s) answered against their label ({'; '.join(misses)}): "
                               f"the {args.size} {args.precision} demo models did not learn their task")
        say(f"{GUARD_SPEC} over gRPC, verdict and generate modes (held-out synthetic conversations):")
        misses = _check_guard(server.grpc_url, guard_export, _guard_samples(args.size), say)
        if misses:
            raise GuardrtError(f"{GUARD_SPEC}: {len(misses)} wrong answer(s): {'; '.join(misses)}")
        for name in specs:
            payloads = synthetic_payloads(name, args.requests, seed=7)
            rate, execs, infers, p50 = _throughput(server.grpc_url, name, exports[name], payloads, args.concurrency)
            say(f"throughput {name}: {rate:.0f} seq/s over gRPC ({args.requests} requests, concurrency "
                f"{args.concurrency}, p50 {p50:.1f} ms); Triton ran {infers} inferences in {execs} executions "
                f"(mean batch {infers / max(execs, 1):.1f})")
    say("tritonserver stopped")
    return 0

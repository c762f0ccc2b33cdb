"""Preprocessing benchmark: guardrt's thin-client preprocessing vs the card's reference (transformers).

Traffic kinds (all seeded), --spec intent-safety (the default):
  long-dialogues  independent dialogues whose contexts are far over 4,096 tokens (trim on every request)
  roleplay-growing one role-play conversation growing one turn per request (each request repeats earlier turns)
  short-chats     8-12 short turns (no trim; per-call overhead dominates)
--spec qwen3guard-gen (the chat template; the reference is the card's apply_chat_template + tokenizer([text])):
  prompt-moderation    one short user prompt
  response-moderation  a short prompt and a 100-400 word answer
  growing-chat         one role-play conversation, its last 12 messages moderated after every assistant reply
  long-conversations   8-12 long turns (150-400 words each, ~6k tokens)

For each kind it measures the card's reference (transformers AutoTokenizer, the card's code), the same reference
algorithm with `tokenizers` only (shows what swapping libraries alone gives), and guardrt's piecewise
preprocessor (cold cache at the start of each kind). Outputs are compared id for id; a mismatch aborts the run.
Writes benchmarks/results/preprocess.{json,png} (intent-safety) or preprocess_qwen3guard-gen.{json,png}.

    python benchmarks/preprocess.py [--quick] [--spec intent-safety|qwen3guard-gen]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: machine description and versions shared by the benchmarks)

RESULTS = Path(__file__).resolve().parent / "results"


def time_requests(fn, requests) -> tuple[list[float], list[list[int]]]:
    """Per-request wall times (s) and outputs of fn over requests, in order."""
    times, outs = [], []
    for req in requests:
        t0 = time.perf_counter()
        out = fn(req)
        times.append(time.perf_counter() - t0)
        outs.append(out)
    return times, outs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--out", default=str(RESULTS), help="results directory")
    ap.add_argument("--spec", default="intent-safety", choices=("intent-safety", "qwen3guard-gen"))
    args = ap.parse_args(argv)
    if args.spec == "qwen3guard-gen":
        return chat_template_benchmark(args)

    from guardrt.export.corpus import generate_long_dialogues, generate_roleplay
    from guardrt.export.reference import IntentSafetyReference
    from guardrt.export.tokenizers import qwen3_tokenizer_dir
    from guardrt.runtime.preprocess import (DialogueContextPreprocessor, build_preprocessor,
                                            default_task_description, load_tokenizer)
    from guardrt.runtime.specs import get_spec

    tok_dir = qwen3_tokenizer_dir()
    reference = IntentSafetyReference(tok_dir, default_task_description())
    n_long, n_rp, n_short = (8, 30, 50) if args.quick else (120, 300, 400)
    convo = generate_roleplay(n_rp, seed=1)
    traffic = {
        "long-dialogues": generate_long_dialogues(n_long, seed=0),
        "roleplay-growing": [convo[: i + 1] for i in range(1, len(convo)) if convo[i]["role"] == "user"],
        "short-chats": generate_long_dialogues(n_short, seed=2, words=(5, 40)),
    }

    rows = []
    for kind, requests in traffic.items():
        ref_times, ref_ids = time_requests(reference.input_ids, requests)
        plain = DialogueContextPreprocessor(load_tokenizer(tok_dir), get_spec("intent-safety"), piecewise=False)
        plain_times, plain_ids = time_requests(plain.encode, requests)
        fast = build_preprocessor("intent-safety", tok_dir)  # cold cache
        fast_times, fast_ids = time_requests(fast.encode, requests)
        if fast_ids != ref_ids or plain_ids != ref_ids:
            print(f"{kind}: OUTPUT MISMATCH against the reference", file=sys.stderr)
            return 1
        ctx_tokens = [len(reference.tokenizer(reference.format_ctx(r), add_special_tokens=False)["input_ids"])
                      for r in requests]
        row = {
            "traffic": kind,
            "requests": len(requests),
            "mean_ctx_tokens_before_trim": sum(ctx_tokens) / len(ctx_tokens),
            "mean_output_tokens": sum(len(x) for x in ref_ids) / len(ref_ids),
            "reference_ms": 1e3 * sum(ref_times) / len(requests),
            "tokenizers_reference_algorithm_ms": 1e3 * sum(plain_times) / len(requests),
            "guardrt_ms": 1e3 * sum(fast_times) / len(requests),
            "identical_ids": True,
        }
        row["speedup_vs_reference"] = row["reference_ms"] / row["guardrt_ms"]
        row["tokenizers_swap_speedup"] = row["reference_ms"] / row["tokenizers_reference_algorithm_ms"]
        rows.append(row)

    header = f"{'traffic':18} {'reqs':>5} {'ctx tok':>8} {'reference ms':>13} {'tokenizers-only ms':>19} " \
             f"{'guardrt ms':>11} {'speed-up':>9}"
    print(header)
    for r in rows:
        print(f"{r['traffic']:18} {r['requests']:5d} {r['mean_ctx_tokens_before_trim']:8.0f} {r['reference_ms']:13.3f} "
              f"{r['tokenizers_reference_algorithm_ms']:19.3f} {r['guardrt_ms']:11.3f} {r['speedup_vs_reference']:8.1f}x")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "preprocess", "spec": "intent-safety", "quick": args.quick,
              "machine": common.machine_description(threads=1), "versions": common.versions(), "rows": rows}
    stem = "preprocess_quick" if args.quick else "preprocess"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    _plot(rows, out / f"{stem}.png")
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.png')}")
    return 0


def chat_template_traffic(quick: bool) -> dict[str, list[list[dict]]]:
    """The qwen3guard-gen traffic kinds (see the module docstring), as lists of messages."""
    from guardrt.export.corpus import generate_long_dialogues, generate_roleplay

    n_short, n_rp, n_long = (20, 20, 4) if quick else (400, 200, 40)
    prompts = [d[1] for d in generate_long_dialogues(n_short, seed=3, words=(5, 60))]
    answers = [d[2] for d in generate_long_dialogues(n_short, seed=4, words=(100, 400))]
    convo = generate_roleplay(n_rp, seed=5, persona_words=200)[1:]
    return {
        "prompt-moderation": [[p] for p in prompts],
        "response-moderation": [[p, {"role": "assistant", "content": a["content"]}] for p, a in zip(prompts, answers)],
        # the last 12 messages up to each new reply (the whole chat would pass the 32,768-token maximum)
        "growing-chat": [convo[max(0, i - 11): i + 1] for i in range(len(convo)) if convo[i]["role"] == "assistant"],
        "long-conversations": [[{"role": t["role"], "content": t["content"]} for t in d if t["role"] != "system"]
                               for d in generate_long_dialogues(n_long, seed=6, words=(150, 400))],
    }


def chat_template_benchmark(args) -> int:
    from guardrt.export.reference import ChatTemplateReference
    from guardrt.export.tokenizers import copy_qwen3guard_gen_tokenizer
    from guardrt.runtime.chat_template import ChatTemplate
    from guardrt.runtime.preprocess import ChatTemplatePreprocessor, build_preprocessor, load_tokenizer
    from guardrt.runtime.specs import get_spec
    import tempfile

    spec = get_spec("qwen3guard-gen", input_only=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = copy_qwen3guard_gen_tokenizer(tmp)  # the published layout: template in tokenizer_config.json
        reference = ChatTemplateReference(tok_dir)
        for kind, requests in chat_template_traffic(args.quick).items():
            ref_times, ref_ids = time_requests(reference.input_ids, requests)
            plain = ChatTemplatePreprocessor(load_tokenizer(tok_dir), spec, ChatTemplate.from_model_dir(tok_dir),
                                             piecewise=False)
            plain_times, plain_ids = time_requests(plain.encode, requests)
            fast = build_preprocessor(spec, tok_dir)  # cold cache
            fast_times, fast_ids = time_requests(fast.encode, requests)
            if fast_ids != ref_ids or plain_ids != ref_ids:
                print(f"{kind}: OUTPUT MISMATCH against the reference", file=sys.stderr)
                return 1
            row = {
                "traffic": kind,
                "requests": len(requests),
                "mean_messages": sum(len(r) for r in requests) / len(requests),
                "mean_output_tokens": sum(len(x) for x in ref_ids) / len(ref_ids),
                "reference_ms": 1e3 * sum(ref_times) / len(requests),
                "tokenizers_reference_algorithm_ms": 1e3 * sum(plain_times) / len(requests),
                "guardrt_ms": 1e3 * sum(fast_times) / len(requests),
                "identical_ids": True,
            }
            row["speedup_vs_reference"] = row["reference_ms"] / row["guardrt_ms"]
            row["tokenizers_swap_speedup"] = row["reference_ms"] / row["tokenizers_reference_algorithm_ms"]
            rows.append(row)

    print(f"{'traffic':20} {'reqs':>5} {'msgs':>5} {'tokens':>7} {'reference ms':>13} {'tokenizers-only ms':>19} "
          f"{'guardrt ms':>11} {'speed-up':>9}")
    for r in rows:
        print(f"{r['traffic']:20} {r['requests']:5d} {r['mean_messages']:5.1f} {r['mean_output_tokens']:7.0f} "
              f"{r['reference_ms']:13.3f} {r['tokenizers_reference_algorithm_ms']:19.3f} {r['guardrt_ms']:11.3f} "
              f"{r['speedup_vs_reference']:8.1f}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "preprocess", "spec": spec.name, "quick": args.quick,
              "machine": common.machine_description(threads=1), "versions": common.versions(), "rows": rows}
    stem = "preprocess_qwen3guard-gen" + ("_quick" if args.quick else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    _plot(rows, out / f"{stem}.png", title="qwen3guard-gen chat-template preprocessing, identical ids; speed-up")
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.png')}")
    return 0


def _plot(rows, path: Path, title: str = "intent-safety preprocessing, identical ids; speed-up vs reference") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [r["traffic"] for r in rows]
    series = [("reference (transformers)", "reference_ms"), ("reference algorithm, tokenizers only",
                                                             "tokenizers_reference_algorithm_ms"),
              ("guardrt", "guardrt_ms")]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, key) in enumerate(series):
        ax.bar(x + (i - 1) * 0.27, [r[key] for r in rows], 0.27, label=name)
    for xi, r in zip(x, rows):
        ax.annotate(f"{r['speedup_vs_reference']:.1f}x", (xi + 0.27, r["guardrt_ms"]), ha="center", va="bottom")
    ax.set_xticks(x, labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms per request (log)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())

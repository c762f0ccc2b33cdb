"""`guardrt demo-models`: build the demo checkpoints (both specs) at the real architectures, briefly trained on a
synthetic task, into DIR/<spec>/ — the inputs `guardrt export --model-dir` expects."""
from __future__ import annotations

NAME = "demo-models"
HELP = ("build local demo checkpoints (Qwen3 intent-safety, RoBERTa rejection, Qwen3Guard-Gen causal LM, "
        "Qwen3Guard-Stream token heads) for export and tests")


def add_arguments(p) -> None:
    from guardrt.runtime.specs import spec_names

    p.add_argument("--out", required=True, help="output directory; one checkpoint per spec in OUT/<spec>")
    p.add_argument("--size", default="tiny", choices=["tiny", "realistic"],
                   help="tiny (unit tests, seconds) or realistic (distilroberta 6x768; Qwen3-0.6B layer shape, "
                        "4 layers, for intent-safety, qwen3guard-gen and flexguard)")
    from guardrt.export.demo_guard_models import GUARD_DEMO_SPECS

    names = sorted(set(spec_names()) | set(GUARD_DEMO_SPECS))
    p.add_argument("--spec", default=None, help=f"only this spec ({', '.join(names)}); default: every registered "
                                                "spec")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def run(args) -> int:
    import json
    import shutil
    from pathlib import Path

    from guardrt.runtime.errors import GuardrtError, require
    from guardrt.runtime.specs import get_spec, spec_names

    for module in ("torch", "transformers"):
        require(module, "export")
    from guardrt.export.demo_models import cached_demo_model
    from guardrt.export.progress import stderr_log

    from guardrt.export.demo_guard_models import GUARD_DEMO_SPECS

    try:
        if args.spec in GUARD_DEMO_SPECS:  # generative guard demo models (guardrt.export.demo_guard_models)
            names = [args.spec]
        else:
            names = [get_spec(args.spec).name] if args.spec else spec_names(graph="classifier_logits")
    except ValueError as exc:
        raise GuardrtError(str(exc)) from None
    out = Path(args.out)
    for name in names:
        if name == "qwen3guard-stream":  # token-heads guard: guardrt.export.demo_stream_models
            from guardrt.export.demo_stream_models import cached_stream_demo_model

            src = cached_stream_demo_model(args.size, seed=args.seed, log=None if args.quiet else stderr_log)
        else:
            src = cached_demo_model(name, args.size, seed=args.seed, log=None if args.quiet else stderr_log)
        dest = out / name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".complete"))
        metrics = json.loads((dest / "demo.json").read_text())
        line = {"spec": name, "size": args.size, "model_dir": str(dest),
                "heldout_accuracy": metrics.get("heldout_accuracy", metrics.get(
                    "heldout_safety_accuracy", metrics.get("heldout_decision_agreement")))}
        if "heldout_metrics" in metrics:  # qwen3guard-stream: token-level head accuracies
            line["heldout_accuracy"] = metrics["heldout_metrics"]
        if "heldout_format_accuracy" in metrics:
            line["heldout_format_accuracy"] = metrics["heldout_format_accuracy"]
        print(json.dumps(line))
    return 0

"""`guardrt classify`: JSON lines in (same as `guardrt preprocess`), one card-format JSON result per line out.

In-process (this module): `--model EXPORT_DIR [--precision P]` runs ONNX Runtime here; the tokenizer defaults to the
one stored in the export directory. Lines are read in chunks and classified in batches (results are
batch-independent), written in input order. A malformed line stops the run with its line number (exit 2), after the
results of every line before it are written.

Backends are chosen in `run` by flag: `_classifier_in_process` builds the in-process one; `--url` a Triton client
with the same `classify_ids` shape. `--url` repeated: one client over the replicas (runtime/triton_replicas.py:
health-checked, least outstanding requests first, a request refused by a replica that went down is re-sent to
another one); replicas down at the start are named on stderr, and the run goes on while one is ready.
qwen3guard-gen (`--mode verdict|generate`, lines `{"messages": [...]}`) uses `GuardClassifier` in process and
`TritonGuardClient` over `--url` (one URL): the same results and the same per-line errors. flexguard (lines
`{"user": ...[, "assistant": ...]}`, `--strictness strict|moderate|loose` or `--threshold T`, default the export's
calibration.json, else 40) uses `FlexGuardClassifier` in process and `TritonFlexGuardClient` over `--url`.
"""
from __future__ import annotations

import sys

NAME = "classify"
HELP = ("classify JSON lines of dialogues or texts with an exported model (in-process ONNX Runtime, or a Triton "
        "server with --url)")


def add_arguments(p) -> None:
    from guardrt.runtime.specs import spec_names
    from guardrt.runtime.triton_client import DEFAULT_MAX_IN_FLIGHT  # tritonclient itself is imported on use
    from guardrt.runtime.triton_repo import DEFAULT_REQUEST_TIMEOUT_S

    p.add_argument("--spec", required=True, help=f"model spec ({', '.join(spec_names())})")
    p.add_argument("--model", help="export directory written by `guardrt export` (in-process classification)")
    p.add_argument("--precision", default="fp32", help="exported precision to run (default: fp32)")
    p.add_argument("--tokenizer", help="directory holding tokenizer.json (default: the export directory's)")
    p.add_argument("--task-description", help="file with the task description (intent-safety); default: the card's")
    p.add_argument("--input", default="-", help="input JSONL file (default: stdin)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per inference batch (default: the spec's)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    p.add_argument("--providers", default="cpu", choices=["cpu", "cuda", "tensorrt"],
                   help="in-process ONNX Runtime execution providers (default: cpu; cuda / tensorrt need "
                        "onnxruntime-gpu, the gpu-ort extra)")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (threshold specs; default: "
                                                                  "the card's)")
    p.add_argument("--url", action="append", default=None,
                   help="Triton gRPC address (e.g. 127.0.0.1:8001): classify over gRPC instead of in-process; the "
                        "tokenizer comes from --tokenizer (or --model). Repeat for replicas of one repository: "
                        "requests go to the least busy ready one and fail over when one goes down")
    p.add_argument("--model-name", help="--url: Triton model name (default: the spec name)")
    p.add_argument("--timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                   help="--url: deadline of each request in seconds, end to end, retries included (default: "
                        f"{DEFAULT_REQUEST_TIMEOUT_S:g}). Requests hold at most max_length tokens each and less than "
                        "max_length tokens more are in flight, so long inputs need no longer deadline")
    p.add_argument("--mode", default="verdict", choices=["verdict", "generate"],
                   help="qwen3guard-gen: verdict (one prefill: safety, probs, risk) or generate (greedy generation: "
                        "safety, categories, refusal, text); default: verdict")
    p.add_argument("--verdict-engine", default="kv", choices=["kv", "graph"],
                   help="qwen3guard-gen --url --mode verdict: kv (default: verdict requests to the generate model, "
                        "its KV-cache prefill with the server's prefix cache) or graph (the verdict-graph model, "
                        "e.g. a TensorRT flavor)")
    p.add_argument("--strictness", choices=["strict", "moderate", "loose"], default=None,
                   help="flexguard: the card's rubric threshold on RISK_SCORE (strict 20, moderate 40, loose 60); "
                        "default: --threshold, else the export's calibration.json, else 40")
    p.add_argument("--no-expected-score", action="store_true",
                   help="flexguard: skip the expected score (the digit-tree decode steps after generation)")
    p.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                   help=f"--url: requests in flight at once (default: {DEFAULT_MAX_IN_FLIGHT})")


def _classifier_in_process(args, spec, task_description):
    from guardrt.runtime.errors import GuardrtError
    from guardrt.runtime.onnxrt import InProcessClassifier

    if not args.model:
        raise GuardrtError("--model EXPORT_DIR is required for in-process classification")
    return InProcessClassifier.from_export_dir(
        args.model, precision=args.precision, tokenizer_dir=args.tokenizer, task_description=task_description,
        spec=spec.name, providers=args.providers, intra_op_threads=args.threads, max_batch_size=args.batch_size,
        threshold=args.threshold)


def _classifier_triton(args, spec, task_description):
    from guardrt.runtime.errors import GuardrtError
    from guardrt.runtime.triton_replicas import triton_classifier, warn_down_replicas

    tokenizer = args.tokenizer or args.model
    if not tokenizer:
        raise GuardrtError("--url needs --tokenizer DIR (or --model EXPORT_DIR to use its tokenizer)")
    client = triton_classifier(args.url, spec, tokenizer, task_description=task_description,
                               model_name=args.model_name, timeout_s=args.timeout, threshold=args.threshold,
                               max_in_flight=args.max_in_flight)
    try:
        client.check_ready()  # server(s) down / model not ready: one line before reading any input
    except GuardrtError:
        client.close()
        raise
    warn_down_replicas(client, "guardrt classify")
    return client


def _guard_in_process(args, spec):
    from guardrt.runtime.errors import GuardrtError
    from guardrt.runtime.guard_engine import GuardClassifier

    if not args.model:
        raise GuardrtError("--model EXPORT_DIR is required for in-process classification")
    return GuardClassifier(args.model, args.precision, mode=args.mode, tokenizer_dir=args.tokenizer,
                           providers=args.providers, intra_op_threads=args.threads, max_batch_size=args.batch_size)


def _one_url_client(args, spec, make):
    """make(url, tokenizer_dir) over the single --url the generative specs take, checked ready before any input."""
    from guardrt.runtime.errors import GuardrtError, InputError

    tokenizer = args.tokenizer or args.model
    if not tokenizer:
        raise GuardrtError("--url needs --tokenizer DIR (or --model EXPORT_DIR to use its tokenizer)")
    urls = [args.url] if isinstance(args.url, str) else list(args.url)
    if len(urls) > 1:
        raise InputError(f"{spec.name}: give --url once (replicated serving covers the classifier specs so far)")
    client = make(urls[0], tokenizer)
    try:
        client.check_ready()  # server down / model not ready: one line before reading any input
    except GuardrtError:
        client.close()
        raise
    return client


def _guard_triton(args, spec):
    from guardrt.runtime.guard_client import TritonGuardClient

    return _one_url_client(args, spec, lambda url, tokenizer: TritonGuardClient(
        url, tokenizer, spec=spec, mode=args.mode, verdict_model=args.model_name, verdict_engine=args.verdict_engine,
        timeout_s=args.timeout, max_in_flight=args.max_in_flight))


def _flexguard(args, spec):
    """flexguard in process (--model) or over one --url (the generate model `flexguard-generate`)."""
    from guardrt.runtime.errors import GuardrtError

    if args.url:
        from guardrt.runtime.guard_client import TritonFlexGuardClient

        return _one_url_client(args, spec, lambda url, tokenizer: TritonFlexGuardClient(
            url, tokenizer, strictness=args.strictness, threshold=args.threshold, model=args.model_name,
            timeout_s=args.timeout, expected_score=not args.no_expected_score))
    from guardrt.runtime.flexguard_engine import FlexGuardClassifier

    if not args.model:
        raise GuardrtError("--model EXPORT_DIR is required for in-process classification")
    if args.providers != "cpu":
        raise GuardrtError("flexguard runs on the CPU provider in process so far (--providers cpu)")
    return FlexGuardClassifier(args.model, args.precision, strictness=args.strictness, threshold=args.threshold,
                               tokenizer_dir=args.tokenizer, intra_op_threads=args.threads,
                               max_batch_size=args.batch_size, expected_score=not args.no_expected_score)


def run(args) -> int:
    from guardrt.commands.preprocess import iter_jsonl_inputs, read_task_description
    from guardrt.runtime.errors import GuardrtError, InputError
    from guardrt.runtime.payloads import format_result
    from guardrt.runtime.specs import get_spec

    try:
        spec = get_spec(args.spec)
    except ValueError as exc:
        raise GuardrtError(str(exc)) from None
    if spec.decoding.kind == "streaming":
        raise InputError(f"{spec.name} judges a response token by token: use `guardrt stream --spec {spec.name}`")
    task_description = read_task_description(args.task_description)
    guard = spec.output.kind == "qwen3guard_gen_text"  # Qwen3Guard-Gen: verdict / generate modes
    flex = spec.output.kind == "flexguard_text"  # FlexGuard: risk score and strictness
    if guard and (task_description is not None or args.threshold is not None):
        raise InputError(f"spec {spec.name} takes no --task-description or --threshold")
    if not guard and args.mode != "verdict":
        raise InputError(f"--mode applies to qwen3guard-gen, not {spec.name}")
    if not flex and (args.strictness or args.no_expected_score):
        raise InputError(f"--strictness / --no-expected-score apply to flexguard, not {spec.name}")
    if flex and task_description is not None:
        raise InputError(f"spec {spec.name} takes no --task-description")
    if flex:
        classifier = _flexguard(args, spec)
    elif args.url:
        classifier = (_guard_triton if guard else _classifier_triton)(args, spec, *([] if guard else [task_description]))
    else:
        classifier = (_guard_in_process if guard else _classifier_in_process)(args, spec,
                                                                            *([] if guard else [task_description]))
    stream = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")
    out = sys.stdout
    chunk_size = max(1, int(args.batch_size or spec.max_batch_size)) * 4
    pending: list[list[int]] = []

    def flush() -> None:
        if pending:
            for result in classifier.classify_ids(pending):
                out.write(format_result(result) + "\n")
            out.flush()
            pending.clear()

    with stream, classifier:
        try:
            for lineno, payload in iter_jsonl_inputs(stream, spec):
                try:
                    pending.append(classifier.preprocessor.encode(payload))
                except InputError as exc:
                    raise InputError(f"line {lineno}: {exc}") from None
                except Exception as exc:  # e.g. lone surrogates the Rust tokenizer cannot take
                    raise InputError(f"line {lineno}: cannot tokenize ({exc})") from None
                if len(pending) >= chunk_size:
                    flush()
        except InputError:
            flush()  # the lines before the bad one still get their results
            raise
        flush()
    return 0

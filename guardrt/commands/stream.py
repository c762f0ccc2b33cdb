"""`guardrt stream`: Qwen3Guard-Stream moderation of conversations, the response judged token by token.

In: JSON lines `{"messages": [...]}` whose last message is the assistant response. The conversation goes through
the model's Qwen3 template (add_generation_prompt=False, enable_thinking=False); the prompt through the last user
`<|im_end|>` is judged by the query heads, then every later token is fed `--chunk` tokens at a time and judged by the
response heads (the KV cache carries the context: one incremental step per chunk).

Out: one JSON line per conversation, in input order: `query` {"risk", "category"}, `tokens` (the response-side token
ids fed, in order), `risk` and `category` (one label per fed token), `flagged` {"risk", "category", "token_index"}
(the official two-consecutive debounce) or null. A line that cannot be judged gives `{"error": "line N: ..."}` in
its place and the same line on stderr; the other lines are unaffected; the exit status is then 2.

`--model EXPORT_DIR` runs in process (ONNX Runtime, conversations batched `--batch-size` at a time); `--url` streams
each conversation over gRPC to the Triton sequence-batcher model (`runtime/triton_stream.py`), tokenized here with
`--tokenizer` (or the `--model` directory's tokenizer).
"""
from __future__ import annotations

import json
import sys

NAME = "stream"
HELP = "Qwen3Guard-Stream: judge each conversation's prompt, then its response token by token (JSON lines)"


def add_arguments(p) -> None:
    p.add_argument("--spec", default="qwen3guard-stream", help="model spec (qwen3guard-stream)")
    p.add_argument("--model", help="export directory (in-process), or the tokenizer source with --url")
    p.add_argument("--url", help="Triton gRPC address (e.g. 127.0.0.1:8001): stream over gRPC instead")
    p.add_argument("--model-name", default="qwen3guard-stream", help="--url: Triton model name")
    p.add_argument("--tokenizer", help="--url: directory with tokenizer.json and the chat template")
    p.add_argument("--precision", default="fp32", help="exported precision to run in process (default: fp32)")
    p.add_argument("--chunk", type=int, default=1, help="response tokens per incremental step (default: 1)")
    p.add_argument("--batch-size", type=int, default=8, help="in process: conversations streamed together")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    p.add_argument("--input", default="-", help="input JSONL file (default: stdin)")


def _lines(path: str):
    fh = sys.stdin if path == "-" else open(path, encoding="utf-8")
    try:
        yield from enumerate(fh, start=1)
    finally:
        if fh is not sys.stdin:
            fh.close()


def _parse(line: str) -> list:
    from guardrt.runtime.errors import InputError

    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise InputError('expected an object with a "messages" list')
    return obj["messages"]


def run(args) -> int:
    from guardrt.runtime.errors import GuardrtError, InputError
    from guardrt.runtime.specs import get_spec

    if get_spec(args.spec).decoding.kind != "streaming":
        raise GuardrtError(f"spec {args.spec!r} is not a streaming spec; use qwen3guard-stream")
    if args.chunk < 1:
        raise GuardrtError(f"--chunk must be >= 1, got {args.chunk}")
    if args.url:
        from guardrt.runtime.triton_stream import StreamClient

        if not (args.tokenizer or args.model):
            raise GuardrtError("--url needs --tokenizer DIR (or --model EXPORT_DIR to use its tokenizer)")
        engine = StreamClient(args.url, args.tokenizer or args.model, model_name=args.model_name)
    else:
        from guardrt.runtime.stream import StreamModerator

        if not args.model:
            raise GuardrtError("--model EXPORT_DIR (in process) or --url URL is required")
        engine = StreamModerator(args.model, precision=args.precision, intra_op_threads=args.threads)
    failed = False
    try:
        pending: list[tuple[int, object]] = []

        def flush() -> None:
            nonlocal failed
            good = [(n, ids) for n, ids in pending if not isinstance(ids, InputError)]
            results = dict(zip([n for n, _ in good], engine.moderate_many([ids for _, ids in good], args.chunk)))
            for n, ids in pending:
                res = ids if isinstance(ids, InputError) else results[n]
                if isinstance(res, Exception):
                    failed = True
                    print(f"guardrt stream: line {n}: {res}", file=sys.stderr)
                    res = {"error": f"line {n}: {res}"}
                sys.stdout.write(json.dumps(res, ensure_ascii=False) + "\n")
            sys.stdout.flush()
            pending.clear()

        for n, line in _lines(args.input):
            if not line.strip():
                continue
            try:
                pending.append((n, engine.response_conversation_ids(_parse(line))))
            except InputError as exc:
                pending.append((n, exc))
            if len(pending) >= max(1, args.batch_size):
                flush()
        flush()
    finally:
        engine.close()
    return 2 if failed else 0

"""`guardrt preprocess`: JSON lines in, token ids out (a stable contract other tools rely on).

Input lines: the spec's request field (`spec.input.request_field`): `{"turns": [{"role": ..., "content": ...}, ...]}`
(intent-safety), `{"text": ...}` (rejection), `{"messages": [{"role": ..., "content": ...}, ...]}` (chat-template
specs: qwen3guard-gen; `--tokenizer DIR` then also supplies the chat template, as transformers reads it),
`{"user": ...}` / `{"user": ..., "assistant": ...}` (flexguard: prompt / response moderation, the card's prompts).
The payload format is runtime/payloads.py's, also what a `<spec>-text` Triton model takes.
Output: one `{"input_ids": [...]}` line per input line, same order, flushed line by line. A malformed line stops
the run with an error naming its line number (exit 2); the lines before it are already written.
"""
from __future__ import annotations

import json
import sys

NAME = "preprocess"
HELP = "turn JSON lines of dialogues or texts into the exact token ids the model's reference code produces"


def add_arguments(p) -> None:
    from guardrt.runtime.specs import spec_names

    p.add_argument("--spec", required=True, help=f"model spec ({', '.join(spec_names(input_only=True))})")
    p.add_argument("--tokenizer", required=True,
                   help="directory holding tokenizer.json (+ tokenizer_config.json / chat_template.jinja with the "
                        "chat template for chat-template specs)")
    p.add_argument("--task-description", help="file with the task description (intent-safety); default: the card's")
    p.add_argument("--input", default="-", help="input JSONL file (default: stdin)")


def read_task_description(path: str | None) -> str | None:
    """The task description file's text, or None for the spec default; ModelFilesError when unreadable."""
    if path is None:
        return None
    from pathlib import Path

    from guardrt.runtime.errors import ModelFilesError

    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelFilesError(f"cannot read task description {path}: {exc.strerror}") from None


def iter_jsonl_inputs(stream, spec):
    """Yield (line_number, payload) where payload is the spec's payload field (runtime/payloads.py: the dialogue
    turns, the text, ...); InputError naming the line when it is not a JSON object with that field."""
    from guardrt.runtime.errors import InputError
    from guardrt.runtime.payloads import parse_payload

    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            payload = parse_payload(line, spec)
        except InputError as exc:
            raise InputError(f"line {lineno}: {exc}") from None
        yield lineno, payload


def run(args) -> int:
    from guardrt.runtime.errors import InputError
    from guardrt.runtime.preprocess import build_preprocessor
    from guardrt.runtime.specs import get_spec

    spec = get_spec(args.spec, input_only=True)
    pre = build_preprocessor(spec, args.tokenizer, read_task_description(args.task_description))
    stream = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")
    out = sys.stdout
    with stream:
        for lineno, payload in iter_jsonl_inputs(stream, spec):
            try:
                ids = pre.encode(payload)
            except InputError as exc:
                raise InputError(f"line {lineno}: {exc}") from None
            except Exception as exc:  # e.g. lone surrogates the Rust tokenizer cannot take
                raise InputError(f"line {lineno}: cannot tokenize ({exc})") from None
            out.write(json.dumps({"input_ids": ids}, separators=(",", ":")) + "\n")
            out.flush()
    return 0

"""Text in, the card's JSON out: the per-row work of a `<spec>-text` Triton model, server side.

The model (runtime/triton_backend/model.py with `guardrt_input: text`) takes one BYTES input `payload`, one element
per row: the JSON line `guardrt classify` reads (runtime/payloads.py). For each row it runs exactly what the thin
client runs - `parse_payload`, the spec's preprocessor (`build_preprocessor`, the tokenizer and task description
copied into the model's version directory) - then the same ONNX Runtime pipeline as the token-id model, and
`postprocess`; the row's `result` is the JSON object `guardrt classify` prints for that line, or `{"error": "..."}`
with one line saying what is wrong with that payload. A bad row never touches the other rows.

Imported by the Triton python backend (the server's Python needs guardrt: `pip install 'guardrt[client]'` there),
and in-process by the tests.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from guardrt.runtime.errors import InputError
from guardrt.runtime.payloads import format_result, parse_payload
from guardrt.runtime.postprocess import postprocess
from guardrt.runtime.preprocess import build_preprocessor
from guardrt.runtime.specs import ModelSpec, get_spec

__all__ = ["TASK_DESCRIPTION_FILE", "TOKENIZER_FILES", "DEFAULT_MAX_PAYLOAD_BYTES", "TextFrontend", "error_result",
           "takes_task_description"]

# Where write_text_model puts the task description (dialogue specs) inside the model's version directory.
TASK_DESCRIPTION_FILE = "task_description.txt"
# The tokenizer files of an export directory that travel with a text-in model (those present are copied).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja")
# Preprocessor kinds that build their model text around a task description.
_TASK_DESCRIPTION_KINDS = ("dialogue_ctx",)


def takes_task_description(spec: ModelSpec) -> bool:
    """Whether `spec`'s preprocessor takes a task description (written into the text-in model's directory)."""
    return spec.preprocessor in _TASK_DESCRIPTION_KINDS
# Bytes of one payload row. The hidden-case corpora's longest dialogue is ~440 KB (contexts of tens of thousands
# of tokens, of which the preprocessor keeps the last 4,096); 4 MiB leaves room and bounds the parse.
DEFAULT_MAX_PAYLOAD_BYTES = 4 << 20


def error_result(message: str) -> bytes:
    """`{"error": message}` as UTF-8 (a lone surrogate in a message is escaped, never a failure)."""
    return json.dumps({"error": " ".join(str(message).split())}, ensure_ascii=False).encode("utf-8", "backslashreplace")


class TextFrontend:
    """Payload bytes -> token ids, and logits -> result bytes, for one spec; the same code as the thin client."""

    def __init__(self, spec: ModelSpec | str, tokenizer_dir: str | Path, task_description: str | None = None,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, threshold: float | None = None):
        self.spec = get_spec(spec) if isinstance(spec, str) else spec
        self.preprocessor = build_preprocessor(self.spec, tokenizer_dir, task_description)
        self.max_payload_bytes = int(max_payload_bytes)
        self.threshold = threshold

    @classmethod
    def from_model_dir(cls, spec: ModelSpec | str, version_dir: str | Path, **kwargs) -> "TextFrontend":
        """The frontend of a `<spec>-text` model version directory (tokenizer files, task description)."""
        version_dir = Path(version_dir)
        task = version_dir / TASK_DESCRIPTION_FILE
        task_description = task.read_text(encoding="utf-8") if task.is_file() else None
        return cls(spec, version_dir, task_description, **kwargs)

    def decode(self, raw: Any) -> Any:
        """The preprocessor input held by one payload element (bytes or str); InputError (one line) otherwise."""
        if isinstance(raw, (bytes, bytearray, np.bytes_, memoryview)):
            raw = bytes(raw)
            if len(raw) > self.max_payload_bytes:
                raise InputError(f"payload of {len(raw):,} bytes exceeds the limit of {self.max_payload_bytes:,} bytes")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"payload is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        elif isinstance(raw, str):
            text = raw
            if len(text.encode("utf-8", "surrogatepass")) > self.max_payload_bytes:
                raise InputError(f"payload exceeds the limit of {self.max_payload_bytes:,} bytes")
        else:
            raise InputError(f"payload must be bytes (a BYTES element), got {type(raw).__name__}")
        if not text.strip():
            raise InputError("empty payload (expected one JSON object)")
        return parse_payload(text, self.spec)

    def encode(self, raw: Any) -> list[int]:
        """Token ids of one payload element, exactly as the thin client computes them; InputError (one line)."""
        payload = self.decode(raw)
        try:
            return self.preprocessor.encode(payload)
        except InputError:
            raise
        except Exception as exc:  # e.g. lone surrogates the Rust tokenizer cannot take (the CLI says the same)
            raise InputError(f"cannot tokenize ({' '.join(str(exc).split())})") from None

    def result(self, logits_row: np.ndarray) -> bytes:
        """The JSON object `guardrt classify` prints for a row with these logits, as UTF-8."""
        row = np.asarray(logits_row, dtype=np.float32).reshape(1, -1)
        return format_result(postprocess(self.spec, row, self.threshold)[0]).encode("utf-8")

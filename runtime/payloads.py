"""The JSON payload and result formats: one object per input, the same for `guardrt preprocess` / `guardrt classify` lines and
the rows of a `<spec>-text` Triton model. Its field is the spec's `input.request_field`:

* `dialogue_ctx` (intent-safety): `{"turns": [{"role": ..., "content": ...}, ...]}`
* `single_text` (rejection): `{"text": "..."}`
* `chat_template` (qwen3guard-gen): `{"messages": [{"role": ..., "content": ...}, ...]}`
* `chat_template` with the `flexguard` message builder: `{"user": "..."}` or `{"user": "...", "assistant": "..."}`;
  the payload is then the object's builder fields (`payload_from_record`), `request_field` ("user") the required one

Everything else about the value (types, roles, content) is the preprocessor's business, so the CLI and the server
give the same answer and the same error for the same line.
"""
from __future__ import annotations

import json
from typing import Any

from guardrt.runtime.errors import InputError
from guardrt.runtime.specs import ModelSpec

__all__ = ["payload_field", "payload_from_record", "parse_payload", "example_payload", "format_result"]

# A minimal valid value of each field (warm-up requests, documentation).
_EXAMPLES = {"turns": [{"role": "user", "content": "Hello, how are you?"}], "text": "Hello, how are you?",
             "messages": [{"role": "user", "content": "Hello, how are you?"}], "user": "Hello, how are you?"}


def payload_field(spec: ModelSpec | str) -> str:
    """The payload field `spec`'s input reads ("turns", "text" or "messages")."""
    from guardrt.runtime.specs import get_spec

    spec = get_spec(spec, input_only=True) if isinstance(spec, str) else spec
    return spec.input.request_field


def parse_payload(line: str, spec: ModelSpec) -> Any:
    """The preprocessor input held by one JSON line; InputError (one line) when the line is not JSON, not an object,
    or lacks the spec's field."""
    field = payload_field(spec)
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise InputError("not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict) or field not in obj:
        raise InputError(f'expected an object with a "{field}" field')
    return payload_from_record(obj, spec)


def payload_from_record(record: dict, spec: ModelSpec | str) -> Any:
    """The preprocessor input of one request object holding the spec's field: that field's value, or, for a spec
    whose input has a message builder (flexguard), the object's builder fields."""
    from guardrt.runtime.specs import get_spec

    spec = get_spec(spec, input_only=True) if isinstance(spec, str) else spec
    if spec.input.options.get("message_builder") == "flexguard":
        from guardrt.runtime.flexguard_prompt import flexguard_payload

        return flexguard_payload(record)
    return record[payload_field(spec)]


def format_result(result: dict) -> str:
    """One result as the JSON line `guardrt classify` prints (and a `<spec>-text` model returns)."""
    return json.dumps(result, ensure_ascii=False)


def example_payload(spec: ModelSpec) -> str:
    """A short valid JSON line for `spec` (warm-up requests, documentation)."""
    field = payload_field(spec)
    return json.dumps({field: _EXAMPLES[field]})

"""Qwen3Guard-Gen in process: `{"messages": [...]}` -> the card's fields, in verdict or generate mode.

`GuardClassifier.from_export_dir(export_dir, precision)`:

* `classify_messages(messages, mode="verdict")` -> one result (InputError for a conversation that cannot be
  moderated); `classify_batch(conversations, mode)` -> one result per conversation, `{"error": "item i: ..."}` for a
  bad one while the others are still answered; `classify_ids(prompts, mode)` for prompts already encoded
  (`preprocessor.encode`).
* generate mode: greedy generation (runtime/generate.py) -> `safety`, `categories`, `refusal`, `text` (the card's
  regexes over the decoded text).
* verdict mode: one prefill (runtime/verdict.py) -> `safety`, `probs` {Safe, Unsafe, Controversial}, `other_mass`,
  `risk` {strict, loose}, `consistent`, `fallback` (a row whose greedy output would not start `Safety: <label>` is
  answered by generation, `details` then holding its categories / refusal / text).

The input side (`GuardInput`) is shared with the Triton client (runtime/guard_client.py), so both give the same
answer and the same error for the same conversation: the chat template's checks (empty list, a message the template
cannot render, over the spec's 32,768 tokens: `ChatTemplatePreprocessor`), then the mode's own length limit (the
prompt plus 128 new tokens for generate, plus the 2 verdict-prefix tokens for verdict, within 32,768).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardrt.runtime.errors import InputError
from guardrt.runtime.guard_output import guard_spec, verdict_prefix_ids

__all__ = ["MODES", "GuardInput", "GuardClassifier", "generate_result", "encode_items"]

MODES = ("verdict", "generate")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


class GuardInput:
    """messages -> prompt ids for one mode: the chat template's ids, refused (InputError) where the mode cannot run
    them. `encode` is what `guardrt classify` calls per line."""

    def __init__(self, preprocessor, mode: str = "verdict", max_new_tokens: int | None = None, spec=None):
        self.chat = preprocessor
        spec = spec or getattr(preprocessor, "spec", None)
        # Qwen3Guard-Gen-style specs (verdict or generate); another generative spec (flexguard) generates only.
        generative = spec is not None and not isinstance(spec, str) and spec.output.kind == "flexguard_text"
        self.spec = spec if generative else guard_spec(spec)
        if generative and mode != "generate":
            raise InputError(f"{self.spec.name} runs in generate mode only, not {mode!r}")
        self.mode = check_mode(mode)
        self.max_new_tokens = int(self.spec.decoding.max_new_tokens if max_new_tokens is None else max_new_tokens)
        self.tokenizer = preprocessor.tokenizer

    def problem(self, prompt: Sequence[int], mode: str | None = None) -> str | None:
        """Why `prompt` cannot run in `mode` (None when it can)."""
        mode = mode or self.mode
        extra = self.max_new_tokens if mode == "generate" else len(verdict_prefix_ids(self.spec))
        what = f"{self.max_new_tokens} new tokens" if mode == "generate" else f"{extra} verdict-prefix tokens"
        if len(prompt) + extra > self.spec.input.max_length:
            return f"{len(prompt)} prompt tokens + {what} exceed the maximum length {self.spec.input.max_length}"
        return None

    def check_prompts(self, prompts: Sequence[Sequence[int]], mode: str | None = None) -> list[list[int]]:
        """`prompts` as lists, or InputError naming the first item that cannot run in `mode` (or an empty batch)."""
        if not prompts:
            raise InputError("empty batch: at least one prompt is needed")
        for i, p in enumerate(prompts):
            problem = self.problem(p, mode) if len(p) else "empty prompt (no token ids)"
            if problem:
                raise InputError(f"item {i}: {problem}")
        return [list(p) for p in prompts]

    def encode(self, messages: Any, mode: str | None = None) -> list[int]:
        ids = self.chat.encode(messages)
        problem = self.problem(ids, mode)
        if problem:
            raise InputError(problem)
        return ids


def encode_items(guard_input: GuardInput, conversations: Sequence[Any], mode: str
                 ) -> tuple[list[list[int] | None], list[str | None]]:
    """(prompt ids or None, error or None) per conversation; errors name the item."""
    if isinstance(conversations, (str, bytes, dict)) or not isinstance(conversations, Sequence):
        raise InputError(f"a batch must be a list of conversations, got {type(conversations).__name__}")
    if len(conversations) == 0:
        raise InputError("empty batch: at least one conversation is needed")
    ids: list[list[int] | None] = []
    errors: list[str | None] = []
    for i, messages in enumerate(conversations):
        try:
            ids.append(guard_input.encode(messages, mode))
            errors.append(None)
        except InputError as exc:
            ids.append(None)
            errors.append(f"item {i}: {exc}")
        except Exception as exc:  # e.g. lone surrogates the Rust tokenizer cannot take
            ids.append(None)
            errors.append(f"item {i}: cannot tokenize ({exc})")
    return ids, errors


def generate_result(text: str, kind: str, spec=None) -> dict[str, Any]:
    """The generate-mode result of one decoded output: safety, categories, refusal, text."""
    from guardrt.runtime.guard_output import parse_guard_output

    return parse_guard_output(text, kind, spec)


class GuardClassifier:
    """In-process Qwen3Guard-Gen (see module docstring). The generation graph and the verdict engine are loaded on
    first use of their mode; a context manager."""

    def __init__(self, export_dir: str | Path, precision: str = "fp32", *, mode: str = "verdict",
                 tokenizer_dir: str | Path | None = None, providers: Sequence[Any] | str | None = None,
                 intra_op_threads: int | None = None, max_batch_size: int | None = None,
                 verdict_engine: str = "auto"):
        from guardrt.runtime.export_dir import load_export_dir
        from guardrt.runtime.preprocess import build_preprocessor

        self.manifest = load_export_dir(export_dir)
        self.spec = guard_spec(self.manifest.spec)
        self.precision = precision
        self.providers = providers  # ONNX Runtime providers of both graphs (None / "cpu", "cuda", "tensorrt")
        self.intra_op_threads = intra_op_threads
        self.max_batch_size = int(max_batch_size or 16)
        self.verdict_engine = verdict_engine
        self.preprocessor = GuardInput(build_preprocessor(self.spec, tokenizer_dir or self.manifest.tokenizer_dir),
                                       mode, spec=self.spec)
        self.mode = self.preprocessor.mode
        self._generator = None
        self._verdict = None

    @classmethod
    def from_export_dir(cls, export_dir: str | Path, precision: str = "fp32", **kwargs) -> "GuardClassifier":
        return cls(export_dir, precision, **kwargs)

    @property
    def generator(self):
        """The GuardGenerator (the export's KV-cache graph at this precision, else its first one)."""
        if self._generator is None:
            from guardrt.runtime.errors import ModelFilesError
            from guardrt.runtime.generate import GuardGenerator

            graphs = self.manifest.graphs.get("causal-lm-with-past", {})
            precision = self.precision if self.precision in graphs else next(iter(graphs), None)
            if precision is None:
                raise ModelFilesError(f"export {self.manifest.path} has no generation graph (causal-lm-with-past)")
            self._generator = GuardGenerator(self.manifest.path, precision, providers=self.providers,
                                             intra_op_threads=self.intra_op_threads)
        return self._generator

    @property
    def verdict_runner(self):
        if self._verdict is None:
            from guardrt.runtime.verdict import VerdictRunner

            gen_graphs = self.manifest.graphs.get("causal-lm-with-past", {})
            engine = self.verdict_engine
            if engine == "auto":
                engine = "kv" if self.precision in gen_graphs else "graph"
            model_path = self.manifest.graph_path("verdict", self.precision) if engine == "graph" else None
            generator = self.generator if gen_graphs else None
            self._verdict = VerdictRunner(model_path, generator=generator, providers=self.providers,
                                          intra_op_threads=self.intra_op_threads, max_batch_size=self.max_batch_size)
        return self._verdict

    def classify_ids(self, prompts: Sequence[Sequence[int]], mode: str | None = None) -> list[dict[str, Any]]:
        """One result per prompt (chat-template ids, each within the mode's limit: `preprocessor.encode`)."""
        mode = check_mode(mode or self.mode)
        if not prompts:
            raise InputError("empty batch: at least one prompt is needed")
        for i, p in enumerate(prompts):
            problem = self.preprocessor.problem(p, mode) if len(p) else "empty prompt (no token ids)"
            if problem:
                raise InputError(f"item {i}: {problem}")
        out: list[dict[str, Any]] = []
        for start in range(0, len(prompts), self.max_batch_size):
            chunk = prompts[start:start + self.max_batch_size]
            if mode == "generate":
                results = self.generator.generate_ids(chunk)
                out += [{k: r[k] for k in ("safety", "categories", "refusal", "text")} for r in results]
            else:
                out += self.verdict_runner.verdict(chunk)
        return out

    def classify_messages(self, messages: Any, mode: str | None = None) -> dict[str, Any]:
        """One conversation -> its result; InputError (one line) when it cannot be moderated."""
        return self.classify_ids([self.preprocessor.encode(messages, mode)], mode)[0]

    def classify_batch(self, conversations: Sequence[Any], mode: str | None = None) -> list[dict[str, Any]]:
        """One result per conversation, in order; a bad one gets {"error": "item i: ..."} and the rest are answered."""
        mode = check_mode(mode or self.mode)
        ids, errors = encode_items(self.preprocessor, conversations, mode)
        good = [i for i, e in enumerate(errors) if e is None]
        results: list[dict[str, Any]] = [{"error": e} for e in errors]
        if good:
            for i, r in zip(good, self.classify_ids([ids[i] for i in good], mode)):
                results[i] = r
        return results

    def close(self) -> None:
        if self._verdict is not None:
            self._verdict.close()
        elif self._generator is not None:
            self._generator.generator.close()

    def __enter__(self) -> "GuardClassifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

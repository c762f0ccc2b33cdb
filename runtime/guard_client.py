"""Thin client for Qwen3Guard-Gen served by Triton: `classify_messages(messages, mode="verdict"|"generate")`.

`TritonGuardClient` (sync) and `AsyncTritonGuardClient` (asyncio) build the prompt here with the exact chat template
(`GuardInput`, shared with the in-process `GuardClassifier`: same ids, same errors) and send token ids:

* verdict, `verdict_engine="kv"` (default) -> verdict requests to the generate model (`<spec>-generate`): one
  prefill of the prompt plus the verdict prefix (`Safety` `:`) through the KV-cache graph with the server's prefix
  cache, what the in-process default engine computes (and as fast: the shared template head is not recomputed).
* verdict, `verdict_engine="graph"` -> the verdict model (`<spec>`, python flavor with ragged dynamic batching, or a
  native / TensorRT flavor: `guardrt repo`): the prompt plus the verdict prefix through `TritonClassifier` /
  `AsyncTritonClassifier` with the classifier-shaped `guard_output.verdict_spec` (request sizing, deadlines,
  retries, per-item isolation are theirs).
  Either way, a row whose greedy output would not be `Safety: <label>` falls back to the generate model, as in
  process.
* generate -> the decoupled generate model (`<spec>-generate`, continuous batching) over one gRPC stream
  (`TritonGenerateClient`); the new tokens are decoded (special tokens skipped) and parsed with the card's regexes.

Results are those of `GuardClassifier` (runtime/guard_engine.py). `classify_batch(conversations, mode)` answers every
good conversation and gives `{"error": "item i: ..."}` for a bad or failed one; `classify_ids` raises on the first
failure (what `guardrt classify --url` uses, after checking each line with `preprocessor.encode`).

The asyncio client awaits the verdict model natively (`tritonclient.grpc.aio`) and the generate stream's responses
as futures (`TritonGenerateClient.each_async`); many concurrent calls share that one stream.
Imports neither torch nor transformers nor onnxruntime.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardrt.runtime.errors import InputError, ServerError
from guardrt.runtime.guard_engine import GuardInput, check_mode, encode_items
from guardrt.runtime.guard_output import (guard_spec, parse_guard_output, verdict_from_row, verdict_prefix_ids,
                                          verdict_spec)
from guardrt.runtime.triton_repo import DEFAULT_REQUEST_TIMEOUT_S

__all__ = ["AsyncTritonGuardClient", "TritonFlexGuardClient", "TritonGuardClient", "generate_model_name"]

GENERATE_SUFFIX = "-generate"
DEFAULT_GENERATE_TIMEOUT_S = 300.0


def generate_model_name(name: str) -> str:
    """The generate model served next to verdict model `name`."""
    return f"{name}{GENERATE_SUFFIX}"


class _IdsAsPayload:
    """A 'preprocessor' whose payloads are token ids already (lets TritonClassifier.classify_batch isolate items)."""

    @staticmethod
    def encode(ids: Sequence[int]) -> list[int]:
        return list(ids)


def _renumber(error: str, index: int) -> str:
    """An "item j: ..." error of a sub-batch, renamed to the item's index in the caller's batch."""
    head, sep, rest = error.partition(": ")
    return f"item {index}: {rest}" if sep and head.startswith("item ") else f"item {index}: {error}"


class _GuardClientBase:
    """Prompt building and result assembly shared by the sync and asyncio clients (no I/O here)."""

    def __init__(self, url: str, tokenizer_dir: str | Path | None, *, spec=None, mode: str = "verdict",
                 verdict_model: str | None = None, generate_model: str | None = None, verdict_engine: str = "kv",
                 timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, generate_timeout_s: float = DEFAULT_GENERATE_TIMEOUT_S,
                 preprocessor=None, **classifier_kwargs):
        from guardrt.runtime.generate import moderation_kind_of_ids  # numpy + tokenizers; onnxruntime is lazy there
        from guardrt.runtime.preprocess import build_preprocessor

        self.spec = guard_spec(spec)
        self.url = url
        self._verdict = None  # verdict_client, made on first use
        self.mode = check_mode(mode)
        if verdict_engine not in ("kv", "graph"):
            raise InputError(f"verdict engine must be kv or graph, got {verdict_engine!r}")
        self.verdict_engine = verdict_engine
        if preprocessor is None:
            if tokenizer_dir is None:
                raise InputError("the Qwen3Guard-Gen client needs the model's tokenizer directory (chat template "
                                 "and tokenizer.json)")
            preprocessor = build_preprocessor(self.spec, tokenizer_dir)
        self.preprocessor = GuardInput(preprocessor, mode, spec=self.spec)
        self.tokenizer = self.preprocessor.tokenizer
        self._kind_of = moderation_kind_of_ids
        self.verdict_spec = verdict_spec(self.spec)
        self.verdict_model = verdict_model or self.spec.name
        self.generate_model = generate_model or generate_model_name(self.verdict_model)
        self.timeout_s = float(timeout_s)
        self.generate_timeout_s = float(generate_timeout_s)
        self.classifier_kwargs = classifier_kwargs
        self._prefix = verdict_prefix_ids(self.spec)
        self._generate = None
        self._generate_lock = threading.Lock()

    @property
    def verdict_client(self):
        """The client of the verdict-graph model (verdict_engine "graph"), made on first use."""
        if self._verdict is None:
            from guardrt.runtime import triton_client

            self._verdict = getattr(triton_client, self._CLASSIFIER)(
                self.url, self.verdict_spec, preprocessor=_IdsAsPayload(), model_name=self.verdict_model,
                timeout_s=self.timeout_s, **self.classifier_kwargs)
        return self._verdict

    @property
    def generate_client(self):
        """The generate model's stream client, opened on first use (thread-safe)."""
        from guardrt.runtime.triton_generate import TritonGenerateClient

        with self._generate_lock:
            if self._generate is None:
                self._generate = TritonGenerateClient(self.url, self.generate_model, timeout_s=self.generate_timeout_s)
            return self._generate

    def _generate_each(self, prompts: list[list[int]]) -> list[dict[str, Any] | str]:
        """Generate-mode result or error text per prompt (blocking)."""
        return self._generated(prompts, self.generate_client.generate_each(prompts))

    @staticmethod
    def _kv_verdicts(outcomes: list) -> list[dict[str, Any] | str]:
        """Verdict result or error text per (verdict row, error) outcome of the generate model."""
        import numpy as np

        return [error if error is not None else verdict_from_row(np.asarray(row, dtype=np.float32))
                for row, error in outcomes]

    def _generated(self, prompts: list[list[int]], outcomes: list) -> list[dict[str, Any] | str]:
        """Generate-mode result or error text per (new token ids, error) outcome."""
        out: list[dict[str, Any] | str] = []
        for prompt, (tokens, error) in zip(prompts, outcomes):
            if error is not None:
                out.append(error)
                continue
            text = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
            out.append(parse_guard_output(text, self._kind_of(self.tokenizer, prompt), self.spec))
        return out

    def _verdict_rows(self, prompts: list[list[int]]) -> list[list[int]]:
        return [list(p) + self._prefix for p in prompts]

    def _fallback_items(self, prompts: list[list[int]], results: list) -> list[int]:
        """Verdict rows that greedy generation must decide (see runtime/verdict.py), if they fit a generation."""
        limit = self.spec.input.max_length - self.preprocessor.max_new_tokens
        return [i for i, r in enumerate(results)
                if isinstance(r, dict) and "error" not in r and not r["consistent"] and len(prompts[i]) <= limit]

    @staticmethod
    def _apply_fallback(results: list, items: list[int], generated: list) -> None:
        for i, g in zip(items, generated):
            if isinstance(g, str):
                results[i] = {"error": f"item {i}: fallback generation failed: {g}"}
            else:
                results[i].update(safety=g["safety"], fallback=True,
                                  details={k: g[k] for k in ("categories", "refusal", "text")})

    @staticmethod
    def _as_results(outcomes: list) -> list[dict[str, Any]]:
        """Per-item outcomes (a result dict, an {"error": "item j: ..."} dict or an error string) -> result dicts."""
        out = []
        for j, o in enumerate(outcomes):
            if isinstance(o, str):
                out.append({"error": f"item {j}: {o}"})
            elif "error" in o:
                out.append({"error": _renumber(o["error"], j)})
            else:
                out.append(o)
        return out

    def _checked(self, prompts: Sequence[Sequence[int]], mode: str) -> list[list[int]]:
        if not prompts:
            raise InputError("empty batch: at least one prompt is needed")
        for i, p in enumerate(prompts):
            problem = self.preprocessor.problem(p, mode) if len(p) else "empty prompt (no token ids)"
            if problem:
                raise InputError(f"item {i}: {problem}")
        return [list(p) for p in prompts]

    @staticmethod
    def _first_error(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for r in results:
            if "error" in r:
                raise ServerError(r["error"])
        return results

    @staticmethod
    def _merge(errors: list[str | None], good: list[int], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"error": e} for e in errors]
        for i, r in zip(good, results):
            out[i] = {"error": _renumber(r["error"], i)} if "error" in r else r
        return out


class TritonGuardClient(_GuardClientBase):
    """Synchronous client (see module docstring); a context manager."""

    _CLASSIFIER = "TritonClassifier"

    def check_ready(self, mode: str | None = None) -> None:
        """ServerError (one line) unless the server is up and the mode's model is ready."""
        mode = check_mode(mode or self.mode)
        if mode == "verdict" and self.verdict_engine == "graph":
            self.verdict_client.check_ready()
        else:
            self._check_generate_ready()

    def _check_generate_ready(self) -> None:
        ready = ModelProbe(self.url, self.generate_model, self.timeout_s)
        ready.check()

    def _run(self, prompts: list[list[int]], mode: str) -> list[dict[str, Any]]:
        if mode == "generate":
            return self._as_results(self._generate_each(prompts))
        if self.verdict_engine == "kv":
            results = self._kv_verdicts(self.generate_client.verdict_each(prompts))
        else:
            results = self.verdict_client.classify_batch(self._verdict_rows(prompts))
        items = self._fallback_items(prompts, results)
        if items:
            self._apply_fallback(results, items, self._generate_each([prompts[i] for i in items]))
        return self._as_results(results)

    def classify_ids(self, prompts: Sequence[Sequence[int]], mode: str | None = None) -> list[dict[str, Any]]:
        """One result per prompt (chat-template ids); ServerError on the first failed item."""
        mode = check_mode(mode or self.mode)
        return self._first_error(self._run(self._checked(prompts, mode), mode))

    def classify_messages(self, messages: Any, mode: str | None = None) -> dict[str, Any]:
        """One conversation -> its result; InputError when it cannot be moderated, ServerError when the server
        fails it."""
        mode = check_mode(mode or self.mode)
        return self.classify_ids([self.preprocessor.encode(messages, mode)], mode)[0]

    def classify_batch(self, conversations: Sequence[Any], mode: str | None = None) -> list[dict[str, Any]]:
        """One result per conversation, in order; {"error": "item i: ..."} for a bad or failed one."""
        mode = check_mode(mode or self.mode)
        ids, errors = encode_items(self.preprocessor, conversations, mode)
        good = [i for i, e in enumerate(errors) if e is None]
        return self._merge(errors, good, self._run([ids[i] for i in good], mode) if good else [])

    def close(self) -> None:
        if self._verdict is not None:
            self._verdict.close()
        if self._generate is not None:
            self._generate.close()

    def __enter__(self) -> "TritonGuardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncTritonGuardClient(_GuardClientBase):
    """asyncio client: the same methods as TritonGuardClient, as coroutines (see module docstring)."""

    _CLASSIFIER = "AsyncTritonClassifier"

    async def check_ready(self, mode: str | None = None) -> None:
        mode = check_mode(mode or self.mode)
        if mode == "verdict" and self.verdict_engine == "graph":
            await self.verdict_client.check_ready()
        else:
            await asyncio.to_thread(ModelProbe(self.url, self.generate_model, self.timeout_s).check)

    async def _run(self, prompts: list[list[int]], mode: str) -> list[dict[str, Any]]:
        if mode == "generate":
            return self._as_results(await self._generate_async(prompts))
        if self.verdict_engine == "kv":
            results = self._kv_verdicts(await self.generate_client.each_async(prompts, verdict=True))
        else:
            results = await self.verdict_client.classify_batch(self._verdict_rows(prompts))
        items = self._fallback_items(prompts, results)
        if items:
            generated = await self._generate_async([prompts[i] for i in items])
            self._apply_fallback(results, items, generated)
        return self._as_results(results)

    async def _generate_async(self, prompts: list[list[int]]) -> list[dict[str, Any] | str]:
        client = self.generate_client  # opening the stream blocks (once)
        return self._generated(prompts, await client.each_async(prompts))

    async def classify_ids(self, prompts: Sequence[Sequence[int]], mode: str | None = None) -> list[dict[str, Any]]:
        mode = check_mode(mode or self.mode)
        return self._first_error(await self._run(self._checked(prompts, mode), mode))

    async def classify_messages(self, messages: Any, mode: str | None = None) -> dict[str, Any]:
        mode = check_mode(mode or self.mode)
        return (await self.classify_ids([self.preprocessor.encode(messages, mode)], mode))[0]

    async def classify_batch(self, conversations: Sequence[Any], mode: str | None = None) -> list[dict[str, Any]]:
        mode = check_mode(mode or self.mode)
        ids, errors = encode_items(self.preprocessor, conversations, mode)
        good = [i for i, e in enumerate(errors) if e is None]
        return self._merge(errors, good, await self._run([ids[i] for i in good], mode) if good else [])

    async def close(self) -> None:
        if self._verdict is not None:
            await self._verdict.close()
        if self._generate is not None:
            await asyncio.to_thread(self._generate.close)

    async def __aenter__(self) -> "AsyncTritonGuardClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class TritonFlexGuardClient:
    """FlexGuard over Triton: the generate model `flexguard-generate` (decoupled, continuous batching; `guardrt repo`
    with a flexguard export). The prompt is built here (`flexguard_engine.flexguard_input`: the in-process input
    side), token ids go over one gRPC stream, the new tokens come back and are decoded and parsed here
    (`flexguard_engine.result_from_tokens`); for a well-formed output a score request (prompt + the generated tokens
    before the score) brings back the score distribution, computed on the server's KV cache as in process. Same
    methods and results as `FlexGuardClassifier`: `classify`, `classify_batch` (per-item errors), `classify_ids`
    (ServerError on the first failed item), `check_ready`. The threshold: `threshold` > `strictness` > the
    calibration.json next to the tokenizer (the export directory) > 40."""

    def __init__(self, url: str, tokenizer_dir: str | Path, *, strictness: str | None = None,
                 threshold: float | None = None, model: str | None = None,
                 timeout_s: float = DEFAULT_GENERATE_TIMEOUT_S, expected_score: bool = True):
        from tokenizers import Tokenizer

        from guardrt.runtime.flexguard_engine import FLEXGUARD_SPEC, flexguard_input, resolve_flexguard_threshold
        from guardrt.runtime.generate import generation_settings

        root = Path(tokenizer_dir)
        root = root.parent if root.is_file() else root
        self.url = url
        self.input = self.preprocessor = flexguard_input(root)
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.stop_ids = generation_settings(root, spec=FLEXGUARD_SPEC).eos_token_ids
        self.threshold, self.threshold_source = resolve_flexguard_threshold(threshold, strictness, root)
        self.model = model or generate_model_name(FLEXGUARD_SPEC)
        self.timeout_s = float(timeout_s)
        self.expected_score = bool(expected_score)
        self._client = None
        self._lock = threading.Lock()

    @property
    def generate_client(self):
        from guardrt.runtime.triton_generate import TritonGenerateClient

        with self._lock:
            if self._client is None:
                self._client = TritonGenerateClient(self.url, self.model, timeout_s=self.timeout_s)
            return self._client

    def check_ready(self) -> None:
        ModelProbe(self.url, self.model, self.timeout_s).check()

    def _run(self, prompts: list[list[int]]) -> list[dict[str, Any]]:
        from guardrt.runtime.flexguard_engine import result_from_tokens, score_prefix
        from guardrt.runtime.flexguard_score import distribution_from_row

        outcomes = self.generate_client.generate_each(prompts)
        prefixes = [score_prefix(self.tokenizer, p, t, self.stop_ids) if self.expected_score and e is None else None
                    for p, (t, e) in zip(prompts, outcomes)]
        todo = [i for i, pre in enumerate(prefixes) if pre is not None]
        rows: dict[int, tuple] = {}
        if todo:
            rows = dict(zip(todo, self.generate_client.score_each([prefixes[i] for i in todo])))
        out: list[dict[str, Any]] = []
        for i, (tokens, error) in enumerate(outcomes):
            if error is None and i in rows and rows[i][1] is not None:
                error = f"score request failed: {rows[i][1]}"
            if error is not None:
                out.append({"error": f"item {i}: {error}"})
                continue
            dist = distribution_from_row(rows[i][0]) if i in rows else None
            out.append(result_from_tokens(self.tokenizer, tokens, self.stop_ids, self.threshold, dist))
        return out

    def classify_ids(self, prompts: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
        """One result per prompt (flexguard prompt ids); ServerError on the first failed item."""
        return _GuardClientBase._first_error(self._run(self.input.check_prompts(prompts)))

    def classify(self, payload: Any) -> dict[str, Any]:
        return self.classify_ids([self.input.encode(payload)])[0]

    def classify_batch(self, payloads: Sequence[Any]) -> list[dict[str, Any]]:
        """One result per request, in order; {"error": "item i: ..."} for a bad or failed one."""
        ids, errors = encode_items(self.input, payloads, "generate")
        good = [i for i, e in enumerate(errors) if e is None]
        return _GuardClientBase._merge(errors, good, self._run([ids[i] for i in good]) if good else [])

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> "TritonFlexGuardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ModelProbe:
    """Liveness and readiness of one model (the decoupled generate model has no classifier client to ask)."""

    def __init__(self, url: str, model: str, timeout_s: float):
        self.url, self.model, self.timeout_s = url, model, timeout_s

    def check(self) -> None:
        from guardrt.runtime.errors import require

        grpc = require("tritonclient.grpc", "client")
        client = grpc.InferenceServerClient(self.url)
        try:
            try:
                live = client.is_server_live(client_timeout=self.timeout_s)
                ready = live and client.is_model_ready(self.model, client_timeout=self.timeout_s)
            except Exception as exc:  # tritonclient's InferenceServerException: server down / unreachable
                text = " ".join(str(getattr(exc, "message", lambda: exc)()).split())
                raise ServerError(f"cannot reach the Triton server at {self.url}: {text}") from None
            if not live:
                raise ServerError(f"Triton server at {self.url} is not live")
            if not ready:
                raise ServerError(f"model '{self.model}' is not ready on {self.url} (not in the repository, or "
                                  "failed to load: see the server log)")
        finally:
            client.close()

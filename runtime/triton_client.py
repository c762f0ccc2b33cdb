"""Thin gRPC client for guardrt models served by Triton: exact preprocessing here, token ids over the wire.

`TritonClassifier` (sync) and `AsyncTritonClassifier` (asyncio, `tritonclient.grpc.aio`) share one contract:

* `classify(turns)` / `classify_text(text)` -> the card's output dict; `classify_batch(payloads)` -> one dict per
  payload, where a bad payload gets `{"error": "item i: ..."}` and the rest of the batch is still classified;
  `classify_ids(sequences)` for callers that tokenized already; `infer(feeds) -> {"logits": ...}` (runner shape).
* Padding follows the served flavor, read from the model config (`guardrt_flavor`): the python flavor takes each
  row unpadded-to-its-own-length (the model re-pads ragged batches), native onnxruntime / tensorrt flavors get each
  sequence padded to the spec's length bucket so Triton can batch same shapes.
* Every call has a deadline (`timeout_s`); UNAVAILABLE is retried with exponential backoff (`retries`,
  `backoff_s`); errors are `ServerError` with one clear line (server down naming the URL, model not ready, deadline
  exceeded, Triton's reason for a refused request) or `InputError` (input too large, empty batch, bad payload).

Imports neither torch nor transformers; tritonclient comes from the `client` extra.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from guardrt.runtime.errors import GuardrtError, InputError, ServerError, require
from guardrt.runtime.postprocess import postprocess
from guardrt.runtime.preprocess import build_preprocessor, pad_batch
from guardrt.runtime.runner import BaseRunner
from guardrt.runtime.specs import ModelSpec, get_spec

__all__ = ["TritonClassifier", "AsyncTritonClassifier", "DEFAULT_URL"]

DEFAULT_URL = "127.0.0.1:8001"
RAGGED_FLAVORS = ("python",)
_RETRYABLE = ("StatusCode.UNAVAILABLE",)


def _status(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return str(status() if callable(status) else status or "")


def _message(exc: Exception) -> str:
    msg = getattr(exc, "message", None)
    text = msg() if callable(msg) else str(exc)
    return " ".join(str(text).split())


class _ClassifierBase:
    """Request building and result handling shared by the sync and asyncio clients (no I/O here)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        spec: ModelSpec | str = "rejection",
        tokenizer_dir: str | Path | None = None,
        *,
        task_description: str | None = None,
        preprocessor=None,
        model_name: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        flavor: str | None = None,
        threshold: float | None = None,
    ):
        self.spec = get_spec(spec) if isinstance(spec, str) else spec
        self.url = url
        self.model_name = model_name or self.spec.name
        self.timeout_s = timeout_s
        self.retries = max(0, int(retries))
        self.backoff_s = backoff_s
        self.flavor = flavor  # None: read from the served model's config on first use
        self.threshold = threshold  # None: the card's (threshold specs)
        self._input_dtypes: dict[str, str] = {}  # from the model config; INT64 (the graph contract) by default
        self.retried = 0  # UNAVAILABLE retries so far (diagnostics)
        if preprocessor is None and tokenizer_dir is not None:
            preprocessor = build_preprocessor(self.spec, tokenizer_dir, task_description)
        self.preprocessor = preprocessor
        self._grpc = require("tritonclient.grpc", "client")
        self._utils = require("tritonclient.utils", "client")

    # -- errors -----------------------------------------------------------------------------------------------------
    def _server_error(self, exc: Exception, what: str) -> ServerError:
        status, msg = _status(exc), _message(exc)
        if status in _RETRYABLE:
            return ServerError(f"Triton server at {self.url} is not reachable ({what}: {msg}); is `guardrt serve` running?")
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return ServerError(f"{what} on {self.url} exceeded its {self.timeout_s:g}s deadline")
        if "unknown model" in msg.lower() or "not found" in msg.lower():
            return ServerError(f"model '{self.model_name}' is not served at {self.url}: {msg}")
        return ServerError(f"{what} on {self.url} failed: {msg}")

    def _retry_delay(self, attempt: int) -> float:
        return self.backoff_s * (2 ** attempt)

    # -- request building ---------------------------------------------------------------------------------------------
    def _flavor_from_config(self, config) -> str:
        """The served flavor (and, as a side effect, the served input dtypes: a TensorRT plan may take INT32)."""
        from tritonclient.grpc import model_config_pb2

        for inp in config.input:
            if inp.name in self.spec.input_names:
                self._input_dtypes[inp.name] = model_config_pb2.DataType.Name(inp.data_type).removeprefix("TYPE_")
        params = {k: v.string_value for k, v in config.parameters.items()}
        served_spec = params.get("guardrt_spec")
        if served_spec and served_spec != self.spec.name:
            raise ServerError(f"model '{self.model_name}' at {self.url} serves spec {served_spec!r}, not {self.spec.name!r}")
        if params.get("guardrt_flavor"):
            return params["guardrt_flavor"]
        # Not written by guardrt: ragged batching declared on the inputs means the model pads itself.
        ragged = all(i.allow_ragged_batch for i in config.input)
        return "python" if ragged else config.platform or config.backend

    def _check_ids(self, sequences: Sequence[Sequence[int]]) -> None:
        if len(sequences) == 0:
            raise InputError("empty batch: at least one sequence is needed")
        for i, seq in enumerate(sequences):
            if len(seq) == 0:
                raise InputError(f"item {i}: empty token sequence")
            if len(seq) > self.spec.max_length:
                raise InputError(
                    f"item {i}: input too large: {len(seq)} tokens exceed {self.spec.name} max_length {self.spec.max_length}"
                )

    def _chunks(self, sequences: Sequence[Sequence[int]]) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
        """[(row indices, input_ids, attention_mask)] requests covering `sequences` (max_batch_size rows each)."""
        cap = self.spec.max_batch_size
        if self.flavor in RAGGED_FLAVORS:
            groups = [list(range(i, min(i + cap, len(sequences)))) for i in range(0, len(sequences), cap)]
            widths = [None] * len(groups)
        else:  # native backends: one request per length bucket, every row padded to the bucket
            by_bucket: dict[int, list[int]] = {}
            for i, seq in enumerate(sequences):
                by_bucket.setdefault(self.spec.bucket_for(len(seq)), []).append(i)
            groups, widths = [], []
            for bucket, rows in sorted(by_bucket.items()):
                for j in range(0, len(rows), cap):
                    groups.append(rows[j:j + cap])
                    widths.append(bucket)
        out = []
        for rows, width in zip(groups, widths):
            ids, mask = pad_batch([sequences[i] for i in rows], self.spec.pad_token_id, self.spec.padding_side, width)
            out.append((rows, ids, mask))
        return out

    def _inputs(self, ids: np.ndarray, mask: np.ndarray) -> list:
        inputs = []
        for name, arr in zip(self.spec.input_names, (ids, mask)):
            dtype = self._input_dtypes.get(name, "INT64")
            t = self._grpc.InferInput(name, list(arr.shape), dtype)
            t.set_data_from_numpy(np.ascontiguousarray(arr, dtype=np.int32 if dtype == "INT32" else np.int64))
            inputs.append(t)
        return inputs

    def _encode_items(self, payloads: Sequence[Any]) -> tuple[list[list[int] | None], list[str | None]]:
        if self.preprocessor is None:
            raise InputError("this client has no tokenizer: pass tokenizer_dir (or use classify_ids)")
        ids: list[list[int] | None] = []
        errors: list[str | None] = []
        for i, payload in enumerate(payloads):
            try:
                ids.append(self.preprocessor.encode(payload))
                errors.append(None)
            except InputError as exc:
                ids.append(None)
                errors.append(f"item {i}: {exc}")
            except Exception as exc:  # e.g. lone surrogates the Rust tokenizer cannot take
                ids.append(None)
                errors.append(f"item {i}: cannot tokenize ({exc})")
        return ids, errors

    def _encode_one(self, payload: Any) -> list[int]:
        ids, errors = self._encode_items([payload])
        if errors[0]:
            raise InputError(errors[0].removeprefix("item 0: "))
        return ids[0]

    def _results(self, ids: list, errors: list, logits_by_item: dict[int, np.ndarray], failures: dict[int, str]):
        out: list[dict] = []
        for i in range(len(ids)):
            if errors[i]:
                out.append({"error": errors[i]})
            elif i in failures:
                out.append({"error": f"item {i}: {failures[i]}"})
            else:
                out.append(postprocess(self.spec, logits_by_item[i][None, :], self.threshold)[0])
        return out


class TritonClassifier(_ClassifierBase, BaseRunner):
    """Synchronous client (see module docstring). A context manager; `close()` releases the channel."""

    def __init__(self, url: str = DEFAULT_URL, spec: ModelSpec | str = "rejection", tokenizer_dir=None, **kwargs):
        super().__init__(url, spec, tokenizer_dir, **kwargs)
        try:
            self.client = self._grpc.InferenceServerClient(url)
        except Exception as exc:
            raise ServerError(f"cannot connect to {url}: {exc}") from None

    def _call(self, what: str, fn, *args, **kwargs):
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, client_timeout=self.timeout_s, **kwargs)
            except self._utils.InferenceServerException as exc:
                if _status(exc) in _RETRYABLE and attempt < self.retries:
                    self.retried += 1
                    time.sleep(self._retry_delay(attempt))
                    continue
                raise self._server_error(exc, what) from None

    # -- readiness ----------------------------------------------------------------------------------------------------
    def check_ready(self) -> None:
        """ServerError unless the server is live and this model is ready; also learns the served flavor."""
        if not self._call("health check", self.client.is_server_live):
            raise ServerError(f"Triton server at {self.url} is not live")
        if not self._call("model readiness check", self.client.is_model_ready, self.model_name):
            raise ServerError(
                f"model '{self.model_name}' is not ready on {self.url} (not in the repository, or failed to load: "
                "see the server log)"
            )
        if self.flavor is None:
            config = self._call("model config request", self.client.get_model_config, self.model_name).config
            self.flavor = self._flavor_from_config(config)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Poll `check_ready` until it passes or `timeout_s` elapses (then re-raise its error)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.check_ready()
            except ServerError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)

    # -- inference ----------------------------------------------------------------------------------------------------
    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Send the feeds as they are (input_ids, attention_mask [B, L]); {"logits": [B, num_labels]}."""
        ids, mask = (np.asarray(feeds[n]) for n in self.spec.input_names)
        result = self._call("inference", self.client.infer, self.model_name, self._inputs(ids, mask))
        return {name: result.as_numpy(name) for name in self.spec.output_names}

    def logits_for_ids(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Logits [N, num_labels] for token-id sequences, in order; InputError for an empty or too large input."""
        self._check_ids(sequences)
        if self.flavor is None:
            self.check_ready()
        out = np.empty((len(sequences), len(self.spec.labels)), dtype=np.float32)
        for rows, ids, mask in self._chunks(sequences):
            out[rows] = self.infer({"input_ids": ids, "attention_mask": mask})[self.spec.output_names[0]]
        return out

    def classify_ids(self, sequences: Sequence[Sequence[int]]) -> list[dict]:
        return postprocess(self.spec, self.logits_for_ids(sequences), self.threshold)

    def classify(self, turns: Any) -> dict:
        """One dialogue (a list of {role, content}) -> the card's output dict (dialogue specs)."""
        return self.classify_ids([self._encode_one(turns)])[0]

    def classify_text(self, text: str) -> dict:
        """One text -> the card's output dict (text specs)."""
        return self.classify_ids([self._encode_one(text)])[0]

    def classify_batch(self, payloads: Sequence[Any]) -> list[dict]:
        """One result per payload, in order; a bad payload (or a failed request) gives {"error": "item i: ..."}."""
        if len(payloads) == 0:
            raise InputError("empty batch: at least one item is needed")
        ids, errors = self._encode_items(payloads)
        good = [i for i in range(len(ids)) if not errors[i]]
        logits: dict[int, np.ndarray] = {}
        failures: dict[int, str] = {}
        if good:
            if self.flavor is None:
                self.check_ready()
            for rows, batch_ids, mask in self._chunks([ids[i] for i in good]):
                items = [good[r] for r in rows]
                try:
                    got = self.infer({"input_ids": batch_ids, "attention_mask": mask})[self.spec.output_names[0]]
                except ServerError as exc:
                    failures.update({i: str(exc) for i in items})
                    continue
                logits.update({i: got[k] for k, i in enumerate(items)})
        return self._results(ids, errors, logits, failures)

    def statistics(self) -> dict:
        """Triton's inference statistics for this model (as JSON: execution_count, inference_count, ...)."""
        return self._call("statistics request", self.client.get_inference_statistics, self.model_name, as_json=True)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "TritonClassifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncTritonClassifier(_ClassifierBase):
    """asyncio client (`tritonclient.grpc.aio`); the same methods as TritonClassifier, as coroutines.

    Many concurrent `classify*` calls are how a service feeds Triton's dynamic batcher. It may be constructed outside
    the event loop: the gRPC channel is opened on first use, in the running loop (a new loop gets a new channel).
    """

    def __init__(self, url: str = DEFAULT_URL, spec: ModelSpec | str = "rejection", tokenizer_dir=None, **kwargs):
        super().__init__(url, spec, tokenizer_dir, **kwargs)
        self._aio = require("tritonclient.grpc.aio", "client")
        self._client = None
        self._client_loop = None
        self._ready_lock: asyncio.Lock | None = None

    @property
    def client(self):
        """The tritonclient.grpc.aio client bound to the running event loop (call from a coroutine)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = self._aio.InferenceServerClient(self.url)
            self._client_loop = loop
            self._ready_lock = None
        return self._client

    async def _call(self, what: str, fn, *args, **kwargs):
        for attempt in range(self.retries + 1):
            try:
                return await fn(*args, client_timeout=self.timeout_s, **kwargs)
            except self._utils.InferenceServerException as exc:
                if _status(exc) in _RETRYABLE and attempt < self.retries:
                    self.retried += 1
                    await asyncio.sleep(self._retry_delay(attempt))
                    continue
                raise self._server_error(exc, what) from None

    async def check_ready(self) -> None:
        if not await self._call("health check", self.client.is_server_live):
            raise ServerError(f"Triton server at {self.url} is not live")
        if not await self._call("model readiness check", self.client.is_model_ready, self.model_name):
            raise ServerError(
                f"model '{self.model_name}' is not ready on {self.url} (not in the repository, or failed to load: "
                "see the server log)"
            )
        if self.flavor is None:
            config = (await self._call("model config request", self.client.get_model_config, self.model_name)).config
            self.flavor = self._flavor_from_config(config)

    async def _ensure_flavor(self) -> None:
        if self.flavor is None:
            self.client  # bind to this loop first (it resets the lock for a new loop)
            if self._ready_lock is None:
                self._ready_lock = asyncio.Lock()
            async with self._ready_lock:
                if self.flavor is None:
                    await self.check_ready()

    async def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, mask = (np.asarray(feeds[n]) for n in self.spec.input_names)
        result = await self._call("inference", self.client.infer, self.model_name, self._inputs(ids, mask))
        return {name: result.as_numpy(name) for name in self.spec.output_names}

    async def logits_for_ids(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        self._check_ids(sequences)
        await self._ensure_flavor()
        chunks = self._chunks(sequences)
        got = await asyncio.gather(*(self.infer({"input_ids": i, "attention_mask": m}) for _, i, m in chunks))
        out = np.empty((len(sequences), len(self.spec.labels)), dtype=np.float32)
        for (rows, _, _), res in zip(chunks, got):
            out[rows] = res[self.spec.output_names[0]]
        return out

    async def classify_ids(self, sequences: Sequence[Sequence[int]]) -> list[dict]:
        return postprocess(self.spec, await self.logits_for_ids(sequences), self.threshold)

    async def classify(self, turns: Any) -> dict:
        return (await self.classify_ids([self._encode_one(turns)]))[0]

    async def classify_text(self, text: str) -> dict:
        return (await self.classify_ids([self._encode_one(text)]))[0]

    async def classify_batch(self, payloads: Sequence[Any]) -> list[dict]:
        """Each good payload is its own request, sent concurrently (Triton's dynamic batcher gathers them)."""
        if len(payloads) == 0:
            raise InputError("empty batch: at least one item is needed")
        ids, errors = self._encode_items(payloads)
        good = [i for i in range(len(ids)) if not errors[i]]
        if good:
            await self._ensure_flavor()

        async def one(i: int):
            try:
                return i, (await self.logits_for_ids([ids[i]]))[0], None
            except GuardrtError as exc:
                return i, None, str(exc)

        logits, failures = {}, {}
        for i, row, err in await asyncio.gather(*(one(i) for i in good)):
            if err is None:
                logits[i] = row
            else:
                failures[i] = err
        return self._results(ids, errors, logits, failures)

    async def statistics(self) -> dict:
        return await self._call("statistics request", self.client.get_inference_statistics, self.model_name,
                                as_json=True)

    async def close(self) -> None:
        if self._client is not None and self._client_loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = self._client_loop = None

    async def __aenter__(self) -> "AsyncTritonClassifier":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

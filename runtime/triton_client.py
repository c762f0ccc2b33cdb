"""Thin gRPC client for guardrt models served by Triton: exact preprocessing here, token ids over the wire.

`TritonClassifier` (sync) and `AsyncTritonClassifier` (asyncio, `tritonclient.grpc.aio`) share one contract:

* `classify(turns)` / `classify_text(text)` -> the card's output dict; `classify_batch(payloads)` -> one dict per
  payload, where a bad payload gets `{"error": "item i: ..."}` and the rest of the batch is still classified;
  `classify_ids(sequences)` for callers that tokenized already; `infer(feeds) -> {"logits": ...}` (runner shape).
* Padding follows the served flavor, read from the model config (`guardrt_flavor`): the python flavor takes each
  row unpadded-to-its-own-length (the model re-pads ragged batches), native onnxruntime / tensorrt flavors get each
  sequence padded to the spec's length bucket so Triton can batch same shapes.
* Requests are sized to the deadline (`request_flow`): one request carries at most `max_request_tokens` tokens
  (default: the spec's max_length, so no request holds more work than one full-length row) and at most
  max_batch_size rows; a call that needs several requests keeps at most `max_in_flight` of them (default 16) and
  `max_in_flight_tokens` tokens (default: max_length) in flight. A request then needs at most about two full-length
  rows of server time, so long inputs finish under the same deadline as short ones, however many there are.
* `timeout_s` (default 30 s) is the end-to-end deadline of one request: every attempt, the backoff between them and
  the time queued in Triton (sent as the request's queue timeout, which the generated configs allow) fit in it.
  UNAVAILABLE (server starting, queue full) and RESOURCE_EXHAUSTED are retried `retries` times with exponential
  backoff (`backoff_s`, doubled per attempt up to `max_backoff_s`, jittered: each wait is drawn from [d/2, d] so
  clients refused together do not come back together).
* Errors are `ServerError` with one clear line (server down naming the URL, overloaded, model not ready, deadline
  exceeded, Triton's reason for a refused request) or `InputError` (input too large, empty batch, bad payload).

Imports neither torch nor transformers; tritonclient comes from the `client` extra.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from guardrt.runtime.errors import GuardrtError, InputError, ServerError, require
from guardrt.runtime.postprocess import postprocess
from guardrt.runtime.preprocess import build_preprocessor
from guardrt.runtime.request_flow import (
    DEFAULT_MAX_IN_FLIGHT,
    QUEUE_FULL,
    QUEUE_TIMEOUT,
    InFlightLimit,
    Request,
    RetryPolicy,
    one_row_requests,
    plan_requests,
)
from guardrt.runtime.runner import BaseRunner
from guardrt.runtime.specs import ModelSpec, get_spec
from guardrt.runtime.triton_repo import DEFAULT_REQUEST_TIMEOUT_S

__all__ = ["TritonClassifier", "AsyncTritonClassifier", "DEFAULT_URL", "DEFAULT_MAX_IN_FLIGHT"]

DEFAULT_URL = "127.0.0.1:8001"
RAGGED_FLAVORS = ("python",)
# Errors about the request itself (not the server's state): another request in the same call may still succeed.
_REQUEST_ERRORS = ("StatusCode.INVALID_ARGUMENT", "StatusCode.INTERNAL")


def _status(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return str(status() if callable(status) else status or "")


def _message(exc: Exception) -> str:
    msg = getattr(exc, "message", None)
    text = msg() if callable(msg) else str(exc)
    return " ".join(str(text).split())


class _ClassifierBase:
    """Request building, retry policy and result handling shared by the sync and asyncio clients (no I/O here)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        spec: ModelSpec | str = "rejection",
        tokenizer_dir: str | Path | None = None,
        *,
        task_description: str | None = None,
        preprocessor=None,
        model_name: str | None = None,
        timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        retries: int = 3,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_request_tokens: int | None = None,
        max_in_flight_tokens: int | None = None,
        flavor: str | None = None,
        threshold: float | None = None,
        seed: int | None = None,
    ):
        self.spec = get_spec(spec) if isinstance(spec, str) else spec
        self.url = url
        self.model_name = model_name or self.spec.name
        if not timeout_s or timeout_s <= 0:
            raise InputError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.retry = RetryPolicy(retries, backoff_s, max_backoff_s, seed)
        if max_in_flight < 1:
            raise InputError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight = int(max_in_flight)
        self.max_request_tokens = int(max_request_tokens or self.spec.max_length)
        self.max_in_flight_tokens = int(max_in_flight_tokens or self.spec.max_length)
        self.flavor = flavor  # None: read from the served model's config on first use
        self.threshold = threshold  # None: the card's (threshold specs)
        self._input_dtypes: dict[str, str] = {}  # from the model config; INT64 (the graph contract) by default
        self.retried = 0  # retries so far (diagnostics)
        self.last_in_flight: InFlightLimit | None = None  # admission state of the last multi-request call (tests)
        if preprocessor is None and tokenizer_dir is not None:
            preprocessor = build_preprocessor(self.spec, tokenizer_dir, task_description)
        self.preprocessor = preprocessor
        self._grpc = require("tritonclient.grpc", "client")
        self._utils = require("tritonclient.utils", "client")

    # -- retries and errors -----------------------------------------------------------------------------------------
    def _deadline_error(self, what: str, url: str | None = None) -> ServerError:
        err = ServerError(f"{what} on {url or self.url} exceeded its {self.timeout_s:g}s deadline (end to end, "
                          "retries included; a slow model or host needs a longer timeout_s / --timeout)")
        err.status = "StatusCode.DEADLINE_EXCEEDED"
        return err

    def _server_error(self, exc: Exception, what: str, attempts: int = 1, url: str | None = None) -> ServerError:
        """One line for a failed call to `url` (default: this client's URL)."""
        status, msg, url = _status(exc), _message(exc), url or self.url
        tried = f" (after {attempts} attempts)" if attempts > 1 else ""
        if status == "StatusCode.DEADLINE_EXCEEDED" or QUEUE_TIMEOUT in msg.lower():
            return self._deadline_error(what, url)
        if QUEUE_FULL in msg.lower() or status == "StatusCode.RESOURCE_EXHAUSTED":
            err = ServerError(f"{what} on {url}: server overloaded, request refused: {msg}{tried}")
        elif status == "StatusCode.UNAVAILABLE":
            err = ServerError(f"Triton server at {url} is not reachable ({what}: {msg}){tried}; "
                              "is `guardrt serve` running?")
        elif "unknown model" in msg.lower() or "not found" in msg.lower():
            err = ServerError(f"model '{self.model_name}' is not served at {url}: {msg}")
        else:
            err = ServerError(f"{what} on {url} failed: {msg}")
        err.status = status
        return err

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

    def _item_problem(self, seq: Sequence[int]) -> str | None:
        if len(seq) == 0:
            return "empty token sequence"
        if len(seq) > self.spec.max_length:
            return f"input too large: {len(seq)} tokens exceed {self.spec.name} max_length {self.spec.max_length}"
        return None

    def _check_ids(self, sequences: Sequence[Sequence[int]]) -> None:
        if len(sequences) == 0:
            raise InputError("empty batch: at least one sequence is needed")
        for i, seq in enumerate(sequences):
            problem = self._item_problem(seq)
            if problem:
                raise InputError(f"item {i}: {problem}")

    def _chunks(self, sequences: Sequence[Sequence[int]]) -> list[Request]:
        """The requests covering `sequences` (request_flow.plan_requests for the served flavor)."""
        return plan_requests(sequences, self.spec, self.flavor in RAGGED_FLAVORS, self.max_request_tokens)

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

    def _batch_items(self, payloads: Sequence[Any]) -> tuple[list, list, list[int]]:
        """(token ids or None, error or None, indices of the good items) of a classify_batch call."""
        if len(payloads) == 0:
            raise InputError("empty batch: at least one item is needed")
        ids, errors = self._encode_items(payloads)
        for i, seq in enumerate(ids):
            problem = None if errors[i] else self._item_problem(seq)
            if problem:
                ids[i], errors[i] = None, f"item {i}: {problem}"
        return ids, errors, [i for i in range(len(ids)) if not errors[i]]

    def _one_row_chunks(self, sequences: Sequence[Sequence[int]], rows) -> list[Request]:
        return one_row_requests(sequences, rows, self.spec, self.flavor in RAGGED_FLAVORS)

    @staticmethod
    def _collect(good: list[int], chunks: list[Request], outcomes: list, split: bool = True):
        """({item: logits}, {item: error}, [rows to re-send alone]) from the outcomes of a classify_batch call's
        requests. With `split`, a request of several items refused for its content (not for the server's state)
        is not failed but listed for re-sending one by one."""
        logits: dict[int, np.ndarray] = {}
        failures: dict[int, str] = {}
        alone: list[int] = []
        for chunk, (got, err) in zip(chunks, outcomes):
            if err is None:
                logits.update({good[r]: got[k] for k, r in enumerate(chunk.rows)})
            elif split and len(chunk.rows) > 1 and getattr(err, "status", "") in _REQUEST_ERRORS:
                alone.extend(chunk.rows)
            else:
                failures.update({good[r]: str(err) for r in chunk.rows})
        return logits, failures, alone


class TritonClassifier(_ClassifierBase, BaseRunner):
    """Synchronous client (see module docstring). A context manager; `close()` releases the channel.

    A call that needs several requests sends them from a small thread pool (the gRPC client is thread-safe), within
    the in-flight bounds."""

    def __init__(self, url: str = DEFAULT_URL, spec: ModelSpec | str = "rejection", tokenizer_dir=None, **kwargs):
        super().__init__(url, spec, tokenizer_dir, **kwargs)
        try:
            self.client = self._grpc.InferenceServerClient(url)
        except Exception as exc:
            raise ServerError(f"cannot connect to {url}: {exc}") from None

    def _call(self, what: str, fn, *args, queue_timeout: bool = False, **kwargs):
        """fn(*args, **kwargs) within one end-to-end deadline of `timeout_s`, retrying what is retryable."""
        end = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            limits = self.retry.attempt_limits(end, queue_timeout)
            if limits is None:
                raise self._deadline_error(what)
            try:
                return fn(*args, **limits, **kwargs)
            except self._utils.InferenceServerException as exc:
                delay = self.retry.next_delay(_status(exc), _message(exc), attempt, end)
                if delay is None:
                    raise self._server_error(exc, what, attempt + 1) from None
                attempt += 1
                self.retried += 1
                time.sleep(delay)

    def _bounded(self, chunks: list[Request], run: Callable[[Request], Any], stop_on_error: bool = False) -> list:
        """[(result, None) | (None, GuardrtError) | None] per chunk: run(chunk) for each, within the in-flight
        bounds. With `stop_on_error` no chunk starts after a failure (those stay None)."""
        if len(chunks) == 1:
            return [_outcome(run, chunks[0])]
        flight = self.last_in_flight = InFlightLimit(self.max_in_flight, self.max_in_flight_tokens)
        outcomes: list = [None] * len(chunks)
        with ThreadPoolExecutor(max_workers=min(self.max_in_flight, len(chunks))) as pool:
            running: dict = {}
            nxt, failed = 0, False
            while running or (nxt < len(chunks) and not failed):
                while nxt < len(chunks) and not failed and flight.admits(chunks[nxt].tokens):
                    flight.take(chunks[nxt].tokens)
                    running[pool.submit(_outcome, run, chunks[nxt])] = nxt
                    nxt += 1
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    k = running.pop(fut)
                    flight.give(chunks[k].tokens)
                    outcomes[k] = fut.result()
                    failed = failed or (stop_on_error and outcomes[k][1] is not None)
        return outcomes

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
        """Send the feeds as they are (input_ids, attention_mask [B, L]) as one request; {"logits": [B, C]}."""
        ids, mask = (np.asarray(feeds[n]) for n in self.spec.input_names)
        result = self._call("inference", self.client.infer, self.model_name, self._inputs(ids, mask),
                            queue_timeout=True)
        return {name: result.as_numpy(name) for name in self.spec.output_names}

    def _infer_chunk(self, chunk: Request) -> np.ndarray:
        return self.infer({"input_ids": chunk.ids, "attention_mask": chunk.mask})[self.spec.output_names[0]]

    def logits_for_ids(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Logits [N, num_labels] for token-id sequences, in order; InputError for an empty or too large input,
        ServerError (the first failure) when a request fails."""
        self._check_ids(sequences)
        if self.flavor is None:
            self.check_ready()
        chunks = self._chunks(sequences)
        outcomes = self._bounded(chunks, self._infer_chunk, stop_on_error=True)
        _raise_first(outcomes)
        out = np.empty((len(sequences), len(self.spec.labels)), dtype=np.float32)
        for chunk, (logits, _) in zip(chunks, outcomes):
            out[chunk.rows] = logits
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
        """One result per payload, in order; a bad payload (or a failed request) gives {"error": "item i: ..."}.
        When a request of several items is refused for its content, its items are re-sent one by one, so only
        the item at fault gets the error."""
        ids, errors, good = self._batch_items(payloads)
        if good and self.flavor is None:
            self.check_ready()
        seqs = [ids[i] for i in good]
        chunks = self._chunks(seqs)
        logits, failures, alone = self._collect(good, chunks, self._bounded(chunks, self._infer_chunk))
        if alone:
            singles = self._one_row_chunks(seqs, alone)
            more, failures2, _ = self._collect(good, singles, self._bounded(singles, self._infer_chunk), split=False)
            logits.update(more)
            failures.update(failures2)
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

    async def _call(self, what: str, fn, *args, queue_timeout: bool = False, **kwargs):
        end = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            limits = self.retry.attempt_limits(end, queue_timeout)
            if limits is None:
                raise self._deadline_error(what)
            try:
                return await fn(*args, **limits, **kwargs)
            except self._utils.InferenceServerException as exc:
                delay = self.retry.next_delay(_status(exc), _message(exc), attempt, end)
                if delay is None:
                    raise self._server_error(exc, what, attempt + 1) from None
                attempt += 1
                self.retried += 1
                await asyncio.sleep(delay)

    async def _bounded(self, chunks: list[Request], run, stop_on_error: bool = False) -> list:
        """As TritonClassifier._bounded, with tasks in this event loop."""
        if len(chunks) == 1:
            return [await _outcome_async(run, chunks[0])]
        flight = self.last_in_flight = InFlightLimit(self.max_in_flight, self.max_in_flight_tokens)
        outcomes: list = [None] * len(chunks)
        running: dict = {}
        nxt, failed = 0, False
        while running or (nxt < len(chunks) and not failed):
            while nxt < len(chunks) and not failed and flight.admits(chunks[nxt].tokens):
                flight.take(chunks[nxt].tokens)
                running[asyncio.ensure_future(_outcome_async(run, chunks[nxt]))] = nxt
                nxt += 1
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                k = running.pop(task)
                flight.give(chunks[k].tokens)
                outcomes[k] = task.result()
                failed = failed or (stop_on_error and outcomes[k][1] is not None)
        return outcomes

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
        result = await self._call("inference", self.client.infer, self.model_name, self._inputs(ids, mask),
                                  queue_timeout=True)
        return {name: result.as_numpy(name) for name in self.spec.output_names}

    async def _infer_chunk(self, chunk: Request) -> np.ndarray:
        return (await self.infer({"input_ids": chunk.ids, "attention_mask": chunk.mask}))[self.spec.output_names[0]]

    async def logits_for_ids(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        self._check_ids(sequences)
        await self._ensure_flavor()
        chunks = self._chunks(sequences)
        outcomes = await self._bounded(chunks, self._infer_chunk, stop_on_error=True)
        _raise_first(outcomes)
        out = np.empty((len(sequences), len(self.spec.labels)), dtype=np.float32)
        for chunk, (logits, _) in zip(chunks, outcomes):
            out[chunk.rows] = logits
        return out

    async def classify_ids(self, sequences: Sequence[Sequence[int]]) -> list[dict]:
        return postprocess(self.spec, await self.logits_for_ids(sequences), self.threshold)

    async def classify(self, turns: Any) -> dict:
        return (await self.classify_ids([self._encode_one(turns)]))[0]

    async def classify_text(self, text: str) -> dict:
        return (await self.classify_ids([self._encode_one(text)]))[0]

    async def classify_batch(self, payloads: Sequence[Any]) -> list[dict]:
        """Each good payload is its own request (Triton's dynamic batcher gathers them), at most `max_in_flight`
        requests and `max_in_flight_tokens` tokens in flight; a failed request fails only its own item."""
        ids, errors, good = self._batch_items(payloads)
        if good:
            await self._ensure_flavor()
        seqs = [ids[i] for i in good]
        chunks = self._one_row_chunks(seqs, range(len(good)))
        logits, failures, _ = self._collect(good, chunks, await self._bounded(chunks, self._infer_chunk), split=False)
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


def _outcome(run, chunk):
    try:
        return run(chunk), None
    except GuardrtError as exc:
        return None, exc


async def _outcome_async(run, chunk):
    try:
        return await run(chunk), None
    except GuardrtError as exc:
        return None, exc


def _raise_first(outcomes: list) -> None:
    for outcome in outcomes:
        if outcome is not None and outcome[1] is not None:
            raise outcome[1]

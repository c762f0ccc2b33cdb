"""Generate mode on Triton: the model-repository entry (`write_generate_model`) and a gRPC client
(`TritonGenerateClient`) for the decoupled python-backend model `runtime/triton_backend/generate_model.py`; and
`write_guard_models`, both Qwen3Guard-Gen modes of an export into a repository (what `guardrt repo` writes).

The model takes one prompt's token ids per request and batches concurrent requests' decoding itself (continuous
batching over the KV cache); a decoupled model answers over a gRPC stream, so the client keeps one stream open and
matches responses to requests by id. Token ids go over the wire, never text.
"""
from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from guardrt.runtime.errors import InputError, ServerError, require

__all__ = ["GENERATE_BACKEND", "generate_config_text", "write_generate_model", "write_guard_models",
           "TritonGenerateClient"]

GENERATE_BACKEND = Path(__file__).with_name("triton_backend") / "generate_model.py"


def generate_config_text(name: str, settings, *, instance_count: int = 1, intra_op_threads: int = 0,
                         max_active_rows: int = 32, prefix_cache_entries: int = 8, max_verdict_batch: int = 16,
                         intra_op_spinning: bool = False, precision: str = "fp32", onnx_file: str = "model.onnx",
                         spec: str = "qwen3guard-gen") -> str:
    """config.pbtxt of the decoupled generate model (checked with Triton's ModelConfig protobuf). `spec`:
    qwen3guard-gen (verdict requests) or flexguard (score requests: `score_mode`)."""
    from guardrt.runtime.triton_repo import _parameters_block, _q, parse_config

    params = {
        "guardrt_spec": spec, "guardrt_mode": "generate", "guardrt_precision": precision,
        "onnx_file": onnx_file, "eos_token_ids": ",".join(str(t) for t in settings.eos_token_ids),
        "pad_token_id": settings.pad_token_id, "max_new_tokens": settings.max_new_tokens,
        "max_length": settings.max_length, "intra_op_threads": int(intra_op_threads),
        "max_active_rows": int(max_active_rows), "prefix_cache_entries": int(prefix_cache_entries),
        "max_verdict_batch": int(max_verdict_batch), "intra_op_spinning": int(bool(intra_op_spinning)),
    }
    text = (
        f"name: {_q(name)}\nbackend: \"python\"\nmax_batch_size: 0\n"
        "model_transaction_policy { decoupled: true }\n"
        "input [\n"
        "  { name: \"input_ids\" data_type: TYPE_INT64 dims: [ -1 ] },\n"
        "  { name: \"max_new_tokens\" data_type: TYPE_INT32 dims: [ 1 ] optional: true },\n"
        "  { name: \"verdict_mode\" data_type: TYPE_BOOL dims: [ 1 ] optional: true },\n"
        "  { name: \"score_mode\" data_type: TYPE_BOOL dims: [ 1 ] optional: true }\n"
        "]\n"
        "output [\n  { name: \"output_ids\" data_type: TYPE_INT64 dims: [ -1 ] },\n"
        "  { name: \"verdict\" data_type: TYPE_FP32 dims: [ -1 ] },\n"
        "  { name: \"error\" data_type: TYPE_STRING dims: [ 1 ] }\n]\n"
        f"instance_group [\n  {{ count: {int(instance_count)} kind: KIND_CPU }}\n]\n"
        + _parameters_block(params)
    )
    parse_config(text)
    return text


def write_generate_model(repo: str | Path, export_dir: str | Path, *, precision: str = "fp32",
                         name: str = "qwen3guard-gen-generate", max_new_tokens: int | None = None, **options) -> Path:
    """Write `repo/<name>/` (config.pbtxt, 1/model.py, 1/model.onnx[.data]) from an export's KV-cache graph."""
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.generate import generation_settings
    from guardrt.runtime.triton_repo import _install, _onnx_files

    manifest = load_export_dir(export_dir)
    src = manifest.graph_path("causal-lm-with-past", precision)
    settings = generation_settings(manifest.path, max_new_tokens, spec=manifest.spec)
    text = generate_config_text(name, settings, precision=precision, spec=manifest.spec, **options)
    files = {f.name: f for f in _onnx_files(src)}
    return _install(Path(repo), name, text, {**files, "model.py": GENERATE_BACKEND}, {})


def write_guard_models(repo: str | Path, export_dir: str | Path, *, precision: str = "fp32", name: str | None = None,
                       flavor: str = "python", instance_count: int | None = None, providers: str = "cpu",
                       plan_path: str | Path | None = None, generate_options: dict | None = None,
                       **verdict_options) -> list[Path]:
    """Both modes of a Qwen3Guard-Gen export: the verdict model `<name>` (default: the spec name; the export's
    verdict graph served like a classifier, `guard_output.verdict_spec`: python flavor with ragged dynamic batching
    by default, or a native flavor's config) and the generate model `<name>-generate` (decoupled, continuous
    batching; always the python backend). `verdict_options` go to `write_model` (queue delay, threads, planner),
    `generate_options` to `write_generate_model`. Returns both model directories."""
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.guard_client import generate_model_name
    from guardrt.runtime.guard_output import guard_spec, verdict_spec
    from guardrt.runtime.triton_repo import write_model

    manifest = load_export_dir(export_dir)
    spec = guard_spec(manifest.spec)
    name = name or spec.name
    onnx_path = manifest.graph_path("verdict", precision) if flavor != "tensorrt" else None
    verdict = write_model(repo, spec=verdict_spec(spec), flavor=flavor, precision=precision, onnx_path=onnx_path,
                          plan_path=plan_path, name=name, instance_count=instance_count, providers=providers,
                          **verdict_options)
    generate = write_generate_model(repo, manifest.path, precision=precision, name=generate_model_name(name),
                                    **(generate_options or {}))
    return [verdict, generate]


class TritonGenerateClient:
    """`generate(prompts)` -> new token ids per prompt, all requests in flight at once on one gRPC stream (the
    server batches their decoding); `verdict_each(prompts)` -> verdict rows from the same model. Context manager;
    one line errors (server down, model error naming the item)."""

    def __init__(self, url: str, model: str = "qwen3guard-gen-generate", timeout_s: float = 300.0):
        grpc = require("tritonclient.grpc", "client")
        self.url, self.model, self.timeout_s = url, model, float(timeout_s)
        self._grpc = grpc
        self.client = grpc.InferenceServerClient(url)
        self._sinks: dict = {}  # request id -> callable taking (value, error), called on the stream thread
        self._lock = threading.Lock()
        self._ids = itertools.count()
        try:
            self.client.start_stream(callback=self._on_response)
        except Exception as exc:  # tritonclient raises its own exception types
            raise ServerError(f"cannot open a gRPC stream to {url}: {str(exc).splitlines()[0]}") from None

    def _on_response(self, result=None, error=None):
        """Runs on tritonclient's stream thread: hands (value, None) or (None, error text) to the request's sink."""
        if error is not None:
            request_id = getattr(error, "request_id", None) or ""
            message = error.message() if hasattr(error, "message") else str(error)
        else:
            request_id = result.get_response().id
            message = None
        with self._lock:
            sink = self._sinks.get(request_id)
            every = list(self._sinks.values()) if sink is None and error is not None else []
        for other in every:  # an error without request id: give it to every waiter
            other((None, message))
        if sink is None:
            return
        if error is not None:
            sink((None, message))
            return
        text = result.as_numpy("error")  # the model reports a request's own error as data (`error` output)
        text = text.reshape(-1)[0] if text is not None and text.size else b""
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        output = "verdict" if request_id.startswith(("v", "s")) else "output_ids"  # score rows use `verdict`
        sink((None, text) if text else (result.as_numpy(output).tolist(), None))

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[list[int]]:
        """New token ids per prompt; ServerError naming every failed item (see `generate_each`)."""
        outcomes = self.generate_each(prompts, max_new_tokens)
        errors = [f"item {i}: {err}" for i, (_, err) in enumerate(outcomes) if err is not None]
        if errors:
            raise ServerError("; ".join(errors))
        return [tokens for tokens, _ in outcomes]

    def generate_each(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | None = None
                      ) -> list[tuple[list[int] | None, str | None]]:
        """(new token ids, None) or (None, the server's one-line error) per prompt: a request refused or failed on
        the server fails only its own item. InputError for a prompt that is not a non-empty list of ids (nothing
        sent); ServerError when the stream is down."""
        return self._each(prompts, max_new_tokens, verdict=False)

    def score_each(self, prefixes: Sequence[Sequence[int]]) -> list[tuple[list[float] | None, str | None]]:
        """(score row, None) or (None, error) per prefix (FlexGuard: prompt + generated tokens before the score's
        first digit): the model's score requests (`flexguard_score.score_row`: 101 probabilities, mass, argmax
        token); errors as in `generate_each`."""
        return self._each(prefixes, None, verdict=True, score=True)

    def verdict_each(self, prompts: Sequence[Sequence[int]]) -> list[tuple[list[float] | None, str | None]]:
        """(verdict row, None) or (None, error) per prompt (chat-template ids, without the verdict prefix): the
        model's verdict requests, one KV-cache prefill with its prefix cache (`VERDICT_COLUMNS`); errors as in
        `generate_each`."""
        return self._each(prompts, None, verdict=True)

    async def each_async(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | None = None,
                         verdict: bool = False, score: bool = False) -> list[tuple[list | None, str | None]]:
        """`generate_each` / `verdict_each` for asyncio: awaits the responses without holding a thread, so any
        number of concurrent calls share the stream."""
        import asyncio

        loop = asyncio.get_running_loop()
        futures = []

        def sink_for(future):
            return lambda outcome: loop.call_soon_threadsafe(lambda: future.done() or future.set_result(outcome))

        for ids in self._checked(prompts):
            future = loop.create_future()
            futures.append((self._send(ids, verdict or score, max_new_tokens, sink_for(future), score), future))
        out = []
        for request_id, future in futures:
            try:
                value, error = await asyncio.wait_for(future, self.timeout_s)
            except asyncio.TimeoutError:
                value, error = None, f"no response within {self.timeout_s:.0f}s"
            with self._lock:
                self._sinks.pop(request_id, None)
            out.append((None, " ".join(str(error).split())) if error is not None else (value, None))
        return out

    @staticmethod
    def _checked(prompts) -> list[np.ndarray]:
        if not prompts:
            raise InputError("empty batch: at least one prompt is needed")
        out = []
        for i, p in enumerate(prompts):
            ids = np.asarray(list(p), dtype=np.int64)
            if ids.ndim != 1 or ids.size == 0:
                raise InputError(f"item {i}: a prompt must be a non-empty list of token ids")
            out.append(ids)
        return out

    def _send(self, ids: np.ndarray, verdict: bool, max_new_tokens: int | None, sink, score: bool = False) -> str:
        """Send one request on the stream; its outcome goes to `sink`. Returns the request id. `score` (with
        `verdict`): a FlexGuard score request."""
        kind = ("s" if score else "v") if verdict else "g"
        request_id = f"{kind}{next(self._ids)}"  # the prefix says which output to read
        with self._lock:
            self._sinks[request_id] = sink
        inputs = [self._grpc.InferInput("input_ids", [ids.size], "INT64")]
        inputs[0].set_data_from_numpy(ids)
        if verdict:
            flag = self._grpc.InferInput("score_mode" if score else "verdict_mode", [1], "BOOL")
            flag.set_data_from_numpy(np.asarray([True]))
            inputs.append(flag)
        elif max_new_tokens is not None:
            lim = self._grpc.InferInput("max_new_tokens", [1], "INT32")
            lim.set_data_from_numpy(np.asarray([max_new_tokens], dtype=np.int32))
            inputs.append(lim)
        try:
            self.client.async_stream_infer(self.model, inputs, request_id=request_id)
        except Exception as exc:  # tritonclient's InferenceServerException: the stream is closed
            with self._lock:
                self._sinks.pop(request_id, None)
            raise ServerError(f"request to {self.model} at {self.url} failed (server down or stream closed): "
                              f"{str(exc).splitlines()[0]}") from None
        return request_id

    def _each(self, prompts, max_new_tokens, verdict: bool, score: bool = False):
        waiting = []
        for ids in self._checked(prompts):
            q: queue.Queue = queue.Queue()
            waiting.append((self._send(ids, verdict, max_new_tokens, q.put, score), q))
        out: list[tuple[list | None, str | None]] = []
        for request_id, q in waiting:
            try:
                value, error = q.get(timeout=self.timeout_s)
            except queue.Empty:
                value, error = None, f"no response within {self.timeout_s:.0f}s"
            with self._lock:
                self._sinks.pop(request_id, None)
            out.append((None, " ".join(str(error).split())) if error is not None else (value, None))
        return out

    def close(self) -> None:
        try:
            self.client.stop_stream()
        finally:
            self.client.close()

    def __enter__(self) -> "TritonGenerateClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

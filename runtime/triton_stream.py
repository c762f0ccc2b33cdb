"""Qwen3Guard-Stream on Triton: the model-repository entry (`write_stream_model`, a python-backend model under the
sequence batcher, `runtime/triton_backend/stream_model.py`) and the streaming gRPC client (`StreamClient`).

The client keeps one gRPC bidirectional stream (`tritonclient.grpc` `start_stream` / `async_stream_infer`) and sends
each stream's requests with its correlation id (`sequence_id`) and START / END flags; the server keeps the KV cache
per correlation id and batches the steps of concurrent streams. Token ids go over the wire; tokenization (the Qwen3
chat template, `tokenizers`) happens here, exactly as in process.

    client = StreamClient("127.0.0.1:8001", EXPORT_DIR)
    handle = client.open_stream(messages_so_far)        # the query heads' verdict: handle.query
    verdict = handle.feed(token_ids_or_text)            # {"risk": [...], "category": [...], "flagged": ...}
    handle.close()

`AsyncStreamClient` is the same for asyncio (`await client.open_stream(...)`, `await handle.feed(...)`).
"""
from __future__ import annotations

import itertools
import numbers
import os
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from guardrt.runtime.errors import InputError, ServerError, require

__all__ = ["STREAM_BACKEND", "DEFAULT_IDLE_TIMEOUT_S", "stream_config_text", "write_stream_model", "StreamClient",
           "StreamHandle", "AsyncStreamClient", "AsyncStreamHandle"]

STREAM_BACKEND = Path(__file__).with_name("triton_backend") / "stream_model.py"
DEFAULT_IDLE_TIMEOUT_S = 60.0
# The END request closing a stream carries one token the model ignores (and gets one-element outputs back): with a
# zero-length input and outputs, tritonserver 2.51 segfaulted in TRITONBACKEND_RequestRelease (realistic demo, 32
# concurrent streams, reproduced; not seen with the placeholder over 7 runs of the same load).
_CLOSE_PLACEHOLDER = 151643


def stream_config_text(name: str = "qwen3guard-stream", *, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
                       max_batch_size: int = 32, max_streams: int = 256, max_queue_delay_us: int = 1000,
                       intra_op_threads: int = 0, instance_count: int = 1, precision: str = "fp32",
                       max_positions: int = 0) -> str:
    """config.pbtxt of the stream model (checked with Triton's ModelConfig protobuf). `max_batch_size`: streams
    stepped together in one execute; `max_streams`: live streams the model holds (more START requests are refused);
    the sequence batcher's `max_candidate_sequences` is `max_streams` so every live stream can be batched;
    `max_positions` (0: the model's max_position_embeddings) caps a stream's length, so the KV memory held is at most
    max_streams x max_positions x the KV bytes per token (logged when the model loads)."""
    from guardrt.runtime.triton_repo import _parameters_block, _q, parse_config

    params = {"guardrt_spec": "qwen3guard-stream", "guardrt_precision": precision,
              "intra_op_threads": int(intra_op_threads), "max_streams": int(max_streams),
              "max_positions": int(max_positions)}
    text = (
        f"name: {_q(name)}\nbackend: \"python\"\nmax_batch_size: {int(max_batch_size)}\n"
        "input [\n  { name: \"input_ids\" data_type: TYPE_INT64 dims: [ -1 ] allow_ragged_batch: true }\n]\n"
        "output [\n"
        "  { name: \"risk\" data_type: TYPE_STRING dims: [ -1 ] },\n"
        "  { name: \"category\" data_type: TYPE_STRING dims: [ -1 ] },\n"
        "  { name: \"flag\" data_type: TYPE_STRING dims: [ 3 ] },\n"
        "  { name: \"stream_bytes\" data_type: TYPE_INT64 dims: [ 1 ] },\n"
        "  { name: \"live_streams\" data_type: TYPE_INT64 dims: [ 1 ] },\n"
        "  { name: \"error\" data_type: TYPE_STRING dims: [ 1 ] }\n]\n"
        "sequence_batching {\n"
        f"  max_sequence_idle_microseconds: {int(idle_timeout_s * 1e6)}\n"
        f"  oldest {{ max_candidate_sequences: {int(max_streams)} "
        f"preferred_batch_size: [ {', '.join(str(b) for b in (8, 16, 32) if b <= max_batch_size) or max_batch_size} ] "
        f"max_queue_delay_microseconds: {int(max_queue_delay_us)} }}\n"
        "  control_input [\n"
        "    { name: \"START\" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },\n"
        "    { name: \"END\" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },\n"
        "    { name: \"CORRID\" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }\n"
        "  ]\n}\n"
        f"instance_group [\n  {{ count: {int(instance_count)} kind: KIND_CPU }}\n]\n"
        + _parameters_block(params)
    )
    parse_config(text)
    return text


def write_stream_model(repo: str | Path, export_dir: str | Path, *, precision: str = "fp32",
                       name: str = "qwen3guard-stream", **options: Any) -> Path:
    """Write `repo/<name>/` (config.pbtxt; 1/model.py, 1/model.onnx[.data], and the export's config.json and a
    guardrt.json pointing at the graph, so the backend loads `1/` as an export directory)."""
    import json

    from guardrt.runtime.export_dir import MANIFEST_NAME, load_export_dir
    from guardrt.runtime.triton_repo import _install, _onnx_files

    manifest = load_export_dir(export_dir, spec="qwen3guard-stream")
    if precision not in manifest.precisions:
        raise InputError(f"{manifest.path} has no {precision} graph (has: {', '.join(manifest.precisions)})")
    text = stream_config_text(name, precision=precision, **options)
    files = {f.name: f for f in _onnx_files(manifest.precisions[precision])}
    files.update({"model.py": STREAM_BACKEND, "config.json": manifest.path / "config.json"})
    raw = dict(manifest.raw, precisions={precision: "model.onnx"}, graphs={})
    manifest_blob = {f"1/{MANIFEST_NAME}": json.dumps(raw, indent=2).encode("utf-8")}
    return _install(Path(repo), name, text, files, manifest_blob)


# -- client ---------------------------------------------------------------------------------------------------------
def _text(arr) -> list[str]:
    if arr is None:
        return []
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]


def _parse(result) -> dict[str, Any]:
    """A response -> {"risk", "category", "flagged", "stream_bytes", "live_streams"}; ServerError text in "error"."""
    error = _text(result.as_numpy("error"))
    flag = _text(result.as_numpy("flag"))
    out = {"risk": _text(result.as_numpy("risk")), "category": _text(result.as_numpy("category")),
           "flagged": {"risk": flag[0], "category": flag[1], "token_index": int(flag[2])} if flag and flag[0] else None,
           "stream_bytes": int(result.as_numpy("stream_bytes").reshape(-1)[0]),
           "live_streams": int(result.as_numpy("live_streams").reshape(-1)[0])}
    if error and error[0]:
        out["error"] = error[0]
    return out


def _error(sequence_id: int, message: str) -> Exception:
    """The model's per-stream errors (and Triton's refusal of a sequence it no longer knows: the stream idled past
    the timeout, or was closed) are InputErrors of that stream; anything else is a ServerError."""
    if message.startswith("stream "):
        return InputError(message)
    if "must specify the START flag" in message:
        return InputError(f"stream {sequence_id}: unknown or closed stream (idle past the server's timeout, or "
                          "closed)")
    return ServerError(message)


def _result(sequence_id: int, outcome: tuple) -> dict:
    """The value of a (value, error) outcome delivered by the stream callback; the error raised as _error says."""
    value, error = outcome
    if error is not None:
        raise _error(sequence_id, error)
    return value


class _Transport:
    """One gRPC stream to the model; responses are matched to requests by request id (the callback runs on
    tritonclient's stream thread and hands each outcome to its sink)."""

    def __init__(self, url: str, model: str, timeout_s: float):
        grpc = require("tritonclient.grpc", "client")
        self._grpc, self.url, self.model, self.timeout_s = grpc, url, model, float(timeout_s)
        self._sinks: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        # Correlation ids unique across clients of one server: a random 48-bit base per client, plus a counter.
        self._corr = itertools.count((int.from_bytes(os.urandom(6), "big") << 12) + 1)
        self.client = grpc.InferenceServerClient(url)
        try:
            self.client.start_stream(callback=self._on_response)
        except Exception as exc:  # tritonclient raises its own exception types
            raise ServerError(f"cannot open a gRPC stream to {url}: {str(exc).splitlines()[0]}") from None

    def new_sequence_id(self) -> int:
        return next(self._corr)

    def _on_response(self, result=None, error=None):
        if error is not None:
            request_id = getattr(error, "request_id", None) or ""
            message = " ".join((error.message() if hasattr(error, "message") else str(error)).split())
            outcome = (None, message)
        else:
            request_id = result.get_response().id
            parsed = _parse(result)
            outcome = (None, parsed["error"]) if "error" in parsed else (parsed, None)
        with self._lock:
            sink = self._sinks.pop(request_id, None)
            others = list(self._sinks.values()) if sink is None and error is not None else []
        if sink is not None:
            sink(outcome)
        for other in others:  # an error without request id (the stream broke): every waiter gets it
            other(outcome)

    def send(self, sequence_id: int, ids: Sequence[int], start: bool, end: bool, sink) -> str:
        request_id = f"s{next(self._ids)}"
        arr = np.asarray(list(ids), dtype=np.int64).reshape(1, -1)
        inp = self._grpc.InferInput("input_ids", list(arr.shape), "INT64")
        inp.set_data_from_numpy(arr)
        with self._lock:
            self._sinks[request_id] = sink
        try:
            self.client.async_stream_infer(self.model, [inp], request_id=request_id, sequence_id=sequence_id,
                                           sequence_start=start, sequence_end=end)
        except Exception as exc:
            with self._lock:
                self._sinks.pop(request_id, None)
            raise ServerError(f"request to {self.model} at {self.url} failed (server down or stream closed): "
                              f"{str(exc).splitlines()[0]}") from None
        return request_id

    def call(self, sequence_id: int, ids: Sequence[int], start: bool = False, end: bool = False) -> dict[str, Any]:
        q: queue.Queue = queue.Queue()
        request_id = self.send(sequence_id, ids, start, end, q.put)
        try:
            outcome = q.get(timeout=self.timeout_s)
        except queue.Empty:
            raise self._timed_out(request_id) from None
        return _result(sequence_id, outcome)

    async def call_async(self, sequence_id: int, ids: Sequence[int], start: bool = False, end: bool = False
                         ) -> dict[str, Any]:
        import asyncio

        loop = asyncio.get_running_loop()
        future = loop.create_future()
        request_id = self.send(sequence_id, ids, start, end, lambda outcome: loop.call_soon_threadsafe(
            lambda: future.done() or future.set_result(outcome)))
        try:
            outcome = await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            raise self._timed_out(request_id) from None
        return _result(sequence_id, outcome)

    def _timed_out(self, request_id) -> ServerError:
        """Forget a request whose response did not come within timeout_s (a late one is dropped) and say so."""
        with self._lock:
            self._sinks.pop(request_id, None)
        return ServerError(f"no response from {self.model} at {self.url} within {self.timeout_s:g}s")

    def close(self) -> None:
        try:
            self.client.stop_stream()
        finally:
            self.client.close()


class _Tokens:
    """The client-side half of the protocol: the chat template and tokenizer of the export (as in process)."""

    def __init__(self, tokenizer_dir: str | Path):
        from tokenizers import Tokenizer

        from guardrt.runtime.chat_template import ChatTemplate
        from guardrt.runtime.errors import ModelFilesError

        root = Path(tokenizer_dir)
        if not (root / "tokenizer.json").is_file():
            raise ModelFilesError(f"{root} has no tokenizer.json (pass the export directory)")
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.template = ChatTemplate.from_model_dir(root)

    def conversation_ids(self, messages: Any) -> list[int]:
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise InputError("messages must be a list of {\"role\", \"content\"} objects")
        text = self.template.render(messages, add_generation_prompt=False, enable_thinking=False)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def prompt_ids(self, messages_or_ids: Any) -> list[int]:
        """Messages so far (ending with the user turn) or token ids -> the ids through the last user <|im_end|>."""
        from guardrt.runtime.stream_protocol import prompt_end_index

        items = list(messages_or_ids) if messages_or_ids is not None else []
        ids = ([int(t) for t in items] if items and isinstance(items[0], numbers.Integral)
               else self.conversation_ids(items))
        return ids[:prompt_end_index(ids) + 1]

    def response_conversation_ids(self, messages: Any) -> list[int]:
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
                or messages[-1].get("role") != "assistant":
            raise InputError("the last message must be the assistant response to judge token by token")
        return self.conversation_ids(messages)

    def ids_of(self, tokens_or_text: Any) -> list[int]:
        if isinstance(tokens_or_text, str):
            return self.tokenizer.encode(tokens_or_text, add_special_tokens=False).ids
        return [int(t) for t in tokens_or_text]


class StreamHandle:
    """One live stream: `feed(ids or text)` -> {"risk", "category", "flagged", "stream_bytes", ...}; `close()`."""

    def __init__(self, client: "StreamClient", sequence_id: int, query: dict[str, str], stream_bytes: int):
        self.client, self.sequence_id, self.query, self.stream_bytes = client, sequence_id, query, stream_bytes
        self.tokens: list[int] = []
        self.risk: list[str] = []
        self.category: list[str] = []
        self.flagged: dict[str, Any] | None = None
        self.closed = False

    def _record(self, ids: list[int], res: dict[str, Any]) -> dict[str, Any]:
        self.tokens += ids
        self.risk += res["risk"]
        self.category += res["category"]
        self.flagged, self.stream_bytes = res["flagged"], res["stream_bytes"]
        return res

    def feed(self, tokens_or_text: Any) -> dict[str, Any]:
        ids = self.client.tokens.ids_of(tokens_or_text)
        if not ids:
            raise InputError(f"stream {self.sequence_id}: no token ids")
        return self._record(ids, self.client.transport.call(self.sequence_id, ids))

    def result(self) -> dict[str, Any]:
        return {"query": self.query, "tokens": self.tokens, "risk": self.risk, "category": self.category,
                "flagged": self.flagged}

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client.transport.call(self.sequence_id, [_CLOSE_PLACEHOLDER], end=True)


class StreamClient:
    """Streams to the Triton model `model_name` at `url`; tokenization with the export at `tokenizer_dir`."""

    def __init__(self, url: str, tokenizer_dir: str | Path, model_name: str = "qwen3guard-stream",
                 timeout_s: float = 60.0):
        self.tokens = _Tokens(tokenizer_dir)
        self.transport = _Transport(url, model_name, timeout_s)

    def open_stream(self, messages_or_ids: Any) -> StreamHandle:
        """Judge the prompt (messages so far, ending with the user turn, or their ids) -> a live stream's handle."""
        prompt = self.tokens.prompt_ids(messages_or_ids)
        sequence_id = self.transport.new_sequence_id()
        res = self.transport.call(sequence_id, prompt, start=True)
        return StreamHandle(self, sequence_id, {"risk": res["risk"][0], "category": res["category"][0]},
                            res["stream_bytes"])

    # The CLI's interface (as `StreamModerator`): whole conversations, all streamed concurrently.
    def response_conversation_ids(self, messages: Any) -> list[int]:
        return self.tokens.response_conversation_ids(messages)

    def moderate_many(self, conversations: Sequence[Sequence[int]], chunk: int = 1) -> list[Any]:
        """Each conversation as a stream (prompt, then `chunk` tokens per request), all streams in flight together
        -> the CLI's result per conversation, or its InputError."""
        import asyncio

        async def one(ids):
            from guardrt.runtime.stream_protocol import prompt_end_index

            try:
                end = prompt_end_index(ids)
                handle = AsyncStreamHandle(self, self.transport.new_sequence_id())
                await handle.open(ids[:end + 1])
                try:
                    for lo in range(end + 1, len(ids), chunk):
                        await handle.feed(ids[lo:lo + chunk])
                finally:
                    await handle.close()
                return handle.result()
            except InputError as exc:
                return exc

        async def run():
            return await asyncio.gather(*(one(list(ids)) for ids in conversations))

        return asyncio.run(run())

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "StreamClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncStreamHandle(StreamHandle):
    """A live stream for asyncio: `await feed(...)`, `await close()`."""

    def __init__(self, client, sequence_id: int):
        super().__init__(client, sequence_id, {}, 0)

    async def open(self, prompt: list[int]) -> "AsyncStreamHandle":
        res = await self.client.transport.call_async(self.sequence_id, prompt, start=True)
        self.query, self.stream_bytes = {"risk": res["risk"][0], "category": res["category"][0]}, res["stream_bytes"]
        return self

    async def feed(self, tokens_or_text: Any) -> dict[str, Any]:  # type: ignore[override]
        ids = self.client.tokens.ids_of(tokens_or_text)
        if not ids:
            raise InputError(f"stream {self.sequence_id}: no token ids")
        return self._record(ids, await self.client.transport.call_async(self.sequence_id, ids))

    async def close(self) -> None:  # type: ignore[override]
        if not self.closed:
            self.closed = True
            await self.client.transport.call_async(self.sequence_id, [_CLOSE_PLACEHOLDER], end=True)


class AsyncStreamClient(StreamClient):
    """`StreamClient` for asyncio: `handle = await client.open_stream(messages)`; many streams share one gRPC
    stream without a thread each."""

    async def open_stream(self, messages_or_ids: Any) -> AsyncStreamHandle:  # type: ignore[override]
        prompt = self.tokens.prompt_ids(messages_or_ids)
        return await AsyncStreamHandle(self, self.transport.new_sequence_id()).open(prompt)

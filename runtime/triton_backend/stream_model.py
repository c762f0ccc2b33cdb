"""guardrt Triton python backend for Qwen3Guard-Stream: one stateful stream per sequence (sequence batcher).

Triton's sequence batcher (`oldest` strategy) routes the requests of a sequence (correlation id) to this model with
START / END / CORRID control inputs and batches the requests of different sequences into one `execute`. The model
keeps each sequence's KV cache itself (`guardrt.runtime.stream.StreamModerator`, keyed by correlation id), so an
`execute` costs one batched prefill for the sequences that START and one batched incremental step for the others,
whatever their lengths and chunk sizes.

Why state in the backend and not Triton's implicit state: the state is a KV cache that grows by k tokens per request
(all layers, keys and values: 32 KiB per token on the realistic 0.6B layer shape, 4 layers, fp32), and the batched step
needs it laid out with the other rows'; implicit state would copy every sequence's whole cache into and out of the
backend on each request, and needs a fixed-shape state buffer per sequence slot.

Request (batch dim 1): `input_ids` INT64 [1, k] (START: the prompt through the last user <|im_end|>; otherwise the
next k >= 1 response-side tokens; with END: the stream is closed and its ids are ignored — clients send one
placeholder token, because a zero-length input / output in a sequence-batcher batch crashed tritonserver 2.51).
Response: `risk`, `category` BYTES [1, k] (the
labels of the new tokens; START: the query heads' labels, [1, 1] each), `flag` BYTES [1, 3] (risk, category,
token index of the debounced flag, or empty strings), `stream_bytes` INT64 [1, 1] (this stream's KV bytes),
`live_streams` INT64 [1, 1] and `error` BYTES [1, 1] ("" or the request's own one-line error; its stream is unaffected
unless the error says it was closed).

Idle streams: Triton frees a sequence slot after `max_sequence_idle_microseconds` without a request; it does not tell
the model, so a sweeper thread drops the KV state of every stream idle that long (the same setting, read from the
config), and a request for it then gets "unknown or closed stream". `max_streams` bounds the live streams (a START
beyond it is refused), so memory is bounded by max_streams x max_position_embeddings x bytes per token.

config.pbtxt `parameters`: intra_op_threads, max_streams, max_positions (0: the model's
max_position_embeddings), guardrt_precision. Needs guardrt's runtime importable.
"""
import json
import os
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def _bytes(values):
    return np.asarray([[str(v).encode("utf-8") for v in values]], dtype=np.object_)


def _response(risk=(), category=(), flag=None, stream_bytes=0, live=0, error=""):
    flag = flag or {}
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("risk", _bytes(risk)),
        pb_utils.Tensor("category", _bytes(category)),
        pb_utils.Tensor("flag", _bytes([flag.get("risk", ""), flag.get("category", ""),
                                        flag.get("token_index", "")])),
        pb_utils.Tensor("stream_bytes", np.asarray([[stream_bytes]], dtype=np.int64)),
        pb_utils.Tensor("live_streams", np.asarray([[live]], dtype=np.int64)),
        pb_utils.Tensor("error", _bytes([error]))])


def _control(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args):
        from guardrt.runtime.stream import StreamModerator

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("intra_op_threads", "0") or 0)
        self.max_streams = int(params.get("max_streams", "256") or 256)
        idle_us = int(config.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 0) or 1000000)
        self.idle_s = idle_us / 1e6
        root = os.path.join(args["model_repository"], args["model_version"])
        self.moderator = StreamModerator(root, precision=params.get("guardrt_precision", "fp32"),
                                         intra_op_threads=threads or None)
        limit = int(params.get("max_positions", "0") or 0)  # a lower bound on a stream's length (memory)
        if limit:
            self.moderator.max_positions = min(self.moderator.max_positions, limit)
        self.streams = {}  # correlation id -> (moderator stream id, last activity time)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.sweeper = threading.Thread(target=self._sweep, name="stream-idle-sweeper", daemon=True)
        self.sweeper.start()
        pb_utils.Logger.log_info(f"qwen3guard-stream: {self.moderator.graph.bytes_per_token()} KV bytes per token, "
                                 f"at most {self.max_streams} streams of {self.moderator.max_positions} positions "
                                 f"({self.max_streams * self.moderator.max_positions * self.moderator.graph.bytes_per_token() / 2**30:.2f} GiB); "
                                 f"idle streams freed after {self.idle_s:g}s")

    def _sweep(self):
        while not self.stopping.wait(max(0.05, self.idle_s / 4)):
            now = time.monotonic()
            with self.lock:
                idle = [c for c, (_, t) in self.streams.items() if now - t > self.idle_s]
                for corr in idle:
                    sid, _ = self.streams.pop(corr)
                    try:
                        self.moderator.close_stream(sid)
                    except Exception:  # already closed
                        pass
            if idle:
                pb_utils.Logger.log_info(f"qwen3guard-stream: freed {len(idle)} idle stream(s)")

    def _live(self):
        return self.moderator.live_streams

    def execute(self, requests):
        from guardrt.runtime.errors import InputError

        responses = [None] * len(requests)
        starts, feeds, ends = [], [], []
        for i, request in enumerate(requests):
            try:
                corr = int(_control(request, "CORRID"))
                start, end = bool(_control(request, "START")), bool(_control(request, "END"))
                ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1).tolist()
            except Exception as exc:  # a malformed request: its own error
                responses[i] = _response(error=f"bad request: {exc}")
                continue
            if end:
                ends.append((i, corr))
            if start:
                with self.lock:
                    old = self.streams.pop(corr, None)
                if old is not None:  # a new sequence reusing a correlation id replaces the old one
                    self._close(old[0])
                starts.append((i, corr, ids))
            elif end:
                pass  # END closes the stream; its input_ids (one placeholder token) are not fed
            elif ids:
                feeds.append((i, corr, ids))
            else:
                responses[i] = _response(error=f"stream {corr}: no token ids", live=self._live())
        self._open(starts, responses)
        self._feed(feeds, responses)
        for i, corr in ends:
            with self.lock:
                entry = self.streams.pop(corr, None)
            if entry is not None:
                self._close(entry[0])
            if responses[i] is None:  # the END of a stream (closing it)
                responses[i] = _response([""], [""], live=self._live(), error="" if entry else
                                         f"stream {corr}: unknown or closed stream")
        return responses

    def _close(self, sid):
        try:
            self.moderator.close_stream(sid)
        except Exception:
            pass

    def _open(self, starts, responses):
        from guardrt.runtime.errors import InputError

        if len(starts) + self._live() > self.max_streams:
            keep = max(0, self.max_streams - self._live())
            for i, corr, _ in starts[keep:]:
                responses[i] = _response(error=f"stream {corr}: too many live streams (max_streams "
                                               f"{self.max_streams}); retry later", live=self._live())
            starts = starts[:keep]
        if not starts:
            return
        opened = self.moderator.open_many([ids for _, _, ids in starts])
        now = time.monotonic()
        for (i, corr, _), res in zip(starts, opened):
            if isinstance(res, InputError):
                responses[i] = _response(error=f"stream {corr}: {res}", live=self._live())
                continue
            sid, result = res
            with self.lock:
                self.streams[corr] = (sid, now)
            responses[i] = _response([result.query["risk"]], [result.query["category"]], None,
                                     self.moderator.stream_bytes(sid), self._live())

    def _feed(self, feeds, responses):
        from guardrt.runtime.errors import InputError

        items, where = [], []
        with self.lock:
            for i, corr, ids in feeds:
                entry = self.streams.get(corr)
                if entry is None:
                    responses[i] = _response(error=f"stream {corr}: unknown or closed stream (idle for more than "
                                                   f"{self.idle_s:g}s, closed, or never opened)", live=self._live())
                    continue
                items.append((entry[0], ids))
                where.append((i, corr))
        if not items:
            return
        results = self.moderator.feed_many(items)
        now = time.monotonic()
        for (i, corr), (sid, _), res in zip(where, items, results):
            if isinstance(res, InputError):
                responses[i] = _response(error=f"stream {corr}: {str(res).split(': ', 1)[-1]}", live=self._live())
                continue
            with self.lock:
                if corr in self.streams:
                    self.streams[corr] = (sid, now)
            try:
                size = self.moderator.stream_bytes(sid)
            except KeyError:
                size = 0
            responses[i] = _response(res["risk"], res["category"], res["flagged"], size, self._live())

    def finalize(self):
        self.stopping.set()
        self.moderator.close()

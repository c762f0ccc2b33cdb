"""guardrt Triton python backend for generate mode: greedy generation with continuous batching over a KV cache.

A decoupled model (`model_transaction_policy { decoupled: true }`): `execute` only validates each request and queues
it, and returns at once; one worker thread owns the ONNX Runtime session and a running `DecodeBatch`
(`guardrt.runtime.generate`): between two decode steps it admits every request that arrived (one prefill for them,
then their rows join the running rows), and it sends a request's response the moment its row stops (a stop token or
its token limit). So concurrent requests share each decode step whatever the moment they arrived, and a short
answer never waits for a long one. The computation per row is the one `GreedyGenerator` does (tested: token ids
equal to in-process generation).

Request: `input_ids` INT64 [n] (one prompt: the chat template's ids, no padding), optional `max_new_tokens` INT32
[1], optional `verdict_mode` BOOL [1], optional `score_mode` BOOL [1]. Response: `output_ids` INT64 [m], the new
tokens, stop token included, `verdict` FP32 [7] (verdict requests: `guardrt.runtime.verdict.VERDICT_COLUMNS`; score
requests: [103], `guardrt.runtime.flexguard_score.score_row`; else empty) and `error` BYTES [1] ("" or the request's
one-line error, with the other outputs empty).

Score requests (`score_mode` true, FlexGuard): `input_ids` is the prompt plus the generated tokens before the
score's first digit; the answer is the distribution over the score 0-100 (`flexguard_score.score_distributions`: one
prefill with the prefix cache, two batched decode steps over the digit tree), what the in-process
`FlexGuardClassifier` computes. Answered between two decode steps, like verdict requests. Verdict requests are
Qwen3Guard-Gen's only (`guardrt_spec` parameter), score requests FlexGuard's only.

Verdict requests (`verdict_mode` true) are Qwen3Guard-Gen's verdict mode served on the same session: one prefill of
`prompt + Safety :` through the KV-cache graph, reusing the prefix cache (the template head shared by every prompt
is not recomputed), exactly what the in-process default verdict engine ("kv", `kv_verdict_rows`) computes. They are
answered between two decode steps, every verdict request that arrived in one prefill (sorted by length, batches of
at most `max_verdict_batch`), so they never wait for a generation to end. A bad request (empty, not one row of
integer ids, an id outside the vocabulary, a limit out of range, over the maximum length) gets its own one-line
error and never reaches the decoder; a prefill that fails is retried one request at a time, so the others in it
are still answered.
Decoupled models are called over gRPC streams (`tritonclient.grpc` `start_stream` / `async_stream_infer`); see
`guardrt.runtime.triton_generate`.

config.pbtxt `parameters` (written by `guardrt.runtime.triton_generate.write_generate_model`): onnx_file,
eos_token_ids ("151645,151643"), pad_token_id, max_new_tokens, max_length, intra_op_threads, max_active_rows (rows
decoding at once; more wait in the queue), prefix_cache_entries, max_verdict_batch, intra_op_spinning ("0", default: idle ORT threads sleep).

Needs guardrt's runtime (numpy + onnxruntime) importable by the backend's Python: the stub guardrt assembles is for
the Python that runs `guardrt serve`.
"""
import json
import os
import queue
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


def _error_tensor(message):
    return pb_utils.Tensor("error", np.asarray([message.encode("utf-8")], dtype=np.object_))


def _response(output_ids=(), verdict=(), error=""):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("output_ids", np.asarray(output_ids, dtype=np.int64).reshape(-1)),
        pb_utils.Tensor("verdict", np.asarray(verdict, dtype=np.float32).reshape(-1)),
        _error_tensor(error)])


def _error_response(message):
    """A request's error as data (empty `output_ids`, the message in `error`): the gRPC stream hands an error
    response to the client's callback without its request id, so a Triton-level error could not be matched to its
    request; data responses keep the id."""
    return _response(error=message)


class TritonPythonModel:
    def initialize(self, args):
        from guardrt.runtime.generate import DecodeBatch, GenerationSettings, GreedyGenerator, PrefixCache
        from guardrt.runtime.guard_output import guard_spec, verdict_prefix_ids

        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise ValueError("the generate model must be decoupled (model_transaction_policy { decoupled: true })")
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.name = config.get("name", "generate")
        self.settings = GenerationSettings(
            eos_token_ids=tuple(int(t) for t in params["eos_token_ids"].split(",")),
            pad_token_id=int(params["pad_token_id"]),
            max_new_tokens=int(params["max_new_tokens"]),
            max_length=int(params["max_length"]),
        )
        self.max_active = int(params.get("max_active_rows", "32") or 32)
        self.max_verdict_batch = int(params.get("max_verdict_batch", "16") or 16)
        self.spec_name = params.get("guardrt_spec") or "qwen3guard-gen"
        self.scores_served = self.spec_name == "flexguard"  # FlexGuard: score requests instead of verdicts
        self.verdict_prefix_len = None if self.scores_served else len(verdict_prefix_ids(guard_spec(self.spec_name)))
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        threads = int(params.get("intra_op_threads", "0") or 0) or None
        entries = int(params.get("prefix_cache_entries", "8") or 0)
        self.generator = GreedyGenerator(path, self.settings, intra_op_threads=threads,
                                         prefix_cache=PrefixCache(max_entries=entries) if entries else False,
                                         session_options=self._session_options(params))
        self.batch = DecodeBatch(self.generator)
        # Token ids must index the embedding: an id outside it would fail the whole prefill it joins.
        logits = [o for o in self.generator.runner.session.get_outputs() if o.name == "logits"]
        vocab = logits[0].shape[-1] if logits else None
        self.vocab_size = vocab if isinstance(vocab, int) else None
        self.pending = queue.Queue()
        self.senders = {}
        self.next_key = 0
        self.closing = threading.Event()
        self.executions = 0  # decode steps + prefills, for the statistics line at the end
        self.worker = threading.Thread(target=self._loop, name=f"{self.name}-decoder", daemon=True)
        self.worker.start()
        pb_utils.Logger.log_info(f"guardrt {self.name}: {path}, continuous batching up to {self.max_active} rows")

    @staticmethod
    def _session_options(params):
        """ORT's idle threads sleep unless `intra_op_spinning` is "1" (`session.intra_op.allow_spinning`), as in the
        classifier backend: between two decode steps this process runs Python (argmax, admitting requests, sending
        responses) and Triton's gRPC threads and the client need the cores; spinning pool threads take them (tiny
        model, one request at a time over gRPC, contended machine: p50 16-45 ms spinning, 12-23 ms not; realistic
        model: 1,809 vs 1,600 ms, one run each)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", params.get("intra_op_spinning", "0") or "0")
        return options

    def _parse(self, request):
        """(prompt ids, token limit; None for a verdict request), or ValueError naming what is wrong."""
        ids_t = pb_utils.get_input_tensor_by_name(request, "input_ids")
        if ids_t is None:
            raise ValueError("request needs input_ids")
        ids = ids_t.as_numpy()
        if ids.ndim != 1:
            raise ValueError(f"input_ids must be one prompt [n], got shape {list(ids.shape)}")
        if ids.size == 0:
            raise ValueError("empty prompt (no token ids)")
        if ids.dtype.kind not in "iu":
            raise ValueError(f"input_ids must be integers, got {ids.dtype}")
        bad = np.flatnonzero((ids < 0) | (ids >= self.vocab_size)) if self.vocab_size else np.flatnonzero(ids < 0)
        if bad.size:
            raise ValueError(f"token id {int(ids[bad[0]])} at position {int(bad[0])} is outside the vocabulary "
                             f"(0..{(self.vocab_size or 0) - 1})")
        score_t = pb_utils.get_input_tensor_by_name(request, "score_mode")
        if score_t is not None and bool(score_t.as_numpy().reshape(-1)[0]):
            if not self.scores_served:
                raise ValueError(f"score requests are FlexGuard's; this model serves {self.spec_name}")
            if ids.size + 2 > self.settings.max_length:
                raise ValueError(f"{ids.size} tokens + 2 score digits exceed the maximum length "
                                 f"{self.settings.max_length}")
            return ids.astype(np.int64).tolist(), "score"
        verdict_t = pb_utils.get_input_tensor_by_name(request, "verdict_mode")
        if verdict_t is not None and bool(verdict_t.as_numpy().reshape(-1)[0]):
            if self.verdict_prefix_len is None:
                raise ValueError(f"verdict requests are Qwen3Guard-Gen's; this model serves {self.spec_name}")
            if ids.size + self.verdict_prefix_len > self.settings.max_length:
                raise ValueError(f"{ids.size} prompt tokens + {self.verdict_prefix_len} verdict-prefix tokens exceed "
                                 f"the maximum length {self.settings.max_length}")
            return ids.astype(np.int64).tolist(), None
        limit = self.settings.max_new_tokens
        lim_t = pb_utils.get_input_tensor_by_name(request, "max_new_tokens")
        if lim_t is not None:
            limit = int(lim_t.as_numpy().reshape(-1)[0])
            if not 1 <= limit <= self.settings.max_new_tokens:
                raise ValueError(f"max_new_tokens must be 1..{self.settings.max_new_tokens}, got {limit}")
        if ids.size + limit > self.settings.max_length:
            raise ValueError(f"{ids.size} prompt tokens + {limit} new tokens exceed the maximum length "
                             f"{self.settings.max_length}")
        return ids.astype(np.int64).tolist(), limit

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt, limit = self._parse(request)
            except ValueError as exc:
                sender.send(_error_response(f"{self.name}: {exc}"), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            self.pending.put((sender, prompt, limit))
        return None

    # -- the decoder thread ---------------------------------------------------------------------------------------
    def _admit(self, block):
        """Requests to prefill now: every queued one up to the row budget (waiting for one when idle)."""
        new = []
        room = self.max_active - len(self.batch)
        try:
            if block:
                new.append(self.pending.get(timeout=0.1))
            while len(new) < room:
                new.append(self.pending.get_nowait())
        except queue.Empty:
            pass
        return new

    def _deliver(self, finished):
        for key, tokens in finished:
            sender = self.senders.pop(key)
            sender.send(_response(output_ids=tokens), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _fail(self, keys, exc):
        for key in keys:
            sender = self.senders.pop(key, None)
            if sender is not None:
                message = " ".join(f"{self.name}: onnxruntime failed: {exc}".split())
                sender.send(_error_response(message), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _loop(self):
        from guardrt.runtime.generate import DecodeBatch

        while not self.closing.is_set():
            new = self._admit(block=len(self.batch) == 0)
            verdicts = [item for item in new if item[2] is None]
            if verdicts:
                self._verdicts(verdicts)
            scores = [item for item in new if item[2] == "score"]
            if scores:
                self._scores(scores)
            new = [item for item in new if isinstance(item[2], int)]
            if new:
                keys = []
                for sender, _, _ in new:
                    keys.append(self.next_key)
                    self.senders[self.next_key] = sender
                    self.next_key += 1
                self._prefill(new, keys)
            if len(self.batch):
                try:
                    self._deliver(self.batch.step())
                    self.executions += 1
                except Exception as exc:  # the running rows are lost; fail them and start afresh
                    self._fail(list(self.batch.keys), exc)
                    self.batch = DecodeBatch(self.generator)

    def _verdicts(self, items):
        """Answer verdict requests: longest first, batches of `max_verdict_batch`, one prefill each (prefix cache
        used); a batch that fails is retried one request at a time, so only a request that fails alone gets an
        error."""
        from guardrt.runtime.verdict import kv_verdict_rows

        items = sorted(items, key=lambda item: -len(item[1]))
        for start in range(0, len(items), self.max_verdict_batch):
            chunk = items[start:start + self.max_verdict_batch]
            try:
                rows = kv_verdict_rows(self.generator, [prompt for _, prompt, _ in chunk])
                self.executions += 1
            except Exception as exc:
                if len(chunk) == 1:
                    message = " ".join(f"{self.name}: onnxruntime failed: {exc}".split())
                    chunk[0][0].send(_error_response(message), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                else:
                    for item in chunk:
                        self._verdicts([item])
                continue
            for (sender, _, _), row in zip(chunk, rows):
                sender.send(_response(verdict=row), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _scores(self, items):
        """Answer score requests one at a time (each copies its row's cache ten times for the digit tree)."""
        from guardrt.runtime.flexguard_score import score_distributions, score_row

        for sender, prefix, _ in items:
            try:
                row = score_row(score_distributions(self.generator, [prefix])[0])
                self.executions += 1
            except Exception as exc:
                message = " ".join(f"{self.name}: onnxruntime failed: {exc}".split())
                sender.send(_error_response(message), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            sender.send(_response(verdict=row), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _prefill(self, new, keys):
        """Prefill the admitted requests together; when that fails, each alone, so only a request that fails on
        its own gets an error (the running rows are untouched: `add` merges only after a successful prefill)."""
        try:
            self._deliver(self.batch.add([p for _, p, _ in new], keys, [lim for _, _, lim in new]))
            self.executions += 1
            return
        except Exception as exc:
            if len(new) == 1:
                self._fail(keys, exc)
                return
        for item, key in zip(new, keys):
            self._prefill([item], [key])

    def finalize(self):
        self.closing.set()
        self.worker.join(timeout=10)
        pb_utils.Logger.log_info(f"guardrt {self.name}: {self.executions} batched executions")

"""Qwen3Guard-Stream in process: numpy + onnxruntime + tokenizers (no torch, no transformers).

`StreamGraph` runs the `token-heads-with-past` graph (`guardrt.export.stream_export`): one call advances a batch of
streams by a chunk of k >= 1 tokens each and returns the four heads' logits at the new positions. A stream's state
(`StreamState`) is its own keys/values [kv_heads, length, head_dim] per layer, compact; a batched step lays the rows
out right-aligned (zeros and mask 0 before a shorter past, and before a shorter chunk), so streams of any lengths and
chunk sizes share one call, then keeps each row's real columns. Rows never see each other (masked per row), which is
why a stream's verdicts do not depend on its neighbours (tested against one-at-a-time and the re-prefill reference).

`StreamModerator` is the protocol over it (`guardrt.runtime.stream_protocol`): `open(prompt_ids)` judges the prompt
with the query heads at its last token; `feed(stream, ids)` judges every new token with the response heads and
applies the official debounce (from the first content token on, as the eval); labels come from the export's
config.json maps. Errors of one stream (unknown or
closed stream, ids out of vocabulary, past `max_position_embeddings`) are InputErrors for that stream only.

`moderate_conversation(messages, chunk)` is the CLI's contract: the whole card flow for one conversation.
"""
from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guardrt.runtime.errors import InputError, ModelFilesError, read_json_file
from guardrt.runtime.onnxrt import OnnxRunner
from guardrt.runtime.stream_protocol import StreamLabels, debounced_flag, prompt_end_index

__all__ = ["HEAD_OUTPUTS", "StreamGraph", "StreamState", "StreamModerator", "StreamResult"]

HEAD_OUTPUTS = ("risk_level_logits", "category_logits", "query_risk_level_logits", "query_category_logits")


@dataclass
class StreamState:
    """One stream's KV cache: past name -> [kv_heads, length, head_dim] (compact, its real tokens in order)."""

    past: dict[str, np.ndarray]
    length: int = 0

    @property
    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in self.past.values()))


class StreamGraph:
    """The KV-cache token-heads graph at `model_path`; `step(states, chunks)` advances several streams at once."""

    def __init__(self, model_path: str | Path, providers: Sequence[Any] | str | None = None,
                 intra_op_threads: int | None = None, session_options=None):
        from guardrt.runtime.generate import _layer_order

        self.runner = OnnxRunner(model_path, providers=providers, intra_op_threads=intra_op_threads,
                                 session_options=session_options)
        inputs = {i.name: i for i in self.runner.session.get_inputs()}
        self.past_names = sorted((n for n in inputs if n.startswith("past_key_values.")), key=_layer_order)
        outputs = {o.name for o in self.runner.session.get_outputs()}
        if not self.past_names or "position_ids" not in inputs or not set(HEAD_OUTPUTS) <= outputs:
            raise ModelFilesError(f"{model_path} is not a Qwen3Guard-Stream token-heads graph "
                                  f"(inputs: {', '.join(inputs)})")
        shape = inputs[self.past_names[0]].shape  # [batch, kv_heads, past, head_dim]
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.past_dtype = np.float16 if "float16" in inputs[self.past_names[0]].type else np.float32
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]

    @classmethod
    def from_runner(cls, runner, num_layers: int, kv_heads: int, head_dim: int, past_dtype=np.float32
                    ) -> "StreamGraph":
        """The same stepping over any runner with `infer(feeds) -> outputs` (e.g. `TensorRTRunner` on an engine
        built with `guardrt.export.tensorrt.stream_profiles`)."""
        self = cls.__new__(cls)
        self.runner = runner
        self.past_names = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        self.kv_heads, self.head_dim, self.past_dtype = int(kv_heads), int(head_dim), np.dtype(past_dtype).type
        return self

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = list(HEAD_OUTPUTS) + self.present_names
        session = getattr(self.runner, "session", None)
        if session is not None:  # ORT: ask for the outputs directly
            return session.run(names, feeds)
        out = self.runner.infer(feeds)
        return [out[n] for n in names]

    def empty_state(self) -> StreamState:
        return StreamState({n: np.zeros((self.kv_heads, 0, self.head_dim), dtype=self.past_dtype)
                            for n in self.past_names})

    def bytes_per_token(self) -> int:
        """KV-cache bytes one token of one stream holds (all layers, keys and values)."""
        return len(self.past_names) * self.kv_heads * self.head_dim * np.dtype(self.past_dtype).itemsize

    def step(self, states: Sequence[StreamState], chunks: Sequence[Sequence[int]]
             ) -> tuple[list[list[np.ndarray]], list[StreamState]]:
        """One graph call for len(states) streams -> (per stream: the 4 head logits [k_i, C] of its new tokens,
        the streams' new states). Inputs are not modified."""
        n = len(states)
        lengths = np.asarray([s.length for s in states], dtype=np.int64)
        ks = np.asarray([len(c) for c in chunks], dtype=np.int64)
        if n == 0 or (ks <= 0).any():
            raise InputError("each stream step needs at least one token")
        width, k_max = int(lengths.max()), int(ks.max())
        if n == 1:  # no padding: the state's arrays go in as they are
            past = {name: states[0].past[name][None] for name in self.past_names}
            mask = np.ones((1, width + k_max), dtype=np.int64)
            ids = np.asarray([list(chunks[0])], dtype=np.int64)
            positions = (width + np.arange(k_max, dtype=np.int64))[None]
        else:
            past = {name: np.zeros((n, self.kv_heads, width, self.head_dim), dtype=self.past_dtype)
                    for name in self.past_names}
            mask = np.zeros((n, width + k_max), dtype=np.int64)
            ids = np.zeros((n, k_max), dtype=np.int64)
            positions = np.ones((n, k_max), dtype=np.int64)  # padding positions: any value (masked), HF uses 1
            for r, (state, chunk) in enumerate(zip(states, chunks)):
                length, k = int(lengths[r]), int(ks[r])
                if length:
                    for name in self.past_names:
                        past[name][r, :, width - length:] = state.past[name]
                    mask[r, width - length:width] = 1
                mask[r, width + k_max - k:] = 1
                ids[r, k_max - k:] = chunk
                positions[r, k_max - k:] = length + np.arange(k)
        res = self._run({"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past})
        heads, present = res[:4], dict(zip(self.past_names, res[4:]))
        outs, new_states = [], []
        for r in range(n):
            k = int(ks[r])
            outs.append([h[r, k_max - k:] for h in heads])
            if n == 1:
                new_states.append(StreamState({name: v[0] for name, v in present.items()}, width + k))
            else:
                cols = np.flatnonzero(mask[r])
                new_states.append(StreamState({name: np.ascontiguousarray(v[r][:, cols]) for name, v in present.items()},
                                              int(lengths[r]) + k))
        return outs, new_states

    def step_one(self, state: StreamState, chunk: Sequence[int]) -> tuple[list[np.ndarray], StreamState]:
        outs, states = self.step([state], [chunk])
        return outs[0], states[0]

    def close(self) -> None:
        self.runner.close()


@dataclass
class StreamResult:
    """The moderation of one stream so far (the CLI's output fields)."""

    query: dict[str, str]
    tokens: list[int] = field(default_factory=list)
    risk: list[str] = field(default_factory=list)
    category: list[str] = field(default_factory=list)
    flagged: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"query": self.query, "tokens": self.tokens, "risk": self.risk, "category": self.category,
                "flagged": self.flagged}


@dataclass
class _Stream:
    state: StreamState
    result: StreamResult


class StreamModerator:
    """Qwen3Guard-Stream moderation over an export directory (see the module docstring). Thread-safe."""

    def __init__(self, export_dir: str | Path, precision: str = "fp32", providers: Sequence[Any] | str | None = None,
                 intra_op_threads: int | None = None, session_options=None):
        from guardrt.runtime.export_dir import load_export_dir

        manifest = load_export_dir(export_dir, spec="qwen3guard-stream")
        if precision not in manifest.precisions:
            raise ModelFilesError(f"{manifest.path} has no {precision} graph (has: {', '.join(manifest.precisions)})")
        self.export_dir = manifest.path
        config = read_json_file(manifest.path / "config.json")
        self.labels = StreamLabels.from_config(config)
        self.vocab_size = int(config["vocab_size"])
        self.max_positions = int(config["max_position_embeddings"])
        self.graph = StreamGraph(manifest.precisions[precision], providers, intra_op_threads, session_options)
        self._streams: dict[int, _Stream] = {}
        self._busy: set[int] = set()  # streams inside a running step (a stream is advanced by one call at a time)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._tokenizer = None
        self._template = None

    # -- text -> ids (the card's tokenization; exactly transformers' for the Qwen3 tokenizer) -------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.export_dir / "tokenizer.json"))
        return self._tokenizer

    def conversation_ids(self, messages: Sequence[Any]) -> list[int]:
        """`apply_chat_template(messages, tokenize=False, add_generation_prompt=False, enable_thinking=False)` then
        `tokenizer(text).input_ids` (Qwen3's tokenizer adds no special tokens of its own)."""
        from guardrt.runtime.chat_template import ChatTemplate

        if self._template is None:
            self._template = ChatTemplate.from_model_dir(self.export_dir)
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise InputError("messages must be a list of {\"role\", \"content\"} objects")
        text = self._template.render(messages, add_generation_prompt=False, enable_thinking=False)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    # -- streams -------------------------------------------------------------------------------------------------
    def _check_ids(self, ids: Sequence[int], used: int, what: str) -> list[int]:
        try:
            ids = [int(t) for t in ids]
        except (TypeError, ValueError):
            raise InputError(f"{what}: token ids must be integers") from None
        if not ids:
            raise InputError(f"{what}: no token ids")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InputError(f"{what}: token id {bad[0]} is out of the vocabulary (0..{self.vocab_size - 1})")
        if used + len(ids) > self.max_positions:
            raise InputError(f"{what}: {used} + {len(ids)} tokens exceed max_position_embeddings "
                             f"{self.max_positions}; close this stream")
        return ids

    def _query_verdict(self, heads) -> dict[str, str]:
        return {"risk": self.labels.query_risk[int(heads[2][-1].argmax())],
                "category": self.labels.query_category[int(heads[3][-1].argmax())]}

    def open_many(self, prompts: Sequence[Sequence[int]]) -> list[tuple[int, StreamResult] | InputError]:
        """Open one stream per prompt (ids through the last user <|im_end|>) in one batched prefill -> (stream id,
        result with the query verdict) per prompt, or the InputError of that prompt."""
        out: list[Any] = [None] * len(prompts)
        ok: list[tuple[int, list[int]]] = []
        for i, p in enumerate(prompts):
            try:
                ok.append((i, self._check_ids(p, 0, "prompt")))
            except InputError as exc:
                out[i] = exc
        if ok:
            heads, states = self.graph.step([self.graph.empty_state()] * len(ok), [p for _, p in ok])
            with self._lock:
                for (i, _), h, s in zip(ok, heads, states):
                    sid = next(self._ids)
                    result = StreamResult(query=self._query_verdict(h))
                    self._streams[sid] = _Stream(s, result)
                    out[i] = (sid, result)
        return out

    def open(self, prompt_ids: Sequence[int]) -> tuple[int, StreamResult]:
        res = self.open_many([prompt_ids])[0]
        if isinstance(res, InputError):
            raise res
        return res

    def feed_many(self, items: Sequence[tuple[int, Sequence[int]]]) -> list[dict[str, Any] | InputError]:
        """Feed (stream id, new token ids) pairs in one batched step -> per item {"risk", "category" (labels of the
        new tokens), "flagged" (the stream's debounced flag so far, or None)} or the item's InputError. A stream
        fed twice in one call is refused for its second item."""
        out: list[Any] = [None] * len(items)
        ok: list[tuple[int, int, list[int]]] = []
        seen: set[int] = set()
        with self._lock:
            for i, (sid, ids) in enumerate(items):
                stream = self._streams.get(sid)
                try:
                    if stream is None:
                        raise InputError(f"stream {sid}: unknown or closed stream")
                    if sid in seen:
                        raise InputError(f"stream {sid}: fed twice in one batch")
                    if sid in self._busy:  # its state is being advanced by another caller's step
                        raise InputError(f"stream {sid}: already being fed by another call")
                    ok.append((i, sid, self._check_ids(ids, stream.state.length, f"stream {sid}")))
                    seen.add(sid)
                except InputError as exc:
                    out[i] = exc
            states = [self._streams[sid].state for _, sid, _ in ok]
            self._busy.update(sid for _, sid, _ in ok)
        if ok:
            try:
                heads, new_states = self.graph.step(states, [ids for _, _, ids in ok])
            finally:
                with self._lock:
                    self._busy.difference_update(sid for _, sid, _ in ok)
            with self._lock:
                for (i, sid, ids), h, s in zip(ok, heads, new_states):
                    stream = self._streams.get(sid)
                    if stream is None:  # closed while its step ran
                        out[i] = InputError(f"stream {sid}: closed while being fed")
                        continue
                    stream.state = s
                    r = stream.result
                    risk = [self.labels.risk[int(j)] for j in h[0].argmax(-1)]
                    cat = [self.labels.category[int(j)] for j in h[1].argmax(-1)]
                    r.tokens += ids
                    r.risk += risk
                    r.category += cat
                    # The official debounce over the content labels so far: an Unsafe pair anywhere outranks an
                    # earlier Controversial pair, so a Controversial flag can become Unsafe later (never unflagged).
                    r.flagged = debounced_flag(r.tokens, r.risk, r.category)
                    out[i] = {"risk": risk, "category": cat, "flagged": r.flagged}
        return out

    def feed(self, stream_id: int, ids: Sequence[int]) -> dict[str, Any]:
        res = self.feed_many([(stream_id, ids)])[0]
        if isinstance(res, InputError):
            raise res
        return res

    def result(self, stream_id: int) -> StreamResult:
        with self._lock:
            if stream_id not in self._streams:
                raise InputError(f"stream {stream_id}: unknown or closed stream")
            return self._streams[stream_id].result

    def stream_bytes(self, stream_id: int) -> int:
        with self._lock:
            return self._streams[stream_id].state.nbytes

    def close_stream(self, stream_id: int) -> StreamResult:
        with self._lock:
            stream = self._streams.pop(stream_id, None)
        if stream is None:
            raise InputError(f"stream {stream_id}: unknown or closed stream")
        return stream.result

    @property
    def live_streams(self) -> int:
        return len(self._streams)

    # -- whole conversations (the CLI) ---------------------------------------------------------------------------
    def moderate_ids(self, ids: Sequence[int], chunk: int = 1) -> dict[str, Any]:
        """The card's flow on one tokenized conversation: the prompt through the last user <|im_end|>, then every
        later token, `chunk` at a time -> the CLI's output object."""
        if chunk < 1:
            raise InputError(f"--chunk must be >= 1, got {chunk}")
        ids = list(ids)
        end = prompt_end_index(ids)
        sid, result = self.open(ids[:end + 1])
        try:
            for lo in range(end + 1, len(ids), chunk):
                self.feed(sid, ids[lo:lo + chunk])
        finally:
            self.close_stream(sid)
        return result.as_dict()

    def moderate_many(self, conversations: Sequence[Sequence[int]], chunk: int = 1
                      ) -> list[dict[str, Any] | InputError]:
        """`moderate_ids` for several tokenized conversations at once: one batched prefill, then every live stream
        advanced by `chunk` tokens per batched step (the same results as one at a time; tested)."""
        if chunk < 1:
            raise InputError(f"--chunk must be >= 1, got {chunk}")
        out: list[Any] = [None] * len(conversations)
        ends: dict[int, int] = {}
        for i, ids in enumerate(conversations):
            try:
                ends[i] = prompt_end_index(ids)
            except InputError as exc:
                out[i] = exc
        order = sorted(ends)
        opened = self.open_many([list(conversations[i])[:ends[i] + 1] for i in order])
        live: dict[int, tuple[int, int]] = {}  # conversation -> (stream id, next offset)
        for i, res in zip(order, opened):
            out[i] = res if isinstance(res, InputError) else res[1]
            if not isinstance(res, InputError):
                live[i] = (res[0], ends[i] + 1)
        opened_ids = [sid for sid, _ in live.values()]
        try:
            while True:
                items = [(i, sid, list(conversations[i])[at:at + chunk]) for i, (sid, at) in live.items()
                         if at < len(conversations[i])]
                if not items:
                    break
                for (i, sid, ids), res in zip(items, self.feed_many([(sid, ids) for _, sid, ids in items])):
                    if isinstance(res, InputError):
                        out[i] = res
                        del live[i]
                    else:
                        live[i] = (sid, live[i][1] + len(ids))
        finally:
            with self._lock:
                for sid in opened_ids:
                    self._streams.pop(sid, None)
        return [o.as_dict() if isinstance(o, StreamResult) else o for o in out]

    def moderate_conversation(self, messages: Sequence[Any], chunk: int = 1) -> dict[str, Any]:
        return self.moderate_ids(self.response_conversation_ids(messages), chunk)

    def response_conversation_ids(self, messages: Any) -> list[int]:
        """The ids of a conversation whose last message is the assistant response to judge; InputError otherwise."""
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
                or messages[-1].get("role") != "assistant":
            raise InputError("the last message must be the assistant response to judge token by token")
        return self.conversation_ids(messages)

    def close(self) -> None:
        self.graph.close()

    def __enter__(self) -> "StreamModerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Greedy generation over a KV-cache ONNX graph: numpy + onnxruntime + tokenizers, no torch, no transformers.

`GreedyGenerator(model_path, eos_token_ids, pad_token_id)` runs the `causal-lm-with-past` graph of an export
(`guardrt.export.causal_lm_export`) and reproduces HF `generate(do_sample=False)`:

* prefill: prompts left-padded with the pad id, `position_ids = cumsum(mask) - 1` with 1 at padding (HF's
  `prepare_inputs_for_generation`), empty past;
* each step: the argmax of the last position's logits (first maximum on ties, as torch), appended; the attention
  mask grows by one 1 per step, the new position is the row's last position + 1;
* a row stops after emitting one of the stop tokens (included in its output, as in HF's output ids) or after
  `max_new_tokens` tokens. A finished row leaves the batch (its cache rows are dropped, and padding columns no
  remaining row needs are trimmed): the other rows' results do not depend on it, so batched generation gives the
  tokens of one-at-a-time generation (tested) while costing less than HF, which keeps computing finished rows.

`GuardGenerator` adds the Qwen3Guard-Gen output: decoded text (special tokens skipped) parsed into the card's fields.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guardrt.runtime.errors import InputError, ModelFilesError, read_json_file
from guardrt.runtime.guard_output import check_guard_tokens, guard_spec, parse_guard_output
from guardrt.runtime.onnxrt import OnnxRunner

__all__ = ["GenerationSettings", "GreedyGenerator", "GuardGenerator", "PrefixCache", "generation_settings",
           "moderation_kind_of_ids"]


_SPEC = guard_spec()  # the registered qwen3guard-gen: the defaults below are its Decoding and InputFormat


@dataclass(frozen=True)
class GenerationSettings:
    """Stop tokens, pad id and length limits of greedy generation (defaults: the qwen3guard-gen spec's)."""

    eos_token_ids: tuple[int, ...] = tuple(_SPEC.decoding.stop_token_ids or _SPEC.decoding.default_stop_token_ids)
    pad_token_id: int = _SPEC.input.pad_token_id
    max_new_tokens: int = _SPEC.decoding.max_new_tokens
    max_length: int = _SPEC.input.max_length


def generation_settings(model_dir: str | Path, max_new_tokens: int | None = None, spec=None) -> GenerationSettings:
    """Settings from `model_dir/generation_config.json` (eos_token_id: int or list; pad_token_id), as HF reads
    them; the spec's (default qwen3guard-gen; any greedy spec or its name, e.g. flexguard) where the file or a field
    is absent, or where the spec pins `stop_token_ids`."""
    if spec is None or isinstance(spec, str):
        from guardrt.runtime.specs import get_spec

        spec = guard_spec() if spec is None else get_spec(spec, input_only=True)
    file = Path(model_dir) / "generation_config.json"
    cfg = read_json_file(file) if file.is_file() else {}
    eos = (list(spec.decoding.stop_token_ids) if spec.decoding.stop_token_ids
           else cfg.get("eos_token_id", list(spec.decoding.default_stop_token_ids)))
    eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))
    pad = cfg.get("pad_token_id")
    return GenerationSettings(
        eos_token_ids=eos_ids,
        pad_token_id=int(pad if pad is not None else eos_ids[0]),
        max_new_tokens=int(max_new_tokens if max_new_tokens is not None else spec.decoding.max_new_tokens),
        max_length=spec.input.max_length,
    )


@dataclass
class _Batch:
    """The rows still generating: their original index, mask, last position, and the KV cache."""

    rows: np.ndarray
    mask: np.ndarray
    last_pos: np.ndarray
    past: dict[str, np.ndarray]
    outputs: list[list[int]] = field(default_factory=list)


class GreedyGenerator:
    """Greedy decoding with the KV-cache graph at `model_path` (see module docstring).

    `generate(prompts)` -> new token ids per prompt (stop token included). `stats` holds the last call's timings."""

    def __init__(self, model_path: str | Path, settings: GenerationSettings | None = None,
                 providers: Sequence[Any] | str | None = None, intra_op_threads: int | None = None,
                 prefix_cache: "PrefixCache | None | bool" = True, session_options=None):
        self.settings = settings or GenerationSettings()
        self.prefix_cache = PrefixCache() if prefix_cache is True else (prefix_cache or None)
        self.runner = OnnxRunner(model_path, providers=providers, intra_op_threads=intra_op_threads,
                                 session_options=session_options)
        inputs = {i.name: i for i in self.runner.session.get_inputs()}
        self.past_names = sorted((n for n in inputs if n.startswith("past_key_values.")), key=_layer_order)
        if not self.past_names or "position_ids" not in inputs:
            raise ModelFilesError(f"{model_path} is not a KV-cache causal LM graph (inputs: {', '.join(inputs)})")
        shape = inputs[self.past_names[0]].shape  # [batch, kv_heads, past, head_dim]
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.past_dtype = np.float16 if "float16" in inputs[self.past_names[0]].type else np.float32
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        self.stats: dict[str, float] = {}
        self.stats_cached = 0

    def _check(self, prompts: Sequence[Sequence[int]]) -> None:
        if not prompts:
            raise InputError("empty batch: at least one prompt is needed")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise InputError(f"item {i}: empty prompt (no token ids)")
            if len(p) + self.settings.max_new_tokens > self.settings.max_length:
                raise InputError(f"item {i}: {len(p)} prompt tokens + {self.settings.max_new_tokens} new tokens "
                                 f"exceed the maximum length {self.settings.max_length}")

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | None = None) -> list[list[int]]:
        """New token ids per prompt (the prompts are generated together, as one batch)."""
        self._check(prompts)
        limit = self.settings.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        t0 = time.perf_counter()
        batch = DecodeBatch(self)
        done = dict(batch.add(prompts, list(range(len(prompts))), [limit] * len(prompts)))
        t_first = time.perf_counter() - t0
        steps = 1
        while batch:
            done.update(batch.step())
            steps += 1
        outputs = [done[i] for i in range(len(prompts))]
        self.stats = {"prefill_seconds": t_first, "total_seconds": time.perf_counter() - t0, "steps": steps,
                      "new_tokens": sum(len(o) for o in outputs), "cached_prompt_tokens": batch.cached_tokens,
                      "prompt_tokens": int(sum(len(p) for p in prompts))}
        return outputs

    def _run(self, ids, mask, positions, past):
        """One graph call -> (logits of the last positions [n, <=3, vocab], present keys/values by past name)."""
        res = self.runner.session.run(["logits"] + self.present_names,
                                      {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past})
        return res[0], dict(zip(self.past_names, res[1:]))

    def prefill(self, prompts: Sequence[Sequence[int]], compute_last: int = 1):
        """Run `prompts` as one left-padded batch, reusing cached prefixes but computing at least the last
        `compute_last` tokens of each -> (logits of the last min(3, computed) positions [n, k, vocab], attention
        mask, position ids, present keys/values). The graph applies the LM head to the last three positions only
        (`guardrt.export.causal_lm_export`): generation reads the last, a verdict all three (compute_last=3)."""
        from guardrt.runtime.preprocess import pad_batch

        n = len(prompts)
        cache = self.prefix_cache
        # Prefix cache: row r reuses the keys/values of its first `cached[r]` tokens, right-aligned in a past of
        # width max(cached) (zeros + mask 0 before them); the rest of each prompt is left-padded after it.
        hits = [cache.lookup(p, compute_last) for p in prompts] if cache else [(0, None)] * n
        width = max(h[0] for h in hits)
        past = {name: np.zeros((n, self.kv_heads, width, self.head_dim), dtype=self.past_dtype)
                for name in self.past_names}
        past_mask = np.zeros((n, width), dtype=np.int64)
        for r, (length, kv) in enumerate(hits):
            if length:
                past_mask[r, width - length:] = 1
                for name in self.past_names:
                    past[name][r, :, width - length:] = kv[name][:, :length]
        ids, new_mask = pad_batch([list(p)[h[0]:] for p, h in zip(prompts, hits)], self.settings.pad_token_id,
                                  "left")
        cached = np.asarray([h[0] for h in hits], dtype=np.int64)[:, None]
        positions = np.where(new_mask == 0, 1, cached + np.cumsum(new_mask, axis=1) - 1)
        mask = np.concatenate([past_mask, new_mask], axis=1)
        logits, present = self._run(ids, mask, positions, past)
        self.stats_cached = int(cached.sum())
        if cache:
            cache.store(prompts, mask, present)
        return logits, mask, positions, present

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "GreedyGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DecodeBatch:
    """Rows decoding together over one KV cache (continuous batching): `add` prefills new prompts and merges them
    into the running rows, `step` decodes one token for every row; a row leaves when it emits a stop token or
    reaches its limit, and `add`/`step` return the finished rows as (key, new token ids).

    Row layout: the keys/values and mask of each row are right-aligned ("left padding"), so rows of different
    lengths, and rows that joined at different times, share one cache of the widest row's width; each row's real
    tokens are its mask's 1s, in order, and its positions continue its own count. Padding columns no row needs are
    dropped when rows leave. Rows never interact (attention is masked per row), which is why a row's tokens do not
    depend on its neighbours (tested: batched == one at a time, and joining a running batch == generating alone).
    """

    def __init__(self, generator: "GreedyGenerator"):
        self.gen = generator
        self.keys: list[Any] = []
        self.outputs: list[list[int]] = []
        self.limits: list[int] = []
        self.mask = np.zeros((0, 0), dtype=np.int64)
        self.last_pos = np.zeros((0,), dtype=np.int64)
        self.next_ids = np.zeros((0,), dtype=np.int64)
        self.past: dict[str, np.ndarray] = {}
        self.cached_tokens = 0
        self._stop = np.asarray(generator.settings.eos_token_ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, prompts: Sequence[Sequence[int]], keys: Sequence[Any], limits: Sequence[int]
            ) -> list[tuple[Any, list[int]]]:
        """Prefill `prompts` (one batch, prefix cache used) and merge the rows that go on into the running rows."""
        logits, mask, positions, present = self.gen.prefill(prompts)
        next_ids = logits[:, -1, :].argmax(axis=-1)
        self.cached_tokens += self.gen.stats_cached
        outputs = [[int(t)] for t in next_ids]
        alive = np.asarray([o[0] not in self._stop.tolist() and lim > 1 for o, lim in zip(outputs, limits)])
        finished = [(k, o) for k, o, a in zip(keys, outputs, alive) if not a]
        keep = np.flatnonzero(alive)
        if keep.size:
            self._merge([keys[i] for i in keep], [outputs[i] for i in keep], [limits[i] for i in keep],
                        mask[keep], positions[keep, -1] + 1, next_ids[keep], {k: v[keep] for k, v in present.items()})
        return finished

    def _merge(self, keys, outputs, limits, mask, last_pos, next_ids, past) -> None:
        if not self.keys:
            self.mask, self.past = mask, past
        else:
            width = max(self.mask.shape[1], mask.shape[1])

            def left_pad(a, axis):
                pad = [(0, 0)] * a.ndim
                pad[axis] = (width - a.shape[axis], 0)
                return np.pad(a, pad) if pad[axis][0] else a

            self.mask = np.concatenate([left_pad(self.mask, 1), left_pad(mask, 1)])
            self.past = {k: np.concatenate([left_pad(self.past[k], 2), left_pad(past[k], 2)]) for k in self.past}
        self.keys += list(keys)
        self.outputs += list(outputs)
        self.limits += list(limits)
        self.last_pos = np.concatenate([self.last_pos, last_pos])
        self.next_ids = np.concatenate([self.next_ids, next_ids])

    def step(self) -> list[tuple[Any, list[int]]]:
        """Decode one token for every row; returns the rows that finished."""
        if not self.keys:
            return []
        self.mask = np.concatenate([self.mask, np.ones((len(self.keys), 1), dtype=np.int64)], axis=1)
        logits, self.past = self.gen._run(self.next_ids[:, None].astype(np.int64), self.mask,
                                          self.last_pos[:, None].astype(np.int64), self.past)
        next_ids = logits[:, -1, :].argmax(axis=-1)
        self.last_pos = self.last_pos + 1
        self.next_ids = next_ids
        finished, keep = [], []
        for r, tok in enumerate(next_ids.tolist()):
            self.outputs[r].append(tok)
            if tok in self._stop.tolist() or len(self.outputs[r]) >= self.limits[r]:
                finished.append((self.keys[r], self.outputs[r]))
            else:
                keep.append(r)
        if finished:
            self._keep(np.asarray(keep, dtype=np.int64))
        return finished

    def _keep(self, keep: np.ndarray) -> None:
        """Keep only rows `keep`; drop padding columns no remaining row needs."""
        self.keys = [self.keys[i] for i in keep]
        self.outputs = [self.outputs[i] for i in keep]
        self.limits = [self.limits[i] for i in keep]
        self.mask, self.last_pos, self.next_ids = self.mask[keep], self.last_pos[keep], self.next_ids[keep]
        first = int(np.argmax(self.mask.any(axis=0))) if keep.size else 0
        self.mask = self.mask[:, first:]
        self.past = {k: v[keep, :, first:] for k, v in self.past.items()}


class PrefixCache:
    """Keys/values of recent prompts, reused for the longest common token prefix of a new prompt (automatic prefix
    caching). Qwen3Guard-Gen prompts share their long template head (~250 tokens of policy text before the
    conversation), so a warm cache prefills only the conversation and the template tail.

    Exact by construction: in a causal model the keys/values of a prefix do not depend on what follows it, so
    reusing them computes the same function; what can differ is float rounding (a GEMM over other shapes), which is
    why the generation tests and the exporter's validation run with the cache on and compare tokens with HF.
    Bounded: `max_entries` prompts (least recently used dropped), prefixes shorter than `min_tokens` ignored.
    """

    def __init__(self, max_entries: int = 8, min_tokens: int = 32):
        self.max_entries, self.min_tokens = int(max_entries), int(min_tokens)
        self._entries: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []  # most recent last

    def lookup(self, prompt: Sequence[int], compute_last: int = 1) -> tuple[int, dict[str, np.ndarray] | None]:
        """(reusable length, keys/values [kv_heads, >= length, head_dim] per past name) for `prompt`; the last
        `compute_last` (>= 1) prompt tokens are always left to compute (their logits are needed)."""
        p = np.asarray(prompt, dtype=np.int64)
        best, best_kv, best_i = 0, None, -1
        for i, (ids, kv) in enumerate(self._entries):
            m = min(len(ids), len(p) - max(1, int(compute_last)))
            diff = np.flatnonzero(ids[:m] != p[:m])
            common = int(diff[0]) if diff.size else m
            if common > best:
                best, best_kv, best_i = common, kv, i
        if best < self.min_tokens:
            return 0, None
        self._entries.append(self._entries.pop(best_i))
        return best, best_kv

    def store(self, prompts: Sequence[Sequence[int]], mask: np.ndarray, present: dict[str, np.ndarray]) -> None:
        """Remember each prompt's keys/values from a prefill: its real columns are where `mask` is 1."""
        for r, prompt in enumerate(prompts):
            if len(prompt) < self.min_tokens:
                continue
            cols = np.flatnonzero(mask[r])[:len(prompt)]
            p = np.asarray(prompt, dtype=np.int64)
            self._entries = [e for e in self._entries if not np.array_equal(e[0], p)]
            self._entries.append((p, {k: np.ascontiguousarray(v[r][:, cols]) for k, v in present.items()}))
            if len(self._entries) > self.max_entries:
                self._entries.pop(0)

    def clear(self) -> None:
        self._entries.clear()


def _layer_order(name: str) -> tuple[int, str]:
    parts = name.split(".")
    return int(parts[1]), parts[2]


def moderation_kind_of_ids(tokenizer, prompt_ids: Sequence[int]) -> str:
    """"response" when the template part of the prompt (before the first "<BEGIN CONVERSATION>", so never user
    content) has the response-moderation REFUSAL POLICY, else "prompt"."""
    head = tokenizer.decode(list(prompt_ids), skip_special_tokens=False).split("<BEGIN CONVERSATION>", 1)[0]
    return "response" if "<BEGIN REFUSAL POLICY>" in head else "prompt"


class GuardGenerator:
    """Qwen3Guard-Gen generate mode: prompt ids -> {"safety", "categories", "refusal", "text", "token_ids"}."""

    def __init__(self, export_dir: str | Path, precision: str = "fp32", providers: Sequence[Any] | str | None = None,
                 intra_op_threads: int | None = None, max_new_tokens: int | None = None):
        from tokenizers import Tokenizer

        from guardrt.runtime.export_dir import load_export_dir

        manifest = load_export_dir(export_dir)
        model_path = manifest.graph_path("causal-lm-with-past", precision)
        self.export_dir = manifest.path
        self.precision = precision
        self.tokenizer = Tokenizer.from_file(str(manifest.path / "tokenizer.json"))
        try:  # the verdict and the parser rely on the spec's token ids: refuse a tokenizer that disagrees
            check_guard_tokens(self.tokenizer)
        except ValueError as exc:
            raise ModelFilesError(f"{manifest.path}: {exc}") from None
        self.generator = GreedyGenerator(model_path,
                                         generation_settings(manifest.path, max_new_tokens), providers,
                                         intra_op_threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate_ids(self, prompts: Sequence[Sequence[int]], kinds: Sequence[str] | None = None
                     ) -> list[dict[str, Any]]:
        """One result per prompt; `kinds` ("prompt"/"response") chooses the category pattern (default: read from
        each prompt's template)."""
        new = self.generator.generate(prompts)
        kinds = kinds or [moderation_kind_of_ids(self.tokenizer, p) for p in prompts]
        return [{**parse_guard_output(self.decode(ids), kind), "token_ids": ids} for ids, kind in zip(new, kinds)]

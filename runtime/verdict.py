"""Qwen3Guard-Gen verdict mode: the safety label's probabilities from one prefill, no generation loop.

Greedy generation writes `Safety: <label>` first; with the Qwen3 tokenizer that is `Safety` `:` then one token
that decides the label (`ĠSafe` 22291, `ĠUnsafe` 73067, `ĠCont` 2093 which greedy continues as `rovers` `ial`).
So the verdict runs the verdict graph (`guardrt.export.causal_lm_export`) once over `prompt + [Safety, :]`. The graph
applies the LM head at the last three positions only and returns, per row, `VERDICT_COLUMNS`: the probabilities of
the three label tokens at the last position (softmax over the whole vocabulary), the mass outside them, and the
greedy token at each of the last three positions.

Result per row: `safety` (argmax of the three), `probs` {Safe, Unsafe, Controversial}, `other_mass`, `risk`
(strict: Unsafe + Controversial, the card's eval counting Controversial as unsafe; loose: Unsafe).

When is this the generation's answer? Exactly when greedy generation would write `Safety:` and then the chosen label
token: the graph's greedy ids say so (`consistent`). A row where the model would write something else (a different
first token, or a non-label token after `Safety:`) is not given an invented verdict: with a generator at hand the row
falls back to greedy generation (`fallback: true`, fields from the parsed text, probs still reported); without one,
`safety` is None and `consistent` false. Controversial is decided by its first token `ĠCont`; whether greedy
continues it as `rovers` `ial` is checked only when a continuation is asked for.

`with_details=True` (categories and refusal) continues greedily from `prompt + Safety: <label>` with the KV-cache
generator: a short generation instead of a full one, whose text is exactly the full greedy generation's text when
the verdict is consistent (tested).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from guardrt.runtime.errors import InputError, ModelFilesError
from guardrt.runtime.guard_output import (VERDICT_COLUMNS, guard_spec, label_token_ids, parse_guard_output,
                                          verdict_from_row, verdict_prefix_ids)
from guardrt.runtime.onnxrt import OnnxRunner

__all__ = ["VERDICT_COLUMNS", "VerdictRunner", "kv_verdict_rows", "verdict_from_row"]

_SPEC = guard_spec()  # the registered qwen3guard-gen: its verdict prefix, label tokens and pad id
_PREFIX = verdict_prefix_ids(_SPEC)
_LABEL_IDS = label_token_ids(_SPEC)
_LABEL_ID = dict(zip(_SPEC.output.labels, _LABEL_IDS))


def _rows_from_logits(logits: np.ndarray) -> np.ndarray:
    """Verdict rows from the logits of the last three positions [n, 3, vocab] (what the verdict graph computes)."""
    if logits.shape[1] != 3:
        raise ModelFilesError(f"the generation graph returns logits for {logits.shape[1]} position(s); a verdict "
                              "needs the last 3 (re-export with this guardrt)")
    last = logits[:, -1, :].astype(np.float32)
    z = np.exp(last - last.max(axis=-1, keepdims=True))
    probs = z / z.sum(axis=-1, keepdims=True)
    label = probs[:, _LABEL_IDS]
    return np.concatenate([label, 1.0 - label.sum(axis=1, keepdims=True),
                           logits.argmax(axis=-1).astype(np.float32)], axis=1).astype(np.float32)


def kv_verdict_rows(generator, prompts: Sequence[Sequence[int]]) -> np.ndarray:
    """Verdict rows [n, 7] of `prompts` (chat-template ids, without the verdict prefix) from one prefill of the
    KV-cache graph of `generator` (a `GreedyGenerator`; its prefix cache is used), as one left-padded batch. What the
    "kv" engine runs in process and the generate model runs for verdict requests on Triton."""
    return _rows_from_logits(generator.prefill([list(p) + _PREFIX for p in prompts], compute_last=3)[0])


class VerdictRunner:
    """Verdicts for prompt ids, from one of two engines computing the same thing:

    * "graph": the classifier-shaped verdict graph (what Triton's ragged batching and TensorRT serve);
    * "kv": a prefill of the KV-cache generation graph, whose LM head covers the last three positions; in process
      it reuses the prefix cache (the template's shared head is not recomputed), so it is the faster one here.

    `generator` (a `GuardGenerator`) enables the fallback and `with_details`; the "kv" engine runs on it."""

    def __init__(self, model_path: str | Path | None = None, generator=None,
                 providers: Sequence[Any] | str | None = None, intra_op_threads: int | None = None,
                 max_batch_size: int = 16):
        if model_path is None and generator is None:
            raise InputError("a verdict needs the verdict graph or a generator")
        self.runner = None
        if model_path is not None:
            self.runner = OnnxRunner(model_path, providers=providers, intra_op_threads=intra_op_threads)
            if self.runner.output_names != ["verdict"]:
                raise ModelFilesError(f"{model_path} is not a verdict graph (outputs: "
                                      f"{', '.join(self.runner.output_names)})")
        self.engine = "graph" if self.runner is not None else "kv"
        self.generator = generator
        self.max_batch_size = int(max_batch_size)

    @classmethod
    def from_export_dir(cls, export_dir: str | Path, precision: str = "fp32", engine: str = "auto",
                        with_generator: bool = True, **kwargs) -> "VerdictRunner":
        """engine "auto": "kv" when the export has a generation graph at `precision`, else "graph"."""
        from guardrt.runtime.export_dir import load_export_dir
        from guardrt.runtime.generate import GuardGenerator

        if engine not in ("auto", "kv", "graph"):
            raise InputError(f"verdict engine must be auto, kv or graph, got {engine!r}")
        manifest = load_export_dir(export_dir)
        gen_graphs = manifest.graphs.get("causal-lm-with-past", {})
        if engine == "auto":
            engine = "kv" if precision in gen_graphs else "graph"
        model_path = manifest.graph_path("verdict", precision) if engine == "graph" else None
        gen = None
        if engine == "kv" or with_generator:  # the same precision's generator when there is one, else the first
            gen_precision = precision if precision in gen_graphs else next(iter(gen_graphs), None)
            if gen_precision is None:
                if engine == "kv":
                    raise ModelFilesError(f"export {manifest.path} has no generation graph")
            else:
                gen = GuardGenerator(manifest.path, gen_precision, **kwargs)
        return cls(model_path, generator=gen, **kwargs)

    def rows(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """The raw verdict rows [n, 7] for `prompts` (left-padded batches, longest first to limit padding)."""
        from guardrt.runtime.preprocess import pad_batch

        if not prompts:
            raise InputError("empty batch: at least one prompt is needed")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise InputError(f"item {i}: empty prompt (no token ids)")
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out = np.zeros((len(prompts), len(VERDICT_COLUMNS)), dtype=np.float32)
        for start in range(0, len(order), self.max_batch_size):
            idx = order[start:start + self.max_batch_size]
            if self.runner is not None:
                ids, mask = pad_batch([list(prompts[i]) + _PREFIX for i in idx], _SPEC.input.pad_token_id, "left")
                out[idx] = self.runner.infer({"input_ids": ids, "attention_mask": mask})["verdict"]
            else:
                out[idx] = kv_verdict_rows(self.generator.generator, [prompts[i] for i in idx])
        return out

    def verdict(self, prompts: Sequence[Sequence[int]], kinds: Sequence[str] | None = None,
                with_details: bool = False) -> list[dict[str, Any]]:
        results = [verdict_from_row(r) for r in self.rows(prompts)]
        need_gen = [i for i, r in enumerate(results) if not r["consistent"]]
        if (need_gen or with_details) and self.generator is None:
            if with_details:
                raise InputError("categories/refusal need the generation graph (export it, or pass a generator)")
            return results
        if self.generator is None:
            return results
        kinds = list(kinds) if kinds else [None] * len(prompts)
        # Rows whose greedy output is not `Safety: <label>`: the full greedy generation decides (rows too long to
        # generate 128 tokens after keep safety None: a verdict is never invented).
        settings = self.generator.generator.settings
        need_gen = [i for i in need_gen if len(prompts[i]) + settings.max_new_tokens <= settings.max_length]
        if need_gen:
            full = self.generator.generate_ids([prompts[i] for i in need_gen],
                                               [kinds[i] for i in need_gen] if kinds[0] else None)
            for i, g in zip(need_gen, full):
                results[i].update(safety=g["safety"], fallback=True,
                                  details={k: g[k] for k in ("categories", "refusal", "text")})
        if with_details:
            rest = [i for i in range(len(prompts)) if results[i]["consistent"]]
            if rest:
                label_ids = [_LABEL_ID[results[i]["safety"]] for i in rest]
                cont = self.generator.generator.generate(
                    [list(prompts[i]) + _PREFIX + [lid] for i, lid in zip(rest, label_ids)],
                    max_new_tokens=self.generator.generator.settings.max_new_tokens - len(_PREFIX) - 1)
                for i, lid, ids in zip(rest, label_ids, cont):
                    from guardrt.runtime.generate import moderation_kind_of_ids

                    kind = kinds[i] or moderation_kind_of_ids(self.generator.tokenizer, prompts[i])
                    parsed = parse_guard_output(self.generator.decode(_PREFIX + [lid] + ids), kind)
                    results[i]["details"] = {k: parsed[k] for k in ("categories", "refusal", "text")}
                    # The regex decides Controversial on the whole word; a continuation that is not 'rovers' 'ial'
                    # makes generation's answer differ: report generation's.
                    if parsed["safety"] != results[i]["safety"]:
                        results[i].update(safety=parsed["safety"], consistent=False, fallback=True)
        return results

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
        if self.generator is not None:
            self.generator.generator.close()

"""FlexGuard in process: `{"user": ...[, "assistant": ...]}` -> the card's category and risk score, a decision at the
request's threshold, and the expected score.

`FlexGuardClassifier(export_dir, precision, strictness=..., threshold=...)`:

* `classify(payload)` -> one result (InputError for a request the card cannot build); `classify_batch(payloads)`
  -> one result per request, `{"error": "item i: ..."}` for a bad one while the others are answered;
  `classify_ids(prompts)` for prompts already encoded (`input.encode`).
* Generation as the card runs it (vLLM `temperature=0, max_tokens=2048, skip_special_tokens=False`): greedy
  (`runtime/generate.py`, token-identical to HF `generate`), up to 2,048 new tokens, stop tokens from the
  checkpoint's generation config. `text` is decoded with special tokens kept (`<think>` / `</think>` stay); the stop
  token that ended generation is not part of it (vLLM does not detokenize the stop token that finished a sequence).
* Result (`result_from_tokens`): `flexguard_output.flexguard_result` (category, risk_score, threshold, decision,
  score_parsed, well_formed, text) plus the expected score (`runtime/flexguard_score.py`): `expected_risk`,
  `p_unsafe` (P(score >= threshold)), `expected_decision` (expected_risk >= threshold), `score_mass`,
  `score_consistent` (greedy's first digit is the first step's argmax); null for an output that is not well formed.
* Threshold: `calibration.resolve_threshold`: explicit `threshold` > `strictness` (strict 20 / moderate 40 / loose
  60) > the export directory's calibration.json > 40. No score -> `decision: "unsafe"` (fail closed,
  `score_parsed: false`).

The Triton client (`guard_client.TritonFlexGuardClient`) uses the same input side and `result_from_tokens`, so both
give the same answer for the same request.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardrt.runtime.errors import ModelFilesError

__all__ = ["FLEXGUARD_SPEC", "FlexGuardClassifier", "flexguard_input", "result_from_tokens", "score_prefix",
           "resolve_flexguard_threshold"]

FLEXGUARD_SPEC = "flexguard"


def flexguard_input(tokenizer_dir: str | Path, max_new_tokens: int | None = None):
    """The request -> prompt ids side (`guard_engine.GuardInput` in generate mode over the flexguard preprocessor)."""
    from guardrt.runtime.guard_engine import GuardInput
    from guardrt.runtime.preprocess import build_preprocessor
    from guardrt.runtime.specs import get_spec

    spec = get_spec(FLEXGUARD_SPEC)
    return GuardInput(build_preprocessor(spec, tokenizer_dir), "generate", max_new_tokens, spec=spec)


def resolve_flexguard_threshold(threshold: float | None, strictness: str | None, model_dir: str | Path | None
                                ) -> tuple[float, str]:
    from guardrt.runtime.calibration import resolve_threshold
    from guardrt.runtime.specs import get_spec

    return resolve_threshold(threshold, strictness, model_dir, default=get_spec(FLEXGUARD_SPEC).output.threshold)


def _split_stop(tokens: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    return list(tokens[:-1]) if tokens and tokens[-1] in stop_ids else list(tokens)


def score_prefix(tokenizer, prompt: Sequence[int], tokens: Sequence[int], stop_ids: Sequence[int]
                 ) -> list[int] | None:
    """prompt + the generated tokens before the score's first digit, for a well-formed output; else None."""
    from guardrt.runtime.flexguard_output import is_well_formed
    from guardrt.runtime.flexguard_score import score_start

    if not is_well_formed(tokenizer.decode(_split_stop(tokens, stop_ids), skip_special_tokens=False)):
        return None
    start = score_start(list(tokens), stop_ids)
    return None if start is None else list(prompt) + list(tokens[:start])


def result_from_tokens(tokenizer, tokens: Sequence[int], stop_ids: Sequence[int], threshold: float,
                       distribution=None) -> dict[str, Any]:
    """The output fields of one generation (new token ids, stop token included when one ended it) and its score
    distribution (`flexguard_score.ScoreDistribution`, or None when not computed)."""
    from guardrt.runtime.flexguard_output import decide, flexguard_result
    from guardrt.runtime.flexguard_score import score_start

    text = tokenizer.decode(_split_stop(tokens, stop_ids), skip_special_tokens=False)
    extra: dict[str, Any] = {"expected_risk": None, "p_unsafe": None, "expected_decision": None,
                             "score_mass": None, "score_consistent": None}
    if distribution is not None:
        expected = distribution.expected_risk
        start = score_start(list(tokens), stop_ids)
        extra = {"expected_risk": expected, "p_unsafe": distribution.p_unsafe(threshold),
                 "expected_decision": None if expected is None else decide(expected, threshold),
                 "score_mass": distribution.mass,
                 "score_consistent": start is not None and distribution.argmax_token == tokens[start]}
    return flexguard_result(text, threshold, **extra)


class FlexGuardClassifier:
    """In-process FlexGuard (see the module docstring); a context manager."""

    def __init__(self, export_dir: str | Path, precision: str = "fp32", *, strictness: str | None = None,
                 threshold: float | None = None, tokenizer_dir: str | Path | None = None,
                 intra_op_threads: int | None = None, max_batch_size: int | None = None,
                 max_new_tokens: int | None = None, expected_score: bool = True):
        from tokenizers import Tokenizer

        from guardrt.runtime.export_dir import load_export_dir
        from guardrt.runtime.flexguard_score import check_digit_tokens
        from guardrt.runtime.generate import GreedyGenerator, generation_settings

        self.manifest = load_export_dir(export_dir, spec=FLEXGUARD_SPEC)
        self.threshold, self.threshold_source = resolve_flexguard_threshold(threshold, strictness, self.manifest.path)
        self.input = self.preprocessor = flexguard_input(tokenizer_dir or self.manifest.tokenizer_dir,
                                                          max_new_tokens)
        self.tokenizer = Tokenizer.from_file(str(self.manifest.path / "tokenizer.json"))
        self.expected_score = bool(expected_score)
        if self.expected_score:
            try:
                check_digit_tokens(self.tokenizer)
            except ModelFilesError as exc:
                raise ModelFilesError(f"{self.manifest.path}: {exc}") from None
        graphs = self.manifest.graphs.get("causal-lm-with-past", {})
        if not graphs:
            raise ModelFilesError(f"export {self.manifest.path} has no generation graph (causal-lm-with-past)")
        self.precision = precision if precision in graphs else next(iter(graphs))
        self.settings = generation_settings(self.manifest.path, max_new_tokens, spec=FLEXGUARD_SPEC)
        self.generator = GreedyGenerator(self.manifest.graph_path("causal-lm-with-past", self.precision),
                                         self.settings, intra_op_threads=intra_op_threads)
        self.max_batch_size = int(max_batch_size or 16)

    def generate_ids(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """New token ids per prompt (greedy, batches of max_batch_size)."""
        out: list[list[int]] = []
        for start in range(0, len(prompts), self.max_batch_size):
            out += self.generator.generate(prompts[start:start + self.max_batch_size])
        return out

    def distributions(self, prompts: Sequence[Sequence[int]], generated: Sequence[Sequence[int]]) -> list:
        """The score distribution of each generation (None where the output is not well formed)."""
        from guardrt.runtime.flexguard_score import score_distributions

        stop = self.settings.eos_token_ids
        prefixes = [score_prefix(self.tokenizer, p, g, stop) for p, g in zip(prompts, generated)]
        todo = [i for i, pre in enumerate(prefixes) if pre is not None]
        out: list = [None] * len(prompts)
        for i, dist in zip(todo, score_distributions(self.generator, [prefixes[i] for i in todo])):
            out[i] = dist
        return out

    def classify_ids(self, prompts: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
        """One result per prompt (flexguard prompt ids within the length limit: `input.encode`)."""
        prompts = self.input.check_prompts(prompts)
        generated = self.generate_ids(prompts)
        dists = self.distributions(prompts, generated) if self.expected_score else [None] * len(prompts)
        return [result_from_tokens(self.tokenizer, g, self.settings.eos_token_ids, self.threshold, d)
                for g, d in zip(generated, dists)]

    def classify(self, payload: Any) -> dict[str, Any]:
        """One request object -> its result; InputError (one line) when the card cannot build it."""
        return self.classify_ids([self.input.encode(payload)])[0]

    def classify_batch(self, payloads: Sequence[Any]) -> list[dict[str, Any]]:
        """One result per request, in order; a bad one gets {"error": "item i: ..."} and the rest are answered."""
        from guardrt.runtime.guard_engine import encode_items

        ids, errors = encode_items(self.input, payloads, "generate")
        good = [i for i, e in enumerate(errors) if e is None]
        results: list[dict[str, Any]] = [{"error": e} for e in errors]
        if good:
            for i, r in zip(good, self.classify_ids([ids[i] for i in good])):
                results[i] = r
        return results

    def close(self) -> None:
        self.generator.close()

    def __enter__(self) -> "FlexGuardClassifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

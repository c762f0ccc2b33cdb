"""FlexGuard's expected risk score: the model's distribution over the numbers 0-100 where greedy writes its score.

Beyond the card. The Qwen3 tokenizer writes numbers digit by digit (`85` = `8` `5`, `100` = `1` `0` `0`; ids 15-24
are `0`-`9`), so the distribution over the score is a small tree over the KV cache at the point where greedy
generation starts writing the score (the first digit of the RISK_SCORE line):

1. the first-digit distribution `P(d)`: the last position of one prefill of `prompt + generated tokens before the
   score` (the prompt's keys/values come from the prefix cache, so only the generated tokens are computed);
2. one batched decode step over the ten first digits: `P(e | d)` for a second digit, and the end of the number
   `1 - sum_e P(e | d)`;
3. one decode step on the `1 0` branch: `P(f | 10)`, for `100` (and the other 3-digit numbers 10f, which the card's
   parser clamps to 100).

The number strings and their probabilities (what `score_probabilities` returns, and the brute-force reference in
the tests recomputes with full PyTorch forward passes):

* `d` (one digit): `P(d) (1 - sum_e P(e|d))` -> value d;
* `de` for every second digit, `de` != `10`: `P(d) P(e|d)` -> value int("de") (a leading zero is read as the
  parser reads it: `05` -> 5). **Assumption**: the number ends after two digits; a third digit after `de` (>= 110,
  which the parser would clamp to 100) is not expanded;
* `10`: `P(1) P(0|1) (1 - sum_f P(f|10))` -> 10; `10f`: `P(1) P(0|1) P(f|10)` -> min(100, 10f).

`mass` is the total over these strings (about `sum_d P(d)`: 1 minus the probability that greedy's score position
holds something other than a digit); `expected_risk` = sum value * p / mass (normalised over numbers), and
`p_unsafe(t)` = sum over values >= t of p / mass. Computed only for well-formed outputs (a closed think block, a
category line, a 1-3 digit score: `flexguard_output.is_well_formed`); otherwise null.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from guardrt.runtime.errors import ModelFilesError

__all__ = ["DIGIT_TOKEN_IDS", "ScoreDistribution", "check_digit_tokens", "score_distributions", "score_start",
           "number_strings", "score_row", "distribution_from_row", "tree_probabilities"]

DIGIT_TOKEN_IDS = tuple(range(15, 25))  # '0'..'9' in the Qwen3 tokenizer (checked at load: check_digit_tokens)


def check_digit_tokens(tokenizer) -> None:
    """ModelFilesError unless the tokenizer (a `tokenizers.Tokenizer`) writes '0'-'9' as DIGIT_TOKEN_IDS and a
    number digit by digit."""
    for d, tid in enumerate(DIGIT_TOKEN_IDS):
        if tokenizer.encode(str(d), add_special_tokens=False).ids != [tid]:
            raise ModelFilesError(f"tokenizer does not encode '{d}' as token {tid}: expected score needs Qwen3's")
    if tokenizer.encode("100", add_special_tokens=False).ids != [16, 15, 15]:
        raise ModelFilesError("tokenizer does not write numbers digit by digit (100 != 1 0 0)")


def score_start(tokens: Sequence[int], stop_ids: Sequence[int]) -> int | None:
    """Index in the generated `tokens` of the first digit of the trailing score (1-3 digit tokens at the end, before
    an optional stop token, preceded by a non-digit), or None."""
    end = len(tokens) - (1 if tokens and tokens[-1] in stop_ids else 0)
    start = end
    while start > 0 and tokens[start - 1] in DIGIT_TOKEN_IDS:
        start -= 1
    if start == end or end - start > 3 or start == 0:
        return None
    return start


def number_strings() -> list[tuple[str, int]]:
    """Every number string of the tree and its value (after the parser's clamp to 100)."""
    out = [(str(d), d) for d in range(10)]
    out += [(f"{d}{e}", int(f"{d}{e}")) for d in range(10) for e in range(10)]
    out += [(f"10{f}", min(100, int(f"10{f}"))) for f in range(10)]
    return out


@dataclass
class ScoreDistribution:
    """probs[v] for v in 0..100 (not normalised: they sum to `mass`), and the argmax token of the first step (the
    token greedy generation writes there: its first digit, when the two computations agree)."""

    probs: np.ndarray
    mass: float
    argmax_token: int

    @property
    def expected_risk(self) -> float | None:
        if self.mass <= 0:
            return None
        return float(np.dot(np.arange(101), self.probs) / self.mass)

    def p_unsafe(self, threshold: float) -> float | None:
        """P(score >= threshold), normalised over the numbers."""
        if self.mass <= 0:
            return None
        return float(self.probs[int(np.ceil(threshold)):].sum() / self.mass)


def _softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return x / x.sum(axis=-1, keepdims=True)


def tree_probabilities(p1: np.ndarray, p2: np.ndarray, p3: np.ndarray) -> np.ndarray:
    """Probabilities over 0..100 from the digit distributions: p1 [10] = P(d), p2 [10, 10] = P(e|d),
    p3 [10] = P(f|10) (see the module docstring)."""
    probs = np.zeros(101)
    end = 1.0 - p2.sum(axis=1)
    for d in range(10):
        probs[d] += p1[d] * end[d]
        for e in range(10):
            if (d, e) != (1, 0):
                probs[10 * d + e] += p1[d] * p2[d, e]
    ten = p1[1] * p2[1, 0]
    probs[10] += ten * (1.0 - p3.sum())
    probs[100] += ten * p3.sum()  # 100..109, clamped to 100 by the parser
    return probs


def score_distributions(generator, prefixes: Sequence[Sequence[int]]) -> list[ScoreDistribution]:
    """The score distribution after each prefix (prompt + generated tokens before the score's first digit), on a
    `generate.GreedyGenerator`: one prefill (prefix cache used) and two batched decode steps per prefix."""
    digits = np.asarray(DIGIT_TOKEN_IDS, dtype=np.int64)
    out = []
    for prefix in prefixes:  # one at a time: the branch steps copy the row's cache ten times
        logits, mask, positions, present = generator.prefill([prefix])
        full1 = _softmax(logits[0, -1])
        p1 = full1[digits]
        # Step 2: the ten first digits, each on a copy of the row's cache.
        rows = np.zeros(10, dtype=np.int64)
        mask2 = np.concatenate([mask[rows], np.ones((10, 1), dtype=np.int64)], axis=1)
        pos2 = positions[rows, -1:] + 1
        logits2, present2 = generator._run(digits[:, None], mask2, pos2, {k: v[rows] for k, v in present.items()})
        p2 = _softmax(logits2[:, -1])[:, digits]
        # Step 3: the `1 0` branch.
        one = [1]
        mask3 = np.concatenate([mask2[one], np.ones((1, 1), dtype=np.int64)], axis=1)
        logits3, _ = generator._run(np.asarray([[DIGIT_TOKEN_IDS[0]]], dtype=np.int64), mask3, pos2[one] + 1,
                                    {k: v[one] for k, v in present2.items()})
        p3 = _softmax(logits3[0, -1])[digits]
        probs = tree_probabilities(p1, p2, p3)
        out.append(ScoreDistribution(probs, float(probs.sum()), int(full1.argmax())))
    return out


def score_row(dist: ScoreDistribution) -> np.ndarray:
    """The wire form of a distribution (Triton's score requests): float32 [103] = probs[0..100], mass, argmax token."""
    return np.concatenate([dist.probs, [dist.mass, dist.argmax_token]]).astype(np.float32)


def distribution_from_row(row: Sequence[float]) -> ScoreDistribution:
    """The inverse of `score_row`."""
    a = np.asarray(row, dtype=np.float64)
    if a.shape != (103,):
        raise ValueError(f"a score row has 103 values, got {a.shape}")
    return ScoreDistribution(a[:101], float(a[101]), int(round(a[102])))

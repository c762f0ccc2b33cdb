"""Padding-aware batch planning for guardrt's Triton python backend.

A dynamic batch holds rows of many lengths. Running them as one padded tensor wastes the padding; running every row
alone pays the per-call cost once per row. Which is cheaper depends on the hardware, so the backend measures it:

* `profile_shapes(run, ...)` times ONNX Runtime on a few (rows x padded length) shapes at model load (the same calls
  prime ONNX Runtime's kernels and arenas, so the first request is not the slow one);
* `fit_cost_model(samples)` fits predicted seconds for one call on `n` rows padded to `L` tokens:

      t(n, L) = per_call + per_position * L + per_token * n*L + per_token_pair * n*L^2

  (fixed cost of a call; cost that grows with the padded length but not with the rows - weights streamed once per
  position, launch-bound kernels on a GPU; linear work per token - the GEMMs; attention's quadratic term). All four
  coefficients are kept >= 0 (non-negative least squares on relative error, so short and long shapes count alike);
* `plan_groups(lengths, cost, ...)` splits the batch into the groups of rows that minimise the predicted total: the
  rows sorted by length, equal lengths always in one group (up to the caps), a dynamic programme over the cut points
  between lengths. A group pads its rows to its longest; padding appears only where the model predicts it pays.

A group that pads (rows of different lengths) must win by more than the model's own error: its predicted time is
charged `1 + padding_margin` (the fit's largest relative error on the timed shapes, at least 10%), so a model that
fits the timings loosely pads only where it predicts a large saving. On a 2-core CPU whose GEMMs are already
efficient at one short row, `per_call` is small and padding does not pay, so the plan degenerates to "equal lengths
together" (the same ONNX Runtime work as one call per request, minus the calls); where calls are expensive relative
to tokens (GPUs, wide GEMMs) the same code pads more. `EXACT_LENGTHS` (no profile) never pads at all.

Self-contained (numpy + the standard library): it is copied next to model.py into every model version directory.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

FEATURES = ("per_call", "per_position", "per_token", "per_token_pair")


def _features(rows, length):
    rows, length = float(rows), float(length)
    return np.array([1.0, length, rows * length, rows * length * length])


@dataclass(frozen=True)
class CostModel:
    """Predicted seconds of one ONNX Runtime call on `rows` rows padded to `length` tokens (see module docstring)."""

    per_call: float = 0.0
    per_position: float = 0.0
    per_token: float = 1.0
    per_token_pair: float = 0.0
    samples: int = 0
    max_relative_error: float | None = None
    padding_margin: float | None = None  # None: the fit's max_relative_error, clamped to [MIN_MARGIN, MAX_MARGIN]

    def predict(self, rows, length) -> float:
        return float(_features(rows, length) @ np.array(self.coefficients))

    @property
    def margin(self) -> float:
        """The fraction a padded group's prediction is inflated by before it may beat its parts."""
        if self.padding_margin is not None:
            return max(0.0, float(self.padding_margin))
        err = MIN_MARGIN if self.max_relative_error is None else self.max_relative_error
        return min(MAX_MARGIN, max(MIN_MARGIN, float(err)))

    def group_cost(self, rows, longest, padded) -> float:
        """What the planner charges a group: the prediction, inflated by `margin` when the group pads."""
        t = self.predict(rows, longest)
        return t * (1.0 + self.margin) if padded else t

    @property
    def coefficients(self) -> tuple:
        return (self.per_call, self.per_position, self.per_token, self.per_token_pair)

    def describe(self) -> str:
        err = "" if self.max_relative_error is None else f", max error {100 * self.max_relative_error:.0f}%"
        return (f"t(n, L) = {1e3 * self.per_call:.3g} ms + {1e6 * self.per_position:.3g} us x L "
                f"+ {1e6 * self.per_token:.3g} us x nL + {1e9 * self.per_token_pair:.3g} ns x nL^2 "
                f"(fit on {self.samples} shapes{err}); padding must beat the parts by {100 * self.margin:.0f}%")


# Bounds of the default padding margin: at least 10% (timings on a shared machine scatter that much even when the
# fit is exact), at most 100% (a fit that bad still lets a GPU, where one call on 16 rows costs about one call on
# one, batch).
MIN_MARGIN, MAX_MARGIN = 0.10, 1.0


# Without a profile: a call costs its tokens and nothing else, so padding never pays and equal lengths still run
# together (grouping them costs nothing). The safe default: never slower than one call per length.
EXACT_LENGTHS = CostModel()


def fit_cost_model(samples) -> CostModel:
    """The CostModel with non-negative coefficients that best fits `samples` [(rows, length, seconds)], minimising
    the squared relative error. Exact non-negative least squares by trying every subset of the four features (16
    small least-squares problems) and keeping the best fit whose coefficients are all >= 0."""
    samples = [(int(n), int(L), float(t)) for n, L, t in samples if t > 0]
    if not samples:
        raise ValueError("no timed shapes to fit a cost model to")
    X = np.stack([_features(n, L) for n, L, _ in samples])
    t = np.array([s[2] for s in samples])
    A = X / t[:, None]  # relative error: (X c - t) / t = A c - 1
    ones = np.ones(len(t))
    best, best_err = None, np.inf
    for k in range(1, len(FEATURES) + 1):
        for subset in itertools.combinations(range(len(FEATURES)), k):
            cols = list(subset)
            coef, *_ = np.linalg.lstsq(A[:, cols], ones, rcond=None)
            if (coef < 0).any():
                continue
            full = np.zeros(len(FEATURES))
            full[cols] = coef
            err = float(np.sum((A @ full - 1.0) ** 2))
            if err < best_err - 1e-15:
                best, best_err = full, err
    if best is None:  # cannot happen: a single positive feature always fits with a positive coefficient
        raise ValueError("no non-negative cost model fits the timings")
    rel = np.abs(X @ best - t) / t
    return CostModel(*(float(c) for c in best), samples=len(samples), max_relative_error=float(rel.max()))


# The largest rows x length^2 profiled. A plain-attention graph materialises [rows, heads, L, L] scores: at
# Qwen3Guard-Gen's 32,768 positions that passes 2^31 elements, and ONNX Runtime's CUDA kernels then hit an illegal
# memory access (CUDA error 700, seen on an H200) which poisons the instance's CUDA context for every later call.
# Longer shapes are extrapolated by the fitted cost model instead.
MAX_PROFILED_ROWS_X_LENGTH2 = 1 << 25


def profile_shapes(run, max_rows, max_length, *, max_group_tokens=None, budget_s=5.0, repeats=3,
                   clock=time.perf_counter, failures=None):
    """[(rows, length, seconds)]: `run(rows, length)` timed on a grid of shapes, the minimum of `repeats` calls each
    (the least disturbed by other work on the machine). Lengths 8, 32, 128, ... max_length, rows 1, 4, 16 (within
    max_rows and max_group_tokens, rows x length^2 within MAX_PROFILED_ROWS_X_LENGTH2), cheapest shapes first; a shape whose calls would overrun `budget_s` in total is
    skipped, so a big model profiles fewer, shorter shapes (never fewer than four). A shape whose call raises (out
    of memory, a graph that cannot take that length) is skipped with every shape at least as large, and the
    exception is appended to `failures` when given: profiling never fails a model load."""
    lengths, L = [], 8
    while L < max_length:
        lengths.append(L)
        L *= 4
    lengths.append(int(max_length))
    cap = max_group_tokens or max(1, max_rows) * max_length
    shapes = sorted(((n, L) for L in lengths for n in (1, 4, 16) if n <= max(1, max_rows) and (n == 1 or n * L <= cap)
                     and n * L * L <= MAX_PROFILED_ROWS_X_LENGTH2),
                    key=lambda s: (s[0] * s[1] * s[1], s[0]))
    samples, failed, start = [], [], clock()
    for n, L in shapes:
        if any(n >= fn and L >= fL for fn, fL in failed):
            continue
        if len(samples) >= 4 and clock() - start + (repeats + 1) * _estimate(samples, n, L) > budget_s:
            continue
        try:
            run(n, L)  # warm this shape (ORT's arena grows, kernels pick their paths)
            times = []
            for _ in range(repeats):
                t0 = clock()
                run(n, L)
                times.append(clock() - t0)
        except Exception as exc:  # noqa: BLE001 - recorded; larger shapes are not tried
            failed.append((n, L))
            if failures is not None:
                failures.append((n, L, exc))
            continue
        samples.append((n, L, min(times)))
    return samples


def _estimate(samples, rows, length):
    """Rough time of a shape not timed yet: the most similar timed shape's time scaled by tokens x length."""
    n0, L0, t0 = max(samples, key=lambda s: s[0] * s[1] * s[1])
    return t0 * (rows * length) / (n0 * L0) * max(1.0, length / L0)


def plan_groups(lengths, cost=EXACT_LENGTHS, max_rows=None, max_group_tokens=None):
    """Row indices in groups (each group runs as one call padded to its longest row), minimising the predicted total
    `sum cost.predict(len(group), longest)`; groups come out shortest first.

    Rows are sorted by length; rows of one length are never split between groups unless `max_rows` rows or
    `max_group_tokens` padded tokens force it (then into full chunks). Any set of groups can be rearranged into
    consecutive runs of the sorted rows without raising the predicted cost (the cost grows with rows and length),
    so the dynamic programme over cut points between lengths is optimal: O(blocks x blocks per group)."""
    if not len(lengths):
        return []
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    blocks = []  # (length, [row indices]) of equal length, chunked by the caps
    for length, members in itertools.groupby(order, key=lambda i: lengths[i]):
        members = list(members)
        per = len(members)
        if max_rows:
            per = min(per, int(max_rows))
        if max_group_tokens:
            per = min(per, max(1, int(max_group_tokens) // max(1, int(length))))
        for k in range(0, len(members), per):
            blocks.append((int(length), members[k:k + per]))
    B = len(blocks)
    best = [0.0] + [np.inf] * B
    cut = [0] * (B + 1)
    for j in range(1, B + 1):
        longest = blocks[j - 1][0]
        rows = 0
        for i in range(j - 1, -1, -1):
            rows += len(blocks[i][1])
            if i < j - 1 and ((max_rows and rows > max_rows) or (max_group_tokens and rows * longest > max_group_tokens)):
                break
            total = best[i] + cost.group_cost(rows, longest, padded=blocks[i][0] != longest)
            if total < best[j]:
                best[j], cut[j] = total, i
    groups, j = [], B
    while j > 0:
        i = cut[j]
        groups.append([r for _, members in blocks[i:j] for r in members])
        j = i
    return groups[::-1]


def plan_cost(groups, lengths, cost):
    """What the planner charges `groups` (each padded to its longest row; see CostModel.group_cost)."""
    return sum(cost.group_cost(len(g), max(lengths[i] for i in g), padded=len({lengths[i] for i in g}) > 1)
               for g in groups)


def predicted_seconds(groups, lengths, cost):
    """The cost model's prediction of running `groups` (no margin): what the benchmark compares with the clock."""
    return sum(cost.predict(len(g), max(lengths[i] for i in g)) for g in groups)

"""The python backend's batch planner without a server: the cost-model fit, the profiling grid and budget, and the
dynamic programme's optimality against brute force over every partition of small batches."""
from __future__ import annotations

import importlib.util
import itertools
import random
import sys
from pathlib import Path

import numpy as np
import pytest

PLANNER = Path(__file__).resolve().parents[2] / "runtime" / "triton_backend" / "batch_plan.py"


@pytest.fixture(scope="module")
def bp():
    spec = importlib.util.spec_from_file_location("guardrt_batch_plan_under_test", PLANNER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def _partitions(items):
    """Every set partition of `items` (Bell(n) of them)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[first]] + part
        for k in range(len(part)):
            yield part[:k] + [[first] + part[k]] + part[k + 1:]


def _brute_force(bp, lengths, cost, max_rows=None, max_group_tokens=None):
    best = np.inf
    for part in _partitions(list(range(len(lengths)))):
        if max_rows and any(len(g) > max_rows for g in part):
            continue
        if max_group_tokens and any(len(g) * max(lengths[i] for i in g) > max_group_tokens for g in part):
            continue
        best = min(best, bp.plan_cost(part, lengths, cost))
    return best


COSTS = {
    "cpu-like": dict(per_call=2e-4, per_position=0.0, per_token=2e-5, per_token_pair=1e-8),
    "gpu-like": dict(per_call=3e-3, per_position=2e-5, per_token=1e-7, per_token_pair=1e-10),
    "no-overhead": dict(per_call=0.0, per_position=0.0, per_token=1e-5, per_token_pair=0.0),
    "attention-heavy": dict(per_call=1e-4, per_position=0.0, per_token=1e-6, per_token_pair=1e-6),
}


@pytest.mark.parametrize("cost_name", sorted(COSTS))
def test_plan_is_optimal_against_every_partition(bp, cost_name):
    cost = bp.CostModel(**COSTS[cost_name])
    rng = random.Random(cost_name)
    for trial in range(40):
        n = rng.randint(1, 7)
        lengths = [rng.choice([3, 5, 8, 8, 13, 40, 41, 200, 512]) for _ in range(n)]
        groups = bp.plan_groups(lengths, cost)
        assert sorted(i for g in groups for i in g) == list(range(n))
        got = bp.plan_cost(groups, lengths, cost)
        assert got <= _brute_force(bp, lengths, cost) * (1 + 1e-9), (lengths, groups)
        # equal lengths always run together (no caps here)
        for length in set(lengths):
            assert len({k for k, g in enumerate(groups) for i in g if lengths[i] == length}) == 1


@pytest.mark.parametrize("cost_name", ["cpu-like", "gpu-like"])
def test_plan_with_caps_is_optimal_among_partitions_within_the_caps(bp, cost_name):
    cost = bp.CostModel(**COSTS[cost_name])
    rng = random.Random(7)
    for trial in range(30):
        n = rng.randint(2, 7)
        lengths = rng.sample([2, 4, 7, 9, 16, 30, 31, 64, 100], n)  # distinct: the caps decide every split
        groups = bp.plan_groups(lengths, cost, max_rows=3, max_group_tokens=128)
        assert all(len(g) <= 3 and len(g) * max(lengths[i] for i in g) <= 128 or len(g) == 1 for g in groups)
        assert bp.plan_cost(groups, lengths, cost) <= _brute_force(bp, lengths, cost, 3, 128) * (1 + 1e-9)


def test_cheap_calls_never_pad_and_expensive_calls_batch_everything(bp):
    lengths = [10, 20, 30, 40, 20, 10]
    never = bp.plan_groups(lengths, bp.EXACT_LENGTHS)
    assert sorted(sorted(lengths[i] for i in g) for g in never) == [[10, 10], [20, 20], [30], [40]]
    assert [max(lengths[i] for i in g) for g in never] == [10, 20, 30, 40]  # shortest first
    gpu = bp.CostModel(per_call=1.0, per_token=1e-6)
    assert bp.plan_groups(lengths, gpu) == [[0, 5, 1, 4, 2, 3]]
    # a cap on rows splits equal lengths into full chunks
    same = bp.plan_groups([8] * 10, gpu, max_rows=4)
    assert [len(g) for g in same] == [4, 4, 2]
    assert bp.plan_groups([], gpu) == []


def test_fit_recovers_the_coefficients_and_keeps_them_non_negative(bp):
    truth = bp.CostModel(per_call=3e-4, per_position=0.0, per_token=2e-6, per_token_pair=4e-9)
    shapes = [(n, L) for n in (1, 4, 16) for L in (8, 32, 128, 512)]
    samples = [(n, L, truth.predict(n, L)) for n, L in shapes]
    fit = bp.fit_cost_model(samples)
    assert np.allclose(fit.coefficients, truth.coefficients, rtol=1e-6, atol=1e-12)
    assert fit.max_relative_error < 1e-6 and fit.samples == len(shapes)
    # noisy timings: still non-negative, still within the noise
    rng = np.random.default_rng(0)
    noisy = [(n, L, t * (1 + 0.05 * rng.standard_normal())) for n, L, t in samples]
    fit = bp.fit_cost_model(noisy)
    assert min(fit.coefficients) >= 0
    assert all(abs(fit.predict(n, L) - t) / t < 0.25 for n, L, t in samples)
    # timings that a negative coefficient would fit better are fitted with that coefficient at zero
    decreasing = [(1, 8, 1e-3), (1, 32, 0.9e-3), (1, 128, 0.8e-3), (4, 8, 1e-3)]
    assert min(bp.fit_cost_model(decreasing).coefficients) >= 0
    with pytest.raises(ValueError, match="no timed shapes"):
        bp.fit_cost_model([])


def test_profiling_times_the_grid_within_its_budget(bp):
    truth = bp.CostModel(per_call=1e-3, per_token=1e-5, per_token_pair=1e-8)
    now = [0.0]
    calls = []

    def run(n, L):
        calls.append((n, L))
        now[0] += truth.predict(n, L)

    samples = bp.profile_shapes(run, 16, 512, budget_s=100.0, clock=lambda: now[0])
    shapes = [(n, L) for n, L, _ in samples]
    assert (1, 8) in shapes and (16, 512) in shapes and (1, 512) in shapes
    assert all(t == pytest.approx(truth.predict(n, L)) for n, L, t in samples)
    fit = bp.fit_cost_model(samples)
    assert np.allclose(fit.coefficients, truth.coefficients, rtol=1e-6, atol=1e-12)
    # a tight budget drops the expensive shapes but keeps the cheap ones; caps are respected
    now[0] = 0.0
    calls.clear()
    small = bp.profile_shapes(run, 4, 4096, max_group_tokens=1024, budget_s=0.5, clock=lambda: now[0])
    assert len(small) >= 4 and now[0] <= 0.5 + 4 * truth.predict(1, 512)
    assert all(n <= 4 and (n == 1 or n * L <= 1024) for n, L in calls)
    assert max(L for _, L, _ in small) < 4096


def test_profiling_never_times_attention_beyond_its_bound(bp):
    """Qwen3Guard-Gen's 32,768 positions: no profiled shape reaches the rows x length^2 that broke CUDA kernels."""
    calls = []
    samples = bp.profile_shapes(lambda n, L: calls.append((n, L)), 16, 32768, budget_s=100.0,
                                clock=iter(range(10**6)).__next__)
    assert len(samples) >= 4 and (1, 2048) in [(n, L) for n, L, _ in samples]
    assert all(n * L * L <= bp.MAX_PROFILED_ROWS_X_LENGTH2 for n, L in calls) and max(L for _, L in calls) < 32768


def test_profiling_skips_shapes_that_fail_and_everything_larger(bp):
    def run(n, L):
        if L > 100:
            raise RuntimeError("Gather: indices element out of data bounds")

    failures = []
    samples = bp.profile_shapes(run, 16, 512, budget_s=100.0, failures=failures, clock=iter(range(10**6)).__next__)
    assert samples and max(L for _, L, _ in samples) == 32
    assert [(n, L) for n, L, _ in failures] == [(1, 128)]  # (4, 128), (1, 512) ... never tried
    assert "out of data bounds" in str(failures[0][2])


# -- the padding margin ---------------------------------------------------------------------------------------------
def test_padding_must_beat_its_parts_by_the_models_error(bp):
    # Fitted on the realistic rejection model on the 2-core EPYC (server log): calls are cheap next to tokens.
    cpu = bp.CostModel(per_call=1.72e-3, per_token=297e-6, max_relative_error=0.3)
    assert cpu.margin == pytest.approx(0.3)
    # 60 and 62 tokens: padding 2 tokens to save one call is predicted to pay a little (2 x 0.3 ms < 1.7 ms), but
    # not by the model's 30% error: one call per length.
    lengths = [60, 62, 60]
    assert bp.predicted_seconds([[0, 1, 2]], lengths, cpu) < bp.predicted_seconds([[0, 2], [1]], lengths, cpu)
    assert sorted(sorted(lengths[i] for i in g) for g in bp.plan_groups(lengths, cpu)) == [[60, 60], [62]]
    # The same timings with no margin would pad.
    exact = bp.CostModel(per_call=1.72e-3, per_token=297e-6, padding_margin=0.0)
    assert bp.plan_groups(lengths, exact) == [[0, 2, 1]]
    # Where a call costs far more than its tokens (a GPU), padding wins by more than any margin: one group.
    gpu = bp.CostModel(per_call=3e-3, per_token=1e-7, max_relative_error=5.0)
    assert gpu.margin == bp.MAX_MARGIN
    assert bp.plan_groups([8, 100, 300, 301], gpu) == [[0, 1, 2, 3]]
    # No error recorded (a pinned model): the minimum margin; a tiny fit error still leaves the minimum.
    assert bp.CostModel(per_call=1e-3).margin == bp.MIN_MARGIN
    assert bp.CostModel(per_call=1e-3, max_relative_error=0.01).margin == bp.MIN_MARGIN


def test_planner_on_the_tiny_model_predicts_and_stays_exact(bp, demo_export):
    """The planner against real ONNX Runtime on the tiny rejection model: the profile fits a non-negative model whose
    prediction of a shape it never timed is of the right size, and planned groups (padding included) give each row
    the logits it gets alone."""
    import time

    import onnxruntime as ort

    from guardrt.runtime.export_dir import load_export_dir

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(load_export_dir(demo_export("rejection", ("fp32",))).model_path("fp32")), opts,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    def run_rows(rows):
        width = max(len(r) for r in rows)
        ids = np.ones((len(rows), width), np.int64)  # pad id 1, right padding (RoBERTa)
        mask = np.zeros_like(ids)
        for k, r in enumerate(rows):
            ids[k, :len(r)], mask[k, :len(r)] = r, 1
        return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]

    def run(n, L):
        run_rows([np.full(L, 5, np.int64)] * n)

    samples = bp.profile_shapes(run, 16, 128, budget_s=2.0, repeats=5)
    cost = bp.fit_cost_model(samples)
    assert len(samples) >= 4 and min(cost.coefficients) >= 0 and cost.predict(1, 8) > 0
    # A shape the profile never timed (2 x 48): the prediction within a factor of 4 of the best of 7 calls (a wide
    # band: other jobs share this machine; a model with the wrong terms is off by far more).
    run(2, 48)
    took = min(_timed(time.perf_counter, lambda: run(2, 48)) for _ in range(7))
    assert took / 4 < cost.predict(2, 48) < took * 4, (cost.describe(), took)
    # Exactness: whatever the plan (the fitted one, or one that pads everything), each row's logits = alone.
    lengths = [3, 17, 17, 40, 41, 90, 5, 128]
    rows = [rng.integers(3, 500, n) for n in lengths]
    alone = np.concatenate([run_rows([r]) for r in rows])
    for model in (cost, bp.CostModel(per_call=1.0, per_token=1e-9, padding_margin=0.0)):
        got = np.empty_like(alone)
        groups = bp.plan_groups(lengths, model, max_rows=16)
        for g in groups:
            got[g] = run_rows([rows[i] for i in g])
        assert np.allclose(got, alone, atol=1e-5), groups
    assert bp.plan_groups(lengths, bp.CostModel(per_call=1.0, per_token=1e-9, padding_margin=0.0), max_rows=16) == [
        [0, 6, 1, 2, 3, 4, 5, 7]]


def _timed(clock, fn):
    t0 = clock()
    fn()
    return clock() - t0

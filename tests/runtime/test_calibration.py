"""FlexGuard threshold calibration (runtime/calibration.py, `guardrt calibrate`): the sweep, the tie rule, the
stored threshold and its precedence, bad dev rows, and the CLI on a labelled synthetic dev set."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from guardrt.runtime.calibration import (CALIBRATION_FILE, calibrate, dev_row, load_calibration, resolve_threshold,
                                         sweep_thresholds, write_calibration)
from guardrt.runtime.errors import InputError, ModelFilesError

ROOT = Path(__file__).resolve().parents[2]


def _f1_by_hand(scores, labels, t):
    """F1 of `unsafe = score >= t` (no score = flagged), counted directly."""
    pred = [s is None or s >= t for s in scores]
    tp = sum(p and y for p, y in zip(pred, labels))
    fp = sum(p and not y for p, y in zip(pred, labels))
    fn = sum(not p and y for p, y in zip(pred, labels))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def test_sweep_matches_a_direct_count():
    rng = random.Random(3)
    labels = [rng.random() < 0.4 for _ in range(300)]
    scores = [None if rng.random() < 0.03 else min(100, max(0, int(rng.gauss(70 if y else 25, 20)))) for y in labels]
    cal = calibrate(scores, labels)
    assert [round(p.metric("f1"), 12) for p in cal.curve] == [round(_f1_by_hand(scores, labels, t), 12)
                                                              for t in range(101)]
    best = max(_f1_by_hand(scores, labels, t) for t in range(101))
    assert cal.threshold == min(t for t in range(101) if abs(_f1_by_hand(scores, labels, t) - best) < 1e-12)
    assert cal.unscored == sum(s is None for s in scores) and cal.rows == 300


def test_ties_go_to_the_stricter_threshold():
    """Separable scores: every t in 31..50 gives F1 = 1; the chosen one is 31 and the output says why."""
    scores = [0, 10, 30, 30, 50, 77, 100]
    labels = [0, 0, 0, 0, 1, 1, 1]
    cal = calibrate(scores, labels)
    assert cal.threshold == 31 and cal.value == 1.0 and cal.tied == tuple(range(31, 51))
    assert "31-50" in cal.tie_note and "stricter" in cal.tie_note
    assert calibrate(scores, labels, "accuracy").threshold == 31


def test_metrics_and_unscored_rows():
    scores, labels = [None, 90, 10], [0, 1, 0]
    point = sweep_thresholds(scores, labels, [50])[0]
    assert (point.tp, point.fp, point.tn, point.fn) == (1, 1, 1, 0)  # the unscored row is flagged
    assert point.metric("precision") == 0.5 and point.metric("recall") == 1.0
    assert point.metric("balanced_accuracy") == 0.75 and round(point.metric("mcc"), 6) == 0.5
    with pytest.raises(ValueError, match="unknown metric"):
        point.metric("auc")
    with pytest.raises(InputError, match="empty"):
        calibrate([], [])


@pytest.mark.parametrize("row, expected", [
    ({"risk_score": 73, "label": 1}, (73, 1)), ({"risk_score": None, "label": "safe"}, (None, 0)),
    ({"risk_score": 12.5, "label": True}, (12.5, 1)), ({"text": "<think>x</think>\nVIO\n85", "label": 0}, (85, 0)),
    ({"text": "<think>\nran out", "label": "UNSAFE"}, (None, 1)),
])
def test_dev_rows(row, expected):
    assert dev_row(row) == expected


def test_dev_rows_with_flexbench_severity():
    assert [dev_row({"risk_score": 5, "severity_level": k}, regime="moderate")[1] for k in range(5)] == [0, 0, 1, 1, 1]
    assert [dev_row({"risk_score": 5, "severity_level": k}, regime="loose")[1] for k in range(5)] == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("row, message", [
    ({"label": 1}, 'no "risk_score" or "text"'), ({"risk_score": 101, "label": 1}, "in \\[0, 100\\]"),
    ({"risk_score": "73", "label": 1}, "must be a number"), ({"risk_score": True, "label": 1}, "must be a number"),
    ({"risk_score": 5}, 'no "label" field'), ({"risk_score": 5, "label": 2}, "must be 0/1"),
    ({"text": 5, "label": 1}, "text must be a string"), ([1, 2], "expected an object"),
])
def test_bad_dev_rows(row, message):
    with pytest.raises(InputError, match=message):
        dev_row(row)


def test_stored_threshold_and_precedence(tmp_path):
    cal = calibrate([0, 10, 60, 90], [0, 0, 1, 1])
    path = write_calibration(cal, tmp_path)
    assert path == tmp_path / CALIBRATION_FILE and load_calibration(tmp_path)["threshold"] == cal.threshold == 11
    assert resolve_threshold(model_dir=tmp_path) == (11, "calibrated (f1)")
    assert resolve_threshold(strictness="loose", model_dir=tmp_path) == (60, "strictness loose")
    assert resolve_threshold(threshold=55, strictness="loose", model_dir=tmp_path) == (55, "threshold")
    with pytest.raises(ModelFilesError, match="no model directory"):
        resolve_threshold(model_dir=tmp_path / "not-a-dir")  # a path that does not exist is an error, not 40
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_threshold(model_dir=empty) == (40, "default (moderate)")
    with pytest.raises(InputError, match="unknown strictness"):
        resolve_threshold(strictness="medium")
    (empty / CALIBRATION_FILE).write_text('{"threshold": "high"}')
    with pytest.raises(ModelFilesError, match="no threshold"):
        load_calibration(empty)


def _calibrate_cli(*args):
    return subprocess.run([sys.executable, "-m", "guardrt", "calibrate", "--spec", "flexguard", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_on_a_synthetic_dev_set(tmp_path):
    """The benchmark's synthetic dev set (severity levels, card-format outputs, 2% truncated), regime moderate."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from flexguard_calibration import synthetic_dev_rows
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    rows = synthetic_dev_rows(600, seed=5)
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model_dir = tmp_path / "model"
    proc = _calibrate_cli("--dev", dev, "--regime", "moderate", "--out", model_dir)
    assert proc.returncode == 0, proc.stderr
    stored = load_calibration(model_dir)
    scores, labels = zip(*(dev_row(r, regime="moderate") for r in rows))
    best = max(_f1_by_hand(scores, labels, t) for t in range(101))
    assert stored["threshold"] == min(t for t in range(101) if abs(_f1_by_hand(scores, labels, t) - best) < 1e-12)
    assert 25 <= stored["threshold"] <= 55  # the synthetic bands put the moderate boundary near 40
    assert f"chosen threshold: {stored['threshold']}" in proc.stdout and "rubric moderate" in proc.stdout
    assert (model_dir / "calibration.png").stat().st_size > 10_000
    assert stored["unscored_rows"] == sum(r["text"].count("</think>") == 0 for r in rows) > 0


def test_cli_bad_row_is_one_error(tmp_path):
    dev = tmp_path / "dev.jsonl"
    dev.write_text('{"risk_score": 5, "label": 0}\n{"risk_score": 500, "label": 1}\n')
    proc = _calibrate_cli("--dev", dev, "--out", tmp_path, "--no-plot")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "line 2: risk_score must be a number in [0, 100]" in proc.stderr
    proc = _calibrate_cli("--dev", tmp_path / "missing.jsonl", "--no-plot")
    assert proc.returncode == 2 and "cannot read dev set" in proc.stderr and "Traceback" not in proc.stderr

"""Calibrated strictness thresholds (the FlexGuard card's Option B) and where they are stored (pure Python).

**The sweep** (`sweep_thresholds`): on a labelled dev set of risk scores, every integer threshold t in [0, 100]
predicts `unsafe = score >= t`; each gets a confusion matrix and the metrics below. `choose_threshold` takes the t
that maximises the target metric (F1 by default, as the card says); among equal values it takes the **smallest** t,
the stricter one (the card: "smaller t => stricter enforcement"), and reports the tied thresholds.

A row without a score (an unparsed model output) is predicted unsafe at every threshold, exactly as the runtime
decides it (`flexguard_output.UNPARSED_DECISION`), so the curve measures the deployed behaviour.

Metrics (`METRICS`): f1, precision, recall, accuracy, balanced_accuracy ((TPR + TNR) / 2), mcc (Matthews), f2
(recall-weighted). A metric whose denominator is zero counts as 0 (sklearn's `zero_division=0`).

**Where the chosen threshold lives** (`CALIBRATION_FILE`, read by `load_calibration` / `resolve_threshold`):
`guardrt calibrate --out DIR` writes `DIR/calibration.json` (DIR is the model or export directory that serving and
`guardrt classify` load; `--out FILE.json` writes that file instead). The threshold a FlexGuard request uses is, in
order: an explicit threshold, else an explicit strictness regime (20 / 40 / 60), else the calibrated threshold of
the model directory, else the spec's default (40, moderate).
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from guardrt.runtime.errors import InputError, ModelFilesError, read_json_file

__all__ = [
    "CALIBRATION_FILE",
    "METRICS",
    "ThresholdPoint",
    "Calibration",
    "FLEXBENCH_REGIMES",
    "calibrate",
    "dev_row",
    "choose_threshold",
    "load_calibration",
    "resolve_threshold",
    "sweep_thresholds",
    "write_calibration",
]

CALIBRATION_FILE = "calibration.json"
THRESHOLDS = tuple(range(0, 101))  # the card: sweep candidate thresholds t in [0, 100]


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _f_beta(precision: float, recall: float, beta: float) -> float:
    b2 = beta * beta
    return _ratio((1 + b2) * precision * recall, b2 * precision + recall)


@dataclass(frozen=True)
class ThresholdPoint:
    """One threshold of the sweep: its confusion matrix (unsafe = positive) and metrics."""

    threshold: int
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    def metric(self, name: str) -> float:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; one of {', '.join(METRICS)}")
        return METRICS[name](self)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), **{name: round(fn(self), 6) for name, fn in METRICS.items()}}


def _mcc(p: ThresholdPoint) -> float:
    den = math.sqrt((p.tp + p.fp) * (p.tp + p.fn) * (p.tn + p.fp) * (p.tn + p.fn))
    return _ratio(p.tp * p.tn - p.fp * p.fn, den)


METRICS = {
    "f1": lambda p: _f_beta(p.precision, p.recall, 1.0),
    "precision": lambda p: p.precision,
    "recall": lambda p: p.recall,
    "accuracy": lambda p: _ratio(p.tp + p.tn, p.tp + p.fp + p.tn + p.fn),
    "balanced_accuracy": lambda p: (p.recall + _ratio(p.tn, p.tn + p.fp)) / 2,
    "mcc": _mcc,
    "f2": lambda p: _f_beta(p.precision, p.recall, 2.0),
}


def sweep_thresholds(scores: Iterable[float | None], labels: Iterable[int],
                     thresholds: Iterable[int] = THRESHOLDS) -> list[ThresholdPoint]:
    """The confusion matrix at each threshold; `labels` 1 = unsafe; a None score is predicted unsafe everywhere."""
    pairs = list(zip(scores, labels, strict=True))
    if not pairs:
        raise InputError("the dev set is empty")
    points = []
    for t in thresholds:
        tp = fp = tn = fn = 0
        for score, label in pairs:
            flagged = score is None or score >= t
            if flagged and label:
                tp += 1
            elif flagged:
                fp += 1
            elif label:
                fn += 1
            else:
                tn += 1
        points.append(ThresholdPoint(int(t), tp, fp, tn, fn))
    return points


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold, the metric it maximises, its value, the thresholds tied with it, and the curve."""

    threshold: int
    metric: str
    value: float
    tied: tuple[int, ...]
    rows: int
    positives: int
    unscored: int
    curve: tuple[ThresholdPoint, ...]

    @property
    def tie_note(self) -> str:
        if len(self.tied) == 1:
            return f"t={self.threshold} is the only maximum of {self.metric}"
        others = [t for t in self.tied if t != self.threshold]
        return (f"{len(self.tied)} thresholds tie at {self.metric}={self.value:.4f} "
                f"({_ranges(self.tied)}); ties go to the stricter (smaller) threshold: t={self.threshold}, "
                f"not {_ranges(others)}")

    def to_json(self, **extra: Any) -> dict[str, Any]:
        return {"spec": "flexguard", "threshold": self.threshold, "metric": self.metric, "value": round(self.value, 6),
                "tie_break": "stricter (smallest threshold among equal metric values)", "tied": list(self.tied),
                "rows": self.rows, "positives": self.positives, "unscored_rows": self.unscored,
                "unscored_rule": "predicted unsafe at every threshold (fail closed, as the runtime decides)",
                **extra, "curve": [p.as_dict() for p in self.curve]}


def _ranges(values: Iterable[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    out, run = [], []
    for v in sorted(values):
        if run and v == run[-1] + 1:
            run.append(v)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [v]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def choose_threshold(curve: list[ThresholdPoint], metric: str = "f1", rel_tol: float = 1e-12) -> tuple[int, float,
                                                                                                       tuple[int, ...]]:
    """(threshold, value, tied thresholds): the max of `metric`, ties broken toward the smallest (stricter) t."""
    values = [(p.threshold, p.metric(metric)) for p in curve]
    best = max(v for _, v in values)
    tied = tuple(sorted(t for t, v in values if math.isclose(v, best, rel_tol=rel_tol, abs_tol=1e-12)))
    return tied[0], best, tied


def calibrate(scores: list[float | None], labels: list[int], metric: str = "f1") -> Calibration:
    """The card's Option B on one dev set (see the module docstring)."""
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
    curve = sweep_thresholds(scores, labels)
    threshold, value, tied = choose_threshold(curve, metric)
    return Calibration(threshold, metric, value, tied, len(labels), sum(1 for y in labels if y),
                       sum(1 for s in scores if s is None), tuple(curve))


# FlexBench's derived binary labels (its dataset card): strict = severity >= 1, moderate >= 2, loose >= 3.
FLEXBENCH_REGIMES = {"strict": 1, "moderate": 2, "loose": 3}
_LABEL_WORDS = {"unsafe": 1, "safe": 0}


def dev_row(record: Any, label_field: str = "label", regime: str | None = None) -> tuple[float | None, int]:
    """(risk score or None, label 1 = unsafe) of one labelled dev row; InputError saying what is wrong otherwise.

    The score: `risk_score` (a number in [0, 100] or null = unparsed), else `text` (a model output, parsed with the
    card's parse_output). The label: `label_field` (0/1, true/false, "safe"/"unsafe"), or with `regime`, FlexBench's
    `severity_level` 0-4 turned into that regime's binary label."""
    from guardrt.runtime.flexguard_output import parse_flexguard_output

    if not isinstance(record, Mapping):
        raise InputError(f"expected an object, got {type(record).__name__}")
    if "risk_score" in record:
        score = record["risk_score"]
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))
                                  or not 0 <= score <= 100):
            raise InputError(f"risk_score must be a number in [0, 100] or null, got {score!r:.40}")
    elif "text" in record:
        if not isinstance(record["text"], str):
            raise InputError(f"text must be a string (a model output), got {type(record['text']).__name__}")
        score = parse_flexguard_output(record["text"]).risk_score
    else:
        raise InputError('no "risk_score" or "text" (a model output) field')
    if regime is not None and label_field not in record:
        level = record.get("severity_level")
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 4:
            raise InputError(f'no "{label_field}" and no severity_level 0-4 for --regime {regime}')
        return score, int(level >= FLEXBENCH_REGIMES[regime])
    if label_field not in record:
        raise InputError(f'no "{label_field}" field (0/1, true/false or "safe"/"unsafe")')
    label = record[label_field]
    if isinstance(label, str) and label.lower() in _LABEL_WORDS:
        return score, _LABEL_WORDS[label.lower()]
    if label in (0, 1) and not isinstance(label, float):
        return score, int(label)
    raise InputError(f'{label_field} must be 0/1, true/false or "safe"/"unsafe", got {label!r:.40}')


def write_calibration(calibration: Calibration, out: str | Path, **extra: Any) -> Path:
    """Write `calibration.json` into the directory `out` (or the file `out` when it ends in .json); its path."""
    path = Path(out)
    if path.suffix != ".json":
        path = path / CALIBRATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration.to_json(**extra), indent=1) + "\n", encoding="utf-8")
    return path


def load_calibration(location: str | Path) -> dict[str, Any] | None:
    """The calibration stored in a model directory (DIR/calibration.json) or a .json file; None when a directory has
    none; ModelFilesError when it is unreadable or its threshold is not a number in [0, 100]."""
    path = Path(location)
    if path.is_dir():
        path = path / CALIBRATION_FILE
        if not path.is_file():
            return None
    if not path.is_file():
        what = "calibration file" if path.suffix == ".json" else "model directory"
        raise ModelFilesError(f"no {what} {path} (a calibration is written by `guardrt calibrate`)")
    data = read_json_file(path)
    threshold = data.get("threshold") if isinstance(data, Mapping) else None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 100:
        raise ModelFilesError(f"{path}: no threshold in [0, 100] (write it with `guardrt calibrate`)")
    if data.get("spec", "flexguard") != "flexguard":
        raise ModelFilesError(f"{path} is a calibration for spec {data.get('spec')!r}, not flexguard")
    return dict(data)


def resolve_threshold(threshold: float | None = None, strictness: str | None = None,
                      model_dir: str | Path | None = None, default: float = 40) -> tuple[float, str]:
    """(threshold, where it came from): explicit threshold > strictness regime > the model directory's calibration
    > `default` (the spec's, 40)."""
    from guardrt.runtime.flexguard_output import strictness_threshold

    if threshold is not None:
        if not 0 <= threshold <= 100:
            raise InputError(f"threshold must be in [0, 100], got {threshold}")
        return threshold, "threshold"
    if strictness is not None:
        try:
            return strictness_threshold(strictness), f"strictness {strictness}"
        except ValueError as exc:
            raise InputError(str(exc)) from None
    if model_dir is not None:
        stored = load_calibration(model_dir)
        if stored is not None:
            return stored["threshold"], f"calibrated ({stored.get('metric', '?')})"
    return default, "default (moderate)"

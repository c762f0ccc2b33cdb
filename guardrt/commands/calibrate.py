"""`guardrt calibrate`: choose a strictness threshold on a labelled dev set (the FlexGuard card's Option B).

    guardrt calibrate --spec flexguard --dev labeled.jsonl [--metric f1] [--out DIR|FILE.json] [--plot PNG]

Dev rows (JSON lines): a score and a label, e.g. `{"risk_score": 73, "label": 1}` (scores from a run of the model;
null = an unparsed output) or `{"text": "<model output>", "label": "unsafe"}` (parsed with the card's parse_output);
FlexBench rows `{"risk_score": .., "severity_level": 0-4}` with `--regime strict|moderate|loose`. Every threshold
t in [0, 100] is scored (unsafe = score >= t); the chosen t maximises the metric, ties going to the stricter
(smaller) t, which the output says. The curve is printed and drawn (PNG), and the result is stored in
`calibration.json` (runtime/calibration.py: serving and the client read it from the model directory).
A bad row stops the run with one error naming its line.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

NAME = "calibrate"
HELP = "choose a strictness threshold for a risk-score guard (flexguard) on a labelled dev set; store it"


def add_arguments(p) -> None:
    from guardrt.runtime.calibration import FLEXBENCH_REGIMES, METRICS

    p.add_argument("--spec", required=True, help="model spec (flexguard)")
    p.add_argument("--dev", required=True, help="labelled dev set, JSON lines with risk_score or text, and label")
    p.add_argument("--metric", default="f1", choices=sorted(METRICS), help="metric to maximise (default: f1)")
    p.add_argument("--label-field", default="label", help="field holding the label (default: label)")
    p.add_argument("--regime", choices=sorted(FLEXBENCH_REGIMES),
                   help="derive the label from FlexBench's severity_level (strict >= 1, moderate >= 2, loose >= 3)")
    p.add_argument("--out", default="calibration.json",
                   help="where to store the result: a model/export directory (writes DIR/calibration.json, which "
                        "serving and the client read) or a .json file (default: ./calibration.json)")
    p.add_argument("--plot", help="PNG of the metric curve (default: next to the calibration file, .png)")
    p.add_argument("--no-plot", action="store_true", help="do not draw the curve")


def read_dev_set(path: str, label_field: str, regime: str | None) -> tuple[list, list]:
    """(scores, labels) of a dev file; InputError naming the line of a bad row, ModelFilesError when unreadable."""
    from guardrt.runtime.calibration import dev_row
    from guardrt.runtime.errors import InputError, ModelFilesError

    scores, labels = [], []
    try:
        stream = open(path, encoding="utf-8")
    except OSError as exc:
        raise ModelFilesError(f"cannot read dev set {path}: {exc.strerror}") from None
    with stream:
        for lineno, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                score, label = dev_row(json.loads(line), label_field, regime)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} line {lineno}: not valid JSON ({exc.msg})") from None
            except InputError as exc:
                raise InputError(f"{path} line {lineno}: {exc}") from None
            scores.append(score)
            labels.append(label)
    return scores, labels


def format_curve(calibration, every: int = 5) -> str:
    """The curve as a table: every `every`-th threshold, plus the rubric thresholds and the chosen one."""
    from guardrt.runtime.flexguard_output import STRICTNESS_THRESHOLDS

    rubric = {t: name for name, t in STRICTNESS_THRESHOLDS.items()}
    extra = calibration.metric not in ("f1", "precision", "recall", "accuracy")
    lines = [f"{'t':>4} {'prec':>6} {'recall':>6} {'f1':>6} {'acc':>6} " + (f"{calibration.metric:>8} " if extra else "")
             + "  note"]
    for p in calibration.curve:
        t = p.threshold
        if t % every and t not in rubric and t != calibration.threshold:
            continue
        note = "  ".join(x for x in ("<- chosen" if t == calibration.threshold else "",
                                      f"rubric {rubric[t]}" if t in rubric else "") if x)
        lines.append((f"{t:>4} {p.precision:6.3f} {p.recall:6.3f} {p.metric('f1'):6.3f} {p.metric('accuracy'):6.3f} "
                     + (f"{p.metric(calibration.metric):8.4f} " if extra else "") + f"  {note}").rstrip())
    return "\n".join(lines)


def plot_curve(calibration, path: Path, title: str) -> Path:
    """PNG of precision, recall and the chosen metric against t, with the rubric thresholds and the choice marked."""
    from guardrt.runtime.errors import require
    from guardrt.runtime.flexguard_output import STRICTNESS_THRESHOLDS

    require("matplotlib", "dev")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [p.threshold for p in calibration.curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ts, [p.precision for p in calibration.curve], label="precision", lw=1)
    ax.plot(ts, [p.recall for p in calibration.curve], label="recall", lw=1)
    ax.plot(ts, [p.metric(calibration.metric) for p in calibration.curve], label=calibration.metric, lw=2.2)
    for name, t in STRICTNESS_THRESHOLDS.items():
        ax.axvline(t, color="grey", ls=":", lw=1)
        ax.text(t + 0.5, 0.02, name, color="grey", fontsize=8)
    ax.axvline(calibration.threshold, color="red", lw=1.2,
               label=f"chosen t={calibration.threshold} ({calibration.metric}={calibration.value:.3f})")
    ax.set_xlabel("threshold t (unsafe = risk_score >= t)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args) -> int:
    from guardrt.runtime.calibration import CALIBRATION_FILE, calibrate, write_calibration
    from guardrt.runtime.errors import InputError
    from guardrt.runtime.specs import get_spec

    spec = get_spec(args.spec, input_only=True)
    if spec.output.kind != "flexguard_text":
        raise InputError(f"spec {spec.name} has no risk score to threshold (calibrate takes flexguard)")
    scores, labels = read_dev_set(args.dev, args.label_field, args.regime)
    calibration = calibrate(scores, labels, args.metric)
    print(format_curve(calibration))
    print(f"chosen threshold: {calibration.threshold} ({calibration.metric} = {calibration.value:.4f}); "
          f"{calibration.tie_note}")
    print(f"dev set: {calibration.rows} rows, {calibration.positives} unsafe, {calibration.unscored} without a score "
          "(counted as flagged at every threshold)")
    out = write_calibration(calibration, args.out, dev=str(args.dev),
                            label=f"severity_level, regime {args.regime}" if args.regime else args.label_field)
    print(f"stored in {out}")
    if not args.no_plot:
        png = Path(args.plot) if args.plot else out.with_suffix(".png")
        regime = f", regime {args.regime}" if args.regime else ""
        title = (f"{spec.name} calibration on {Path(args.dev).name}{regime}: {calibration.rows} rows, "
                 f"max {calibration.metric}, ties -> stricter t")
        print(f"curve: {plot_curve(calibration, png, title)}")
    if out.name != CALIBRATION_FILE:
        print(f"note: serving reads DIR/{CALIBRATION_FILE}; copy it there or pass --out DIR", file=sys.stderr)
    return 0

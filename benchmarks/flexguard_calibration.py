"""FlexGuard threshold calibration (the card's Option B) on a labelled **synthetic** dev set.

    .venv/bin/python benchmarks/flexguard_calibration.py [--rows 900] [--seed 0] [--out-dir benchmarks/results]

The dev set imitates FlexBench's shape (its dataset card): a 5-tier `severity_level` (BENIGN 0 .. EXTREME 4) and the
derived binary labels per regime (strict: severity >= 1, moderate >= 2, loose >= 3). The "model outputs" are
synthetic: a risk score drawn around the rubric band of the true severity (band centre 10 / 30 / 50 / 70 / 90,
Gaussian noise sd 14, clipped to [0, 100]) written in the card's output format, and 2% truncated outputs with no
score (an unclosed think block). No FlexGuard model ran: the numbers show the calibration procedure, not the model.

For each regime it runs `guardrt calibrate --regime R` (F1, ties to the stricter t) and reports the chosen threshold
next to the card's rubric threshold for that regime; writes flexguard_calibration.json, the dev set's description,
and one PNG per regime (the F1 curve).
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAND_CENTRES = (10, 30, 50, 70, 90)
SEVERITY_MIX = (0.45, 0.15, 0.15, 0.15, 0.10)  # benign-heavy, as moderation data is
NOISE_SD = 14.0
TRUNCATED = 0.02


def synthetic_dev_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` rows {"text": <card-format output>, "severity_level": k} (see the module docstring)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        level = rng.choices(range(5), weights=SEVERITY_MIX)[0]
        score = int(round(min(100.0, max(0.0, rng.gauss(BAND_CENTRES[level], NOISE_SD)))))
        category = "SAFE" if score <= 20 else rng.choice(["VIO", "ILG", "SEX", "INF", "DIS", "MIS", "JAIL", "VIO, ILG"])
        if rng.random() < TRUNCATED:
            text = "<think>\nstep1_rule_mapping: ...\nstep2_element_extraction: ..."  # ran out of tokens
        else:
            text = f"<think>\nstep1...\nstep8...\n</think>\n{category}\n{score}<|im_end|>"
        rows.append({"text": text, "severity_level": level})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=900)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rubric = {"strict": 20, "moderate": 40, "loose": 60}
    report = {"dev_set": {"rows": args.rows, "seed": args.seed, "synthetic": True, "severity_mix": SEVERITY_MIX,
                          "band_centres": BAND_CENTRES, "noise_sd": NOISE_SD, "truncated_fraction": TRUNCATED},
              "regimes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        dev = Path(tmp) / "flexguard_dev_synthetic.jsonl"
        dev.write_text("".join(json.dumps(r) + "\n" for r in synthetic_dev_rows(args.rows, args.seed)))
        for regime, t_rubric in rubric.items():
            out = Path(tmp) / regime / "calibration.json"
            cmd = [sys.executable, "-m", "guardrt", "calibrate", "--spec", "flexguard", "--dev", str(dev),
                   "--regime", regime, "--out", str(out.parent),
                   "--plot", str(out_dir / f"flexguard_calibration_{regime}.png")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            print(f"== regime {regime}\n{proc.stdout}")
            stored = json.loads(out.read_text())
            at_rubric = stored["curve"][t_rubric]
            report["regimes"][regime] = {
                "chosen_threshold": stored["threshold"], "f1": stored["value"], "tied": stored["tied"],
                "rubric_threshold": t_rubric, "f1_at_rubric": at_rubric["f1"], "positives": stored["positives"],
                "unscored_rows": stored["unscored_rows"], "png": f"flexguard_calibration_{regime}.png",
                "curve_f1": [p["f1"] for p in stored["curve"]]}
    (out_dir / "flexguard_calibration.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'regime':<9} {'chosen t':>8} {'F1':>6} {'rubric t':>8} {'F1@rubric':>9}")
    for regime, r in report["regimes"].items():
        print(f"{regime:<9} {r['chosen_threshold']:>8} {r['f1']:6.3f} {r['rubric_threshold']:>8} "
              f"{r['f1_at_rubric']:9.3f}")
    print(f"wrote {out_dir / 'flexguard_calibration.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

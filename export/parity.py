"""The parity table (README, issue notes) from export directories' validation.json files.

    python -m guardrt.export.parity EXPORT_DIR [EXPORT_DIR ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["parity_rows", "parity_markdown"]


def parity_rows(export_dir: str | Path) -> list[dict]:
    """One row per precision: spec, precision, max |Δlogit| vs PyTorch, gate, held-out agreement, accuracy, size,
    conversion time, pass/fail."""
    root = Path(export_dir)
    report = json.loads((root / "validation.json").read_text(encoding="utf-8"))
    demo = {}
    cfg = json.loads((root / "config.json").read_text(encoding="utf-8")) if (root / "config.json").is_file() else {}
    shape = (f"{cfg.get('num_hidden_layers')}x{cfg.get('hidden_size')}" if cfg else "?")
    rows = []
    for precision, res in report["precisions"].items():
        rows.append({
            "spec": report["spec"], "layers_x_hidden": shape, "precision": precision,
            "max_abs_dlogit": res["max_abs_diff"], "atol": res["atol"],
            "agreement": res["heldout_agreement"], "min_agreement": res["min_agreement"],
            "heldout": res["heldout_size"], "accuracy_onnx": res["heldout_accuracy_onnx"],
            "accuracy_torch": res["heldout_accuracy_torch"], "size_mb": res["size_bytes"] / 1e6,
            "export_s": res.get("export_seconds", 0.0), "passed": res["passed"], **demo,
        })
    return rows


def parity_markdown(export_dirs) -> str:
    lines = ["| spec | model | precision | max \\|Δlogit\\| vs PyTorch (gate) | decision agreement (gate) | "
             "task accuracy ORT / PyTorch | size on disk | conversion time |",
             "|---|---|---|---|---|---|---|---|"]
    for d in export_dirs:
        for r in parity_rows(d):
            lines.append(
                f"| {r['spec']} | {r['layers_x_hidden']} | {r['precision']} | {r['max_abs_dlogit']:.2g} "
                f"({r['atol']:g}) | {r['agreement']:.3f} of {r['heldout']} ({r['min_agreement']:g}) | "
                f"{r['accuracy_onnx']:.3f} / {r['accuracy_torch']:.3f} | {r['size_mb']:.1f} MB | "
                f"{r['export_s']:.0f} s |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(parity_markdown(sys.argv[1:]))

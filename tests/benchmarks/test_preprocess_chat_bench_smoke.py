"""benchmarks/preprocess.py --spec qwen3guard-gen runs end to end (a smoke run: nothing here asserts a speed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_chat_template_preprocess_quick_writes_json_and_plot(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "preprocess.py"), "--quick", "--spec",
                           "qwen3guard-gen", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "preprocess_qwen3guard-gen_quick.json").read_text())
    assert result["spec"] == "qwen3guard-gen"
    assert {r["traffic"] for r in result["rows"]} == {"prompt-moderation", "response-moderation", "growing-chat",
                                                      "long-conversations"}
    assert all(r["identical_ids"] and r["guardrt_ms"] > 0 for r in result["rows"])
    assert (tmp_path / "preprocess_qwen3guard-gen_quick.png").stat().st_size > 0

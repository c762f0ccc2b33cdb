"""`guardrt demo` against the real server: every sample printed with its expected and received label, and a sample
answered against its label stops the demo with one error line (so a regression cannot pass silently)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.triton


def test_demo_prints_expected_labels_and_fails_on_a_wrong_answer(tmp_path, monkeypatch, capsys, demo_exports):
    import guardrt.commands.demo as demo
    from guardrt.cli import main

    n_real = sum(len(demo.demo_samples(name)) for name in ("intent-safety", "rejection"))  # before planting
    # Plant one sample whose label is the opposite of the model's answer (the first hand-written one, relabelled).
    text, label = demo.HANDWRITTEN_SAMPLES["rejection"][0]
    flipped = "NORMAL" if label == "REJECTION" else "REJECTION"
    samples = dict(demo.HANDWRITTEN_SAMPLES, rejection=demo.HANDWRITTEN_SAMPLES["rejection"] + [(text, flipped)])
    monkeypatch.setattr(demo, "HANDWRITTEN_SAMPLES", samples)

    code = main(["demo", "--repo", str(tmp_path / "repo"), "--requests", "8", "--concurrency", "4"])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = [line for line in out.splitlines() if " expected " in line]
    assert len(lines) == n_real + 1
    assert sum(" ok " in line for line in lines) == n_real, "\n".join(lines)
    assert sum(" WRONG " in line for line in lines) == 1
    assert "held-out accuracy" in out and "throughput" not in out
    assert err.strip().startswith("guardrt demo: error: 1 demo sample(s) answered against their label")
    assert len(err.strip().splitlines()) == 1


def test_demo_serves_qwen3guard_gen_in_both_modes_and_fails_on_a_wrong_answer(tmp_path, monkeypatch, capsys,
                                                                              demo_exports):
    """The Qwen3Guard-Gen part prints every conversation's verdict and generation, and stops the demo when a served
    answer is not in-process greedy generation's (planted here: the reference's first safety label is changed)."""
    import guardrt.commands.demo as demo
    from guardrt.cli import main
    from guardrt.runtime.guard_engine import GuardClassifier

    real = GuardClassifier.classify_batch

    def planted(self, conversations, mode=None):
        results = real(self, conversations, mode)
        results[0] = dict(results[0], safety="Unsafe" if results[0]["safety"] != "Unsafe" else "Safe")
        return results

    monkeypatch.setattr(GuardClassifier, "classify_batch", planted)
    code = main(["demo", "--repo", str(tmp_path / "repo"), "--requests", "8", "--concurrency", "4"])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = [line for line in out.splitlines() if line.startswith("[demo] qwen3guard-gen ") and " expected " in line]
    assert len(lines) == demo.GUARD_SAMPLES and all(" generate " in line for line in lines)
    assert "throughput" not in out
    assert err.strip().startswith("guardrt demo: error: qwen3guard-gen: 2 wrong answer(s)"), err
    assert len(err.strip().splitlines()) == 1

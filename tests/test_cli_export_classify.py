"""CLI: `guardrt export`, `guardrt classify` (in-process), `guardrt demo-models` — results and one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from guardrt.cli import main

CARD_FIELDS = {
    "intent-safety": {"label", "label_text", "prob_non_unsafe", "prob_unsafe", "threshold"},
    "rejection": {"label", "label_text", "score", "prob_normal", "prob_rejection"},
}


def _guardrt(*args, stdin: str = "", env=None):
    return subprocess.run([sys.executable, "-m", "guardrt", *args], input=stdin, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def _lines(spec_name, n=6):
    from guardrt.export.synthetic import synthetic_payloads

    key = "turns" if spec_name == "intent-safety" else "text"
    return [json.dumps({key: p}, ensure_ascii=False) for p in synthetic_payloads(spec_name, n, seed=11)]


@pytest.mark.parametrize("spec_name", ["intent-safety", "rejection"])
def test_classify_in_process_matches_library(spec_name, demo_export):
    from guardrt.export.synthetic import synthetic_payloads
    from guardrt.runtime.onnxrt import InProcessClassifier

    export_dir = demo_export(spec_name)
    proc = _guardrt("classify", "--spec", spec_name, "--model", str(export_dir), "--precision", "int8",
                    stdin="\n".join(_lines(spec_name)) + "\n")
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    with InProcessClassifier.from_export_dir(export_dir, precision="int8") as clf:
        expected = clf.classify(synthetic_payloads(spec_name, 6, seed=11))
    assert len(results) == 6
    for got, want in zip(results, expected):
        assert set(got) == CARD_FIELDS[spec_name]
        assert got["label"] == want["label"] and got["label_text"] == want["label_text"]


def test_classify_bad_line_keeps_earlier_results(demo_export):
    lines = _lines("rejection", 3) + ['{"txt": "wrong field"}'] + _lines("rejection", 2)
    proc = _guardrt("classify", "--spec", "rejection", "--model", str(demo_export("rejection")),
                    stdin="\n".join(lines) + "\n")
    assert proc.returncode == 2
    assert len(proc.stdout.splitlines()) == 3
    assert proc.stderr.strip().splitlines() == ['guardrt classify: error: line 4: expected an object with a "text" field']


def test_classify_task_description_and_tokenizer_flags(tmp_path, demo_export, qwen_tokenizer_dir):
    """--tokenizer overrides the export's tokenizer; --task-description changes the model input (and so the
    probabilities) exactly like the preprocess command."""
    task = tmp_path / "task.txt"
    task.write_text("Decide whether the user pushes a romantic scene.", encoding="utf-8")
    stdin = "\n".join(_lines("intent-safety", 2)) + "\n"
    base = ["classify", "--spec", "intent-safety", "--model", str(demo_export("intent-safety"))]
    default = _guardrt(*base, stdin=stdin)
    custom = _guardrt(*base, "--tokenizer", str(qwen_tokenizer_dir), "--task-description", str(task), stdin=stdin)
    assert default.returncode == 0 and custom.returncode == 0, (default.stderr, custom.stderr)
    a = [json.loads(x)["prob_unsafe"] for x in default.stdout.splitlines()]
    b = [json.loads(x)["prob_unsafe"] for x in custom.stdout.splitlines()]
    assert len(a) == len(b) == 2 and a != b


@pytest.mark.parametrize("argv, message", [
    (["classify", "--spec", "rejection", "--model", "/nonexistent/export"], "export directory /nonexistent/export does not exist"),
    (["classify", "--spec", "nope", "--model", "/tmp"], "unknown spec 'nope'"),
    (["export", "--spec", "nope", "--model-dir", "/tmp", "--out", "/tmp/x"], "unknown spec 'nope'"),
    (["export", "--spec", "rejection", "--model-dir", "/nonexistent/ckpt", "--out", "/tmp/x"],
     "model directory /nonexistent/ckpt does not exist"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_cli_wrong_architecture_and_corrupt_dirs(tmp_path, demo_checkpoint, demo_export, capsys):
    import shutil

    assert main(["export", "--spec", "intent-safety", "--model-dir", str(demo_checkpoint("rejection")),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "spec intent-safety needs Qwen3ForSequenceClassification" in err[0]
    assert not (tmp_path / "o" / "guardrt.json").exists()
    # Export dir of the other spec.
    assert main(["classify", "--spec", "intent-safety", "--model", str(demo_export("rejection"))]) == 2
    assert "exported for spec 'rejection', not 'intent-safety'" in capsys.readouterr().err
    # Corrupt manifest, then a truncated model file.
    bad = tmp_path / "bad"
    shutil.copytree(demo_export("rejection"), bad)
    (bad / "guardrt.json").write_text("{")
    assert main(["classify", "--spec", "rejection", "--model", str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().err
    shutil.copyfile(demo_export("rejection") / "guardrt.json", bad / "guardrt.json")
    (bad / "fp32" / "model.onnx").write_bytes(b"\x08\x07garbage")
    assert main(["classify", "--spec", "rejection", "--model", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load ONNX model" in err[0]
    # A non-empty directory that is not an export is never overwritten.
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    assert main(["export", "--spec", "rejection", "--model-dir", str(demo_checkpoint("rejection")),
                 "--out", str(tmp_path / "busy")]) == 2
    assert "not empty and not a guardrt export" in capsys.readouterr().err


def test_classify_gpu_providers_on_a_cpu_only_onnxruntime_fail_in_one_line(demo_export, capsys):
    """`--providers cuda` where onnxruntime has no CUDA provider: one line naming the provider and the extra, before
    any input is read (on a GPU host with onnxruntime-gpu the same flag ran on an H200)."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    assert main(["classify", "--spec", "rejection", "--model", str(demo_export("rejection")), "--providers",
                 "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDAExecutionProvider" in err and "gpu-ort" in err, err


def test_export_cli_writes_a_self_contained_dir(tmp_path, demo_checkpoint, capsys):
    from guardrt.runtime.export_dir import load_export_dir

    out = tmp_path / "exp"
    assert main(["export", "--spec", "rejection", "--model-dir", str(demo_checkpoint("rejection")),
                 "--out", str(out), "--precision", "fp32,int8-dynamic"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out.resolve())
    assert "validating int8-dynamic against PyTorch" in captured.err  # the progress display
    manifest = load_export_dir(out, spec="rejection")
    assert set(manifest.precisions) == {"fp32", "int8-dynamic"}
    assert (out / "tokenizer.json").is_file() and (out / "validation.json").is_file()


def test_export_tensorrt_target_without_gpu_fails_in_one_line(tmp_path, demo_checkpoint, capsys):
    """No GPU here: the ONNX files are written, then one clear line (issue 5's error) and a non-zero exit."""
    pytest.importorskip("guardrt.export.tensorrt")
    out = tmp_path / "trt"
    code = main(["export", "--spec", "rejection", "--model-dir", str(demo_checkpoint("rejection")),
                 "--out", str(out), "--precision", "fp16", "--target", "tensorrt", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert (out / "fp16" / "model.onnx").is_file() and (out / "fp32" / "model.onnx").is_file()


def test_demo_models_command(tmp_path, demo_checkpoint, capsys):
    demo_checkpoint("rejection")  # built once in the cache; the command copies it
    assert main(["demo-models", "--out", str(tmp_path), "--spec", "rejection", "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out.strip())
    assert info["spec"] == "rejection" and info["heldout_accuracy"] >= 0.75
    cfg = json.loads((tmp_path / "rejection" / "config.json").read_text())
    assert cfg["architectures"] == ["RobertaForSequenceClassification"]
    assert cfg["id2label"] == {"0": "NORMAL", "1": "REJECTION"}
    assert (tmp_path / "rejection" / "tokenizer.json").is_file()

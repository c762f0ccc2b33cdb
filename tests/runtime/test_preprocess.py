"""Preprocessing contracts: input validation, the reference's quirks, padding, and the `guardrt preprocess` CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from guardrt.runtime.errors import InputError
from guardrt.runtime.preprocess import DialogueContextPreprocessor, build_preprocessor, pad_batch

from guardrt.export.reference import IntentSafetyReference


@pytest.fixture(scope="module")
def pre(qwen_tokenizer_dir):
    return build_preprocessor("intent-safety", qwen_tokenizer_dir)


@pytest.mark.parametrize("bad", ["a string", {"role": "user"}, 5, None, b"bytes"])
def test_turns_not_a_list_is_a_clear_error(pre, bad):
    with pytest.raises(InputError, match="turns must be a list"):
        pre.encode(bad)


def test_turn_not_a_mapping_names_the_item(pre):
    with pytest.raises(InputError, match=r"turn 1 must be an object"):
        pre.encode([{"role": "user", "content": "hi"}, "oops"])


def test_reference_quirks(pre):
    turns = [
        {"role": "BOT", "content": "  hello  "},  # alias + casing -> assistant, stripped
        {"content": "no role"},  # missing role -> unknown
        {"role": "narrator", "content": None},  # None content -> "None", the reference's str()
        {"role": "you", "content": 42},
        {"role": "user", "content": "   "},  # whitespace-only: dropped
        {"role": "assistant", "content": "trailing bot reply"},  # trailing assistant: dropped
    ]
    assert pre.format_ctx(turns) == "[assistant] hello\n\n[unknown] no role\n\n[unknown] None\n\n[user] 42"


def test_last_eight_turns_kept(pre):
    turns = [{"role": "user", "content": f"turn {i}"} for i in range(12)]
    assert pre.format_turns(turns) == [f"[user] turn {i}" for i in range(4, 12)]


def test_piece_split_is_lossless():
    text = "[user] a\n\nb\n \n c" + " word" * 2000 + "\n[x] " + "y" * 5000
    pieces = DialogueContextPreprocessor.split_pieces(text)
    assert "".join(pieces) == text and len(pieces) > 3


def test_pad_batch_left_and_right():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=1, side="right", length=4)
    assert ids.tolist() == [[5, 6, 7, 1], [8, 1, 1, 1]] and mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert ids.dtype == np.int64
    with pytest.raises(InputError):
        pad_batch([], pad_id=0, side="left")
    with pytest.raises(ValueError):
        pad_batch([[1, 2, 3]], pad_id=0, side="left", length=2)


def test_custom_task_description_from_file(tmp_path, qwen_tokenizer_dir):
    task = tmp_path / "task.txt"
    task.write_text("\n判断 user 意图。\n", encoding="utf-8")
    pre = build_preprocessor("intent-safety", qwen_tokenizer_dir, task.read_text(encoding="utf-8"))
    ref = IntentSafetyReference(qwen_tokenizer_dir, task.read_text(encoding="utf-8"))
    turns = [{"role": "user", "content": "I step closer."}]
    assert pre.encode(turns) == ref.input_ids(turns)
    assert pre.prefix.startswith("任务描述:\n判断 user 意图。\n\nctx:\n")


def _cli(args, stdin):
    return subprocess.run([sys.executable, "-m", "guardrt", "preprocess", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_cli_preprocess_dialogues(qwen_tokenizer_dir, pre):
    lines = [{"turns": [{"role": "user", "content": "hello"}]}, {"turns": []}]
    proc = _cli(["--spec", "intent-safety", "--tokenizer", str(qwen_tokenizer_dir)],
                "".join(json.dumps(x) + "\n" for x in lines))
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["input_ids"] for o in out] == [pre.encode(x["turns"]) for x in lines]


def test_cli_malformed_line_names_it_and_keeps_previous_output(qwen_tokenizer_dir):
    stdin = '{"turns": [{"role": "user", "content": "ok"}]}\n{"turns": [\n{"turns": []}\n'
    proc = _cli(["--spec", "intent-safety", "--tokenizer", str(qwen_tokenizer_dir)], stdin)
    assert proc.returncode != 0
    assert len(proc.stdout.splitlines()) == 1  # line 1 was written before the failure
    assert "line 2" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "line, message",
    [('{"turns": "text"}', "line 1: turns must be a list"),
     ('{"turns": [1]}', "line 1: turn 0 must be an object"),
     ('[1, 2]', 'line 1: expected an object with a "turns" field'),
     ('{"text": "wrong key"}', 'expected an object with a "turns" field')],
)
def test_cli_invalid_payloads(qwen_tokenizer_dir, line, message):
    proc = _cli(["--spec", "intent-safety", "--tokenizer", str(qwen_tokenizer_dir)], line + "\n")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_rejection_texts(roberta_tokenizer_dir):
    proc = _cli(["--spec", "rejection", "--tokenizer", str(roberta_tokenizer_dir)],
                '{"text": "Sorry, I cannot help."}\n{"text": 5}\n')
    assert proc.returncode == 2 and "line 2: text must be a string" in proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["input_ids"][0] == 0  # <s>


def test_cli_missing_tokenizer_and_unknown_spec(tmp_path):
    proc = _cli(["--spec", "intent-safety", "--tokenizer", str(tmp_path)], "")
    assert proc.returncode == 2 and "no tokenizer.json" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli(["--spec", "nope", "--tokenizer", str(tmp_path)], "")
    assert proc.returncode == 2 and "unknown spec 'nope'" in proc.stderr


def test_env_var_twin(qwen_tokenizer_dir):
    import os

    env = dict(os.environ, GUARDRT_SPEC="intent-safety", GUARDRT_TOKENIZER=str(qwen_tokenizer_dir))
    proc = subprocess.run([sys.executable, "-m", "guardrt", "preprocess"], input='{"turns": []}\n',
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["input_ids"]

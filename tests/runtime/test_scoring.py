"""`guardrt score` (single process): the output rows, bad rows kept and marked, Parquet and JSONL both ways,
resuming after a crash, the work-directory rules, Ray worker sizing. Ray itself: tests/runtime/test_ray_scoring.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from guardrt.runtime.errors import InputError
from guardrt.runtime.ray_scoring import plan_workers
from guardrt.runtime.score_engines import EngineConfig, InProcessEngine
from guardrt.runtime.scoring import run_score_job

CARD_FIELDS = {
    "intent-safety": ["label", "label_text", "prob_non_unsafe", "prob_unsafe", "threshold"],
    "rejection": ["label", "label_text", "score", "prob_normal", "prob_rejection"],
}
# Lines that are bad in every way a row can be, with the reason each must be marked with.
BAD_LINES = [
    ("not json", "not valid JSON"),
    ('{"txt": "wrong field"}', 'no "text" field'),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"text": "fine", "label": 1}', "has field(s) label that the output would overwrite"),
    ('{"text": null}', "text must be a string"),
    ('{"text": "lone surrogate \\ud800 here"}', "cannot tokenize"),
]


def _payloads(spec_name, n, seed=5):
    from guardrt.export.synthetic import synthetic_payloads

    return synthetic_payloads(spec_name, n, seed=seed)


def _write_input(path, n, with_bad=True):
    """n good rejection rows (with an `id`), a blank line, and the bad lines spread among them; returns
    {line number: expected error fragment}."""
    lines, bad = [], {}
    for i, text in enumerate(_payloads("rejection", n)):
        lines.append(json.dumps({"id": i, "text": text, "meta": {"source": "test", "n": i}}))
        if with_bad and i % 5 == 2 and len(bad) < len(BAD_LINES):
            line, reason = BAD_LINES[len(bad)]
            lines.append(line)
            bad[len(lines)] = reason
        if i == 3:
            lines.append("")  # blank lines are skipped, but counted in line numbers
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return bad


def _config(export, **kw):
    return EngineConfig(spec="rejection", model=str(export), **kw)


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def rejection_export():
    from guardrt.export.demo_models import cached_demo_export

    return cached_demo_export("rejection", "tiny", ("fp32",))


def test_jsonl_rows_are_input_fields_plus_card_fields(tmp_path, rejection_export):
    from guardrt.runtime.onnxrt import InProcessClassifier

    bad = _write_input(tmp_path / "in.jsonl", 30)
    summary = run_score_job(tmp_path / "in.jsonl", tmp_path / "out.jsonl", _config(rejection_export), chunk_rows=7,
                            progress=False)
    out = _read_jsonl(tmp_path / "out.jsonl")
    assert summary.total_rows == len(out) == 30 + len(BAD_LINES) and summary.bad_rows == len(BAD_LINES)
    assert not (tmp_path / "out.jsonl.parts").exists()
    good = [row for row in out if "error" not in row]
    with InProcessClassifier.from_export_dir(rejection_export) as clf:
        expected = clf.classify([row["text"] for row in good])
    assert [row["id"] for row in good] == list(range(30))  # input order kept
    for row, want in zip(good, expected):
        assert list(row) == ["id", "text", "meta"] + CARD_FIELDS["rejection"]
        assert row["meta"] == {"source": "test", "n": row["id"]}
        assert {k: row[k] for k in CARD_FIELDS["rejection"]} == pytest.approx(want)
    errors = [row["error"] for row in out if "error" in row]
    assert len(errors) == len(bad)
    for error, (lineno, reason) in zip(errors, sorted(bad.items())):
        assert error.startswith(f"line {lineno}: ") and reason in error
    clash = next(row for row in out if "label" in row and "error" in row)
    assert clash["label"] == 1 and clash["text"] == "fine"  # a bad row keeps its fields
    assert any(row.get("text") == "lone surrogate \ud800 here" for row in out)  # kept as written (\\ud800)

    import pyarrow.parquet as pq  # the same rows as Parquet: a bad row whose fields fit no column keeps its error

    run_score_job(tmp_path / "in.jsonl", tmp_path / "out.parquet", _config(rejection_export), chunk_rows=7,
                  progress=False)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("error").to_pylist() == [row.get("error") for row in out]
    assert table.column("id").to_pylist() == [row.get("id") for row in out]


def test_parquet_in_and_out_keep_types_and_match_jsonl(tmp_path, rejection_export):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": i, "text": t, "when": i * 1.5} for i, t in enumerate(_payloads("rejection", 20))]
    rows[4]["text"] = None  # a bad row in a Parquet input
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet", row_group_size=6)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = _config(rejection_export)
    run_score_job(tmp_path / "in.parquet", tmp_path / "out.parquet", cfg, chunk_rows=8, progress=False)
    run_score_job(tmp_path / "in.parquet", tmp_path / "out_from_pq.jsonl", cfg, chunk_rows=8, progress=False)
    run_score_job(tmp_path / "in.jsonl", tmp_path / "out_from_jsonl.parquet", cfg, chunk_rows=5, progress=False)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.names == ["id", "text", "when", *CARD_FIELDS["rejection"], "error"]
    assert table.schema.field("id").type == pa.int64() and table.schema.field("label").type == pa.int64()
    assert table.column("id").to_pylist() == list(range(20))
    assert table.column("error").to_pylist()[4].startswith("row 4: ")
    from_pq, from_jsonl = table.to_pylist(), pq.read_table(tmp_path / "out_from_jsonl.parquet").to_pylist()
    assert from_jsonl[4]["error"] == "line 5: " + from_pq[4]["error"].removeprefix("row 4: ")  # rows: 0-based
    from_jsonl[4]["error"] = from_pq[4]["error"]
    assert from_jsonl == from_pq
    as_jsonl = _read_jsonl(tmp_path / "out_from_pq.jsonl")
    assert [{k: v for k, v in r.items() if v is not None} for r in table.to_pylist()] == \
           [{k: v for k, v in r.items() if v is not None} for r in as_jsonl]


def test_crash_then_resume_scores_only_unfinished_chunks(tmp_path, rejection_export, monkeypatch):
    _write_input(tmp_path / "in.jsonl", 40)
    cfg = _config(rejection_export)
    run_score_job(tmp_path / "in.jsonl", tmp_path / "clean.jsonl", cfg, chunk_rows=6, progress=False)
    real_score = InProcessEngine.score
    calls = []

    def crash_on_fourth(self, payloads):
        calls.append(len(payloads))
        if len(calls) == 4:
            raise RuntimeError("simulated crash")
        return real_score(self, payloads)

    monkeypatch.setattr(InProcessEngine, "score", crash_on_fourth)
    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_score_job(tmp_path / "in.jsonl", out, cfg, chunk_rows=6, progress=False)
    parts = sorted(p.name for p in (tmp_path / "out.jsonl.parts").glob("part-*"))
    assert parts == ["part-000000.jsonl", "part-000001.jsonl", "part-000002.jsonl"] and not out.exists()
    # A crash in the middle of writing a part leaves only a temporary file: not finished, redone.
    (tmp_path / "out.jsonl.parts" / ".tmp-1-part-000003.jsonl").write_text('{"half": ', encoding="utf-8")
    monkeypatch.setattr(InProcessEngine, "score", real_score)
    summary = run_score_job(tmp_path / "in.jsonl", out, cfg, chunk_rows=6, progress=False)
    assert summary.state == "resume" and summary.chunks_kept == 3
    assert summary.chunks_scored == len(range(0, 45, 6)) - 3
    assert out.read_bytes() == (tmp_path / "clean.jsonl").read_bytes()
    again = run_score_job(tmp_path / "in.jsonl", out, cfg, chunk_rows=6, progress=False)
    assert again.state == "done" and again.rows_scored == 0


def test_work_dir_of_another_job_is_refused(tmp_path, rejection_export, monkeypatch):
    _write_input(tmp_path / "in.jsonl", 12, with_bad=False)
    cfg = _config(rejection_export)
    monkeypatch.setattr(InProcessEngine, "score", lambda self, payloads: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run_score_job(tmp_path / "in.jsonl", tmp_path / "out.jsonl", cfg, chunk_rows=4, progress=False)
    monkeypatch.undo()
    with pytest.raises(InputError, match="holds parts of another job .*threshold"):
        run_score_job(tmp_path / "in.jsonl", tmp_path / "out.jsonl", _config(rejection_export, threshold=0.9),
                      chunk_rows=4, progress=False)
    with pytest.raises(InputError, match="chunk_rows"):
        run_score_job(tmp_path / "in.jsonl", tmp_path / "out.jsonl", cfg, chunk_rows=5, progress=False)
    summary = run_score_job(tmp_path / "in.jsonl", tmp_path / "out.jsonl", cfg, chunk_rows=5, overwrite=True,
                            progress=False)
    assert summary.state == "new" and len(_read_jsonl(tmp_path / "out.jsonl")) == 12


def test_cli_contract_intent_safety_turns(tmp_path):
    """The contract other tools rely on: `guardrt score --spec S --model EXPORT_DIR --input IN --output OUT`."""
    from guardrt.export.demo_models import cached_demo_export

    export = cached_demo_export("intent-safety", "tiny", ("fp32",))
    dialogues = _payloads("intent-safety", 9)
    lines = [json.dumps({"conv_id": f"c{i}", "turns": d}, ensure_ascii=False) for i, d in enumerate(dialogues)]
    lines.insert(4, json.dumps({"conv_id": "bad", "turns": "not a list"}))
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "guardrt", "score", "--spec", "intent-safety", "--model", str(export),
                           "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GUARDRT_CHUNK_ROWS": "4"})
    assert proc.returncode == 0, proc.stderr
    out = _read_jsonl(tmp_path / "out.jsonl")
    assert [r["conv_id"] for r in out] == [json.loads(line)["conv_id"] for line in lines]
    assert out[4]["error"].startswith("line 5: ") and set(out[4]) == {"conv_id", "turns", "error"}
    for row in out[:4] + out[5:]:
        assert list(row) == ["conv_id", "turns", *CARD_FIELDS["intent-safety"]]
    assert "[guardrt] scoring [" in proc.stderr and "10/10 rows (100%)" in proc.stderr
    assert "wrote " in proc.stderr and "1 marked with an error" in proc.stderr


def test_cli_one_line_errors(tmp_path, rejection_export):
    proc = subprocess.run([sys.executable, "-m", "guardrt", "score", "--spec", "rejection", "--model",
                           str(rejection_export), "--input", str(tmp_path / "missing.jsonl"), "--output",
                           str(tmp_path / "out.jsonl")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"guardrt score: error: input {tmp_path / 'missing.jsonl'} does not exist (or is not a file)"]
    (tmp_path / "in.txt").write_text('{"text": "x"}\n')
    proc = subprocess.run([sys.executable, "-m", "guardrt", "score", "--spec", "rejection", "--url",
                           "127.0.0.1:1", "--tokenizer", str(rejection_export), "--input", str(tmp_path / "in.txt"),
                           "--output", str(tmp_path / "out.jsonl"), "--input-format", "jsonl"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "127.0.0.1:1" in proc.stderr and "Traceback" not in proc.stderr


def test_url_env_twin_is_a_list_the_command_line_replaces(monkeypatch):
    from guardrt.cli import build_parser

    monkeypatch.setenv("GUARDRT_URL", "10.0.0.1:8001, 10.0.0.2:8001")
    base = ["score", "--spec", "rejection", "--input", "a.jsonl", "--output", "b.jsonl"]
    assert build_parser().parse_args(base).url == ["10.0.0.1:8001", "10.0.0.2:8001"]
    assert build_parser().parse_args(base + ["--url", "h:1", "--url", "h:2"]).url == ["h:1", "h:2"]
    assert build_parser().parse_args(base + ["--ray"]).ray == "local"
    assert build_parser().parse_args(base + ["--ray", "10.0.0.1:6379"]).ray == "10.0.0.1:6379"


def test_payload_field_comes_from_the_preprocessor_kind():
    from guardrt.runtime.payloads import payload_field

    assert payload_field("intent-safety") == "turns" and payload_field("rejection") == "text"


# -- Ray worker sizing (pure) -------------------------------------------------------------------------------------
@pytest.mark.parametrize("resources, kwargs, want", [
    # CPU engine: one single-threaded actor per CPU (2 CPUs here); threads=2 -> one actor of 2 threads
    ({"CPU": 2.0}, {}, (2, 1, 0, 1)),
    ({"CPU": 2.0}, {"threads": 2}, (1, 2, 0, 2)),
    ({"CPU": 64.0, "GPU": 8.0}, {"threads": 4}, (16, 4, 0, 4)),
    ({"CPU": 2.0}, {"workers": 1}, (1, 1, 0, 1)),
    ({"CPU": 16.0}, {"pending_chunks": 3}, (3, 1, 0, 1)),  # never more actors than chunks
    # GPU engine: one actor per GPU, whatever the CPUs
    ({"CPU": 96.0, "GPU": 8.0}, {"uses_gpu": True}, (8, 1, 1, None)),
    ({"CPU": 96.0, "GPU": 8.0}, {"uses_gpu": True, "workers": 2}, (2, 1, 1, None)),
    ({"CPU": 8.0, "GPU": 1.5}, {"uses_gpu": True}, (1, 1, 1, None)),
    # Triton: client actors, 4 per URL, at most one per CPU
    ({"CPU": 32.0}, {"engine": "triton", "urls": 3}, (12, 1, 0, None)),
    ({"CPU": 2.0}, {"engine": "triton", "urls": 3}, (2, 1, 0, None)),
])
def test_plan_workers(resources, kwargs, want):
    args = {"engine": "onnx", "pending_chunks": 1000, **kwargs}
    plan = plan_workers(resources, **args)
    assert (plan.actors, plan.cpus_per_actor, plan.gpus_per_actor, plan.threads_per_actor) == want


def test_plan_workers_refuses_what_cannot_fit():
    from guardrt.runtime.errors import GuardrtError

    with pytest.raises(GuardrtError, match="has none"):
        plan_workers({"CPU": 8.0}, engine="onnx", uses_gpu=True, pending_chunks=10)
    with pytest.raises(InputError, match="one actor per GPU"):
        plan_workers({"CPU": 8.0, "GPU": 2.0}, engine="onnx", uses_gpu=True, pending_chunks=10, workers=3)
    with pytest.raises(InputError, match="workers must be >= 1"):
        plan_workers({"CPU": 8.0}, engine="onnx", pending_chunks=10, workers=0)

"""The Qwen3Guard-Stream Triton model as `guardrt repo` writes it (config parsed with Triton's protobuf; the server
itself is exercised in tests/triton/test_triton_stream.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def stream_export():
    from guardrt.export.demo_stream_models import cached_stream_export

    return cached_stream_export("tiny", ("fp32",))


def test_guardrt_repo_writes_the_sequence_batcher_model(stream_export, tmp_path, capsys):
    from guardrt.cli import main
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.triton_repo import parse_config

    assert main(["repo", "--model", str(stream_export), "--out", str(tmp_path), "--stream-idle-timeout-s", "5",
                 "--max-streams", "12"]) == 0
    model = tmp_path / "qwen3guard-stream"
    cfg = parse_config((model / "config.pbtxt").read_text())
    seq = cfg.sequence_batching
    assert cfg.backend == "python" and cfg.max_batch_size == 32
    assert seq.max_sequence_idle_microseconds == 5_000_000 and seq.oldest.max_candidate_sequences == 12
    assert [c.name for c in seq.control_input] == ["START", "END", "CORRID"]
    assert cfg.input[0].allow_ragged_batch and [o.name for o in cfg.output] == \
        ["risk", "category", "flag", "stream_bytes", "live_streams", "error"]
    assert cfg.parameters["max_streams"].string_value == "12"
    version = load_export_dir(model / "1", spec="qwen3guard-stream")  # the backend loads 1/ as an export
    assert version.precisions["fp32"].name == "model.onnx" and (model / "1" / "model.py").is_file()


def test_repo_refuses_a_wrong_spec_or_flavor(stream_export, tmp_path):
    from guardrt.cli import main

    assert main(["repo", "--model", str(stream_export), "--out", str(tmp_path), "--spec", "rejection"]) == 2
    assert main(["repo", "--model", str(stream_export), "--out", str(tmp_path), "--flavor", "onnxruntime"]) == 2

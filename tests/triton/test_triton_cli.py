"""`guardrt classify --url` against the real server: same lines in, same results out as in-process `classify`."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import SPECS

pytestmark = pytest.mark.triton


def _classify(args, stdin):
    proc = subprocess.run([sys.executable, "-m", "guardrt", "classify", *args], input=stdin, capture_output=True,
                          text=True, timeout=120)
    return proc


@pytest.mark.parametrize("spec_name", SPECS)
def test_classify_over_grpc_matches_in_process(spec_name, triton_server, demo_exports):
    from guardrt.export.synthetic import synthetic_payloads

    key = "turns" if spec_name == "intent-safety" else "text"
    lines = "".join(json.dumps({key: p}) + "\n" for p in synthetic_payloads(spec_name, 10, seed=3))
    export = str(demo_exports[spec_name])
    local = _classify(["--spec", spec_name, "--model", export], lines)
    remote = _classify(["--spec", spec_name, "--url", triton_server.grpc_url, "--tokenizer", export], lines)
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    local_rows = [json.loads(x) for x in local.stdout.splitlines()]
    remote_rows = [json.loads(x) for x in remote.stdout.splitlines()]
    assert len(remote_rows) == len(local_rows) == 10
    for a, b in zip(local_rows, remote_rows):
        assert set(a) == set(b) and a["label"] == b["label"] and a["label_text"] == b["label_text"]
        for k, v in a.items():
            if isinstance(v, float):
                assert abs(v - b[k]) < 1e-5, (k, v, b[k])


def test_classify_url_errors_are_one_line(triton_server, demo_exports):
    from guardrt.runtime.server import free_port

    export = str(demo_exports["rejection"])
    down = f"127.0.0.1:{free_port()}"
    proc = _classify(["--spec", "rejection", "--url", down, "--tokenizer", export], '{"text": "hi"}\n')
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"guardrt classify: error: Triton server at {down} is not reachable")
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = _classify(["--spec", "rejection", "--url", triton_server.grpc_url, "--tokenizer", export,
                      "--model-name", "absent"], '{"text": "hi"}\n')
    assert proc.returncode == 2 and "model 'absent' is not ready" in proc.stderr
    # A malformed line stops the run with its line number, after the lines before it are answered (as in-process).
    proc = _classify(["--spec", "rejection", "--url", triton_server.grpc_url, "--tokenizer", export],
                     '{"text": "fine"}\n{"text": 5}\n')
    assert proc.returncode == 2 and "line 2" in proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and "label" in json.loads(proc.stdout)

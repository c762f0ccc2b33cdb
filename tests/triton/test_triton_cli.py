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


@pytest.mark.slow
def test_long_inputs_finish_under_a_deadline_that_one_big_request_misses(triton_server, demo_exports):
    """The issue's failure (40 dialogues of ~4,088 tokens: `classify --url` exceeded its 30 s deadline because 16
    long rows went in one request) at a smaller scale, with the deadline scaled to this machine's speed: D = 3 x the
    time of one long row. One request of all 6 rows (the old sizing) misses D; `guardrt classify --url --timeout D`
    sizes requests to the deadline (<= max_length tokens each, < max_length more in flight) and completes."""
    import time

    import numpy as np

    from guardrt.export.synthetic import long_payload
    from guardrt.runtime.errors import ServerError
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.onnxrt import OnnxRunner
    from guardrt.runtime.postprocess import postprocess
    from guardrt.runtime.specs import get_spec
    from guardrt.runtime.triton_client import TritonClassifier

    spec = get_spec("intent-safety")
    export = str(demo_exports[spec.name])
    payloads = [long_payload(spec.name, seed=s) for s in range(6)]
    url = triton_server.grpc_url
    with TritonClassifier(url, spec, export) as client:
        ids = [client.preprocessor.encode(p) for p in payloads]
        assert min(len(s) for s in ids) >= spec.max_length - 16
        times = []
        for s in ids[:3]:  # the first one warms up
            t = time.perf_counter()
            client.logits_for_ids([s])
            times.append(time.perf_counter() - t)
        deadline = 3 * min(times[1:])
    print(f"\none {len(ids[0])}-token row over gRPC: {min(times[1:]):.2f}s -> deadline {deadline:.2f}s")

    lines = "".join(json.dumps({"turns": p}) + "\n" for p in payloads)
    t = time.perf_counter()
    proc = _classify(["--spec", spec.name, "--url", url, "--tokenizer", export, "--timeout", f"{deadline:.3f}"], lines)
    print(f"guardrt classify --url --timeout {deadline:.2f}: exit {proc.returncode} in {time.perf_counter() - t:.1f}s")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(rows) == len(payloads)
    with OnnxRunner(load_export_dir(export).model_path("fp32")) as runner:
        ref = postprocess(spec, runner.infer({"input_ids": np.array([ids[-1]]),
                                              "attention_mask": np.ones((1, len(ids[-1])), np.int64)})["logits"])
    assert rows[-1]["label"] == ref[0]["label"] and abs(rows[-1]["prob_unsafe"] - ref[0]["prob_unsafe"]) < 1e-4

    # The old sizing: up to max_batch_size rows per request, so all 6 long rows in one request.
    with TritonClassifier(url, spec, timeout_s=deadline, retries=0, flavor="python",
                          max_request_tokens=spec.max_batch_size * spec.max_length) as big:
        before = int(big.statistics()["model_stats"][0].get("inference_count", 0))
        with pytest.raises(ServerError, match="exceeded its .*s deadline"):
            big.logits_for_ids(ids)
        # The server still finishes the abandoned request; wait for it so later tests find the server idle.
        for _ in range(600):
            if int(big.statistics()["model_stats"][0].get("inference_count", 0)) - before >= len(ids):
                break
            time.sleep(0.2)

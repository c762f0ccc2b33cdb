"""FlexGuard on the real tritonserver (tiny demo model): `guardrt repo` writes `flexguard-generate`, the thin client
and `guardrt classify --url` give the in-process results (tokens, category, score, text; the expected score from
the server's score requests within float32 of in process), concurrent clients share the decode steps, and a bad
request fails alone."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def flex_export():
    from guardrt.export.demo_models import cached_guard_export

    return cached_guard_export("tiny", ("fp32",), spec="flexguard")


@pytest.fixture(scope="module")
def requests_():
    from guardrt.export.flexguard_synthetic import flexguard_requests
    from guardrt.export.synthetic import SPLIT_SEEDS

    return flexguard_requests(9, seed=SPLIT_SEEDS["heldout"] + 11)


@pytest.fixture(scope="module")
def local(flex_export, requests_):
    from guardrt.runtime.flexguard_engine import FlexGuardClassifier

    with FlexGuardClassifier(flex_export, intra_op_threads=1) as clf:
        return clf.classify_batch(requests_)


@pytest.fixture(scope="module")
def flex_server(tmp_path_factory, flex_export):
    from guardrt.runtime.server import TritonServer, free_port

    repo = tmp_path_factory.mktemp("flex_repo")
    proc = subprocess.run([sys.executable, "-m", "guardrt", "repo", "--model", str(flex_export), "--out", str(repo),
                           "--intra-op-threads", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (repo / "flexguard-generate" / "config.pbtxt").is_file() and len(list(repo.iterdir())) == 1
    server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server.start()
    yield server
    log = server.log_text()
    server.stop()
    print(log[-2000:])


def _same(got, want):
    assert {k: got[k] for k in ("category", "risk_score", "decision", "well_formed", "text", "threshold")} == {
        k: want[k] for k in ("category", "risk_score", "decision", "well_formed", "text", "threshold")}
    if want["expected_risk"] is None:
        assert got["expected_risk"] is None
    else:  # the score row travels as float32
        assert got["expected_risk"] == pytest.approx(want["expected_risk"], abs=1e-4)
        assert got["p_unsafe"] == pytest.approx(want["p_unsafe"], abs=1e-5)
        assert got["score_consistent"] == want["score_consistent"]


def test_concurrent_clients_get_in_process_results(flex_server, flex_export, requests_, local):
    from guardrt.runtime.guard_client import TritonFlexGuardClient

    got: dict[int, list] = {}

    def worker(k):  # three clients, each with its own stream, decoding together on the server
        with TritonFlexGuardClient(flex_server.grpc_url, flex_export) as client:
            got[k] = client.classify_batch(requests_[k::3])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = [None] * len(requests_)
    for k in range(3):
        merged[k::3] = got[k]
    assert any(w["expected_risk"] is not None for w in local)
    for g, w in zip(merged, local):
        _same(g, w)


def test_bad_items_fail_alone(flex_server, flex_export, requests_, local):
    from guardrt.runtime.triton_generate import TritonGenerateClient
    from guardrt.runtime.guard_client import TritonFlexGuardClient

    with TritonFlexGuardClient(flex_server.grpc_url, flex_export, strictness="strict") as client:
        out = client.classify_batch([requests_[0], {"user": 3}, requests_[1]])
        assert out[1]["error"].startswith('item 1: "user" must be a string')
        assert out[0]["threshold"] == 20 and out[0]["text"] == local[0]["text"]
    with TritonGenerateClient(flex_server.grpc_url, "flexguard-generate") as raw:
        outcomes = raw.score_each([[5, 6, 7], [999999]])
        assert outcomes[0][1] is None and len(outcomes[0][0]) == 103
        assert outcomes[1][0] is None and "outside the vocabulary" in outcomes[1][1]
        verdict = raw.verdict_each([[5, 6, 7]])
        assert verdict[0][0] is None and "verdict requests are Qwen3Guard-Gen's" in verdict[0][1]


def test_classify_cli_over_url(flex_server, flex_export, requests_, local):
    lines = "\n".join(json.dumps(r) for r in requests_[:4]) + "\n"
    proc = subprocess.run([sys.executable, "-m", "guardrt", "classify", "--spec", "flexguard", "--url",
                           flex_server.grpc_url, "--tokenizer", str(flex_export)],
                          input=lines, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for line, want in zip(proc.stdout.splitlines(), local[:4]):
        _same(json.loads(line), want)

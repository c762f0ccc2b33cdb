"""`guardrt score --url` against the real server: the in-process rows, with the requests spread over the URLs (one
replicated client, least outstanding requests first);
a server that stops answering leaves the chunk unfinished (resumable) instead of marking its rows bad."""
from __future__ import annotations

import json

import pytest

from .conftest import SPECS

pytestmark = pytest.mark.triton


def _write(path, spec_name, n):
    from guardrt.export.synthetic import synthetic_payloads
    from guardrt.runtime.payloads import payload_field

    key = payload_field(spec_name)
    lines = [json.dumps({"n": i, key: p}, ensure_ascii=False) for i, p in enumerate(synthetic_payloads(spec_name, n, seed=4))]
    lines.insert(3, json.dumps({"n": -1, key: 12345 if key == "text" else "not a list"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("spec_name", SPECS)
def test_score_over_two_urls_matches_in_process(spec_name, tmp_path, triton_server, demo_exports, monkeypatch):
    from guardrt.runtime.score_engines import EngineConfig
    from guardrt.runtime.scoring import run_score_job
    from guardrt.runtime.triton_replicas import ReplicaSet

    _write(tmp_path / "in.jsonl", spec_name, 24)
    export = str(demo_exports[spec_name])
    run_score_job(tmp_path / "in.jsonl", tmp_path / "local.jsonl", EngineConfig(spec=spec_name, model=export),
                  chunk_rows=10, progress=False)
    answered: dict[str, int] = {}
    real = ReplicaSet.release

    def counting(self, replica, ok):
        answered[replica.url] = answered.get(replica.url, 0) + ok
        return real(self, replica, ok)

    monkeypatch.setattr(ReplicaSet, "release", counting)
    url = triton_server.grpc_url
    urls = (url, url.replace("127.0.0.1", "localhost"))
    cfg = EngineConfig(spec=spec_name, tokenizer=export, urls=urls)
    run_score_job(tmp_path / "in.jsonl", tmp_path / "remote.jsonl", cfg, chunk_rows=10, progress=False)
    assert sorted(answered) == sorted(urls) and all(answered.values())  # both URLs answered requests
    local = [json.loads(x) for x in (tmp_path / "local.jsonl").read_text().splitlines()]
    remote = [json.loads(x) for x in (tmp_path / "remote.jsonl").read_text().splitlines()]
    assert len(remote) == len(local) == 25
    for a, b in zip(local, remote):
        assert list(a) == list(b) and a.get("label") == b.get("label") and a.get("error") == b.get("error")
        for k, v in a.items():
            if isinstance(v, float):
                assert abs(v - b[k]) < 1e-5, (k, v, b[k])
    assert remote[3]["error"].startswith("line 4: ")


def test_server_failure_leaves_the_chunk_unfinished(tmp_path, triton_server, demo_exports, monkeypatch):
    from guardrt.runtime.errors import ServerError
    from guardrt.runtime.score_engines import EngineConfig
    from guardrt.runtime.scoring import run_score_job
    from guardrt.runtime.triton_client import TritonClassifier

    _write(tmp_path / "in.jsonl", "rejection", 20)
    cfg = EngineConfig(spec="rejection", tokenizer=str(demo_exports["rejection"]), urls=(triton_server.grpc_url,))
    real, calls = TritonClassifier.logits_for_ids, []

    def fails_second_time(self, sequences):
        calls.append(1)
        if len(calls) == 2:
            raise ServerError(f"Triton server at {self.url} is not reachable (inference: simulated)")
        return real(self, sequences)

    monkeypatch.setattr(TritonClassifier, "logits_for_ids", fails_second_time)
    with pytest.raises(ServerError, match="not reachable"):
        run_score_job(tmp_path / "in.jsonl", tmp_path / "out.jsonl", cfg, chunk_rows=8, progress=False)
    assert [p.name for p in (tmp_path / "out.jsonl.parts").glob("part-*")] == ["part-000000.jsonl"]
    monkeypatch.setattr(TritonClassifier, "logits_for_ids", real)
    summary = run_score_job(tmp_path / "in.jsonl", tmp_path / "out.jsonl", cfg, chunk_rows=8, progress=False)
    assert summary.chunks_kept == 1 and summary.chunks_scored == 2
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 21 and [i for i, r in enumerate(rows) if "error" in r] == [3]  # only the really bad row


@pytest.mark.slow
def test_ray_actors_holding_triton_clients(tmp_path, triton_server, demo_exports):
    """`--ray --url`: each actor holds Triton clients; the output equals the single-process `--url` run."""
    import os
    import subprocess
    import sys

    pytest.importorskip("ray", reason="ray comes with the scale extra")
    _write(tmp_path / "in.jsonl", "rejection", 30)
    common = ["--spec", "rejection", "--url", triton_server.grpc_url, "--tokenizer", str(demo_exports["rejection"]),
              "--input", str(tmp_path / "in.jsonl"), "--chunk-rows", "8", "--no-progress"]
    runs = {}
    for name, extra in (("single", []), ("ray", ["--ray", "--workers", "2"])):
        proc = subprocess.run([sys.executable, "-m", "guardrt", "score", *common, "--output",
                               str(tmp_path / f"{name}.jsonl"), *extra], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        assert proc.returncode == 0, proc.stderr
        runs[name] = (tmp_path / f"{name}.jsonl").read_text()
    assert "on Ray (2 actor(s) x (1 CPU))" in proc.stderr
    single, ray = ([json.loads(x) for x in runs[k].splitlines()] for k in ("single", "ray"))
    assert len(single) == len(ray) == 31
    for a, b in zip(single, ray):  # the server may batch rows differently: floats within 1e-5
        assert list(a) == list(b) and all(v == pytest.approx(b[k], abs=1e-5) if isinstance(v, float) else v == b[k]
                                          for k, v in a.items())

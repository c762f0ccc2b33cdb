"""`guardrt score --ray`: the same rows as the single-process run, on a real Ray cluster (`ray start --head` on
127.0.0.1, started and stopped here) and on the local instance `--ray` starts and stops by itself."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("ray", reason="ray comes with the scale extra")

RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}  # loopback only, no reporting


def _free_port() -> int:
    from guardrt.runtime.server import free_port

    return free_port()


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` bound to 127.0.0.1 in its own process group and temp dir; the group is ended by its id."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="grray-", dir="/tmp")  # short: Ray's socket paths live under it
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={port}", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
           "--num-cpus=2", "--object-store-memory=200000000"]
    log = open(Path(temp_dir) / "head.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **RAY_ENV})
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited with {proc.returncode}: {(Path(temp_dir) / 'head.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the Ray head did not listen within 90 s")
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        log.close()
        subprocess.run(["rm", "-rf", temp_dir], check=False)


def _score(*args, env=None):
    return subprocess.run([sys.executable, "-m", "guardrt", "score", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **RAY_ENV, **(env or {})})


def _input(tmp_path) -> Path:
    from guardrt.export.synthetic import synthetic_payloads

    lines = [json.dumps({"id": i, "text": t}) for i, t in enumerate(synthetic_payloads("rejection", 60, seed=9))]
    lines[17:17] = ["not json", '{"txt": "no text field"}']
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_ray_cluster_gives_the_single_process_rows(tmp_path, ray_head):
    import pyarrow.parquet as pq

    from guardrt.export.demo_models import cached_demo_export

    export = str(cached_demo_export("rejection", "tiny", ("fp32",)))
    src = _input(tmp_path)
    common = ["--spec", "rejection", "--model", export, "--input", str(src), "--chunk-rows", "8", "--no-progress"]
    single = _score(*common, "--output", str(tmp_path / "single.jsonl"))
    assert single.returncode == 0, single.stderr
    on_ray = _score(*common, "--output", str(tmp_path / "ray.jsonl"), "--ray", ray_head, "--workers", "2")
    assert on_ray.returncode == 0, on_ray.stderr
    assert "on Ray (2 actor(s) x (1 CPU, 1 ORT thread(s)))" in on_ray.stderr
    on_ray_pq = _score(*common, "--output", str(tmp_path / "ray.parquet"), "--ray", ray_head)
    assert on_ray_pq.returncode == 0, on_ray_pq.stderr

    rows = [json.loads(line) for line in (tmp_path / "single.jsonl").read_text().splitlines()]
    ray_rows = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert len(rows) == 62 and sum("error" in r for r in rows) == 2
    assert ray_rows == rows  # row for row, every field, exact floats
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "single.jsonl").read_bytes()
    pq_rows = [{k: v for k, v in r.items() if v is not None} for r in pq.read_table(tmp_path / "ray.parquet").to_pylist()]
    assert pq_rows == [{k: v for k, v in r.items() if v is not None} for r in rows]  # fields of bad rows too
    assert not (tmp_path / "ray.jsonl.parts").exists() and not (tmp_path / "ray.parquet.parts").exists()


def test_local_ray_instance_resumes_a_single_process_job(tmp_path, monkeypatch):
    """`--ray` with no address starts a local instance and stops it; parts are parts, whoever wrote them: a job
    interrupted in this process is finished on Ray, byte for byte the uninterrupted output."""
    from guardrt.export.demo_models import cached_demo_export
    from guardrt.runtime.score_engines import EngineConfig, InProcessEngine
    from guardrt.runtime.scoring import run_score_job

    export = str(cached_demo_export("rejection", "tiny", ("fp32",)))
    src = _input(tmp_path)
    cfg = EngineConfig(spec="rejection", model=export)
    run_score_job(src, tmp_path / "clean.jsonl", cfg, chunk_rows=8, progress=False)
    real, calls = InProcessEngine.score, []

    def interrupted_at_third(self, payloads):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, payloads)

    monkeypatch.setattr(InProcessEngine, "score", interrupted_at_third)
    with pytest.raises(KeyboardInterrupt):
        run_score_job(src, tmp_path / "out.jsonl", cfg, chunk_rows=8, progress=False)
    proc = _score("--spec", "rejection", "--model", export, "--input", str(src), "--output",
                  str(tmp_path / "out.jsonl"), "--chunk-rows", "8", "--no-progress", "--ray")
    assert proc.returncode == 0, proc.stderr
    assert "2 chunk(s) kept from an earlier run" in proc.stderr
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "clean.jsonl").read_bytes()

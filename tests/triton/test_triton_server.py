"""The server launcher against the real binary: load failures show Triton's reason; `guardrt serve` stops cleanly,
stops at once when signalled during startup, and never leaves Triton or its python stubs behind when it is killed."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guardrt.runtime.errors import ServerError

pytestmark = pytest.mark.triton


def test_a_model_that_fails_to_load_reports_tritons_reason(tmp_path):
    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.triton_repo import write_model

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an ONNX protobuf")
    repo = tmp_path / "repo"
    write_model(repo, spec="rejection", onnx_path=broken)
    server = TritonServer(repo, grpc_port=free_port(), http_port=None, metrics_port=None, startup_timeout_s=120,
                          log_path=tmp_path / "triton.log")
    with pytest.raises(ServerError) as err:
        server.start()
    message = str(err.value)
    print("\n" + message)
    assert "model 'rejection' failed to load" in message
    assert "onnx" in message.lower() or "protobuf" in message.lower()  # Triton's / ORT's own reason
    assert "\n" not in message
    assert not server.is_running()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_guardrt_serve_starts_and_stops_cleanly_on_a_signal(triton_repo, sig):
    from guardrt.runtime.server import free_port
    from guardrt.runtime.triton_client import TritonClassifier

    grpc_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "guardrt", "serve", "--repo", str(triton_repo), "--grpc-port", str(grpc_port),
         "--http-port", "0", "--metrics-port", "0", "--models", "rejection"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        # A client started with the server rides out UNAVAILABLE with backoff until Triton is up.
        with TritonClassifier(f"127.0.0.1:{grpc_port}", "rejection", retries=12, backoff_s=0.05) as early:
            early.check_ready()
            assert early.retried >= 1
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "ready in" in line:
                break
        assert any(f"gRPC 127.0.0.1:{grpc_port}" in ln for ln in lines), lines
        with TritonClassifier(f"127.0.0.1:{grpc_port}", "rejection") as client:
            client.check_ready()
            assert client.classify_ids([[0, 100, 2]])[0]["label_text"] in ("NORMAL", "REJECTION")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"{sig.name} received, stopping Triton" in out and "stopped (tritonserver exit code 0)" in out
    # Triton is gone: nothing listens on the port any more.
    from guardrt.runtime.server import port_is_free

    assert port_is_free(grpc_port)


def test_serve_cli_reports_a_missing_repository_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "guardrt", "serve", "--repo", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("guardrt serve: error: model repository")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_native_flavor_without_its_backend_names_the_missing_backend(tmp_path, demo_exports):
    """The wheel ships only the python backend: an onnxruntime-flavor repository (meant for NVIDIA's container)
    fails to load here with Triton's own reason, in one line."""
    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.triton_repo import write_model

    repo = tmp_path / "repo"
    write_model(repo, export_dir=demo_exports["rejection"], flavor="onnxruntime", providers="cpu")
    server = TritonServer(repo, grpc_port=free_port(), http_port=None, metrics_port=None, startup_timeout_s=120,
                          log_path=tmp_path / "triton.log")
    with pytest.raises(ServerError, match="model 'rejection' failed to load: .*onnxruntime") as err:
        server.start()
    print("\n" + str(err.value))
    assert "\n" not in str(err.value)


# -- shutdown: real processes, watched with psutil -------------------------------------------------------------------
SLOW_MODEL = """
import time


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(600)  # a model that takes minutes to load (a big checkpoint): the server is never ready

    def execute(self, requests):
        return []
"""


def _slow_repo(root: Path) -> Path:
    model = root / "slow"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "slow"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "x" data_type: TYPE_INT64 dims: [ 1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_INT64 dims: [ 1 ] } ]\n'
        'instance_group [ { count: 1 kind: KIND_CPU } ]\n')
    (model / "1" / "model.py").write_text(SLOW_MODEL)
    return root


def _serve(repo: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    from guardrt.runtime.server import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "guardrt", "serve", "--repo", str(repo), "--grpc-port", str(port), "--http-port", "0",
         "--metrics-port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, port


def _triton_tree(serve_pid: int, want_stubs: int, timeout_s: float = 120.0) -> list:
    """[tritonserver, its stubs...] (psutil) once `guardrt serve` runs Triton and Triton runs `want_stubs` stubs."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        triton = [c for c in psutil.Process(serve_pid).children() if c.name() == "tritonserver"]
        if triton:
            stubs = [c for c in triton[0].children(recursive=True) if "stub" in c.name()]
            if len(stubs) >= want_stubs:
                return [triton[0], *stubs]
        time.sleep(0.1)
    raise AssertionError(f"guardrt serve did not start tritonserver with {want_stubs} stub(s) in {timeout_s:.0f}s")


def _gone_within(procs: list, timeout_s: float) -> float:
    """Seconds until every process in `procs` has exited (a zombie counts as exited); AssertionError otherwise."""
    import psutil

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"still running {timeout_s:.0f}s later: {[(p.pid, p.name()) for p in alive]}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_startup_stops_triton_at_once(tmp_path, sig):
    """Triton is loading a model that would take 10 minutes: Ctrl-C / SIGTERM stops it now, not when ready."""
    from guardrt.runtime.server import port_is_free

    proc, port = _serve(_slow_repo(tmp_path / "repo"), "--startup-timeout", "900")
    try:
        tree = _triton_tree(proc.pid, want_stubs=1)
        time.sleep(0.5)  # inside the model's initialize
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        serve_s = time.monotonic() - t0
        gone_s = _gone_within(tree, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"\n{sig.name} during startup: guardrt serve exited in {serve_s:.2f}s, Triton + stub gone in {gone_s:.2f}s")
    assert proc.returncode == 0, out
    assert f"{sig.name} received during startup, Triton stopped" in out
    assert serve_s < 10
    assert port_is_free(port)


@pytest.mark.parametrize("phase", ["ready", "starting"])
def test_killed_serve_never_leaves_triton_or_its_stubs(tmp_path, triton_repo, phase):
    """SIGKILL of `guardrt serve` (no handler runs): Triton and every python stub still go down, within seconds
    (the kernel's parent-death signal and the watchdog on the process group)."""
    import psutil

    from guardrt.runtime.server import port_is_free

    if phase == "ready":
        proc, port = _serve(triton_repo, "--models", "rejection")
        tree = _triton_tree(proc.pid, want_stubs=1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "ready in" not in (proc.stdout.readline() or "ready in"):
            pass
    else:
        proc, port = _serve(_slow_repo(tmp_path / "repo"), "--startup-timeout", "900")
        tree = _triton_tree(proc.pid, want_stubs=1)
    watchdogs = [c for c in psutil.Process(proc.pid).children() if c.name() != "tritonserver"]
    assert watchdogs, "no watchdog process next to tritonserver"
    try:
        proc.kill()
        proc.wait(timeout=10)
        gone_s = _gone_within(tree + watchdogs, 20)
    finally:
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    print(f"\nguardrt serve SIGKILLed ({phase}): tritonserver, {len(tree) - 1} stub(s) and the watchdog gone in "
          f"{gone_s:.2f}s")
    assert port_is_free(port)

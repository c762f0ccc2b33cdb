"""The server launcher against the real binary: load failures show Triton's reason; `guardrt serve` stops cleanly."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

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

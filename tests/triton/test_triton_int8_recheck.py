"""The int8 re-check at model load, in the real tritonserver's python backend (issue 9).

Two copies of the tiny rejection int8-dynamic export, both "validated on another CPU" (their recorded int8 path is
faked): one within its gate (loads, logs one line), one whose reference is shifted past the gate (refused: the
model fails to load with the re-check line as Triton's reason)."""
from __future__ import annotations

import shutil

import pytest

from guardrt.runtime.errors import ServerError

pytestmark = pytest.mark.triton


def test_triton_backend_rechecks_int8_at_load(tmp_path, monkeypatch):
    from guardrt.export.demo_models import cached_demo_export
    from guardrt.runtime.int8_path import RECHECK_ENV, int8_path
    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.triton_repo import PYTHON_INSTANCES, write_model
    from ..runtime.test_int8_path import _other_path, _rewrite_check

    monkeypatch.delenv(RECHECK_ENV, raising=False)
    source = cached_demo_export("rejection", "tiny", ("fp32", "fp16", "int8", "int8-dynamic"))
    repo = tmp_path / "repo"
    for name, shift in (("rejection", 0.0), ("rejection-refused", 1.0)):
        export = tmp_path / name
        shutil.copytree(source, export)
        _rewrite_check(export, recorded_path=_other_path(), shift_reference=shift)
        write_model(repo, export_dir=export, precision="int8-dynamic", name=name)
    log = tmp_path / "triton.log"
    server = TritonServer(repo, grpc_port=free_port(), http_port=None, metrics_port=None, startup_timeout_s=180,
                          log_path=log)
    with pytest.raises(ServerError) as err:
        server.start()
    message = str(err.value)
    print("\n" + message)
    assert "model 'rejection-refused' failed to load" in message and "OVER THE GATE: refusing to load" in message
    assert "model 'rejection' failed" not in message
    lines = [ln for ln in log.read_text(errors="replace").splitlines()
             if "int8 re-check, rejection int8-dynamic" in ln]
    assert len(lines) == PYTHON_INSTANCES and len(set(ln.split("]", 1)[1] for ln in lines)) == 1, lines  # per instance
    assert f"validated on {_other_path()}, running on {int8_path()}" in lines[0] and lines[0].rstrip().rstrip('"').endswith(": ok")

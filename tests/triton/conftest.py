"""Fixtures for the end-to-end tests against the real tritonserver: the tiny demo models (built once, cached),
a model repository with both specs (python flavor) and their text-in models, and one server per test session on
free 127.0.0.1 ports."""
from __future__ import annotations

import pytest

SPECS = ("intent-safety", "rejection")
# The text-in models of the session repository refuse payload rows over this many bytes (the tests send bigger ones).
TEXT_MAX_PAYLOAD_BYTES = 1 << 20


@pytest.fixture(autouse=True, scope="session")
def _triton_binary():
    """The server binary (dev/serve extras): skip with the reason where it is missing, fail under CI=true."""
    from .binary import triton_install_or_skip

    return triton_install_or_skip()


@pytest.fixture(scope="session")
def demo_exports() -> dict:
    """{spec: export directory} of the tiny demo models, fp32 (validated against PyTorch by the exporter)."""
    from guardrt.export.demo_models import cached_demo_export

    return {name: cached_demo_export(name, "tiny", ("fp32",)) for name in SPECS}


@pytest.fixture(scope="session")
def demo_checkpoints(demo_exports) -> dict:
    """{spec: Hugging Face checkpoint directory} the exports were made from (the PyTorch reference)."""
    from guardrt.export.demo_models import cached_demo_model

    return {name: cached_demo_model(name, "tiny") for name in SPECS}


@pytest.fixture(scope="session")
def triton_repo(tmp_path_factory, demo_exports):
    from guardrt.runtime.triton_repo import write_model, write_text_model

    repo = tmp_path_factory.mktemp("triton_repo")
    for name, export in demo_exports.items():
        write_model(repo, export_dir=export)
        write_text_model(repo, export, max_payload_bytes=TEXT_MAX_PAYLOAD_BYTES)
    return repo


@pytest.fixture(scope="session")
def triton_server(triton_repo):
    """The real tritonserver serving both specs; stopped at the end of the session."""
    from guardrt.runtime.server import TritonServer, free_port

    server = TritonServer(triton_repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server.start()
    yield server
    server.stop()

"""Shared fixtures. Everything is generated locally and deterministically; nothing touches the network."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _gpu_available() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return os.system("nvidia-smi -L >/dev/null 2>&1") == 0


def _int8_path_line() -> str:
    """Which ONNX Runtime int8 code path this run exercises (int8 results depend on it; see runtime/int8_path.py)."""
    from guardrt.runtime.int8_path import describe, int8_path, saturates

    path = int8_path()
    how = {True: "U8S8 saturates here; guardrt sessions set session.x64quantprecision=1 (exact U8U8)",
           False: "exact U8S8 fast path", None: "not characterised"}[saturates(path)]
    return f"int8 path: {describe(path)}; {how}"


def pytest_report_header(config):
    return _int8_path_line()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(_int8_path_line())  # also under -q (make test), where the header is not printed


def pytest_collection_modifyitems(config, items):
    if not _gpu_available():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU with TensorRT (none on this machine)")
        for item in items:
            # The marker itself, not `"gpu" in item.keywords`: keywords also hold every parent node's name, so a
            # checkout in a directory called "gpu" would skip the whole suite.
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    from guardrt.export.tokenizers import qwen3_tokenizer_dir

    return qwen3_tokenizer_dir()


@pytest.fixture(scope="session")
def roberta_tokenizer_dir(tmp_path_factory) -> Path:
    from guardrt.export.tokenizers import build_roberta_tokenizer

    return build_roberta_tokenizer(tmp_path_factory.mktemp("roberta_tok"))


# -- demo model fixtures (issue 3): tiny checkpoints and their validated exports, built once into the cache ------
ALL_PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")


@pytest.fixture(scope="session")
def demo_checkpoint():
    """demo_checkpoint(spec_name) -> tiny trained HF checkpoint dir (cached under $GUARDRT_CACHE_DIR)."""
    from guardrt.export.demo_models import cached_demo_model

    return lambda spec_name: cached_demo_model(spec_name, "tiny")


@pytest.fixture(scope="session")
def demo_export():
    """demo_export(spec_name, precisions=ALL_PRECISIONS, **export_onnx_kwargs) -> validated export dir of the tiny
    demo model (cached; e.g. graph_pass=None for the plain graph TensorRT takes)."""
    from guardrt.export.demo_models import cached_demo_export

    return lambda spec_name, precisions=ALL_PRECISIONS, **kw: cached_demo_export(spec_name, "tiny", precisions, **kw)

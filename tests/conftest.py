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


def pytest_collection_modifyitems(config, items):
    if not _gpu_available():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU with TensorRT (none on this machine)")
        for item in items:
            if "gpu" in item.keywords:
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

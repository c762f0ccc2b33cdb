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

"""Errors guardrt raises on purpose. The CLI prints these as one line (no traceback) and exits non-zero."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any


class GuardrtError(Exception):
    """Base of every error guardrt raises deliberately; `str(err)` is the one line a user sees."""


class InputError(GuardrtError, ValueError):
    """An input the reference would crash on, or that means nothing (not a list, not a mapping, not JSON...)."""


class ModelFilesError(GuardrtError):
    """A model / tokenizer / export directory is missing, incomplete, corrupt, or of the wrong architecture."""


class ServerError(GuardrtError):
    """The inference server is down, not ready, or refused a request."""


class MissingExtraError(GuardrtError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that provides it."""


def require(module: str, extra: str) -> ModuleType:
    """Import `module` or raise MissingExtraError telling which `guardrt[extra]` to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module} is not installed ({exc}); install it with: pip install 'guardrt[{extra}]'"
        ) from None


def read_json_file(file: str | Path) -> Any:
    """The parsed JSON of `file`; ModelFilesError naming the file when it is not valid UTF-8 JSON."""
    file = Path(file)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFilesError(f"corrupt {file}: {exc}") from None

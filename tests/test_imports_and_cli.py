"""guardrt.runtime never needs torch/transformers; every CLI command answers --help."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

BLOCKER = r"""
import builtins, importlib, pkgutil, sys
BLOCKED = ("torch", "transformers", "optimum")
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name.split(".")[0] in BLOCKED:
        raise ImportError(f"blocked import of {name}")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
import guardrt.runtime
names = [m.name for m in pkgutil.walk_packages(guardrt.runtime.__path__, "guardrt.runtime.")]
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("\n".join(names))
"""


def test_runtime_imports_without_torch_or_transformers():
    proc = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = proc.stdout.split()
    assert "guardrt.runtime.preprocess" in imported and "guardrt.runtime.specs" in imported


def _commands() -> list[str]:
    from guardrt.commands import COMMAND_MODULES

    return list(COMMAND_MODULES)


def test_top_level_help():
    proc = subprocess.run([sys.executable, "-m", "guardrt", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "preprocess" in proc.stdout


@pytest.mark.parametrize("module", _commands())
def test_every_command_help(module):
    import importlib

    name = importlib.import_module(f"guardrt.commands.{module}").NAME
    proc = subprocess.run([sys.executable, "-m", "guardrt", name, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: guardrt " + name in proc.stdout
    assert "[env: GUARDRT_" in proc.stdout  # every flag has an environment-variable twin

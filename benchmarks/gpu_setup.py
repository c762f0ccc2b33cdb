"""What `make gpu-check` checks before it builds anything (used by benchmarks/gpu_check.py):

* that `guardrt[gpu]` can install here, and installing it with one clear line when it cannot. `tensorrt-cu12==10.5.0`
  on the public index is an sdist whose install runs pip again for `tensorrt-cu12-libs` / `tensorrt-cu12-bindings`
  10.5.0 from NVIDIA's index (https://pypi.nvidia.com, or $NVIDIA_PIP_INDEX_URL): the public index has only a
  630-byte stub of the libs and no 10.5.0 bindings at all (checked with pip from here). So the GPU host must reach
  NVIDIA's index, and run a Python the 10.5.0 bindings were built for: 3.8-3.12 (no 3.13 wheel - from the desk
  check behind issue 15, not re-checked from here);
* which TensorRT NVIDIA's Triton container ships: a plan loads only with the TensorRT that built it, and that the
  24.10 image has exactly 10.5.0 is not confirmed from a primary source. Read from the image when it is present
  locally (never pulled implicitly: it is ~15 GB); otherwise the command to run is printed.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
TENSORRT_PIN = "10.5.0"  # pyproject.toml, extra `gpu`: tensorrt-cu12==10.5.0 (the TensorRT of Triton 24.10)
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
PYTHON_RANGE = ((3, 8), (3, 12))  # tensorrt-cu12-bindings 10.5.0 wheels
NVIDIA_INDEX = os.environ.get("NVIDIA_PIP_INDEX_URL", "https://pypi.nvidia.com")

# In the image: the TensorRT package version (deb), and the versioned library file names, wherever they are.
CONTAINER_PROBE = ("dpkg-query -W -f='${Version}\\n' libnvinfer10 2>/dev/null; "
                   "ls /usr/lib/*/libnvinfer.so.* /usr/local/tensorrt/lib/libnvinfer.so.* 2>/dev/null; true")


def install_problems(version_info: Sequence[int] = sys.version_info, system: str = platform.system(),
                     machine: str = platform.machine()) -> list[str]:
    """Why `pip install 'guardrt[gpu]'` cannot work on this interpreter / platform ([] when nothing is known wrong)."""
    problems = []
    lo, hi = PYTHON_RANGE
    if not lo <= tuple(version_info[:2]) <= hi:
        problems.append(f"Python {version_info[0]}.{version_info[1]} has no tensorrt-cu12-bindings {TENSORRT_PIN} wheel "
                        f"(built for {lo[0]}.{lo[1]}-{hi[0]}.{hi[1]}): make the venv with one, e.g. "
                        "`make gpu-check PYTHON=python3.12` after removing .venv")
    if system != "Linux" or machine not in ("x86_64", "aarch64"):
        problems.append(f"TensorRT {TENSORRT_PIN} wheels are for Linux x86_64 / aarch64, not {system} {machine}")
    return problems


def pip_install_command(python: str = sys.executable) -> list[str]:
    """pip install of the gpu extra with the project's constraints and NVIDIA's index."""
    return [python, "-m", "pip", "install", "-q", "-c", str(REPO_ROOT / "requirements" / "constraints.txt"),
            "--extra-index-url", NVIDIA_INDEX, "-e", f"{REPO_ROOT}[gpu]"]


def install_gpu_extra(log_file: Path, run: Callable[..., Any] = subprocess.run,
                      python: str = sys.executable) -> str | None:
    """Install guardrt[gpu]; None on success, else the one line to show (pip's output is in `log_file`)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w", encoding="utf-8") as log:
        proc = run(pip_install_command(python), stdout=log, stderr=subprocess.STDOUT, text=True)
    if proc.returncode == 0:
        return None
    text = log_file.read_text(encoding="utf-8", errors="replace")
    hint = ""
    if re.search(r"pypi\.nvidia\.com|NewConnectionError|Name or service not known|getaddrinfo|timed out", text):
        hint = f"this host cannot reach NVIDIA's index {NVIDIA_INDEX} (set NVIDIA_PIP_INDEX_URL to a mirror); "
    elif re.search(r"No matching distribution found for tensorrt", text):
        hint = "no TensorRT wheel for this Python / platform; "
    return (f"installing guardrt[gpu] failed: {hint}tensorrt-cu12 {TENSORRT_PIN} installs its libraries and bindings "
            f"from NVIDIA's index, for Python 3.8-3.12 on Linux (pip's output: {log_file})")


def parse_container_tensorrt(output: str) -> str | None:
    """The TensorRT version in the container probe's output: the deb package version (10.5.0.18-1+cuda12.6 ->
    10.5.0.18), else the highest versioned libnvinfer.so.X.Y.Z file name."""
    for line in output.splitlines():
        m = re.match(r"^\s*(\d+\.\d+\.\d+(?:\.\d+)?)", line)
        if m:
            return m.group(1)
    libs = re.findall(r"libnvinfer\.so\.(\d+\.\d+\.\d+)", output)
    return max(libs, key=lambda v: tuple(int(x) for x in v.split("."))) if libs else None


def container_check_command(image: str = TRITON_IMAGE) -> str:
    return f'docker run --rm --entrypoint bash {image} -c "{CONTAINER_PROBE}"'


def container_tensorrt_version(image: str = TRITON_IMAGE, run: Callable[..., Any] = subprocess.run,
                               which: Callable[[str], str | None] = shutil.which) -> tuple[str | None, str]:
    """(TensorRT version in `image`, how it was found or why not). Only a locally present image is run."""
    docker = which("docker")
    if docker is None:
        return None, f"docker not found; confirm by hand: {container_check_command(image)}"
    try:
        present = run([docker, "image", "inspect", image], capture_output=True, text=True, timeout=60)
        if present.returncode != 0:
            return None, f"{image} is not pulled here (not pulled implicitly); confirm with: {container_check_command(image)}"
        proc = run([docker, "run", "--rm", "--entrypoint", "bash", image, "-c", CONTAINER_PROBE],
                   capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"docker failed ({exc}); confirm by hand: {container_check_command(image)}"
    version = parse_container_tensorrt(proc.stdout or "")
    if version is None:
        return None, f"no libnvinfer found in {image}; look with: {container_check_command(image)}"
    return version, f"read from {image}"


def same_tensorrt(built_with: str, container: str) -> bool:
    """Whether plans built with TensorRT `built_with` load in a container with `container`: the same
    major.minor.patch (and build number when both give one; plans check the exact build)."""
    a, b = built_with.split("."), container.split(".")
    n = 4 if len(a) >= 4 and len(b) >= 4 else 3
    return a[:n] == b[:n]

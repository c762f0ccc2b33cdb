"""TensorRT runner: a serialized engine (`model.plan`) -> `infer(feeds) -> outputs`, like `runtime/onnxrt.py`.

A `BaseRunner` (runtime/runner.py, the same protocol as `OnnxRunner`): construct (or `activate()`),
`infer({"input_ids": ..., "attention_mask": ...}) -> {"logits": ...}` with NumPy arrays in and out, `close()` /
context manager. An engine built by `guardrt export --target tensorrt` holds the optimization profiles of the
bucket/profile contract (runtime/bucket_profiles.py: disjoint sequence ranges covering 1..max_length); `infer` picks
the profile whose [min, max] range holds the feed shapes (`select_profile`, pure), switches to it, sets the input
shapes and runs with the TensorRT 10 tensor-address API (`set_input_shape`, `set_tensor_address`,
`execute_async_v3`) on one CUDA stream.

Device memory and the stream come from Polygraphy's CUDA wrapper (`polygraphy.cuda`: ctypes over libcudart, which
the `tensorrt-cu12-libs` wheel pulls in as `nvidia-cuda-runtime-cu12`), so the runtime needs neither torch nor
cuda-python. `tensorrt` and `polygraphy` are imported lazily; without them `MissingExtraError` names the `gpu` extra.
The GPU is the current CUDA device (select another with CUDA_VISIBLE_DEVICES).

Everything above the `TensorRTRunner` class is pure Python and unit-tested without a GPU; the runner itself has
only run where a GPU was present (see the README, "GPU deployment" for what has and has not run).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guardrt.runtime.bucket_profiles import ShapeRange
from guardrt.runtime.errors import GuardrtError, InputError, ModelFilesError, require
from guardrt.runtime.runner import BaseRunner

__all__ = [
    "GPU_MODULES",
    "GpuProbe",
    "TensorRTRunner",
    "TensorRTUnavailableError",
    "engine_profiles",
    "missing_gpu_modules",
    "numpy_dtype",
    "plan_path",
    "probe_gpu",
    "select_profile",
]

# What the TensorRT path imports, in the order a user would install them (both come with `guardrt[gpu]`).
GPU_MODULES = ("tensorrt", "polygraphy")

class TensorRTUnavailableError(GuardrtError):
    """TensorRT cannot run here: no NVIDIA GPU, or the `gpu` extra is not installed. One line, says what is missing."""


# -- environment probes (pure with their inputs injected; the defaults look at this host) --------------------------
@dataclass(frozen=True)
class GpuProbe:
    """Whether an NVIDIA GPU is usable here. `detail` is a short human reason or the GPU names."""

    found: bool
    detail: str
    names: tuple[str, ...] = field(default_factory=tuple)


def probe_gpu(
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[..., Any] = subprocess.run,
    environ: Mapping[str, str] | None = None,
    device_nodes: Callable[[], Sequence[str]] | None = None,
) -> GpuProbe:
    """Look for an NVIDIA GPU without importing any CUDA library: CUDA_VISIBLE_DEVICES, `nvidia-smi -L`, /dev/nvidia*.

    The same test the test suite's `gpu` marker uses (tests/conftest.py), plus the CUDA_VISIBLE_DEVICES check.
    """
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return GpuProbe(False, f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU")
    smi = which("nvidia-smi")
    if smi:
        try:
            proc = run([smi, "-L"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError) as exc:
            return GpuProbe(False, f"nvidia-smi failed: {exc}")
        lines = [ln.strip() for ln in (proc.stdout or "").splitlines() if ln.strip().startswith("GPU ")]
        if proc.returncode == 0 and lines:
            return GpuProbe(True, "; ".join(lines), tuple(lines))
        reason = (proc.stderr or proc.stdout or "").strip().splitlines()
        return GpuProbe(False, f"nvidia-smi lists no GPU ({reason[0] if reason else f'exit {proc.returncode}'})")
    nodes = list(device_nodes()) if device_nodes is not None else _nvidia_device_nodes()
    if nodes:
        return GpuProbe(True, f"GPU device node {nodes[0]} present (nvidia-smi not on PATH)")
    return GpuProbe(False, "no NVIDIA GPU found (nvidia-smi not on PATH, no /dev/nvidia0)")


def _nvidia_device_nodes() -> list[str]:
    """/dev/nvidia0... (Linux, containers started with --gpus) or /dev/dxg (WSL 2's GPU paravirtualisation)."""
    dev = Path("/dev")
    try:
        return sorted(str(p) for p in dev.glob("nvidia[0-9]*")) + [str(p) for p in dev.glob("dxg")]
    except OSError:
        return []


def missing_gpu_modules(find_spec: Callable[[str], Any] = importlib.util.find_spec) -> list[str]:
    """The modules of the `gpu` extra that are not importable here (looked up, not imported)."""
    missing = []
    for name in GPU_MODULES:
        try:
            found = find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


# -- profile selection (pure) ---------------------------------------------------------------------------------------
def _fits(shape: Sequence[int], rng: ShapeRange) -> bool:
    lo, _, hi = rng
    return len(shape) == len(lo) == len(hi) and all(a <= s <= b for s, a, b in zip(shape, lo, hi))


def select_profile(profiles: Sequence[Mapping[str, ShapeRange]], shapes: Mapping[str, Sequence[int]]) -> int:
    """Index of the optimization profile that can run `shapes` ({input: shape}).

    A profile fits when every input's shape lies inside its [min, max] box. Engines built by guardrt have disjoint
    sequence ranges, so at most one fits; for other engines the tightest fit wins (smallest total slack
    `max - shape`), then the lowest index. InputError, naming the supported ranges, when none fits.
    """
    best: tuple[int, int] | None = None
    for index, profile in enumerate(profiles):
        if set(shapes) - set(profile):
            continue
        if not all(_fits(tuple(shapes[name]), profile[name]) for name in shapes):
            continue
        slack = sum(int(b) - int(s) for name in shapes for s, b in zip(shapes[name], profile[name][2]))
        if best is None or slack < best[0]:
            best = (slack, index)
    if best is None:
        ranges = "; ".join(
            f"#{i} " + ", ".join(f"{n} {list(r[0])}..{list(r[2])}" for n, r in p.items()) for i, p in enumerate(profiles)
        )
        got = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
        raise InputError(f"no TensorRT optimization profile fits {got}; the engine supports: {ranges}")
    return best[1]


# TensorRT DataType names -> NumPy. Spelled out because `trt.nptype` only learned INT64 in some 10.x releases.
_NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32,
                 "INT64": np.int64, "BOOL": np.bool_}


def numpy_dtype(trt_dtype, trt=None) -> np.dtype:
    """NumPy dtype of a TensorRT DataType (or its name); falls back to `trt.nptype`; ModelFilesError if none."""
    name = trt_dtype if isinstance(trt_dtype, str) else getattr(trt_dtype, "name", str(trt_dtype))
    if name in _NUMPY_DTYPES:
        return np.dtype(_NUMPY_DTYPES[name])
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except (AttributeError, TypeError):
        raise ModelFilesError(f"engine tensor type {name} has no NumPy equivalent") from None


def engine_profiles(engine, trt) -> list[dict[str, ShapeRange]]:
    """[{input: (min, opt, max)}] per optimization profile of a deserialized engine (TensorRT 10 name-based API:
    `num_io_tensors`, `get_tensor_name`, `get_tensor_mode`, `get_tensor_profile_shape(name, profile)`)."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    return [
        {n: tuple(tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(n, p)) for n in inputs}
        for p in range(engine.num_optimization_profiles)
    ]


def plan_path(export_dir: str | Path, precision: str = "fp16") -> Path:
    """`export_dir/tensorrt/<precision>/model.plan`, where `guardrt export --target tensorrt` writes engines;
    ModelFilesError naming the engines that are there otherwise."""
    root = Path(export_dir) / "tensorrt"
    plan = root / precision / "model.plan"
    if not plan.is_file():
        have = sorted(p.parent.name for p in root.glob("*/model.plan")) if root.is_dir() else []
        raise ModelFilesError(
            f"no TensorRT {precision} engine in {export_dir} (engines there: {', '.join(have) or 'none'}); "
            "build it on a GPU host with `guardrt export --target tensorrt`")
    return plan


# -- the runner (needs a GPU) ---------------------------------------------------------------------------------------
def _require_gpu_stack():
    trt = require("tensorrt", "gpu")
    require("polygraphy", "gpu")
    from polygraphy import cuda  # noqa: PLC0415 - lazy on purpose

    return trt, cuda


class TensorRTRunner(BaseRunner):
    """One deserialized engine + one execution context + one CUDA stream. `infer(feeds) -> outputs` (NumPy).

    plan_path: a `model.plan` (TensorRT version- and GPU-specific; the `build.json` written next to it by
    `guardrt export --target tensorrt` names both, and a failed load repeats them).
    """

    @classmethod
    def from_export_dir(cls, export_dir: str | Path, precision: str = "fp16") -> "TensorRTRunner":
        """The engine `guardrt export --target tensorrt` built for `precision` in an export directory."""
        return cls(plan_path(export_dir, precision))

    def __init__(self, plan_path: str | Path, activate: bool = True):
        self.plan_path = Path(plan_path)
        self.engine = None
        self.context = None
        self.stream = None
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self.profiles: list[dict[str, ShapeRange]] = []
        self._dtypes: dict[str, np.dtype] = {}
        self._buffers: dict[str, Any] = {}
        self._profile: int | None = None
        if activate:
            self.activate()

    # Loading ---------------------------------------------------------------------------------------------------
    def activate(self) -> "TensorRTRunner":
        if self.context is not None:
            return self
        if not self.plan_path.is_file():
            raise ModelFilesError(f"TensorRT plan {self.plan_path} does not exist")
        trt, cuda = _require_gpu_stack()
        logger = trt.Logger(trt.Logger.WARNING)
        # The GPU probe only explains failures: it never blocks a host where TensorRT itself works.
        try:
            runtime = trt.Runtime(logger)
            engine = runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        except Exception as exc:  # e.g. "CUDA initialization failure" without a usable GPU
            self._raise_unavailable_or(ModelFilesError(f"TensorRT cannot load {self.plan_path}: {exc}"))
        if engine is None:
            self._raise_unavailable_or(ModelFilesError(
                f"TensorRT {trt.__version__} could not load {self.plan_path}{_built_with(self.plan_path)}; "
                "engines only load with the TensorRT version and GPU architecture they were built for"
            ))
        context = engine.create_execution_context()
        if context is None:
            raise ModelFilesError(f"cannot create a TensorRT execution context for {self.plan_path}")
        self._trt, self._cuda = trt, cuda
        self._runtime = runtime  # the engine must not outlive its runtime
        self.engine, self.context = engine, context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: numpy_dtype(engine.get_tensor_dtype(n), trt) for n in names}
        self.profiles = engine_profiles(engine, trt)
        self.stream = cuda.Stream()
        self._profile = 0  # TensorRT selects profile 0 for a new context
        return self

    def _raise_unavailable_or(self, error: GuardrtError):
        probe = probe_gpu()
        if not probe.found:
            raise TensorRTUnavailableError(f"cannot run TensorRT engine {self.plan_path}: {probe.detail}") from None
        raise error from None

    # Running ---------------------------------------------------------------------------------------------------
    def _switch_profile(self, index: int) -> None:
        """Select optimization profile `index` on the context. TensorRT 10.5's binding raises on failure (older
        ones returned False): both become the runner's one-line ModelFilesError."""
        try:
            ok = self.context.set_optimization_profile_async(index, self.stream.ptr)
        except Exception as exc:  # the binding's RuntimeError / TypeError carry TensorRT's reason
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFilesError(f"TensorRT refused optimization profile {index} of {self.plan_path}: {reason}") from None
        if ok is False:
            raise ModelFilesError(f"TensorRT refused optimization profile {index} of {self.plan_path}")
        self._profile = index

    def _buffer(self, name: str, shape: tuple[int, ...]):
        """Device buffer for `name`, grown (never shrunk) to `shape`."""
        buf = self._buffers.get(name)
        if buf is None:
            buf = self._cuda.DeviceArray(shape=shape, dtype=self._dtypes[name])
            self._buffers[name] = buf
        else:
            buf.resize(shape)
        return buf

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine; feeds must name exactly its inputs. Outputs are new host arrays."""
        if self.context is None:
            self.activate()
        if set(feeds) != set(self.input_names):
            raise InputError(f"feeds {sorted(feeds)} do not match the engine inputs {self.input_names}")
        ctx, stream = self.context, self.stream
        host_inputs = {n: np.ascontiguousarray(feeds[n], dtype=self._dtypes[n]) for n in self.input_names}
        index = select_profile(self.profiles, {n: a.shape for n, a in host_inputs.items()})
        if index != self._profile:
            self._switch_profile(index)
        for name, arr in host_inputs.items():
            if not ctx.set_input_shape(name, arr.shape):
                raise InputError(f"TensorRT refused shape {arr.shape} for input {name!r} (profile {index})")
            buf = self._buffer(name, arr.shape)
            buf.copy_from(arr, stream)
            if not ctx.set_tensor_address(name, buf.ptr):
                raise ModelFilesError(f"TensorRT refused the device address of input {name!r}")
        out_shapes: dict[str, tuple[int, ...]] = {}
        for name in self.output_names:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ModelFilesError(f"output {name!r} has unresolved shape {shape} after setting the input shapes")
            out_shapes[name] = shape
            if not ctx.set_tensor_address(name, self._buffer(name, shape).ptr):
                raise ModelFilesError(f"TensorRT refused the device address of output {name!r}")
        if not ctx.execute_async_v3(stream.ptr):
            raise ModelFilesError(f"TensorRT execution failed for {self.plan_path} (see the TensorRT log above)")
        outputs = {}
        for name, shape in out_shapes.items():
            host = np.empty(shape, dtype=self._dtypes[name])
            self._buffers[name].copy_to(host, stream)
            outputs[name] = host
        stream.synchronize()  # also keeps `host_inputs` alive until the async copies have read them
        del host_inputs
        return outputs

    # Lifetime --------------------------------------------------------------------------------------------------
    def close(self) -> None:
        for buf in self._buffers.values():
            buf.free()
        self._buffers.clear()
        if self.stream is not None:
            self.stream.free()
        self.stream = None
        self.context = None
        self.engine = None
        self._runtime = None
        self._profile = None


def _built_with(plan_path: Path) -> str:
    """' (built with TensorRT X on GPU Y)' from the build.json next to a plan, or ''."""
    info_file = plan_path.with_name("build.json")
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return f" (built with TensorRT {info.get('tensorrt_version', '?')} on {info.get('gpu', '?')})"

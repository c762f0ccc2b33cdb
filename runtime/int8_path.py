"""Which int8 code path ONNX Runtime takes on this CPU, and the load-time re-check of an int8 export on it.

Why it matters. ONNX Runtime's CPU int8 GEMM (MLAS) multiplies uint8 activations by int8 weights ("U8S8"). With
VNNI (`vpdpbusd`) or AMX the products are summed exactly in int32. Without VNNI (AVX2, AVX-512 without VNNI, SSE4.1)
MLAS uses `vpmaddubsw`, which adds each *pair* of u8 x s8 products into an int16 and **saturates** it: a pair can
reach 255 x 127 x 2 = 64,770 > 32,767. The same int8 graph then gives different logits on different CPUs (the tiny
rejection demo: 0.004 max |Δlogit| vs PyTorch with VNNI, 0.654 on AVX2). `guardrt export` records the path an int8
precision was validated on, with a small held-out check set (`int8_check.npz`); loading that precision where the
path differs re-runs the check set and reports the drift against the spec's gate (`recheck`).

Self-contained on purpose (standard library + numpy; onnxruntime only through the session it is handed): the Triton
python backend imports this very file from its model directory (`guardrt repo` copies it there as
`guardrt_int8_path.py`), where guardrt itself may not be installed.

Detection reads CPUID (and XCR0, the OS-enabled register state) through a few bytes of machine code run with ctypes:
the same bits MLAS reads, so it is right under emulators and in containers whose /proc/cpuinfo shows the host.
Where that is not possible (not x86-64 Linux, no executable memory) it reads /proc/cpuinfo's flags.
"""
from __future__ import annotations

import functools
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

__all__ = [
    "CHECK_FILE_NAME",
    "INT8_PATHS",
    "RECHECK_MODES",
    "RecheckResult",
    "cpu_flags",
    "describe",
    "exact_int8_session_config",
    "int8_path",
    "int8_path_from_flags",
    "load_check_set",
    "path_record",
    "recheck",
    "recheck_mode",
    "saturates",
    "session_int8_path",
]

CHECK_FILE_NAME = "int8_check.npz"
# What a failed re-check does: refuse to load (default), load with the warning line, or skip the check.
RECHECK_MODES = ("refuse", "warn", "off")
RECHECK_ENV = "GUARDRT_INT8_RECHECK"

# path -> (kernel, whether U8S8 pair sums saturate at int16). Order: the preference MLAS dispatches in.
INT8_PATHS: dict[str, tuple[str, bool | None]] = {
    "amx": ("AMX tiles (TMUL): exact int32 sums", False),
    "avx512_vnni": ("AVX-512 VNNI vpdpbusd: exact int32 sums", False),
    "avx_vnni": ("AVX-VNNI vpdpbusd (256-bit): exact int32 sums", False),
    "avx512": ("AVX-512BW vpmaddubsw, no VNNI: U8S8 pair sums saturate at int16", True),
    "avx2": ("AVX2 vpmaddubsw, no VNNI: U8S8 pair sums saturate at int16", True),
    "sse4.1": ("SSE4.1, no AVX2: MLAS's oldest x86 int8 kernels (saturation not characterised)", None),
    "x86-64": ("x86-64 without SSE4.1 (not characterised)", None),
}

# The flags (in /proc/cpuinfo's vocabulary) that decide the path; recorded with it.
_RELEVANT = ("sse4_1", "avx", "fma", "avx2", "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl",
             "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


# -- detection ----------------------------------------------------------------------------------------------------
def int8_path_from_flags(flags) -> str:
    """The MLAS int8 GEMM path for a set of CPU flags (/proc/cpuinfo names; OS support already folded in).

    Mirrors MLAS's dispatch (onnxruntime/core/mlas/lib/platform.cpp): AVX2 needs FMA; the AVX-512 core kernels need
    F, DQ, CD, BW and VL; VNNI on top of either replaces vpmaddubsw; AMX (tile + int8) wins when present."""
    f = set(flags)
    if {"amx_tile", "amx_int8"} <= f:
        return "amx"
    if {"avx2", "fma"} <= f:
        if {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"} <= f:
            return "avx512_vnni" if "avx512_vnni" in f else "avx512"
        return "avx_vnni" if "avx_vnni" in f else "avx2"
    if "sse4_1" in f:
        return "sse4.1"
    return "x86-64"


@functools.lru_cache(maxsize=1)
def _cpuid_flags() -> frozenset[str] | None:
    """CPU flags from CPUID + XCR0 via machine code (x86-64 Linux); None when that cannot run here."""
    if platform.machine().lower() not in ("x86_64", "amd64") or os.name != "posix":
        return None
    import ctypes
    import mmap

    # void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4]) and uint64 xgetbv(uint32 index), System V ABI.
    cpuid_code = bytes.fromhex("53" "89f8" "89f1" "4989d0" "0fa2" "418900" "41895804" "41894808" "4189500c" "5b" "c3")
    xgetbv_code = bytes.fromhex("89f9" "0f01d0" "48c1e220" "4809d0" "c3")
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):  # W^X policies (SELinux execmem), exotic platforms
        return None
    try:
        page.write(cpuid_code)
        page.seek(64)
        page.write(xgetbv_code)
        anchor = ctypes.c_char.from_buffer(page)
        base = ctypes.addressof(anchor)
        del anchor  # the exported buffer would block page.close(); the functions below hold only the address
        regs_t = ctypes.c_uint32 * 4
        cpuid = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(regs_t))(base)
        xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint32)(base + 64)

        def leaf(n: int, sub: int = 0) -> tuple[int, int, int, int]:
            out = regs_t()
            cpuid(n, sub, ctypes.byref(out))
            return tuple(out)

        max_leaf = leaf(0)[0]
        ecx1 = leaf(1)[2]
        ebx7 = ecx7 = edx7 = eax7_1 = 0
        if max_leaf >= 7:
            _, ebx7, ecx7, edx7 = leaf(7, 0)
            eax7_1 = leaf(7, 1)[0]
        xcr0 = xgetbv(0) if ecx1 & (1 << 27) else 0  # OSXSAVE: the OS manages the extended register state
    finally:
        page.close()
    flags = set()
    if ecx1 & (1 << 19):
        flags.add("sse4_1")
    avx_os = (xcr0 & 0x6) == 0x6  # XMM + YMM state enabled
    avx512_os = avx_os and (xcr0 & 0xE0) == 0xE0  # opmask + ZMM state
    amx_os = (xcr0 & 0x60000) == 0x60000  # XTILECFG + XTILEDATA
    bits = [
        (avx_os, ecx1, 28, "avx"), (avx_os, ecx1, 12, "fma"), (avx_os, ebx7, 5, "avx2"),
        (avx_os, eax7_1, 4, "avx_vnni"),
        (avx512_os, ebx7, 16, "avx512f"), (avx512_os, ebx7, 17, "avx512dq"), (avx512_os, ebx7, 28, "avx512cd"),
        (avx512_os, ebx7, 30, "avx512bw"), (avx512_os, ebx7, 31, "avx512vl"), (avx512_os, ecx7, 11, "avx512_vnni"),
        (amx_os, edx7, 24, "amx_tile"), (amx_os, edx7, 25, "amx_int8"),
    ]
    flags.update(name for enabled, reg, bit, name in bits if enabled and reg & (1 << bit))
    return frozenset(flags)


def _proc_cpuinfo_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(("flags", "Features")) and ":" in line:
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_flags() -> tuple[set[str], str]:
    """(flags relevant to int8, source: "cpuid" or "/proc/cpuinfo")."""
    flags = _cpuid_flags()
    if flags is not None:
        return set(flags), "cpuid"
    return {f for f in _proc_cpuinfo_flags() if f in _RELEVANT}, "/proc/cpuinfo"


def int8_path() -> str:
    """This machine's ONNX Runtime CPU int8 path: amx | avx512_vnni | avx_vnni | avx512 | avx2 | sse4.1 | x86-64, or
    the machine name (e.g. aarch64) elsewhere."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return machine or "unknown"
    return int8_path_from_flags(cpu_flags()[0])


def saturates(path: str) -> bool | None:
    """Whether ONNX Runtime's U8S8 kernels saturate on `path` (None: not characterised)."""
    return INT8_PATHS.get(path, ("", None))[1]


def exact_int8_session_config(path: str | None = None) -> dict[str, str]:
    """ONNX Runtime session config entries that keep int8 GEMMs exact on `path` (default: this CPU's).

    Where U8S8 saturates (or on an x86 path not characterised), `session.x64quantprecision=1` makes ORT rewrite int8
    weights that do not fit 7 bits to uint8 at load, so they run on the exact U8U8 kernels. Elsewhere nothing: on
    VNNI / AMX CPUs ORT applies the same rewrite (measured with ORT 1.32 on AVX-512 VNNI) and U8U8 runs ~1.8x slower
    than U8S8 there, for no accuracy gain."""
    path = path or int8_path()
    if saturates(path) is False or (path not in INT8_PATHS):  # exact kernels, or not x86 (the option is x86-only)
        return {}
    return {"session.x64quantprecision": "1"}


def describe(path: str) -> str:
    """e.g. "avx2 (AVX2 vpmaddubsw, no VNNI: U8S8 pair sums saturate at int16)"."""
    kernel = INT8_PATHS.get(path, ("not characterised",))[0]
    return f"{path} ({kernel})"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def path_record() -> dict[str, Any]:
    """What an export records about the machine it validated int8 on (guardrt.json, the check set's meta)."""
    flags, source = cpu_flags() if platform.machine().lower() in ("x86_64", "amd64") else (set(), "none")
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:  # pragma: no cover - exports always have onnxruntime
        ort_version = None
    path = int8_path()
    return {"path": path, "kernel": INT8_PATHS.get(path, ("not characterised",))[0], "cpu": _cpu_name(),
            "flags": sorted(f for f in flags if f in _RELEVANT), "flags_from": source,
            "onnxruntime": ort_version}


def session_int8_path(session) -> str:
    """The int8 path a session runs on: the CPU's path, or the GPU execution provider that runs the graph."""
    providers = list(session.get_providers()) if session is not None else []
    if providers and providers[0] != "CPUExecutionProvider":
        return providers[0]
    return int8_path()


# -- the re-check -------------------------------------------------------------------------------------------------
class RecheckResult:
    """Outcome of `recheck`: `ran` (False when the path matched or no record exists), `ok`, and `line`: the one
    log line (empty when nothing was re-checked)."""

    def __init__(self, ran: bool, ok: bool, line: str = "", max_abs_diff: float | None = None,
                 agreement: float | None = None):
        self.ran, self.ok, self.line = ran, ok, line
        self.max_abs_diff, self.agreement = max_abs_diff, agreement

    def __repr__(self) -> str:
        return f"RecheckResult(ran={self.ran}, ok={self.ok}, line={self.line!r})"


def load_check_set(file: str | Path) -> dict[str, Any]:
    """The arrays of an `int8_check.npz` plus its parsed `meta`; ValueError (one line) when unreadable."""
    try:
        with np.load(str(file), allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        data["meta"] = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"int8 check set {file} is unreadable: {exc}") from None
    return data


def recheck_mode(value: str | None = None) -> str:
    """`value`, else $GUARDRT_INT8_RECHECK, else "refuse"; ValueError for anything but refuse | warn | off."""
    mode = (value or os.environ.get(RECHECK_ENV) or "refuse").strip().lower()
    if mode not in RECHECK_MODES:
        raise ValueError(f"{RECHECK_ENV} / int8 re-check mode must be one of {', '.join(RECHECK_MODES)}, got {mode!r}")
    return mode


def _decisions(meta: Mapping[str, Any], logits: np.ndarray) -> np.ndarray:
    if meta.get("decision") == "threshold":
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        positive = int(meta.get("positive_label", 1))
        return np.where(p[:, positive] >= float(meta.get("threshold", 0.5)), positive, 1 - positive)
    return logits.argmax(axis=1)


def recheck(check_file: str | Path, precision: str, infer: Callable[[dict[str, np.ndarray]], np.ndarray],
            current_path: str, model_name: str = "", mode: str | None = None) -> RecheckResult:
    """Re-run the held-out check set when `current_path` differs from the path `precision` was validated on.

    infer(feeds) -> logits [rows, labels] (feeds: the graph's input names -> int64 arrays). The check compares with
    the PyTorch fp32 reference stored at export: max |Δlogit| against the spec's gate for `precision` and decision
    agreement against its minimum. Returns a RecheckResult; `line` is the one line to log. The caller refuses to
    load when `not result.ok and mode == "refuse"`.
    """
    mode = recheck_mode(mode)
    check = load_check_set(check_file)
    meta = check["meta"]
    recorded = (meta.get("validated_on") or {}).get(precision)
    name = f"{model_name or meta.get('spec', 'model')} {precision}"
    if mode == "off" or not recorded:
        return RecheckResult(False, True)
    if recorded.get("path") == current_path:
        return RecheckResult(False, True)
    feeds = {n: check[n].astype(np.int64) for n in meta["input_names"]}
    logits = np.asarray(infer(feeds), dtype=np.float32)
    reference = check["reference"].astype(np.float32)
    if logits.shape != reference.shape:
        raise ValueError(f"{name}: int8 re-check got logits {logits.shape}, expected {reference.shape}")
    diff = float(np.max(np.abs(logits - reference))) if np.all(np.isfinite(logits)) else float("inf")
    agreement = float(np.mean(_decisions(meta, logits) == _decisions(meta, reference)))
    gate = meta["gates"][precision]
    ok = diff <= float(gate["atol"]) and agreement >= float(gate["min_agreement"])
    at_export = check.get(f"logits_{precision}")
    since = (f", {float(np.max(np.abs(logits - at_export))):.3g} from its logits at export"
             if at_export is not None and at_export.shape == logits.shape else "")
    verdict = "ok" if ok else {"refuse": "OVER THE GATE: refusing to load it (set GUARDRT_INT8_RECHECK=warn "
                                          "to load anyway, or serve fp32/fp16)",
                               "warn": "OVER THE GATE: loaded anyway (GUARDRT_INT8_RECHECK=warn)"}[mode]
    line = (f"guardrt int8 re-check, {name}: validated on {recorded.get('path')}, running on {current_path}; "
            f"max |Δlogit| vs PyTorch {diff:.3g} (gate {float(gate['atol']):g}), decisions "
            f"{agreement:.3f} agree (gate {float(gate['min_agreement']):g}) on {len(reference)} held-out rows"
            f"{since}: {verdict}")
    return RecheckResult(True, ok, line, diff, agreement)

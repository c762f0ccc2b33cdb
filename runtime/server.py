"""Launch the real `tritonserver` shipped in the nvidia-pytriton wheel, on 127.0.0.1 unless told otherwise.

`TritonServer(repo).start()` assembles a backend directory (the python backend + the stub built for the running
Python, copied out of the wheel; site-packages is never modified), starts the binary with every endpoint bound to
`host`, waits until the server and all its models are ready, and raises `ServerError` with Triton's own reason when
a model fails to load, a port is taken, or the binary is missing (`MissingExtraError` naming the `serve` extra).
`stop()` sends SIGTERM (Triton drains in-flight requests), SIGKILLs after a timeout, and removes any python-backend
stub left in Triton's process group. Usable as a context manager.

Triton never outlives the process that started it (`runtime/process_guard.py`): the kernel sends it SIGTERM when
that process dies (PR_SET_PDEATHSIG, when started from the main thread), and a watchdog process kills its whole
process group - stubs included - when that process dies, even by SIGKILL. `start(cancel=event)` gives up waiting
for readiness as soon as `event` is set (a signal during startup) and stops Triton at once.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from guardrt.runtime.errors import MissingExtraError, ServerError
from guardrt.runtime.process_guard import GroupWatchdog, kill_group, parent_death_signal

__all__ = [
    "StartupCancelled",
    "TritonInstall",
    "TritonServer",
    "assemble_backend_dir",
    "find_triton_install",
    "port_is_free",
    "free_port",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_GRPC_PORT = 8001
DEFAULT_HTTP_PORT = 8000
DEFAULT_METRICS_PORT = 8002
# Seconds Triton gets to exit after SIGTERM when its startup is cancelled (it exits at once while loading models;
# the bound only matters for a server that hangs), and for a watchdog-triggered shutdown before SIGKILL.
CANCEL_GRACE_S = 5.0


class StartupCancelled(ServerError):
    """`TritonServer.start(cancel=...)` was cancelled before the server was ready; Triton has been stopped."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel keeps the server binary, its libraries, the python backend and the per-Python stubs."""

    root: Path  # .../site-packages/pytriton/tritonserver
    binary: Path
    libs: Path  # .../site-packages/nvidia_pytriton.libs
    python_backend: Path  # directory with libtriton_python.so + triton_python_backend_utils.py
    stubs: Path  # directory with <major.minor>/triton_python_backend_stub

    def stub_for(self, version: str | None = None) -> Path:
        version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.stubs / version / "triton_python_backend_stub"
        if not stub.is_file():
            have = sorted(p.name for p in self.stubs.iterdir()) if self.stubs.is_dir() else []
            raise ServerError(f"the nvidia-pytriton wheel has no python backend stub for Python {version} "
                              f"(it has: {', '.join(have) or 'none'})")
        return stub


def find_triton_install() -> TritonInstall:
    """Locate the tritonserver shipped by nvidia-pytriton without importing pytriton (its import is heavy)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            "the Triton server binary is not installed (nvidia-pytriton missing); "
            "install it with: pip install 'guardrt[serve]'"
        )
    pkg = Path(list(spec.submodule_search_locations)[0])
    root = pkg / "tritonserver"
    install = TritonInstall(
        root=root,
        binary=root / "bin" / "tritonserver",
        libs=pkg.parent / "nvidia_pytriton.libs",
        python_backend=root / "backends" / "python",
        stubs=root / "python_backend_stubs",
    )
    if not install.binary.is_file():
        raise MissingExtraError(
            f"nvidia-pytriton is installed but {install.binary} is missing; reinstall with: pip install 'guardrt[serve]'"
        )
    return install


def _cache_root() -> Path:
    base = os.environ.get("GUARDRT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "guardrt"
    )
    return Path(base)


def assemble_backend_dir(dest: str | Path | None = None, install: TritonInstall | None = None) -> Path:
    """A Triton backend directory whose `python/` holds the python backend and the stub for this Python.

    Copies three files out of the wheel (about 3 MB) into `dest` (default: ~/.cache/guardrt/triton-backends/pyX.Y);
    reuses the directory when the copies are current. Returns the directory to pass as --backend-directory.
    """
    install = install or find_triton_install()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    dest = Path(dest) if dest is not None else _cache_root() / "triton-backends" / f"py{version}"
    sources = {
        "libtriton_python.so": install.python_backend / "libtriton_python.so",
        "triton_python_backend_utils.py": install.python_backend / "triton_python_backend_utils.py",
        "triton_python_backend_stub": install.stub_for(version),
    }
    target = dest / "python"

    def current() -> bool:
        for name, src in sources.items():
            dst = target / name
            if not dst.is_file() or dst.stat().st_size != src.stat().st_size or dst.stat().st_mtime < src.stat().st_mtime:
                return False
        return True

    if current():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    # Build next to the target and swap in with a rename so concurrent launchers never see a half-copied directory.
    tmp = Path(tempfile.mkdtemp(prefix=".python-", dir=dest))
    for name, src in sources.items():
        shutil.copy2(src, tmp / name)
    (tmp / "triton_python_backend_stub").chmod(0o755)
    old = dest / f".old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def port_is_free(port: int, host: str = DEFAULT_HOST) -> bool:
    """True when nothing listens on host:port (a bind succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port the OS reports free right now (for tests and ephemeral servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# Lines in Triton's log that explain why a model did not load, e.g.
# "E1124 ... model_lifecycle.cc:654] failed to load 'rejection' version 1: Internal: ..." and the status table row
# "| rejection | 1       | UNAVAILABLE: Internal: ... |".
_LOAD_FAIL = re.compile(r"failed to load '([^']+)'[^:]*: (.*)")
_TABLE_FAIL = re.compile(r"^\|\s*(\S+)\s*\|\s*\d+\s*\|\s*UNAVAILABLE: (.*?)\s*\|\s*$")


def load_failures(log_text: str) -> dict[str, str]:
    """{model: Triton's reason} for every model the log says failed to load."""
    out: dict[str, str] = {}
    for line in log_text.splitlines():
        m = _LOAD_FAIL.search(line) or _TABLE_FAIL.search(line.strip())
        if m:
            # Python-backend reasons carry the stub's traceback as escaped newlines; the first line is the reason.
            reason = m.group(2).split("\\n")[0].strip().rstrip('"').strip()
            out.setdefault(m.group(1), reason)
    return out


@dataclass
class TritonServer:
    """One tritonserver process serving `repo`. All endpoints bind `host` (127.0.0.1 by default)."""

    repo: str | Path
    host: str = DEFAULT_HOST
    grpc_port: int = DEFAULT_GRPC_PORT
    http_port: int | None = DEFAULT_HTTP_PORT  # None disables HTTP
    metrics_port: int | None = DEFAULT_METRICS_PORT  # None disables metrics
    models: tuple[str, ...] | None = None  # None: every model in the repository; otherwise explicit mode, these only
    log_verbose: int = 0
    startup_timeout_s: float = 180.0
    backend_dir: str | Path | None = None
    extra_args: tuple[str, ...] = ()
    log_path: str | Path | None = None  # default: a temp file, kept when start fails
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.repo = Path(self.repo)
        self.process: subprocess.Popen | None = None
        self._log_file = None
        self._own_log = False  # a temp log we created: removed after a clean stop, kept when anything failed
        self._watchdog: GroupWatchdog | None = None
        self.start_seconds: float | None = None

    # -- command line -------------------------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.grpc_port}"

    def command(self, install: TritonInstall, backend_dir: Path) -> list[str]:
        cmd = [
            str(install.binary),
            f"--model-repository={self.repo.resolve()}",
            f"--backend-directory={backend_dir}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--log-verbose={self.log_verbose}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=10",
        ]
        if self.http_port is None:
            cmd.append("--allow-http=false")
        else:
            cmd += ["--allow-http=true", f"--http-address={self.host}", f"--http-port={self.http_port}"]
        if self.metrics_port is None:
            cmd.append("--allow-metrics=false")
        else:
            # Triton serves metrics on the HTTP address unless --metrics-address is given; bind it explicitly.
            cmd += ["--allow-metrics=true", "--allow-gpu-metrics=false",
                    f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        if self.models is not None:
            cmd.append("--model-control-mode=explicit")
            cmd += [f"--load-model={m}" for m in self.models]
        cmd += list(self.extra_args)
        return cmd

    def environment(self, install: TritonInstall) -> dict[str, str]:
        env = dict(os.environ)
        libs = str(install.libs)
        env["LD_LIBRARY_PATH"] = libs + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
        # The stub embeds Python and finds its prefix through `python3` on PATH: put this interpreter's bin first so
        # the stub sees this environment's site-packages (numpy, onnxruntime, guardrt).
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        # The stub gets this environment's stdlib and site-packages from the PATH lookup above; pass on only the
        # extra sys.path entries (e.g. a source checkout) so nothing shadows the interpreter's own stdlib.
        roots = tuple(str(Path(r).resolve()) for r in {sys.prefix, sys.base_prefix, sys.exec_prefix})
        paths = [p for p in sys.path if p and Path(p).is_dir() and not str(Path(p).resolve()).startswith(roots)]
        if env.get("PYTHONPATH"):
            paths.insert(0, env["PYTHONPATH"])
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update(self.env)
        return env

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def _check_ports(self) -> None:
        for what, port in (("gRPC", self.grpc_port), ("HTTP", self.http_port), ("metrics", self.metrics_port)):
            if port is not None and not port_is_free(port, self.host if self.host not in ("", "0.0.0.0") else "0.0.0.0"):
                raise ServerError(
                    f"{what} port {port} on {self.host} is already in use; pick another with "
                    f"--{what.lower()}-port (or stop the process holding it)"
                )
        if len({p for p in (self.grpc_port, self.http_port, self.metrics_port) if p is not None}) != sum(
            p is not None for p in (self.grpc_port, self.http_port, self.metrics_port)
        ):
            raise ServerError("gRPC, HTTP and metrics ports must differ")

    def start(self, cancel: threading.Event | None = None) -> "TritonServer":
        """Start Triton and wait until it and its models are ready. Setting `cancel` (e.g. from a signal handler)
        stops the wait at once: Triton is stopped and StartupCancelled raised."""
        if self.process is not None and self.process.poll() is None:
            return self
        if not self.repo.is_dir():
            raise ServerError(f"model repository {self.repo} does not exist (write one with `guardrt repo`)")
        install = find_triton_install()
        self._check_ports()
        backend_dir = Path(self.backend_dir) if self.backend_dir else assemble_backend_dir(install=install)
        if self.log_path is None:
            fd, path = tempfile.mkstemp(prefix="guardrt-triton-", suffix=".log")
            os.close(fd)
            self.log_path = path
            self._own_log = True
        if cancel is not None and cancel.is_set():
            raise StartupCancelled("startup cancelled before tritonserver was started")
        self._log_file = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.process = subprocess.Popen(
            self.command(install, backend_dir),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.environment(install),
            # Its own process group (with its stubs): a terminal's Ctrl-C reaches us, and we stop Triton gracefully.
            start_new_session=True,
            preexec_fn=parent_death_signal(signal.SIGTERM),
        )
        self._watchdog = GroupWatchdog(self.process.pid, grace_s=CANCEL_GRACE_S)
        try:
            self._wait_ready(cancel)
        except StartupCancelled:
            self.stop(timeout_s=CANCEL_GRACE_S)
            raise
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - t0
        return self

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(encoding="utf-8", errors="replace") if self.log_path else ""
        except OSError:
            return ""

    def _failure_message(self, prefix: str) -> str:
        log = self.log_text()
        failures = load_failures(log)
        if failures:
            reasons = "; ".join(f"model '{m}' failed to load: {r}" for m, r in failures.items())
            return f"{prefix}: {reasons} (full log: {self.log_path})"
        errors = [ln.strip() for ln in log.splitlines() if ln.startswith("E") or "error" in ln.lower()]
        tail = errors[-1] if errors else (log.strip().splitlines()[-1] if log.strip() else "no output")
        return f"{prefix}: {tail} (full log: {self.log_path})"

    def _wait_ready(self, cancel: threading.Event | None = None) -> None:
        from guardrt.runtime.errors import require

        grpcclient = require("tritonclient.grpc", "client")
        deadline = time.monotonic() + self.startup_timeout_s
        client = None
        try:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise ServerError(self._failure_message(f"tritonserver exited with code {code}"))
                if client is None:
                    client = grpcclient.InferenceServerClient(self.grpc_url)
                try:
                    if client.is_server_live() and client.is_server_ready():
                        return
                except Exception:  # not listening yet
                    pass
                if time.monotonic() > deadline:
                    raise ServerError(self._failure_message(
                        f"tritonserver not ready after {self.startup_timeout_s:.0f}s"))
                if cancel is not None and cancel.wait(0.2):
                    raise StartupCancelled("startup cancelled before tritonserver was ready")
                if cancel is None:
                    time.sleep(0.2)
        finally:
            if client is not None:
                client.close()

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, wait up to `timeout_s` for Triton to drain and exit, then SIGKILL; then remove whatever is left
        of its process group (python-backend stubs). Returns Triton's exit code."""
        proc, self.process = self.process, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    code = proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    kill_group(proc.pid)
                    code = proc.wait()
            else:
                code = proc.returncode
            kill_group(proc.pid)  # the stubs are in Triton's group; none may outlive it
        if self._watchdog is not None:
            self._watchdog.dismiss()
            self._watchdog = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
            if self._own_log and code == 0 and self.start_seconds is not None:
                Path(self.log_path).unlink(missing_ok=True)
        return code

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

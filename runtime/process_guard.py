"""Keep a child process group from outliving the process that started it (tritonserver and its python stubs).

Two independent mechanisms, because either alone leaves a gap:

* `parent_death_signal(sig)` -> a `preexec_fn` that sets Linux's PR_SET_PDEATHSIG, so the kernel sends `sig` to the
  child the moment its parent dies, however it dies (SIGKILL included). It covers the direct child only (Triton's
  python-backend stubs are Triton's children, and Triton SIGKILLed by a pdeathsig would leave them running until they
  notice, which takes seconds), and the kernel ties it to the *thread* that forked: use it only from the main thread.
* `GroupWatchdog(pgid)`: a tiny separate Python process, in its own session, holding the read end of a pipe whose
  write end only this process holds. When this process dies, the kernel closes the pipe; the watchdog sees EOF and
  kills the whole group: SIGTERM (Triton shuts down gracefully and stops its stubs), then SIGKILL to whatever is
  left once Triton has exited, or after `grace_s`. `dismiss()` ends it without killing anything (a normal stop). It exits by itself once the
  group is empty, so it never signals a process group id that has been reused.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from typing import Callable

__all__ = ["GroupWatchdog", "kill_group", "parent_death_signal"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` making the kernel send `sig` to the child when this process dies; None where that is not
    available (not Linux, or not called from the main thread: the kernel would fire when the calling thread exits).

    `prctl` is resolved here, in the parent, so the child runs no dynamic loading between fork and exec."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: act as the signal would have
            os.kill(os.getpid(), sig)

    return preexec


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Send `sig` to every process of group `pgid`; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal (should not happen for our own children)
        return True


# The watchdog's program. argv: pgid, grace seconds. stdin: the pipe (EOF = the parent died; "q" = dismissed).
_WATCHDOG = r"""
import os, select, signal, sys, time
pgid, grace = int(sys.argv[1]), float(sys.argv[2])
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)  # only the pipe decides; a terminal's signals are for the parent

def group_alive():
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True

def leader_alive():  # the group leader (tritonserver); a zombie counts as gone
    try:
        with open(f"/proc/{pgid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

while group_alive():
    ready, _, _ = select.select([0], [], [], 1.0)
    if not ready:
        continue
    if os.read(0, 1):  # dismissed: the parent stopped the group itself
        sys.exit(0)
    # The parent died. SIGTERM: Triton shuts down gracefully and stops its stubs. Whatever is left once Triton is
    # gone (or after the grace period) is killed: stubs have no use without it.
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        sys.exit(0)
    end = time.monotonic() + grace
    while leader_alive() and time.monotonic() < end:
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    sys.exit(0)
"""


class GroupWatchdog:
    """Kills process group `pgid` (SIGTERM, then SIGKILL after `grace_s`) when this process dies."""

    def __init__(self, pgid: int, grace_s: float = 5.0):
        self.pgid = pgid
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", _WATCHDOG, str(pgid), str(grace_s)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # not in our process group: a signal aimed at us and our group spares it
        )

    def dismiss(self) -> None:
        """Stop watching (after a normal stop): the watchdog exits without signalling anything."""
        proc, self.process = self.process, None
        if proc is None:
            return
        try:
            proc.stdin.write(b"q")
            proc.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

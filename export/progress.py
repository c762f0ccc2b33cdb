"""A minimal progress display for long build steps: one line per step with its duration, and an in-place counter
for loops (validation batches, calibration) when stderr is a terminal. No dependencies."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

__all__ = ["Progress", "stderr_log"]


def stderr_log(msg: str) -> None:
    print(f"[guardrt] {msg}", file=sys.stderr, flush=True)


class Progress:
    """`with Progress.step("exporting fp32", log): ...` logs "exporting fp32 ..." then "exporting fp32: done in 3.2s".
    `Progress.count(log, "validating", total)` returns a callable to report i/total."""

    @staticmethod
    @contextlib.contextmanager
    def step(title: str, log: Callable[[str], None] | None) -> Iterator[dict]:
        log = log or (lambda msg: None)
        log(f"{title} ...")
        t0 = time.perf_counter()
        info: dict = {}
        yield info
        info["seconds"] = time.perf_counter() - t0
        log(f"{title}: done in {info['seconds']:.1f}s")

    @staticmethod
    def count(log: Callable[[str], None] | None, title: str, total: int) -> Callable[[int], None]:
        """A reporter for loops: in-place on a terminal, otherwise a line at about every 25%."""
        if log is None:
            return lambda i: None
        tty = log is stderr_log and sys.stderr.isatty()
        marks = {max(1, round(total * q)) for q in (0.25, 0.5, 0.75, 1.0)}

        def report(i: int) -> None:
            if tty:
                end = "\n" if i >= total else ""
                print(f"\r[guardrt]   {title}: {i}/{total}", end=end, file=sys.stderr, flush=True)
            elif i in marks:
                log(f"  {title}: {i}/{total}")

        return report

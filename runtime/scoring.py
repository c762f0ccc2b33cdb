"""Batch scoring: a file of rows -> the same rows plus the card's output fields, resumable (`guardrt score`).

* Engines (runtime/score_engines.py) turn payloads into the card's output fields, in-process or over Triton.
* `score_chunk` reads one chunk, scores it and writes its part file (runtime/score_io.py has the file layout and
  what "finished" means). The same function runs in this process and in the Ray actors (runtime/ray_scoring.py),
  so both give the same rows.
* `run_score_job`: plan or resume, score the unfinished chunks here or on Ray, join the parts into the output.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from guardrt.runtime.errors import InputError, ModelFilesError
from guardrt.runtime.score_engines import EngineConfig, card_output_fields
from guardrt.runtime.score_io import Chunk, JobLayout, assemble_output, prepare_job, read_chunk, write_part
from guardrt.runtime.specs import get_spec

__all__ = ["ChunkSummary", "ProgressBar", "ScoreSummary", "run_score_job", "score_chunk"]


# -- one chunk --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkSummary:
    index: int
    rows: int
    errors: int
    seconds: float


def _bad_row_reason(record: dict | None, key: str, reserved: Sequence[str]) -> str | None:
    if key not in record:
        return f'no "{key}" field'
    clash = [name for name in reserved if name in record]
    if clash:
        return (f"has field(s) {', '.join(clash)} that the output would overwrite "
                "(rename them, or pass --field-prefix)")
    return None


def score_chunk(layout: JobLayout, chunk: Chunk, engine, field_prefix: str = "") -> ChunkSummary:
    """Read, score and write one chunk (its part file appears only once it is complete)."""
    from guardrt.runtime.payloads import payload_field, payload_from_record

    t0 = time.perf_counter()
    rows = read_chunk(layout, chunk)
    key = payload_field(engine.spec)
    fields = [field_prefix + name for name in card_output_fields(engine.spec)]
    results: list[dict | None] = [None] * len(rows.records)
    payloads, slots = [], []
    for i, (record, error, where) in enumerate(zip(rows.records, rows.errors, rows.where)):
        reason = error or _bad_row_reason(record, key, [*fields, "error"])
        if reason:
            results[i] = {"error": reason if error else f"{where}: {reason}"}
        else:
            payloads.append(payload_from_record(record, engine.spec))
            slots.append(i)
    for i, result in zip(slots, engine.score(payloads) if payloads else []):
        if "error" in result:
            results[i] = {"error": f"{rows.where[i]}: {result['error']}"}
        else:
            results[i] = {field_prefix + k: v for k, v in result.items()}
    write_part(layout, chunk, rows, results, fields)
    bad = sum(1 for r in results if "error" in r)
    return ChunkSummary(chunk.index, len(results), bad, time.perf_counter() - t0)


# -- progress ---------------------------------------------------------------------------------------------------------
class ProgressBar:
    """Rows done / total with rate and ETA on stderr: redrawn in place on a terminal, else a line every 10%
    (or 30 s)."""

    def __init__(self, total: int, done: int = 0, title: str = "scoring", stream=None, enabled: bool = True):
        self.total, self.done, self.title = total, done, title
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start_done, self.t0 = done, time.monotonic()
        self._last_line = (done, self.t0)
        if enabled:
            self._draw(force=True)

    def update(self, rows: int) -> None:
        self.done += rows
        if self.enabled:
            self._draw()

    def _text(self) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "--:--:--"
        return f"[guardrt] {self.title} [{bar}] {self.done}/{self.total} rows ({100 * frac:.0f}%) {rate:.1f} rows/s ETA {eta_text}"

    def _draw(self, force: bool = False) -> None:
        if self.tty:
            print("\r" + self._text(), end="", file=self.stream, flush=True)
            return
        done0, t_last = self._last_line
        now = time.monotonic()
        if force or self.done >= self.total or self.done - done0 >= max(1, self.total // 10) or now - t_last >= 30:
            print(self._text(), file=self.stream, flush=True)
            self._last_line = (self.done, now)

    def close(self) -> None:
        if self.tty and self.enabled:
            print(file=self.stream, flush=True)
        self.enabled = False


# -- the job ----------------------------------------------------------------------------------------------------------
@dataclass
class ScoreSummary:
    output: str
    state: str  # "done" (nothing to do), "new", "resume"
    total_rows: int = 0
    rows_scored: int = 0  # in this run
    bad_rows: int = 0  # in this run
    chunks_scored: int = 0
    chunks_kept: int = 0  # finished by an earlier run
    seconds: float = 0.0
    workers: Any = None  # the Ray worker plan, when on Ray
    chunk_done_at: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, rows) per chunk

    @property
    def rows_per_s(self) -> float:
        return self.rows_scored / self.seconds if self.seconds else 0.0

    @property
    def steady_rows_per_s(self) -> float:
        """Rows/s between the first and the last finished chunk: leaves out start-up (model load, Ray start and
        actor creation), which `rows_per_s` includes."""
        if len(self.chunk_done_at) < 2:
            return self.rows_per_s
        (t_first, _), (t_last, _) = self.chunk_done_at[0], self.chunk_done_at[-1]
        rows = sum(n for _, n in self.chunk_done_at[1:])
        return rows / (t_last - t_first) if t_last > t_first else 0.0


def _check_parquet_columns(layout: JobLayout, key: str, reserved: Sequence[str]) -> None:
    import pyarrow.parquet as pq

    names = pq.read_schema(layout.input).names
    if key not in names:
        raise InputError(f'{layout.input} has no "{key}" column (columns: {", ".join(names)})')
    clash = [n for n in reserved if n in names]
    if clash:
        raise InputError(f"{layout.input} has column(s) {', '.join(clash)} that the output would overwrite "
                         "(rename them, or pass --field-prefix)")


def run_score_job(
    input_path: str | Path,
    output_path: str | Path,
    engine: EngineConfig,
    *,
    input_format: str | None = None,
    output_format: str | None = None,
    chunk_rows: int = 1024,
    field_prefix: str = "",
    overwrite: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ScoreSummary:
    """Score `input_path` into `output_path` (see the module docstring); `ray_address` ("local" starts and stops a
    local Ray instance) runs the chunks on Ray actors instead of in this process."""
    from guardrt.runtime.payloads import payload_field

    log = log or (lambda msg: print(f"[guardrt] {msg}", file=sys.stderr, flush=True))
    spec = get_spec(engine.spec)
    engine.check()
    settings = {**engine.settings(), "field_prefix": field_prefix}
    layout, state = prepare_job(input_path, output_path, input_format=input_format, output_format=output_format,
                                chunk_rows=chunk_rows, settings=settings, overwrite=overwrite)
    summary = ScoreSummary(str(layout.output), state)
    if state == "done":
        log(f"{layout.output} exists and no unfinished parts are left: nothing to do (--overwrite scores again)")
        return summary
    key = payload_field(spec)
    if layout.input_format == "parquet":
        _check_parquet_columns(layout, key, [field_prefix + n for n in card_output_fields(spec)] + ["error"])
    finished = layout.finished()
    pending = [c for c in layout.chunks if c.index not in finished]
    summary.total_rows = sum(c.rows for c in layout.chunks)
    summary.chunks_kept = len(finished)
    if finished:
        log(f"resuming: {len(finished)} of {len(layout.chunks)} chunks already finished in {layout.work_dir}")
    bar = ProgressBar(summary.total_rows, summary.total_rows - sum(c.rows for c in pending), enabled=progress)

    def done(s: ChunkSummary) -> None:
        summary.rows_scored += s.rows
        summary.bad_rows += s.errors
        summary.chunks_scored += 1
        summary.chunk_done_at.append((time.perf_counter() - t0, s.rows))
        bar.update(s.rows)

    t0 = time.perf_counter()
    try:
        if pending and ray_address:
            from guardrt.runtime.ray_scoring import run_chunks_on_ray

            summary.workers = run_chunks_on_ray(layout, pending, engine, field_prefix=field_prefix,
                                                address=ray_address, workers=workers, on_done=done)
        elif pending:
            scorer = engine.build()
            try:
                for chunk in pending:
                    done(score_chunk(layout, chunk, scorer, field_prefix))
            finally:
                scorer.close()
        summary.seconds = time.perf_counter() - t0
    except KeyboardInterrupt:
        bar.close()
        log(f"interrupted: {len(layout.finished())} of {len(layout.chunks)} chunks are finished in "
            f"{layout.work_dir}; run the same command again to resume")
        raise
    finally:
        bar.close()
    rows = assemble_output(layout)
    if rows != summary.total_rows:
        raise ModelFilesError(f"{layout.output}: wrote {rows} rows, planned {summary.total_rows}")
    return summary

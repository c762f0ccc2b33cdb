"""Rows in and out for batch scoring (`guardrt score`): input formats, the chunk plan, part files, the final output.

A scoring job cuts its input into chunks of `chunk_rows` consecutive rows (JSONL: non-blank lines; Parquet: rows).
Each chunk's result is one part file in the work directory `OUT.parts/`, written under a temporary name and renamed
into place (atomic on POSIX filesystems):

* a chunk is **finished** exactly when `part-NNNNNN.<fmt>` exists; anything else (a `.tmp-*` file, no file) is
  redone by the next run;
* `manifest.json` pins what the parts were made from (the input's size, mtime and head/tail hash, the spec, the
  model, the settings that change results, the chunk size, the formats); a re-run with the same manifest scores
  only the unfinished chunks, a different one is refused;
* when every part exists they are joined into `OUT` (temporary name, fsync, rename) and the work directory is
  removed.

So a crash at any moment leaves no `OUT` or a complete one, and parts that are complete or absent; which process
wrote a part (this one, an earlier run, a Ray actor) does not matter.

pyarrow (the `scale` extra) is needed only when Parquet is read or written.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from guardrt.runtime.errors import GuardrtError, InputError, ModelFilesError, require

__all__ = [
    "Chunk",
    "ChunkRows",
    "JobLayout",
    "assemble_output",
    "detect_format",
    "input_fingerprint",
    "plan_chunks",
    "prepare_job",
    "read_chunk",
    "write_part",
]

FORMATS = ("jsonl", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
MANIFEST_VERSION = 1


def detect_format(path: str | Path, override: str | None = None) -> str:
    """"jsonl" or "parquet": `override` when given, else from the file name's extension."""
    if override:
        if override not in FORMATS:
            raise InputError(f"format must be one of {', '.join(FORMATS)}, got {override!r}")
        return override
    fmt = _SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"cannot tell the format of {path} from its extension: name it .jsonl or .parquet, "
                         "or pass the format flag")
    return fmt


def _pyarrow():
    require("pyarrow.parquet", "scale")
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


# -- the plan ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of the input (0-based row numbers). JSONL chunks also know where they start in the file."""

    index: int
    start: int
    stop: int
    byte_offset: int = 0  # JSONL: file offset of the chunk's first line
    first_line: int = 0  # JSONL: 1-based line number of the chunk's first line

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_chunks(path: str | Path, fmt: str, chunk_rows: int) -> list[Chunk]:
    """The chunks covering the input: one pass over a JSONL file (line offsets), Parquet metadata only."""
    path = Path(path)
    if chunk_rows < 1:
        raise InputError(f"chunk rows must be >= 1, got {chunk_rows}")
    if fmt == "parquet":
        _, pq = _pyarrow()
        n = _parquet_file(path, pq).metadata.num_rows
        return [Chunk(i, s, min(s + chunk_rows, n)) for i, s in enumerate(range(0, n, chunk_rows))]
    chunks: list[Chunk] = []
    row = 0
    offset = 0
    start = None  # (offset, line number) of the open chunk's first row
    with _open_input(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                if start is None:
                    start = (offset, lineno)
                row += 1
                if row % chunk_rows == 0:
                    chunks.append(Chunk(len(chunks), row - chunk_rows, row, start[0], start[1]))
                    start = None
            offset += len(line)
    if start is not None:
        first = len(chunks) * chunk_rows
        chunks.append(Chunk(len(chunks), first, row, start[0], start[1]))
    return chunks


def _open_input(path: Path):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise ModelFilesError(f"cannot read input {path}: {exc.strerror}") from None


def _parquet_file(path: Path, pq):
    try:
        return pq.ParquetFile(path)
    except OSError as exc:
        raise ModelFilesError(f"cannot read input {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # pyarrow.lib.ArrowInvalid for a file that is not Parquet
        raise ModelFilesError(f"cannot read input {path} as Parquet: {exc}") from None


def input_fingerprint(path: str | Path) -> dict[str, Any]:
    """Size, mtime and a hash of the first and last MiB: enough to notice that the input changed between runs
    without reading all of a large file."""
    path = Path(path)
    try:
        st = path.stat()
        h = hashlib.sha256()
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
            if st.st_size > 2 << 20:
                f.seek(st.st_size - (1 << 20))
                h.update(f.read())
    except OSError as exc:
        raise ModelFilesError(f"cannot read input {path}: {exc.strerror}") from None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_tail_sha256": h.hexdigest()}


# -- the job's files ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobLayout:
    """Where a job reads and writes; picklable (Ray actors get a copy)."""

    input: str
    output: str
    input_format: str
    output_format: str
    chunks: tuple[Chunk, ...] = field(default=())

    @property
    def work_dir(self) -> Path:
        return Path(self.output + ".parts")

    def part_path(self, index: int) -> Path:
        return self.work_dir / f"part-{index:06d}.{self.output_format}"

    def finished(self) -> set[int]:
        return {c.index for c in self.chunks if self.part_path(c.index).is_file()}


def prepare_job(input_path: str | Path, output_path: str | Path, *, input_format: str | None = None,
                output_format: str | None = None, chunk_rows: int = 1024, settings: dict[str, Any],
                overwrite: bool = False) -> tuple[JobLayout, str]:
    """Plan the job and set up (or reopen) its work directory.

    Returns (layout, state): state is "done" when OUT already exists and no work directory is left (nothing to do),
    "new" or "resume". `settings` are whatever changes the results (spec, model, threshold...): a work directory
    made with other settings, another input or another chunk size is refused unless `overwrite`.
    """
    input_path, output_path = Path(input_path).resolve(), Path(output_path).resolve()
    if not input_path.is_file():
        raise ModelFilesError(f"input {input_path} does not exist (or is not a file)")
    if input_path == output_path:
        raise InputError("the output must not be the input file")
    in_fmt = detect_format(input_path, input_format)
    out_fmt = detect_format(output_path, output_format)
    work_dir = Path(str(output_path) + ".parts")
    if overwrite:
        shutil.rmtree(work_dir, ignore_errors=True)
        output_path.unlink(missing_ok=True)
    elif output_path.exists() and not work_dir.exists():
        return JobLayout(str(input_path), str(output_path), in_fmt, out_fmt), "done"
    elif output_path.exists():  # crashed after the final rename, before removing the work dir: OUT is complete
        shutil.rmtree(work_dir, ignore_errors=True)
        return JobLayout(str(input_path), str(output_path), in_fmt, out_fmt), "done"
    manifest = {
        "version": MANIFEST_VERSION,
        "input": str(input_path),
        "input_fingerprint": input_fingerprint(input_path),
        "input_format": in_fmt,
        "output_format": out_fmt,
        "chunk_rows": int(chunk_rows),
        "settings": settings,
    }
    manifest_path = work_dir / "manifest.json"
    state = "new"
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old is not None and {k: v for k, v in old.items() if k != "chunks"} != manifest:
            changed = [k for k in manifest if k != "settings" and old.get(k) != manifest[k]]
            old_settings = old.get("settings") or {}
            changed += [k for k in {**old_settings, **settings} if old_settings.get(k) != settings.get(k)]
            raise InputError(f"{work_dir} holds parts of another job (different {', '.join(changed)}); "
                             "pass --overwrite to start again, or remove it")
        state = "resume" if old is not None else "new"
    if state == "resume":
        chunks = tuple(Chunk(**c) for c in old["chunks"])
    else:
        chunks = tuple(plan_chunks(input_path, in_fmt, chunk_rows))
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
        _atomic_write_bytes(manifest_path, json.dumps({**manifest, "chunks": [asdict(c) for c in chunks]},
                                                      indent=1).encode())
    return JobLayout(str(input_path), str(output_path), in_fmt, out_fmt, chunks), state


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- reading a chunk --------------------------------------------------------------------------------------------------
@dataclass
class ChunkRows:
    """One chunk's input rows. `records[i]` is the row's fields (None when the line is not a JSON object, with the
    reason in `errors[i]`); `where[i]` names the row in messages ("line 12" / "row 11"). Parquet input also keeps
    the Arrow table, so a Parquet output keeps the input's column types exactly."""

    records: list[dict | None]
    errors: list[str | None]
    where: list[str]
    table: Any = None


def read_chunk(layout: JobLayout, chunk: Chunk) -> ChunkRows:
    if layout.input_format == "parquet":
        return _read_parquet_chunk(Path(layout.input), chunk)
    records: list[dict | None] = []
    errors: list[str | None] = []
    where: list[str] = []
    with _open_input(Path(layout.input)) as f:
        f.seek(chunk.byte_offset)
        lineno = chunk.first_line - 1
        while len(records) < chunk.rows:
            raw = f.readline()
            lineno += 1
            if not raw:
                raise ModelFilesError(f"input {layout.input} is shorter than when the job was planned "
                                      "(pass --overwrite to start again)")
            if not raw.strip():
                continue
            where.append(f"line {lineno}")
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                records.append(None)
                reason = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
                errors.append(f"line {lineno}: not valid JSON ({reason})")
                continue
            if not isinstance(obj, dict):
                records.append(None)
                errors.append(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
                continue
            records.append(obj)
            errors.append(None)
    return ChunkRows(records, errors, where)


def _read_parquet_chunk(path: Path, chunk: Chunk) -> ChunkRows:
    pa, pq = _pyarrow()
    pf = _parquet_file(path, pq)
    groups, first_row, row = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if row + n > chunk.start and row < chunk.stop:
            groups.append(g)
            first_row = row if first_row is None else first_row
        row += n
    table = pf.read_row_groups(groups) if groups else pf.schema_arrow.empty_table()
    table = table.slice(chunk.start - (first_row or 0), chunk.rows)
    records = table.to_pylist()
    return ChunkRows(records, [None] * len(records), [f"row {chunk.start + i}" for i in range(len(records))], table)


# -- writing a part ---------------------------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    """Parquet values JSON has no type for: timestamps/dates as ISO text, bytes as UTF-8 text, the rest as str."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _json_line(obj: dict) -> bytes:
    """One UTF-8 JSON line; a row holding a lone surrogate (valid in JSON text, not in UTF-8) keeps it as \\uXXXX."""
    try:
        return (json.dumps(obj, ensure_ascii=False, default=_json_default) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(obj, ensure_ascii=True, default=_json_default) + "\n").encode("ascii")


def write_part(layout: JobLayout, chunk: Chunk, rows: ChunkRows, results: list[dict], output_fields: list[str]) -> Path:
    """Write one chunk's output rows (input fields + results) as its part file, atomically."""
    path = layout.part_path(chunk.index)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    if layout.output_format == "jsonl":
        with open(tmp, "wb") as f:
            for record, result in zip(rows.records, results):
                f.write(_json_line({**(record or {}), **result}))
            f.flush()
            os.fsync(f.fileno())
    else:
        pa, pq = _pyarrow()
        table = rows.table
        if table is None:
            table = _table_from_records(rows, results, pa)
        for name in (*output_fields, "error"):
            values = [r.get(name) for r in results]
            if name in table.column_names:  # JSONL rows that had the field are bad rows (see scoring): keep theirs
                values = [r[name] if name in r else (rec or {}).get(name) for r, rec in zip(results, rows.records)]
                table = table.drop_columns([name])
            try:
                table = table.append_column(name, pa.array(values, type=pa.string() if name == "error" else None))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise GuardrtError(f"cannot write {rows.where[0]}..{rows.where[-1]} as Parquet (column {name}: "
                                   f"{exc}); write JSONL instead") from None
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _table_from_records(rows: ChunkRows, results: list[dict], pa):
    """JSON rows as an Arrow table. When their values do not fit one type per column (e.g. a bad row with a number
    where the others have text), the bad rows keep only their `error` (JSONL output keeps every field)."""
    def table(records):  # every field of every row (from_pylist would take the first row's fields only)
        names = list(dict.fromkeys(k for r in records for k in r))
        if not names:  # no fields at all: a table of len(records) rows and no columns
            return pa.table({"_": pa.nulls(len(records))}).drop_columns(["_"])
        return pa.table({k: [r.get(k) for r in records] for k in names})

    try:
        return table([r or {} for r in rows.records])
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError):
        pass
    try:
        return table([{} if "error" in res else (rec or {}) for rec, res in zip(rows.records, results)])
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError) as exc:
        raise GuardrtError(f"cannot write {rows.where[0]}..{rows.where[-1]} as Parquet ({exc}); "
                           "write JSONL instead") from None


# -- the final output -------------------------------------------------------------------------------------------------
def assemble_output(layout: JobLayout) -> int:
    """Join every part into OUT (atomically) and remove the work directory; the number of rows written."""
    missing = [c.index for c in layout.chunks if not layout.part_path(c.index).is_file()]
    if missing:
        raise GuardrtError(f"cannot assemble {layout.output}: {len(missing)} chunk(s) unfinished (first: {missing[0]})")
    out = Path(layout.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")
    rows = 0
    if layout.output_format == "jsonl":
        with open(tmp, "wb") as dst:
            for c in layout.chunks:
                with open(layout.part_path(c.index), "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
                rows += c.rows
            dst.flush()
            os.fsync(dst.fileno())
    else:
        pa, pq = _pyarrow()
        parts = [layout.part_path(c.index) for c in layout.chunks]
        if parts:
            # A column that is all null in one part (every row of a chunk bad) has type null there: unify.
            try:
                schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise GuardrtError(f"the chunks of {layout.output} disagree on column types ({exc}); "
                                   "write JSONL instead") from None
        else:
            schema = _empty_schema(layout, pa, pq)
        with pq.ParquetWriter(tmp, schema) as writer:
            for p in parts:
                table = pq.read_table(p)
                writer.write_table(_conform(table, schema, pa))
                rows += table.num_rows
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, out)
    shutil.rmtree(layout.work_dir, ignore_errors=True)
    return rows


def _empty_schema(layout: JobLayout, pa, pq):
    if layout.input_format == "parquet":
        return pq.read_schema(layout.input)
    return pa.schema([])


def _conform(table, schema, pa):
    """`table` with `schema`'s columns in its order: missing ones as nulls, null-typed ones cast."""
    columns = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            columns.append(col if col.type == f.type else col.cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)

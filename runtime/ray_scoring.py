"""`guardrt score --ray`: the chunks of a scoring job run on a Ray cluster with Ray Data.

The dataset is the job's unfinished chunk numbers; `map_batches` hands them to a pool of actors, each holding one
guardrt engine (an ONNX Runtime classifier, or Triton clients), and each actor runs the very `score_chunk` the
single-process run uses: it reads its chunk's rows, scores them and writes the chunk's part file atomically. So
the output is the same, row for row, a job can be resumed on Ray that started without it (or the reverse), and
a retried actor task just rewrites the same part.

Why not `read_parquet -> map_batches -> write_parquet` on the rows themselves: Ray's built-in readers give no row
positions and its writers no atomic, chunk-aligned files, which is what keeps the input order and makes the job
resumable. Reading a chunk is a seek (JSONL: byte offset from the plan) or a row-group read (Parquet), so the input
must be reachable from every node at the same path (a shared filesystem), as it must for Ray's own readers.

Sizing (`plan_workers`): one actor per GPU for a GPU engine; on CPUs, one single-threaded actor per CPU (no ORT
thread pool to synchronise, and the count follows the cluster's CPUs; on the 2-core development machine 2x1 and 1x2
measured within noise of each other: README "Batch scoring"); for Triton, client actors (one CPU each, up to 4 per
URL). ray comes from the `scale` extra.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

from guardrt.runtime.errors import GuardrtError, InputError, require
from guardrt.runtime.score_io import Chunk, JobLayout
from guardrt.runtime.score_engines import EngineConfig
from guardrt.runtime.scoring import ChunkSummary, score_chunk

__all__ = ["WorkerPlan", "plan_workers", "run_chunks_on_ray", "ChunkScorerActor"]

LOCAL = "local"  # `--ray` without an address: start a local Ray instance for this job, stop it afterwards
TRITON_ACTORS_PER_URL = 4  # client actors tokenize and wait on the server; a few per server keep its batcher fed
LOCAL_OBJECT_STORE_BYTES = 256 << 20  # only chunk numbers and summaries travel through it


@dataclass(frozen=True)
class WorkerPlan:
    """How many actors, and the resources each asks Ray for."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads_per_actor: int | None  # ONNX Runtime intra-op threads (in-process engine); None: not set

    def describe(self) -> str:
        gpu = f", {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        threads = f", {self.threads_per_actor} ORT thread(s)" if self.threads_per_actor else ""
        return f"{self.actors} actor(s) x ({self.cpus_per_actor:g} CPU{gpu}{threads})"


def plan_workers(
    resources: Mapping[str, float],
    *,
    engine: str,
    uses_gpu: bool = False,
    pending_chunks: int,
    urls: int = 0,
    workers: int | None = None,
    threads: int | None = None,
) -> WorkerPlan:
    """Actors for a job from the cluster's total resources (`ray.cluster_resources()`).

    * GPU engine (in-process ORT with CUDA/TensorRT providers): one actor per GPU, each asking 1 GPU and 1 CPU
      (tokenization); more workers than GPUs is refused rather than oversubscribing a GPU.
    * CPU engine: `threads` ORT threads per actor (default 1) and one actor per `threads` CPUs, so the actors
      together use every CPU once and no ORT thread pool fights another.
    * Triton: client actors of 1 CPU each, `TRITON_ACTORS_PER_URL` per URL, at most one per CPU.

    `workers` overrides the count (still at least 1); no plan has more actors than chunks to score.
    """
    if workers is not None and workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    cpus = max(1, int(math.floor(resources.get("CPU", 1))))
    gpus = int(math.floor(resources.get("GPU", 0)))
    cap = max(1, pending_chunks)
    if engine == "triton":
        n = workers or min(cpus, TRITON_ACTORS_PER_URL * max(1, urls))
        return WorkerPlan(min(n, cap), 1, 0, None)
    if uses_gpu:
        if gpus < 1:
            raise GuardrtError("the GPU execution providers need GPUs, and the Ray cluster has none")
        if workers is not None and workers > gpus:
            raise InputError(f"{workers} workers asked for, the Ray cluster has {gpus} GPU(s): one actor per GPU")
        return WorkerPlan(min(workers or gpus, cap), 1, 1, threads)
    per_actor = threads or 1
    n = workers or max(1, cpus // per_actor)
    return WorkerPlan(min(n, cap), per_actor, 0, per_actor)


class ChunkScorerActor:
    """A Ray Data actor: builds its engine once, then scores the chunks it is given (a batch of chunk numbers)."""

    def __init__(self, layout: JobLayout, engine: EngineConfig, field_prefix: str):
        self.layout, self.field_prefix = layout, field_prefix
        self.engine = engine.build()

    def __call__(self, batch: Mapping[str, Sequence[int]]) -> dict[str, list]:
        out: dict[str, list] = {"index": [], "rows": [], "errors": [], "seconds": []}
        for index in batch["chunk"]:
            s = score_chunk(self.layout, self.layout.chunks[int(index)], self.engine, self.field_prefix)
            out["index"].append(s.index)
            out["rows"].append(s.rows)
            out["errors"].append(s.errors)
            out["seconds"].append(s.seconds)
        return out


def _guardrt_cause(exc: BaseException) -> GuardrtError | None:
    """The GuardrtError an actor raised, out of the exceptions Ray wraps it in."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, GuardrtError):
            return e
        stack.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
    return None


def _quiet_ray_data(ray) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # guardrt draws its own (rows, rate, ETA)
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def connect(address: str = LOCAL):
    """Connect this process to Ray at `address` ("local": start a local instance); returns the `ray` module, or
    None when this process was connected already (then whoever connected it disconnects it: `ray.shutdown()`)."""
    if address == LOCAL:
        # Read by ray when it is imported: node IP = loopback, so the local instance's servers bind 127.0.0.1 only
        # (otherwise Ray resolves 127.0.0.1 to the machine's address and listens there); no usage reporting.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = require("ray", "scale")
    require("ray.data", "scale")
    if ray.is_initialized():
        return None
    kwargs = {"address": address, "logging_level": logging.WARNING, "log_to_driver": False}
    if address == LOCAL:  # our own instance: loopback only, no dashboard, a small object store
        kwargs.update(include_dashboard=False, _node_ip_address="127.0.0.1",
                      object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise GuardrtError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    return ray


def run_chunks_on_ray(
    layout: JobLayout,
    pending: Sequence[Chunk],
    engine: EngineConfig,
    *,
    field_prefix: str = "",
    address: str = LOCAL,
    workers: int | None = None,
    on_done: Callable[[ChunkSummary], None] = lambda s: None,
) -> WorkerPlan:
    """Score `pending` on Ray (connecting to `address`, or a local instance started and stopped here for
    "local"); `on_done` is called in this process as each chunk finishes. Returns the worker plan used."""
    ray = connect(address)
    connected_here = ray is not None
    ray = ray or require("ray", "scale")
    try:
        plan = plan_workers(ray.cluster_resources(), engine=engine.kind, uses_gpu=engine.uses_gpu,
                            pending_chunks=len(pending), urls=len(engine.urls), workers=workers,
                            threads=engine.threads)
        actor_engine = replace(engine, threads=plan.threads_per_actor) if engine.kind == "onnx" else engine
        _quiet_ray_data(ray)
        ds = ray.data.from_items([{"chunk": c.index} for c in pending], override_num_blocks=len(pending))
        ds = ds.map_batches(ChunkScorerActor, fn_constructor_args=(layout, actor_engine, field_prefix),
                            batch_size=1, num_cpus=plan.cpus_per_actor, num_gpus=plan.gpus_per_actor,
                            # one chunk at a time per actor: chunks are long tasks, and a queue behind a busy
                            # actor would leave another idle at the end of the job
                            compute=ray.data.ActorPoolStrategy(size=plan.actors, max_tasks_in_flight_per_actor=1))
        try:
            for row in ds.iter_rows():
                on_done(ChunkSummary(int(row["index"]), int(row["rows"]), int(row["errors"]),
                                     float(row["seconds"])))
        except GuardrtError:
            raise
        except Exception as exc:
            cause = _guardrt_cause(exc)
            if cause is not None:
                raise type(cause)(str(cause)) from None
            raise
        return plan
    finally:
        if connected_here:
            ray.shutdown()

"""`guardrt score`: score a JSONL or Parquet file of payloads into the same rows plus the card's output fields.

    guardrt score --spec S --model EXPORT_DIR --input IN --output OUT [--ray [ADDRESS]]
    guardrt score --spec S --url HOST:PORT [--url HOST:PORT ...] --tokenizer DIR --input IN --output OUT

Each input row holds its payload in the spec's field (`turns`, `text` or `messages`); each output row is the input
row's fields plus the card's output fields, or plus `error` for a bad row (which is kept; the run goes on). The
formats follow the file extensions (.jsonl / .parquet) unless given. The job is resumable: it is cut into chunks,
each written as a part file under OUT.parts/ when complete, and OUT appears (atomically) only when every part is
there; a re-run of the same command scores only the unfinished chunks (runtime/score_io.py). `--ray` runs the
chunks on Ray actors (runtime/ray_scoring.py); with no address it starts a local Ray instance and stops it at the end.
"""
from __future__ import annotations

NAME = "score"
HELP = ("score a JSONL or Parquet file of dialogues / texts: the same rows plus the card's output fields (resumable; "
        "in-process, Triton endpoints, or on Ray)")


def add_arguments(p) -> None:
    from guardrt.runtime.specs import spec_names

    p.add_argument("--spec", required=True, help=f"model spec ({', '.join(spec_names(graph='classifier_logits'))})")
    p.add_argument("--input", required=True, help="input file: JSONL (one JSON object per line) or Parquet")
    p.add_argument("--output", required=True, help="output file: JSONL or Parquet (by extension, or --output-format)")
    p.add_argument("--input-format", choices=["jsonl", "parquet"], help="input format (default: from the extension)")
    p.add_argument("--output-format", choices=["jsonl", "parquet"], help="output format (default: from the extension)")
    p.add_argument("--model", help="export directory written by `guardrt export` (in-process ONNX Runtime; with "
                                   "--url only its tokenizer is used)")
    p.add_argument("--precision", default="fp32", help="in-process: exported precision to run (default: fp32)")
    p.add_argument("--providers", default="cpu", choices=["cpu", "cuda", "tensorrt"],
                   help="in-process: ONNX Runtime execution providers (default: cpu; on Ray, GPU providers put "
                        "one actor on each GPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="in-process: ONNX Runtime intra-op threads (default: ORT's; on Ray: 1 per actor)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per inference batch (default: the spec's)")
    p.add_argument("--url", action="append", default=None,
                   help="Triton gRPC address; repeat for several servers (rows are spread over them); env: a "
                        "comma-separated list")
    p.add_argument("--model-name", help="--url: Triton model name (default: the spec name)")
    p.add_argument("--timeout", type=float, default=30.0, help="--url: deadline per request in seconds (default: 30)")
    p.add_argument("--tokenizer", help="directory holding tokenizer.json (default: the export directory's)")
    p.add_argument("--task-description", help="file with the task description (intent-safety); default: the card's")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (threshold specs; default: "
                                                                  "the card's)")
    p.add_argument("--field-prefix", default="", help="prefix for the output field names (e.g. guardrt_), for "
                                                      "inputs that already have a `label` field (default: none)")
    p.add_argument("--chunk-rows", type=int, default=1024,
                   help="rows per chunk: the unit of resuming, of progress and of work handed to a Ray actor "
                        "(default: 1024)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard an existing OUT and unfinished parts, and score everything again")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray: ADDRESS of a running cluster (host:port, ray://host:port, auto), or no value to "
                        "start a local Ray instance for this job and stop it afterwards (env value: local)")
    p.add_argument("--workers", type=int, default=None,
                   help="--ray: number of actors (default: from the cluster's resources: one per GPU for GPU "
                        "providers, one per CPU otherwise, 4 per --url)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args) -> int:
    import sys

    from guardrt.commands.preprocess import read_task_description
    from guardrt.runtime.errors import InputError
    from guardrt.runtime.score_engines import EngineConfig
    from guardrt.runtime.scoring import run_score_job

    from guardrt.runtime.specs import get_spec

    if get_spec(args.spec).graph.kind != "classifier_logits":
        raise InputError(f"guardrt score serves the classifiers; for {args.spec} use guardrt classify --mode ...")
    if args.workers is not None and not args.ray:
        raise InputError("--workers sizes the Ray actor pool: it needs --ray")

    engine = EngineConfig(
        spec=args.spec, model=args.model, precision=args.precision, tokenizer=args.tokenizer,
        task_description=read_task_description(args.task_description), threshold=args.threshold,
        providers=args.providers, threads=args.threads, batch_size=args.batch_size,
        urls=tuple(args.url or ()), model_name=args.model_name, timeout_s=args.timeout)
    summary = run_score_job(
        args.input, args.output, engine, input_format=args.input_format, output_format=args.output_format,
        chunk_rows=args.chunk_rows, field_prefix=args.field_prefix, overwrite=args.overwrite,
        ray_address=args.ray or None, workers=args.workers, progress=not args.no_progress)
    if summary.state != "done":
        where = f" on Ray ({summary.workers.describe()})" if summary.workers else ""
        kept = f"; {summary.chunks_kept} chunk(s) kept from an earlier run" if summary.chunks_kept else ""
        print(f"[guardrt] wrote {summary.output}: {summary.total_rows} rows; this run scored {summary.rows_scored} "
              f"({summary.bad_rows} marked with an error) in {summary.seconds:.1f}s "
              f"({summary.rows_per_s:.1f} rows/s){where}{kept}", file=sys.stderr)
    return 0

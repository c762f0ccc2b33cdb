"""`guardrt repo`: write one model into a Triton model repository (other models there are kept).

Flavors: `python` (default; Triton's python backend running ONNX Runtime, ragged dynamic batching, runs on CPU
here), `onnxruntime` (native `onnxruntime_onnx`, TensorRT accelerator on GPU) and `tensorrt` (`tensorrt_plan`,
with --plan, or the config alone when the engine is built later on a GPU host).

From an export directory it also writes the text-in model `<name>-text` (python backend: JSON payload rows in, the
card's JSON results out, for any KServe v2 client; `--no-text` skips it).

From a Qwen3Guard-Gen export it writes both modes instead: the verdict model `<name>` (the export's verdict graph,
served like a classifier: python flavor with ragged dynamic batching) and the generate model `<name>-generate`
(decoupled python model batching concurrent requests' decoding); no text-in model. From a FlexGuard export: the
generate model `flexguard-generate` alone (generation and score requests; no verdict or text-in model).
"""
from __future__ import annotations

from pathlib import Path

NAME = "repo"
HELP = "write a model (from a `guardrt export` directory) into a Triton model repository"


def add_arguments(p) -> None:
    from guardrt.runtime.specs import spec_names

    p.add_argument("--model", help="export directory written by `guardrt export` (holds guardrt.json)")
    p.add_argument("--spec", help=f"model spec ({', '.join(spec_names())}); default: the export's spec")
    p.add_argument("--flavor", default="python", choices=["python", "onnxruntime", "tensorrt"],
                   help="Triton backend flavor (default: python)")
    p.add_argument("--precision", default="fp32", help="which exported model to serve (fp32, fp16, int8, int8-dynamic)")
    p.add_argument("--out", default="triton_repo", help="model repository directory (default: triton_repo)")
    p.add_argument("--name", help="model name in the repository (default: the spec name)")
    p.add_argument("--instances", type=int, default=None,
                   help="model instances (default: 2 for the python flavor and the text-in model, see the README; "
                        "1 for the native flavors)")
    p.add_argument("--providers", default="cpu", choices=["cpu", "cuda", "tensorrt"],
                   help="execution providers: python flavor ORT providers; for onnxruntime, cpu means KIND_CPU")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="python flavor: ORT intra-op threads per instance (0: the backend's default, see the README)")
    p.add_argument("--max-queue-delay-us", type=int, help="dynamic batching queue delay (default: the spec's)")
    p.add_argument("--max-queue-size", type=int,
                   help="python flavor: queued requests before Triton refuses more (default: 4 x max_batch_size)")
    p.add_argument("--queue-timeout-us", type=int,
                   help="python flavor: queue timeout of a request that sets none (default: 30 s)")
    p.add_argument("--plan", help="tensorrt flavor: the engine file (model.plan) to place in the repository")
    p.add_argument("--no-text", action="store_true",
                   help="do not write the text-in model <name>-text (written by default from an export directory)")
    p.add_argument("--task-description",
                   help="text-in model: file with the task description it builds inputs with (intent-safety; "
                        "default: the card's)")
    p.add_argument("--max-payload-bytes", type=int,
                   help="text-in model: largest payload row accepted (default: 4 MiB)")
    p.add_argument("--stream-idle-timeout-s", type=float, default=None,
                   help="qwen3guard-stream: seconds a stream may idle before the server frees it (default: 60)")
    p.add_argument("--max-streams", type=int, default=None,
                   help="qwen3guard-stream: live streams the model holds at most (default: 256)")
    p.add_argument("--profile-budget-s", type=float,
                   help="python flavor: seconds each instance spends at load timing shapes for its batch planner "
                        "(default: 3; 0: no profile, equal lengths batched together, never padded)")


def run(args) -> int:
    from guardrt.commands.preprocess import read_task_description
    from guardrt.runtime.errors import InputError
    from guardrt.runtime.triton_repo import text_model_name, write_model, write_text_model

    if args.spec == "flexguard" and not args.model:
        raise InputError("flexguard is served from its export (--model EXPORT_DIR): the python generate model")
    if args.flavor != "tensorrt" and not args.model:
        raise InputError(f"the {args.flavor} flavor needs --model EXPORT_DIR")
    if args.flavor == "tensorrt" and not (args.model or args.spec):
        raise InputError("the tensorrt flavor needs --spec (or --model EXPORT_DIR)")
    options = {}
    if args.max_queue_delay_us is not None:
        options["max_queue_delay_us"] = args.max_queue_delay_us
    python_options = {"intra_op_threads": args.intra_op_threads, "max_queue_size": args.max_queue_size,
                      "queue_timeout_us": args.queue_timeout_us, "profile_budget_s": args.profile_budget_s}
    if args.flavor == "python":
        options.update(python_options)
    elif args.max_queue_size is not None or args.queue_timeout_us is not None:
        raise InputError("--max-queue-size / --queue-timeout-us apply to the python flavor")
    if args.model and _export_spec(args.model) == "qwen3guard-stream":
        return _write_stream(args)
    if args.model and _export_spec(args.model) == "flexguard":
        return _write_flexguard(args)
    if args.model and _is_guard_export(args.model):
        return _write_guard(args, options)
    path = write_model(
        args.out,
        spec=args.spec,
        export_dir=args.model,
        flavor=args.flavor,
        precision=args.precision,
        plan_path=args.plan,
        name=args.name,
        instance_count=args.instances,
        providers=args.providers,
        **options,
    )
    print(f"wrote {path} ({args.flavor} flavor, {args.precision})")
    if args.model and not args.no_text:
        text_options = dict(python_options, max_payload_bytes=args.max_payload_bytes)
        if args.max_queue_delay_us is not None:
            text_options["max_queue_delay_us"] = args.max_queue_delay_us
        text = write_text_model(args.out, args.model, precision=args.precision,
                                name=text_model_name(path.name), instance_count=args.instances,
                                providers=args.providers, task_description=read_task_description(args.task_description),
                                **text_options)
        print(f"wrote {text} (text in: BYTES payload -> BYTES result, python backend, {args.precision})")
    return 0


def _export_spec(export_dir) -> str | None:
    from guardrt.runtime.export_dir import load_export_dir

    return load_export_dir(export_dir).spec if (Path(export_dir) / "guardrt.json").is_file() else None


def _write_stream(args) -> int:
    """The Qwen3Guard-Stream sequence-batcher model (runtime/triton_stream.py: write_stream_model)."""
    from guardrt.runtime.errors import InputError
    from guardrt.runtime.triton_stream import DEFAULT_IDLE_TIMEOUT_S, write_stream_model

    if args.flavor != "python" or (args.spec and args.spec != "qwen3guard-stream"):
        raise InputError(f"export {args.model} is a qwen3guard-stream export: python flavor, spec qwen3guard-stream")
    path = write_stream_model(args.out, args.model, precision=args.precision, name=args.name or "qwen3guard-stream",
                              intra_op_threads=args.intra_op_threads, instance_count=args.instances or 1,
                              idle_timeout_s=args.stream_idle_timeout_s or DEFAULT_IDLE_TIMEOUT_S,
                              max_streams=args.max_streams or 256)
    print(f"wrote {path} (sequence batcher, python backend, KV cache per stream, {args.precision})")
    return 0


def _write_flexguard(args) -> int:
    """FlexGuard: the decoupled generate model `flexguard-generate` (continuous batching, score requests)."""
    from guardrt.runtime.errors import InputError
    from guardrt.runtime.guard_client import generate_model_name
    from guardrt.runtime.triton_generate import write_generate_model

    if args.spec and args.spec != "flexguard":
        raise InputError(f"export {args.model} is a flexguard export, not {args.spec}")
    if args.flavor != "python" or args.task_description or args.max_payload_bytes is not None:
        raise InputError("a flexguard export is served by the python generate model only (no --flavor, "
                         "--task-description or --max-payload-bytes)")
    path = write_generate_model(args.out, args.model, precision=args.precision,
                                name=generate_model_name(args.name or "flexguard"),
                                intra_op_threads=args.intra_op_threads)
    print(f"wrote {path} (flexguard generate: decoupled python model, continuous batching, {args.precision})")
    return 0


def _is_guard_export(export_dir) -> bool:
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.specs import get_spec

    return get_spec(load_export_dir(export_dir).spec).output.kind == "qwen3guard_gen_text"


def _write_guard(args, options) -> int:
    """Both Qwen3Guard-Gen modes (runtime/triton_generate.py: write_guard_models)."""
    from guardrt.runtime.errors import InputError
    from guardrt.runtime.triton_generate import write_guard_models

    if args.spec and args.spec != "qwen3guard-gen":
        raise InputError(f"export {args.model} is a qwen3guard-gen export, not {args.spec}")
    if args.task_description or args.max_payload_bytes is not None:
        raise InputError("--task-description / --max-payload-bytes apply to text-in models; a qwen3guard-gen "
                         "export has none")
    generate_options = {"intra_op_threads": args.intra_op_threads}
    if args.flavor == "python":
        options = {k: v for k, v in options.items() if v is not None}
    verdict, generate = write_guard_models(
        args.out, args.model, precision=args.precision, name=args.name, flavor=args.flavor,
        instance_count=args.instances, providers=args.providers, plan_path=args.plan,
        generate_options=generate_options, **options)
    print(f"wrote {verdict} (verdict: {args.flavor} flavor, {args.precision})")
    print(f"wrote {generate} (generate: decoupled python model, continuous batching, {args.precision})")
    return 0

"""`guardrt repo`: write one model into a Triton model repository (other models there are kept).

Flavors: `python` (default; Triton's python backend running ONNX Runtime, ragged dynamic batching, runs on CPU
here), `onnxruntime` (native `onnxruntime_onnx`, TensorRT accelerator on GPU) and `tensorrt` (`tensorrt_plan`,
with --plan, or the config alone when the engine is built later on a GPU host).
"""
from __future__ import annotations

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
    p.add_argument("--instances", type=int, default=1, help="model instances (default: 1)")
    p.add_argument("--providers", default="cpu", choices=["cpu", "cuda", "tensorrt"],
                   help="execution providers: python flavor ORT providers; for onnxruntime, cpu means KIND_CPU")
    p.add_argument("--intra-op-threads", type=int, default=0, help="python flavor: ORT intra-op threads (0: default)")
    p.add_argument("--max-queue-delay-us", type=int, help="dynamic batching queue delay (default: the spec's)")
    p.add_argument("--max-queue-size", type=int,
                   help="python flavor: queued requests before Triton refuses more (default: 4 x max_batch_size)")
    p.add_argument("--queue-timeout-us", type=int,
                   help="python flavor: queue timeout of a request that sets none (default: 30 s)")
    p.add_argument("--plan", help="tensorrt flavor: the engine file (model.plan) to place in the repository")


def run(args) -> int:
    from guardrt.runtime.errors import InputError
    from guardrt.runtime.triton_repo import write_model

    if args.flavor != "tensorrt" and not args.model:
        raise InputError(f"the {args.flavor} flavor needs --model EXPORT_DIR")
    if args.flavor == "tensorrt" and not (args.model or args.spec):
        raise InputError("the tensorrt flavor needs --spec (or --model EXPORT_DIR)")
    options = {}
    if args.max_queue_delay_us is not None:
        options["max_queue_delay_us"] = args.max_queue_delay_us
    if args.flavor == "python":
        options["intra_op_threads"] = args.intra_op_threads
        options["max_queue_size"] = args.max_queue_size
        options["queue_timeout_us"] = args.queue_timeout_us
    elif args.max_queue_size is not None or args.queue_timeout_us is not None:
        raise InputError("--max-queue-size / --queue-timeout-us apply to the python flavor")
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
    return 0

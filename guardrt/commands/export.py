"""`guardrt export`: a Hugging Face checkpoint directory -> a validated, self-contained export directory.

ONNX at every requested precision (fp32, fp16, int8 QDQ static, int8-dynamic), each validated against PyTorch and
refused when it misses the spec's gate (exit 2, one line, nothing written for it) unless --force. `--target onnx`
applies guardrt.kernels' graph pass by default (Qwen3 attention without S x S tensors); `--target tensorrt` exports
the plain graph and builds TensorRT engines from it (GPU hosts; elsewhere a one-line error saying what was written
instead). Progress goes to stderr; the export directory path to stdout.
"""
from __future__ import annotations

NAME = "export"
HELP = "export a checkpoint to validated ONNX (fp32/fp16/int8/int8-dynamic) or TensorRT engines"


def add_arguments(p) -> None:
    from guardrt.runtime.specs import spec_names

    p.add_argument("--spec", required=True, help=f"model spec ({', '.join(spec_names())})")
    p.add_argument("--model-dir", required=True, help="Hugging Face checkpoint directory (config, weights, tokenizer)")
    p.add_argument("--out", required=True, help="output export directory (created; a previous export is updated)")
    p.add_argument("--precision", default="fp32",
                   help="comma-separated: fp32,fp16,int8,int8-dynamic (default: fp32)")
    p.add_argument("--target", default="onnx", choices=["onnx", "tensorrt"],
                   help="onnx (default) or tensorrt (ONNX first, then engines; needs an NVIDIA GPU)")
    p.add_argument("--force", action="store_true", help="keep precisions that miss their validation gate")
    p.add_argument("--graph-pass", default=None,
                   help="fp32 graph pass applied before fp16/int8: 'default' (guardrt.kernels: Qwen3 attention in "
                        "linear memory; the default for --target onnx), 'none' (the plain graph; the default for "
                        "--target tensorrt, whose ONNX parser refuses ONNX Runtime's operators) or module:function. "
                        "A precision whose fused graph misses its gate is exported from the plain graph (logged; "
                        "guardrt.json 'precision_graphs' says which)")
    p.add_argument("--external-data-threshold", type=int, default=None,
                   help="weights above this many bytes go to one model.onnx.data file (default: 1 GiB)")
    p.add_argument("--validation-samples", type=int, default=64,
                   help="held-out synthetic inputs for decision agreement (default 64)")
    p.add_argument("--validation-long-tokens", type=int, default=None,
                   help="length of the long validation sequence (default: the spec's max length)")
    p.add_argument("--calibration-samples", type=int, default=32,
                   help="preprocessed inputs for int8 calibration (default 32)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads for validation")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    from guardrt.export.tensorrt import add_tensorrt_arguments  # light: no tensorrt import

    add_tensorrt_arguments(p)  # --repo and the --trt-* engine options of --target tensorrt


def load_graph_pass(ref: str | None, target: str = "onnx"):
    """--graph-pass value -> what export_onnx takes: unset -> the default pass for --target onnx, none for tensorrt;
    'default' / 'none' as they are; 'module:function' -> the callable (GuardrtError when it cannot be imported)."""
    from guardrt.export.graph_pass import DEFAULT_GRAPH_PASS
    from guardrt.runtime.errors import GuardrtError

    ref = (ref or "").strip()
    if not ref:
        return DEFAULT_GRAPH_PASS if target == "onnx" else None
    if ref.lower() == "none":
        return None
    if ref.lower() == DEFAULT_GRAPH_PASS:
        return DEFAULT_GRAPH_PASS
    import importlib

    module, _, func = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError, ValueError) as exc:
        raise GuardrtError(f"cannot load graph pass {ref!r} ({exc}); expected module:function") from None
    if not callable(fn):
        raise GuardrtError(f"graph pass {ref!r} is not callable")
    return fn


def _export_causal_lm(args, spec) -> int:
    """qwen3guard-gen: the KV-cache generation graph and the verdict graph per precision; flexguard: the generation
    graph (export/causal_lm_export.py)."""
    from guardrt.export.causal_lm_export import export_causal_lm
    from guardrt.export.progress import stderr_log
    from guardrt.runtime.errors import GuardrtError

    if args.target != "onnx":
        raise GuardrtError(f"--target {args.target}: {spec.name}'s verdict engines are built by "
                           "guardrt.export.verdict_tensorrt.build_verdict_engines (GPU host)")
    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    graphs = ("causal-lm-with-past", "verdict") if spec.name == "qwen3guard-gen" else ("causal-lm-with-past",)
    out = export_causal_lm(args.model_dir, args.out, precisions, graphs, force=args.force,
                           log=None if args.quiet else stderr_log, spec=spec.name)
    print(getattr(out, "path", out))
    return 0


def _export_stream(args, spec) -> int:
    """qwen3guard-stream: the KV-cache token-heads graph per precision (export/stream_export.py)."""
    from guardrt.export.progress import stderr_log
    from guardrt.export.stream_export import export_stream
    from guardrt.runtime.errors import GuardrtError

    if args.target != "onnx":
        raise GuardrtError(f"--target {args.target}: {spec.name}'s engines are built from the ONNX graph with "
                           "guardrt.export.tensorrt.stream_profiles (GPU host); export --target onnx first")
    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    out = export_stream(args.model_dir, args.out, precisions, force=args.force, intra_op_threads=args.threads,
                        log=None if args.quiet else stderr_log)
    print(out)
    return 0


def run(args) -> int:
    from guardrt.runtime.errors import GuardrtError, require
    from guardrt.runtime.specs import get_spec

    try:
        spec = get_spec(args.spec)
    except ValueError as exc:
        raise GuardrtError(str(exc)) from None
    for module in ("torch", "transformers", "optimum.exporters.onnx", "onnx", "onnxruntime"):
        require(module, "export")
    if spec.graph.kind == "causal_lm_with_past":
        return _export_causal_lm(args, spec)
    if spec.graph.kind == "token_heads":
        return _export_stream(args, spec)
    from guardrt.export.onnx_export import EXTERNAL_DATA_THRESHOLD, export_onnx, parse_precisions
    from guardrt.export.progress import stderr_log

    log = None if args.quiet else stderr_log
    requested = parse_precisions(args.precision)
    onnx_precisions = requested
    if args.target == "tensorrt":
        # Engines are built from ONNX: fp16 engines from the fp16 graph, int8 engines from the QDQ graph.
        onnx_precisions = parse_precisions(("fp32",) + requested)
    threshold = EXTERNAL_DATA_THRESHOLD if args.external_data_threshold is None else args.external_data_threshold
    manifest = export_onnx(args.model_dir, spec, args.out, onnx_precisions, force=args.force,
                           graph_pass=load_graph_pass(args.graph_pass, args.target), log=log,
                           external_data_threshold=threshold, intra_op_threads=args.threads,
                           validation_heldout=args.validation_samples,
                           validation_long_tokens=args.validation_long_tokens,
                           calibration_examples=args.calibration_samples)
    if args.target == "tensorrt":
        trt_precisions = [p for p in requested if p in ("fp32", "fp16", "int8")]
        if not trt_precisions:
            raise GuardrtError("--target tensorrt needs fp32, fp16 or int8 in --precision")
        from guardrt.export.tensorrt import run_tensorrt_target

        run_tensorrt_target(args, manifest.path, trt_precisions, log=log)
    print(manifest.path)
    return 0

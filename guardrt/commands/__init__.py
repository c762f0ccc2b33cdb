"""One module per CLI subcommand. Each defines NAME, HELP, `add_arguments(parser)` and `run(args) -> int`.
Heavy imports (torch, onnxruntime, tritonclient...) happen inside `run`, never at module import."""

# Order is the order shown by `guardrt --help`.
COMMAND_MODULES = [
    "preprocess",
    "demo_models",
    "export",
    "classify",
    "calibrate",
    "score",
    "stream",
    "repo",
    "serve",
    "k8s",
    "demo",
]

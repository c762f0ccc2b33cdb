"""`guardrt serve`: run the real tritonserver (from the nvidia-pytriton wheel) on a guardrt model repository.

Binds 127.0.0.1 unless --host says otherwise, waits until every model is ready, prints the endpoints, and stops
Triton cleanly on SIGINT / SIGTERM - during startup too, at once (no wait for readiness). Triton and its python
stubs never outlive this process, even when it is killed (see guardrt.runtime.process_guard).
"""
from __future__ import annotations

NAME = "serve"
HELP = "start Triton Inference Server on a model repository (127.0.0.1 by default)"


def add_arguments(p) -> None:
    p.add_argument("--repo", default="triton_repo", help="model repository (default: triton_repo)")
    p.add_argument("--host", default="127.0.0.1", help="address every endpoint binds (default: 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: 8001)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default: 8000; 0 disables HTTP)")
    p.add_argument("--metrics-port", type=int, default=8002, help="metrics port (default: 8002; 0 disables metrics)")
    p.add_argument("--models", help="comma-separated models to load (default: all in the repository)")
    p.add_argument("--log-verbose", type=int, default=0, help="Triton log verbosity (default: 0)")
    p.add_argument("--log-file", help="write Triton's log here (default: a temporary file)")
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for readiness")


def run(args) -> int:
    import signal
    import sys
    import threading

    from guardrt.runtime.server import StartupCancelled, TritonServer

    server = TritonServer(
        args.repo,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port or None,
        metrics_port=args.metrics_port or None,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None,
        log_verbose=args.log_verbose,
        log_path=args.log_file,
        startup_timeout_s=args.startup_timeout,
    )
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start(cancel=stop)
        except StartupCancelled:
            print(f"guardrt serve: {signal.Signals(received[0]).name} received during startup, Triton stopped",
                  flush=True)
            return 0
        http = f", HTTP {args.host}:{args.http_port}" if args.http_port else ""
        metrics = f", metrics {args.host}:{args.metrics_port}" if args.metrics_port else ""
        print(f"guardrt serve: ready in {server.start_seconds:.1f}s: gRPC {server.grpc_url}{http}{metrics} "
              f"(repository {args.repo}; log {server.log_path})", flush=True)
        while not stop.is_set():
            if not server.is_running():
                print(f"guardrt serve: error: tritonserver exited unexpectedly (log: {server.log_path})",
                      file=sys.stderr)
                return 1
            stop.wait(0.5)
        print(f"guardrt serve: {signal.Signals(received[0]).name} received, stopping Triton", flush=True)
    finally:
        code = server.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    print(f"guardrt serve: stopped (tritonserver exit code {code})", flush=True)
    return 0

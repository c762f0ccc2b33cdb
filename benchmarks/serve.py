"""Serving benchmark: guardrt models in the real Triton server, measured the way perf_analyzer reports (throughput,
p50/p90/p95/p99 latency, the server-side queue / compute split from Triton's statistics API).

Per spec (realistic demo models by default, `make bench-serve`), one request stream of JSON payloads whose token
lengths follow a seeded realistic mix, and four paths:

* in-process: exact preprocessing + ONNX Runtime in this process (sequential single requests; batches of 16 as a
  reference);
* gRPC thin client: guardrt's `AsyncTritonClassifier` (preprocessing here, token ids over gRPC) -> `<spec>`;
* text-in over gRPC and over HTTP: KServe v2 clients (tritonclient.grpc.aio / tritonclient.http.aio) sending the
  payload line as BYTES -> `<spec>-text`.

Measured:
1. closed-loop sweeps (concurrency 1, 4, 16, 64; text paths 1, 16 by default) with dynamic batching on (the shipped
   config) and off (no dynamic_batching block: one request = one execution), the on/off ratio per cell; one server
   serves both (`<spec>` and its twin `<spec>-nobatch`, text models likewise) and the two take turns ABBA within
   each cell (`--rounds`, default 2, merged; the per-round ratios are kept), so load from other jobs falls on both
   alike; and at concurrency 1 the two modes paired request by request (the same request to each, back to back:
   what the batcher itself costs when there is nothing to batch);
2. the interleaved single-request overhead of every path: one short request (rejection: a 110-token text), the
   paths taking turns call by call in one loop (a new seeded order each round, a 50 ms idle gap after each call so
   no call runs against the previous one's spinning threads), the added time being the median over rounds of the
   path minus its in-process twin in the same round (ids: in-process ORT with the server's thread setting; text:
   in-process text); where the time goes (client + gRPC + Triton core vs queue vs the python backend's
   execute, from the statistics API), and the same hop with the server's ONNX Runtime threads never spinning
   (intra_op_spinning 0) to show what spinning during a Run buys (benchmarks/serve_profile.py splits it further);
3. equality with the thin client on hidden-case corpora (export/corpus.py): curl over HTTP (KServe v2 JSON, up to
   max_batch_size rows per request) and tritonclient.http (one row per request), counted;
4. instance x thread layouts of the python backend (thin client, batching on; side by side, taking turns) - what
   the default was chosen from.

Writes benchmarks/results/serve[_quick].json and serve[_quick]_<spec>.png.

    python benchmarks/serve.py            # realistic demo models (make bench-serve); run it under the heavy lock
    python benchmarks/serve.py --quick    # tiny models, short windows (smoke test)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import serve_load  # noqa: E402

# Request token lengths, seeded log-normal: LLM answers for `rejection` (short to a few paragraphs); for
# intent-safety the dialogue context on top of the card's task description (169 tokens with the shipped one).
LENGTH_MIX = {
    "rejection": dict(median=64, sigma=0.8, low=8, high=512),
    "intent-safety": dict(median=96, sigma=0.9, low=4, high=1500, on_top_of_prefix=True),
}
SHORT_TOKENS = {"rejection": 110, "intent-safety": 200}  # the single short request of the overhead measurement
PATHS = ("grpc", "text-grpc", "text-http")
_WORDS = ("the model answers every question about the weather and the road to the old city while the knight waits "
          "near the door she laughs and asks whether we should stay or leave before the guards come back tomorrow "
          "I cannot help with that request but here is a recipe for bread with flour water salt and yeast").split()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- inputs -------------------------------------------------------------------------------------------------------------
def _payload(spec_name: str, words: list[str]):
    text = " ".join(words)
    if spec_name == "intent-safety":
        half = max(1, len(words) // 2)
        return [{"role": "user", "content": " ".join(words[:half])},
                {"role": "assistant", "content": " ".join(words[half:]) or "ok"},
                {"role": "user", "content": "and then?"}]
    return text


def payload_of_length(spec_name: str, preprocessor, target: int, rng) -> tuple[object, list[int]]:
    """A payload whose preprocessed ids are as close to `target` tokens as words allow (never above), and its ids."""
    pool = [_WORDS[i] for i in rng.integers(0, len(_WORDS), 4 * target + 8)]
    lo, hi = 1, len(pool)
    while lo < hi:  # the most words whose ids fit in target
        mid = (lo + hi + 1) // 2
        if len(preprocessor.encode(_payload(spec_name, pool[:mid]))) <= target:
            lo = mid
        else:
            hi = mid - 1
    payload = _payload(spec_name, pool[:lo])
    return payload, preprocessor.encode(payload)


def request_stream(spec, preprocessor, n: int, seed: int, quick: bool) -> list[dict]:
    """[{payload, line, ids}] with token lengths drawn from LENGTH_MIX (seeded)."""
    from guardrt.runtime.payloads import payload_field

    mix = dict(LENGTH_MIX[spec.name])
    if quick:
        mix.update(median=16, high=64)
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(mix["median"]), mix["sigma"], n)), mix["low"], mix["high"])
    base = len(preprocessor.encode(_payload(spec.name, ["hi"]))) - 1 if mix.get("on_top_of_prefix") else 0
    field = payload_field(spec)
    out = []
    for k in lengths:
        payload, ids = payload_of_length(spec.name, preprocessor, int(base + k), rng)
        out.append({"payload": payload, "line": json.dumps({field: payload}, ensure_ascii=False), "ids": ids})
    return out


def corpus_lines(spec, preprocessor, quick: bool) -> list[str]:
    """Hidden-case corpus rows (export/corpus.py) for the equality check: generated texts (rejection), or generated
    dialogues of up to 2,000 tokens plus the two longest (trimmed at token precision) for intent-safety."""
    from guardrt.export.corpus import generate_dialogues, generate_texts
    from guardrt.runtime.payloads import payload_field

    field = payload_field(spec)
    if spec.name == "rejection":
        items = generate_texts(16 if quick else 64, seed=21)
    else:
        dialogues = generate_dialogues(12 if quick else 40, seed=21)
        lengths = [len(preprocessor.encode(d)) for d in dialogues]
        order = sorted(range(len(dialogues)), key=lambda i: lengths[i])
        items = [dialogues[i] for i in order if lengths[i] <= 2000] + [dialogues[i] for i in order[-2:]]
    return [json.dumps({field: p}, ensure_ascii=False) for p in items]


# -- models and servers ---------------------------------------------------------------------------------------------
def resolve_export(spec_name: str, args) -> Path:
    """The export directory to serve: --export-dir SPEC=DIR, else the cached demo export (fp32 + the precision)."""
    from guardrt.export.demo_models import cached_demo_export

    pins = dict(p.split("=", 1) for p in (args.export_dir or "").split(",") if "=" in p)
    if spec_name in pins:
        return Path(pins[spec_name])
    precisions = tuple(dict.fromkeys(("fp32", args.precision)))
    return cached_demo_export(spec_name, "tiny" if args.quick else args.size, precisions, log=_log)


def start_server(repo: Path, models: dict[str, dict], export: Path, precision: str, extra_parameters=None, env=None,
                 floor_model: str | None = None):
    """A Triton server on free 127.0.0.1 ports serving `models` {name: write options (text=True for a text-in
    model, the rest for python_config)} written from `export`; `extra_parameters` {key: value} are added to every
    model's config parameters (e.g. intra_op_spinning); `env` is added to the server's environment; `floor_model`
    names the token-id model whose zero-work twin `<name>-floor` is served too (write_floor_model)."""
    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.triton_repo import write_model, write_text_model

    shutil.rmtree(repo, ignore_errors=True)
    for name, options in models.items():
        options = dict(options)
        if options.pop("text", False):
            path = write_text_model(repo, export, precision=precision, name=name, **options)
        else:
            path = write_model(repo, export_dir=export, precision=precision, name=name, **options)
        config = path / "config.pbtxt"
        for key, value in (extra_parameters or {}).items():
            config.write_text(config.read_text().replace(
                "parameters [\n", f'parameters [\n  {{ key: "{key}" value: {{ string_value: "{value}" }} }},\n', 1))
    if floor_model:
        write_floor_model(repo, floor_model)
    server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=None, env=dict(env or {}))
    t0 = time.perf_counter()
    server.start()
    server.start_seconds = time.perf_counter() - t0
    return server


def write_floor_model(repo: Path, model: str) -> Path:
    """`repo/<model>-floor/`: benchmarks/floor_model/model.py (answers zeros, no work) under `<model>`'s config -
    the same inputs, outputs, batching and instances, no guardrt parameters, no warm-up."""
    import re

    config = (repo / model / "config.pbtxt").read_text()
    config = re.sub(r'^name: ".*"$', f'name: "{model}-floor"', config, count=1, flags=re.M)
    config = re.sub(r"\nmodel_warmup \[.*?\n\]\n", "\n", config, flags=re.S)
    config = re.sub(r"\nparameters \[.*?\n\]\n?", "\n", config, flags=re.S)
    out = repo / f"{model}-floor"
    (out / "1").mkdir(parents=True, exist_ok=True)
    (out / "config.pbtxt").write_text(config)
    shutil.copy(Path(__file__).resolve().parent / "floor_model" / "model.py", out / "1" / "model.py")
    return out


def layout_options(layout: str) -> dict:
    """'2x1' -> instance_count 2, intra_op_threads 1 ('default': the writer's and the backend's defaults)."""
    if layout == "default":
        return {}
    instances, threads = (int(x) for x in layout.split("x"))
    return {"instance_count": instances, "intra_op_threads": threads}


# -- measurements ---------------------------------------------------------------------------------------------------
def inprocess_baseline(spec, export: Path, precision: str, stream: list[dict], threads: int, budget_s: float) -> dict:
    """In-process throughput: sequential single requests (preprocess + ORT + postprocess, the stream in order) and
    batches of 16."""
    from guardrt.runtime.onnxrt import InProcessClassifier

    clf = InProcessClassifier.from_export_dir(export, precision=precision, intra_op_threads=threads)
    with clf:
        clf.classify([stream[0]["payload"]])
        lat, t0, i = [], time.perf_counter(), 0
        while (time.perf_counter() - t0 < budget_s or i < 5) and i < 4 * len(stream):
            t = time.perf_counter()
            clf.classify([stream[i % len(stream)]["payload"]])
            lat.append(time.perf_counter() - t)
            i += 1
        sequential = {"concurrency": 1, "requests": len(lat), "throughput_rps": len(lat) / sum(lat),
                      **serve_load.latency_summary(lat)}
        batch16 = {}
        for how in ("padded", "equal_lengths"):
            n, t0, b = 0, time.perf_counter(), 0
            while (time.perf_counter() - t0 < budget_s or b < 3) and b < len(stream) // 16 * 4:
                batch = [stream[(16 * b + k) % len(stream)]["payload"] for k in range(16)]
                if how == "padded":  # one call, every row padded to the longest of the 16
                    clf.classify(batch)
                else:  # one call per distinct length (what the server's planner does on this CPU): no padding
                    ids = clf.encode(batch)
                    for length in sorted({len(x) for x in ids}):
                        clf.classify_ids([x for x in ids if len(x) == length])
                n += 16
                b += 1
            batch16[how] = n / (time.perf_counter() - t0)
        return {"sequential": sequential, "batch16_throughput_rps": batch16["padded"],
                "batch16_equal_lengths_throughput_rps": batch16["equal_lengths"]}


# The batching-off twin of each model, served by the same server (see run_spec).
NO_BATCHING_SUFFIX = "-nobatch"


async def run_sweeps(servers: dict, spec, export: Path, stream: list[dict], paths, levels: dict, args, progress,
                     label: str = "batching", suffixes: dict | None = None) -> dict:
    """{path: {mode: [level rows]}}: each path's closed-loop levels on every mode of `servers` {mode: server} (the
    models `<spec>` / `<spec>-text`, plus `suffixes[mode]` when given: several modes may be models of one server),
    the modes taking turns ABBA within each level (`args.rounds` rounds, merged), so a change in the load other jobs
    put on the machine falls on every mode alike; each row with the server-side split (statistics API)."""
    suffixes = suffixes or {}
    import tritonclient.grpc.aio as grpcaio
    import tritonclient.http.aio as httpaio

    from guardrt.runtime.triton_client import AsyncTritonClassifier

    clients = {}
    out: dict[str, dict] = {path: {mode: [] for mode in servers} for path in paths}
    try:
        for mode, server in servers.items():
            grpc = grpcaio.InferenceServerClient(server.grpc_url)
            http = httpaio.InferenceServerClient(f"127.0.0.1:{server.http_port}", conn_limit=256)
            thin = AsyncTritonClassifier(server.grpc_url, spec, export, timeout_s=600.0, retries=2,
                                         max_in_flight=max(levels.get("grpc", [1])),
                                         model_name=spec.name + suffixes.get(mode, ""))
            clients[mode] = (grpc, http, thin)
            await thin.check_ready()
        offsets = {}
        rounds = max(1, int(getattr(args, "rounds", 1)))
        for path in paths:
            for k, c in enumerate(levels[path]):
                parts: dict[str, list] = {mode: [] for mode in servers}
                for r in range(rounds):
                    # ABBA: the mode that goes first alternates round by round (and level by level), so a load
                    # that drifts during a cell falls on both modes alike.
                    order = list(servers) if (k + r) % 2 == 0 else list(servers)[::-1]
                    for mode in order:
                        grpc, http, thin = clients[mode]
                        ids_model = spec.name + suffixes.get(mode, "")
                        text_model = f"{spec.name}-text" + suffixes.get(mode, "")
                        send, model, key = {
                            "grpc": (serve_load.thin_sender(thin), ids_model, "payload"),
                            "text-grpc": (serve_load.text_grpc_sender(grpc, text_model), text_model, "line"),
                            "text-http": (serve_load.text_http_sender(http, text_model), text_model, "line")}[path]
                        items = [s[key] for s in stream]
                        stats = serve_load.ModelStats(grpc, model)
                        before = await stats.read()
                        row = await serve_load.sweep_level(send, items, c, window_s=args.window_s,
                                                           min_windows=args.min_windows,
                                                           max_windows=args.max_windows,
                                                           stability=args.stability, min_requests=args.min_requests,
                                                           offset=offsets.get((path, mode), 0))
                        offsets[(path, mode)] = row.pop("next_offset")
                        row["server"] = serve_load.stats_diff(before,
                                                              await stats.settled(before, 1, timeout_s=0.5))
                        parts[mode].append(row)
                        progress.update(f"{spec.name} {path} {label} {mode} c={c} round {r + 1}/{rounds}: "
                                        f"{row['throughput_rps']:.1f} req/s, p99 {row['p99_ms'] or 0:.0f} ms, "
                                        f"mean batch {row['server']['mean_executed_batch'] or 0:.1f}"
                                        f"{'' if row['stable'] else ' (not stable)'}")
                for mode in servers:
                    out[path][mode].append(serve_load.merge_rounds(parts[mode]))
    finally:
        for grpc, http, thin in clients.values():
            await thin.close()
            await grpc.close()
            await http.close()
    return out


def modes_paired(server, spec, export: Path, stream: list[dict], paths, reps: int) -> dict:
    """Batching on vs off at concurrency 1, paired: per round, the same request of the stream to `<model>` and to
    `<model>-nobatch` back to back (the order drawn each round), per path. At concurrency 1 there is nothing to
    batch, so the difference is what the dynamic batcher itself costs per request; pairing removes the drift that
    makes two closed-loop windows taken apart differ by 10-30% on a shared VM."""
    import random

    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from guardrt.runtime.triton_client import TritonClassifier

    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    thin = {mode: TritonClassifier(server.grpc_url, spec, export, timeout_s=60.0,
                                   model_name=spec.name + ("" if mode == "on" else NO_BATCHING_SUFFIX))
            for mode in ("on", "off")}

    def text_call(client, module, model, line):
        inp = module.InferInput("payload", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[line.encode("utf-8")]], dtype=np.object_))
        client.infer(model, [inp]).as_numpy("result")

    def sender(path, mode):
        suffix = "" if mode == "on" else NO_BATCHING_SUFFIX
        if path == "grpc":
            return lambda item: thin[mode].classify_batch([item["payload"]])
        client, module = (grpc, grpcclient) if path == "text-grpc" else (http, httpclient)
        return lambda item: text_call(client, module, f"{spec.name}-text{suffix}", item["line"])

    out, rng = {}, random.Random(7)
    try:
        for path in paths:
            send = {mode: sender(path, mode) for mode in ("on", "off")}
            for item in stream[:3]:  # warm-up
                send["on"](item), send["off"](item)
            times = {"on": [], "off": []}
            for r in range(reps):
                item = stream[r % len(stream)]
                for mode in rng.sample(["on", "off"], 2):
                    t = time.perf_counter()
                    send[mode](item)
                    times[mode].append(time.perf_counter() - t)
            diff = 1e3 * np.subtract(times["on"], times["off"])
            out[path] = {"rounds": reps, "on": serve_load.latency_summary(times["on"]),
                         "off": serve_load.latency_summary(times["off"]),
                         "on_minus_off_median_ms": float(np.median(diff)),
                         "on_minus_off_mean_ms": float(np.mean(diff)),
                         "on_over_off_mean_latency": float(np.mean(times["on"]) / np.mean(times["off"]))}
    finally:
        for c in thin.values():
            c.close()
        grpc.close()
        http.close()
    return out


def overhead(server, spec, export: Path, precision: str, short: dict, threads: int, reps: int,
             text: bool = True, gap_s: float = serve_load.INTERLEAVED_GAP_S) -> dict:
    """Interleaved single requests: in-process (ORT defaults and with its threads not spinning) vs each path, and
    where the time of the gRPC hop goes (statistics API)."""
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.onnxrt import InProcessClassifier, OnnxRunner
    from guardrt.runtime.triton_client import TritonClassifier

    model_path = load_export_dir(export).model_path(precision)
    quiet = ort.SessionOptions()
    quiet.add_session_config_entry("session.intra_op.allow_spinning", "0")
    run_only = ort.SessionOptions()  # what the server does on CPU (intra_op_spinning "run")
    run_only.add_session_config_entry("session.force_spinning_stop", "1")
    runners = {"default": OnnxRunner(model_path, intra_op_threads=threads),
               "no-spin": OnnxRunner(model_path, intra_op_threads=threads, session_options=quiet),
               "run-only": OnnxRunner(model_path, intra_op_threads=threads, session_options=run_only)}
    ids = np.array([short["ids"]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    thin = TritonClassifier(server.grpc_url, spec, export, timeout_s=60.0)
    thin.check_ready()
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    calls = {"in-process ids (ORT defaults)": lambda: runners["default"].infer(feeds),
             "in-process ids (ORT threads not spinning)": lambda: runners["no-spin"].infer(feeds),
             "in-process ids (spinning during a run only)": lambda: runners["run-only"].infer(feeds),
             "gRPC thin client, ids": lambda: thin.logits_for_ids([short["ids"]])}
    clf = http = None
    if text:
        clf = InProcessClassifier.from_export_dir(export, precision=precision, intra_op_threads=threads)
        http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        line = short["line"].encode("utf-8")

        def text_call(client, module):
            def call():
                inp = module.InferInput("payload", [1, 1], "BYTES")
                inp.set_data_from_numpy(np.array([[line]], dtype=np.object_))
                return client.infer(f"{spec.name}-text", [inp]).as_numpy("result")
            return call

        calls.update({"in-process text (preprocess + ORT + postprocess)": lambda: clf.classify([short["payload"]]),
                      "gRPC thin client, text": lambda: thin.classify_batch([short["payload"]]),
                      "text-in over gRPC": text_call(grpc, grpcclient),
                      "text-in over HTTP": text_call(http, httpclient)})
    try:
        before = _sync_stats(grpc, spec.name)
        times = serve_load.interleaved(calls, reps, gap_s=gap_s)
        after = _sync_stats(grpc, spec.name)
    finally:
        thin.close()
        grpc.close()
        if http is not None:
            http.close()
        for r in runners.values():
            r.close()
        if clf is not None:
            clf.close()
    paths = {name: serve_load.latency_summary(t) for name, t in times.items()}
    inproc_ids = min(v["p50_ms"] for k, v in paths.items() if k.startswith("in-process ids"))
    # The hop, paired: per round, the path's time minus its in-process twin's time in the same round (the ids path
    # against in-process ORT with the server's own thread setting, spinning during a Run only; the text paths
    # against in-process text), then the median over rounds. Pairing cancels what drifts between rounds (other
    # jobs, the host); the difference of two p50s taken apart does not.
    twins = {"gRPC thin client, ids": "in-process ids (spinning during a run only)"}
    if text:
        twins.update({k: "in-process text (preprocess + ORT + postprocess)"
                      for k in ("gRPC thin client, text", "text-in over gRPC", "text-in over HTTP")})
    added = {k: 1e3 * float(np.median(np.subtract(times[k], times[b]))) for k, b in twins.items()}
    added_vs_fastest = {"gRPC thin client, ids": paths["gRPC thin client, ids"]["p50_ms"] - inproc_ids}
    if text:
        base = paths["in-process text (preprocess + ORT + postprocess)"]["p50_ms"]
        added_vs_fastest.update({k: paths[k]["p50_ms"] - base for k in ("gRPC thin client, text",
                                                                        "text-in over gRPC", "text-in over HTTP")})
    # Only the "gRPC thin client, ids" calls reach the `<spec>` model, and each of them once per round.
    split = serve_load.stats_diff(before, after)
    grpc_mean = float(np.mean(times["gRPC thin client, ids"])) * 1000.0
    where = {"server_queue_ms": split["queue_ms"], "server_compute_input_ms": split["compute_input_ms"],
             "server_compute_infer_ms (python backend execute, ORT included)": split["compute_infer_ms"],
             "server_compute_output_ms": split["compute_output_ms"],
             "client_grpc_and_triton_core_ms (mean latency - server success)":
                 grpc_mean - split["success_ms"] if split["success_ms"] is not None else None,
             "in_process_ort_mean_ms": float(np.mean(times["in-process ids (ORT threads not spinning)"])) * 1000.0}
    return {"request_tokens": len(short["ids"]), "reps": reps, "gap_s": gap_s,
            "paths": paths, "added_p50_ms": added, "added_against": twins,
            "added_p50_ms_vs_fastest_in_process_p50": added_vs_fastest,
            "baseline_ids_p50_ms": inproc_ids, "where_the_grpc_hop_goes": where}


def _sync_stats(client, model: str) -> dict:
    async def read():
        class _Sync:  # ModelStats expects an awaitable client
            async def get_inference_statistics(self, model, as_json):
                return client.get_inference_statistics(model, as_json=as_json)
        return await serve_load.ModelStats(_Sync(), model).read()
    time.sleep(0.3)  # Triton counts a request just after its response
    return asyncio.run(read())


def equality(server, spec, export: Path, lines: list[str]) -> dict:
    """curl (max_batch_size rows per request) and tritonclient.http (one row per request) vs the thin client (one
    row per request): counts of byte-identical results, same decisions, and the largest probability difference."""
    import tritonclient.http as httpclient

    from guardrt.runtime.payloads import format_result, parse_payload
    from guardrt.runtime.triton_client import TritonClassifier

    with TritonClassifier(server.grpc_url, spec, export, timeout_s=120.0) as thin:
        want = [format_result(thin.classify_ids([thin.preprocessor.encode(parse_payload(l, spec))])[0]) for l in lines]
    url = f"http://127.0.0.1:{server.http_port}/v2/models/{spec.name}-text/infer"
    curl = []
    for start in range(0, len(lines), spec.max_batch_size):
        chunk = lines[start:start + spec.max_batch_size]
        body = json.dumps({"inputs": [{"name": "payload", "shape": [len(chunk), 1], "datatype": "BYTES",
                                       "data": chunk}]})
        out = subprocess.run(["curl", "-sS", "-X", "POST", url, "-H", "Content-Type: application/json",
                              "--data-binary", "@-"], input=body, capture_output=True, text=True, timeout=300)
        curl += json.loads(out.stdout)["outputs"][0]["data"]
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    http = []
    try:
        for line in lines:
            inp = httpclient.InferInput("payload", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[line.encode("utf-8")]], dtype=np.object_))
            http.append(client.infer(f"{spec.name}-text", [inp]).as_numpy("result")[0, 0].decode("utf-8"))
    finally:
        client.close()
    return {"rows": len(lines), "curl": _compare(curl, want), "tritonclient_http": _compare(http, want)}


def _compare(got: list[str], want: list[str]) -> dict:
    same_label, diff, errors = 0, 0.0, 0
    for g, w in zip(got, want):
        gj, wj = json.loads(g), json.loads(w)
        if "error" in gj:
            errors += 1
            continue
        same_label += gj["label"] == wj["label"] and gj["label_text"] == wj["label_text"]
        diff = max([diff] + [abs(gj[k] - v) for k, v in wj.items() if isinstance(v, float)])
    return {"identical": sum(g == w for g, w in zip(got, want)), "same_decision": same_label, "errors": errors,
            "max_abs_prob_diff": diff}


def ratios(sweep: dict) -> dict:
    """{path: [{concurrency, throughput on/off, p99 on/off}]} where both modes measured the level."""
    out = {}
    for path, modes in sweep.items():
        on = {r["concurrency"]: r for r in modes.get("on", [])}
        off = {r["concurrency"]: r for r in modes.get("off", [])}
        out[path] = [{"concurrency": c, "throughput_on_over_off": on[c]["throughput_rps"] / off[c]["throughput_rps"],
                      "p99_on_over_off": on[c]["p99_ms"] / off[c]["p99_ms"],
                      # round by round (the two modes of one round ran back to back): the spread of the ratio
                      "throughput_on_over_off_per_round": [round(a / b, 3) for a, b in
                                                           zip(on[c].get("round_throughputs", []),
                                                               off[c].get("round_throughputs", [])) if b]}
                     for c in sorted(set(on) & set(off)) if off[c]["throughput_rps"] and off[c]["p99_ms"]]
    return out


def run_spec(spec_name: str, args, progress) -> dict:
    from guardrt.runtime.preprocess import build_preprocessor
    from guardrt.runtime.specs import get_spec

    spec = get_spec(spec_name)
    export = resolve_export(spec_name, args)
    pre = build_preprocessor(spec, export)
    stream = request_stream(spec, pre, args.requests, args.seed, args.quick)
    short_payload, short_ids = payload_of_length(spec_name, pre, SHORT_TOKENS[spec_name], np.random.default_rng(5))
    from guardrt.runtime.payloads import payload_field

    short = {"payload": short_payload, "ids": short_ids,
             "line": json.dumps({payload_field(spec): short_payload}, ensure_ascii=False)}
    lengths = np.array([len(s["ids"]) for s in stream])
    result = {"spec": spec.name, "export": str(export), "precision": args.precision,
              "model_size_mb": common.dir_bytes(export / args.precision) / 1e6 if (export / args.precision).exists()
              else None,
              "length_mix": {**LENGTH_MIX[spec.name], "seed": args.seed, "n": len(stream), "mean": float(lengths.mean()),
                             "p50": float(np.median(lengths)), "p90": float(np.percentile(lengths, 90)),
                             "max": int(lengths.max())},
              "layout": args.layout}
    progress.update(f"{spec.name}: in-process baseline", advance=0)
    result["inprocess"] = inprocess_baseline(spec, export, args.precision, stream, args.threads, args.baseline_s)
    repo = Path(tempfile.mkdtemp(prefix=f"guardrt-bench-{spec.name}-"))
    levels = {"grpc": args.concurrency, "text-grpc": args.text_concurrency, "text-http": args.text_concurrency}
    result["sweep"], result["server"] = {p: {} for p in args.paths}, {}
    servers = {}
    try:
        # One server serves both modes: `<spec>` / `<spec>-text` with the shipped dynamic batching, and their twins
        # `<spec>-nobatch` / `<spec>-text-nobatch` without it (one request = one execution). The modes take turns
        # ABBA within each level (run_sweeps); the idle models' ONNX Runtime threads sleep, so the one measured has
        # the machine. One process for both removes the server-to-server differences two servers showed (memory
        # placement, which core the stubs landed on: ~1 ms p50 at c = 1 between two identical servers).
        suffixes = {"on": "", "off": NO_BATCHING_SUFFIX}
        models = {}
        for mode in args.modes:
            opts = dict(layout_options(args.layout), dynamic_batching=mode == "on")
            models[spec.name + suffixes[mode]] = opts
            models[f"{spec.name}-text" + suffixes[mode]] = dict(opts, text=True)
        shared = start_server(repo / "modes", models, export, args.precision)
        result["server"]["start_s"] = shared.start_seconds
        result["server"]["models"] = sorted(models)
        servers = {"modes": shared}
        sweeps = asyncio.run(run_sweeps({mode: shared for mode in args.modes}, spec, export, stream, args.paths,
                                        levels, args, progress, suffixes=suffixes))
        for path, modes in sweeps.items():
            result["sweep"][path] = modes
        if "on" in args.modes:
            server = shared
            progress.update(f"{spec.name}: interleaved single requests", advance=0)
            result["overhead"] = overhead(server, spec, export, args.precision, short, args.threads,
                                          args.overhead_reps, gap_s=args.gap_ms / 1e3)
            if "off" in args.modes:
                progress.update(f"{spec.name}: batching on vs off at c = 1, paired request by request", advance=0)
                result["modes_paired_c1"] = modes_paired(server, spec, export, stream, args.paths,
                                                         args.paired_reps)
            progress.update(f"{spec.name}: equality with the thin client", advance=0)
            result["equality"] = equality(server, spec, export, corpus_lines(spec, pre, args.quick))
            result["server"]["peak_rss_mib"] = common.tree_peak_rss_mib(server.process.pid)
        for server in servers.values():
            server.stop()
        servers = {}
        if args.spin_check:
            progress.update(f"{spec.name}: the hop with the server's ORT threads never spinning", advance=0)
            server = start_server(repo, {spec.name: layout_options(args.layout)}, export, args.precision,
                                  extra_parameters={"intra_op_spinning": "0"})
            try:
                result["overhead_server_not_spinning"] = overhead(server, spec, export, args.precision, short,
                                                                  args.threads, args.overhead_reps, text=False,
                                                                  gap_s=args.gap_ms / 1e3)
            finally:
                server.stop()
        result["layouts"] = []
        if args.layouts:
            for layout in args.layouts:
                servers[layout] = start_server(repo / f"layout-{layout}", {spec.name: layout_options(layout)}, export,
                                               args.precision)
            rows = asyncio.run(run_sweeps(servers, spec, export, stream, ["grpc"], {"grpc": args.layout_concurrency},
                                          args, progress, "layout"))["grpc"]
            result["layouts"] = [{"layout": layout, "levels": rows[layout]} for layout in args.layouts]
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(repo, ignore_errors=True)
    result["ratios"] = ratios(result["sweep"])
    return result


# -- report -----------------------------------------------------------------------------------------------------------
def print_tables(result: dict) -> None:
    for spec in result["specs"]:
        mix = spec["length_mix"]
        print(f"\n== {spec['spec']} ({spec['precision']}, {spec['export']}); request tokens mean {mix['mean']:.0f}, "
              f"p50 {mix['p50']:.0f}, p90 {mix['p90']:.0f}, max {mix['max']}; layout {spec['layout']}")
        ip = spec["inprocess"]
        print(f"in-process: sequential {ip['sequential']['throughput_rps']:.1f} req/s (p50 "
              f"{ip['sequential']['p50_ms']:.1f} ms, p99 {ip['sequential']['p99_ms']:.1f} ms); batches of 16 "
              f"{ip['batch16_throughput_rps']:.1f} req/s padded to the longest, "
              f"{ip.get('batch16_equal_lengths_throughput_rps', float('nan')):.1f} req/s one call per length")
        rows = []
        for path, modes in spec["sweep"].items():
            ratio = {r["concurrency"]: r for r in spec["ratios"].get(path, [])}
            for mode, levels in modes.items():
                for r in levels:
                    s = r["server"]
                    rows.append({"path": path, "mode": mode, **{k: r[k] for k in ("concurrency", "throughput_rps",
                                                                                     "p50_ms", "p90_ms", "p95_ms",
                                                                                     "p99_ms")},
                                 "queue": s["queue_ms"], "infer": s["compute_infer_ms"],
                                 "batch": s["mean_executed_batch"], "stable": "yes" if r["stable"] else "no",
                                 "tput_ratio": ratio.get(r["concurrency"], {}).get("throughput_on_over_off")
                                 if mode == "on" else None,
                                 "p99_ratio": ratio.get(r["concurrency"], {}).get("p99_on_over_off")
                                 if mode == "on" else None})
        print(common.format_table(rows, [
            ("path", "path", ""), ("mode", "batching", ""), ("concurrency", "conc", "{}"),
            ("throughput_rps", "req/s", "{:.1f}"), ("p50_ms", "p50", "{:.1f}"), ("p90_ms", "p90", "{:.1f}"),
            ("p95_ms", "p95", "{:.1f}"), ("p99_ms", "p99", "{:.1f}"), ("queue", "srv queue ms", "{:.2f}"),
            ("infer", "srv infer ms", "{:.1f}"), ("batch", "exec batch", "{:.2f}"), ("stable", "stable", ""),
            ("tput_ratio", "on/off req/s", "{:.2f}"), ("p99_ratio", "on/off p99", "{:.2f}")]))
        if "overhead" in spec:
            o = spec["overhead"]
            print(f"interleaved single requests ({o['request_tokens']} tokens, {o['reps']} rounds):")
            for name, s in o["paths"].items():
                added = o["added_p50_ms"].get(name)
                print(f"  {name:50s} p50 {s['p50_ms']:8.2f} ms  p99 {s['p99_ms']:8.2f} ms"
                      + (f"   {added:+.2f} ms over {o['added_against'][name]} (paired median)"
                         if added is not None else ""))
            print("  where the gRPC hop goes: " + ", ".join(f"{k} {v:.3f}" for k, v in o["where_the_grpc_hop_goes"].items()
                                                           if v is not None))
        for path, m in spec.get("modes_paired_c1", {}).items():
            print(f"  c = 1 paired, {path}: batching on {m['on']['p50_ms']:.2f} ms p50, off {m['off']['p50_ms']:.2f} ms; "
                  f"on - off median {m['on_minus_off_median_ms']:+.2f} ms, mean latency on/off "
                  f"{m['on_over_off_mean_latency']:.3f} ({m['rounds']} rounds)")
        if "overhead_server_not_spinning" in spec:
            print(f"  with the server's ORT threads never spinning (intra_op_spinning 0): gRPC thin client adds "
                  f"{spec['overhead_server_not_spinning']['added_p50_ms']['gRPC thin client, ids']:.2f} ms")
        if "equality" in spec:
            e = spec["equality"]
            print(f"equality with the thin client on {e['rows']} corpus rows: curl {e['curl']}, tritonclient.http "
                  f"{e['tritonclient_http']}")
        for lay in spec.get("layouts", []):
            print(f"layout {lay['layout']}: " + ", ".join(f"c={r['concurrency']} {r['throughput_rps']:.1f} req/s p99 "
                                                          f"{r['p99_ms']:.0f} ms" for r in lay["levels"]))


def plot(result: dict, out_prefix: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    styles = {"grpc": "o", "text-grpc": "s", "text-http": "^"}
    for spec in result["specs"]:
        fig, axes = plt.subplots(2, 2, figsize=(14, 10))
        for path, modes in spec["sweep"].items():
            for mode, rows in modes.items():
                ls = "-" if mode == "on" else "--"
                xs = [r["concurrency"] for r in rows]
                axes[0, 0].plot(xs, [r["throughput_rps"] for r in rows], styles[path] + ls,
                                label=f"{path}, batching {mode}")
                axes[0, 1].plot(xs, [r["p99_ms"] for r in rows], styles[path] + ls, label=f"{path}, batching {mode}")
        seq = spec["inprocess"]["sequential"]["throughput_rps"]
        axes[0, 0].axhline(seq, color="k", lw=0.8, ls=":", label=f"in-process sequential {seq:.1f} req/s")
        for ax, ylabel, title in ((axes[0, 0], "throughput (requests/s)", "throughput vs concurrency"),
                                  (axes[0, 1], "p99 latency (ms)", "p99 vs concurrency")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent requests")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{spec['spec']}: {title}")
            ax.legend(fontsize=7)
            ax.grid(True, alpha=0.3)
        axes[0, 1].set_yscale("log")
        if "overhead" in spec:
            names = list(spec["overhead"]["paths"])
            p50 = [spec["overhead"]["paths"][n]["p50_ms"] for n in names]
            axes[1, 0].barh(range(len(names)), p50, color="tab:blue")
            axes[1, 0].set_yticks(range(len(names)), names, fontsize=7)
            for k, n in enumerate(names):
                added = spec["overhead"]["added_p50_ms"].get(n)
                if added is not None:
                    axes[1, 0].annotate(f"+{added:.2f} ms", (p50[k], k), fontsize=7, va="center")
            axes[1, 0].set_xlabel("p50 latency (ms), interleaved single requests")
            axes[1, 0].set_title(f"one {spec['overhead']['request_tokens']}-token request per path")
        for lay in spec.get("layouts", []):
            axes[1, 1].plot([r["concurrency"] for r in lay["levels"]], [r["throughput_rps"] for r in lay["levels"]],
                            "o-", label=f"instances x threads {lay['layout']}")
        axes[1, 1].set_xscale("log", base=2)
        axes[1, 1].set_xlabel("concurrent requests")
        axes[1, 1].set_ylabel("throughput (requests/s)")
        axes[1, 1].set_title("python backend layouts (thin client, batching on)")
        if spec.get("layouts"):
            axes[1, 1].legend(fontsize=7)
        axes[1, 1].grid(True, alpha=0.3)
        peak = result["machine"]["peak"]
        fig.suptitle(f"{spec['spec']} ({spec['precision']}), Triton {result['versions'].get('nvidia-pytriton')} python "
                     f"backend, {peak['cpu']} x{peak['cores']} (AVX-512 VNNI: {peak['vnni']})", fontsize=9)
        files.append(common.save_spec_figure(fig, out_prefix, spec["spec"]))
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=os.environ.get("GUARDRT_BENCH_SPECS", "rejection,intent-safety"))
    ap.add_argument("--size", default=os.environ.get("GUARDRT_BENCH_SIZE", "realistic"), choices=("tiny", "realistic"))
    ap.add_argument("--export-dir", default=os.environ.get("GUARDRT_BENCH_EXPORT_DIRS"),
                    help="serve these export directories instead of the demo exports: SPEC=DIR[,SPEC=DIR]")
    ap.add_argument("--precision", default=os.environ.get("GUARDRT_BENCH_PRECISION", "int8-dynamic"))
    ap.add_argument("--quick", action="store_true", help="tiny models, short windows (smoke test)")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"sweep paths ({', '.join(PATHS)})")
    ap.add_argument("--modes", default="on,off", help="dynamic batching modes: on,off")
    ap.add_argument("--concurrency", default="1,4,16,64", help="levels of the gRPC thin-client sweep")
    ap.add_argument("--text-concurrency", default="1,16", help="levels of the text-in sweeps")
    ap.add_argument("--layout", default="default", help="instances x threads of the main server (e.g. 2x2)")
    ap.add_argument("--layouts", default="1x2,2x1,2x2", help="layouts compared (thin client, batching on); '' skips")
    ap.add_argument("--layout-concurrency", default="1,16,64")
    ap.add_argument("--no-spin-check", dest="spin_check", action="store_false",
                    help="skip the hop measured with the server's ORT threads never spinning")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("GUARDRT_BENCH_THREADS", "0")) or None,
                    help="in-process ONNX Runtime threads (default: all cores)")
    ap.add_argument("--requests", type=int, default=512, help="size of the seeded request stream (cycled)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds per sweep cell; the batching modes take turns ABBA within a cell (merged)")
    ap.add_argument("--window-s", type=float, default=2.0)
    ap.add_argument("--min-windows", type=int, default=3)
    ap.add_argument("--max-windows", type=int, default=5)
    ap.add_argument("--stability", type=float, default=0.10)
    ap.add_argument("--min-requests", type=int, default=20, help="minimum requests per window (at least concurrency)")
    ap.add_argument("--overhead-reps", type=int, default=200)
    ap.add_argument("--gap-ms", type=float, default=1e3 * serve_load.INTERLEAVED_GAP_S,
                    help="idle time after each interleaved single request (outlasts ORT's post-Run spin)")
    ap.add_argument("--paired-reps", type=int, default=160,
                    help="rounds of the paired on-vs-off check at concurrency 1 (each path)")
    ap.add_argument("--baseline-s", type=float, default=4.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    args.threads = args.threads or (os.cpu_count() or 1)
    if args.quick:
        args.size = "tiny"
        args.window_s, args.min_windows, args.max_windows, args.min_requests = 0.3, 1, 2, 4
        args.overhead_reps, args.baseline_s, args.requests, args.paired_reps = 10, 0.3, 64, 8
        args.gap_ms = args.gap_ms if "--gap-ms" in (argv or sys.argv) else 5.0
        args.text_concurrency = "1"
        args.layouts = args.layouts if "--layouts" in (argv or sys.argv) else "2x1"
        args.layout_concurrency = "1"
        args.rounds = args.rounds if "--rounds" in (argv or sys.argv) else 1
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.text_concurrency = [int(c) for c in args.text_concurrency.split(",")]
    args.layout_concurrency = [int(c) for c in args.layout_concurrency.split(",")]
    args.layouts = [x for x in args.layouts.split(",") if x]
    args.paths = [p for p in args.paths.split(",") if p in PATHS]
    args.modes = [m for m in args.modes.split(",") if m in ("on", "off")]
    out = args.out or common.RESULTS / ("serve_quick" if args.quick else "serve")
    specs = [s.strip() for s in args.spec.split(",") if s.strip()]
    result = {"benchmark": "serve", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": common.machine_description(args.threads), "versions": common.versions(),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "specs": []}
    per_spec = (len(args.modes) * (len(args.concurrency) * ("grpc" in args.paths)
                                   + len(args.text_concurrency) * sum(p != "grpc" for p in args.paths))
                + len(args.layouts) * len(args.layout_concurrency)) * max(1, args.rounds)
    progress = common.Progress(len(specs) * per_spec)
    t0 = time.perf_counter()
    for spec_name in specs:
        result["specs"].append(run_spec(spec_name, args, progress))
    progress.close()
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    print_tables(result)
    files = [common.write_json(out.with_suffix(".json"), result)]
    if not args.no_plots:
        files += plot(result, out)
    print("\nwrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())

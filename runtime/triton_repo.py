"""Triton model repository writer: config.pbtxt for three flavors, plus the model files.

Flavors:

* ``python`` (default; runs anywhere the nvidia-pytriton wheel runs): Triton's python backend running ONNX Runtime
  (`runtime/triton_backend/model.py`). Inputs are `allow_ragged_batch`, so requests of different lengths are batched
  together and the model pads them itself (spec side, spec pad id). Dynamic batching with the spec's preferred batch
  sizes and queue delay; instance count configurable; execution providers (cpu / cuda / tensorrt) by parameter.
* ``onnxruntime`` (`platform: onnxruntime_onnx`) and ``tensorrt`` (`platform: tensorrt_plan`): NVIDIA's native
  backends (in NVIDIA's Triton container). They batch only same-shape requests, so the client pads each sequence to
  the spec's length bucket (`ModelSpec.bucket_for`).

Every flavor's dynamic batcher carries a queue policy derived from the spec (`queue_policy`): a bounded queue, a
default queue timeout that rejects, and per-request timeout overrides (the guardrt client sends its deadline).

Text in (`write_text_model`, `guardrt repo` writes it next to every model it writes from an export): `<name>-text`, a
python-backend model taking one BYTES input `payload` (one JSON line per row, what `guardrt classify` reads) and
returning one BYTES output `result` (the JSON object `guardrt classify` prints, or `{"error": ...}`), for clients in
any language (KServe v2 over HTTP or gRPC). It runs guardrt's own preprocessing and ONNX Runtime in one process; the
tokenizer files and the task description travel in its version directory.

Python-flavor models warm up at load: the backend times a few shapes for its batch planner (`profile_budget_s`),
then Triton sends the `model_warmup` requests of the config (files in `<model>/warmup/`) through the whole path.

Every generated config is checked by parsing it with Triton's own ModelConfig protobuf (shipped in tritonclient).
The config `parameters` carry `guardrt_spec` and `guardrt_flavor`, which the client reads to pick its padding.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from guardrt.runtime.errors import InputError, ModelFilesError
from guardrt.runtime.specs import ModelSpec, get_spec

__all__ = [
    "FLAVORS",
    "TEXT_SUFFIX",
    "config_parameters",
    "config_text",
    "default_configs",
    "onnxruntime_config",
    "parse_config",
    "python_config",
    "queue_policy",
    "tensorrt_config",
    "write_default_configs",
    "write_model",
    "write_text_model",
    "text_model_name",
]

FLAVORS = ("python", "onnxruntime", "tensorrt")
PROVIDERS = ("cpu", "cuda", "tensorrt")
BACKEND_DIR = Path(__file__).with_name("triton_backend")
BACKEND_TEMPLATE = BACKEND_DIR / "model.py"
# model.py loads these from its own directory: they are copied next to it.
BACKEND_SIBLINGS = ("batch_plan.py", "onnx_graph.py")
TEXT_SUFFIX = "-text"
# Padded tokens one ONNX Runtime call may hold in the python backend, as a fraction of the largest batch the config
# admits (max_batch_size x max_length): rejection 64 x 512 / 4 = 8,192, intent-safety 16 x 4,096 / 4 = 16,384. Bounds
# the attention scores an eager-attention graph materialises (rows x heads x L^2 floats).
GROUP_TOKENS_FRACTION = 4
# Seconds the python backend spends at load timing shapes for its batch planner (per instance).
PROFILE_BUDGET_S = 3.0
# Instances of a python-flavor model. With ONE instance, Triton 2.51's dynamic batcher now and then leaves a request
# queued for its 500 ms idle wait: the response reaches a fast client before the instance's slot is released, the
# next request's enqueue finds no free slot and does not wake the batcher, and nothing else does (measured with the
# tiny rejection model, closed loop: max latency 503 ms at every concurrency 1..64 with one instance - main's
# backend too -, never over 75 ms with two; throughput 2,057 vs 980 req/s at concurrency 64). Two instances keep a
# free slot for the next request. benchmarks/serve.py measures the instance x thread layouts on the demo models.
PYTHON_INSTANCES = 2
# Dynamic-batching queue delay of python-flavor models on CPU. The batch planner makes any batch at least as cheap
# as its requests one by one, so waiting for a bigger batch buys nothing on a CPU and costs up to the delay on
# every request at low load (measured: +1.3 ms p50 at concurrency 1 with the spec's 1,000 us); requests that arrive
# while both instances are busy are still batched (mean executed batch 7 at concurrency 64). GPU providers keep the
# spec's delay, where bigger batches pay.
CPU_QUEUE_DELAY_US = 0
INT8_CHECKER = Path(__file__).with_name("int8_path.py")  # self-contained; the backend imports it from its version dir


# -- config text --------------------------------------------------------------------------------------------------
def _q(value: object) -> str:
    return json.dumps(str(value))  # protobuf text strings accept JSON-style escapes for what we write


def _text_io_block() -> str:
    return ('input [\n  { name: "payload" data_type: TYPE_STRING dims: [ 1 ] }\n]\n'
            'output [\n  { name: "result" data_type: TYPE_STRING dims: [ 1 ] }\n]\n')


def _io_block(spec: ModelSpec, input_type: str, ragged: bool) -> str:
    ragged_field = " allow_ragged_batch: true" if ragged else ""
    inputs = ",\n".join(
        f"  {{ name: {_q(name)} data_type: {input_type} dims: [ -1 ]{ragged_field} }}" for name in spec.input_names
    )
    outputs = ",\n".join(
        f"  {{ name: {_q(name)} data_type: TYPE_FP32 dims: [ {len(spec.labels)} ] }}" for name in spec.output_names
    )
    return f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"


# -- overload and deadlines -----------------------------------------------------------------------------------------
# The default end-to-end deadline of one guardrt client request (retries included; triton_client uses it). A request
# carries at most max_length tokens and waits behind less than max_length tokens of its caller's other requests (the
# client's in-flight bounds): about two full-length rows of work at most, so one default fits every spec whose
# full-length row runs in a few seconds (the tiny demos: ~1.5 s at 4,088 tokens; a bigger model needs more).
DEFAULT_REQUEST_TIMEOUT_S = 30.0
# A full queue holds this many full batches: enough to keep an instance fed while the next batch forms, few enough
# that a request at the back waits a few executions, not minutes. Past it Triton refuses at once (UNAVAILABLE,
# "Exceeds maximum queue size") and the guardrt client backs off (jittered) and retries.
QUEUED_BATCHES = 4


def queue_policy(spec: ModelSpec) -> dict[str, object]:
    """Triton's `default_queue_policy` for a spec's dynamic batcher, derived from the spec.

    * `max_queue_size` = QUEUED_BATCHES x max_batch_size requests: bounded memory and wait under overload.
    * `default_timeout_microseconds` = DEFAULT_REQUEST_TIMEOUT_S: a request still queued after the guardrt client's
      default deadline has been given up by its caller, so it is rejected (`timeout_action: REJECT`) instead of
      computed. `allow_timeout_override: true` lets every request carry its own timeout: guardrt's client sends
      the time left of its end-to-end deadline, so the server drops exactly the requests nobody waits for.
    """
    return {
        "max_queue_size": QUEUED_BATCHES * spec.max_batch_size,
        "timeout_action": "REJECT",
        "default_timeout_microseconds": int(DEFAULT_REQUEST_TIMEOUT_S * 1_000_000),
        "allow_timeout_override": True,
    }


def _batching_block(spec: ModelSpec, max_queue_delay_us: int | None, *, max_queue_size: int | None = None,
                    queue_timeout_us: int | None = None) -> str:
    """`dynamic_batching` with the spec's preferred sizes and queue delay and its queue policy (`queue_policy`);
    `max_queue_size` / `queue_timeout_us` override the derived values."""
    sizes = [s for s in spec.preferred_batch_sizes if s <= spec.max_batch_size]
    delay = spec.max_queue_delay_us if max_queue_delay_us is None else max_queue_delay_us
    policy = queue_policy(spec)
    if max_queue_size is not None:
        policy["max_queue_size"] = int(max_queue_size)
    if queue_timeout_us is not None:
        policy["default_timeout_microseconds"] = int(queue_timeout_us)
    fields = "".join(f"    {k}: {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in policy.items())
    return (
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(str(s) for s in sizes)} ]\n"
        f"  max_queue_delay_microseconds: {int(delay)}\n"
        f"  default_queue_policy {{\n{fields}  }}\n"
        "}\n"
    )


# -- warm-up ---------------------------------------------------------------------------------------------------------
WARMUP_DIR = "warmup"
WARMUP_LENGTH = 16


def warmup_files(spec: ModelSpec, input_kind: str = "ids") -> dict[str, bytes]:
    """{file name: raw bytes} of the model's warm-up request, for `<model>/warmup/` (Triton reads raw row-major
    data; a BYTES element is a 4-byte little-endian length and the bytes). ids: one row of WARMUP_LENGTH ordinary
    token ids (the ids the pad id is not), all attended; text: one example payload of the spec."""
    import struct

    if input_kind == "text":
        from guardrt.runtime.payloads import example_payload

        data = example_payload(spec).encode("utf-8")
        return {"payload": struct.pack("<I", len(data)) + data}
    token = 100 if spec.pad_token_id != 100 else 101
    return {spec.input_names[0]: struct.pack(f"<{WARMUP_LENGTH}q", *([token] * WARMUP_LENGTH)),
            spec.input_names[1]: struct.pack(f"<{WARMUP_LENGTH}q", *([1] * WARMUP_LENGTH))}


def _warmup_block(spec: ModelSpec, input_kind: str) -> str:
    """`model_warmup`: one request through the whole path (stub, IPC, response) once the backend has loaded; its
    data is `warmup_files`, which write_model puts in `<model>/warmup/`."""
    if input_kind == "text":
        inputs = '    inputs { key: "payload" value: { data_type: TYPE_STRING dims: [ 1 ] input_data_file: "payload" } }\n'
    else:
        inputs = "".join(
            f"    inputs {{ key: {_q(n)} value: {{ data_type: TYPE_INT64 dims: [ {WARMUP_LENGTH} ] "
            f"input_data_file: {_q(n)} }} }}\n" for n in spec.input_names[:2])
    return f'model_warmup [\n  {{\n    name: "one short row"\n    batch_size: 1\n{inputs}  }}\n]\n'


def _parameters_block(params: dict[str, object]) -> str:
    lines = [f"  {{ key: {_q(k)} value: {{ string_value: {_q(v)} }} }}" for k, v in params.items()]
    return "parameters [\n" + ",\n".join(lines) + "\n]\n"


def _header(spec: ModelSpec, name: str | None, kind_line: str) -> str:
    return f"name: {_q(name or spec.name)}\n{kind_line}\nmax_batch_size: {spec.max_batch_size}\n"


def _common_params(spec: ModelSpec, flavor: str, precision: str) -> dict[str, object]:
    return {"guardrt_spec": spec.name, "guardrt_flavor": flavor, "guardrt_precision": precision}


def python_config(
    spec: ModelSpec | str,
    *,
    name: str | None = None,
    precision: str = "fp32",
    instance_count: int | None = None,
    providers: str = "cpu",
    intra_op_threads: int = 0,
    max_queue_delay_us: int | None = None,
    onnx_file: str = "model.onnx",
    trt_cache_dir: str | None = None,
    dynamic_batching: bool = True,
    max_queue_size: int | None = None,
    queue_timeout_us: int | None = None,
    input_kind: str = "ids",
    profile_budget_s: float | None = None,
    max_group_tokens: int | None = None,
    max_payload_bytes: int | None = None,
    warmup: bool = True,
    cost_model: dict[str, float] | None = None,
) -> str:
    """config.pbtxt for the python backend running ONNX Runtime (ragged dynamic batching, padding in the model).

    `input_kind="text"`: the text-in model (BYTES `payload` -> BYTES `result`, see write_text_model).
    `instance_count` defaults to PYTHON_INSTANCES and `max_queue_delay_us` to 0 on CPU (the spec's on a GPU): see
    those constants for the measurements. `intra_op_threads` 0 lets the backend pick (see runtime/triton_backend). The backend's batch
    planner times shapes for `profile_budget_s` seconds at load (default PROFILE_BUDGET_S; 0 disables it: equal
    lengths together, never padding) and never puts more than `max_group_tokens` padded tokens in one call (default:
    max_batch_size x max_length / GROUP_TOKENS_FRACTION); `cost_model` (coefficients of the planner's CostModel:
    per_call, per_position, per_token, per_token_pair, in seconds) pins the planner's model instead of timing at
    load. `warmup` adds the `model_warmup` request (its data files come from `warmup_files`; write_model writes them).

    GPU providers: the provider list with its options (`ort_providers.python_backend_providers`: the spec's
    TensorRT profile, precision flags, engine cache in `trt_cache_dir`, default /tmp/guardrt-trt-cache/<name>) goes
    into the `ort_providers` parameter. int8-dynamic with the TensorRT provider is refused.
    `dynamic_batching=False` leaves the batcher out (one request = one execution, no queue policy: a baseline for
    benchmarks); `max_queue_size` / `queue_timeout_us` override the spec-derived queue policy (`queue_policy`)."""
    from guardrt.runtime.ort_providers import python_backend_providers

    spec = get_spec(spec) if isinstance(spec, str) else spec
    if providers not in PROVIDERS:
        raise InputError(f"providers must be one of {', '.join(PROVIDERS)}, got {providers!r}")
    instance_count = PYTHON_INSTANCES if instance_count is None else int(instance_count)
    if instance_count < 1:
        raise InputError(f"instance count must be >= 1, got {instance_count}")
    if max_queue_delay_us is None and providers == "cpu":
        max_queue_delay_us = CPU_QUEUE_DELAY_US
    if input_kind not in ("ids", "text"):
        raise InputError(f"input_kind must be ids or text, got {input_kind!r}")
    params = _common_params(spec, "python", precision)
    params.update(
        guardrt_input=input_kind,
        onnx_file=onnx_file,
        pad_token_id=spec.pad_token_id,
        padding_side=spec.padding_side,
        max_length=spec.max_length,
        execution_providers=providers,
        intra_op_threads=int(intra_op_threads),
        profile_budget_s=PROFILE_BUDGET_S if profile_budget_s is None else float(profile_budget_s),
        max_group_tokens=int(max_group_tokens or spec.max_batch_size * spec.max_length // GROUP_TOKENS_FRACTION),
    )
    if cost_model is not None:
        params["cost_model"] = json.dumps({k: float(v) for k, v in cost_model.items()}, sort_keys=True)
    if input_kind == "text":
        from guardrt.runtime.text_serving import DEFAULT_MAX_PAYLOAD_BYTES

        params["max_payload_bytes"] = int(max_payload_bytes or DEFAULT_MAX_PAYLOAD_BYTES)
    if providers != "cpu":
        cache = trt_cache_dir or _default_trt_cache(name or spec.name)
        params["ort_providers"] = python_backend_providers(spec, providers, precision, cache)
    if providers == "tensorrt":
        params.update(trt_fp16=int(precision == "fp16"), trt_int8=int(precision == "int8"), trt_cache_dir=cache)
    kind = "KIND_CPU" if providers == "cpu" else "KIND_GPU"
    return (
        _header(spec, name, 'backend: "python"')
        + (_text_io_block() if input_kind == "text" else _io_block(spec, "TYPE_INT64", ragged=True))
        + (_batching_block(spec, max_queue_delay_us, max_queue_size=max_queue_size, queue_timeout_us=queue_timeout_us)
           if dynamic_batching else "")
        + f"instance_group [\n  {{ count: {int(instance_count)} kind: {kind} }}\n]\n"
        + (_warmup_block(spec, input_kind) if warmup else "")
        + _parameters_block(params)
    )


# ONNX precision -> the onnxruntime backend's TensorRT `precision_mode`. int8-dynamic has none (refused).
_TRT_PRECISION_MODE = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
# Engine precisions of the tensorrt_plan flavor.
TRT_PLAN_PRECISIONS = ("fp32", "fp16", "int8")


def _default_trt_cache(name: str) -> str:
    """Where ONNX Runtime's TensorRT provider keeps engines when no cache directory is given (a path inside the
    server's container or host; pass trt_cache_dir to put it on a volume that survives restarts)."""
    return f"/tmp/guardrt-trt-cache/{name}"


def onnxruntime_config(
    spec: ModelSpec | str,
    *,
    name: str | None = None,
    precision: str = "fp32",
    instance_count: int = 1,
    gpu: bool = True,
    accelerator: str | None = "tensorrt",
    max_queue_delay_us: int | None = None,
    trt_workspace_bytes: int = 4 << 30,
    trt_cache_dir: str | None = None,
) -> str:
    """config.pbtxt for Triton's native onnxruntime backend (`platform: onnxruntime_onnx`).

    On a GPU (`gpu=True`) the TensorRT execution accelerator is enabled with the precision of the ONNX file
    (`accelerator=None` or "cuda" keeps the plain CUDA EP), the bucket/profile contract's single explicit profile
    (`trt_profile_min/opt/max_shapes`: no engine rebuild when a longer batch arrives), and the engine and timing
    caches in `trt_cache_dir` (default /tmp/guardrt-trt-cache/<name>). Every key is one the 24.10 backend accepts
    (it refuses unknown ones). int8-dynamic is refused for TensorRT. Same-shape batching only: the client pads to
    buckets.
    """
    from guardrt.runtime.ort_providers import refuse_for_tensorrt, tensorrt_profile_shapes

    spec = get_spec(spec) if isinstance(spec, str) else spec
    if accelerator not in (None, "cuda", "tensorrt"):
        raise InputError(f"accelerator must be tensorrt, cuda or None, got {accelerator!r}")
    text = (
        _header(spec, name, 'platform: "onnxruntime_onnx"')
        + _io_block(spec, "TYPE_INT64", ragged=False)
        + _batching_block(spec, max_queue_delay_us)
        + f"instance_group [\n  {{ count: {int(instance_count)} kind: {'KIND_GPU' if gpu else 'KIND_CPU'} }}\n]\n"
    )
    if gpu and accelerator == "tensorrt":
        refuse_for_tensorrt(precision)
        cache = trt_cache_dir or _default_trt_cache(name or spec.name)
        trt_params = {"precision_mode": _TRT_PRECISION_MODE.get(precision, "FP32"),
                      "max_workspace_size_bytes": int(trt_workspace_bytes),
                      "trt_engine_cache_enable": 1, "trt_engine_cache_path": cache,
                      "trt_timing_cache_enable": 1, "trt_timing_cache_path": cache,
                      **tensorrt_profile_shapes(spec)}
        lines = "".join(f"        parameters {{ key: {_q(k)} value: {_q(v)} }}\n" for k, v in trt_params.items())
        text += (
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n"
            '      { name: "tensorrt"\n' + lines +
            "      }\n    ]\n  }\n}\n"
        )
    return text + _parameters_block(_common_params(spec, "onnxruntime", precision))


def tensorrt_config(
    spec: ModelSpec | str,
    *,
    name: str | None = None,
    precision: str = "fp16",
    instance_count: int = 1,
    num_profiles: int | None = None,
    input_data_type: str = "TYPE_INT64",
    max_queue_delay_us: int | None = None,
) -> str:
    """config.pbtxt for a TensorRT plan (`platform: tensorrt_plan`).

    Consistent with engines built on the bucket/profile contract (runtime/bucket_profiles.py): every profile covers
    batch 1..max_batch_size, their sequence ranges are disjoint and cover 1..max_length, so `max_batch_size` is the
    spec's, the sequence dim is -1 (bounded by the profiles), and every instance lists every profile
    0..num_profiles-1 (default: the contract's one per length bucket). Each instance must list them all: Triton's
    dynamic batcher hands a batch to any free instance, whatever its shape, and an instance without the profile of
    that shape fails it. The client pads each sequence to its bucket, so Triton batches same shapes.
    """
    from guardrt.runtime.bucket_profiles import derive_profiles

    spec = get_spec(spec) if isinstance(spec, str) else spec
    if precision not in TRT_PLAN_PRECISIONS:
        from guardrt.runtime.ort_providers import refuse_for_tensorrt

        refuse_for_tensorrt(precision)
        raise InputError(f"TensorRT precision {precision!r} not supported; choose from {', '.join(TRT_PLAN_PRECISIONS)}")
    n = len(derive_profiles(spec)) if num_profiles is None else int(num_profiles)
    if n < 1:
        raise InputError(f"num_profiles must be >= 1, got {n}")
    if instance_count < 1:
        raise InputError(f"instance count must be >= 1, got {instance_count}")
    profiles = ", ".join(_q(i) for i in range(n))
    return (
        _header(spec, name, 'platform: "tensorrt_plan"')
        + _io_block(spec, input_data_type, ragged=False)
        + _batching_block(spec, max_queue_delay_us)
        + f"instance_group [\n  {{ count: {int(instance_count)} kind: KIND_GPU profile: [ {profiles} ] }}\n]\n"
        + _parameters_block(_common_params(spec, "tensorrt", precision))
    )


def config_text(spec: ModelSpec | str, flavor: str = "python", **options) -> str:
    """config.pbtxt text for `flavor` (python | onnxruntime | tensorrt), validated by Triton's protobuf."""
    builders = {"python": python_config, "onnxruntime": onnxruntime_config, "tensorrt": tensorrt_config}
    if flavor not in builders:
        raise InputError(f"unknown flavor {flavor!r}; choose one of {', '.join(FLAVORS)}")
    text = builders[flavor](spec, **options)
    parse_config(text)
    return text


def parse_config(text: str):
    """Parse config.pbtxt text with Triton's ModelConfig protobuf (from tritonclient); ModelFilesError if invalid."""
    from guardrt.runtime.errors import require

    require("tritonclient.grpc", "client")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelFilesError(f"invalid Triton model config: {exc}") from None


def config_parameters(config) -> dict[str, str]:
    """The string parameters of a parsed ModelConfig (or of tritonclient's get_model_config().config)."""
    return {k: v.string_value for k, v in config.parameters.items()}


# -- writing a model into a repository ----------------------------------------------------------------------------
def _place(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (same file system, no copy of big weights), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _onnx_files(onnx_path: Path) -> list[Path]:
    """model.onnx plus the external-data files it references (the export writes them next to it)."""
    if onnx_path.is_dir():  # already in Triton's directory layout: model.onnx/{model.onnx, data...}
        return sorted(p for p in onnx_path.iterdir() if p.is_file())
    files = [onnx_path]
    for sibling in sorted(onnx_path.parent.iterdir()):
        if sibling != onnx_path and sibling.is_file() and sibling.name.startswith(onnx_path.name):
            files.append(sibling)  # model.onnx.data, model.onnx_data ...
    return files


def _built_profile_count(plan: Path) -> int | None:
    """How many optimization profiles the engine has, from the build.json `guardrt export --target tensorrt` writes
    next to it (an engine fitted to a GPU memory budget may have fewer than one per bucket); None without one."""
    from guardrt.runtime.errors import read_json_file

    record_file = plan.with_name("build.json")
    if not record_file.is_file():
        return None
    profiles = read_json_file(record_file).get("profiles")
    return len(profiles) if profiles else None


def write_model(
    repo: str | Path,
    *,
    spec: ModelSpec | str | None = None,
    export_dir: str | Path | None = None,
    flavor: str = "python",
    precision: str = "fp32",
    onnx_path: str | Path | None = None,
    plan_path: str | Path | None = None,
    name: str | None = None,
    instance_count: int | None = None,
    providers: str = "cpu",
    **options,
) -> Path:
    """Write `repo/<name>/config.pbtxt` and `repo/<name>/1/...` for one model; other models in `repo` are kept.
    `instance_count` None: PYTHON_INSTANCES for the python flavor, 1 for the native ones.

    The ONNX file comes from `export_dir` (its guardrt.json, at `precision`) or `onnx_path`; the `tensorrt` flavor
    takes `plan_path` (or writes the config alone when the engine is built later, e.g. on a GPU host), with the
    profile count of its build.json when there is one. Returns the model directory. The model directory is replaced
    as a whole (a rename), so a reader never sees it half written.
    """
    from guardrt.runtime.export_dir import load_export_dir

    manifest = load_export_dir(export_dir) if export_dir is not None else None
    if spec is None:
        if manifest is None:
            raise InputError("give a spec or an export directory")
        spec = manifest.spec
    spec = get_spec(spec) if isinstance(spec, str) else spec
    if manifest is not None and manifest.spec != spec.name:
        raise ModelFilesError(f"export {manifest.path} is for spec {manifest.spec!r}, not {spec.name!r}")
    if flavor not in FLAVORS:
        raise InputError(f"unknown flavor {flavor!r}; choose one of {', '.join(FLAVORS)}")
    name = name or spec.name

    files: dict[str, Path] = {}  # path inside the version directory -> source
    if flavor in ("python", "onnxruntime"):
        src = Path(onnx_path) if onnx_path is not None else (manifest.model_path(precision) if manifest else None)
        if src is None:
            raise InputError(f"the {flavor} flavor needs an export directory (--model) or an ONNX file")
        if not src.exists():
            raise ModelFilesError(f"ONNX model {src} does not exist")
        onnx_files = _onnx_files(src)
        external = len(onnx_files) > 1
        if flavor == "onnxruntime" and external:
            # Triton's onnxruntime backend loads a directory named model.onnx holding the model and its data.
            files.update({f"model.onnx/{'model.onnx' if f == src else f.name}": f for f in onnx_files})
        else:
            main = src / "model.onnx" if src.is_dir() else src
            files["model.onnx"] = main
            files.update({f.name: f for f in onnx_files if f != main})
        if flavor == "python":
            text = config_text(spec, "python", name=name, precision=precision, instance_count=instance_count,
                               providers=providers, **options)
        else:
            text = config_text(spec, "onnxruntime", name=name, precision=precision, instance_count=instance_count or 1,
                               gpu=providers != "cpu", **options)
    else:
        if plan_path is not None:
            plan = Path(plan_path)
            if not plan.is_file():
                raise ModelFilesError(f"TensorRT plan {plan} does not exist")
            files["model.plan"] = plan
            options.setdefault("num_profiles", _built_profile_count(plan))
        text = config_text(spec, "tensorrt", name=name, precision=precision, instance_count=instance_count or 1,
                           **options)

    blobs: dict[str, bytes] = {}
    if flavor == "python":
        files.update({name_: BACKEND_DIR / name_ for name_ in ("model.py", *BACKEND_SIBLINGS)})
        if onnx_path is None:
            files.update(_int8_check_files(manifest, precision))
        if "model_warmup" in text:
            blobs = {f"{WARMUP_DIR}/{k}": v for k, v in warmup_files(spec).items()}
    return _install(Path(repo), name, text, files, blobs)


def _int8_check_files(manifest, precision: str) -> dict[str, Path]:
    """int8 precisions of an export: the held-out check set and its re-check, which the python backend runs at load
    when this CPU's int8 path differs from the one the export was validated on (version-dir path -> source)."""
    check = manifest.int8_check_file if manifest is not None and precision.startswith("int8") else None
    return {check.name: check, "guardrt_int8_path.py": INT8_CHECKER} if check is not None else {}


def _install(repo: Path, name: str, config: str, version_files: dict[str, Path], model_blobs: dict[str, bytes]) -> Path:
    """Write `repo/name/` whole: config.pbtxt, `model_blobs` (path inside the model directory -> bytes: warm-up data,
    `1/task_description.txt`) and `version_files` (path inside `1/` -> source: backend code copied, weights and
    tokenizer hard-linked when possible). The directory is replaced by a rename, so a reader never sees it half
    written; other models in `repo` are kept."""
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=repo.parent))
    try:
        (staging / "config.pbtxt").write_text(config, encoding="utf-8")
        for rel, data in model_blobs.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_bytes(data)
        version = staging / "1"
        version.mkdir(exist_ok=True)
        for rel, src in version_files.items():
            if src.suffix == ".py":
                shutil.copy2(src, version / rel)  # code is copied, never linked to the checkout
            else:
                _place(src, version / rel)
        target = repo / name
        old = None
        if target.exists():
            old = repo.parent / f".{name}-old-{os.getpid()}"
            target.rename(old)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return repo / name


def text_model_name(name: str) -> str:
    """The text-in model served next to model `name`."""
    return f"{name}{TEXT_SUFFIX}"


def write_text_model(
    repo: str | Path,
    export_dir: str | Path,
    *,
    precision: str = "fp32",
    name: str | None = None,
    task_description: str | None = None,
    instance_count: int | None = None,
    providers: str = "cpu",
    **options,
) -> Path:
    """Write `repo/<name>/` (default `<spec>-text`): the text-in model of an export (see the module docstring).

    Its version directory holds the ONNX model (hard-linked), model.py and its siblings, the export's tokenizer
    files and, for specs whose preprocessor takes one, `task_description.txt` (`task_description`, or the card's
    default), so the repository is self-contained. `options` go to python_config (queue policy, threads, planner,
    `max_payload_bytes`). The server's Python needs guardrt (`pip install 'guardrt[client]'`)."""
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.text_serving import TASK_DESCRIPTION_FILE, TOKENIZER_FILES, takes_task_description

    manifest = load_export_dir(export_dir)
    spec = get_spec(manifest.spec)
    name = name or text_model_name(spec.name)
    src = manifest.model_path(precision)
    files = {"model.onnx": src}
    files.update({f.name: f for f in _onnx_files(src) if f != src})
    files.update({n: BACKEND_DIR / n for n in ("model.py", *BACKEND_SIBLINGS)})
    files.update(_int8_check_files(manifest, precision))
    tokenizer = [f for f in TOKENIZER_FILES if (manifest.tokenizer_dir / f).is_file()]
    if "tokenizer.json" not in tokenizer:
        raise ModelFilesError(f"export {manifest.path} has no tokenizer.json; the text-in model needs the tokenizer")
    files.update({f: manifest.tokenizer_dir / f for f in tokenizer})
    text = config_text(spec, "python", name=name, precision=precision, instance_count=instance_count,
                       providers=providers, input_kind="text", **options)
    blobs = {f"{WARMUP_DIR}/{k}": v for k, v in warmup_files(spec, "text").items()} if "model_warmup" in text else {}
    if takes_task_description(spec):
        from guardrt.runtime.preprocess import default_task_description

        task = default_task_description() if task_description is None else task_description
        blobs[f"1/{TASK_DESCRIPTION_FILE}"] = task.encode("utf-8")
    elif task_description is not None:
        raise InputError(f"spec {spec.name} takes no task description")
    return _install(Path(repo), name, text, files, blobs)


def default_configs() -> dict[str, str]:
    """{model name: config text} for the committed repository (python flavor, CPU, one instance, fp32): each spec's
    token-id model and its text-in model."""
    from guardrt.runtime.specs import spec_names

    configs = {}
    for name in spec_names(graph="classifier_logits"):
        configs[name] = config_text(name, "python")
        configs[text_model_name(name)] = config_text(name, "python", name=text_model_name(name), input_kind="text")
    return configs


def write_default_configs(repo: str | Path = "triton_repo") -> list[Path]:
    """(Re)write the committed configs (`default_configs()`) and their warm-up files, leaving any weights in place;
    after a spec change: `python -c "from guardrt.runtime.triton_repo import write_default_configs as w; w()"`."""
    from guardrt.runtime.specs import spec_names

    written = []
    for name, text in default_configs().items():
        path = Path(repo) / name / "config.pbtxt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for spec_name in spec_names(graph="classifier_logits"):
        for model, kind in ((spec_name, "ids"), (text_model_name(spec_name), "text")):
            for file, data in warmup_files(get_spec(spec_name), kind).items():
                path = Path(repo) / model / WARMUP_DIR / file
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                written.append(path)
    return written

"""Triton model repository writer: config.pbtxt for three flavors, plus the model files.

Flavors:

* ``python`` (default; runs anywhere the nvidia-pytriton wheel runs): Triton's python backend running ONNX Runtime
  (`runtime/triton_backend/model.py`). Inputs are `allow_ragged_batch`, so requests of different lengths are batched
  together and the model pads them itself (spec side, spec pad id). Dynamic batching with the spec's preferred batch
  sizes and queue delay; instance count configurable; execution providers (cpu / cuda / tensorrt) by parameter.
* ``onnxruntime`` (`platform: onnxruntime_onnx`) and ``tensorrt`` (`platform: tensorrt_plan`): NVIDIA's native
  backends (in NVIDIA's Triton container). They batch only same-shape requests, so the client pads each sequence to
  the spec's length bucket (`ModelSpec.bucket_for`).

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
    "config_parameters",
    "config_text",
    "default_configs",
    "onnxruntime_config",
    "parse_config",
    "python_config",
    "tensorrt_config",
    "write_default_configs",
    "write_model",
]

FLAVORS = ("python", "onnxruntime", "tensorrt")
PROVIDERS = ("cpu", "cuda", "tensorrt")
BACKEND_TEMPLATE = Path(__file__).with_name("triton_backend") / "model.py"
INT8_CHECKER = Path(__file__).with_name("int8_path.py")  # self-contained; the backend imports it from its version dir


# -- config text --------------------------------------------------------------------------------------------------
def _q(value: object) -> str:
    return json.dumps(str(value))  # protobuf text strings accept JSON-style escapes for what we write


def _io_block(spec: ModelSpec, input_type: str, ragged: bool) -> str:
    ragged_field = " allow_ragged_batch: true" if ragged else ""
    inputs = ",\n".join(
        f"  {{ name: {_q(name)} data_type: {input_type} dims: [ -1 ]{ragged_field} }}" for name in spec.input_names
    )
    outputs = ",\n".join(
        f"  {{ name: {_q(name)} data_type: TYPE_FP32 dims: [ {len(spec.labels)} ] }}" for name in spec.output_names
    )
    return f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"


def _batching_block(spec: ModelSpec, max_queue_delay_us: int | None) -> str:
    sizes = [s for s in spec.preferred_batch_sizes if s <= spec.max_batch_size]
    delay = spec.max_queue_delay_us if max_queue_delay_us is None else max_queue_delay_us
    return (
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(str(s) for s in sizes)} ]\n"
        f"  max_queue_delay_microseconds: {int(delay)}\n"
        "}\n"
    )


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
    instance_count: int = 1,
    providers: str = "cpu",
    intra_op_threads: int = 0,
    max_queue_delay_us: int | None = None,
    onnx_file: str = "model.onnx",
) -> str:
    """config.pbtxt for the python backend running ONNX Runtime (ragged dynamic batching, padding in the model)."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    if providers not in PROVIDERS:
        raise InputError(f"providers must be one of {', '.join(PROVIDERS)}, got {providers!r}")
    if instance_count < 1:
        raise InputError(f"instance count must be >= 1, got {instance_count}")
    params = _common_params(spec, "python", precision)
    params.update(
        onnx_file=onnx_file,
        pad_token_id=spec.pad_token_id,
        padding_side=spec.padding_side,
        max_length=spec.max_length,
        execution_providers=providers,
        intra_op_threads=int(intra_op_threads),
    )
    if providers == "tensorrt":
        params.update(trt_fp16=int(precision == "fp16"), trt_int8=int(precision.startswith("int8")))
    kind = "KIND_CPU" if providers == "cpu" else "KIND_GPU"
    return (
        _header(spec, name, 'backend: "python"')
        + _io_block(spec, "TYPE_INT64", ragged=True)
        + _batching_block(spec, max_queue_delay_us)
        + f"instance_group [\n  {{ count: {int(instance_count)} kind: {kind} }}\n]\n"
        + _parameters_block(params)
    )


_TRT_PRECISION_MODE = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8", "int8-dynamic": "INT8"}


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
) -> str:
    """config.pbtxt for Triton's native onnxruntime backend (`platform: onnxruntime_onnx`).

    On a GPU (`gpu=True`) the TensorRT execution accelerator is enabled with the precision of the ONNX file
    (`accelerator=None` or "cuda" keeps the plain CUDA EP). Same-shape batching only: the client pads to buckets.
    """
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
        mode = _TRT_PRECISION_MODE.get(precision, "FP32")
        text += (
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n"
            '      { name: "tensorrt"\n'
            f'        parameters {{ key: "precision_mode" value: "{mode}" }}\n'
            f'        parameters {{ key: "max_workspace_size_bytes" value: "{int(trt_workspace_bytes)}" }}\n'
            '        parameters { key: "trt_engine_cache_enable" value: "1" }\n'
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

    Consistent with engines built one optimization profile per spec length bucket, each profile covering batch
    1..max_batch_size and sequence up to its bucket (the last bucket is max_length): `max_batch_size` is the spec's,
    the sequence dim is -1 (bounded by the profiles), and every instance may use profiles 0..num_profiles-1
    (default: one per length bucket). The client pads each sequence to its bucket, so Triton batches same shapes.
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    n = (len(spec.length_buckets) or 1) if num_profiles is None else int(num_profiles)
    if n < 1:
        raise InputError(f"num_profiles must be >= 1, got {n}")
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
    instance_count: int = 1,
    providers: str = "cpu",
    **options,
) -> Path:
    """Write `repo/<name>/config.pbtxt` and `repo/<name>/1/...` for one model; other models in `repo` are kept.

    The ONNX file comes from `export_dir` (its guardrt.json, at `precision`) or `onnx_path`; the `tensorrt` flavor
    takes `plan_path` (or writes the config alone when the engine is built later, e.g. on a GPU host). Returns the
    model directory. The model directory is replaced as a whole (a rename), so a reader never sees it half written.
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
            text = config_text(spec, "onnxruntime", name=name, precision=precision, instance_count=instance_count,
                               gpu=providers != "cpu", **options)
    else:
        if plan_path is not None:
            plan = Path(plan_path)
            if not plan.is_file():
                raise ModelFilesError(f"TensorRT plan {plan} does not exist")
            files["model.plan"] = plan
        text = config_text(spec, "tensorrt", name=name, precision=precision, instance_count=instance_count, **options)

    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=repo.parent))
    try:
        (staging / "config.pbtxt").write_text(text, encoding="utf-8")
        version = staging / "1"
        version.mkdir()
        for rel, src in files.items():
            _place(src, version / rel)
        if flavor == "python":
            shutil.copy2(BACKEND_TEMPLATE, version / "model.py")
            # int8: the held-out check set and its re-check, which the backend runs at load on another int8 path.
            check = manifest.int8_check_file if manifest is not None and precision.startswith("int8") else None
            if check is not None and onnx_path is None:
                shutil.copy2(check, version / check.name)
                shutil.copy2(INT8_CHECKER, version / "guardrt_int8_path.py")
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


def default_configs() -> dict[str, str]:
    """{spec name: config text} for the committed repository (python flavor, CPU, one instance, fp32)."""
    from guardrt.runtime.specs import spec_names

    return {name: config_text(name, "python") for name in spec_names()}


def write_default_configs(repo: str | Path = "triton_repo") -> list[Path]:
    """(Re)write the committed configs (`default_configs()`), leaving any weights in place; after a spec change:
    `python -c "from guardrt.runtime.triton_repo import write_default_configs as w; w()"`."""
    written = []
    for name, text in default_configs().items():
        path = Path(repo) / name / "config.pbtxt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written

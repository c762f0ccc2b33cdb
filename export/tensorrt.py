"""Export directory (validated ONNX) -> TensorRT engines (`model.plan`, fp32 / fp16 / int8) + Triton `tensorrt_plan`.

`export_tensorrt(export_dir, spec, precisions, out=None, ...)` is what `guardrt export --target tensorrt` runs:

1. optimization profiles from the spec (`derive_profiles`): one per length bucket, batch 1..max_batch_size, sequence
   (previous bucket + 1)..bucket with opt at the bucket (the client pads to the bucket, so Triton sends exactly that);
2. precision settings (`engine_settings`): fp16 from the fp16 ONNX when the export has one (its constants are already
   clamped to the fp16 range; the fp32 graph's -3.4e38 mask constants would become -inf under the builder's FP16
   flag) with the FP16 builder flag, and normalisation / softmax / reduction layers and the rotary-angle chain
   constrained to fp32 (`fp32_layer_indices`, by TensorRT layer type and by the ONNX name scopes `*norm*` and
   `*rotary*`, mirroring the fp32 islands of the fp16 ONNX); int8 from the explicit-QDQ
   ONNX (no implicit calibration; other layers fp32, or fp16 with `int8_fp16=True`); fp32 with TF32 off;
3. build with Polygraphy's loaders (NetworkFromOnnxPath -> PostprocessNetwork -> CreateConfig(profiles, fp16/int8,
   precision_constraints, load_timing_cache) -> EngineFromNetwork(save_timing_cache) -> SaveEngine), one timing
   cache on disk per export directory, then check that the engine's profiles are exactly the derived ones;
4. each engine validated like any export (`validate_engine`): against ONNX Runtime fp32 on held-out synthetic inputs
   of the spec, through the real preprocessing and batching, gated by the spec's atol / min_agreement for that
   precision; an engine that misses its gate gets no Triton model unless forced;
5. `DIR/tensorrt/<precision>/model.plan` + `build.json` (TensorRT version, GPU, flags, profiles, fp32 layers,
   validation), and
   the Triton model `OUT/<name>/{config.pbtxt, 1/model.plan}` written by the repository writer
   (`guardrt.runtime.triton_repo.write_model`, flavor `tensorrt`). The first precision is served as `<name>` (the
   spec name by default), the others as `<name>-<precision>`.

Without an NVIDIA GPU or without the `gpu` extra nothing is built: the Triton configs are written (no plan) and
TensorRTUnavailableError says, in one line, what is missing and what was written instead.

Everything except `build_engine` and the GPU half of `export_tensorrt` is pure and unit-tested without a GPU.
tensorrt and polygraphy are imported lazily, inside the functions that need them.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from guardrt.runtime.errors import GuardrtError, InputError, ModelFilesError, require
from guardrt.runtime.specs import ModelSpec, get_spec
from guardrt.runtime.tensorrt import (
    GpuProbe,
    ShapeRange,
    TensorRTUnavailableError,
    engine_profiles,
    missing_gpu_modules,
    probe_gpu,
)

__all__ = [
    "TRT_PRECISIONS",
    "BucketProfile",
    "EngineGateError",
    "EngineSettings",
    "LayerInfo",
    "TensorRTExport",
    "TensorRTUnavailableError",
    "add_tensorrt_arguments",
    "apply_fp32_constraints",
    "build_engine",
    "check_engine_profiles",
    "derive_profiles",
    "engine_profiles",
    "engine_settings",
    "export_tensorrt",
    "fp32_layer_indices",
    "in_norm_scope",
    "in_rotary_scope",
    "non_standard_onnx_ops",
    "parity",
    "parse_trt_precisions",
    "polygraphy_profiles",
    "repo_model_names",
    "run_tensorrt_target",
    "triton_input_type",
    "unavailable_message",
    "validate_engine",
]

# Engine precisions guardrt builds. ("int8-dynamic" is a CPU-only ONNX Runtime format; TensorRT takes the QDQ graph.)
TRT_PRECISIONS = ("fp32", "fp16", "int8")


# -- optimization profiles (pure) -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BucketProfile:
    """One optimization profile: every input gets [batch, seq] with these (min, opt, max) ranges."""

    index: int
    bucket: int
    batch: tuple[int, int, int]
    seq: tuple[int, int, int]
    input_names: tuple[str, ...]

    def shapes(self) -> dict[str, ShapeRange]:
        """{input: ((min_b, min_s), (opt_b, opt_s), (max_b, max_s))} - the plain-data form of the profile."""
        rng = tuple((b, s) for b, s in zip(self.batch, self.seq))
        return {name: rng for name in self.input_names}  # type: ignore[misc]

    def contains(self, batch: int, seq: int) -> bool:
        return self.batch[0] <= batch <= self.batch[2] and self.seq[0] <= seq <= self.seq[2]


def default_opt_batch(spec: ModelSpec) -> int:
    """The batch TensorRT tunes kernels for: the largest preferred batch size the spec allows (what the dynamic
    batcher forms under load), else max_batch_size."""
    sizes = [s for s in spec.preferred_batch_sizes if 1 <= s <= spec.max_batch_size]
    return max(sizes) if sizes else spec.max_batch_size


def derive_profiles(spec: ModelSpec | str, opt_batch: int | None = None) -> list[BucketProfile]:
    """One profile per length bucket (the spec maximum when it has none): batch 1..max_batch_size (opt
    `opt_batch`), sequence (previous bucket + 1)..bucket with opt = bucket. Together the profiles cover every
    sequence length 1..max_length exactly once, and all share the batch range Triton's dynamic batcher uses."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    buckets = tuple(spec.length_buckets) or (spec.max_length,)
    if spec.max_batch_size < 1:
        raise InputError(f"spec {spec.name}: max_batch_size must be >= 1 for TensorRT profiles")
    if list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
        raise InputError(f"spec {spec.name}: length buckets must be ascending positive integers, got {buckets}")
    if buckets[-1] != spec.max_length:
        raise InputError(f"spec {spec.name}: the last length bucket must equal max_length {spec.max_length}")
    opt_b = default_opt_batch(spec) if opt_batch is None else int(opt_batch)
    if not 1 <= opt_b <= spec.max_batch_size:
        raise InputError(f"opt batch {opt_b} is outside 1..{spec.max_batch_size}")
    profiles, lo = [], 1
    for index, bucket in enumerate(buckets):
        profiles.append(BucketProfile(index, bucket, (1, opt_b, spec.max_batch_size), (lo, bucket, bucket),
                                      tuple(spec.input_names)))
        lo = bucket + 1
    return profiles


def polygraphy_profiles(profiles: Sequence[BucketProfile]) -> list:
    """The profiles as `polygraphy.backend.trt.Profile` objects (what CreateConfig(profiles=...) takes)."""
    require("polygraphy", "gpu")
    from polygraphy.backend.trt import Profile

    out = []
    for p in profiles:
        prof = Profile()
        for name, (lo, opt, hi) in p.shapes().items():
            prof.add(name, min=lo, opt=opt, max=hi)
        out.append(prof)
    return out


def check_engine_profiles(actual: Sequence[Mapping[str, ShapeRange]], expected: Sequence[BucketProfile]) -> list[str]:
    """Differences between an engine's profiles (`engine_profiles`) and the derived ones; [] when identical."""
    problems = []
    if len(actual) != len(expected):
        problems.append(f"engine has {len(actual)} optimization profiles, expected {len(expected)}")
    for got, want in zip(actual, expected):
        want_shapes = want.shapes()
        if set(got) != set(want_shapes):
            problems.append(f"profile {want.index}: inputs {sorted(got)} != {sorted(want_shapes)}")
            continue
        for name, rng in want_shapes.items():
            got_rng = tuple(tuple(int(d) for d in dims) for dims in got[name])
            if got_rng != rng:
                problems.append(f"profile {want.index} {name}: engine {got_rng} != derived {rng}")
    return problems


# -- precision settings (pure) --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineSettings:
    """How one engine is built: which ONNX of the export directory, which builder flags, which constraints."""

    precision: str  # the engine's precision: fp32 | fp16 | int8
    source: str  # the export directory's ONNX it is built from: fp32 | fp16 | int8 (QDQ)
    fp16: bool
    int8: bool
    tf32: bool = False
    fp32_islands: bool = False  # constrain normalisation / softmax / reductions to fp32
    precision_constraints: str | None = None  # "prefer" | "obey" | None (Polygraphy's CreateConfig values)
    # Strongly typed network: TensorRT runs every tensor in the ONNX graph's own type (the fp16 ONNX exactly as
    # ONNX Runtime validated it); no precision flags or layer constraints then (TensorRT rejects them).
    strongly_typed: bool = False

    def create_config_kwargs(self, profiles: Sequence[Any], timing_cache: str | Path | None) -> dict[str, Any]:
        """Keyword arguments for `polygraphy.backend.trt.CreateConfig` (no TensorRT object in them)."""
        return {
            "fp16": self.fp16,
            "int8": self.int8,
            "tf32": self.tf32,
            "profiles": list(profiles),
            "precision_constraints": self.precision_constraints,
            "load_timing_cache": str(timing_cache) if timing_cache is not None else None,
        }


def parse_trt_precisions(value: str | Sequence[str]) -> tuple[str, ...]:
    """'fp16,int8' or a sequence -> ('fp16', 'int8'), checked, order kept, duplicates dropped."""
    items = [p.strip() for p in value.split(",")] if isinstance(value, str) else [str(p).strip() for p in value]
    items = [p for p in items if p]
    if not items:
        raise InputError(f"no TensorRT precision given; choose from {', '.join(TRT_PRECISIONS)}")
    bad = [p for p in items if p not in TRT_PRECISIONS]
    if bad:
        raise InputError(f"TensorRT precision(s) {', '.join(bad)} not supported; choose from {', '.join(TRT_PRECISIONS)}"
                         + (" (int8 engines are built from the QDQ int8 ONNX)" if "int8-dynamic" in bad else ""))
    return tuple(dict.fromkeys(items))


def engine_settings(
    precision: str,
    available: Iterable[str],
    *,
    int8_fp16: bool = False,
    precision_constraints: str = "prefer",
    tf32: bool = False,
    strongly_typed: bool = False,
) -> EngineSettings:
    """Settings for a `precision` engine given the ONNX precisions an export directory has.

    `strongly_typed`: build from the graph of that precision with TensorRT's strongly typed mode (fp16 needs the fp16
    ONNX; int8 keeps the QDQ graph's fp32 elsewhere); the types are the ONNX graph's, no flags, no islands.

    fp16: from the fp16 ONNX when present (else the fp32 one), FP16 flag, fp32 islands. int8: the QDQ int8 ONNX is
    required (explicit quantization; TensorRT 10 needs no calibrator for it), INT8 flag; with `int8_fp16` the
    non-quantized layers may run in fp16 (then with fp32 islands). fp32: the fp32 ONNX, TF32 off unless asked.
    `precision_constraints` "prefer" lets TensorRT fall back when a layer has no fp32 kernel; "obey" fails the build.
    """
    have = set(available)
    if precision_constraints not in ("prefer", "obey"):
        raise InputError(f"precision_constraints must be 'prefer' or 'obey', got {precision_constraints!r}")
    if strongly_typed:
        if precision not in TRT_PRECISIONS:
            raise InputError(f"TensorRT precision {precision!r} not supported; choose from {', '.join(TRT_PRECISIONS)}")
        _need(precision, have, precision)
        return EngineSettings(precision, precision, fp16=False, int8=False, tf32=tf32, strongly_typed=True)
    if precision == "fp32":
        _need("fp32", have, precision)
        return EngineSettings("fp32", "fp32", fp16=False, int8=False, tf32=tf32)
    if precision == "fp16":
        source = "fp16" if "fp16" in have else "fp32"
        _need(source, have, precision)
        return EngineSettings("fp16", source, fp16=True, int8=False, tf32=tf32, fp32_islands=True,
                              precision_constraints=precision_constraints)
    if precision == "int8":
        _need("int8", have, precision)
        return EngineSettings("int8", "int8", fp16=bool(int8_fp16), int8=True, tf32=tf32,
                              fp32_islands=bool(int8_fp16),
                              precision_constraints=precision_constraints if int8_fp16 else None)
    raise InputError(f"TensorRT precision {precision!r} not supported; choose from {', '.join(TRT_PRECISIONS)}")


def _need(source: str, have: set[str], precision: str) -> None:
    if source not in have:
        what = "the explicit-QDQ int8 ONNX" if source == "int8" else f"the {source} ONNX"
        raise ModelFilesError(
            f"a {precision} TensorRT engine needs {what}, which the export directory lacks "
            f"(it has: {', '.join(sorted(have)) or 'none'}); re-export with --precision {source}"
        )


# -- fp32 islands (pure selection; the application takes the tensorrt module as an argument) ------------------------
@dataclass(frozen=True)
class LayerInfo:
    """What the selection needs from a TensorRT layer: its name, `LayerType` name and output `DataType` names."""

    name: str
    type: str
    output_dtypes: tuple[str, ...] = field(default_factory=tuple)


# Layer types whose fp16 arithmetic overflows or loses the result in these models: layer/RMS normalisation
# (variance of activations in the thousands), softmax (exp), reductions (sums over up to 4,096 positions).
ALWAYS_FP32_TYPES = frozenset({"NORMALIZATION", "SOFTMAX", "REDUCE"})
# Inside a normalisation's ONNX name scope (RMSNorm is exported decomposed: Pow, ReduceMean, Add, Sqrt, Div, Mul),
# these compute layers are kept in fp32 as well.
NORM_SCOPE_TYPES = frozenset({"ELEMENTWISE", "UNARY", "ACTIVATION"})
# Inside the rotary-embedding scope (Qwen3's `rotary_emb`: inv_freq x positions -> cos / sin), angles reach 4,096 rad
# where fp16's spacing is 4: the whole chain up to cos/sin stays fp32, data movement included (a Concat or
# Transpose stored in fp16 would round the angles just the same). The fp16 ONNX keeps the same island.
ROTARY_SCOPE_TYPES = NORM_SCOPE_TYPES | frozenset({"MATRIX_MULTIPLY", "CONCATENATION", "SHUFFLE", "SLICE", "GATHER"})
# Constants, casts, shape layers, Q/DQ are never touched.
FLOAT_DTYPES = frozenset({"FLOAT", "HALF", "BF16"})
_NORM_SCOPE = re.compile(r"norm", re.IGNORECASE)
_ROTARY_SCOPE = re.compile(r"rotary", re.IGNORECASE)


def _in_scope(layer_name: str, pattern: re.Pattern) -> bool:
    parts = [p for p in re.split(r"[/:]", layer_name) if p]
    return any(pattern.search(p) for p in parts[:-1])


def in_norm_scope(layer_name: str) -> bool:
    """True when a scope of the layer's ONNX-derived name (not the op name itself) is a normalisation:
    `/model/layers.0/input_layernorm/Pow`, `/model/norm/Mul_1`, `.../self_attn/q_norm/ReduceMean`,
    `/roberta/encoder/layer.0/output/LayerNorm/...`."""
    return _in_scope(layer_name, _NORM_SCOPE)


def in_rotary_scope(layer_name: str) -> bool:
    """True for layers of the rotary-embedding module (`/model/rotary_emb/Cos`, `/model/rotary_emb/MatMul`...)."""
    return _in_scope(layer_name, _ROTARY_SCOPE)


def fp32_layer_indices(layers: Sequence[LayerInfo]) -> list[int]:
    """Indices of the layers to run in fp32: every normalisation, softmax and reduction; elementwise / unary /
    activation layers inside a normalisation scope; the rotary-embedding chain - only layers whose outputs are all
    floating point (int index arithmetic, shape layers and boolean masks are left alone)."""
    picked = []
    for index, layer in enumerate(layers):
        if not layer.output_dtypes or not all(d in FLOAT_DTYPES for d in layer.output_dtypes):
            continue
        if (layer.type in ALWAYS_FP32_TYPES
                or (layer.type in NORM_SCOPE_TYPES and in_norm_scope(layer.name))
                or (layer.type in ROTARY_SCOPE_TYPES and in_rotary_scope(layer.name))):
            picked.append(index)
    return picked


def apply_fp32_constraints(network, trt) -> list[str]:
    """Set `layer.precision` and every floating output type to fp32 on the selected layers of a parsed
    INetworkDefinition (takes effect with the OBEY/PREFER_PRECISION_CONSTRAINTS builder flag). Returns their names."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    infos = [
        LayerInfo(layer.name, layer.type.name,
                  tuple(layer.get_output(j).dtype.name for j in range(layer.num_outputs)))
        for layer in layers
    ]
    names = []
    for index in fp32_layer_indices(infos):
        layer = layers[index]
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype.name in FLOAT_DTYPES:
                layer.set_output_type(j, trt.float32)
        names.append(layer.name)
    return names


# -- source graph checks (needs onnx, not TensorRT) -----------------------------------------------------------------
def non_standard_onnx_ops(onnx_path: str | Path) -> dict[str, int]:
    """{"domain::Op": count} of nodes outside the standard ONNX domains (e.g. ONNX Runtime's com.microsoft fused
    operators: Attention, GroupQueryAttention, SkipLayerNormalization...), which TensorRT's ONNX parser rejects."""
    onnx = require("onnx", "export")
    model = onnx.load(str(onnx_path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            key = f"{node.domain}::{node.op_type}"
            counts[key] = counts.get(key, 0) + 1
    return counts


# -- the build (needs a GPU, tensorrt and polygraphy) ---------------------------------------------------------------
def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    settings: EngineSettings,
    profiles: Sequence[BucketProfile],
    *,
    timing_cache: str | Path | None = None,
    workspace_bytes: int | None = None,
    builder_optimization_level: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build and save one engine with Polygraphy's loaders; returns the build record (also what build.json holds).

    The plan is written atomically (temp file + rename) and only after its optimization profiles were read back
    from the engine and found identical to `profiles`.
    """
    trt = require("tensorrt", "gpu")
    require("polygraphy", "gpu")
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineFromNetwork,
        NetworkFromOnnxPath,
        PostprocessNetwork,
        SaveEngine,
    )

    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    fp32_layers: list[str] = []
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=settings.strongly_typed or None)
    if settings.fp32_islands:
        def keep_fp32(network):
            fp32_layers.extend(apply_fp32_constraints(network, trt))

        network = PostprocessNetwork(network, keep_fp32, name="guardrt-fp32-islands")
    kwargs = settings.create_config_kwargs(polygraphy_profiles(profiles), timing_cache)
    if workspace_bytes:
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(workspace_bytes)}
    if builder_optimization_level is not None:
        kwargs["builder_optimization_level"] = int(builder_optimization_level)
    config = CreateConfig(**kwargs)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_name(plan_path.name + ".tmp")
    if timing_cache is not None:
        Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"building {settings.precision} engine from {onnx_path} ({len(profiles)} profiles)")
    t0 = time.perf_counter()
    try:
        engine = SaveEngine(
            EngineFromNetwork(network, config=config,
                              save_timing_cache=str(timing_cache) if timing_cache is not None else None),
            str(tmp),
        )()
    except Exception as exc:  # Polygraphy raises PolygraphyException after logging TensorRT's own errors
        tmp.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFilesError(f"TensorRT could not build the {settings.precision} engine from {onnx_path}: {first} "
                              "(TensorRT's log is above)") from None
    seconds = time.perf_counter() - t0
    problems = check_engine_profiles(engine_profiles(engine, trt), profiles)
    if problems:
        tmp.unlink(missing_ok=True)
        raise ModelFilesError(f"engine built from {onnx_path} does not have the derived profiles: {'; '.join(problems)}")
    io_dtypes = {engine.get_tensor_name(i): engine.get_tensor_dtype(engine.get_tensor_name(i)).name
                 for i in range(engine.num_io_tensors)}
    os.replace(tmp, plan_path)
    return {
        "io_dtypes": io_dtypes,
        "precision": settings.precision,
        "settings": asdict(settings),
        "source_onnx": str(onnx_path),
        "plan": str(plan_path),
        "plan_bytes": plan_path.stat().st_size,
        "tensorrt_version": getattr(trt, "__version__", "?"),
        "polygraphy_version": _version("polygraphy"),
        "profiles": [{"index": p.index, "bucket": p.bucket, "batch": list(p.batch), "seq": list(p.seq)}
                     for p in profiles],
        "fp32_layers": len(fp32_layers),
        "fp32_layer_names": fp32_layers[:200],
        "workspace_bytes": workspace_bytes,
        "builder_optimization_level": builder_optimization_level,
        "build_seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def _gpu_facts(probe: GpuProbe) -> dict[str, str]:
    """GPU name and compute capability from nvidia-smi (best effort; the plan only runs on that architecture)."""
    import shutil
    import subprocess

    facts = {"gpu": probe.names[0] if probe.names else probe.detail}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
            if out:
                parts = [p.strip() for p in out[0].split(",")]
                facts.update(gpu=parts[0], compute_capability=parts[1] if len(parts) > 1 else "?",
                             driver=parts[2] if len(parts) > 2 else "?")
        except (OSError, subprocess.SubprocessError):
            pass
    return facts


# -- validation of a built engine (the exporter's rule: nothing is served that missed its gate) ---------------------
class EngineGateError(GuardrtError):
    """An engine missed its spec's gate against ONNX Runtime fp32; its Triton model was not written (see build.json)."""


def parity(spec: ModelSpec, reference: Any, logits: Any) -> dict[str, Any]:
    """max |Δlogit|, decision agreement (the card's decision rule) and finiteness of `logits` against `reference`."""
    import numpy as np

    from guardrt.runtime.postprocess import postprocess

    reference, logits = np.asarray(reference, np.float32), np.asarray(logits, np.float32)
    finite = bool(np.isfinite(logits).all())
    ref = [r["label"] for r in postprocess(spec, reference)]
    got = [r["label"] for r in postprocess(spec, np.nan_to_num(logits))]
    return {"max_abs_diff": float(np.abs(reference - logits).max()) if finite else float("inf"),
            "agreement": float(np.mean(np.array(ref) == np.array(got))) if ref else 1.0,
            "finite": finite, "n": int(len(ref))}


def validate_engine(
    plan: str | Path,
    export_dir: str | Path,
    spec: ModelSpec,
    precision: str,
    *,
    n: int = 64,
    seed: int | None = None,
    runner_factory: Callable[[Path], Any] | None = None,
) -> dict[str, Any]:
    """Run the engine and ONNX Runtime fp32 (CPU, the exporter's validated reference) on `n` held-out synthetic
    inputs of the spec, through the real preprocessing and batching; compare against the spec's gate for
    `precision` (max |Δlogit| <= atol, agreement >= min_agreement). Returns the result with `passed`."""
    from guardrt.export.synthetic import SPLIT_SEEDS, synthetic_payloads
    from guardrt.runtime.onnxrt import InProcessClassifier
    from guardrt.runtime.tensorrt import TensorRTRunner

    factory = runner_factory or TensorRTRunner
    reference = InProcessClassifier.from_export_dir(export_dir, "fp32")
    try:
        payloads = synthetic_payloads(spec.name, n, seed=SPLIT_SEEDS["heldout"] if seed is None else seed)
        seqs = reference.encode(payloads)
        want = reference.logits_for_ids(seqs)
        with factory(Path(plan)) as runner:
            got = InProcessClassifier(spec, runner, reference.preprocessor).logits_for_ids(seqs)
    finally:
        reference.close()
    res = parity(spec, want, got)
    atol, gate = spec.atol.get(precision, float("inf")), spec.min_agreement.get(precision, 0.0)
    res.update(reference="onnxruntime fp32 (CPU)", atol=atol, min_agreement=gate,
               passed=res["finite"] and res["max_abs_diff"] <= atol and res["agreement"] >= gate)
    return res


# -- the whole step -------------------------------------------------------------------------------------------------
@dataclass
class TensorRTExport:
    """What `export_tensorrt` produced: engines per precision, the Triton model directories, build records."""

    export_dir: Path
    repo: Path
    engines: dict[str, Path] = field(default_factory=dict)
    models: dict[str, Path] = field(default_factory=dict)  # precision -> repo/<name>
    builds: dict[str, dict] = field(default_factory=dict)


# TensorRT DataType name of the engine's ids/mask inputs -> the Triton config data_type that matches it.
_TRITON_INPUT_TYPES = {"INT64": "TYPE_INT64", "INT32": "TYPE_INT32"}


def triton_input_type(io_dtypes: Mapping[str, str], spec: ModelSpec) -> str:
    """The config `data_type` for the inputs of an engine with these I/O types (TensorRT 10 keeps the graph's int64;
    an engine with int32 inputs gets TYPE_INT32 so Triton loads it). ModelFilesError for anything else, and when
    the logits are not float32 (the config and every client expect TYPE_FP32)."""
    kinds = {io_dtypes.get(n) for n in spec.input_names}
    if len(kinds) != 1 or next(iter(kinds)) not in _TRITON_INPUT_TYPES:
        raise ModelFilesError(f"engine inputs have types {io_dtypes}; expected INT64 (or INT32) ids and mask")
    for name in spec.output_names:
        if io_dtypes.get(name) != "FLOAT":
            raise ModelFilesError(f"engine output {name!r} is {io_dtypes.get(name)}, expected FLOAT (float32 logits)")
    return _TRITON_INPUT_TYPES[next(iter(kinds))]


def repo_model_names(base: str, precisions: Sequence[str]) -> dict[str, str]:
    """{precision: Triton model name}: the first precision is served as `base`, the others as `base-<precision>`."""
    return {p: base if i == 0 else f"{base}-{p}" for i, p in enumerate(precisions)}


def unavailable_message(reasons: Sequence[str], onnx_files: Mapping[str, Path], configs: Sequence[Path]) -> str:
    """The one line a user sees when TensorRT cannot run here: what is missing, what was written instead."""
    onnx = ", ".join(f"{p} {path}" for p, path in onnx_files.items()) or "none"
    cfg = ", ".join(str(c) for c in configs) or "none"
    return (f"cannot build TensorRT engines here: {'; '.join(reasons)}. Wrote instead: Triton tensorrt_plan "
            f"config(s) {cfg} (no model.plan yet); the validated ONNX models stay in place ({onnx}). Build the plans "
            "on a GPU host with the same command (see the README section GPU deployment)")


def export_tensorrt(
    export_dir: str | Path,
    spec: ModelSpec | str | None,
    precisions: str | Sequence[str],
    out: str | Path | None = None,
    *,
    name: str | None = None,
    timing_cache: str | Path | None = None,
    opt_batch: int | None = None,
    int8_fp16: bool = False,
    precision_constraints: str = "prefer",
    strongly_typed: bool = False,
    workspace_bytes: int | None = None,
    builder_optimization_level: int | None = None,
    instance_count: int = 1,
    validate: int = 64,
    force: bool = False,
    probe: Callable[[], GpuProbe] | None = None,
    find_missing: Callable[[], list[str]] | None = None,
    log: Callable[[str], None] | None = None,
) -> TensorRTExport:
    """Build TensorRT engines for `precisions` from the export directory and write their Triton models into `out`
    (default: `export_dir/triton_repo`). See the module docstring. Each engine is validated against ONNX Runtime
    fp32 on `validate` held-out inputs (0: no validation); one that misses its spec's gate gets no Triton model
    (EngineGateError at the end, after the other precisions) unless `force`. Raises TensorRTUnavailableError (after
    writing the configs) without a GPU or the `gpu` extra; ModelFilesError / InputError for bad inputs, before
    anything is built."""
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.triton_repo import write_model

    manifest = load_export_dir(export_dir, spec=None if spec is None else (spec if isinstance(spec, str) else spec.name))
    spec = get_spec(manifest.spec) if spec is None else (get_spec(spec) if isinstance(spec, str) else spec)
    wanted = parse_trt_precisions(precisions)
    settings = {p: engine_settings(p, manifest.precisions, int8_fp16=int8_fp16,
                                   precision_constraints=precision_constraints, strongly_typed=strongly_typed)
                for p in wanted}
    profiles = derive_profiles(spec, opt_batch)
    sources = {p: manifest.model_path(s.source) for p, s in settings.items()}
    # TensorRT parses standard ONNX only: an export made with ONNX Runtime's fused operators cannot be built.
    graph_pass = manifest.raw.get("graph_pass")
    for p, path in sources.items():
        exotic = non_standard_onnx_ops(path)
        if exotic:
            ops = ", ".join(f"{k} x{v}" for k, v in sorted(exotic.items()))
            raise ModelFilesError(
                f"{path} contains operators TensorRT's ONNX parser does not support ({ops}"
                + (f"; graph pass {graph_pass}" if graph_pass else "")
                + "); export without the ONNX Runtime graph pass for TensorRT")
    repo = Path(out) if out is not None else manifest.path / "triton_repo"
    names = repo_model_names(name or spec.name, wanted)
    result = TensorRTExport(export_dir=manifest.path, repo=repo)

    reasons = []
    gpu = (probe or probe_gpu)()
    if not gpu.found:
        reasons.append(gpu.detail)
    missing = (find_missing or missing_gpu_modules)()
    if missing:
        reasons.append(f"{', '.join(missing)} not installed (pip install 'guardrt[gpu]')")
    if reasons:
        configs = []
        for p in wanted:
            model_dir = write_model(repo, spec=spec, export_dir=manifest.path, flavor="tensorrt", precision=p,
                                    name=names[p], instance_count=instance_count, num_profiles=len(profiles))
            result.models[p] = model_dir
            configs.append(model_dir / "config.pbtxt")
        raise TensorRTUnavailableError(unavailable_message(reasons, sources, configs))

    facts = _gpu_facts(gpu)
    engine_root = manifest.path / "tensorrt"
    cache = Path(timing_cache) if timing_cache is not None else engine_root / "timing.cache"
    failures = []
    for p in wanted:
        plan = engine_root / p / "model.plan"
        record = build_engine(sources[p], plan, settings[p], profiles, timing_cache=cache,
                              workspace_bytes=workspace_bytes, builder_optimization_level=builder_optimization_level,
                              log=log)
        record.update(facts, spec=spec.name, timing_cache=str(cache))
        if validate:
            res = record["validation"] = validate_engine(plan, manifest.path, spec, p, n=int(validate))
            if log:
                log(f"{spec.name} TensorRT {p} vs ONNX Runtime fp32 on {res['n']} held-out inputs: max|Δlogit| "
                    f"{res['max_abs_diff']:.3g} (gate {res['atol']:g}), agreement {res['agreement']:.3f} "
                    f"(gate {res['min_agreement']:g}): {'ok' if res['passed'] else 'FAILED'}")
        (plan.parent / "build.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        result.engines[p], result.builds[p] = plan, record
        if validate and not record["validation"]["passed"] and not force:
            v = record["validation"]
            failures.append(f"{p}: max |Δlogit| {v['max_abs_diff']:.3g} (gate {v['atol']:g}), agreement "
                            f"{v['agreement']:.3f} (gate {v['min_agreement']:g})")
            continue
        result.models[p] = write_model(repo, spec=spec, export_dir=manifest.path, flavor="tensorrt", precision=p,
                                       plan_path=plan, name=names[p], instance_count=instance_count,
                                       num_profiles=len(profiles),
                                       input_data_type=triton_input_type(record["io_dtypes"], spec))
        if log:
            log(f"{spec.name} {p}: {plan} ({record['plan_bytes'] / 1e6:.1f} MB, {record['build_seconds']} s, "
                f"{record['fp32_layers']} layers kept fp32) -> Triton model {result.models[p]}")
    if failures:
        raise EngineGateError(f"{spec.name} TensorRT engines missed their gate against ONNX Runtime fp32: "
                              f"{' | '.join(failures)}; no Triton model written for them (engines and details in "
                              f"{engine_root}; --force keeps them)")
    return result



# -- CLI glue for `guardrt export --target tensorrt` (the export command owns --target; these are the engine options)
def add_tensorrt_arguments(p) -> None:
    """Add the TensorRT options to the `guardrt export` parser (plain add_argument: every flag gets its env twin)."""
    p.add_argument("--repo", help="--target tensorrt: Triton model repository for the engines (default: OUT/triton_repo)")
    p.add_argument("--trt-opt-batch", type=int,
                   help="--target tensorrt: batch size TensorRT tunes for (default: the largest preferred batch size)")
    p.add_argument("--trt-int8-fp16", action="store_true",
                   help="--target tensorrt: let int8 engines run non-quantized layers in fp16 (default: fp32)")
    p.add_argument("--trt-precision-constraints", default="prefer", choices=["prefer", "obey"],
                   help="--target tensorrt: how strictly fp32 layers stay fp32 in fp16 engines (default: prefer)")
    p.add_argument("--trt-strongly-typed", action="store_true",
                   help="--target tensorrt: strongly typed engines (each tensor in its ONNX type; no fp32-layer "
                        "heuristics; fp16 needs the fp16 ONNX)")
    p.add_argument("--trt-workspace-gb", type=float, help="--target tensorrt: builder workspace limit in GiB")


def run_tensorrt_target(args, export_dir: str | Path, exported: Sequence[str] = (),
                        log: Callable[[str], None] | None = print) -> int:
    """Run `export_tensorrt` for a finished ONNX export with the options of `add_tensorrt_arguments`; the engine
    precisions are the exported ones TensorRT builds (fp32, fp16, int8). Returns 0; raises TensorRTUnavailableError
    (one line, after writing the configs) where TensorRT cannot run."""
    wanted = getattr(args, "trt_precision", None) or [p for p in exported if p in TRT_PRECISIONS]
    if not wanted:
        raise InputError(f"--target tensorrt needs an fp32, fp16 or int8 export (exported: "
                         f"{', '.join(exported) or 'none'}); add one to --precision")
    gb = getattr(args, "trt_workspace_gb", None)
    result = export_tensorrt(
        export_dir, getattr(args, "spec", None), wanted, out=getattr(args, "repo", None),
        opt_batch=getattr(args, "trt_opt_batch", None), int8_fp16=bool(getattr(args, "trt_int8_fp16", False)),
        precision_constraints=getattr(args, "trt_precision_constraints", None) or "prefer",
        strongly_typed=bool(getattr(args, "trt_strongly_typed", False)),
        force=bool(getattr(args, "force", False)),
        workspace_bytes=int(gb * (1 << 30)) if gb else None, log=log,
    )
    if log:
        for p, model in result.models.items():
            log(f"TensorRT {p}: {result.engines[p]} -> Triton model {model}")
    return 0

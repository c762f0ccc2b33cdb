"""Precision of a TensorRT engine: which ONNX of the export it is built from, the builder flags, and the fp32 pins.

* fp16: from the fp16 ONNX when present (its constants are already clamped to the fp16 range; the fp32 graph's
  -3.4e38 mask constants would become -inf under the builder's FP16 flag), else the fp32 one; FP16 flag; layers
  pinned to fp32 by the `fp32_pins` policy (below), with PREFER (or OBEY) precision constraints.
* int8: the explicit-QDQ int8 ONNX (no calibrator: TensorRT 10 reads the scales from the graph); other layers fp32,
  or fp16 with `int8_fp16` (then with the same pins).
* fp32: the fp32 ONNX, TF32 off.
* strongly typed: every tensor in the ONNX graph's own type, no flags, no pins (TensorRT rejects them then).

fp32 pin policies (`fp32_pins`), because TensorRT's default weakly typed networks treat ONNX types as hints only:

* ``norm`` (default): normalisation layers, the layers inside a normalisation's ONNX name scope (Qwen3's decomposed
  RMSNorm: Pow -> ReduceMean -> Add -> Sqrt -> Div, whose x**2 overflows fp16 past |x| = 256, and the q/k norms),
  and the rotary-angle chain (positions x inv_freq reach 4,096 rad, where fp16's spacing is 4). Attention softmax
  is left to TensorRT, so it can fuse attention (a pinned SOFTMAX may stop the fusion, and a 16 x 4,096 Qwen3 batch
  would then hold 16 x 16 x 4,096 x 4,096 fp32 scores, ~17 GB).
* ``broad``: ``norm`` plus every SOFTMAX and REDUCE layer (what guardrt pinned before; the fp16 ONNX keeps its
  softmax in fp32 too).
* ``none``: no pins; the FP16 flag alone.

Which one is the default is decided by measurement: `make gpu-check` builds the fp16 engine with each policy and with
`--trt-strongly-typed` and applies `benchmarks/gpu_check.py:recommend_fp32_pins` (the rule is in the README, "GPU
deployment"). `DEFAULT_FP32_PINS` follows what the first GPU run recommends.

Everything here is pure except `apply_fp32_constraints`, which takes the tensorrt module as an argument.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrt.runtime.errors import InputError, ModelFilesError
from guardrt.runtime.ort_providers import refuse_for_tensorrt

__all__ = [
    "DEFAULT_FP32_PINS",
    "FP16_VARIANTS",
    "FP32_PIN_POLICIES",
    "TRT_PRECISIONS",
    "EngineSettings",
    "LayerInfo",
    "apply_fp32_constraints",
    "engine_settings",
    "fp32_layer_indices",
    "in_norm_scope",
    "in_rotary_scope",
    "parse_trt_precisions",
    "recommend_fp32_pins",
]

# Engine precisions guardrt builds. ("int8-dynamic" is a CPU-only ONNX Runtime format; TensorRT takes the QDQ graph.)
TRT_PRECISIONS = ("fp32", "fp16", "int8")
FP32_PIN_POLICIES = ("norm", "broad", "none")
# Not yet measured on a GPU: the narrow pins are the default until `make gpu-check` recommends otherwise.
DEFAULT_FP32_PINS = "norm"


@dataclass(frozen=True)
class EngineSettings:
    """How one engine is built: which ONNX of the export directory, which builder flags, which constraints."""

    precision: str  # the engine's precision: fp32 | fp16 | int8
    source: str  # the export directory's ONNX it is built from: fp32 | fp16 | int8 (QDQ)
    fp16: bool
    int8: bool
    tf32: bool = False
    fp32_islands: bool = False  # pin the `fp32_pins` layers to fp32
    precision_constraints: str | None = None  # "prefer" | "obey" | None (Polygraphy's CreateConfig values)
    # Strongly typed network: TensorRT runs every tensor in the ONNX graph's own type (the fp16 ONNX exactly as
    # ONNX Runtime validated it); no precision flags or layer constraints then (TensorRT rejects them).
    strongly_typed: bool = False
    fp32_pins: str = DEFAULT_FP32_PINS  # the pin policy applied when fp32_islands

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
    if "int8-dynamic" in items:
        refuse_for_tensorrt("int8-dynamic")
    bad = [p for p in items if p not in TRT_PRECISIONS]
    if bad:
        raise InputError(f"TensorRT precision(s) {', '.join(bad)} not supported; choose from {', '.join(TRT_PRECISIONS)}")
    return tuple(dict.fromkeys(items))


def engine_settings(
    precision: str,
    available: Iterable[str],
    *,
    int8_fp16: bool = False,
    precision_constraints: str = "prefer",
    tf32: bool = False,
    strongly_typed: bool = False,
    fp32_pins: str = DEFAULT_FP32_PINS,
) -> EngineSettings:
    """Settings for a `precision` engine given the ONNX precisions an export directory has.

    `strongly_typed`: build from the graph of that precision with TensorRT's strongly typed mode (fp16 needs the fp16
    ONNX; int8 keeps the QDQ graph's fp32 elsewhere); the types are the ONNX graph's, no flags, no pins.

    fp16: from the fp16 ONNX when present (else the fp32 one), FP16 flag, the `fp32_pins` policy. int8: the QDQ int8
    ONNX is required (explicit quantization; TensorRT 10 needs no calibrator for it), INT8 flag; with `int8_fp16`
    the non-quantized layers may run in fp16 (then with the pins). fp32: the fp32 ONNX, TF32 off unless asked.
    `precision_constraints` "prefer" lets TensorRT fall back when a layer has no fp32 kernel; "obey" fails the build.
    """
    have = set(available)
    if precision_constraints not in ("prefer", "obey"):
        raise InputError(f"precision_constraints must be 'prefer' or 'obey', got {precision_constraints!r}")
    if fp32_pins not in FP32_PIN_POLICIES:
        raise InputError(f"fp32 pins must be one of {', '.join(FP32_PIN_POLICIES)}, got {fp32_pins!r}")
    refuse_for_tensorrt(precision)
    if strongly_typed:
        if precision not in TRT_PRECISIONS:
            raise InputError(f"TensorRT precision {precision!r} not supported; choose from {', '.join(TRT_PRECISIONS)}")
        _need(precision, have, precision)
        return EngineSettings(precision, precision, fp16=False, int8=False, tf32=tf32, strongly_typed=True)
    pinned = fp32_pins != "none"
    if precision == "fp32":
        _need("fp32", have, precision)
        return EngineSettings("fp32", "fp32", fp16=False, int8=False, tf32=tf32)
    if precision == "fp16":
        source = "fp16" if "fp16" in have else "fp32"
        _need(source, have, precision)
        return EngineSettings("fp16", source, fp16=True, int8=False, tf32=tf32, fp32_islands=pinned,
                              precision_constraints=precision_constraints if pinned else None, fp32_pins=fp32_pins)
    if precision == "int8":
        _need("int8", have, precision)
        islands = bool(int8_fp16) and pinned
        return EngineSettings("int8", "int8", fp16=bool(int8_fp16), int8=True, tf32=tf32, fp32_islands=islands,
                              precision_constraints=precision_constraints if islands else None, fp32_pins=fp32_pins)
    raise InputError(f"TensorRT precision {precision!r} not supported; choose from {', '.join(TRT_PRECISIONS)}")


def _need(source: str, have: set[str], precision: str) -> None:
    if source not in have:
        what = "the explicit-QDQ int8 ONNX" if source == "int8" else f"the {source} ONNX"
        raise ModelFilesError(
            f"a {precision} TensorRT engine needs {what}, which the export directory lacks "
            f"(it has: {', '.join(sorted(have)) or 'none'}); re-export with --precision {source}"
        )


# -- fp32 pins (pure selection; the application takes the tensorrt module as an argument) ---------------------------
@dataclass(frozen=True)
class LayerInfo:
    """What the selection needs from a TensorRT layer: its name, `LayerType` name and output `DataType` names."""

    name: str
    type: str
    output_dtypes: tuple[str, ...] = field(default_factory=tuple)


# Normalisation layers (LayerNormalization parsed as INormalizationLayer): mean/variance over the hidden size.
NORM_TYPES = frozenset({"NORMALIZATION"})
# "broad" only: every softmax (exp-sum over up to 4,096 keys) and reduction, wherever it is.
BROAD_TYPES = frozenset({"SOFTMAX", "REDUCE"})
# Inside a normalisation's ONNX name scope (RMSNorm is exported decomposed: Pow, ReduceMean, Add, Sqrt, Div, Mul),
# these compute layers are pinned: the variance reduction and the elementwise chain around it.
NORM_SCOPE_TYPES = frozenset({"ELEMENTWISE", "UNARY", "ACTIVATION", "REDUCE"})
# Inside the rotary-embedding scope (Qwen3's `rotary_emb`: inv_freq x positions -> cos / sin), angles reach 4,096 rad
# where fp16's spacing is 4: the whole chain up to cos/sin stays fp32, data movement included (a Concat or
# Transpose stored in fp16 would round the angles just the same). The fp16 ONNX keeps the same island.
ROTARY_SCOPE_TYPES = frozenset({"ELEMENTWISE", "UNARY", "ACTIVATION", "MATRIX_MULTIPLY", "CONCATENATION", "SHUFFLE",
                                "SLICE", "GATHER"})
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


def fp32_layer_indices(layers: Sequence[LayerInfo], policy: str = DEFAULT_FP32_PINS) -> list[int]:
    """Indices of the layers the `policy` pins to fp32 (see the module docstring); only layers whose outputs are all
    floating point (int index arithmetic, shape layers and boolean masks are left alone). "none": []."""
    if policy not in FP32_PIN_POLICIES:
        raise InputError(f"fp32 pins must be one of {', '.join(FP32_PIN_POLICIES)}, got {policy!r}")
    if policy == "none":
        return []
    always = NORM_TYPES | (BROAD_TYPES if policy == "broad" else frozenset())
    picked = []
    for index, layer in enumerate(layers):
        if not layer.output_dtypes or not all(d in FLOAT_DTYPES for d in layer.output_dtypes):
            continue
        if (layer.type in always
                or (layer.type in NORM_SCOPE_TYPES and in_norm_scope(layer.name))
                or (layer.type in ROTARY_SCOPE_TYPES and in_rotary_scope(layer.name))):
            picked.append(index)
    return picked


def apply_fp32_constraints(network, trt, policy: str = DEFAULT_FP32_PINS) -> list[str]:
    """Set `layer.precision` and every floating output type to fp32 on the layers `policy` pins in a parsed
    INetworkDefinition (takes effect with the OBEY/PREFER_PRECISION_CONSTRAINTS builder flag). Returns their names."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    infos = [
        LayerInfo(layer.name, layer.type.name,
                  tuple(layer.get_output(j).dtype.name for j in range(layer.num_outputs)))
        for layer in layers
    ]
    names = []
    for index in fp32_layer_indices(infos, policy):
        layer = layers[index]
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype.name in FLOAT_DTYPES:
                layer.set_output_type(j, trt.float32)
        names.append(layer.name)
    return names


# -- the rule that sets DEFAULT_FP32_PINS from a GPU run (`make gpu-check` applies it) -----------------------------
FP16_VARIANTS = ("norm", "broad", "none", "strongly-typed")
LATENCY_TOLERANCE = 0.05  # variants within 5% of the fastest count as equally fast


def recommend_fp32_pins(rows: Sequence[dict[str, Any]], current: str = DEFAULT_FP32_PINS) -> dict[str, Any]:
    """Which fp16 build the default should be, from gpu-check's side-by-side builds. Each row: `variant` (a pin
    policy or "strongly-typed"), `error` (the build failed: e.g. out of memory), `passed` (the spec's fp16 gate
    against ONNX Runtime fp32, bucket-padded), `p50_ms` (at the largest batch x length), `context_bytes` (engine
    device memory for one context). The rule:

    1. only variants that built and passed the gate are candidates (none: keep `current`);
    2. the fastest candidates, within 5% of the best p50 at the largest shape;
    3. of those, the one needing the least device memory; on a tie the current default, then fewer pins
       (none, norm, broad), then strongly typed.
    Returns {"recommended", "reason", "change": whether it differs from `current`}."""
    good = [r for r in rows if not r.get("error") and r.get("passed") and r.get("p50_ms") is not None]
    if not good:
        return {"recommended": current, "change": False,
                "reason": "no fp16 variant built and passed its gate: keep the default and investigate"}
    best = min(r["p50_ms"] for r in good)
    fast = [r for r in good if r["p50_ms"] <= best * (1 + LATENCY_TOLERANCE)]
    order = [current] + [v for v in ("none", "norm", "broad", "strongly-typed") if v != current]
    rank = {v: i for i, v in enumerate(order)}
    pick = min(fast, key=lambda r: (r.get("context_bytes") or 0, rank.get(r["variant"], len(rank))))
    reason = (f"{pick['variant']}: passed the gate, p50 {pick['p50_ms']:.2f} ms (fastest {best:.2f} ms, "
              f"{len(fast)} within {LATENCY_TOLERANCE:.0%}), least device memory among those "
              f"({(pick.get('context_bytes') or 0) / (1 << 20):.0f} MiB per context)")
    return {"recommended": pick["variant"], "change": pick["variant"] != current, "reason": reason}

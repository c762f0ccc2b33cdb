"""Precision settings of the TensorRT engines: builder flags, source ONNX, fp32 islands. No GPU, no TensorRT:
the selection is pure data, and `apply_fp32_constraints` runs against a recording fake of the TensorRT network."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from guardrt.export.tensorrt import (
    DEFAULT_FP32_PINS,
    EngineSettings,
    LayerInfo,
    apply_fp32_constraints,
    derive_profiles,
    engine_settings,
    fp32_layer_indices,
    in_norm_scope,
    in_rotary_scope,
    parse_trt_precisions,
    polygraphy_profiles,
)
from guardrt.runtime.errors import InputError, ModelFilesError

ALL = ("fp32", "fp16", "int8", "int8-dynamic")


def test_fp16_engine_is_built_from_the_fp16_onnx_with_fp32_islands():
    s = engine_settings("fp16", ALL)
    assert (s.source, s.fp16, s.int8, s.tf32) == ("fp16", True, False, False)
    assert s.fp32_islands and s.precision_constraints == "prefer"


def test_fp16_engine_falls_back_to_the_fp32_onnx_and_the_builder_flag():
    s = engine_settings("fp16", ("fp32",))
    assert s.source == "fp32" and s.fp16 and s.fp32_islands


def test_int8_engine_needs_the_qdq_onnx_and_no_calibrator():
    s = engine_settings("int8", ALL)
    assert (s.source, s.int8, s.fp16, s.fp32_islands, s.precision_constraints) == ("int8", True, False, False, None)
    kwargs = s.create_config_kwargs([], None)
    assert "calibrator" not in kwargs  # explicit quantization: Q/DQ scales come from the graph
    with pytest.raises(ModelFilesError, match="explicit-QDQ int8 ONNX"):
        engine_settings("int8", ("fp32", "fp16", "int8-dynamic"))


def test_int8_with_fp16_fallback_keeps_fp32_islands():
    s = engine_settings("int8", ALL, int8_fp16=True, precision_constraints="obey")
    assert s.int8 and s.fp16 and s.fp32_islands and s.precision_constraints == "obey"


def test_fp32_engine_has_no_reduced_precision():
    s = engine_settings("fp32", ALL)
    assert (s.source, s.fp16, s.int8, s.tf32, s.fp32_islands, s.precision_constraints) == (
        "fp32", False, False, False, False, None)
    assert engine_settings("fp32", ALL, tf32=True).tf32
    with pytest.raises(ModelFilesError, match="fp32 ONNX"):
        engine_settings("fp32", ("fp16",))


def test_strongly_typed_engines_take_the_graph_types_and_no_flags():
    for precision in ("fp32", "fp16", "int8"):
        s = engine_settings(precision, ALL, strongly_typed=True)
        assert (s.source, s.strongly_typed, s.fp16, s.int8, s.fp32_islands, s.precision_constraints) == (
            precision, True, False, False, False, None)
    with pytest.raises(ModelFilesError, match="the fp16 ONNX"):
        engine_settings("fp16", ("fp32", "int8"), strongly_typed=True)  # no fp32 fallback: the types are the graph's


def test_bad_precision_and_constraint_values():
    with pytest.raises(InputError, match="not supported"):
        engine_settings("bf16", ALL)
    with pytest.raises(InputError, match="precision_constraints"):
        engine_settings("fp16", ALL, precision_constraints="strict")  # STRICT_TYPES is gone in TensorRT 10


def test_parse_trt_precisions():
    assert parse_trt_precisions("fp16, int8,fp16") == ("fp16", "int8")
    assert parse_trt_precisions(["int8"]) == ("int8",)
    with pytest.raises(InputError, match="QDQ"):
        parse_trt_precisions("int8-dynamic")
    with pytest.raises(InputError, match="no TensorRT precision"):
        parse_trt_precisions(" , ")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_settings_become_a_polygraphy_create_config(precision, tmp_path):
    """The kwargs are accepted by Polygraphy's real CreateConfig (constructed without TensorRT: its __init__ only
    stores them; TensorRT is touched when the config is called on a builder)."""
    pytest.importorskip("polygraphy")
    from polygraphy.backend.trt import CreateConfig

    s = engine_settings(precision, ALL)
    profiles = polygraphy_profiles(derive_profiles("rejection"))
    cache = tmp_path / "timing.cache"
    cfg = CreateConfig(**s.create_config_kwargs(profiles, cache))
    assert (cfg.fp16, cfg.int8, cfg.tf32) == (s.fp16, s.int8, False)
    assert cfg.precision_constraints == s.precision_constraints
    assert cfg.timing_cache_path == str(cache)
    assert len(cfg.profiles) == len(profiles) and cfg.calibrator is None


# -- fp32 islands --------------------------------------------------------------------------------------------------
F, H, I64, B = "FLOAT", "HALF", "INT64", "BOOL"
QWEN_LAYERS = [
    LayerInfo("/model/embed_tokens/Gather", "GATHER", (H,)),
    LayerInfo("/model/layers.0/input_layernorm/Cast", "CAST", (F,)),
    LayerInfo("/model/layers.0/input_layernorm/Pow", "ELEMENTWISE", (F,)),  # 2
    LayerInfo("/model/layers.0/input_layernorm/ReduceMean", "REDUCE", (F,)),  # 3
    LayerInfo("/model/layers.0/input_layernorm/Add", "ELEMENTWISE", (F,)),  # 4
    LayerInfo("/model/layers.0/input_layernorm/Sqrt", "UNARY", (F,)),  # 5
    LayerInfo("/model/layers.0/input_layernorm/Div", "ELEMENTWISE", (F,)),  # 6
    LayerInfo("/model/layers.0/input_layernorm/Constant_output_0", "CONSTANT", (F,)),
    LayerInfo("/model/layers.0/self_attn/q_proj/MatMul", "MATRIX_MULTIPLY", (H,)),
    LayerInfo("/model/layers.0/self_attn/q_norm/Mul_1", "ELEMENTWISE", (H,)),  # 9
    LayerInfo("/model/layers.0/self_attn/Softmax", "SOFTMAX", (H,)),  # 10
    LayerInfo("/model/layers.0/self_attn/Add", "ELEMENTWISE", (H,)),  # mask add, outside a norm scope
    LayerInfo("/model/layers.0/mlp/act_fn/Sigmoid", "ACTIVATION", (H,)),  # SiLU: fine in fp16
    LayerInfo("/model/Shape", "SHAPE", (I64,)),
    LayerInfo("/model/ReduceMax", "REDUCE", (I64,)),  # pooling index arithmetic on ints: untouched
    LayerInfo("/model/Equal", "ELEMENTWISE", (B,)),
    LayerInfo("/model/norm/Mul_1", "ELEMENTWISE", (H,)),  # 16 final RMSNorm weight
    LayerInfo("/score/MatMul", "MATRIX_MULTIPLY", (F,)),
    LayerInfo("/model/rotary_emb/Constant_output_0", "CONSTANT", (F,)),  # inv_freq: a constant, untouched
    LayerInfo("/model/rotary_emb/Cast", "CAST", (F,)),  # positions int -> float: a cast, untouched
    LayerInfo("/model/rotary_emb/MatMul", "MATRIX_MULTIPLY", (F,)),  # 20 angles = inv_freq x positions
    LayerInfo("/model/rotary_emb/Transpose", "SHUFFLE", (F,)),  # 21
    LayerInfo("/model/rotary_emb/Concat", "CONCATENATION", (F,)),  # 22
    LayerInfo("/model/rotary_emb/Cos", "UNARY", (F,)),  # 23
    LayerInfo("/model/layers.0/self_attn/Mul_2", "ELEMENTWISE", (H,)),  # q * cos: bounded values, fp16 is fine
]
ROBERTA_LAYERS = [
    LayerInfo("/roberta/embeddings/LayerNorm/LayerNormalization", "NORMALIZATION", (H,)),  # 0
    LayerInfo("/roberta/encoder/layer.0/attention/self/Softmax", "SOFTMAX", (H,)),  # 1
    LayerInfo("/roberta/encoder/layer.0/output/dense/MatMul", "MATRIX_MULTIPLY", (H,)),
    LayerInfo("/roberta/encoder/layer.0/output/LayerNorm/Add", "ELEMENTWISE", (H,)),  # 3 (decomposed LN)
    LayerInfo("/classifier/dense/Tanh", "ACTIVATION", (H,)),
]


def test_fp32_islands_pick_norms_softmax_and_reductions_only():
    # the "broad" policy: what guardrt pinned before the narrower default (issue 15)
    assert fp32_layer_indices(QWEN_LAYERS, "broad") == [2, 3, 4, 5, 6, 9, 10, 16, 20, 21, 22, 23]
    assert fp32_layer_indices(ROBERTA_LAYERS, "broad") == [0, 1, 3]


def test_default_fp32_pins_leave_softmax_to_tensorrt():
    """The narrow default pins the RMS/layer-norm chains (variance reduction included) and the rotary angles, not the
    attention softmax: a pinned SOFTMAX may stop TensorRT from fusing attention."""
    assert DEFAULT_FP32_PINS == "norm"
    narrow = fp32_layer_indices(QWEN_LAYERS)
    assert narrow == fp32_layer_indices(QWEN_LAYERS, "norm") == [2, 3, 4, 5, 6, 9, 16, 20, 21, 22, 23]
    assert 10 not in narrow and 3 in narrow  # softmax free, the variance ReduceMean pinned
    assert fp32_layer_indices(ROBERTA_LAYERS) == [0, 3]
    assert fp32_layer_indices(QWEN_LAYERS, "none") == []
    # a reduction outside a norm scope (e.g. mean pooling) is only pinned by "broad"
    pool = [LayerInfo("/pool/ReduceSum", "REDUCE", (H,))]
    assert fp32_layer_indices(pool) == [] and fp32_layer_indices(pool, "broad") == [0]
    with pytest.raises(InputError, match="fp32 pins"):
        fp32_layer_indices(QWEN_LAYERS, "softmax")


def test_fp32_pin_policy_reaches_the_settings_and_the_network():
    s = engine_settings("fp16", ALL, fp32_pins="broad")
    assert s.fp32_islands and s.fp32_pins == "broad" and s.precision_constraints == "prefer"
    unpinned = engine_settings("fp16", ALL, fp32_pins="none")
    assert unpinned.fp16 and not unpinned.fp32_islands and unpinned.precision_constraints is None
    assert not engine_settings("int8", ALL, int8_fp16=True, fp32_pins="none").fp32_islands
    with pytest.raises(InputError, match="fp32 pins"):
        engine_settings("fp16", ALL, fp32_pins="all")
    trt = _fake_trt()
    assert apply_fp32_constraints(_Network(QWEN_LAYERS), trt, "broad") == [
        QWEN_LAYERS[i].name for i in fp32_layer_indices(QWEN_LAYERS, "broad")]
    assert apply_fp32_constraints(_Network(QWEN_LAYERS), trt, "none") == []


def test_int8_dynamic_is_refused_for_tensorrt_with_the_reason():
    with pytest.raises(InputError, match="MatMulInteger / DynamicQuantizeLinear.*--precision int8"):
        engine_settings("int8-dynamic", ALL)
    with pytest.raises(InputError, match="MatMulInteger"):
        parse_trt_precisions("fp16,int8-dynamic")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("/model/layers.3/post_attention_layernorm/Pow", True),
        ("/model/norm/ReduceMean", True),
        ("/model/layers.0/self_attn/k_norm/Mul", True),
        ("/roberta/encoder/layer.5/attention/output/LayerNorm/Sub", True),
        ("/model/layers.0/mlp/down_proj/MatMul", False),
        ("LayerNormalization_12", False),  # a bare op name is no scope; its NORMALIZATION type still counts
        ("", False),
    ],
)
def test_norm_scope(name, expected):
    assert in_norm_scope(name) is expected


def test_rotary_scope():
    assert in_rotary_scope("/model/rotary_emb/Sin") and in_rotary_scope("/model/rotary_emb/MatMul_1")
    assert not in_rotary_scope("/model/layers.0/self_attn/Mul_2") and not in_rotary_scope("RotaryEmbedding_3")


class _Enum(SimpleNamespace):
    pass


def _fake_trt():
    return SimpleNamespace(float32=_Enum(name="FLOAT"), float16=_Enum(name="HALF"))


class _Tensor:
    def __init__(self, dtype: str):
        self.dtype = _Enum(name=dtype)


class _Layer:
    def __init__(self, info: LayerInfo):
        self.name = info.name
        self.type = _Enum(name=info.type)
        self._outputs = [_Tensor(d) for d in info.output_dtypes]
        self.num_outputs = len(self._outputs)
        self.precision = None
        self.output_types: dict[int, object] = {}

    def get_output(self, j):
        return self._outputs[j]

    def set_output_type(self, j, dtype):
        self.output_types[j] = dtype


class _Network:
    def __init__(self, infos):
        self.layers = [_Layer(i) for i in infos]
        self.num_layers = len(self.layers)

    def get_layer(self, i):
        return self.layers[i]


def test_apply_fp32_constraints_sets_layer_precision_and_output_types():
    trt = _fake_trt()
    net = _Network(QWEN_LAYERS)
    names = apply_fp32_constraints(net, trt)
    picked = set(fp32_layer_indices(QWEN_LAYERS))
    assert names == [QWEN_LAYERS[i].name for i in sorted(picked)]
    for i, layer in enumerate(net.layers):
        if i in picked:
            assert layer.precision is trt.float32
            assert layer.output_types == {j: trt.float32 for j in range(layer.num_outputs)}
        else:
            assert layer.precision is None and layer.output_types == {}


def test_engine_settings_is_plain_data():
    s = engine_settings("fp16", ALL)
    assert isinstance(s, EngineSettings)
    assert s == EngineSettings("fp16", "fp16", True, False, False, True, "prefer", False)


# -- build_engine's Polygraphy plumbing, against fakes of Polygraphy's loaders and of TensorRT ----------------------
# Not a GPU result: checks what guardrt hands to Polygraphy (network postprocessing, CreateConfig kwargs, timing cache,
# atomic save, profile read-back). Whether TensorRT builds a good engine from it is only checked by `gpu` tests.
class _FakeEngine:
    def __init__(self, profiles):
        self._profiles = [p.shapes() for p in profiles]
        self.names = list(profiles[0].input_names) + ["logits"]
        self.num_io_tensors = len(self.names)
        self.num_optimization_profiles = len(self._profiles)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "OUT" if name == "logits" else "IN"

    def get_tensor_profile_shape(self, name, p):
        return [list(d) for d in self._profiles[p][name]]

    def get_tensor_dtype(self, name):
        return _Enum(name="FLOAT" if name == "logits" else "INT64")


def _fake_polygraphy(monkeypatch, engine_profiles, fail=None):
    import polygraphy.backend.trt as pg

    import guardrt.export.tensorrt.build as et

    seen = {}
    trt = SimpleNamespace(__version__="10.5.0-fake", float32=_Enum(name="FLOAT"),
                          MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
                          TensorIOMode=SimpleNamespace(INPUT="IN", OUTPUT="OUT"))
    real_require = et.require
    monkeypatch.setattr(et, "require", lambda m, extra: trt if m == "tensorrt" else real_require(m, extra))

    def network_from_onnx_path(path, strongly_typed=None):
        seen["onnx"] = path
        seen["strongly_typed"] = strongly_typed
        return ("network-loader", path)

    def postprocess_network(network, func, name=None):
        seen["postprocess"] = name
        return ("postprocess", network, func)

    def create_config(**kwargs):
        seen["config"] = kwargs
        return ("config", kwargs)

    def engine_from_network(network, config=None, save_timing_cache=None):
        seen["save_timing_cache"] = save_timing_cache

        def build():
            if fail:
                raise RuntimeError(fail)
            if network[0] == "postprocess":
                network[2](network=_Network(QWEN_LAYERS))
            return _FakeEngine(engine_profiles)

        return build

    def save_engine(engine_loader, path):
        def save():
            engine = engine_loader()
            seen["saved_to"] = path
            Path(path).write_bytes(b"plan")
            return engine

        return save

    for name, fake in [("NetworkFromOnnxPath", network_from_onnx_path), ("PostprocessNetwork", postprocess_network),
                       ("CreateConfig", create_config), ("EngineFromNetwork", engine_from_network),
                       ("SaveEngine", save_engine)]:
        monkeypatch.setattr(pg, name, fake)
    return seen


def test_build_engine_hands_polygraphy_the_profiles_flags_cache_and_constraints(tmp_path, monkeypatch):
    pytest.importorskip("polygraphy")
    from guardrt.export.tensorrt import build_engine

    profiles = derive_profiles("rejection")
    seen = _fake_polygraphy(monkeypatch, profiles)
    plan = tmp_path / "tensorrt" / "fp16" / "model.plan"
    cache = tmp_path / "tensorrt" / "timing.cache"
    record = build_engine(tmp_path / "fp16" / "model.onnx", plan, engine_settings("fp16", ALL), profiles,
                          timing_cache=cache, workspace_bytes=1 << 30, builder_optimization_level=4)
    assert plan.read_bytes() == b"plan" and not plan.with_name("model.plan.tmp").exists()
    assert seen["saved_to"] == str(plan.with_name("model.plan.tmp"))  # written aside, renamed after the checks
    assert seen["onnx"] == str(tmp_path / "fp16" / "model.onnx")
    assert seen["postprocess"] == "guardrt-fp32-islands"
    cfg = seen["config"]
    assert (cfg["fp16"], cfg["int8"], cfg["tf32"], cfg["precision_constraints"]) == (True, False, False, "prefer")
    assert cfg["load_timing_cache"] == str(cache) == seen["save_timing_cache"]
    assert len(cfg["profiles"]) == len(profiles)
    assert cfg["memory_pool_limits"] == {"WORKSPACE": 1 << 30} and cfg["builder_optimization_level"] == 4
    assert record["fp32_layers"] == len(fp32_layer_indices(QWEN_LAYERS))
    assert record["tensorrt_version"] == "10.5.0-fake" and record["plan_bytes"] == 4
    assert [p["seq"] for p in record["profiles"]] == [list(p.seq) for p in profiles]
    assert record["io_dtypes"] == {"input_ids": "INT64", "attention_mask": "INT64", "logits": "FLOAT"}


def test_triton_input_type_follows_the_engine():
    from guardrt.export.tensorrt import triton_input_type
    from guardrt.runtime.specs import get_spec

    spec = get_spec("rejection")
    assert triton_input_type({"input_ids": "INT64", "attention_mask": "INT64", "logits": "FLOAT"}, spec) == "TYPE_INT64"
    assert triton_input_type({"input_ids": "INT32", "attention_mask": "INT32", "logits": "FLOAT"}, spec) == "TYPE_INT32"
    with pytest.raises(ModelFilesError, match="expected FLOAT"):
        triton_input_type({"input_ids": "INT64", "attention_mask": "INT64", "logits": "HALF"}, spec)
    with pytest.raises(ModelFilesError, match="expected INT64"):
        triton_input_type({"input_ids": "INT64", "attention_mask": "INT32", "logits": "FLOAT"}, spec)


def test_build_engine_without_islands_skips_postprocessing(tmp_path, monkeypatch):
    pytest.importorskip("polygraphy")
    from guardrt.export.tensorrt import build_engine

    profiles = derive_profiles("rejection")
    seen = _fake_polygraphy(monkeypatch, profiles)
    record = build_engine(tmp_path / "m.onnx", tmp_path / "p" / "model.plan", engine_settings("int8", ALL), profiles)
    assert "postprocess" not in seen and record["fp32_layers"] == 0
    assert seen["config"]["int8"] and seen["config"]["load_timing_cache"] is None
    assert seen["strongly_typed"] is None
    build_engine(tmp_path / "m.onnx", tmp_path / "p" / "model.plan",
                 engine_settings("fp16", ALL, strongly_typed=True), profiles)
    assert seen["strongly_typed"] is True and not seen["config"]["fp16"] and "postprocess" not in seen


def test_build_engine_refuses_an_engine_with_other_profiles_or_a_failed_build(tmp_path, monkeypatch):
    pytest.importorskip("polygraphy")
    from guardrt.export.tensorrt import build_engine

    profiles = derive_profiles("rejection")
    _fake_polygraphy(monkeypatch, profiles[:-1])
    plan = tmp_path / "model.plan"
    with pytest.raises(ModelFilesError, match="does not have the derived profiles"):
        build_engine(tmp_path / "m.onnx", plan, engine_settings("fp32", ALL), profiles)
    assert not plan.exists() and not plan.with_name("model.plan.tmp").exists()
    _fake_polygraphy(monkeypatch, profiles, fail="Network validation failed.\nmore lines")
    with pytest.raises(ModelFilesError, match=r"could not build the fp32 engine .*: Network validation failed\. \("):
        build_engine(tmp_path / "m.onnx", plan, engine_settings("fp32", ALL), profiles)
    assert not plan.exists()


def test_the_rule_that_sets_the_default_fp32_pins():
    """recommend_fp32_pins: built and gated first, then the fastest within 5%, then the least device memory, then
    the current default and fewer pins."""
    from guardrt.export.tensorrt import recommend_fp32_pins

    rows = [
        {"variant": "norm", "passed": True, "p50_ms": 10.0, "context_bytes": 300},
        {"variant": "broad", "error": "out of memory"},
        {"variant": "none", "passed": False, "p50_ms": 8.0, "context_bytes": 200},  # fast but misses the gate
        {"variant": "strongly-typed", "passed": True, "p50_ms": 10.3, "context_bytes": 250},
    ]
    pick = recommend_fp32_pins(rows)
    assert pick["recommended"] == "strongly-typed" and pick["change"]  # within 5% of norm, less memory
    rows[3]["p50_ms"] = 11.0  # now 10% slower: norm stays
    assert recommend_fp32_pins(rows) == {**recommend_fp32_pins(rows), "recommended": "norm", "change": False}
    rows[2]["passed"] = True  # unpinned passes and is fastest
    assert recommend_fp32_pins(rows)["recommended"] == "none"
    tie = [{"variant": v, "passed": True, "p50_ms": 10.0, "context_bytes": 100} for v in ("broad", "none", "norm")]
    assert recommend_fp32_pins(tie)["recommended"] == "norm"  # a tie keeps the current default
    assert recommend_fp32_pins(tie, current="broad")["recommended"] == "broad"
    none_ok = recommend_fp32_pins([{"variant": "norm", "error": "x"}, {"variant": "none", "passed": False,
                                                                      "p50_ms": 1.0}])
    assert none_ok["recommended"] == "norm" and not none_ok["change"] and "investigate" in none_ok["reason"]

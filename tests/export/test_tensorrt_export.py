"""`export_tensorrt`: the no-GPU path (writes the Triton configs, one clear error line), input checks, and - on a GPU
host only (`gpu` marker) - a real build of a tiny ONNX classifier into fp32 / fp16 / int8 engines, checked against
ONNX Runtime on CPU and run through TensorRTRunner.

The tiny model is built here with `onnx.helper` (no torch): Gather embedding -> LayerNormalization -> Softmax-gated
mixing -> masked mean pooling -> MatMul, with the graph contract of a guardrt export (int64 input_ids and
attention_mask [B, S] -> float32 logits [B, 2]) and node names in the exporter's `/scope/Op` style.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from guardrt.export.tensorrt import (
    TensorRTUnavailableError,
    derive_profiles,
    export_tensorrt,
    non_standard_onnx_ops,
    repo_model_names,
)
from guardrt.runtime.errors import InputError, ModelFilesError
from guardrt.runtime.specs import get_spec
from guardrt.runtime.tensorrt import GpuProbe

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

VOCAB, HIDDEN, LABELS = 50, 16, 2

# A small spec at the shape of a real one (registered specs are not touched): two buckets, batch 1..4.
TINY_SPEC = dataclasses.replace(
    get_spec("rejection"), name="rejection", max_length=16, length_buckets=(8, 16), max_batch_size=4,
    preferred_batch_sizes=(2, 4),
)


def tiny_classifier(path: Path, *, qdq: bool = False, contrib_op: bool = False, seed: int = 0,
                    vocab: int = VOCAB) -> Path:
    """Write the tiny classifier ONNX (opset 17). `qdq`: int8 Q/DQ on the classifier MatMul (explicit quantization,
    as TensorRT consumes it). `contrib_op`: add one com.microsoft node (what TensorRT's parser rejects)."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(0, 1, (vocab, HIDDEN)).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32)
    beta = rng.normal(0, 0.1, HIDDEN).astype(np.float32)
    w = rng.normal(0, 0.5, (HIDDEN, LABELS)).astype(np.float32)
    b = rng.normal(0, 0.1, LABELS).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(emb, "emb"), (gamma, "gamma"), (beta, "beta"), (b, "cls_b"),
              (np.array([1], np.int64), "axis1"), (np.array([-1], np.int64), "axis_last")]]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["h0"], name="/embed/Gather"),
        helper.make_node("LayerNormalization", ["h0", "gamma", "beta"], ["h1"], axis=-1, epsilon=1e-5,
                         name="/encoder/LayerNorm/LayerNormalization"),
        helper.make_node("Softmax", ["h1"], ["a"], axis=-1, name="/encoder/attn/Softmax"),
        helper.make_node("Mul", ["h1", "a"], ["h2"], name="/encoder/attn/Mul"),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT, name="/pool/Cast"),
        helper.make_node("Unsqueeze", ["m", "axis_last"], ["m3"], name="/pool/Unsqueeze"),
        helper.make_node("Mul", ["h2", "m3"], ["hm"], name="/pool/Mul"),
        helper.make_node("ReduceSum", ["hm", "axis1"], ["s"], keepdims=0, name="/pool/ReduceSum"),
        helper.make_node("ReduceSum", ["m3", "axis1"], ["n"], keepdims=0, name="/pool/ReduceSum_1"),
        helper.make_node("Div", ["s", "n"], ["pooled"], name="/pool/Div"),
    ]
    if qdq:
        scale_w = (np.abs(w).max(axis=0) / 127).astype(np.float32)  # per output channel
        w_q = np.clip(np.round(w / scale_w), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(w_q, "cls_w_q"), numpy_helper.from_array(scale_w, "cls_w_scale"),
                  numpy_helper.from_array(np.zeros(LABELS, np.int8), "cls_w_zp"),
                  numpy_helper.from_array(np.array(4.0 / 127, np.float32), "x_scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "x_zp")]
        nodes += [
            helper.make_node("QuantizeLinear", ["pooled", "x_scale", "x_zp"], ["pq"], name="/cls/QuantizeLinear"),
            helper.make_node("DequantizeLinear", ["pq", "x_scale", "x_zp"], ["pdq"], name="/cls/DequantizeLinear"),
            helper.make_node("DequantizeLinear", ["cls_w_q", "cls_w_scale", "cls_w_zp"], ["cls_w"], axis=1,
                             name="/cls/DequantizeLinear_1"),
            helper.make_node("MatMul", ["pdq", "cls_w"], ["z"], name="/cls/MatMul"),
        ]
    else:
        inits.append(numpy_helper.from_array(w, "cls_w"))
        nodes.append(helper.make_node("MatMul", ["pooled", "cls_w"], ["z"], name="/cls/MatMul"))
    if contrib_op:
        nodes.append(helper.make_node("FastGelu", ["z"], ["z_ms"], domain="com.microsoft", name="/cls/FastGelu"))
        nodes.append(helper.make_node("Add", ["z_ms", "cls_b"], ["logits"], name="/cls/Add"))
    else:
        nodes.append(helper.make_node("Add", ["z", "cls_b"], ["logits"], name="/cls/Add"))
    graph = helper.make_graph(
        nodes, "tiny_classifier",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", LABELS])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib_op else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="guardrt-tests")
    model.ir_version = 8
    if not contrib_op:
        onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_export_dir(root: Path, spec=TINY_SPEC, precisions=("fp32", "fp16", "int8"), contrib_op=False,
                    vocab: int = VOCAB) -> Path:
    """A guardrt export directory (the layout of guardrt.runtime.export_dir) holding tiny models."""
    for p in precisions:
        tiny_classifier(root / p / "model.onnx", qdq=(p == "int8"), contrib_op=contrib_op, vocab=vocab)
    (root / "config.json").write_text(json.dumps({"model_type": spec.model_type, "vocab_size": vocab}))
    manifest = {"spec": spec.name, "architecture": spec.architecture, "num_labels": LABELS,
                "precisions": {p: f"{p}/model.onnx" for p in precisions}, "guardrt_version": "test"}
    (root / "guardrt.json").write_text(json.dumps(manifest))
    return root


NO_GPU = GpuProbe(False, "no NVIDIA GPU found (nvidia-smi not on PATH, no /dev/nvidia0)")


def test_without_gpu_writes_the_configs_and_says_so_in_one_line(tmp_path):
    pytest.importorskip("tritonclient.grpc")
    from guardrt.runtime.triton_repo import parse_config

    export_dir = make_export_dir(tmp_path / "exp")
    repo = tmp_path / "repo"
    with pytest.raises(TensorRTUnavailableError) as err:
        export_tensorrt(export_dir, TINY_SPEC, "fp16,int8", out=repo, probe=lambda: NO_GPU,
                        find_missing=lambda: ["tensorrt"])
    msg = str(err.value)
    assert "\n" not in msg
    assert "no NVIDIA GPU found" in msg and "tensorrt not installed" in msg and "guardrt[gpu]" in msg
    for model in ("rejection", "rejection-int8"):
        cfg_path = repo / model / "config.pbtxt"
        assert str(cfg_path) in msg
        cfg = parse_config(cfg_path.read_text())
        assert cfg.platform == "tensorrt_plan" and cfg.name == model
        assert list(cfg.instance_group[0].profile) == ["0", "1"]
        assert not (repo / model / "1" / "model.plan").exists()
    # the ONNX models it would have built from are named too: fp16 engine <- fp16 ONNX, int8 <- QDQ ONNX
    assert str(export_dir / "fp16" / "model.onnx") in msg and str(export_dir / "int8" / "model.onnx") in msg
    assert not (export_dir / "tensorrt").exists()


def test_default_repository_is_inside_the_export_dir(tmp_path):
    pytest.importorskip("tritonclient.grpc")
    export_dir = make_export_dir(tmp_path / "exp", precisions=("fp32",))
    with pytest.raises(TensorRTUnavailableError, match="tensorrt_plan"):
        export_tensorrt(export_dir, None, ["fp16"], probe=lambda: GpuProbe(True, "GPU 0: test"),
                        find_missing=lambda: ["tensorrt", "polygraphy"])
    assert (export_dir / "triton_repo" / "rejection" / "config.pbtxt").is_file()


def test_bad_requests_fail_before_anything_is_written(tmp_path):
    export_dir = make_export_dir(tmp_path / "exp", precisions=("fp32", "fp16"))
    repo = tmp_path / "repo"
    kw = dict(out=repo, probe=lambda: NO_GPU, find_missing=lambda: [])
    with pytest.raises(InputError, match="not supported"):
        export_tensorrt(export_dir, TINY_SPEC, "fp8", **kw)
    with pytest.raises(ModelFilesError, match="explicit-QDQ int8 ONNX"):
        export_tensorrt(export_dir, TINY_SPEC, "int8", **kw)
    with pytest.raises(ModelFilesError, match="exported for spec"):
        export_tensorrt(export_dir, "intent-safety", "fp16", **kw)
    with pytest.raises(ModelFilesError, match="does not exist"):
        export_tensorrt(tmp_path / "nowhere", TINY_SPEC, "fp16", **kw)
    assert not repo.exists()


def test_onnx_runtime_fused_operators_are_refused_for_tensorrt(tmp_path):
    export_dir = make_export_dir(tmp_path / "exp", precisions=("fp32",), contrib_op=True)
    assert non_standard_onnx_ops(export_dir / "fp32" / "model.onnx") == {"com.microsoft::FastGelu": 1}
    with pytest.raises(ModelFilesError, match="com.microsoft::FastGelu"):
        export_tensorrt(export_dir, TINY_SPEC, "fp32", out=tmp_path / "repo", probe=lambda: NO_GPU,
                        find_missing=lambda: [])


def test_repo_model_names():
    assert repo_model_names("rejection", ["fp16"]) == {"fp16": "rejection"}
    assert repo_model_names("x", ["int8", "fp16"]) == {"int8": "x", "fp16": "x-fp16"}


def test_tiny_classifier_runs_in_onnx_runtime(tmp_path):
    """The fixture itself is a valid model (so a GPU failure below is TensorRT's, not the fixture's)."""
    ort = pytest.importorskip("onnxruntime")
    feeds = _feeds(3, 8)
    out = {}
    for qdq in (False, True):
        path = tiny_classifier(tmp_path / f"m{qdq}.onnx", qdq=qdq)
        out[qdq] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        assert out[qdq].shape == (3, LABELS) and np.isfinite(out[qdq]).all()
    assert np.abs(out[True] - out[False]).max() < 0.1  # int8 Q/DQ stays close to fp32


def _feeds(batch: int, seq: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, VOCAB, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    for i in range(1, batch):  # right padding of different lengths, like the rejection spec
        mask[i, seq - i:] = 0
        ids[i, seq - i:] = TINY_SPEC.pad_token_id
    return {"input_ids": ids, "attention_mask": mask}


# -- GPU: a real build -----------------------------------------------------------------------------------------------
ATOL = {"fp32": 1e-4, "fp16": 2e-2, "int8": 5e-2}


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tiny_engine_builds_matches_onnx_runtime_and_lands_in_the_repo(precision, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("tensorrt")
    from guardrt.runtime.tensorrt import TensorRTRunner
    from guardrt.runtime.triton_repo import parse_config

    export_dir = make_export_dir(tmp_path / "exp")
    repo = tmp_path / "repo"
    result = export_tensorrt(export_dir, TINY_SPEC, precision, out=repo, validate=0, log=print)
    plan = result.engines[precision]
    assert plan == export_dir / "tensorrt" / precision / "model.plan" and plan.stat().st_size > 0
    build = json.loads((plan.parent / "build.json").read_text())
    assert build["profiles"] == [{"index": p.index, "bucket": p.bucket, "batch": list(p.batch), "seq": list(p.seq)}
                                 for p in derive_profiles(TINY_SPEC)]
    if precision == "fp16":
        assert build["fp32_layers"] >= 1  # the LayerNormalization (the default pins leave the softmax to TensorRT)
    memory = build["device_memory"]  # read back from the engine, per profile, for the Triton deployment
    assert len(memory["per_profile_bytes"]) == 2 and memory["context_bytes"] >= max(memory["per_profile_bytes"])
    assert build["deployment"]["num_profiles"] == 2 and build["deployment"]["fits"] in (True, None)
    assert (repo / "rejection" / "1" / "model.plan").is_file()
    assert parse_config((repo / "rejection" / "config.pbtxt").read_text()).platform == "tensorrt_plan"
    assert (export_dir / "tensorrt" / "timing.cache").is_file()

    source = export_dir / ("int8" if precision == "int8" else precision) / "model.onnx"
    sess = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    with TensorRTRunner(plan) as runner:
        assert runner.input_names == ["input_ids", "attention_mask"] and runner.output_names == ["logits"]
        assert len(runner.profiles) == 2
        for batch, seq in [(1, 1), (4, 8), (2, 9), (3, 16), (1, 5)]:  # both profiles, switching back and forth
            feeds = _feeds(batch, seq, seed=batch * 100 + seq)
            got = runner.infer(feeds)["logits"]
            want = sess.run(None, feeds)[0]
            assert got.shape == want.shape == (batch, LABELS) and got.dtype == np.float32
            assert np.abs(got - want).max() <= ATOL[precision], (precision, batch, seq)
        with pytest.raises(InputError, match="no TensorRT optimization profile"):
            runner.infer(_feeds(5, 8))


def test_cli_glue_parses_engine_options_and_reports_the_missing_gpu(tmp_path, monkeypatch):
    """`add_tensorrt_arguments` / `run_tensorrt_target` as `guardrt export --target tensorrt` uses them."""
    pytest.importorskip("tritonclient.grpc")
    import guardrt.export.tensorrt.pipeline as et
    from guardrt.cli import EnvArgumentParser
    from guardrt.export.tensorrt import add_tensorrt_arguments, run_tensorrt_target

    monkeypatch.setattr(et, "probe_gpu", lambda: NO_GPU)
    monkeypatch.setattr(et, "get_spec", lambda name: TINY_SPEC if name == "rejection" else get_spec(name))
    monkeypatch.setenv("GUARDRT_TRT_OPT_BATCH", "2")
    p = EnvArgumentParser(prog="x")
    p.add_argument("--spec")
    add_tensorrt_arguments(p)
    assert "[env: GUARDRT_TRT_OPT_BATCH]" in " ".join(p.format_help().split())
    args = p.parse_args(["--spec", "rejection", "--repo", str(tmp_path / "repo"), "--trt-precision-constraints",
                         "obey", "--trt-workspace-gb", "2"])
    assert args.trt_opt_batch == 2 and args.trt_precision_constraints == "obey"
    export_dir = make_export_dir(tmp_path / "exp")
    with pytest.raises(TensorRTUnavailableError, match="no NVIDIA GPU found") as err:
        run_tensorrt_target(args, export_dir, exported=("fp32", "fp16", "int8-dynamic"), log=None)
    assert "\n" not in str(err.value)
    # int8-dynamic is not a TensorRT precision: fp32 -> model "rejection", fp16 -> "rejection-fp16"
    assert (tmp_path / "repo" / "rejection" / "config.pbtxt").is_file()
    assert (tmp_path / "repo" / "rejection-fp16" / "config.pbtxt").is_file()
    with pytest.raises(InputError, match="--target tensorrt needs"):
        run_tensorrt_target(args, export_dir, exported=("int8-dynamic",), log=None)


def test_guardrt_export_target_tensorrt_without_gpu_one_line_nonzero(tmp_path, monkeypatch, capsys):
    """The real CLI (`guardrt export --target tensorrt`), in process. The ONNX export itself is replaced by one that
    writes the tiny export directory (the exporter has its own tests); everything after it is the real path."""
    pytest.importorskip("tritonclient.grpc")
    import guardrt.export.onnx_export as onnx_export
    import guardrt.export.tensorrt.pipeline as et
    from guardrt.cli import main
    from guardrt.commands import COMMAND_MODULES
    from guardrt.runtime.export_dir import load_export_dir

    if "export" not in COMMAND_MODULES:
        pytest.skip("the export command is not registered in this checkout")
    seen = {}

    def fake_export_onnx(model_dir, spec, out_dir, precisions, **kwargs):
        seen["precisions"] = tuple(precisions)
        make_export_dir(Path(out_dir), precisions=precisions)
        return load_export_dir(out_dir)

    monkeypatch.setattr(onnx_export, "export_onnx", fake_export_onnx)
    monkeypatch.setattr(et, "probe_gpu", lambda: NO_GPU)
    monkeypatch.setattr(et, "missing_gpu_modules", lambda: ["tensorrt"])
    monkeypatch.setattr(et, "get_spec", lambda name: TINY_SPEC if name == "rejection" else get_spec(name))
    out = tmp_path / "exp"
    repo = out / "triton_repo"  # the default repository: inside the export directory
    code = main(["export", "--spec", "rejection", "--model-dir", str(tmp_path), "--out", str(out),
                 "--precision", "fp16,int8", "--target", "tensorrt", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("guardrt export: error: cannot build TensorRT engines here: no NVIDIA GPU found")
    assert "tensorrt not installed (pip install 'guardrt[gpu]')" in err
    assert str(repo / "rejection" / "config.pbtxt") in err and str(repo / "rejection-int8" / "config.pbtxt") in err
    assert str(out / "fp16" / "model.onnx") in err and str(out / "int8" / "model.onnx") in err
    assert seen["precisions"] == ("fp32", "fp16", "int8")  # the ONNX the engines are built from were exported
    assert (repo / "rejection" / "config.pbtxt").is_file() and not (repo / "rejection" / "1" / "model.plan").exists()



# -- the GPU half of export_tensorrt, with build_engine / validate_engine replaced (the real ones need TensorRT) -----
def _fake_gpu_half(monkeypatch, failing=()):
    import guardrt.export.tensorrt.pipeline as et

    def fake_build_engine(onnx_path, plan_path, settings, profiles, **kw):
        Path(plan_path).parent.mkdir(parents=True, exist_ok=True)
        Path(plan_path).write_bytes(b"plan")
        return {"precision": settings.precision, "source_onnx": str(onnx_path), "plan_bytes": 4, "build_seconds": 1.0,
                "fp32_layers": 3, "io_dtypes": {"input_ids": "INT64", "attention_mask": "INT64", "logits": "FLOAT"}}

    def fake_validate(plan, export_dir, spec, precision, n=64, **kw):
        bad = precision in failing
        return {"max_abs_diff": 9.0 if bad else 0.001, "agreement": 0.5 if bad else 1.0, "finite": True, "n": n,
                "atol": spec.atol[precision], "min_agreement": spec.min_agreement[precision], "passed": not bad}

    monkeypatch.setattr(et, "build_engine", fake_build_engine)
    monkeypatch.setattr(et, "validate_engine", fake_validate)
    monkeypatch.setattr(et, "gpu_facts", lambda probe: {"gpu": "stand-in", "compute_capability": "9.0"})
    return dict(probe=lambda: GpuProbe(True, "GPU 0: stand-in", ("GPU 0: stand-in",)), find_missing=lambda: [])


def test_gpu_half_writes_engines_build_records_and_triton_models(tmp_path, monkeypatch):
    pytest.importorskip("tritonclient.grpc")
    from guardrt.runtime.triton_repo import parse_config

    env = _fake_gpu_half(monkeypatch)
    export_dir = make_export_dir(tmp_path / "exp")
    result = export_tensorrt(export_dir, TINY_SPEC, "fp16,int8", out=tmp_path / "repo", **env)
    for p, model in (("fp16", "rejection"), ("int8", "rejection-int8")):
        plan = export_dir / "tensorrt" / p / "model.plan"
        assert result.engines[p] == plan
        record = json.loads((plan.parent / "build.json").read_text())
        assert record["validation"]["passed"] and record["gpu"] == "stand-in" and record["spec"] == "rejection"
        assert record["timing_cache"] == str(export_dir / "tensorrt" / "timing.cache")
        assert (tmp_path / "repo" / model / "1" / "model.plan").read_bytes() == b"plan"
        cfg = parse_config((tmp_path / "repo" / model / "config.pbtxt").read_text())
        assert cfg.platform == "tensorrt_plan" and list(cfg.instance_group[0].profile) == ["0", "1"]


def test_an_engine_that_misses_its_gate_gets_no_triton_model_unless_forced(tmp_path, monkeypatch):
    pytest.importorskip("tritonclient.grpc")
    from guardrt.export.tensorrt import EngineGateError

    env = _fake_gpu_half(monkeypatch, failing=("int8",))
    export_dir = make_export_dir(tmp_path / "exp")
    repo = tmp_path / "repo"
    with pytest.raises(EngineGateError, match=r"int8: max \|Δlogit\| 9 \(gate 0.25\), agreement 0.500") as err:
        export_tensorrt(export_dir, TINY_SPEC, "fp16,int8", out=repo, **env)
    assert "\n" not in str(err.value) and "fp16" not in str(err.value).split("fp32:")[1]
    assert (repo / "rejection" / "1" / "model.plan").is_file()  # fp16 passed
    assert not (repo / "rejection-int8").exists()
    assert not json.loads((export_dir / "tensorrt" / "int8" / "build.json").read_text())["validation"]["passed"]
    result = export_tensorrt(export_dir, TINY_SPEC, "fp16,int8", out=repo, force=True, **env)
    assert (repo / "rejection-int8" / "1" / "model.plan").is_file() and set(result.models) == {"fp16", "int8"}


def test_validate_engine_compares_with_onnx_runtime_through_the_real_preprocessing(tmp_path, roberta_tokenizer_dir):
    """validate_engine with ONNX Runtime standing in for the engine: the same graph passes every gate; a runner whose
    logits drift fails it."""
    import shutil

    pytest.importorskip("onnxruntime")
    pytest.importorskip("guardrt.export.synthetic")
    from guardrt.export.tensorrt import validate_engine
    from guardrt.runtime.onnxrt import OnnxRunner

    spec = get_spec("rejection")
    export_dir = make_export_dir(tmp_path / "exp", spec=spec, vocab=2000)
    for f in roberta_tokenizer_dir.iterdir():
        shutil.copy(f, export_dir / f.name)
    same = validate_engine(export_dir / "fp32" / "model.onnx", export_dir, spec, "fp16", n=24, runner_factory=OnnxRunner)
    assert same["passed"] and same["max_abs_diff"] < 1e-5 and same["agreement"] == 1.0 and same["n"] == 24

    class Drifting(OnnxRunner):
        def infer(self, feeds):
            out = super().infer(feeds)
            return {"logits": out["logits"] + np.array([0.0, 3.0], np.float32)}

    drift = validate_engine(export_dir / "fp32" / "model.onnx", export_dir, spec, "fp16", n=24, runner_factory=Drifting)
    assert not drift["passed"] and drift["max_abs_diff"] == pytest.approx(3.0, abs=1e-4)

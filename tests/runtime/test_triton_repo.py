"""Triton repository writer and server launcher, without starting a server (fast; no models needed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from guardrt.runtime.errors import InputError, MissingExtraError, ModelFilesError, ServerError
from guardrt.runtime.specs import get_spec, spec_names
from guardrt.runtime.triton_repo import (
    FLAVORS,
    config_parameters,
    config_text,
    default_configs,
    CPU_QUEUE_DELAY_US,
    PYTHON_INSTANCES,
    WARMUP_DIR,
    write_default_configs,
    parse_config,
    tensorrt_config,
    warmup_files,
    write_model,
    write_text_model,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("spec_name", spec_names(graph="classifier_logits"))
def test_every_flavor_config_parses_with_tritons_protobuf(spec_name, flavor):
    spec = get_spec(spec_name)
    cfg = parse_config(config_text(spec_name, flavor))
    assert cfg.name == spec_name
    assert cfg.max_batch_size == spec.max_batch_size
    assert [i.name for i in cfg.input] == list(spec.input_names)
    assert [o.name for o in cfg.output] == list(spec.output_names)
    assert all(list(i.dims) == [-1] for i in cfg.input)
    assert list(cfg.output[0].dims) == [len(spec.labels)]
    assert list(cfg.dynamic_batching.preferred_batch_size) == list(spec.preferred_batch_sizes)
    # the python flavor on CPU does not wait for bigger batches (its planner makes any batch pay); GPUs do
    delay = CPU_QUEUE_DELAY_US if flavor == "python" else spec.max_queue_delay_us
    assert cfg.dynamic_batching.max_queue_delay_microseconds == delay
    assert cfg.instance_group[0].count == (PYTHON_INSTANCES if flavor == "python" else 1)
    params = config_parameters(cfg)
    assert params["guardrt_spec"] == spec_name and params["guardrt_flavor"] == flavor
    if flavor == "python":
        assert cfg.backend == "python"
        assert all(i.allow_ragged_batch for i in cfg.input)
        assert params["pad_token_id"] == str(spec.pad_token_id)
        assert params["padding_side"] == spec.padding_side
        assert params["max_length"] == str(spec.max_length)
    else:
        # Native backends batch same-shape requests only: no ragged inputs, the client pads to buckets.
        assert not any(i.allow_ragged_batch for i in cfg.input)
        assert cfg.platform == {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[flavor]


def test_queue_policy_is_derived_from_the_spec():
    """Every generated config bounds its queue and rejects requests queued past a timeout that requests may override
    (guardrt's client sends what is left of its deadline)."""
    from guardrt.runtime.triton_repo import DEFAULT_REQUEST_TIMEOUT_S, QUEUED_BATCHES, queue_policy

    for spec_name in spec_names(graph="classifier_logits"):
        spec = get_spec(spec_name)
        assert queue_policy(spec)["max_queue_size"] == QUEUED_BATCHES * spec.max_batch_size
        for flavor in FLAVORS:
            policy = parse_config(config_text(spec_name, flavor)).dynamic_batching.default_queue_policy
            assert policy.max_queue_size == QUEUED_BATCHES * spec.max_batch_size
            assert policy.timeout_action == policy.REJECT and policy.allow_timeout_override
            assert policy.default_timeout_microseconds == int(DEFAULT_REQUEST_TIMEOUT_S * 1e6)
    custom = parse_config(config_text("rejection", "python", max_queue_size=1, queue_timeout_us=5000))
    assert custom.dynamic_batching.default_queue_policy.max_queue_size == 1
    assert custom.dynamic_batching.default_queue_policy.default_timeout_microseconds == 5000
    assert not parse_config(config_text("rejection", "python", dynamic_batching=False)).HasField("dynamic_batching")


def test_invalid_config_text_is_a_clear_error():
    with pytest.raises(ModelFilesError, match="invalid Triton model config"):
        parse_config('name: "x"\nmax_batch_size: "sixteen"\n')


def test_python_flavor_options():
    gpu = parse_config(config_text("rejection", "python", providers="cuda"))
    assert gpu.dynamic_batching.max_queue_delay_microseconds == get_spec("rejection").max_queue_delay_us
    cfg = parse_config(config_text("rejection", "python", instance_count=3, providers="tensorrt", precision="fp16",
                                   max_queue_delay_us=500))
    assert cfg.instance_group[0].count == 3
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    params = config_parameters(cfg)
    assert params["execution_providers"] == "tensorrt" and params["trt_fp16"] == "1" and params["trt_int8"] == "0"
    with pytest.raises(InputError):
        config_text("rejection", "python", providers="tpu")
    with pytest.raises(InputError):
        config_text("rejection", "python", instance_count=0)
    with pytest.raises(InputError, match="unknown flavor"):
        config_text("rejection", "triton-magic")


def test_onnxruntime_flavor_gpu_accelerator():
    cfg = parse_config(config_text("intent-safety", "onnxruntime", precision="int8"))
    acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc[0].name == "tensorrt" and acc[0].parameters["precision_mode"] == "INT8"
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    cpu = parse_config(config_text("intent-safety", "onnxruntime", gpu=False))
    assert cpu.instance_group[0].kind == cpu.instance_group[0].KIND_CPU
    assert not cpu.optimization.execution_accelerators.gpu_execution_accelerator


@pytest.mark.parametrize("spec_name", spec_names(graph="classifier_logits"))
def test_tensorrt_config_consistent_with_bucket_profiles(spec_name):
    """One TensorRT profile per length bucket (batch 1..max_batch_size, seq up to the bucket): the config must
    accept every batch the profiles accept and let instances use every profile."""
    spec = get_spec(spec_name)
    cfg = parse_config(tensorrt_config(spec))
    assert cfg.max_batch_size == spec.max_batch_size
    assert list(cfg.instance_group[0].profile) == [str(i) for i in range(len(spec.length_buckets))]
    from tritonclient.grpc import model_config_pb2 as pb

    assert all(i.data_type == pb.TYPE_INT64 for i in cfg.input)
    assert max(cfg.dynamic_batching.preferred_batch_size) <= spec.max_batch_size
    # Every length the client can send maps to a bucket no longer than max_length (the last profile's max).
    assert spec.bucket_for(spec.max_length) == spec.length_buckets[-1] == spec.max_length
    cfg2 = parse_config(tensorrt_config(spec, num_profiles=1, input_data_type="TYPE_INT32"))
    assert list(cfg2.instance_group[0].profile) == ["0"] and cfg2.input[0].data_type == pb.TYPE_INT32


def test_committed_repository_configs_are_what_the_writer_generates(tmp_path):
    generated = default_configs()
    # What git tracks (`make demo` also writes models it does not commit, e.g. qwen3guard-gen, into triton_repo/).
    tracked = subprocess.run(["git", "ls-files", "triton_repo/*/config.pbtxt"], cwd=REPO_ROOT, capture_output=True,
                             text=True)
    configs = ([REPO_ROOT / f for f in tracked.stdout.split()] if tracked.returncode == 0 and tracked.stdout.strip()
               else sorted((REPO_ROOT / "triton_repo").glob("*/config.pbtxt")))
    committed = {p.parent.name: p.read_text(encoding="utf-8") for p in configs}
    assert committed == generated, "spec changed: regenerate with guardrt.runtime.triton_repo.write_default_configs()"
    written = {p.relative_to(tmp_path): p.read_bytes() for p in write_default_configs(tmp_path) if p.parent.name == WARMUP_DIR}
    assert written and all((REPO_ROOT / "triton_repo" / rel).read_bytes() == data for rel, data in written.items())


def test_write_default_configs(tmp_path):
    paths = write_default_configs(tmp_path)
    assert {p.parent.name: p.read_text() for p in paths if p.name == "config.pbtxt"} == default_configs()
    assert set(default_configs()) == {n for s in spec_names(graph="classifier_logits") for n in (s, f"{s}-text")}
    # every model's warm-up request names files that exist
    for name, text in default_configs().items():
        cfg = parse_config(text)
        assert len(cfg.model_warmup) == 1
        for key, inp in cfg.model_warmup[0].inputs.items():
            assert (tmp_path / name / WARMUP_DIR / inp.input_data_file).is_file(), (name, key)


def test_warmup_files_hold_one_valid_row():
    import struct

    for spec_name in spec_names(graph="classifier_logits"):
        spec = get_spec(spec_name)
        files = warmup_files(spec)
        ids = np.frombuffer(files["input_ids"], dtype="<i8")
        mask = np.frombuffer(files["attention_mask"], dtype="<i8")
        assert ids.size == mask.size > 0 and (mask == 1).all() and (ids != spec.pad_token_id).all()
        raw = warmup_files(spec, "text")["payload"]
        size = struct.unpack("<I", raw[:4])[0]
        assert size == len(raw) - 4 and json.loads(raw[4:])  # one BYTES element: length, then the JSON line


def test_text_model_config():
    cfg = parse_config(config_text("intent-safety", "python", name="intent-safety-text", input_kind="text",
                                   max_payload_bytes=1000, profile_budget_s=0))
    pb = __import__("tritonclient.grpc.model_config_pb2", fromlist=["x"])
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("payload", pb.TYPE_STRING, [1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [("result", pb.TYPE_STRING, [1])]
    assert cfg.max_batch_size == get_spec("intent-safety").max_batch_size
    params = config_parameters(cfg)
    assert params["guardrt_input"] == "text" and params["guardrt_spec"] == "intent-safety"
    assert params["max_payload_bytes"] == "1000" and params["profile_budget_s"] == "0.0"
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size == 4 * cfg.max_batch_size
    ids = config_parameters(parse_config(config_text("rejection", "python")))
    assert ids["guardrt_input"] == "ids" and "max_payload_bytes" not in ids
    assert int(ids["max_group_tokens"]) == 64 * 512 // 4
    with pytest.raises(InputError, match="input_kind"):
        config_text("rejection", "python", input_kind="audio")


def _fake_export(root: Path, spec: str = "rejection", external: bool = False) -> Path:
    """A minimal export directory (the layout of runtime/export_dir.py) with placeholder model bytes."""
    (root / "fp32").mkdir(parents=True)
    (root / "fp32" / "model.onnx").write_bytes(b"onnx-bytes")
    if external:
        (root / "fp32" / "model.onnx.data").write_bytes(b"weights")
    (root / "config.json").write_text("{}")
    (root / "tokenizer.json").write_text("{}")
    (root / "guardrt.json").write_text(json.dumps({
        "spec": spec, "architecture": "RobertaForSequenceClassification", "num_labels": 2,
        "precisions": {"fp32": "fp32/model.onnx"},
    }))
    return root


def test_write_model_python_flavor_layout_and_adds_models(tmp_path):
    export = _fake_export(tmp_path / "export", external=True)
    repo = tmp_path / "repo"
    path = write_model(repo, export_dir=export)
    assert path == repo / "rejection"
    assert (path / "1" / "model.onnx").read_bytes() == b"onnx-bytes"
    assert (path / "1" / "model.onnx.data").read_bytes() == b"weights"
    assert "class TritonPythonModel" in (path / "1" / "model.py").read_text()
    assert (path / "1" / "batch_plan.py").is_file() and (path / "1" / "onnx_graph.py").is_file()
    assert (path / "1" / "model.py").stat().st_nlink == 1  # code is copied, never hard-linked to the checkout
    assert (path / "config.pbtxt").read_text() == config_text("rejection", "python")
    assert sorted(p.name for p in (path / WARMUP_DIR).iterdir()) == ["attention_mask", "input_ids"]
    # A second spec in the same repository is added next to the first; rewriting replaces only its own directory.
    other = _fake_export(tmp_path / "export2", spec="intent-safety")
    write_model(repo, export_dir=other)
    write_model(repo, export_dir=export, instance_count=2)
    assert sorted(p.name for p in repo.iterdir()) == ["intent-safety", "rejection"]
    assert parse_config((repo / "rejection" / "config.pbtxt").read_text()).instance_group[0].count == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_write_text_model_carries_tokenizer_and_task_description(tmp_path):
    export = _fake_export(tmp_path / "export", external=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (export / f).write_text(f"{f} contents")
    path = write_text_model(tmp_path / "repo", export, max_payload_bytes=123)
    assert path == tmp_path / "repo" / "rejection-text"
    version = path / "1"
    assert (version / "model.onnx").read_bytes() == b"onnx-bytes" and (version / "model.onnx.data").is_file()
    assert (version / "tokenizer.json").read_text() == "tokenizer.json contents" and (version / "merges.txt").is_file()
    assert not (version / "task_description.txt").exists()  # rejection's preprocessor takes none
    assert (path / WARMUP_DIR / "payload").is_file() and (version / "batch_plan.py").is_file()
    assert config_parameters(parse_config((path / "config.pbtxt").read_text()))["max_payload_bytes"] == "123"
    with pytest.raises(InputError, match="takes no task description"):
        write_text_model(tmp_path / "repo", export, task_description="x")

    from guardrt.runtime.preprocess import default_task_description

    dialog = _fake_export(tmp_path / "export2", spec="intent-safety")
    path = write_text_model(tmp_path / "repo", dialog, name="is-text")
    assert (path / "1" / "task_description.txt").read_text(encoding="utf-8") == default_task_description()
    path = write_text_model(tmp_path / "repo", dialog, task_description="my own task")
    assert (path / "1" / "task_description.txt").read_text(encoding="utf-8") == "my own task"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["intent-safety-text", "is-text", "rejection-text"]
    (dialog / "tokenizer.json").unlink()
    with pytest.raises(ModelFilesError, match="no tokenizer.json"):
        write_text_model(tmp_path / "repo", dialog)


def test_write_model_onnxruntime_external_data_goes_in_a_model_onnx_directory(tmp_path):
    export = _fake_export(tmp_path / "export", external=True)
    path = write_model(tmp_path / "repo", export_dir=export, flavor="onnxruntime")
    assert (path / "1" / "model.onnx" / "model.onnx").read_bytes() == b"onnx-bytes"
    assert (path / "1" / "model.onnx" / "model.onnx.data").read_bytes() == b"weights"
    single = write_model(tmp_path / "repo2", export_dir=_fake_export(tmp_path / "export2"), flavor="onnxruntime")
    assert (single / "1" / "model.onnx").is_file()


def test_write_model_tensorrt_config_alone_or_with_plan(tmp_path):
    path = write_model(tmp_path / "repo", spec="rejection", flavor="tensorrt")
    assert parse_config((path / "config.pbtxt").read_text()).platform == "tensorrt_plan"
    assert not (path / "1" / "model.plan").exists()
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"plan")
    path = write_model(tmp_path / "repo", spec="rejection", flavor="tensorrt", plan_path=plan)
    assert (path / "1" / "model.plan").read_bytes() == b"plan"


def test_write_model_errors(tmp_path):
    export = _fake_export(tmp_path / "export")
    with pytest.raises(ModelFilesError, match="exported for spec 'rejection'|is for spec 'rejection'"):
        write_model(tmp_path / "repo", export_dir=export, spec="intent-safety")
    with pytest.raises(ModelFilesError, match="no 'int8' model|has no int8"):
        write_model(tmp_path / "repo", export_dir=export, precision="int8")
    with pytest.raises(ModelFilesError, match="does not exist"):
        write_model(tmp_path / "repo", export_dir=tmp_path / "missing")
    with pytest.raises(ModelFilesError):
        write_model(tmp_path / "repo", spec="rejection", flavor="tensorrt", plan_path=tmp_path / "none.plan")


def test_repo_cli_one_line_errors(tmp_path, capsys):
    from guardrt.cli import main

    assert main(["repo", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("guardrt repo: error:") and len(err.splitlines()) == 1
    assert main(["repo", "--model", str(_fake_export(tmp_path / "e")), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "rejection (python flavor" in out and "rejection-text (text in" in out
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["rejection", "rejection-text"]
    assert main(["repo", "--model", str(tmp_path / "e"), "--out", str(tmp_path / "r2"), "--no-text"]) == 0
    assert sorted(p.name for p in (tmp_path / "r2").iterdir()) == ["rejection"]


# -- server launcher (no server started) --------------------------------------------------------------------------
def test_backend_dir_holds_python_backend_and_the_stub_for_this_python(tmp_path):
    from guardrt.runtime.server import assemble_backend_dir, find_triton_install

    install = find_triton_install()
    d = assemble_backend_dir(tmp_path / "backends", install=install)
    stub = d / "python" / "triton_python_backend_stub"
    assert stub.read_bytes() == install.stub_for(f"{sys.version_info.major}.{sys.version_info.minor}").read_bytes()
    assert (d / "python" / "libtriton_python.so").is_file() and (d / "python" / "triton_python_backend_utils.py").is_file()
    assert stub.stat().st_mode & 0o111
    mtime = stub.stat().st_mtime_ns
    assert assemble_backend_dir(tmp_path / "backends", install=install) == d and stub.stat().st_mtime_ns == mtime


def test_server_command_binds_localhost_by_default(tmp_path):
    from guardrt.runtime.server import TritonServer, find_triton_install

    server = TritonServer(tmp_path, grpc_port=9001, http_port=9000, metrics_port=9002)
    cmd = server.command(find_triton_install(), tmp_path)
    for flag in ("--grpc-address=127.0.0.1", "--http-address=127.0.0.1", "--metrics-address=127.0.0.1",
                 "--grpc-port=9001", "--http-port=9000", "--metrics-port=9002"):
        assert flag in cmd
    cmd = TritonServer(tmp_path, http_port=None, metrics_port=None, models=("a",)).command(find_triton_install(), tmp_path)
    assert "--allow-http=false" in cmd and "--allow-metrics=false" in cmd
    assert "--model-control-mode=explicit" in cmd and "--load-model=a" in cmd


def test_binary_missing_names_the_serve_extra(monkeypatch):
    import importlib.util

    from guardrt.runtime import server

    real = importlib.util.find_spec
    monkeypatch.setattr(server.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytriton" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"guardrt\[serve\]"):
        server.find_triton_install()


def test_triton_tests_fail_under_ci_when_the_binary_is_missing(monkeypatch):
    """tests/triton skip without tritonserver on a developer machine, but CI=true turns that into a failure."""
    from guardrt.runtime import server
    from tests.triton.binary import triton_install_or_skip

    def missing():
        raise MissingExtraError("the Triton server binary is not installed (nvidia-pytriton missing)")

    monkeypatch.setattr(server, "find_triton_install", missing)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        triton_install_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="^CI=true but the Triton tests cannot run: .*not installed") as err:
        triton_install_or_skip()
    assert "\n" not in str(err.value) and not err.value.pytrace


def test_port_in_use_is_refused_before_starting(tmp_path):
    import socket

    from guardrt.runtime.server import TritonServer, free_port

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(ServerError, match=f"gRPC port {busy} .*already in use"):
            TritonServer(tmp_path, grpc_port=busy, http_port=free_port(), metrics_port=free_port()).start()


def test_load_failures_parses_tritons_reasons():
    from guardrt.runtime.server import load_failures

    log = (
        "E1124 04:50:00.1 123 model_lifecycle.cc:654] \"failed to load 'rejection' version 1: Internal: "
        "onnxruntime: cannot parse model\"\n"
        "| rejection | 1       | UNAVAILABLE: Internal: onnxruntime: cannot parse model |\n"
        "| intent-safety | 1 | READY |\n"
    )
    got = load_failures(log)
    assert list(got) == ["rejection"] and "cannot parse model" in got["rejection"]


def test_client_pads_to_buckets_for_native_flavors_and_ragged_for_python():
    from guardrt.runtime.triton_client import TritonClassifier

    spec = get_spec("rejection")
    client = TritonClassifier("127.0.0.1:1", "rejection", flavor="onnxruntime")
    seqs = [[0] + [5] * n + [2] for n in (3, 40, 3, 100)]
    chunks = client._chunks(seqs)
    assert [c.ids.shape[1] for c in chunks] == [32, 64, 128]
    assert sorted(i for c in chunks for i in c.rows) == [0, 1, 2, 3]
    first = chunks[0]
    assert first.rows == [0, 2] and (first.ids[0, :5] == seqs[0]).all()
    assert (first.ids[0, 5:] == spec.pad_token_id).all() and first.mask.sum() == 10 and first.tokens == 64
    client.flavor = "python"
    (one,) = client._chunks(seqs)
    assert one.rows == [0, 1, 2, 3] and one.ids.shape == (4, 102) and one.tokens == 5 + 42 + 5 + 102
    with pytest.raises(InputError, match="input too large"):
        client._check_ids([[1] * (spec.max_length + 1)])
    with pytest.raises(InputError, match="empty batch"):
        client._check_ids([])
    many = [[0, 5, 2]] * (spec.max_batch_size + 1)
    assert [c.ids.shape[0] for c in client._chunks(many)] == [spec.max_batch_size, 1]
    client.close()


def test_client_reports_a_down_server_in_one_line():
    from guardrt.runtime.server import free_port
    from guardrt.runtime.triton_client import TritonClassifier

    url = f"127.0.0.1:{free_port()}"
    with TritonClassifier(url, "rejection", retries=1, backoff_s=0.01, timeout_s=2) as client:
        with pytest.raises(ServerError, match=f"Triton server at {url} is not reachable") as err:
            client.check_ready()
        assert "\n" not in str(err.value)
        with pytest.raises(ServerError, match="not reachable"):
            client.classify_ids([[0, 5, 2]])


def test_client_reads_flavor_and_input_dtypes_from_the_served_config():
    from guardrt.runtime.triton_client import TritonClassifier

    client = TritonClassifier("127.0.0.1:1", "rejection")
    trt = parse_config(tensorrt_config("rejection", input_data_type="TYPE_INT32"))
    assert client._flavor_from_config(trt) == "tensorrt"
    inputs = client._inputs(np.array([[0, 5, 2]]), np.ones((1, 3), np.int64))
    assert [i.datatype() for i in inputs] == ["INT32", "INT32"]
    other = TritonClassifier("127.0.0.1:1", "intent-safety")
    with pytest.raises(ServerError, match="serves spec 'rejection', not 'intent-safety'"):
        other._flavor_from_config(parse_config(config_text("rejection", "python")))
    client.close()
    other.close()

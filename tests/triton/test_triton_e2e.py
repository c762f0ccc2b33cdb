"""End to end against the real tritonserver: parity with in-process ORT and PyTorch, ragged dynamic batching,
bad requests, and where the server listens."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from guardrt.runtime.errors import InputError, ServerError
from guardrt.runtime.specs import get_spec

from .conftest import SPECS

pytestmark = pytest.mark.triton


def _payloads(spec_name: str, n: int = 12) -> list:
    from guardrt.export.synthetic import long_payload, synthetic_payloads

    # Synthetic inputs plus one far over max_length (exercises truncation to exactly max_length tokens).
    return synthetic_payloads(spec_name, n, seed=2) + [long_payload(spec_name)]


def _torch_logits(checkpoint, sequences) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    out = []
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq], dtype=torch.long)
            out.append(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float().numpy())
    return np.stack(out)


@pytest.mark.parametrize("spec_name", SPECS)
def test_grpc_equals_inprocess_ort_equals_pytorch(spec_name, triton_server, demo_exports, demo_checkpoints):
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.onnxrt import OnnxRunner
    from guardrt.runtime.postprocess import postprocess
    from guardrt.runtime.triton_client import TritonClassifier

    spec = get_spec(spec_name)
    tol = spec.atol["fp32"]
    payloads = _payloads(spec_name)
    with TritonClassifier(triton_server.grpc_url, spec_name, demo_exports[spec_name]) as client:
        client.check_ready()
        assert client.flavor == "python"
        ids = [client.preprocessor.encode(p) for p in payloads]
        # The long payload is cut to (about) max_length: left-trimmed ctx (intent-safety), truncated text (rejection).
        assert spec.max_length - 16 <= max(len(s) for s in ids) <= spec.max_length and len({len(s) for s in ids}) > 3
        grpc_single = np.stack([client.logits_for_ids([s])[0] for s in ids])
        grpc_batch = client.logits_for_ids(ids)  # one request, padded by the client, re-padded by the model
        results = client.classify_batch(payloads)
        if spec.preprocessor == "dialogue_ctx":
            one = client.classify(payloads[0])
        else:
            one = client.classify_text(payloads[0])
    with OnnxRunner(load_export_dir(demo_exports[spec_name]).model_path("fp32")) as runner:
        ort = np.stack([
            runner.infer({"input_ids": np.array([s]), "attention_mask": np.ones((1, len(s)), np.int64)})["logits"][0]
            for s in ids
        ])
    ref = _torch_logits(demo_checkpoints[spec_name], ids)

    d_grpc_ort = float(np.abs(grpc_single - ort).max())
    d_batch = float(np.abs(grpc_batch - grpc_single).max())
    d_ort_torch = float(np.abs(ort - ref).max())
    d_grpc_torch = float(np.abs(grpc_batch - ref).max())
    print(f"\n{spec_name}: max|Δlogit| gRPC-vs-ORT {d_grpc_ort:.2e}, gRPC batch-vs-single {d_batch:.2e}, "
          f"ORT-vs-PyTorch {d_ort_torch:.2e}, gRPC-vs-PyTorch {d_grpc_torch:.2e} (tolerance {tol:g})")
    assert d_grpc_ort <= tol and d_batch <= tol and d_ort_torch <= tol and d_grpc_torch <= tol
    expected = postprocess(spec, ref)
    assert [r["label"] for r in results] == [e["label"] for e in expected]
    assert one["label"] == expected[0]["label"] and set(one) == set(expected[0])
    for got, want in zip(results, expected):
        assert set(got) == set(want)
        for key, value in want.items():
            if isinstance(value, float):
                assert abs(got[key] - value) < 1e-4, key


def test_ragged_requests_are_batched_dynamically(triton_server, demo_exports):
    """32 concurrent requests of different lengths: Triton runs fewer executions than inferences (statistics API),
    and each batched result equals the same request sent alone."""
    from guardrt.export.synthetic import synthetic_payloads
    from guardrt.runtime.triton_client import AsyncTritonClassifier, TritonClassifier

    spec_name = "rejection"
    url = triton_server.grpc_url
    with TritonClassifier(url, spec_name, demo_exports[spec_name]) as client:
        ids = [client.preprocessor.encode(p) for p in synthetic_payloads(spec_name, 32, seed=5)]
        assert len({len(s) for s in ids}) >= 8  # ragged
        single = np.stack([client.logits_for_ids([s])[0] for s in ids])

    async def concurrent():
        async with AsyncTritonClassifier(url, spec_name) as aclient:
            await aclient.check_ready()
            before = (await aclient.statistics())["model_stats"][0]
            rows = await asyncio.gather(*(aclient.logits_for_ids([s]) for s in ids))
            # Triton updates the statistics just after it sends a response: poll briefly until all are counted.
            for _ in range(50):
                after = (await aclient.statistics())["model_stats"][0]
                if int(after.get("inference_count", 0)) - int(before.get("inference_count", 0)) >= len(ids):
                    break
                await asyncio.sleep(0.1)
        return np.concatenate(rows), before, after

    batched, before, after = asyncio.run(concurrent())
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    print(f"\n32 ragged concurrent requests: {inferences} inferences in {executions} executions")
    assert inferences == 32
    assert executions < inferences
    assert float(np.abs(batched - single).max()) <= get_spec(spec_name).atol["fp32"]


def test_async_batch_reports_bad_items_and_classifies_the_rest(triton_server, demo_exports):
    from guardrt.runtime.triton_client import AsyncTritonClassifier

    async def go():
        async with AsyncTritonClassifier(triton_server.grpc_url, "rejection", demo_exports["rejection"]) as c:
            return await c.classify_batch(["Sure! Here you go.", 42, "I'm sorry, I can't help with that."]), \
                await c.classify_text("Of course.")

    results, one = asyncio.run(go())
    assert "label" in results[0] and "label" in results[2] and "label" in one
    assert results[1] == {"error": "item 1: text must be a string, got int: 42"}

    # Constructed outside any event loop and used from two successive loops (each gets its own channel).
    client = AsyncTritonClassifier(triton_server.grpc_url, "rejection", demo_exports["rejection"])
    first = asyncio.run(client.classify_text("Of course."))
    second = asyncio.run(client.classify_text("Of course."))
    assert first == second == one
    asyncio.run(client.close())


def _raw_infer(url, model, arrays, dtype="INT64"):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    inputs = []
    for name, arr in arrays.items():
        t = grpcclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        inputs.append(t)
    try:
        return client.infer(model, inputs, client_timeout=30).as_numpy("logits")
    finally:
        client.close()


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(triton_server, demo_exports):
    from tritonclient.utils import InferenceServerException

    from guardrt.runtime.triton_client import TritonClassifier

    url = triton_server.grpc_url
    spec = get_spec("rejection")
    client = TritonClassifier(url, "rejection", demo_exports["rejection"])
    good_ids = client.preprocessor.encode("Sure! Here is the answer.")
    expected = client.logits_for_ids([good_ids])

    def still_serving():
        assert triton_server.is_running()
        assert np.abs(client.logits_for_ids([good_ids]) - expected).max() == 0

    ok = np.array([[0, 100, 2]], dtype=np.int64)
    cases = {
        "wrong dtype": (dict(input_ids=ok.astype(np.float32), attention_mask=np.ones((1, 3), np.float32)), "FP32",
                        "data-type|datatype"),
        "wrong rank": (dict(input_ids=ok[None], attention_mask=np.ones((1, 1, 3), np.int64)), "INT64", "shape"),
        "over max length": (dict(input_ids=np.full((1, spec.max_length + 1), 100, np.int64),
                                 attention_mask=np.ones((1, spec.max_length + 1), np.int64)), "INT64",
                            "exceeds the model maximum 512"),
        "empty batch": (dict(input_ids=np.zeros((0, 3), np.int64), attention_mask=np.zeros((0, 3), np.int64)),
                        "INT64", "byte size mismatch|batch"),
        "mismatched shapes": (dict(input_ids=ok, attention_mask=np.ones((1, 4), np.int64)), "INT64",
                              "attention_mask"),
        # ONNX Runtime would fail the whole batch on this one...
        "id past the vocabulary": (dict(input_ids=np.array([[0, 2000, 2]]), attention_mask=np.ones((1, 3), np.int64)),
                                   "INT64", r"token id 2000 at position 1 is outside the vocabulary \[0, 2000\)"),
        # ...and silently read this one as the last embedding row.
        "negative id": (dict(input_ids=np.array([[0, -1, 2]]), attention_mask=np.ones((1, 3), np.int64)), "INT64",
                        "token id -1 at position 1 is outside the vocabulary"),
    }
    for what, (arrays, dtype, pattern) in cases.items():
        with pytest.raises(InferenceServerException, match=pattern):
            _raw_infer(url, "rejection", arrays, dtype)
        still_serving()
    with pytest.raises(InferenceServerException, match="unknown model|not found"):
        _raw_infer(url, "no-such-model", dict(input_ids=ok, attention_mask=np.ones_like(ok)))
    still_serving()

    # The guardrt client turns the same situations into one-line guardrt errors.
    with pytest.raises(InputError, match="input too large"):
        client.logits_for_ids([[100] * (spec.max_length + 1)])
    with pytest.raises(InputError, match="empty batch"):
        client.classify_batch([])
    with pytest.raises(ServerError, match="'no-such-model' is not ready"):
        TritonClassifier(url, "rejection", model_name="no-such-model").check_ready()
    with pytest.raises(ServerError, match="serves spec 'rejection', not 'intent-safety'"):
        TritonClassifier(url, "intent-safety", model_name="rejection").check_ready()
    with TritonClassifier(url, "rejection", timeout_s=1e-4, flavor="python") as hurried:
        with pytest.raises(ServerError, match="exceeded its 0.0001s deadline"):
            hurried.logits_for_ids([[0] + [100] * 510 + [2]] * 8)
    still_serving()
    client.close()


def test_server_listens_only_on_localhost_by_default(triton_server):
    import psutil

    listening = [c for c in psutil.Process(triton_server.process.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    ports = {c.laddr.port for c in listening}
    assert {triton_server.grpc_port, triton_server.http_port, triton_server.metrics_port} <= ports
    # gRPC may bind the IPv4-mapped IPv6 form of the same loopback address.
    assert {c.laddr.ip.removeprefix("::ffff:") for c in listening} == {"127.0.0.1"}, listening

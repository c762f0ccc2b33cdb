"""Against the real tritonserver: one bad request never fails the others it is batched with, whether the model's
validation catches it (an out-of-range token id) or ONNX Runtime itself fails on the batch; overload is refused
with one-line errors and ridden out by the client's jittered retries; the queue timeout each request carries is
applied by the server; long inputs finish under a deadline that one big request misses."""
from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import pytest

from guardrt.runtime.errors import ServerError
from guardrt.runtime.specs import get_spec
from guardrt.runtime.triton_repo import PYTHON_INSTANCES

from .conftest import SPECS

pytestmark = pytest.mark.triton

BLOCKER_ROWS = 64  # one request that keeps the model instance busy while the requests under test queue up together


def _ort_logits(export_dir, sequences) -> np.ndarray:
    from guardrt.runtime.export_dir import load_export_dir
    from guardrt.runtime.onnxrt import OnnxRunner

    with OnnxRunner(load_export_dir(export_dir).model_path("fp32")) as runner:
        return np.stack([runner.infer({"input_ids": np.array([s]), "attention_mask": np.ones((1, len(s)), np.int64)})
                         ["logits"][0] for s in sequences])


async def _concurrently(client, sequences, blocker=None, instances=1):
    """Each sequence its own request, all sent at once while `blocker` (one big request per model instance) occupies
    the instances, so the dynamic batcher gathers them into the same execution. [logits row | exception] in order."""
    async def one(seq):
        try:
            return (await client.logits_for_ids([seq]))[0]
        except ServerError as exc:
            return exc

    tasks = []
    if blocker is not None:
        tasks.extend(asyncio.ensure_future(_send_as_one_request(client, blocker)) for _ in range(instances))
        await asyncio.sleep(0.05)
    results = await asyncio.gather(*(one(s) for s in sequences))
    await asyncio.gather(*tasks)
    return results


async def _send_as_one_request(client, rows):
    from guardrt.runtime.preprocess import pad_batch

    ids, mask = pad_batch(rows, client.spec.pad_token_id, client.spec.padding_side)
    return await client.infer({"input_ids": ids, "attention_mask": mask})


async def _stats(client) -> tuple[int, int]:
    s = (await client.statistics())["model_stats"][0]
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


@pytest.mark.parametrize("spec_name", SPECS)
def test_one_bad_request_among_32_concurrent_fails_alone(spec_name, triton_server, demo_exports):
    """31 good requests + 1 with an out-of-range token id, sent concurrently: 31 results equal to in-process ONNX
    Runtime, 1 clear error naming the id, its position and the vocabulary (read from the graph)."""
    from guardrt.export.synthetic import synthetic_payloads
    from guardrt.runtime.triton_client import AsyncTritonClassifier, TritonClassifier

    spec = get_spec(spec_name)
    with TritonClassifier(triton_server.grpc_url, spec_name, demo_exports[spec_name]) as c:
        good = [c.preprocessor.encode(p) for p in synthetic_payloads(spec_name, 31, seed=11)]
    vocab = {"rejection": 2000, "intent-safety": 151936}[spec_name]  # rows of the tiny demos' embedding tables
    bad = list(good[0])
    bad[2] = vocab
    sequences = good[:17] + [bad] + good[17:]
    blocker = [good[0]] * BLOCKER_ROWS if spec_name == "rejection" else [good[0]] * spec.max_batch_size

    async def go():
        async with AsyncTritonClassifier(triton_server.grpc_url, spec_name) as client:
            await client.check_ready()
            before = await _stats(client)
            got = await _concurrently(client, sequences, blocker, instances=PYTHON_INSTANCES)
            await asyncio.sleep(0.3)  # statistics are updated just after the responses
            return got, before, await _stats(client)

    results, before, after = asyncio.run(go())
    executions = after[1] - before[1]
    print(f"\n{spec_name}: 32 concurrent requests (+{PYTHON_INSTANCES} blockers) ran in {executions} executions")
    assert executions < 32  # they were batched together, so the bad one shared executions with good ones
    error = results[17]
    assert isinstance(error, ServerError), error
    assert f"token id {vocab} at position 2 is outside the vocabulary [0, {vocab})" in str(error)
    assert "\n" not in str(error)
    rows = [r for i, r in enumerate(results) if i != 17]
    assert not any(isinstance(r, Exception) for r in rows), [r for r in rows if isinstance(r, Exception)]
    d = float(np.abs(np.stack(rows) - _ort_logits(demo_exports[spec_name], good)).max())
    print(f"{spec_name}: max |Δlogit| of the 31 good results vs in-process ORT: {d:.2e}")
    assert d <= spec.atol["fp32"]


# -- a second server with models configured to fail or overload on purpose -----------------------------------------
OVERLONG = "rejection-overlong"  # validation admits 1,024 tokens; RoBERTa's position table holds 514 (512 + 2)
TINY_QUEUE = "rejection-tinyqueue"  # max_queue_size 1


@pytest.fixture(scope="module")
def special_server(tmp_path_factory, demo_exports):
    """Two copies of the tiny rejection model: OVERLONG, whose config raises max_length past what the graph's
    position embeddings hold (a misconfigured deployment: rows of 513+ tokens pass validation, then make ONNX
    Runtime's position Gather fail for the whole batch) and whose planner is pinned to group every row, and
    TINY_QUEUE, with a queue of one request."""
    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.triton_repo import write_model

    repo = tmp_path_factory.mktemp("special_repo")
    # A planner that groups every row (calls cost, tokens do not; no cap), so the failing row shares its group.
    # One instance: the queue-timeout test needs a request to queue behind the blocker (a second instance would
    # take it at once).
    model = write_model(repo, export_dir=demo_exports["rejection"], name=OVERLONG, instance_count=1,
                        cost_model={"per_call": 1.0, "per_token": 1e-9}, max_group_tokens=64 * 1024)
    config = model / "config.pbtxt"
    text = config.read_text()
    assert '{ key: "max_length" value: { string_value: "512" } }' in text
    config.write_text(text.replace('{ key: "max_length" value: { string_value: "512" } }',
                                   '{ key: "max_length" value: { string_value: "1024" } }'))
    write_model(repo, export_dir=demo_exports["rejection"], name=TINY_QUEUE, max_queue_size=1)
    server = TritonServer(repo, grpc_port=free_port(), http_port=None, metrics_port=None)
    server.start()
    yield server
    server.stop()


def test_an_onnxruntime_failure_on_a_batch_fails_only_its_culprit(special_server, demo_exports):
    """16 requests batched into one execution, one of 600 tokens: ONNX Runtime raises on the group (position id
    out of range); the model re-runs those requests one at a time, so 15 get their logits and only the long one
    gets ONNX Runtime's error."""
    from guardrt.runtime.triton_client import AsyncTritonClassifier

    rng = np.random.default_rng(0)
    good = [[0] + rng.integers(10, 1990, n - 2).tolist() + [2] for n in range(400, 512, 7)][:15]
    bad = [0] + rng.integers(10, 1990, 598).tolist() + [2]
    sequences = good[:5] + [bad] + good[5:]
    blocker = [good[0]] * BLOCKER_ROWS

    async def go():
        async with AsyncTritonClassifier(special_server.grpc_url, "rejection", model_name=OVERLONG) as client:
            await client.check_ready()
            # The long row passes the client's own max_length check only because the model says 1024: send it as
            # the model allows.
            client.spec = dataclasses.replace(get_spec("rejection"), max_length=1024)
            return await _concurrently(client, sequences, blocker)

    results = asyncio.run(go())
    error = results[5]
    assert isinstance(error, ServerError), error
    assert "onnxruntime failed on this request" in str(error) and "out of data bounds" in str(error)
    assert "\n" not in str(error)
    rows = [r for i, r in enumerate(results) if i != 5]
    assert not any(isinstance(r, Exception) for r in rows), [r for r in rows if isinstance(r, Exception)]
    assert float(np.abs(np.stack(rows) - _ort_logits(demo_exports["rejection"], good)).max()) <= 1e-4
    # The server log shows the batch failing in ONNX Runtime with other requests in it, then the re-runs.
    log = special_server.log_text()
    failed = [ln for ln in log.splitlines() if f"guardrt {OVERLONG}: onnxruntime failed on a group" in ln]
    print("\n" + (failed[0] if failed else "no group failure logged"))
    assert failed and any(int(ln.split(" rows from ")[1].split()[0]) >= 2 for ln in failed)


def test_overload_is_refused_in_one_line_and_ridden_out_by_jittered_retries(special_server):
    """The queue policy from the config is what the server applies: with a queue of one, concurrent requests are
    refused at once (UNAVAILABLE 'Exceeds maximum queue size' -> one-line 'server overloaded' errors without
    retries); with retries, the client's jittered backoff gets every request through."""
    import tritonclient.grpc as grpcclient

    from guardrt.runtime.triton_client import AsyncTritonClassifier

    probe = grpcclient.InferenceServerClient(special_server.grpc_url)
    policy = probe.get_model_config(TINY_QUEUE).config.dynamic_batching.default_queue_policy
    probe.close()
    assert policy.max_queue_size == 1 and policy.allow_timeout_override
    assert policy.timeout_action == policy.REJECT and policy.default_timeout_microseconds == 30_000_000

    sequences = [[0] + [100 + i] * 300 + [2] for i in range(24)]
    blocker = [[0] + [7] * 500 + [2]] * BLOCKER_ROWS

    async def go(retries: int):
        async with AsyncTritonClassifier(special_server.grpc_url, "rejection", model_name=TINY_QUEUE,
                                         retries=retries, backoff_s=0.05, max_backoff_s=0.5) as client:
            await client.check_ready()
            return await _concurrently(client, sequences, blocker), client.retried

    refused, _ = asyncio.run(go(retries=0))
    errors = [r for r in refused if isinstance(r, Exception)]
    print(f"\nqueue of 1, no retries: {len(errors)} of {len(sequences)} refused: {errors[0] if errors else None}")
    assert errors and all("server overloaded, request refused" in str(e) and "\n" not in str(e) for e in errors)
    assert all("Exceeds maximum queue size" in str(e) for e in errors)

    served, retried = asyncio.run(go(retries=12))
    print(f"queue of 1, 12 retries: {sum(isinstance(r, Exception) for r in served)} failed, {retried} retries")
    assert not any(isinstance(r, Exception) for r in served), [r for r in served if isinstance(r, Exception)]
    assert retried > 0


def test_the_server_drops_a_request_whose_queue_timeout_expires(special_server):
    """allow_timeout_override: a request carrying a 100 ms timeout, queued behind a long execution, is rejected by
    the server (not computed late); the client maps that to its deadline error."""
    import tritonclient.grpc.aio as aio
    from tritonclient.utils import InferenceServerException

    from guardrt.runtime.triton_client import AsyncTritonClassifier

    async def go():
        async with AsyncTritonClassifier(special_server.grpc_url, "rejection", model_name=OVERLONG) as client:
            await client.check_ready()
            blocker = asyncio.ensure_future(_send_as_one_request(client, [[0] + [7] * 500 + [2]] * BLOCKER_ROWS))
            await asyncio.sleep(0.05)
            raw = aio.InferenceServerClient(special_server.grpc_url)
            ids = np.array([[0, 100, 2]], dtype=np.int64)
            t0 = time.perf_counter()
            try:
                await raw.infer(OVERLONG, client._inputs(ids, np.ones_like(ids)), timeout=100_000, client_timeout=60)
                outcome = None
            except InferenceServerException as exc:
                outcome = exc
            waited = time.perf_counter() - t0
            await raw.close()
            await blocker
            return outcome, waited, client

    exc, waited, client = asyncio.run(go())
    print(f"\nqueued request with a 100 ms timeout: {exc!r} after {waited:.2f}s")
    assert exc is not None and "Request timeout expired" in str(exc.message())
    mapped = client._server_error(exc, "inference")
    assert "exceeded its" in str(mapped) and "deadline" in str(mapped)

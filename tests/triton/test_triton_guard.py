"""Qwen3Guard-Gen on the real tritonserver: `guardrt repo` writes both modes (verdict: python flavor, ragged
dynamic batching; generate: the decoupled model), and `guardrt classify --url` / the thin clients (sync and
asyncio) give the in-process results, bad conversations included (same errors, the rest of the batch answered)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def guard_export():
    from guardrt.export.demo_models import cached_guard_export

    return cached_guard_export("tiny", ("fp32",))


@pytest.fixture(scope="module")
def conversations():
    from guardrt.export.guard_synthetic import guard_messages
    from guardrt.export.synthetic import SPLIT_SEEDS

    return guard_messages(12, seed=SPLIT_SEEDS["heldout"] + 7)


@pytest.fixture(scope="module")
def in_process(guard_export):
    from guardrt.runtime.guard_engine import GuardClassifier

    with GuardClassifier(guard_export, "fp32", intra_op_threads=1) as eng:
        yield eng


@pytest.fixture(scope="module")
def guard_server(tmp_path_factory, guard_export):
    from guardrt.cli import main
    from guardrt.runtime.server import TritonServer, free_port

    repo = tmp_path_factory.mktemp("guard_repo")
    assert main(["repo", "--model", str(guard_export), "--out", str(repo), "--intra-op-threads", "1",
                 "--profile-budget-s", "1"]) == 0
    assert sorted(p.name for p in repo.iterdir() if not p.name.startswith(".")) == [
        "qwen3guard-gen", "qwen3guard-gen-generate"]
    verdict_config = (repo / "qwen3guard-gen" / "config.pbtxt").read_text()
    assert "allow_ragged_batch: true" in verdict_config and "dynamic_batching" in verdict_config
    assert 'name: "verdict"' in verdict_config and "dims: [ 7 ]" in verdict_config
    assert "decoupled: true" in (repo / "qwen3guard-gen-generate" / "config.pbtxt").read_text()
    server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server.start()
    yield server
    log = server.log_text()
    server.stop()
    print(log[-2000:])


def _same(got, want, tol=1e-4):
    """Equal results; verdict probabilities within `tol` (1e-4: the served verdict graph vs the in-process KV prefill;
    the served KV prefill is the same computation, its float rounding differs only where the prefix cache held
    other prompts)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if "probs" in w and "probs" in g:
            for label, p in w["probs"].items():
                assert g["probs"][label] == pytest.approx(p, abs=tol)
            assert g["risk"]["strict"] == pytest.approx(w["risk"]["strict"], abs=tol)
            g = {k: v for k, v in g.items() if k not in ("probs", "risk", "other_mass")}
            w = {k: v for k, v in w.items() if k not in ("probs", "risk", "other_mass")}
        assert g == w


@pytest.mark.parametrize("mode,engine", [("verdict", "kv"), ("verdict", "graph"), ("generate", "kv")])
def test_classify_url_equals_in_process(mode, engine, guard_server, guard_export, in_process, conversations):
    lines = [json.dumps({"messages": m}, ensure_ascii=False) for m in conversations]
    proc = subprocess.run([sys.executable, "-m", "guardrt", "classify", "--spec", "qwen3guard-gen", "--mode", mode,
                           "--verdict-engine", engine, "--url", guard_server.grpc_url,
                           "--tokenizer", str(guard_export)],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    _same(got, json.loads(json.dumps(in_process.classify_batch(conversations, mode=mode))))


def test_thin_clients_sync_and_asyncio(guard_server, guard_export, in_process, conversations):
    from guardrt.export.guard_synthetic import long_messages
    from guardrt.runtime.guard_client import AsyncTritonGuardClient, TritonGuardClient

    batch = [conversations[0], [], [{"role": "user"}], conversations[1], long_messages(40_000), conversations[2],
             ["not an object: the template skips it, as transformers does"]]
    with TritonGuardClient(guard_server.grpc_url, guard_export) as client:
        for mode in ("verdict", "generate"):
            want = in_process.classify_batch(batch, mode=mode)
            got = client.classify_batch(batch, mode=mode)
            _same(got, want)  # the same errors for the bad items, the same answers for the others
            assert [("error" in r) for r in got] == [False, True, True, False, True, False, False]
            _same([client.classify_messages(conversations[3], mode=mode)],
                  [in_process.classify_messages(conversations[3], mode=mode)])

    async def concurrent():
        async with AsyncTritonGuardClient(guard_server.grpc_url, guard_export) as client:
            verdicts = await asyncio.gather(*(client.classify_messages(m) for m in conversations[:6]))
            generated = await asyncio.gather(*(client.classify_messages(m, mode="generate")
                                               for m in conversations[:6]))
            return list(verdicts), list(generated)

    verdicts, generated = asyncio.run(concurrent())
    _same(verdicts, in_process.classify_batch(conversations[:6], mode="verdict"))
    _same(generated, in_process.classify_batch(conversations[:6], mode="generate"))


@pytest.mark.parametrize("engine", ["kv", "graph"])
def test_verdict_engines_equal_in_process(engine, guard_server, guard_export, in_process, conversations):
    """kv (default): verdict requests to the generate model, its prefix cache; graph: the verdict-graph model."""
    from guardrt.runtime.guard_client import AsyncTritonGuardClient, TritonGuardClient

    want = in_process.classify_batch(conversations, mode="verdict")
    assert any(w["consistent"] for w in want)  # (the tiny model also has rows that fall back to generation)
    tol = 1e-5 if engine == "kv" else 1e-4
    with TritonGuardClient(guard_server.grpc_url, guard_export, verdict_engine=engine) as client:
        client.check_ready("verdict")
        _same(client.classify_batch(conversations, mode="verdict"), want, tol)
        _same([client.classify_messages(m) for m in conversations[:4]], want[:4], tol)  # one at a time

    async def concurrent():
        async with AsyncTritonGuardClient(guard_server.grpc_url, guard_export, verdict_engine=engine) as client:
            return list(await asyncio.gather(*(client.classify_messages(m) for m in conversations)))

    _same(asyncio.run(concurrent()), want, tol)


def test_verdict_and_generate_requests_share_the_stream(guard_server, in_process, conversations):
    """Verdict requests answered while generations decode, a bad one refused alone: rows equal in-process."""
    from guardrt.runtime.triton_generate import TritonGenerateClient
    from guardrt.runtime.verdict import kv_verdict_rows

    prompts = [in_process.preprocessor.encode(m) for m in conversations[:4]]
    expected_tokens = in_process.generator.generator.generate(prompts)
    expected_rows = kv_verdict_rows(in_process.generator.generator, prompts)

    async def mixed(client):
        return await asyncio.gather(client.each_async(prompts), client.each_async(prompts, verdict=True),
                                    client.each_async([[5, 10**7], prompts[0]], verdict=True))

    with TritonGenerateClient(guard_server.grpc_url) as client:
        generated, verdicts, with_bad = asyncio.run(mixed(client))
        sync_rows = client.verdict_each(prompts)
    assert [t for t, _ in generated] == expected_tokens
    for rows in (verdicts, sync_rows, with_bad[1:]):
        for (row, error), want in zip(rows, expected_rows):
            assert error is None
            assert row[4:] == want[4:].tolist()  # the greedy ids at the last three positions
            assert row[:4] == pytest.approx(want[:4].tolist(), abs=1e-5)
    assert with_bad[0][0] is None and "outside the vocabulary" in with_bad[0][1]


def test_generate_backend_isolates_a_bad_request(guard_server, in_process, conversations):
    """Ids the client would never send (outside the vocabulary, negative) are refused by the model, one error each;
    requests admitted with them still get their tokens."""
    from guardrt.runtime.triton_generate import TritonGenerateClient

    prompts = [in_process.preprocessor.encode(m) for m in conversations[:3]]
    expected = in_process.generator.generator.generate(prompts)
    with TritonGenerateClient(guard_server.grpc_url) as client:
        outcomes = client.generate_each([prompts[0], [5, 10**7], prompts[1], [-1, 3], prompts[2]])
    assert [o[0] for o in outcomes[::2]] == expected
    for tokens, error in outcomes[1::2]:
        assert tokens is None and "outside the vocabulary" in error


def test_server_down_is_one_line(guard_export):
    from guardrt.runtime.errors import ServerError
    from guardrt.runtime.guard_client import TritonGuardClient
    from guardrt.runtime.server import free_port

    client = TritonGuardClient(f"127.0.0.1:{free_port()}", guard_export, timeout_s=3)
    for mode in ("verdict", "generate"):
        with pytest.raises(ServerError) as err:
            client.check_ready(mode)
        assert "\n" not in str(err.value)
    client.close()

"""Generate mode on the real tritonserver: the decoupled python-backend model batches concurrent requests' decoding
(continuous batching) and returns the token ids of in-process generation."""
from __future__ import annotations

import threading

import pytest

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def guard_export():
    from guardrt.export.demo_models import cached_guard_export

    return cached_guard_export("tiny", ("fp32",))


@pytest.fixture(scope="module")
def prompts(guard_export):
    from transformers import AutoTokenizer

    from guardrt.export.demo_guard_models import render_prompt_ids
    from guardrt.export.guard_synthetic import guard_messages
    from guardrt.export.synthetic import SPLIT_SEEDS

    tok = AutoTokenizer.from_pretrained(str(guard_export))
    return render_prompt_ids(tok, guard_messages(24, seed=SPLIT_SEEDS["heldout"]))


@pytest.fixture(scope="module")
def generate_server(tmp_path_factory, guard_export):
    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.triton_generate import write_generate_model

    repo = tmp_path_factory.mktemp("generate_repo")
    write_generate_model(repo, guard_export, intra_op_threads=1, max_active_rows=8)
    server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server.start()
    yield server
    log = server.log_text()
    server.stop()
    print(log[-2000:])


def test_concurrent_requests_get_in_process_tokens(generate_server, guard_export, prompts):
    from guardrt.runtime.generate import GuardGenerator
    from guardrt.runtime.triton_generate import TritonGenerateClient

    expected = [GuardGenerator(guard_export).generator.generate([p])[0] for p in prompts]
    results: dict[int, list] = {}

    def worker(k):  # three clients, each with its own stream, sending while the others decode
        with TritonGenerateClient(generate_server.grpc_url) as client:
            results[k] = client.generate(prompts[k::3])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [None] * len(prompts)
    for k in range(3):
        got[k::3] = results[k]
    assert got == expected
    with TritonGenerateClient(generate_server.grpc_url) as client:
        assert client.generate(prompts[:2], max_new_tokens=3) == [e[:3] for e in expected[:2]]


def test_bad_request_gets_its_own_error(generate_server, prompts):
    from guardrt.runtime.errors import InputError, ServerError
    from guardrt.runtime.triton_generate import TritonGenerateClient

    with TritonGenerateClient(generate_server.grpc_url) as client:
        with pytest.raises(InputError, match="item 1"):
            client.generate([prompts[0], []])
        with pytest.raises(ServerError, match="item 0: .*max_new_tokens must be 1..128"):
            client.generate([prompts[0]], max_new_tokens=500)
        assert len(client.generate([prompts[1]])[0]) > 0  # the stream still works


def test_server_down_is_one_line():
    from guardrt.runtime.errors import ServerError
    from guardrt.runtime.server import free_port
    from guardrt.runtime.triton_generate import TritonGenerateClient

    with pytest.raises(ServerError):
        with TritonGenerateClient(f"127.0.0.1:{free_port()}", timeout_s=5) as client:
            client.generate([[1, 2, 3]])

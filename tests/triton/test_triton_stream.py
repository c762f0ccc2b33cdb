"""Qwen3Guard-Stream on the real tritonserver: the sequence-batcher model keeps each stream's KV cache, concurrent
streams give the in-process results, errors stay with their stream, idle streams are freed."""
from __future__ import annotations

import asyncio
import io
import json
import threading
import time

import pytest

pytestmark = [pytest.mark.triton, pytest.mark.slow]

IDLE_S = 2.0
MAX_POSITIONS = 200


@pytest.fixture(scope="module")
def stream_export():
    from guardrt.export.demo_stream_models import cached_stream_export

    return cached_stream_export("tiny", ("fp32",))


@pytest.fixture(scope="module")
def conversations(stream_export):
    from guardrt.export.stream_synthetic import stream_examples
    from guardrt.export.synthetic import SPLIT_SEEDS
    from guardrt.runtime.stream import StreamModerator

    messages = [e.messages for e in stream_examples(16, seed=SPLIT_SEEDS["heldout"])]
    with StreamModerator(stream_export) as m:
        ids = [m.conversation_ids(x) for x in messages]
        expected = {k: m.moderate_many(ids, k) for k in (1, 16)}
    return messages, ids, expected


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory, stream_export):
    from guardrt.runtime.server import TritonServer, free_port
    from guardrt.runtime.triton_stream import write_stream_model

    repo = tmp_path_factory.mktemp("stream_repo")
    write_stream_model(repo, stream_export, idle_timeout_s=IDLE_S, intra_op_threads=1, max_positions=MAX_POSITIONS,
                       max_streams=64)
    server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server.start()
    yield server
    log = server.log_text()
    server.stop()
    print(log[-1500:])


@pytest.mark.parametrize("chunk", [1, 16])
def test_concurrent_streams_equal_in_process(stream_server, stream_export, conversations, chunk):
    from guardrt.runtime.triton_stream import StreamClient

    _, ids, expected = conversations
    with StreamClient(stream_server.grpc_url, stream_export) as client:
        assert client.moderate_many(ids, chunk) == expected[chunk]


def test_handles_from_threads_and_bytes_per_stream(stream_server, stream_export, conversations):
    """Several clients, one thread each, feeding token by token interleaved: each handle's labels are in-process'."""
    from guardrt.runtime.stream import StreamGraph
    from guardrt.runtime.stream_protocol import prompt_end_index
    from guardrt.runtime.triton_stream import StreamClient

    messages, ids, expected = conversations
    per_token = StreamGraph(stream_export / "stream" / "fp32" / "model.onnx").bytes_per_token()
    got: dict[int, dict] = {}
    sizes: dict[int, int] = {}

    def worker(i):
        with StreamClient(stream_server.grpc_url, stream_export) as client:
            end = prompt_end_index(ids[i])
            handle = client.open_stream(messages[i][:-1])  # messages so far: the prompt
            for t in ids[i][end + 1:]:
                handle.feed([t])
            sizes[i] = handle.stream_bytes
            handle.close()
            got[i] = handle.result()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        assert got[i] == expected[1][i]
        assert sizes[i] == len(ids[i]) * per_token  # the KV bytes the server holds for the stream


def test_asyncio_client(stream_server, stream_export, conversations):
    from guardrt.runtime.stream_protocol import prompt_end_index
    from guardrt.runtime.triton_stream import AsyncStreamClient

    messages, ids, expected = conversations

    async def one(client, i):
        end = prompt_end_index(ids[i])
        handle = await client.open_stream(ids[i][:end + 1])
        rest = ids[i][end + 1:]
        for lo in range(0, len(rest), 5):
            await handle.feed(rest[lo:lo + 5])
        await handle.close()
        return handle.result()

    async def run():
        with AsyncStreamClient(stream_server.grpc_url, stream_export) as client:
            return await asyncio.gather(*(one(client, i) for i in range(6)))

    assert asyncio.run(run()) == expected[1][:6]


def test_feeding_text(stream_server, stream_export, conversations):
    from guardrt.runtime.stream import StreamModerator
    from guardrt.runtime.triton_stream import StreamClient

    messages, _, _ = conversations
    with StreamModerator(stream_export) as m, StreamClient(stream_server.grpc_url, stream_export) as client:
        handle = client.open_stream(messages[0][:-1])
        res = handle.feed("Sure, here is how")
        sid, _ = m.open(client.tokens.prompt_ids(messages[0][:-1]))
        local = m.feed(sid, m.text_ids("Sure, here is how"))
        assert handle.tokens == m.text_ids("Sure, here is how") and len(res["risk"]) == len(handle.tokens)
        assert (res["risk"], res["category"]) == (local["risk"], local["category"])
        handle.close()


def test_errors_stay_with_their_stream(stream_server, stream_export, conversations):
    from guardrt.runtime.errors import InputError
    from guardrt.runtime.triton_stream import StreamClient

    messages, ids, expected = conversations
    with StreamClient(stream_server.grpc_url, stream_export) as client:
        good = client.open_stream(messages[0][:-1])
        bad = client.open_stream(messages[1][:-1])
        with pytest.raises(InputError, match="out of the vocabulary"):
            bad.feed([151936])
        with pytest.raises(InputError, match="exceed max_position_embeddings 200"):
            bad.feed([5] * MAX_POSITIONS)
        assert len(bad.feed([5])["risk"]) == 1  # still usable
        bad.close()
        with pytest.raises(InputError, match="unknown or closed"):
            bad.feed([5])
        with pytest.raises(InputError, match="no token ids"):
            good.feed([])
        good.feed(ids[0][len(client.tokens.prompt_ids(messages[0][:-1])):])
        good.close()
        assert good.result() == expected[1][0]  # the failures around it changed nothing


def test_idle_stream_of_a_vanished_client_is_freed(stream_server, stream_export, conversations):
    from guardrt.runtime.errors import InputError
    from guardrt.runtime.triton_stream import StreamClient

    messages, _, _ = conversations
    gone = StreamClient(stream_server.grpc_url, stream_export)
    for i in range(3):
        gone.open_stream(messages[i][:-1]).feed([198, 151644])
    gone.close()  # disappears without END
    with StreamClient(stream_server.grpc_url, stream_export) as client:
        probe = client.open_stream(messages[3][:-1])
        live_before = client.transport.call(probe.sequence_id, [5])["live_streams"]
        assert live_before >= 4
        time.sleep(IDLE_S * 2.5)
        fresh = client.open_stream(messages[4][:-1])
        assert client.transport.call(fresh.sequence_id, [5])["live_streams"] == 1  # only `fresh`
        with pytest.raises(InputError, match="unknown or closed"):
            probe.feed([5])
        fresh.close()
    assert "idle stream(s)" in stream_server.log_text()


def test_cli_stream_url(stream_server, stream_export, conversations, monkeypatch, capsys):
    from guardrt.cli import main

    messages, _, expected = conversations
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(json.dumps({"messages": m}) + "\n" for m in messages[:5])))
    rc = main(["stream", "--spec", "qwen3guard-stream", "--url", stream_server.grpc_url, "--tokenizer",
               str(stream_export), "--chunk", "16"])
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0 and out == expected[16][:5]

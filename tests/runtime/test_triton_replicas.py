"""The replica layer without a server: least-outstanding choice, failover on UNAVAILABLE (each request's answer
exactly once, in its own slot), busy vs down replicas, and the one-line error when no replica answers. The real
servers (one killed mid-load) are in tests/triton/test_triton_failover.py."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")


class _Result:
    def __init__(self, logits):
        self.logits = logits

    def as_numpy(self, name):
        return self.logits


class FakeReplicaClient:
    """Answers each request with logits derived from its token ids (so a wrong slot shows), or fails as told."""

    def __init__(self, url, fail_with=None, delay_s=0.0):
        self.url, self.fail_with, self.delay_s = url, fail_with, delay_s
        self.calls = 0
        self.lock = threading.Lock()

    def _answer(self, inputs):
        with self.lock:
            self.calls += 1
        if self.fail_with is not None:
            from tritonclient.utils import InferenceServerException

            status, msg = self.fail_with
            raise InferenceServerException(msg, status=status)
        ids = inputs[0]._fake_ids * inputs[0]._fake_mask  # padding (any pad id) counts for nothing
        return _Result(np.stack([ids.sum(axis=1), -ids.sum(axis=1)], axis=1).astype(np.float32))

    def infer(self, model_name, inputs, **limits):
        import time

        time.sleep(self.delay_s)
        return self._answer(inputs)

    def close(self):
        pass


class AsyncFakeReplicaClient(FakeReplicaClient):
    async def infer(self, model_name, inputs, **limits):
        await asyncio.sleep(self.delay_s)
        return self._answer(inputs)

    async def close(self):
        pass


def _replicated(cls, fakes, **kwargs):
    """A replicated client whose replicas are the fakes, all healthy, python flavor (probes never run)."""
    client = cls([f.url for f in fakes], "rejection", flavor="python", retries=2, backoff_s=0.01, **kwargs)
    by_url = {f.url: f for f in fakes}
    client._client_of = lambda replica: by_url[replica.url]
    real_inputs = client._inputs

    def inputs(ids, mask):  # keep the ids where the fake can read them back
        out = real_inputs(ids, mask)
        out[0]._fake_ids, out[0]._fake_mask = np.asarray(ids), np.asarray(mask)
        return out

    client._inputs = inputs
    for replica in client.replicas.replicas:
        replica.healthy, replica.reason = True, "ready"
    client.replicas.checked = True
    return client


def _expected(seqs):
    return [np.array([sum(s), -sum(s)], dtype=np.float32) for s in seqs]


def test_least_outstanding_choice_rotates_ties_and_skips_down_replicas():
    from guardrt.runtime.triton_replicas import ReplicaSet

    rs = ReplicaSet(["a", "b", "c"], probe=lambda r: None)
    for r in rs.replicas:
        r.healthy = True
    first = [rs.acquire() for _ in range(3)]
    assert [r.url for r in first] == ["a", "b", "c"]  # equal load: round robin
    rs.release(first[0], answered=True)
    assert rs.acquire().url == "a"  # the only one with no outstanding request
    rs.mark_down(rs.replicas[1], "gone")
    rs.release(first[2], answered=True)
    assert rs.acquire().url == "c"
    assert rs.acquire(exclude={rs.replicas[0], rs.replicas[2]}) is None  # b is down
    with pytest.raises(Exception, match="more than once"):
        ReplicaSet(["a", "a"], probe=lambda r: None)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_unavailable_fails_over_and_each_answer_arrives_once_in_its_slot(mode):
    from guardrt.runtime.triton_replicas import AsyncReplicatedTritonClassifier, ReplicatedTritonClassifier

    fake = AsyncFakeReplicaClient if mode == "async" else FakeReplicaClient
    dead = fake("127.0.0.1:1", fail_with=("StatusCode.UNAVAILABLE", "Socket closed"))
    alive = fake("127.0.0.1:2", delay_s=0.001)
    cls = AsyncReplicatedTritonClassifier if mode == "async" else ReplicatedTritonClassifier
    client = _replicated(cls, [dead, alive], max_in_flight=4, max_request_tokens=8)
    seqs = [[i + 1] * (1 + i % 5) for i in range(40)]
    if mode == "async":
        async def go():
            return await asyncio.gather(*(client.logits_for_ids([s]) for s in seqs))
        got = [x[0] for x in asyncio.run(go())]
    else:
        got = list(client.logits_for_ids(seqs))
    for g, e in zip(got, _expected(seqs)):
        np.testing.assert_array_equal(g, e)
    counters = client.replicas.counters()
    assert dead.calls >= 1 and counters["127.0.0.1:1"]["answered"] == 0
    assert not counters["127.0.0.1:1"]["healthy"] and "not reachable" in client.replicas.replicas[0].reason
    assert client.failovers == dead.calls  # each failed attempt re-sent once, to the live replica
    assert counters["127.0.0.1:2"]["answered"] == alive.calls  # one answer per request, none dropped
    assert all(c["outstanding"] == 0 for c in counters.values())


def test_a_full_queue_moves_the_request_but_keeps_the_replica_up():
    from guardrt.runtime.triton_replicas import ReplicatedTritonClassifier

    busy = FakeReplicaClient("127.0.0.1:1", fail_with=("StatusCode.UNAVAILABLE", "Exceeds maximum queue size"))
    free = FakeReplicaClient("127.0.0.1:2")
    client = _replicated(ReplicatedTritonClassifier, [busy, free])
    for _ in range(2):
        np.testing.assert_array_equal(client.logits_for_ids([[3, 4]])[0], [7, -7])
    counters = client.replicas.counters()
    assert counters["127.0.0.1:1"]["healthy"] and counters["127.0.0.1:1"]["failed"] == busy.calls >= 1
    assert counters["127.0.0.1:2"]["answered"] == 2 and client.failovers == busy.calls


def test_a_refused_request_is_not_re_sent_elsewhere():
    from guardrt.runtime.errors import ServerError
    from guardrt.runtime.triton_replicas import ReplicatedTritonClassifier

    bad = FakeReplicaClient("127.0.0.1:1", fail_with=("StatusCode.INVALID_ARGUMENT", "bad shape"))
    other = FakeReplicaClient("127.0.0.1:2")
    client = _replicated(ReplicatedTritonClassifier, [bad, other])
    with pytest.raises(ServerError, match="on 127.0.0.1:1 failed: bad shape"):
        client.logits_for_ids([[1]])
    assert other.calls == 0 and client.failovers == 0


def test_no_replica_left_is_one_line_naming_each():
    from guardrt.runtime.errors import ServerError
    from guardrt.runtime.triton_replicas import ReplicatedTritonClassifier

    fakes = [FakeReplicaClient(f"127.0.0.1:{p}", fail_with=("StatusCode.UNAVAILABLE", "Connection refused"))
             for p in (1, 2)]
    client = _replicated(ReplicatedTritonClassifier, fakes)
    with pytest.raises(ServerError) as info:
        client.logits_for_ids([[1]])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("inference: no Triton replica is reachable")
    assert "127.0.0.1:1: Triton server at 127.0.0.1:1 is not reachable" in msg and "127.0.0.1:2:" in msg


def test_check_ready_with_nothing_listening_is_one_line():
    from guardrt.runtime.errors import ServerError
    from guardrt.runtime.server import free_port
    from guardrt.runtime.triton_replicas import ReplicatedTritonClassifier

    urls = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    client = ReplicatedTritonClassifier(urls, "rejection")
    with pytest.raises(ServerError) as info:
        client.check_ready()
    msg = str(info.value)
    assert msg.startswith("none of the 2 Triton servers is ready: ") and "\n" not in msg
    assert all(u in msg for u in urls)
    client.close()


def test_a_first_request_without_check_ready_probes_first():
    """A client given its flavor skips the base class's readiness call: its first request probes the replicas
    (here: nothing listens, so one line, not a hang)."""
    from guardrt.runtime.errors import ServerError
    from guardrt.runtime.server import free_port
    from guardrt.runtime.triton_replicas import ReplicatedTritonClassifier

    client = ReplicatedTritonClassifier([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], "rejection",
                                        flavor="python")
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_raised(client.logits_for_ids, [[1, 2]])), daemon=True)
    worker.start()
    worker.join(timeout=20)
    client.close()
    assert outcome and isinstance(outcome[0], ServerError), outcome
    assert str(outcome[0]).startswith("none of the 2 Triton servers is ready")


def _raised(fn, *args):
    try:
        fn(*args)
    except Exception as exc:
        return exc
    return None

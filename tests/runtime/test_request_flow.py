"""How a client call becomes requests (runtime/request_flow.py) and how the clients keep to it: requests sized by
tokens, in-flight bounds (requests and tokens) in the sync and asyncio clients, jittered backoff, per-item isolation
of a refused request. No server: the sending is a stand-in that records what is in flight."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from guardrt.runtime.errors import InputError, ServerError
from guardrt.runtime.specs import get_spec


def test_client_sizes_requests_by_tokens():
    """No request carries more than max_request_tokens (default: max_length) tokens, so none holds more work than
    one full-length row; a row that long goes alone."""
    from guardrt.runtime.triton_client import TritonClassifier

    spec = get_spec("intent-safety")
    client = TritonClassifier("127.0.0.1:1", spec, flavor="python")
    assert client.max_request_tokens == spec.max_length and client.max_in_flight_tokens == spec.max_length
    seqs = [[7] * n for n in (4088, 4088, 100, 2000, 1900, 10, 4096)]
    chunks = client._chunks(seqs)
    assert [c.rows for c in chunks] == [[0], [1], [2, 3, 4, 5], [6]]
    assert all(c.tokens <= spec.max_length for c in chunks)
    client.flavor = "onnxruntime"  # native: padded (bucket) tokens count
    chunks = client._chunks([[7] * 1000] * 5 + [[7] * 100] * 40)
    assert [len(c.rows) for c in chunks] == [16, 16, 8, 4, 1]  # bucket 128: 16-row cap; bucket 1024: 4 x 1024
    assert all(c.tokens <= spec.max_length for c in chunks)
    client.close()


def test_in_flight_admission_bounds_requests_and_tokens():
    from guardrt.runtime.request_flow import InFlightLimit

    flight = InFlightLimit(max_requests=3, max_tokens=100)
    assert flight.admits(500)  # nothing in flight: an oversized request still goes, alone
    flight.take(500)
    assert not flight.admits(1)
    flight.give(500)
    for _ in range(3):
        assert flight.admits(10)
        flight.take(10)
    assert not flight.admits(10)  # request bound
    flight.give(10)
    assert flight.admits(70) and not flight.admits(81)  # token bound: 20 in flight
    assert flight.peak_requests == 3 and flight.peak_tokens == 500


def test_client_backoff_is_exponential_jittered_and_capped():
    from guardrt.runtime.triton_client import TritonClassifier

    a = TritonClassifier("127.0.0.1:1", "rejection", backoff_s=0.1, max_backoff_s=0.5, seed=1)
    b = TritonClassifier("127.0.0.1:1", "rejection", backoff_s=0.1, max_backoff_s=0.5, seed=2)
    for attempt, full in enumerate([0.1, 0.2, 0.4, 0.5, 0.5]):
        got = [a.retry.delay(attempt) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in got), (attempt, min(got), max(got))
        assert max(got) - min(got) > full / 4  # spread, not a fixed delay
    # Two clients refused at the same moment do not retry in lockstep.
    assert [round(a.retry.delay(2), 6) for _ in range(5)] != [round(b.retry.delay(2), 6) for _ in range(5)]
    with pytest.raises(InputError, match="max_in_flight"):
        TritonClassifier("127.0.0.1:1", "rejection", max_in_flight=0)
    a.close()
    b.close()


def _recording_run(delay_s: float, fail_row: int | None = None):
    """A stand-in for sending one request: sleeps, records the requests and tokens in flight at once."""
    state = {"now": 0, "tokens": 0, "peak": 0, "peak_tokens": 0, "order": []}
    lock = threading.Lock()

    def enter(req):
        with lock:
            state["now"] += 1
            state["tokens"] += req.tokens
            state["peak"] = max(state["peak"], state["now"])
            state["peak_tokens"] = max(state["peak_tokens"], state["tokens"])
            state["order"].append(req.rows[0])

    def leave(req):
        with lock:
            state["now"] -= 1
            state["tokens"] -= req.tokens

    def run(req):
        enter(req)
        time.sleep(delay_s)
        leave(req)
        if fail_row in req.rows:
            raise ServerError("refused")
        return np.full((len(req.rows), 2), float(req.rows[0]))

    async def run_async(req):
        enter(req)
        await asyncio.sleep(delay_s)
        leave(req)
        if fail_row in req.rows:
            raise ServerError("refused")
        return np.full((len(req.rows), 2), float(req.rows[0]))

    return state, run, run_async


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_clients_keep_in_flight_requests_and_tokens_bounded(mode):
    from guardrt.runtime.request_flow import one_row_requests
    from guardrt.runtime.triton_client import AsyncTritonClassifier, TritonClassifier

    spec = get_spec("rejection")
    cls = TritonClassifier if mode == "sync" else AsyncTritonClassifier
    client = cls("127.0.0.1:1", spec, flavor="python", max_in_flight=4, max_in_flight_tokens=1000)
    short = [[5] * 20] * 30  # 30 requests of 20 tokens: the request bound (4) binds
    long = [[5] * 400] * 6  # 6 requests of 400 tokens: the token bound (1000 -> 2 at once) binds
    for seqs, peak in ((short, 4), (long, 2)):
        reqs = one_row_requests(seqs, range(len(seqs)), spec, ragged=True)
        state, run, run_async = _recording_run(0.02)
        if mode == "sync":
            outcomes = client._bounded(reqs, run)
        else:
            outcomes = asyncio.run(client._bounded(reqs, run_async))
        assert state["peak"] == peak and client.last_in_flight.peak_requests == peak
        assert state["peak_tokens"] <= 1000 or peak == 1
        assert [o[0][0, 0] for o in outcomes] == [float(i) for i in range(len(seqs))]  # results in request order
    # stop_on_error: after a failure no new request starts; the first error is what the caller raises
    reqs = one_row_requests(short, range(len(short)), spec, ragged=True)
    state, run, run_async = _recording_run(0.01, fail_row=13)
    outcomes = client._bounded(reqs, run, True) if mode == "sync" else asyncio.run(
        client._bounded(reqs, run_async, True))
    assert isinstance(outcomes[13][1], ServerError)
    assert len(state["order"]) < len(short) and outcomes[-1] is None
    if mode == "sync":
        client.close()


def test_a_refused_multi_item_request_is_re_sent_item_by_item():
    """classify_batch: a request of several items refused for its content (INVALID_ARGUMENT / INTERNAL) is not
    failed as a whole: its items are listed to be re-sent alone. Overload or deadline failures are not split."""
    from guardrt.runtime.request_flow import Request
    from guardrt.runtime.triton_client import TritonClassifier

    def err(status):
        e = ServerError(status)
        e.status = status
        return e

    reqs = [Request([0, 1], None, None, 0), Request([2, 3], None, None, 0), Request([4, 5], None, None, 0),
            Request([6], None, None, 0)]
    outcomes = [(np.ones((2, 2)), None), (None, err("StatusCode.INVALID_ARGUMENT")),
                (None, err("StatusCode.UNAVAILABLE")), (None, err("StatusCode.INTERNAL"))]
    good = [10, 11, 12, 13, 14, 15, 16]
    logits, failures, alone = TritonClassifier._collect(good, reqs, outcomes)
    assert set(logits) == {10, 11} and alone == [2, 3]
    assert set(failures) == {14, 15, 16}  # overload: not split; a single item: its own failure already
    _, failures, alone = TritonClassifier._collect(good, reqs, outcomes, split=False)
    assert alone == [] and set(failures) == {12, 13, 14, 15, 16}

"""How a client call becomes requests to Triton: request sizing, in-flight admission, retries and the deadline.

No I/O here (the Triton clients in `triton_client.py` do the sending); every policy is a small pure piece:

* `plan_requests` sizes requests to the deadline: at most `max_request_tokens` tokens (default: the spec's
  max_length, so no request holds more work than one full-length row) and max_batch_size rows each; native flavors
  count each row at its padded length bucket, one bucket per request.
* `InFlightLimit` admits the requests of one call: at most `max_requests` and `max_tokens` tokens at once (default
  max_length tokens: a request waits behind less than one full-length row of its own call).
* `RetryPolicy` says whether and when to retry: UNAVAILABLE (server starting, queue full) and RESOURCE_EXHAUSTED, at
  most `retries` times, after an exponential, jittered wait, never past the request's end-to-end deadline; and what
  each attempt may use of it (gRPC `client_timeout` and Triton's per-request queue `timeout`).
"""
from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from guardrt.runtime.preprocess import pad_batch
from guardrt.runtime.specs import ModelSpec

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "InFlightLimit", "Request", "RetryPolicy", "one_row_requests", "plan_requests"]

DEFAULT_MAX_IN_FLIGHT = 16  # requests of one call in flight: enough to fill the dynamic batcher's preferred sizes
RETRYABLE = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")
# Triton's messages (status UNAVAILABLE) for a full queue and for a request whose queue timeout expired.
QUEUE_FULL = "exceeds maximum queue size"
QUEUE_TIMEOUT = "request timeout expired"


class Request:
    """One request of a call: the rows (indices into the call's sequences) it carries, padded, and its token cost."""

    __slots__ = ("rows", "ids", "mask", "tokens")

    def __init__(self, rows: list[int], ids: np.ndarray, mask: np.ndarray, tokens: int):
        self.rows, self.ids, self.mask, self.tokens = rows, ids, mask, tokens


def _request(spec: ModelSpec, sequences, rows: list[int], width: int | None, tokens: int) -> Request:
    ids, mask = pad_batch([sequences[i] for i in rows], spec.pad_token_id, spec.padding_side, width)
    return Request(rows, ids, mask, tokens)


def plan_requests(sequences: Sequence[Sequence[int]], spec: ModelSpec, ragged: bool,
                  max_request_tokens: int) -> list[Request]:
    """The requests covering `sequences`, in order: at most max_batch_size rows and `max_request_tokens` tokens
    each (a single longer row goes alone). `ragged` (python flavor): rows keep their own length (the model re-pads);
    otherwise each row is padded to its length bucket and counted at that length, one bucket per request."""
    if ragged:
        runs: list[tuple[int | None, list[int]]] = [(None, list(range(len(sequences))))]
    else:
        by_bucket: dict[int, list[int]] = {}
        for i, seq in enumerate(sequences):
            by_bucket.setdefault(spec.bucket_for(len(seq)), []).append(i)
        runs = sorted(by_bucket.items())
    out: list[Request] = []
    for width, rows in runs:
        current: list[int] = []
        tokens = 0
        for i in rows:
            cost = width or len(sequences[i])
            if current and (len(current) == spec.max_batch_size or tokens + cost > max_request_tokens):
                out.append(_request(spec, sequences, current, width, tokens))
                current, tokens = [], 0
            current.append(i)
            tokens += cost
        if current:
            out.append(_request(spec, sequences, current, width, tokens))
    return out


def one_row_requests(sequences: Sequence[Sequence[int]], rows, spec: ModelSpec, ragged: bool) -> list[Request]:
    """One request per row in `rows` (indices into `sequences`)."""
    out = []
    for i in rows:
        width = None if ragged else spec.bucket_for(len(sequences[i]))
        out.append(_request(spec, sequences, [i], width, width or len(sequences[i])))
    return out


class InFlightLimit:
    """Admission of the requests of one call: at most `max_requests` and `max_tokens` tokens in flight at once (a
    request larger than `max_tokens` still goes, alone)."""

    def __init__(self, max_requests: int, max_tokens: int):
        self.max_requests, self.max_tokens = max(1, int(max_requests)), max(1, int(max_tokens))
        self.requests = self.tokens = 0
        self.peak_requests = self.peak_tokens = 0  # diagnostics (tests)

    def admits(self, tokens: int) -> bool:
        return self.requests == 0 or (self.requests < self.max_requests and self.tokens + tokens <= self.max_tokens)

    def take(self, tokens: int) -> None:
        self.requests += 1
        self.tokens += tokens
        self.peak_requests = max(self.peak_requests, self.requests)
        self.peak_tokens = max(self.peak_tokens, self.tokens)

    def give(self, tokens: int) -> None:
        self.requests -= 1
        self.tokens -= tokens


class RetryPolicy:
    """Bounded retries with exponential, jittered backoff inside one end-to-end deadline per request."""

    def __init__(self, retries: int = 3, backoff_s: float = 0.2, max_backoff_s: float = 5.0, seed: int | None = None):
        self.retries = max(0, int(retries))
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._rng = random.Random(seed)

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (0-based): drawn from [d/2, d], d = backoff_s x 2^attempt capped
        at max_backoff_s. The jitter keeps clients refused together (a full queue) from returning together."""
        full = min(self.max_backoff_s, self.backoff_s * (2 ** attempt))
        return full / 2 + self._rng.uniform(0.0, full / 2)

    def next_delay(self, status: str, message: str, attempt: int, end: float) -> float | None:
        """Seconds to wait before retrying a failure, or None when it must not be retried: not retryable (a queue
        timeout is the deadline passing, not a busy server), out of retries, or the wait would cross `end`."""
        if status not in RETRYABLE or QUEUE_TIMEOUT in message.lower() or attempt >= self.retries:
            return None
        wait = self.delay(attempt)
        return wait if time.monotonic() + wait < end else None

    @staticmethod
    def attempt_limits(end: float, queue_timeout: bool) -> dict[str, Any] | None:
        """What an attempt may use of the deadline `end`: gRPC `client_timeout` (s) and, for inference, Triton's
        per-request queue `timeout` (us; the generated configs allow the override). None when `end` has passed."""
        left = end - time.monotonic()
        if left <= 0:
            return None
        limits: dict[str, Any] = {"client_timeout": left}
        if queue_timeout:
            limits["timeout"] = max(1, int(left * 1_000_000))
        return limits

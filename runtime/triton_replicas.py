"""Replicated Triton: one client over several tritonserver replicas serving the same model.

`ReplicatedTritonClassifier` (sync) and `AsyncReplicatedTritonClassifier` (asyncio) have the methods of
`TritonClassifier` / `AsyncTritonClassifier` (they subclass them and replace only how one request is sent, so request
sizing, in-flight bounds and per-item errors are the same), over a list of URLs:

* Health: `check_ready` probes every replica (server live, model ready, model config: the served flavor, which must
  be the same everywhere) and fails, with one line naming each URL's reason, only when none is ready. A background
  thread then probes every replica each `health_interval_s`. A replica that fails a request with UNAVAILABLE
  (connection refused or reset, server shutting down) is marked down at once and used again only after a probe
  passes; its channel is then replaced, so gRPC's reconnect backoff does not keep a restarted server idle.
* Balancing: each request goes to the healthy replica with the fewest outstanding requests (ties rotate).
* Failover: a request refused with UNAVAILABLE or RESOURCE_EXHAUSTED (a full queue: the replica stays up) is re-sent
  at once to another healthy replica; when every healthy replica has refused it or none is healthy, it waits
  (jittered exponential backoff, `retries` rounds) for a probe to bring one back. All of it fits in the request's
  end-to-end deadline `timeout_s`; a request whose deadline passes is not re-sent.
* Exactly once: classification is idempotent (the same token ids give the same logits; the served models keep no
  state between requests), so re-sending a request whose failed attempt may have run on the dead server is safe.
  Each request's answer is the return value of the one attempt that succeeded (a failed attempt returns nothing),
  and it is written only to that request's own rows (`request_flow.Request.rows`): no answer is lost, none is
  delivered twice, none lands in another item's slot.

Imports neither torch nor transformers; tritonclient comes from the `client` extra.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from guardrt.runtime.errors import InputError, ServerError
from guardrt.runtime.request_flow import QUEUE_FULL, QUEUE_TIMEOUT, RETRYABLE
from guardrt.runtime.triton_client import AsyncTritonClassifier, TritonClassifier, _message, _status

__all__ = ["ReplicatedTritonClassifier", "AsyncReplicatedTritonClassifier", "Replica", "ReplicaSet",
           "triton_classifier", "warn_down_replicas", "DEFAULT_HEALTH_INTERVAL_S"]

DEFAULT_HEALTH_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0  # one health probe (three RPCs) on one replica
# Channel options: tritonclient's defaults (it drops them all when any is given) plus a short reconnect backoff and
# a channel-local subchannel pool, so a new channel to a restarted server connects at once.
_MAX_MESSAGE = 2**31 - 1
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", False),
    ("grpc.http2.max_pings_without_data", 2),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass(eq=False)
class Replica:
    """One server: its health, and counters (attempts sent, answered, failed; outstanding now)."""

    url: str
    healthy: bool = False
    reason: str = "not checked yet"
    outstanding: int = 0
    sent: int = 0
    answered: int = 0
    failed: int = 0
    generation: int = 0  # bumped each time the replica comes back up: its clients open a new channel
    down_at: float | None = None  # monotonic time it was last marked down, by a failed request or probe (diagnostics)
    up_at: float | None = None  # monotonic time a probe last found it ready after it was not (diagnostics)


class ReplicaSet:
    """The replicas of one client: least-outstanding choice, health state, and the background prober.

    `probe(replica)` returns normally when the replica is ready and raises ServerError (its reason) otherwise."""

    def __init__(self, urls: Sequence[str], probe: Callable[[Replica], None],
                 health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S):
        urls = list(urls)
        if not urls:
            raise InputError("at least one Triton URL is needed")
        repeated = sorted({u for u in urls if urls.count(u) > 1})
        if repeated:
            raise InputError(f"Triton URL given more than once: {', '.join(repeated)}")
        self.replicas = [Replica(u) for u in urls]
        self._probe = probe
        self.health_interval_s = float(health_interval_s)
        self._lock = threading.Lock()
        self._turn = 0
        self.failovers = 0  # attempts re-sent elsewhere after a failure (diagnostics)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checked = False  # every replica probed once (check_ready); requests wait for it

    # -- choice --------------------------------------------------------------------------------------------------
    def acquire(self, exclude=()) -> Replica | None:
        """The healthy replica (not in `exclude`) with the fewest outstanding requests, counted as sent; None when
        there is none. Ties go round-robin, so sequential calls alternate."""
        with self._lock:
            n = len(self.replicas)
            order = [self.replicas[(self._turn + k) % n] for k in range(n)]
            candidates = [r for r in order if r.healthy and r not in exclude]
            if not candidates:
                return None
            best = min(candidates, key=lambda r: r.outstanding)  # min keeps the first of equals: the rotation
            self._turn = (self.replicas.index(best) + 1) % n
            best.outstanding += 1
            best.sent += 1
            return best

    def release(self, replica: Replica, answered: bool) -> None:
        with self._lock:
            replica.outstanding -= 1
            if answered:
                replica.answered += 1
            else:
                replica.failed += 1

    def note_failover(self) -> None:
        with self._lock:
            self.failovers += 1

    def mark_down(self, replica: Replica, reason: str) -> None:
        """A request failed for the replica's state: no request goes there until a probe passes."""
        with self._lock:
            if replica.healthy:
                replica.down_at = time.monotonic()
            replica.healthy, replica.reason = False, reason
        self._wake.set()

    # -- health --------------------------------------------------------------------------------------------------
    def probe(self, replica: Replica) -> bool:
        """Probe one replica now and record the outcome; True when it is ready."""
        try:
            self._probe(replica)
        except ServerError as exc:
            with self._lock:
                if replica.healthy:
                    replica.down_at = time.monotonic()
                replica.healthy, replica.reason = False, str(exc)
            return False
        with self._lock:
            if not replica.healthy:
                replica.generation += 1
                replica.up_at = time.monotonic()
            replica.healthy, replica.reason = True, "ready"
        return True

    def probe_all(self) -> list[Replica]:
        """Probe every replica now; the healthy ones."""
        return [r for r in self.replicas if self.probe(r)]

    def start(self) -> None:
        """Start the background prober (once); it probes every replica each health_interval_s, and at once after
        a request marks one down."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._health_loop, name="guardrt-triton-health", daemon=True)
            self._thread.start()

    def _health_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.health_interval_s)
            self._wake.clear()
            for replica in self.replicas:
                if self._stop.is_set():
                    return
                self.probe(replica)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=PROBE_TIMEOUT_S * 3 + 1)

    # -- reporting ------------------------------------------------------------------------------------------------
    def healthy(self) -> list[Replica]:
        with self._lock:
            return [r for r in self.replicas if r.healthy]

    def down(self) -> list[Replica]:
        with self._lock:
            return [r for r in self.replicas if not r.healthy]

    def reasons(self) -> str:
        with self._lock:
            return "; ".join(f"{r.url}: {r.reason}" for r in self.replicas)

    def counters(self) -> dict[str, dict[str, Any]]:
        """{url: {healthy, sent, answered, failed, outstanding}} (tests, benchmarks)."""
        with self._lock:
            return {r.url: {"healthy": r.healthy, "sent": r.sent, "answered": r.answered, "failed": r.failed,
                            "outstanding": r.outstanding} for r in self.replicas}


class _ReplicatedBase:
    """What the sync and asyncio replicated clients share: the replica set, probes, and the failover decision."""

    def _setup_replicas(self, urls: Sequence[str], health_interval_s: float) -> None:
        self.urls = list(urls)
        self.replicas = ReplicaSet(self.urls, self._probe_replica, health_interval_s)
        self._flavor_lock = threading.Lock()  # the probes (prober thread, check_ready) agree on one flavor
        self._check_lock = threading.Lock()  # one first check_ready, however many threads send at once

    def _probe_replica(self, replica: Replica) -> None:
        """ServerError (one line) unless the replica is live and the model ready, with the flavor of the others.
        A fresh channel each time: a probe must see a restarted server at once."""
        client = self._grpc.InferenceServerClient(replica.url, channel_args=CHANNEL_ARGS)
        limit = {"client_timeout": min(PROBE_TIMEOUT_S, self.timeout_s)}
        try:
            if not client.is_server_live(**limit):
                raise ServerError(f"Triton server at {replica.url} is not live")
            if not client.is_model_ready(self.model_name, **limit):
                raise ServerError(f"model '{self.model_name}' is not ready on {replica.url}")
            flavor = self._flavor_from_config(client.get_model_config(self.model_name, **limit).config)
        except self._utils.InferenceServerException as exc:
            raise self._server_error(exc, "health check", url=replica.url) from None
        finally:
            client.close()
        with self._flavor_lock:
            if self.flavor is None:
                self.flavor = flavor
            elif flavor != self.flavor:
                raise ServerError(f"{replica.url} serves model '{self.model_name}' as flavor {flavor!r}, the other "
                                  f"replicas as {self.flavor!r}: replicas must serve the same repository")

    def _check_replicas(self) -> None:
        """Probe every replica; ServerError naming each one's reason when none is ready. Starts the prober."""
        ready = self.replicas.probe_all()
        self.replicas.checked = True
        self.replicas.start()
        if not ready:
            raise ServerError(f"none of the {len(self.urls)} Triton servers is ready: {self.replicas.reasons()}")

    def _judge_failure(self, replica: Replica, exc: Exception, what: str) -> ServerError:
        """The error of a failed attempt; raises it unless another replica may answer the request."""
        status, msg = _status(exc), _message(exc)
        error = self._server_error(exc, what, url=replica.url)
        if status == "StatusCode.DEADLINE_EXCEEDED" or QUEUE_TIMEOUT in msg.lower() or status not in RETRYABLE:
            raise error
        if status == "StatusCode.UNAVAILABLE" and QUEUE_FULL not in msg.lower():
            self.replicas.mark_down(replica, str(error))  # a full queue is a busy replica, not a down one
        self.replicas.note_failover()
        return error

    @property
    def failovers(self) -> int:
        """Attempts re-sent to another replica after a failure, so far (diagnostics)."""
        return self.replicas.failovers

    def _no_replica_error(self, what: str, last: ServerError | None) -> ServerError:
        if last is not None and "overloaded" in str(last):
            return ServerError(f"{what}: every Triton replica refused the request ({self.replicas.reasons()}; "
                               f"last: {last})")
        return ServerError(f"{what}: no Triton replica is reachable ({self.replicas.reasons()})")

    def _replica_client(self, replica: Replica, make: Callable[[], Any], key: Any = None):
        """The inference client of `replica` for this generation (and `key`: the event loop, asyncio)."""
        cached = self._clients.get(replica.url)
        if cached is not None and cached[0] == (replica.generation, key):
            return cached[1]
        client = make()
        if cached is not None:
            self._retired.append(cached)  # other requests may still hold it; closed at close()
        self._clients[replica.url] = ((replica.generation, key), client)
        return client


class ReplicatedTritonClassifier(_ReplicatedBase, TritonClassifier):
    """TritonClassifier over several replicas (see the module docstring). `urls`: gRPC addresses, at least one."""

    def __init__(self, urls: Sequence[str], spec="rejection", tokenizer_dir=None, *,
                 health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S, **kwargs):
        urls = [urls] if isinstance(urls, str) else list(urls)
        super(TritonClassifier, self).__init__(",".join(urls), spec, tokenizer_dir, **kwargs)  # no channel of its own
        self._setup_replicas(urls, health_interval_s)
        self._clients: dict[str, tuple] = {}
        self._retired: list = []
        self._clients_lock = threading.Lock()

    @property
    def client(self):
        raise AttributeError("a replicated client has one channel per replica; see .replicas")

    def check_ready(self) -> None:
        self._check_replicas()

    def _client_of(self, replica: Replica):
        with self._clients_lock:
            return self._replica_client(
                replica, lambda: self._grpc.InferenceServerClient(replica.url, channel_args=CHANNEL_ARGS))

    def _send(self, what: str, request: Callable[[Any, dict], Any], queue_timeout: bool = False):
        """request(client, limits) on the least loaded healthy replica, failing over within one deadline."""
        if not self.replicas.checked:
            with self._check_lock:
                if not self.replicas.checked:
                    self._check_replicas()
        end = time.monotonic() + self.timeout_s
        tried: set = set()
        rounds, last = 0, None
        while True:
            limits = self.retry.attempt_limits(end, queue_timeout)
            if limits is None:
                raise self._deadline_error(what)
            replica = self.replicas.acquire(tried)
            if replica is None:  # every healthy replica refused this request, or none is healthy: wait a little
                delay = self.retry.next_delay("StatusCode.UNAVAILABLE", "", rounds, end)
                if delay is None:
                    raise self._no_replica_error(what, last)
                rounds += 1
                self.retried += 1
                time.sleep(delay)
                tried.clear()
                continue
            answered = False
            try:
                result = request(self._client_of(replica), limits)
                answered = True
                return result
            except self._utils.InferenceServerException as exc:
                last = self._judge_failure(replica, exc, what)
                tried.add(replica)
            finally:
                self.replicas.release(replica, answered)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, mask = (np.asarray(feeds[n]) for n in self.spec.input_names)
        inputs = self._inputs(ids, mask)
        result = self._send("inference", lambda c, limits: c.infer(self.model_name, inputs, **limits),
                            queue_timeout=True)
        return {name: result.as_numpy(name) for name in self.spec.output_names}

    def statistics(self) -> dict:
        """{url: Triton's inference statistics} of the healthy replicas."""
        out = {}
        for replica in self.replicas.healthy():
            client = self._client_of(replica)
            out[replica.url] = client.get_inference_statistics(self.model_name, as_json=True,
                                                               client_timeout=self.timeout_s)
        return out

    def close(self) -> None:
        self.replicas.stop()
        with self._clients_lock:
            for _, client in [*self._clients.values(), *self._retired]:
                client.close()
            self._clients.clear()
            self._retired.clear()


class AsyncReplicatedTritonClassifier(_ReplicatedBase, AsyncTritonClassifier):
    """AsyncTritonClassifier over several replicas (see the module docstring). Probes run in a thread (sync gRPC),
    requests in the running event loop (one `tritonclient.grpc.aio` channel per replica and loop)."""

    def __init__(self, urls: Sequence[str], spec="rejection", tokenizer_dir=None, *,
                 health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S, **kwargs):
        urls = [urls] if isinstance(urls, str) else list(urls)
        super().__init__(",".join(urls), spec, tokenizer_dir, **kwargs)  # its own channel is never opened
        self._setup_replicas(urls, health_interval_s)
        self._clients = {}
        self._retired = []

    async def check_ready(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._check_replicas)

    async def _ensure_flavor(self) -> None:
        """Every replica probed once (and the flavor known) before the first request."""
        if self.flavor is None or not self.replicas.checked:
            if self._ready_lock is None or self._ready_lock_loop is not asyncio.get_running_loop():
                self._ready_lock, self._ready_lock_loop = asyncio.Lock(), asyncio.get_running_loop()
            async with self._ready_lock:
                if self.flavor is None or not self.replicas.checked:
                    await self.check_ready()

    _ready_lock_loop = None

    @property
    def client(self):
        raise AttributeError("a replicated client has one channel per replica; see .replicas")

    def _client_of(self, replica: Replica):
        loop = asyncio.get_running_loop()
        return self._replica_client(
            replica, lambda: self._aio.InferenceServerClient(replica.url, channel_args=CHANNEL_ARGS), key=loop)

    async def _send(self, what: str, request, queue_timeout: bool = False):
        """As ReplicatedTritonClassifier._send, awaiting."""
        await self._ensure_flavor()
        end = time.monotonic() + self.timeout_s
        tried: set = set()
        rounds, last = 0, None
        while True:
            limits = self.retry.attempt_limits(end, queue_timeout)
            if limits is None:
                raise self._deadline_error(what)
            replica = self.replicas.acquire(tried)
            if replica is None:
                delay = self.retry.next_delay("StatusCode.UNAVAILABLE", "", rounds, end)
                if delay is None:
                    raise self._no_replica_error(what, last)
                rounds += 1
                self.retried += 1
                await asyncio.sleep(delay)
                tried.clear()
                continue
            answered = False
            try:
                result = await request(self._client_of(replica), limits)
                answered = True
                return result
            except self._utils.InferenceServerException as exc:
                last = self._judge_failure(replica, exc, what)
                tried.add(replica)
            finally:
                self.replicas.release(replica, answered)

    async def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, mask = (np.asarray(feeds[n]) for n in self.spec.input_names)
        inputs = self._inputs(ids, mask)
        result = await self._send("inference", lambda c, limits: c.infer(self.model_name, inputs, **limits),
                                  queue_timeout=True)
        return {name: result.as_numpy(name) for name in self.spec.output_names}

    async def statistics(self) -> dict:
        out = {}
        for replica in self.replicas.healthy():
            out[replica.url] = await self._client_of(replica).get_inference_statistics(
                self.model_name, as_json=True, client_timeout=self.timeout_s)
        return out

    async def close(self) -> None:
        self.replicas.stop()
        loop = asyncio.get_running_loop()
        for (_, key), client in [*self._clients.values(), *self._retired]:
            if key is loop:  # channels of a loop that is gone cannot be awaited here; gRPC frees them
                await client.close()
        self._clients.clear()
        self._retired.clear()


def triton_classifier(urls: Sequence[str] | str, spec="rejection", tokenizer_dir=None, **kwargs) -> TritonClassifier:
    """A TritonClassifier for one URL, a ReplicatedTritonClassifier for several."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    if len(urls) == 1:
        kwargs.pop("health_interval_s", None)
        return TritonClassifier(urls[0], spec, tokenizer_dir, **kwargs)
    return ReplicatedTritonClassifier(urls, spec, tokenizer_dir, **kwargs)


def warn_down_replicas(client, who: str) -> None:
    """One stderr line per replica that failed its first probe (the client goes on with the others and keeps
    probing it)."""
    import sys

    replicas = getattr(client, "replicas", None)  # None: a single-URL TritonClassifier
    for replica in replicas.down() if replicas is not None else ():
        print(f"{who}: warning: replica {replica.url} is not ready, using the others until it is: {replica.reason}",
              file=sys.stderr)

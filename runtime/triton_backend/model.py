"""guardrt Triton python backend: ONNX Runtime over dynamically batched requests, token ids or text.

Self-contained (numpy + onnxruntime + the standard library, and its two sibling files `batch_plan.py` and
`onnx_graph.py`, copied next to it) so the token-id model runs in any Triton python backend, with or without guardrt
installed. The text-in model (`guardrt_input: text`) imports guardrt for the exact preprocessing. Everything comes
from config.pbtxt `parameters`, written by `guardrt repo`:

  onnx_file            model file inside the version directory (external data next to it)
  pad_token_id         the spec's pad id
  padding_side         "left" (Qwen3: the last real token ends the row) or "right" (RoBERTa)
  max_length           longest sequence accepted
  guardrt_input        "ids" (inputs input_ids / attention_mask, output logits) or "text" (input payload, output
                       result: one JSON line per row, see guardrt.runtime.text_serving); guardrt_spec names the spec
  max_payload_bytes    text: the largest payload row accepted
  execution_providers  "cpu" | "cuda" | "tensorrt" (CUDA / TensorRT execution providers on a GPU host)
  ort_providers        the providers with their options, as JSON (GPU providers; see `_providers`)
  intra_op_threads     ONNX Runtime intra-op threads per instance (0: every core this process may use, in each
                       instance - see `_session`)
  intra_op_spinning    "run" (default on CPU): ORT's threads spin during a Run (no futex wake-up per parallel
                       section) and stop when it returns (session.force_spinning_stop), so an idle instance never
                       steals the cores the gRPC threads, the client or another instance need; "0": never spin
                       (the default with GPU providers); "1": ORT's default (keep spinning after a Run)
  ort_run_lock         "server" (default on CPU when an instance's threads cover every core): one ONNX Runtime Run
                       at a time among the guardrt models of this server (a file lock keyed by the tritonserver
                       pid): every Run has all the cores and spinning never fights another instance's threads,
                       while the other instance parses, pads and answers; "off": Runs of different instances
                       overlap (the default with GPU providers, or fewer threads than cores per instance)
  profile_budget_s     seconds spent at load timing shapes for the batch planner (0: no profile, equal lengths only)
  cost_model           the planner's cost model as JSON coefficients ({"per_call": ..., "per_token": ...}): used
                       as given instead of timing shapes (a model measured once, pinned)
  max_group_tokens     the most padded tokens one ONNX Runtime call may hold (bounds memory)
  trt_fp16 / trt_int8  TensorRT EP precision flags; trt_cache_dir: engine cache directory (also in ort_providers)
  guardrt_precision    the export precision; int8 ones re-run `int8_check.npz` at load when this CPU's int8 path
                       differs from the one they were validated on (guardrt_int8_path.py, copied by `guardrt repo`)
  int8_recheck         optional: refuse (default) | warn | off over the gate (else $GUARDRT_INT8_RECHECK)

Token-id inputs are declared `allow_ragged_batch: true`, so Triton hands `execute` requests of different lengths
together. `execute` is a pipeline of separate steps, each isolated per request (text: per row):

  read_request / TextRows  -> the arrays of one request (or a RequestError); text: each row's token ids, computed by
                              guardrt's own preprocessor, or that row's error
  validate_rows            -> the real tokens of each row, after every check (presence, integer dtype, rank/shape,
                              length limits, mask values and contiguity, token ids inside the vocabulary)
  plan_groups              -> the rows split into groups that minimise the predicted time (batch_plan.py: a cost
                              model timed at load; equal lengths together, padding only where it pays)
  run_planned              -> ONNX Runtime over the groups, shortest first; when a group fails, each request in it
                              is re-run alone, so only the request that fails on its own gets the error
  *_response               -> one response per request: logits, results, or a one-line error naming the problem
Any unexpected exception in one request's steps becomes that request's error; nothing escapes `execute`.
"""
import importlib.util
import json
import os
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def _sibling(name):
    """A module shipped next to this file (its own sys.modules name: several guardrt models may share a process)."""
    here = os.path.dirname(os.path.abspath(__file__))
    key = f"guardrt_backend_{name}_{abs(hash(here))}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, os.path.join(here, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # before exec: dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[key]


batch_plan = _sibling("batch_plan")
embedding_rows = _sibling("onnx_graph").embedding_rows
batch_coupling_op = _sibling("onnx_graph").batch_coupling_op

# Seconds spent timing shapes at load (per instance) unless the config says otherwise.
DEFAULT_PROFILE_BUDGET_S = 5.0
# ORT intra-op threads: "0" idle threads sleep, "1" they spin (ORT's default), "run" they spin during a Run and stop
# when it returns (session.force_spinning_stop). With the server-wide run lock (ort_run_lock) only one Run spins at
# a time. Measured in benchmarks/serve_profile.py (README, "Serving with Triton").
DEFAULT_SPINNING = {"cpu": "run", "gpu": "0"}
DEFAULT_RUN_LOCK = {"cpu": "server", "gpu": "off"}


class RunLock:
    """One ONNX Runtime Run at a time among the processes that open the same lock file (fcntl.flock: released by
    the kernel if a holder dies); `RunLock(None)` never blocks."""

    def __init__(self, path):
        self.path = path
        self._fd = None
        if path is not None:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self):
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return False

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def server_run_lock_path():
    """The run-lock file shared by the guardrt models of one tritonserver (the stubs' parent process)."""
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"guardrt-ort-run-{os.getuid()}-{os.getppid()}.lock")

# GUARDRT_BACKEND_TIMING=1 in the server's environment: one log line per execute with the milliseconds of each stage
# (benchmarks/serve_profile.py reads them). Off by default: the clock reads cost a few microseconds.
TIMING_LOG_PREFIX = "guardrt-timing "


class StageClock:
    """Milliseconds per named stage of one execute (accumulated), when enabled; a no-op otherwise."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.ms = {}
        self._t = time.perf_counter() if enabled else 0.0

    def lap(self, stage):
        """Charge the time since the previous lap to `stage`."""
        if self.enabled:
            now = time.perf_counter()
            self.ms[stage] = self.ms.get(stage, 0.0) + 1e3 * (now - self._t)
            self._t = now

    def line(self, **facts):
        """`guardrt-timing key=value ... ms.<stage>=<ms> ...`: no quotes (Triton's log escapes them), no spaces
        inside a value."""
        fields = [f"{k}={v}" for k, v in facts.items()] + [f"ms.{k}={v:.4f}" for k, v in self.ms.items()]
        return TIMING_LOG_PREFIX + " ".join(fields)


class RequestError(ValueError):
    """A request that cannot be run; the message is what its client sees."""


# -- request parsing ----------------------------------------------------------------------------------------------
def read_request(request):
    """(input_ids, attention_mask) numpy arrays of one request; RequestError when one is missing."""
    ids_t = pb_utils.get_input_tensor_by_name(request, "input_ids")
    mask_t = pb_utils.get_input_tensor_by_name(request, "attention_mask")
    missing = [n for n, t in (("input_ids", ids_t), ("attention_mask", mask_t)) if t is None]
    if missing:
        raise RequestError(f"request needs both input_ids and attention_mask (missing: {', '.join(missing)})")
    return ids_t.as_numpy(), mask_t.as_numpy()


# -- validation ---------------------------------------------------------------------------------------------------
def validate_rows(ids, mask, max_length, vocab_size=None):
    """The real token ids of each row ([int64 array]) after checking everything the model relies on; RequestError
    naming the problem (and the row) otherwise."""
    ids, mask = np.asarray(ids), np.asarray(mask)
    for name, arr in (("input_ids", ids), ("attention_mask", mask)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise RequestError(f"{name} must hold integers, got {arr.dtype}")
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise RequestError(f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} must both be "
                           "[batch, seq]")
    batch, length = ids.shape
    if batch == 0:
        raise RequestError("empty batch: the request has no rows")
    if length == 0:
        raise RequestError("empty sequence: the request has no tokens")
    if length > max_length:
        raise RequestError(f"sequence length {length} exceeds the model maximum {max_length}")
    if mask.min() < 0 or mask.max() > 1:  # integers: only 0 and 1 left (np.isin costs 10x more per request)
        raise RequestError("attention_mask must hold only 0 and 1")
    rows = []
    for r in range(batch):
        where = np.flatnonzero(mask[r])
        if where.size == 0:
            raise RequestError(f"row {r} has no tokens (attention_mask all zero)")
        if where[-1] - where[0] + 1 != where.size:
            raise RequestError(f"row {r}: attention_mask must mark one contiguous run of tokens")
        row = ids[r, where[0]:where[-1] + 1].astype(np.int64, copy=False)
        bad = np.flatnonzero((row < 0) | (row >= vocab_size)) if vocab_size else np.flatnonzero(row < 0)
        if bad.size:
            limit = f"[0, {vocab_size})" if vocab_size else "[0, vocab)"
            raise RequestError(f"row {r}: token id {int(row[bad[0]])} at position {int(where[0] + bad[0])} is outside "
                               f"the vocabulary {limit}")
        rows.append(row)
    return rows




# -- text rows ----------------------------------------------------------------------------------------------------
def read_payloads(request):
    """The payload elements of one text request (a flat list of bytes, one per row); RequestError otherwise."""
    tensor = pb_utils.get_input_tensor_by_name(request, "payload")
    if tensor is None:
        raise RequestError("request needs the BYTES input payload (one JSON line per row)")
    arr = tensor.as_numpy()
    if arr.dtype != np.object_:
        raise RequestError(f"payload must be BYTES, got {arr.dtype}")
    if arr.ndim == 0 or arr.size == 0:
        raise RequestError("empty batch: the request has no rows")
    if arr.ndim > 2 or (arr.ndim == 2 and arr.shape[1] != 1):
        raise RequestError(f"payload must be [rows] or [rows, 1], got {list(arr.shape)}")
    return list(arr.reshape(-1))


def text_result_response(results):
    """The `result` BYTES [rows, 1] response of a text request (one JSON line per row)."""
    out = np.empty((len(results), 1), dtype=np.object_)
    for r, value in enumerate(results):
        out[r, 0] = value
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("result", out)])


def pad_rows(rows, pad_id, side):
    """(input_ids, attention_mask) int64 [len(rows), longest], padded on `side` with `pad_id`."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for k, row in enumerate(rows):
        sl = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[k, sl] = row
        mask[k, sl] = 1
    return ids, mask


# -- execution ----------------------------------------------------------------------------------------------------

def one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__

def run_planned(run_group, rows, owner, groups, on_done, log=None, max_rows=None):
    """Run `groups` (lists of row indices, in order) and report each unit's logits as soon as its last row is done.

    `run_group(list of rows) -> logits [n, C]` runs one padded group; `owner[i]` is the unit (a request, or a text
    row) row i belongs to; `on_done(unit, logits [k, C] in row order | error message)` is called once per unit.
    When a group fails, each unit with rows in it is re-run alone, one call per length (at most `max_rows` rows a
    call; and `log` is told), so only a unit that also fails on its own gets an error."""
    rows_of = {}
    for i, unit in enumerate(owner):
        rows_of.setdefault(unit, []).append(i)
    left = {unit: len(idx) for unit, idx in rows_of.items()}
    out = [None] * len(rows)
    settled = set()
    for group in groups:
        try:
            logits = run_group([rows[i] for i in group])
        except Exception as exc:  # noqa: BLE001 - which unit caused it is found below
            units = list(dict.fromkeys(owner[i] for i in group if owner[i] not in settled))
            if log is not None:
                log(f"onnxruntime failed on a group of {len(group)} rows from {len(units)} requests "
                    f"({one_line(exc)[:300]}); re-running those requests one at a time")
            for unit in units:
                settled.add(unit)
                try:
                    alone = run_alone(run_group, [rows[i] for i in rows_of[unit]], max_rows)
                except Exception as exc_alone:  # noqa: BLE001
                    on_done(unit, f"onnxruntime failed on this request: {one_line(exc_alone)}")
                    continue
                on_done(unit, alone)
            continue
        for k, i in enumerate(group):
            unit = owner[i]
            if unit in settled:
                continue
            out[i] = logits[k]
            left[unit] -= 1
            if left[unit] == 0:
                settled.add(unit)
                on_done(unit, np.stack([out[j] for j in rows_of[unit]]))


def run_alone(run_group, rows, max_rows=None):
    """One unit's rows on their own, one call per length (at most `max_rows` rows a call)."""
    out = [None] * len(rows)
    for group in batch_plan.plan_groups([len(r) for r in rows], max_rows=max_rows):
        logits = run_group([rows[i] for i in group])
        for k, i in enumerate(group):
            out[i] = logits[k]
    return np.stack(out)


# -- responses ----------------------------------------------------------------------------------------------------
def error_response(message, code="INVALID_ARG"):
    """An error response; `code` names a pb_utils.TritonError code where the stub has codes (INVALID_ARG reaches
    the client as gRPC INVALID_ARGUMENT, INTERNAL as INTERNAL)."""
    code_value = getattr(pb_utils.TritonError, code, None)
    error = pb_utils.TritonError(message) if code_value is None else pb_utils.TritonError(message, code_value)
    return pb_utils.InferenceResponse(error=error)


def logits_response(output_name, logits):
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(output_name, np.ascontiguousarray(logits, dtype=np.float32))])


# -- execution providers ------------------------------------------------------------------------------------------
def _providers(kind, device_id, params):
    """ONNX Runtime providers for this instance. guardrt writes the list with its options into the `ort_providers`
    parameter (JSON: [name | [name, options]], built by guardrt.runtime.ort_providers.python_backend_providers:
    the spec's TensorRT profile, precision flags, engine cache path); only the device id is this instance's. The
    TensorRT provider needs libnvinfer.so.10, which pip's tensorrt-cu12-libs does not put on the loader path: its
    `tensorrt_libs` package loads it by full path, and without it this fails here instead of falling back."""
    import ctypes
    import importlib

    kind = (kind or "cpu").lower()
    if kind not in ("cpu", "cuda", "tensorrt"):
        raise ValueError(f"unknown execution_providers {kind!r} (cpu, cuda, tensorrt)")
    listed = json.loads(params.get("ort_providers") or "null")
    if listed is None:  # a config written without the parameter: the providers with their defaults
        listed = {"cpu": [], "cuda": [["CUDAExecutionProvider", {}]],
                  "tensorrt": [["TensorrtExecutionProvider", {}], ["CUDAExecutionProvider", {}]]}[kind]
        listed.append("CPUExecutionProvider")
    if kind == "tensorrt":
        try:
            ctypes.CDLL("libnvinfer.so.10")
        except OSError:
            try:
                importlib.import_module("tensorrt_libs")
                ctypes.CDLL("libnvinfer.so.10")
            except (ImportError, OSError) as exc:
                raise RuntimeError(f"the TensorRT provider needs TensorRT 10 (libnvinfer.so.10), not found ({exc}): "
                                   "pip install tensorrt-cu12 (guardrt[gpu]) or put its lib directory on "
                                   "LD_LIBRARY_PATH") from None
    return [(p[0], dict(p[1], device_id=device_id)) if isinstance(p, list) else p for p in listed]



# -- the model ----------------------------------------------------------------------------------------------------
def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class TritonPythonModel:
    timing = False  # GUARDRT_BACKEND_TIMING: log each execute's stage times
    _clock = StageClock(False)  # the current execute's clock (a disabled one outside execute, e.g. while profiling)
    run_lock = RunLock(None)
    coupling = None  # the graph's op that couples the rows of a batch (onnx_graph.batch_coupling_op), if any

    @property
    def rows_per_call(self):
        return 1 if self.coupling else self.max_rows

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.name = config.get("name", "model")
        self.timing = os.environ.get("GUARDRT_BACKEND_TIMING", "") not in ("", "0")
        self.pad_id = int(params["pad_token_id"])
        self.side = params.get("padding_side", "right")
        if self.side not in ("left", "right"):
            raise ValueError(f"padding_side must be left or right, got {self.side!r}")
        self.max_length = int(params["max_length"])
        self.text_input = params.get("guardrt_input", "ids") == "text"
        self.max_rows = int(config.get("max_batch_size") or 1)
        self.max_group_tokens = int(params.get("max_group_tokens") or 0) or self.max_rows * self.max_length
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        # int8 exports ship guardrt_int8_path.py: exact int8 GEMMs where this CPU's U8S8 kernels saturate (no VNNI;
        # applied in _session), and below, the re-check of the export on this CPU's int8 path.
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        check = os.path.join(version_dir, "int8_check.npz")
        checker = os.path.join(version_dir, "guardrt_int8_path.py")
        int8 = None
        if params.get("guardrt_precision", "").startswith("int8") and os.path.isfile(checker):
            import importlib.util

            loader = importlib.util.spec_from_file_location(f"guardrt_int8_path_{self.name}", checker)
            int8 = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(int8)
        self._int8 = int8
        device_id = int(args.get("model_instance_device_id", 0) or 0)
        self.session = self._session(path, params, config, device_id)
        self.run_lock = self._run_lock(params)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = "logits" if self.text_input else config["output"][0]["name"]
        self.vocab_size = embedding_rows(path)
        # A graph whose rows interact (int8-dynamic: one activation scale per batch) runs every row alone, so a
        # request's answer never depends on what it was batched with; batching then still saves the per-request
        # round trips to the stub, never a call.
        self.coupling = batch_coupling_op(path)
        if self.text_input:
            self.text = self._text_frontend(args, params)
        if params.get("cost_model"):
            self.cost = batch_plan.CostModel(**json.loads(params["cost_model"]))
            profiled = f"{self.cost.describe()}, as configured"
        else:
            budget = params.get("profile_budget_s")
            self.cost, profiled = self._profile(DEFAULT_PROFILE_BUDGET_S if budget in (None, "") else float(budget))
        vocab = (f"token ids checked against a vocabulary of {self.vocab_size} (embedding rows in the graph)"
                 if self.vocab_size else "token ids NOT range-checked (no embedding Gather on input_ids found)")
        pb_utils.Logger.log_info(
            f"guardrt {self.name}: {path} on {self.session.get_providers()} ({self.threads} intra-op threads, spinning "
            f"{self.spinning}, run lock {'on' if self.run_lock.path else 'off'}), pad "
            f"{self.side}/{self.pad_id}, max_length {self.max_length}, {vocab}; batch planner: {profiled}"
            + (f"; every row runs alone ({self.coupling} couples the rows of a batch)" if self.coupling else "")
        )
        # An int8 export validated on another CPU int8 path: re-run its held-out check set here, log one line, and
        # refuse to load over the gate unless parameter int8_recheck / $GUARDRT_INT8_RECHECK says warn or off.
        if int8 is not None and os.path.isfile(check):
            mode = int8.recheck_mode(params.get("int8_recheck"))
            result = int8.recheck(check, params["guardrt_precision"], lambda feeds: self.session.run(None, feeds)[0],
                                  int8.session_int8_path(self.session), model_name=self.name, mode=mode)
            if not result.ok and mode == "refuse":
                raise RuntimeError(result.line)
            if result.ran:
                (pb_utils.Logger.log_info if result.ok else pb_utils.Logger.log_warn)(result.line)

    # -- load-time pieces -------------------------------------------------------------------------------------------
    def _session(self, path, params, config, device_id):
        """The ONNX Runtime session, with the first provider asked for actually running (one line otherwise)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0") or 0)
        if threads <= 0:
            # Every instance may use every core: a dynamic batch runs on ONE instance (its groups one after the
            # other), so an instance with a share of the cores would leave the rest idle while the other instance
            # has nothing to do; when both run, their threads (not spinning) share the cores. Measured in
            # benchmarks/serve.py (layouts); `intra_op_threads` overrides it.
            threads = usable_cores()
        self.threads = threads
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        device = "cpu" if (params.get("execution_providers") or "cpu").lower() == "cpu" else "gpu"
        spinning = str(params.get("intra_op_spinning", "") or DEFAULT_SPINNING[device])
        if spinning not in ("0", "1", "run"):
            raise ValueError(f"intra_op_spinning must be 0, 1 or run, got {spinning!r}")
        self.spinning = spinning
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0" if spinning == "0" else "1")
        if spinning == "run":
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        if self._int8 is not None:
            for key, value in self._int8.exact_int8_session_config().items():
                opts.add_session_config_entry(key, value)
        providers = _providers(params.get("execution_providers"), device_id, params)
        if any(p[0] != "CPUExecutionProvider" for p in providers if isinstance(p, tuple)) and \
                hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # onnxruntime-gpu >= 1.21: pip's CUDA / cuDNN libraries are not on the loader path
        session = ort.InferenceSession(path, opts, providers=providers)
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if wanted not in session.get_providers():
            raise RuntimeError(f"guardrt {config.get('name', 'model')}: execution provider {wanted} is not running "
                               f"(onnxruntime runs {', '.join(session.get_providers())}); refusing to serve on a "
                               "fallback")
        return session

    def _run_lock(self, params):
        device = "cpu" if (params.get("execution_providers") or "cpu").lower() == "cpu" else "gpu"
        # Only a Run that uses every core gains from running alone: with fewer threads per instance (2x1 on two
        # cores), instances running side by side is what fills the cores.
        default = DEFAULT_RUN_LOCK[device] if self.threads >= usable_cores() else "off"
        mode = params.get("ort_run_lock") or default
        if mode not in ("server", "off"):
            raise ValueError(f"ort_run_lock must be server or off, got {mode!r}")
        return RunLock(server_run_lock_path() if mode == "server" else None)

    def _text_frontend(self, args, params):
        try:
            from guardrt.runtime.text_serving import DEFAULT_MAX_PAYLOAD_BYTES, TextFrontend
        except ImportError as exc:
            raise RuntimeError(f"the text-in model needs guardrt in the server's Python ({exc}): "
                               "pip install 'guardrt[client]' there") from None
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        limit = int(params.get("max_payload_bytes") or DEFAULT_MAX_PAYLOAD_BYTES)
        return TextFrontend.from_model_dir(params["guardrt_spec"], version_dir, max_payload_bytes=limit)

    def _profile(self, budget_s):
        """The batch planner's cost model, timed on synthetic rows of in-vocabulary ids (also primes ORT). Shapes
        that fail are left out (and logged); with too few shapes left, the safe plan: equal lengths only."""
        if budget_s <= 0:
            return batch_plan.EXACT_LENGTHS, "no profile (profile_budget_s 0): equal lengths together, no padding"
        token = min(100, (self.vocab_size or 101) - 1)

        def run(n, length):
            self._run_group([np.full(length, token, dtype=np.int64)] * n)

        t0, failures = time.perf_counter(), []
        samples = batch_plan.profile_shapes(run, self.rows_per_call, self.max_length,
                                            max_group_tokens=self.max_group_tokens, budget_s=budget_s, failures=failures)
        for n, length, exc in failures:
            pb_utils.Logger.log_warn(f"guardrt {self.name}: profiling {n} x {length} tokens failed, not planned for: "
                                     f"{one_line(exc)[:300]}")
        if len(samples) < 2:
            return batch_plan.EXACT_LENGTHS, f"profile failed ({len(failures)} shapes): equal lengths together, no padding"
        cost = batch_plan.fit_cost_model(samples)
        return cost, f"{cost.describe()} in {time.perf_counter() - t0:.1f} s"

    # -- execution --------------------------------------------------------------------------------------------------
    def _run_group(self, rows):
        clock = self._clock
        clock.lap("respond")  # since the previous group: the responses its rows completed
        ids, mask = pad_rows(rows, self.pad_id, self.side)
        feeds = {"input_ids": ids, "attention_mask": mask}
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        clock.lap("pad")
        with self.run_lock:
            clock.lap("lock")
            logits = self.session.run(None, feeds)[0]
        clock.lap("ort")
        return logits

    def _read_ids(self, request, index, units):
        rows = validate_rows(*read_request(request), self.max_length, self.vocab_size)
        units.append((index, None, rows))

    def _read_text(self, request, index, units, results):
        payloads = read_payloads(request)
        results[index] = [None] * len(payloads)
        for r, raw in enumerate(payloads):
            try:
                ids = self.text.encode(raw)
            except ValueError as exc:  # guardrt's InputError
                results[index][r] = _text_error(f"row {r}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - still only this row's
                results[index][r] = _text_error(f"row {r}: cannot read this payload: {one_line(exc)}")
                continue
            if not ids or len(ids) > self.max_length:
                results[index][r] = _text_error(f"row {r}: preprocessing gave {len(ids)} tokens (1..{self.max_length})")
                continue
            units.append((index, r, [np.asarray(ids, dtype=np.int64)]))

    def execute(self, requests):
        # Responses are returned together at the end, not sent one by one through each request's response sender
        # as their rows finish: with dynamic batching, Triton 2.51 then left requests queued for its batcher's
        # 500 ms idle wait far more often (measured, tiny rejection model: max latency 503 ms even at concurrency 1).
        clock = self._clock = StageClock(self.timing)
        responses = [None] * len(requests)

        def respond(i, response):
            responses[i] = response

        units, results = [], {}  # units: (request, text row or None, rows)
        for i, request in enumerate(requests):
            try:
                if self.text_input:
                    self._read_text(request, i, units, results)
                else:
                    self._read_ids(request, i, units)
            except RequestError as exc:
                respond(i, error_response(f"{self.name}: {exc}"))
            except Exception as exc:  # noqa: BLE001 - an unexpected failure is still only this request's
                respond(i, error_response(f"{self.name}: cannot read this request: {one_line(exc)}", "INTERNAL"))
        left = {}
        for i, _, _ in units:
            left[i] = left.get(i, 0) + 1
        for i in results:
            if i not in left:  # every row of this text request was refused: answer now
                respond(i, text_result_response(results[i]))

        def done(unit, value):
            i, r, _ = units[unit]
            try:
                if r is None:
                    response = (logits_response(self.output_name, value) if not isinstance(value, str)
                                else error_response(f"{self.name}: {value}", "INTERNAL"))
                else:
                    results[i][r] = (self.text.result(value[0]) if not isinstance(value, str)
                                     else _text_error(f"row {r}: {value}"))
                    left[i] -= 1
                    if left[i]:
                        return
                    response = text_result_response(results[i])
            except Exception as exc:  # noqa: BLE001
                response = error_response(f"{self.name}: cannot build the response: {one_line(exc)}", "INTERNAL")
            respond(i, response)

        rows, owner = [], []
        for u, (_, _, unit_rows) in enumerate(units):
            rows.extend(unit_rows)
            owner.extend([u] * len(unit_rows))
        clock.lap("read")  # request parsing, validation (text: preprocessing)
        groups = []
        if rows:
            log = lambda msg: pb_utils.Logger.log_warn(f"guardrt {self.name}: {msg}")  # noqa: E731
            try:
                groups = batch_plan.plan_groups([len(r) for r in rows], self.cost, self.rows_per_call,
                                                self.max_group_tokens)
                clock.lap("plan")
                run_planned(self._run_group, rows, owner, groups, done, log, max_rows=self.rows_per_call)
            except Exception as exc:  # noqa: BLE001 - defensive: run_planned handles ORT failures itself
                for u in dict.fromkeys(owner):
                    done(u, f"batch failed: {one_line(exc)}")
        clock.lap("respond")
        if clock.enabled:
            lengths = [len(r) for r in rows]
            predicted = 1e3 * batch_plan.predicted_seconds(groups, lengths, self.cost) if groups else 0.0
            pb_utils.Logger.log_info(clock.line(model=self.name, requests=len(requests), rows=len(rows),
                                                groups=",".join(f"{len(g)}x{max(lengths[i] for i in g)}"
                                                                for g in groups) or "-",
                                                predicted_ort_ms=f"{predicted:.4f}"))
        return responses

    def finalize(self):
        self.session = None
        self.run_lock.close()


def _text_error(message):
    from guardrt.runtime.text_serving import error_result

    return error_result(message)

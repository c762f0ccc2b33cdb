"""guardrt Triton python backend: ONNX Runtime over dynamically batched, ragged token-id requests.

Self-contained (numpy + onnxruntime + the standard library) so it runs in any Triton python backend, with or without
guardrt installed. Everything it needs comes from config.pbtxt `parameters`, written by `guardrt repo`:

  onnx_file            model file inside the version directory (external data next to it)
  pad_token_id         the spec's pad id
  padding_side         "left" (Qwen3: the last real token ends the row) or "right" (RoBERTa)
  max_length           longest sequence accepted
  execution_providers  "cpu" | "cuda" | "tensorrt" (CUDA / TensorRT execution providers on a GPU host)
  ort_providers        the providers with their options, as JSON (GPU providers; see `_providers`)
  intra_op_threads     ONNX Runtime intra-op threads per instance (0: ORT default)
  trt_fp16 / trt_int8  TensorRT EP precision flags; trt_cache_dir: engine cache directory (also in ort_providers)
  guardrt_precision    the export precision; int8 ones re-run `int8_check.npz` at load when this CPU's int8 path
                       differs from the one they were validated on (guardrt_int8_path.py, copied by `guardrt repo`)
  int8_recheck         optional: refuse (default) | warn | off over the gate (else $GUARDRT_INT8_RECHECK)

Inputs are declared `allow_ragged_batch: true`, so Triton hands `execute` requests of different lengths together.
Each request carries `input_ids` / `attention_mask` [b, L]; the real tokens of each row (mask == 1, one contiguous
run) are gathered, rows of similar length are padded together on the spec's side with the spec's pad id, and each
request gets back `logits` [b, num_labels] float32.

One bad request never fails another. `execute` is a pipeline of separate steps, each isolated per request:
  read_request      -> the two arrays of one request (or a RequestError)
  validate_rows     -> the real tokens of each row, after every check (presence, integer dtype, rank/shape, length
                       limits, mask values and contiguity, token ids inside the vocabulary)
  group_by_length   -> rows of similar length, padded together
  run_isolated      -> ONNX Runtime over the groups; when a group fails, each request in it is re-run alone, so only
                       the request that fails on its own gets the error
  *_response        -> one response per request, logits or a one-line error naming the problem
Any unexpected exception in one request's steps becomes that request's error; nothing escapes `execute`.

The vocabulary size is read from the graph at load (`embedding_rows`): the first dimension of the table that the
`input_ids` Gather indexes (through Cast / Identity on the ids and Cast / DequantizeLinear on the table), found by
walking the ONNX protobuf directly, so `onnx` need not be installed. ONNX Runtime's Gather accepts negative
indices (-1 is silently the last row) and fails the whole batch on an index >= vocab: both are refused here, per
request, before the batch runs.
"""
import json
import mmap
import os

import numpy as np
import triton_python_backend_utils as pb_utils

# Start a new padded group when padding would more than double the tokens computed (keeps a 4k-token request from
# forcing every short request in the same batch to 4k).
_MAX_PAD_RATIO = 2.0


class RequestError(ValueError):
    """A request that cannot be run; the message is what its client sees."""


# -- graph facts, read at load ------------------------------------------------------------------------------------
# Field numbers of onnx.proto (ModelProto.graph = 7; GraphProto.node = 1, .initializer = 5; NodeProto.input = 1,
# .output = 2, .op_type = 4, .attribute = 5; TensorProto.dims = 1, .name = 8; AttributeProto.name = 1, .i = 3).
_MODEL_GRAPH, _GRAPH_NODE, _GRAPH_INITIALIZER = 7, 1, 5
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE = 1, 2, 4, 5
_TENSOR_DIMS, _TENSOR_NAME = 1, 8
_ATTR_NAME, _ATTR_INT = 1, 3
# Ops that pass token ids through unchanged, and ops that turn a stored table into the gathered one.
_IDS_PASS_THROUGH = ("Cast", "Identity")
_TABLE_PASS_THROUGH = ("Cast", "Identity", "DequantizeLinear")


def _varint(buf, pos):
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf, start, end):
    """(field number, wire type, value) of the protobuf message in buf[start:end]; length-delimited values are
    (start, end) spans, so large tensors are skipped, not read."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = (pos, pos + size), pos + size
        elif wire in (1, 5):
            value, pos = pos, pos + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _text(buf, span):
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


def _graph_summary(buf):
    """([(op_type, inputs, outputs, int attributes)], {initializer name: dims}) of the main graph."""
    graph = next((v for n, w, v in _fields(buf, 0, len(buf)) if n == _MODEL_GRAPH and w == 2), None)
    nodes, dims = [], {}
    if graph is None:
        return nodes, dims
    for number, wire, span in _fields(buf, *graph):
        if wire != 2:
            continue
        if number == _GRAPH_NODE:
            op, ins, outs, attrs = "", [], [], {}
            for n, w, v in _fields(buf, *span):
                if n == _NODE_INPUT:
                    ins.append(_text(buf, v))
                elif n == _NODE_OUTPUT:
                    outs.append(_text(buf, v))
                elif n == _NODE_OP_TYPE:
                    op = _text(buf, v)
                elif n == _NODE_ATTRIBUTE:
                    name = value = None
                    for an, aw, av in _fields(buf, *v):
                        if an == _ATTR_NAME:
                            name = _text(buf, av)
                        elif an == _ATTR_INT and aw == 0:
                            value = av - (1 << 64) if av >= 1 << 63 else av
                    if name is not None and value is not None:
                        attrs[name] = value
            nodes.append((op, ins, outs, attrs))
        elif number == _GRAPH_INITIALIZER:
            name, shape = None, []
            for n, w, v in _fields(buf, *span):
                if n == _TENSOR_NAME:
                    name = _text(buf, v)
                elif n == _TENSOR_DIMS and w == 0:
                    shape.append(v)
                elif n == _TENSOR_DIMS and w == 2:  # packed repeated int64
                    pos = v[0]
                    while pos < v[1]:
                        d, pos = _varint(buf, pos)
                        shape.append(d)
            if name is not None:
                dims[name] = shape
    return nodes, dims


def embedding_rows(onnx_path, ids_input="input_ids"):
    """Rows of the embedding table that `ids_input` indexes (the vocabulary size), or None when the graph has no
    recognisable embedding Gather. Reads the ONNX protobuf in place (mmap); external weights are never opened."""
    with open(onnx_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        nodes, dims = _graph_summary(memoryview(buf))
    producer = {out: (op, ins) for op, ins, outs, _ in nodes for out in outs}

    def table_rows(name, depth=0):
        if name in dims:
            return dims[name][0] if dims[name] else None
        op, ins = producer.get(name, (None, []))
        if op in _TABLE_PASS_THROUGH and ins and depth < 8:
            return table_rows(ins[0], depth + 1)
        return None

    ids_names, frontier, found = {ids_input}, [ids_input], []
    while frontier:
        name = frontier.pop()
        for op, ins, outs, attrs in nodes:
            if op in _IDS_PASS_THROUGH and ins[:1] == [name] and outs and outs[0] not in ids_names:
                ids_names.add(outs[0])
                frontier.append(outs[0])
            elif op == "Gather" and len(ins) >= 2 and ins[1] == name and attrs.get("axis", 0) == 0:
                found.append(table_rows(ins[0]))
            elif op == "EmbedLayerNormalization" and len(ins) >= 3 and ins[0] == name:  # com.microsoft fusion
                found.append(table_rows(ins[2]))
    found = [n for n in found if n]
    return min(found) if found else None


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
    if not np.isin(mask, (0, 1)).all():
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


# -- grouping -----------------------------------------------------------------------------------------------------
def group_by_length(lengths, max_pad_ratio=_MAX_PAD_RATIO):
    """Row indices grouped by similar length (ascending), so padding stays within `max_pad_ratio`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups, cur, real = [], [], 0
    for i in order:
        n = lengths[i]
        if cur and (len(cur) + 1) * n > max_pad_ratio * (real + n):
            groups.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += n
    if cur:
        groups.append(cur)
    return groups


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


def run_isolated(run_group, rows, owner, log=None):
    """Logits for every row, isolating failures by request.

    `run_group(list of rows) -> logits [n, C]` runs one padded group. All rows run grouped by length; when a group
    fails, each request that had a row in it is re-run alone (and `log` is told). Returns ({request: logits [b, C]},
    {request: error}): only a request that also fails on its own gets an error."""
    lengths = [len(r) for r in rows]
    out = [None] * len(rows)
    suspects = set()
    for group in group_by_length(lengths):
        try:
            logits = run_group([rows[i] for i in group])
        except Exception as exc:  # noqa: BLE001 - which request caused it is found below
            requests = {owner[i] for i in group}
            suspects.update(requests)
            if log is not None:
                log(f"onnxruntime failed on a group of {len(group)} rows from {len(requests)} requests "
                    f"({one_line(exc)[:300]}); re-running those requests one at a time")
            continue
        for k, i in enumerate(group):
            out[i] = logits[k]
    by_request = {}
    for i, req in enumerate(owner):
        by_request.setdefault(req, []).append(i)
    results, errors = {}, {}
    for req, idx in by_request.items():
        if req in suspects:
            try:
                alone = run_isolated_request(run_group, [rows[i] for i in idx])
            except Exception as exc:  # noqa: BLE001
                errors[req] = f"onnxruntime failed on this request: {one_line(exc)}"
                continue
            results[req] = alone
        else:
            results[req] = np.stack([out[i] for i in idx])
    return results, errors


def run_isolated_request(run_group, rows):
    """One request's rows on their own (still grouped by length)."""
    out = [None] * len(rows)
    for group in group_by_length([len(r) for r in rows]):
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


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.name = config.get("name", "model")
        self.pad_id = int(params["pad_token_id"])
        self.side = params.get("padding_side", "right")
        if self.side not in ("left", "right"):
            raise ValueError(f"padding_side must be left or right, got {self.side!r}")
        self.max_length = int(params["max_length"])
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        opts = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0") or 0)
        if threads > 0:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # int8 exports ship guardrt_int8_path.py: exact int8 GEMMs where this CPU's U8S8 kernels saturate (no VNNI),
        # and below, the re-check of the export on this CPU's int8 path.
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        check = os.path.join(version_dir, "int8_check.npz")
        checker = os.path.join(version_dir, "guardrt_int8_path.py")
        int8 = None
        if params.get("guardrt_precision", "").startswith("int8") and os.path.isfile(checker):
            import importlib.util

            loader = importlib.util.spec_from_file_location(f"guardrt_int8_path_{self.name}", checker)
            int8 = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(int8)
            for key, value in int8.exact_int8_session_config().items():
                opts.add_session_config_entry(key, value)
        device_id = int(args.get("model_instance_device_id", 0) or 0)
        providers = _providers(params.get("execution_providers"), device_id, params)
        self.session = ort.InferenceSession(path, opts, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = config["output"][0]["name"]
        self.vocab_size = embedding_rows(path)
        vocab = (f"token ids checked against a vocabulary of {self.vocab_size} (embedding rows in the graph)"
                 if self.vocab_size else "token ids NOT range-checked (no embedding Gather on input_ids found)")
        pb_utils.Logger.log_info(
            f"guardrt {self.name}: {path} on {self.session.get_providers()}, pad {self.side}/{self.pad_id}, "
            f"max_length {self.max_length}, {vocab}"
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

    def _run_group(self, rows):
        ids, mask = pad_rows(rows, self.pad_id, self.side)
        feeds = {"input_ids": ids, "attention_mask": mask}
        return self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[0]

    def execute(self, requests):
        responses = [None] * len(requests)
        rows, owner = [], []
        for i, request in enumerate(requests):
            try:
                got = validate_rows(*read_request(request), self.max_length, self.vocab_size)
            except RequestError as exc:
                responses[i] = error_response(f"{self.name}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - an unexpected failure is still only this request's
                responses[i] = error_response(f"{self.name}: cannot read this request: {one_line(exc)}", "INTERNAL")
                continue
            rows.extend(got)
            owner.extend([i] * len(got))
        try:
            log = lambda msg: pb_utils.Logger.log_warn(f"guardrt {self.name}: {msg}")  # noqa: E731
            results, errors = run_isolated(self._run_group, rows, owner, log) if rows else ({}, {})
        except Exception as exc:  # noqa: BLE001 - defensive: run_isolated handles ORT failures itself
            results, errors = {}, {i: f"batch failed: {one_line(exc)}" for i in set(owner)}
        for i, logits in results.items():
            try:
                responses[i] = logits_response(self.output_name, logits)
            except Exception as exc:  # noqa: BLE001
                errors[i] = f"cannot build the response: {one_line(exc)}"
        for i, message in errors.items():
            responses[i] = error_response(f"{self.name}: {message}", "INTERNAL")
        return responses

    def finalize(self):
        self.session = None

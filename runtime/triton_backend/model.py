"""guardrt Triton python backend: ONNX Runtime over dynamically batched, ragged token-id requests.

Self-contained (numpy + onnxruntime only) so it runs in any Triton python backend, with or without guardrt
installed. Everything it needs comes from config.pbtxt `parameters`, written by `guardrt repo`:

  onnx_file            model file inside the version directory (external data next to it)
  pad_token_id         the spec's pad id
  padding_side         "left" (Qwen3: the last real token ends the row) or "right" (RoBERTa)
  max_length           longest sequence accepted
  execution_providers  "cpu" | "cuda" | "tensorrt" (CUDA / TensorRT execution providers on a GPU host)
  intra_op_threads     ONNX Runtime intra-op threads per instance (0: ORT default)
  trt_fp16 / trt_int8  TensorRT EP precision flags; trt_cache_dir: engine cache directory
  guardrt_precision    the export precision; int8 ones re-run `int8_check.npz` at load when this CPU's int8 path
                       differs from the one they were validated on (guardrt_int8_path.py, copied by `guardrt repo`)
  int8_recheck         optional: refuse (default) | warn | off over the gate (else $GUARDRT_INT8_RECHECK)

Inputs are declared `allow_ragged_batch: true`, so Triton hands `execute` requests of different lengths together.
Each request carries `input_ids` / `attention_mask` [b, L]; the real tokens of each row (mask == 1, one contiguous
run) are gathered, rows of similar length are padded together on the spec's side with the spec's pad id, and each
request gets back `logits` [b, num_labels] float32. A malformed request gets its own error; the others still run.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

# Start a new padded group when padding would more than double the tokens computed (keeps a 4k-token request from
# forcing every short request in the same batch to 4k).
_MAX_PAD_RATIO = 2.0


def _providers(kind, device_id, params):
    kind = (kind or "cpu").lower()
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if kind == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if kind == "tensorrt":
        trt = {
            "device_id": device_id,
            "trt_fp16_enable": params.get("trt_fp16", "0") == "1",
            "trt_int8_enable": params.get("trt_int8", "0") == "1",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": params.get("trt_cache_dir") or "/tmp/guardrt-trt-cache",
            "trt_timing_cache_enable": True,
        }
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]
    raise ValueError(f"unknown execution_providers {kind!r} (cpu, cuda, tensorrt)")


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
        self.max_batch = int(config.get("max_batch_size", 0)) or None
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
        pb_utils.Logger.log_info(
            f"guardrt {self.name}: {path} on {self.session.get_providers()}, pad {self.side}/{self.pad_id}, "
            f"max_length {self.max_length}"
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

    # -- request validation -------------------------------------------------------------------------------------
    def _rows(self, request):
        """The real token ids of each row of one request; ValueError with a message for the client."""
        ids_t = pb_utils.get_input_tensor_by_name(request, "input_ids")
        mask_t = pb_utils.get_input_tensor_by_name(request, "attention_mask")
        if ids_t is None or mask_t is None:
            raise ValueError("request needs both input_ids and attention_mask")
        ids, mask = ids_t.as_numpy(), mask_t.as_numpy()
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} must both be [batch, seq]")
        batch, length = ids.shape
        if batch == 0:
            raise ValueError("empty batch: the request has no rows")
        if length == 0:
            raise ValueError("empty sequence: the request has no tokens")
        if length > self.max_length:
            raise ValueError(f"sequence length {length} exceeds the model maximum {self.max_length}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 and 1")
        rows = []
        for r in range(batch):
            where = np.flatnonzero(mask[r])
            if where.size == 0:
                raise ValueError(f"row {r} has no tokens (attention_mask all zero)")
            if where[-1] - where[0] + 1 != where.size:
                raise ValueError(f"row {r}: attention_mask must mark one contiguous run of tokens")
            rows.append(ids[r, where[0]:where[-1] + 1])
        return rows

    # -- inference ----------------------------------------------------------------------------------------------
    def _groups(self, lengths):
        """Row indices grouped by similar length (ascending), so padding stays within _MAX_PAD_RATIO."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        groups, cur, real = [], [], 0
        for i in order:
            n = lengths[i]
            if cur and (len(cur) + 1) * n > _MAX_PAD_RATIO * (real + n):
                groups.append(cur)
                cur, real = [], 0
            cur.append(i)
            real += n
        if cur:
            groups.append(cur)
        return groups

    def _run(self, rows):
        lengths = [len(r) for r in rows]
        out = [None] * len(rows)
        for group in self._groups(lengths):
            width = max(lengths[i] for i in group)
            ids = np.full((len(group), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(group), width), dtype=np.int64)
            for k, i in enumerate(group):
                n = lengths[i]
                sl = slice(width - n, width) if self.side == "left" else slice(0, n)
                ids[k, sl] = rows[i]
                mask[k, sl] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            logits = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[0]
            for k, i in enumerate(group):
                out[i] = logits[k]
        return np.stack(out).astype(np.float32, copy=False)

    def execute(self, requests):
        responses = [None] * len(requests)
        rows, owner = [], []
        for i, request in enumerate(requests):
            try:
                got = self._rows(request)
            except ValueError as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {exc}"))
                continue
            rows.extend(got)
            owner.extend([i] * len(got))
        if rows:
            try:
                logits = self._run(rows)
            except Exception as exc:  # an ORT failure fails this execution's requests, not the server
                for i in sorted(set(owner)):
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"{self.name}: onnxruntime failed: {exc}"))
                return responses
            owner = np.asarray(owner)
            for i in sorted(set(owner.tolist())):
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(self.output_name, np.ascontiguousarray(logits[owner == i]))])
        return responses

    def finalize(self):
        self.session = None

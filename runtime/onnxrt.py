"""ONNX Runtime runner and the in-process classifier.

* `OnnxRunner`: one `InferenceSession` per model, explicit providers, thread settings; `infer(feeds) -> outputs`;
  a `BaseRunner` (runtime/runner.py), like the TensorRT runner and the Triton client. A provider asked for that is
  not the one running is an error, never a silent fallback.
* `InProcessClassifier`: payloads (dialogues or texts) -> exact preprocessing -> padded batches -> ORT -> the card's
  output dicts. What `guardrt classify` (in-process) runs.

onnxruntime is imported lazily (the `serve`/`export` extras install it). CUDA and TensorRT execution-provider options,
the TensorRT library loading and the active-provider check live in `runtime/ort_providers.py`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from guardrt.runtime.errors import InputError, ModelFilesError, require
from guardrt.runtime.ort_providers import (
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    check_active_providers,
    cuda_provider_options,
    load_tensorrt_libraries,
    provider_names,
    resolve_providers,
    tensorrt_provider_options,
)
from guardrt.runtime.runner import BaseRunner
from guardrt.runtime.specs import ModelSpec, get_spec

GPU_PROVIDERS = frozenset({CUDA_PROVIDER, TENSORRT_PROVIDER})
# int8-dynamic quantizes activations with one scale per tensor (DynamicQuantizeLinear): a row's logits depend on the
# other rows and the padding of its call (up to 0.026 logit on the tiny intent-safety model). Batched results must
# equal single-request results, so these run one row per call, unpadded.
BATCH_DEPENDENT_PRECISIONS = frozenset({"int8-dynamic"})

__all__ = [
    "OnnxRunner",
    "InProcessClassifier",
    "resolve_providers",
    "cuda_provider_options",
    "tensorrt_provider_options",
]



def _exact_int8(so) -> None:
    """Exact int8 GEMMs on CPUs whose U8S8 kernels saturate (no VNNI): `session.x64quantprecision=1` there, unless the
    caller set it (guardrt.runtime.int8_path.exact_int8_session_config). It matters for graphs with full-range int8
    weights (the static QDQ `int8`, exports made before issue 9); guardrt's int8-dynamic weights fit 7 bits and cannot
    saturate. Not set on VNNI / AMX CPUs, where it would only slow int8 down."""
    from guardrt.runtime.int8_path import exact_int8_session_config

    for key, value in exact_int8_session_config().items():
        try:
            so.get_session_config_entry(key)
        except Exception:  # ORT raises when the entry is not set
            so.add_session_config_entry(key, value)


class OnnxRunner(BaseRunner):
    """One ONNX Runtime session. `infer({"input_ids": ..., "attention_mask": ...}) -> {"logits": ...}`.

    providers: None (CPU), short names ("cpu", "cuda", "tensorrt"), or ORT's (name, options) tuples; short names get
    the options of `resolve_providers` (TensorRT: the spec's profile, flags from `precision`, the engine cache in
    `trt_cache_dir`). A provider asked for must exist in this onnxruntime and must be running once the session is
    created (ModelFilesError otherwise: no silent fallback to CPU on a GPU host).
    intra_op_threads / inter_op_threads: None leaves ORT's defaults (all physical cores, sequential execution).
    The session is created on construction (or `activate()`), released by `close()` / the context manager.
    """

    def __init__(
        self,
        model_path: str | Path,
        providers: Sequence[Any] | str | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        graph_optimization: str = "all",
        spec: ModelSpec | None = None,
        session_options: Any = None,
        precision: str | None = None,
        trt_cache_dir: str | Path | None = None,
    ):
        self.model_path = Path(model_path)
        kw = dict(precision=precision, trt_cache_dir=trt_cache_dir)
        self.providers = resolve_providers(providers, spec, **kw)
        self._requested = provider_names(resolve_providers(providers, spec, fallbacks=False, **kw))
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self.graph_optimization = graph_optimization
        self._session_options = session_options
        self.session = None
        self.activate()

    def activate(self) -> "OnnxRunner":
        if self.session is not None:
            return self
        ort = require("onnxruntime", "serve")
        if not self.model_path.is_file():
            raise ModelFilesError(f"ONNX model {self.model_path} does not exist")
        so = self._session_options or ort.SessionOptions()
        if self.intra_op_threads is not None:
            so.intra_op_num_threads = int(self.intra_op_threads)
        if self.inter_op_threads is not None:
            so.inter_op_num_threads = int(self.inter_op_threads)
            so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if self.inter_op_threads > 1 else so.execution_mode
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        so.graph_optimization_level = levels[self.graph_optimization]
        _exact_int8(so)
        available = set(ort.get_available_providers())
        # A provider the caller asked for must exist (no silent CPU fallback on a GPU host); the fallbacks that
        # resolve_providers appends are dropped when absent.
        unknown = [p for p in self._requested if p not in available]
        if unknown:
            raise ModelFilesError(
                f"execution provider(s) {', '.join(unknown)} not available in this onnxruntime "
                f"(available: {', '.join(sorted(available))}); on a GPU host: pip uninstall -y onnxruntime && pip install 'guardrt[gpu-ort]'"
            )
        if GPU_PROVIDERS & set(self._requested) and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu >= 1.21: load the CUDA / cuDNN libraries pip installed (nvidia-* wheels), which are
            # not on the loader path; without it the CUDA provider fails to load unless torch was imported first.
            ort.preload_dlls()
        if TENSORRT_PROVIDER in self._requested:
            load_tensorrt_libraries()  # pip's TensorRT is not on the loader path of onnxruntime-gpu's provider
        providers = [p for p in self.providers if (p[0] if isinstance(p, tuple) else p) in available]
        try:
            session = ort.InferenceSession(str(self.model_path), sess_options=so, providers=providers)
        except Exception as exc:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...)
            raise ModelFilesError(f"cannot load ONNX model {self.model_path}: {str(exc).splitlines()[0]}") from None
        check_active_providers(self._requested, session.get_providers(), self.model_path)
        self.session = session
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        return self

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model; feeds must name exactly the graph's inputs."""
        if self.session is None:
            self.activate()
        if set(feeds) != set(self.input_names):
            raise InputError(f"feeds {sorted(feeds)} do not match the model inputs {self.input_names}")
        outputs = self.session.run(self.output_names, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return dict(zip(self.output_names, outputs))

    @property
    def active_providers(self) -> list[str]:
        return list(self.session.get_providers()) if self.session is not None else []

    def close(self) -> None:
        self.session = None


class InProcessClassifier:
    """Payloads (dialogue turns or texts, per spec) -> the card's output dicts, entirely in this process.

    Sequences are sorted by length and cut into batches of at most `max_batch_size` (less padding, same results:
    padding is masked, and tests check batched == single), padded on the spec's side with its pad id.
    """

    def __init__(self, spec: ModelSpec | str, runner: BaseRunner, preprocessor, max_batch_size: int | None = None,
                 threshold: float | None = None):
        self.spec = get_spec(spec) if isinstance(spec, str) else spec
        self.runner = runner
        self.preprocessor = preprocessor
        self.max_batch_size = int(max_batch_size or self.spec.max_batch_size)
        self.threshold = threshold

    @classmethod
    def from_export_dir(
        cls,
        export_dir: str | Path,
        precision: str = "fp32",
        tokenizer_dir: str | Path | None = None,
        task_description: str | None = None,
        spec: str | None = None,
        providers: Sequence[Any] | str | None = None,
        intra_op_threads: int | None = None,
        max_batch_size: int | None = None,
        threshold: float | None = None,
        int8_recheck: str | None = None,
    ) -> "InProcessClassifier":
        """Load `export_dir` (a `guardrt export` output). `spec`, when given, must match the directory's spec;
        the tokenizer defaults to the one stored in the export directory.

        An int8 precision validated on another CPU int8 path is re-checked on the export's held-out set first
        (`guardrt.runtime.int8_path.recheck`; one warning line on the `guardrt` logger). Over its gate it is refused
        (ModelFilesError) unless int8_recheck (default $GUARDRT_INT8_RECHECK, else "refuse") is "warn" or "off"."""
        from guardrt.runtime.export_dir import load_export_dir
        from guardrt.runtime.preprocess import build_preprocessor

        manifest = load_export_dir(export_dir, spec=spec)
        model_spec = get_spec(manifest.spec)
        pre = build_preprocessor(model_spec, tokenizer_dir or manifest.tokenizer_dir, task_description)
        runner = OnnxRunner(manifest.model_path(precision), providers=providers, intra_op_threads=intra_op_threads,
                            spec=model_spec, precision=precision)
        if precision.startswith("int8"):
            _recheck_int8(manifest, precision, runner, model_spec, int8_recheck)
        if precision in BATCH_DEPENDENT_PRECISIONS:
            max_batch_size = 1
        return cls(model_spec, runner, pre, max_batch_size=max_batch_size, threshold=threshold)

    def encode(self, payloads: Sequence[Any]) -> list[list[int]]:
        return [self.preprocessor.encode(p) for p in payloads]

    def logits_for_ids(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Logits [N, num_labels] for preprocessed sequences, in input order."""
        from guardrt.runtime.preprocess import pad_batch

        if not sequences:
            return np.zeros((0, len(self.spec.labels)), dtype=np.float32)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out = np.empty((len(sequences), len(self.spec.labels)), dtype=np.float32)
        for start in range(0, len(order), self.max_batch_size):
            idx = order[start:start + self.max_batch_size]
            ids, mask = pad_batch([sequences[i] for i in idx], self.spec.pad_token_id, self.spec.padding_side)
            feeds = dict(zip(self.spec.input_names, (ids, mask)))
            logits = self.runner.infer(feeds)[self.spec.output_names[0]]
            out[idx] = logits
        return out

    def classify_ids(self, sequences: Sequence[Sequence[int]]) -> list[dict]:
        return self._postprocess(self.logits_for_ids(sequences))

    def classify(self, payloads: Sequence[Any]) -> list[dict]:
        """One card-format dict per payload, same order."""
        return self.classify_ids(self.encode(payloads))

    def _postprocess(self, logits: np.ndarray) -> list[dict]:
        from guardrt.runtime.postprocess import postprocess

        return postprocess(self.spec, logits, threshold=self.threshold) if len(logits) else []

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "InProcessClassifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()



def _recheck_int8(manifest, precision: str, runner: OnnxRunner, spec: ModelSpec, mode: str | None) -> None:
    """The load-time int8 re-check of `from_export_dir` (see there); nothing when the export has no check set."""
    import logging

    from guardrt.runtime.int8_path import recheck, recheck_mode, session_int8_path

    check = manifest.int8_check_file
    if check is None:
        return
    try:
        mode = recheck_mode(mode)
        result = recheck(check, precision, lambda feeds: runner.infer(feeds)[spec.output_names[0]],
                         session_int8_path(runner.session), model_name=spec.name, mode=mode)
    except ValueError as exc:
        runner.close()
        raise ModelFilesError(str(exc)) from None
    if not result.ok and mode == "refuse":
        runner.close()
        raise ModelFilesError(result.line)
    if result.ran:
        logging.getLogger("guardrt").warning(result.line)

"""Scoring engines for `guardrt score`: payloads -> the card's output fields, one result per payload.

* `EngineConfig` says how to build an engine: in-process ONNX Runtime (`model`), or Triton endpoints (`urls`). It is
  picklable: each Ray actor builds its own engine from it.
* `InProcessEngine` / `TritonEngine`: `score(payloads) -> list[dict]`, the card's output fields, or
  `{"error": reason}` for a payload the preprocessing refuses (the row is kept and marked). Failures that are not
  the row's fault (a model that cannot run, a server that is down) raise: the chunk stays unfinished and a re-run
  retries it, rather than marking every row of an outage as bad.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from guardrt.runtime.errors import GuardrtError, InputError
from guardrt.runtime.specs import ModelSpec, get_spec

__all__ = ["EngineConfig", "InProcessEngine", "TritonEngine", "card_output_fields", "encode_each"]


def card_output_fields(spec: ModelSpec) -> list[str]:
    """The names of the card's output fields, in the order the classifier returns them."""
    from guardrt.runtime.postprocess import postprocess

    return list(postprocess(spec, np.zeros((1, len(spec.labels)), dtype=np.float32))[0])


def encode_each(preprocessor, payloads: Sequence[Any]) -> tuple[list[list[int] | None], list[str | None]]:
    """Token ids per payload, or the reason it cannot be encoded (the other payloads are unaffected)."""
    ids: list[list[int] | None] = []
    errors: list[str | None] = []
    for payload in payloads:
        try:
            ids.append(preprocessor.encode(payload))
            errors.append(None)
        except InputError as exc:
            ids.append(None)
            errors.append(str(exc))
        except Exception as exc:  # e.g. lone surrogates the Rust tokenizer cannot take
            ids.append(None)
            errors.append(f"cannot tokenize ({exc})")
    return ids, errors


@dataclass(frozen=True)
class EngineConfig:
    """How to build a scoring engine. `urls` set: Triton endpoints; otherwise in-process ONNX Runtime on `model`."""

    spec: str
    model: str | None = None  # export directory (in-process; also the default tokenizer for Triton)
    precision: str = "fp32"
    tokenizer: str | None = None
    task_description: str | None = None  # the text, not a path (actors may run on other machines)
    threshold: float | None = None
    providers: str = "cpu"  # in-process ORT execution providers
    threads: int | None = None  # in-process ORT intra-op threads (None: ORT's default)
    batch_size: int | None = None
    urls: tuple[str, ...] = ()
    model_name: str | None = None
    timeout_s: float = 30.0

    @property
    def kind(self) -> str:
        return "triton" if self.urls else "onnx"

    @property
    def uses_gpu(self) -> bool:
        return self.kind == "onnx" and self.providers != "cpu"

    def check(self) -> None:
        """Fail early, with one line, on what would fail in every worker (missing model files, no tokenizer, a
        server down)."""
        if self.kind == "onnx":
            if not self.model:
                raise InputError("--model EXPORT_DIR (in-process) or --url (Triton) is required")
            from guardrt.runtime.export_dir import load_export_dir

            load_export_dir(self.model, spec=self.spec).model_path(self.precision)
        elif not (self.tokenizer or self.model):
            raise InputError("--url needs --tokenizer DIR (or --model EXPORT_DIR to use its tokenizer)")
        else:  # the server (one of the replicas) up and serving the model, before any file is written
            from guardrt.runtime.triton_replicas import triton_classifier, warn_down_replicas

            with triton_classifier(self.urls, self.spec, model_name=self.model_name,
                                   timeout_s=self.timeout_s) as client:
                client.check_ready()
                warn_down_replicas(client, "guardrt score")

    def settings(self) -> dict[str, Any]:
        """What changes the results: a resumed job must have the same (threads, batch size, URLs do not)."""
        out: dict[str, Any] = {"spec": self.spec, "engine": self.kind, "threshold": self.threshold}
        if self.kind == "onnx":
            out.update(model=str(Path(self.model).resolve()), precision=self.precision)
        else:
            out["model_name"] = self.model_name or self.spec
        tokenizer = self.tokenizer or (self.model if self.kind == "triton" else None)
        out["tokenizer"] = str(Path(tokenizer).resolve()) if tokenizer else None
        if self.task_description is not None:
            out["task_description_sha256"] = hashlib.sha256(self.task_description.encode()).hexdigest()
        return out

    def build(self):
        return TritonEngine(self) if self.kind == "triton" else InProcessEngine(self)


class InProcessEngine:
    """ONNX Runtime in this process (`InProcessClassifier`: length-sorted batches, the spec's padding)."""

    def __init__(self, config: EngineConfig):
        from guardrt.runtime.onnxrt import InProcessClassifier

        self.classifier = InProcessClassifier.from_export_dir(
            config.model, precision=config.precision, tokenizer_dir=config.tokenizer,
            task_description=config.task_description, spec=config.spec, providers=config.providers,
            intra_op_threads=config.threads, max_batch_size=config.batch_size, threshold=config.threshold)
        self.spec = self.classifier.spec

    def score(self, payloads: Sequence[Any]) -> list[dict]:
        ids, errors = encode_each(self.classifier.preprocessor, payloads)
        results: list[dict] = [{"error": e} if e else {} for e in errors]
        good = [i for i, e in enumerate(errors) if e is None]
        if good:
            for i, result in zip(good, self.classifier.classify_ids([ids[i] for i in good])):
                results[i] = result
        return results

    def close(self) -> None:
        self.classifier.close()


class TritonEngine:
    """Triton endpoints through one client: a `TritonClassifier` for one URL, a `ReplicatedTritonClassifier` for
    several (each request to the least busy ready replica; a request refused by a replica that went down is re-sent
    to another, so an outage of one replica costs no row). Tokenization happens here, once."""

    def __init__(self, config: EngineConfig):
        from guardrt.runtime.preprocess import build_preprocessor
        from guardrt.runtime.triton_replicas import triton_classifier

        self.spec = get_spec(config.spec)
        self.preprocessor = build_preprocessor(self.spec, config.tokenizer or config.model, config.task_description)
        self.client = triton_classifier(config.urls, self.spec, preprocessor=self.preprocessor,
                                        model_name=config.model_name, timeout_s=config.timeout_s,
                                        threshold=config.threshold)
        try:
            self.client.check_ready()  # server(s) down / model not ready: one line before any row is read
        except GuardrtError:
            self.client.close()
            raise

    def score(self, payloads: Sequence[Any]) -> list[dict]:
        from guardrt.runtime.postprocess import postprocess

        ids, errors = encode_each(self.preprocessor, payloads)
        results: list[dict] = [{"error": e} if e else {} for e in errors]
        good = [i for i, e in enumerate(errors) if e is None]
        if good:
            logits = self.client.logits_for_ids([ids[i] for i in good])
            for i, result in zip(good, postprocess(self.spec, logits, self.client.threshold)):
                results[i] = result
        return results

    def close(self) -> None:
        self.client.close()

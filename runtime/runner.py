"""The one small protocol every runner follows (ONNX Runtime, TensorRT, the Triton client), as Polygraphy's
`BaseRunner` does: `activate()` loads what the runner needs and returns the runner (calling it again does nothing),
`infer(feeds) -> outputs` maps input names to NumPy arrays and back, `close()` releases everything (calling it
again does nothing), and a `with` block does `activate()` ... `close()`.

`InProcessClassifier`, the engine validation and the benchmarks take any `BaseRunner`. `BucketPaddingRunner` wraps
one to run each batch at its length-bucket shape, as native Triton backends receive it from the thin client.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["BaseRunner", "BucketPaddingRunner"]


class BaseRunner:
    """Base of the runners: subclasses implement `infer` and, when they hold resources, `activate` / `close`."""

    def activate(self) -> "BaseRunner":
        """Load the model / open the connection; idempotent. Returns the runner."""
        return self

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{input name: array} -> {output name: array}."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what `activate` acquired; idempotent."""

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.close()


class BucketPaddingRunner(BaseRunner):
    """Wraps a runner: re-pads every batch to the spec length bucket of its longest row (pad id, mask 0, the spec's
    padding side) - the shapes the thin client sends native Triton backends - with `preprocess.pad_batch`, the one
    padding function. The wrapped runner's lifetime stays with its owner (`close` does not close it)."""

    def __init__(self, runner: Any, spec):
        self.runner, self.spec = runner, spec

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from guardrt.runtime.preprocess import pad_batch

        ids, mask = (np.asarray(feeds[n]) for n in self.spec.input_names)
        bucket = self.spec.bucket_for(ids.shape[1])
        if bucket != ids.shape[1]:
            rows = [row[m.astype(bool)] for row, m in zip(ids, mask)]
            ids, mask = pad_batch(rows, self.spec.pad_token_id, self.spec.padding_side, bucket)
        return self.runner.infer(dict(zip(self.spec.input_names, (ids, mask))))

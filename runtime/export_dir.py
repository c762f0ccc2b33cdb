"""The export directory contract: what `guardrt export --out DIR` writes, and its loader.

Layout (self-contained; everything a server or an in-process classifier needs)::

    DIR/guardrt.json            manifest (see `ExportManifest`)
    DIR/config.json             the Hugging Face model config
    DIR/tokenizer.json, ...     tokenizer files at the root (the default tokenizer of `guardrt classify`)
    DIR/<precision>/model.onnx  one graph per precision (fp32, fp16, int8, int8-dynamic), plus
                                `model.onnx.data` (one external-data file) when the graph is large
    DIR/validation.json         ORT-vs-PyTorch validation results, per precision
    DIR/int8_check.npz          int8 precisions only: held-out rows, their PyTorch fp32 logits, each int8
                                precision's logits at export, and meta (gates, the CPU int8 path each int8 precision
                                was validated on); re-run when an int8 precision loads on another int8 path
                                (`guardrt.runtime.int8_path`)

`guardrt.json` has an `int8` section when the export holds an int8 precision: `validated_on` (precision -> the int8
code path, CPU, relevant CPU flags and onnxruntime version it was validated with), `check_set` and `formats`.

Every classifier graph takes `input_ids` and `attention_mask` (int64 [batch, sequence]) and returns `logits`
(float32 [batch, num_labels]), whatever its internal precision.

`graph` in guardrt.json names the kind of graph `precisions` points to: "classifier" (the default, for manifests
written before the field existed), "causal-lm-with-past" (a KV-cache decoder for generation) or "verdict" (a
classifier-shaped graph over a causal LM: `input_ids`, `attention_mask` -> `verdict` float32 [batch, 7]); see
`guardrt.export.causal_lm_export`. An export holding several kinds lists them in `graphs`
(kind -> precision -> path), e.g. `generate/<precision>/model.onnx` and `verdict/<precision>/model.onnx`.

Pure Python (json + pathlib): used by the runtime, the Triton repository writer and the exporter alike.
`guardrt.export.export_dir` re-exports it for build-time code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrt.runtime.errors import ModelFilesError, read_json_file

__all__ = ["MANIFEST_NAME", "VALIDATION_NAME", "PRECISIONS", "ExportManifest", "load_export_dir"]

MANIFEST_NAME = "guardrt.json"
VALIDATION_NAME = "validation.json"
# Every precision the exporter knows, in the order it builds them.
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")


@dataclass(frozen=True)
class ExportManifest:
    """A loaded, checked export directory. `precisions` maps precision -> absolute path of its model.onnx."""

    path: Path
    spec: str
    architecture: str
    num_labels: int
    precisions: dict[str, Path]
    guardrt_version: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    graph: str = "classifier"
    # graph kind -> precision -> absolute model path (always has `graph` -> `precisions`).
    graphs: dict[str, dict[str, Path]] = field(default_factory=dict)

    def graph_path(self, kind: str, precision: str = "fp32") -> Path:
        """Path of `kind`'s model.onnx at `precision`; ModelFilesError naming what the export has otherwise."""
        try:
            return self.graphs[kind][precision]
        except KeyError:
            have = "; ".join(f"{k}: {', '.join(v)}" for k, v in self.graphs.items()) or "none"
            raise ModelFilesError(f"export {self.path} has no {kind} graph at {precision!r}; it has {have}") from None

    def model_path(self, precision: str = "fp32") -> Path:
        """Path of the precision's model.onnx; ModelFilesError naming the available precisions otherwise."""
        try:
            return self.precisions[precision]
        except KeyError:
            raise ModelFilesError(
                f"export {self.path} has no {precision!r} model; it has: {', '.join(self.precisions) or 'none'}"
            ) from None

    @property
    def tokenizer_dir(self) -> Path:
        return self.path

    def int8_validated_on(self, precision: str) -> dict[str, Any] | None:
        """The CPU int8 path record `precision` was validated with (None: not int8, or an export made before
        guardrt recorded it)."""
        return ((self.raw.get("int8") or {}).get("validated_on") or {}).get(precision)

    @property
    def int8_check_file(self) -> Path | None:
        """The held-out int8 check set (int8_check.npz), when the export carries one."""
        name = (self.raw.get("int8") or {}).get("check_set")
        file = self.path / str(name) if name else None
        return file if file is not None and file.is_file() else None

    def validation(self) -> dict[str, Any]:
        """validation.json as a dict ({} when absent)."""
        file = self.path / VALIDATION_NAME
        if not file.is_file():
            return {}
        return read_json_file(file)


def load_export_dir(path: str | Path, spec: str | None = None) -> ExportManifest:
    """Read and check `path/guardrt.json`; ModelFilesError (one clear line) when the directory is missing,
    not an export directory, corrupt, lists a model file that is not there, or was exported for another spec."""
    root = Path(path)
    if not root.exists():
        raise ModelFilesError(f"export directory {root} does not exist")
    if not root.is_dir():
        raise ModelFilesError(f"{root} is not a directory (expected a `guardrt export` output directory)")
    file = root / MANIFEST_NAME
    if not file.is_file():
        raise ModelFilesError(f"{root} is not a guardrt export directory (no {MANIFEST_NAME}; run `guardrt export`)")
    raw = read_json_file(file)
    if not isinstance(raw, dict):
        raise ModelFilesError(f"corrupt {file}: expected a JSON object")
    missing = [k for k in ("spec", "architecture", "precisions", "num_labels") if k not in raw]
    if missing:
        raise ModelFilesError(f"corrupt {file}: missing {', '.join(missing)}")
    if spec is not None and raw["spec"] != spec:
        raise ModelFilesError(f"{root} was exported for spec {raw['spec']!r}, not {spec!r}")
    if not isinstance(raw["precisions"], dict) or not raw["precisions"]:
        raise ModelFilesError(f"corrupt {file}: `precisions` must map precision -> model path")
    def resolve(table: Any, what: str) -> dict[str, Path]:
        if not isinstance(table, dict):
            raise ModelFilesError(f"corrupt {file}: {what} must map precision -> model path")
        paths: dict[str, Path] = {}
        for precision, rel in table.items():
            model = (root / str(rel)).resolve()
            if not model.is_file() or model.stat().st_size == 0:
                raise ModelFilesError(f"export {root}: {precision} model {rel} is missing or empty")
            paths[str(precision)] = model
        return paths

    precisions = resolve(raw["precisions"], "`precisions`")
    graph = str(raw.get("graph") or "classifier")
    extra = raw.get("graphs") or {}
    if not isinstance(extra, dict):
        raise ModelFilesError(f"corrupt {file}: `graphs` must map graph kind -> precision -> model path")
    graphs = {str(kind): resolve(table, f"graphs.{kind}") for kind, table in extra.items()}
    graphs[graph] = precisions
    if not (root / "config.json").is_file():
        raise ModelFilesError(f"export {root}: config.json is missing")
    return ExportManifest(
        path=root.resolve(),
        spec=str(raw["spec"]),
        architecture=str(raw["architecture"]),
        num_labels=int(raw["num_labels"]),
        precisions=precisions,
        guardrt_version=str(raw.get("guardrt_version", "")),
        raw=raw,
        graph=graph,
        graphs=graphs,
    )

"""The export directory contract, for build-time code: re-exports `guardrt.runtime.export_dir` (the loader lives in
runtime/ because deployed code — the in-process classifier, the Triton python backend — reads export directories
too, and runtime/ never imports export/)."""
from guardrt.runtime.export_dir import (  # noqa: F401
    MANIFEST_NAME,
    PRECISIONS,
    VALIDATION_NAME,
    ExportManifest,
    load_export_dir,
)

__all__ = ["MANIFEST_NAME", "PRECISIONS", "VALIDATION_NAME", "ExportManifest", "load_export_dir"]

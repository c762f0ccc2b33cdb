"""A stand-in for `triton_python_backend_utils` (it exists only inside Triton's stub) with the few names guardrt's
python backend uses, and the backend module loaded with it. The real server runs the same code in tests/triton."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

BACKEND = Path(__file__).resolve().parents[2] / "runtime" / "triton_backend" / "model.py"


class Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        if isinstance(self.array, Exception):
            raise self.array
        return self.array


class TritonError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message, code=None):
        self.message, self.code = message, code


class Response:
    def __init__(self, output_tensors=(), error=None):
        self.output_tensors, self.error = list(output_tensors), error


def load_backend(name="guardrt_triton_backend_under_test"):
    """The backend module, imported with a stand-in for triton_python_backend_utils."""
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor, fake.TritonError, fake.InferenceResponse = Tensor, TritonError, Response
    fake.get_input_tensor_by_name = lambda request, name: request.get(name)
    fake.Logger = types.SimpleNamespace(log_info=lambda m: None, log_warn=lambda m: fake.warnings.append(m))
    fake.warnings = []
    saved = sys.modules.get("triton_python_backend_utils")
    sys.modules["triton_python_backend_utils"] = fake
    try:
        spec = importlib.util.spec_from_file_location(name, BACKEND)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("triton_python_backend_utils", None)
        else:
            sys.modules["triton_python_backend_utils"] = saved
    module.fake_pb_utils = fake
    return module

"""guardrt: ONNX / TensorRT / Triton inference runtime for LLM safety classifiers."""
__version__ = "0.1.0"

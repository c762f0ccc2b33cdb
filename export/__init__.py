"""guardrt.export: build-time code (torch, transformers, optimum, onnx, TensorRT). Never imported by runtime/."""

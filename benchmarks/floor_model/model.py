"""The floor of Triton's python backend: a model with guardrt's token-id interface that does no work at all (reads
`input_ids`, answers zeros). benchmarks/serve_profile.py serves it beside the real model: its round trip is what
Triton's gRPC frontend, core, dynamic batcher and python-backend stub IPC cost on this machine before guardrt does
anything - the part of the hop no code inside a python model can remove."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import json

        self.labels = int(json.loads(args["model_config"])["output"][0]["dims"][0])

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().shape[0]
            zeros = np.zeros((rows, self.labels), dtype=np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logits", zeros)]))
        return responses

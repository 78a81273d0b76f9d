"""Test stand-in for Triton's ONNX Runtime backend: ``facecomp_generator`` as a Python backend model.

The only Triton server a package brings here (nvidia-pytriton's bundled ``tritonserver``) carries the
Python backend and no other, so it cannot load ``platform: "onnxruntime_onnx"``. This model runs the
same exported ``model.onnx`` with ONNX Runtime inside the Python backend, under the generator's own
name, inputs, outputs and dynamic batching, so ``facecomp_complete`` (the model under test) reaches
it by BLS exactly as it would reach the real backend.
"""

from __future__ import annotations

import json
import os
import site
import sys
from pathlib import Path


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        for entry in reversed([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]):
            before = list(sys.path)
            site.addsitedir(entry)
            added = [p for p in sys.path if p not in before]
            sys.path[:] = added + [p for p in sys.path if p not in added]
        import onnxruntime as ort
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list) -> list:
        pb = self.pb
        out = []
        for request in requests:
            x = pb.get_input_tensor_by_name(request, self.input).as_numpy()
            y = self.session.run([self.output], {self.input: x})[0]
            out.append(pb.InferenceResponse(output_tensors=[pb.Tensor(self.output, y)]))
        return out

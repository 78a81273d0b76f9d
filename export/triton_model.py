"""Triton's Python backend model ``facecomp_complete``: an aligned face and a mask in, the completed face out.

``facecomp export`` copies this file to ``REPO/facecomp_complete/1/model.py``. Each request is
prepared with :mod:`facecomp.contract` (crop, noise fill, mask channel), sent to the generator model
(``facecomp_generator``, ONNX Runtime or TensorRT, beside it in the repository) by a BLS call, and
finished with the contract (paste back under the mask at the input's size, then the blend), so the
response equals ``facecomp.Completer``'s for the same seed and blend.

    IMAGE      uint8  [H, W, 3]  RGB, an aligned 178x218 face (any other size is taken as the face itself)
    MASK       uint8  [H, W]     nonzero = hole to complete
    SEED       uint64 [1]        optional, default 0: same seed, same completion
    BLEND      string [1]        optional, "poisson" or "none" (default: the contract's DEFAULT_BLEND)
    COMPLETED  uint8  [H, W, 3]

Its environment needs numpy, OpenCV and facecomp (``pip install --no-deps facecomp`` next to numpy and
opencv-python-headless: the contract imports no torch). Triton's Python backend stub starts its
interpreter without PYTHONPATH; the entries of PYTHONPATH are added here as site directories (their
``.pth`` files too), so a virtual environment's site-packages can be named there.
"""

from __future__ import annotations

import json
import os
import site
import sys


def _honour_pythonpath() -> None:
    for entry in reversed([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]):
        before = list(sys.path)
        site.addsitedir(entry)
        added = [p for p in sys.path if p not in before]
        sys.path[:] = added + [p for p in sys.path if p not in added]  # ahead of the system's packages


class TritonPythonModel:
    """The model object Triton's Python backend instantiates (``initialize``, ``execute``, ``finalize``)."""

    def initialize(self, args: dict) -> None:
        _honour_pythonpath()
        import triton_python_backend_utils as pb_utils

        from facecomp import contract

        self.pb, self.contract = pb_utils, contract
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.generator = params["generator_model"]
        self.generator_input = params["generator_input"]
        self.generator_output = params["generator_output"]
        self.mask_channel = params["mask_channel"] == "true"
        self.size = int(params["image_size"])
        self.default_seed = int(params.get("default_seed", "0"))
        self.default_blend = params.get("default_blend", contract.DEFAULT_BLEND)
        self.fixed_batch = int(params.get("generator_fixed_batch", "0"))  # 0: the generator batches dynamically

    def execute(self, requests: list) -> list:
        return [self._one(r) for r in requests]

    def _one(self, request):
        pb = self.pb
        try:
            image = pb.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            mask = pb.get_input_tensor_by_name(request, "MASK").as_numpy()
            seed_tensor = pb.get_input_tensor_by_name(request, "SEED")
            seed = int(seed_tensor.as_numpy().reshape(-1)[0]) if seed_tensor is not None else self.default_seed
            blend_tensor = pb.get_input_tensor_by_name(request, "BLEND")
            blend = self.default_blend
            if blend_tensor is not None:
                value = blend_tensor.as_numpy().reshape(-1)[0]
                blend = value.decode() if isinstance(value, bytes) else str(value)
            if blend not in self.contract.BLENDS:
                raise ValueError(f"BLEND must be one of {', '.join(self.contract.BLENDS)}, got {blend!r}")
            job = self.contract.prepare(image, mask != 0, seed=seed, mask_channel=self.mask_channel, size=self.size)
        except ValueError as e:  # the contract's refusals: shapes, an empty or off-box mask
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(e)))
        generated = self._generate(job.filled)
        if isinstance(generated, str):
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(generated))
        completed = self.contract.finish(job, generated, blend=blend)
        return pb.InferenceResponse(output_tensors=[pb.Tensor("COMPLETED", completed)])

    def _generate(self, filled):
        """One BLS call to the generator model: [1, C, S, S] float32 -> [1, 3, S, S], or the error's text."""
        pb = self.pb
        if self.fixed_batch:  # a --batch N export takes exactly N samples: pad with copies, keep the first
            filled = filled.repeat(self.fixed_batch, axis=0)
        kwargs = {}
        if hasattr(pb, "PreferredMemory"):  # a GPU generator's output comes back in host memory
            kwargs["preferred_memory"] = pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0)
        response = pb.InferenceRequest(model_name=self.generator, inputs=[pb.Tensor(self.generator_input, filled)],
                                       requested_output_names=[self.generator_output], **kwargs).exec()
        if response.has_error():
            return f"{self.generator}: {response.error().message()}"
        return pb.get_output_tensor_by_name(response, self.generator_output).as_numpy()[:1]

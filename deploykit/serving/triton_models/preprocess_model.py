"""Triton Python-backend model written by ``deploykit triton``: encoded image files (BYTES) -> the
normalized float32 (C, H, W) batch of the preset, with deploykit's preprocessing (the same code as
``deploykit predict``; the record is in this model's config ``parameters``)."""

import json

import triton_python_backend_utils as pb_utils

from deploykit.runtime.preprocess import Preprocessing


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.preprocessing = Preprocessing.from_dict(json.loads(params["preprocessing"]))
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            blobs = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
            try:
                pixels = self.preprocessing([bytes(b) for b in blobs])
            except Exception as exc:  # an undecodable image fails its own request only
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, pixels)])
            )
        return responses

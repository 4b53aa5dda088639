"""Triton Python-backend model written by ``deploykit triton``: encoded image files (BYTES) -> the
normalized float32 (C, H, W) batch of the preset, with deploykit's preprocessing (the same code as
``deploykit predict``; the record is in this model's config ``parameters``)."""

import json

import triton_python_backend_utils as pb_utils

from deploykit.core.errors import InputError
from deploykit.runtime.preprocess import Preprocessing


def _client_error(message: str):
    """A TritonError the server reports as the client's fault (HTTP 400, gRPC INVALID_ARGUMENT) where the
    Python backend knows error codes, else a plain one."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


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
            except InputError as exc:  # the client's image: 400 / INVALID_ARGUMENT for its own request only
                responses.append(pb_utils.InferenceResponse(error=_client_error(str(exc))))
                continue
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, pixels)])
            )
        return responses

"""Triton Python-backend model written by ``deploykit triton --backend python``: runs the ONNX file beside
it with ONNX Runtime (deploykit's own runner). Requests that Triton's dynamic batcher groups together are
concatenated into one batch, run once, and split again."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from deploykit.runtime.ort_runner import OrtRunner


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / params.get("onnx_file", "model.onnx")
        threads = int(params.get("intra_op_threads", "0")) or None
        if args["model_instance_kind"] == "GPU":
            device = int(args["model_instance_device_id"])
            providers = [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.runner = OrtRunner(path, providers=providers, threads=threads)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(config["output"][0]["data_type"])

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        try:
            logits = self.runner.run(np.concatenate(batches)).astype(self.output_dtype)
        except Exception as exc:  # every request of the batch gets the error, the instance stays healthy
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        splits = np.cumsum([len(b) for b in batches])[:-1]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)])
            for part in np.split(logits, splits)
        ]

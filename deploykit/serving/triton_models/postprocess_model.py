"""Triton Python-backend model written by ``deploykit triton``: logits -> the top-k classes, their
softmax probabilities and labels (``labels.json`` beside this file: a JSON list, class ``i``'s name at index
``i``), as ``deploykit predict`` reports them."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from deploykit.runtime.postprocess import softmax, topk_indices


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.k = int(params["top_k"])
        path = Path(args["model_repository"]) / args["model_version"] / "labels.json"
        names = json.loads(path.read_text(encoding="utf-8"))
        classes = int(config["input"][0]["dims"][-1])
        if not isinstance(names, list) or len(names) != classes or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: not a JSON list of {classes} class names")
        self.labels = np.array([name.encode("utf-8") for name in names], dtype=object)
        self.input_name = config["input"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            probs = softmax(pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy())
            order = topk_indices(probs, self.k)
            outputs = [
                pb_utils.Tensor("CLASSES", order.astype(np.int64)),
                pb_utils.Tensor("PROBS", np.take_along_axis(probs, order, axis=-1).astype(np.float32)),
                pb_utils.Tensor("LABELS", self.labels[order]),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

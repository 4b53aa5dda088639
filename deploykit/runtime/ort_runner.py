"""ONNX Runtime runner. The providers in use are read back from the session (``get_providers()``):
``get_available_providers()`` lists what the wheel was built with, not what actually loaded."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from deploykit.core.errors import ArtifactError, first_line
from deploykit.core.parts import require


class OrtRunner:
    def __init__(
        self,
        model: str | Path | bytes,
        providers: list[str] | None = None,
        threads: int | None = None,
        name: str = "onnxruntime",
        profile_prefix: str | None = None,
        spin: bool = True,
    ) -> None:
        """``spin=False`` when the session shares the process's cores with another runtime (PyTorch in
        ``validate``): ONNX Runtime's idle worker threads otherwise keep spinning after each run and take
        the cores the other runtime's next batch needs."""
        ort = require("onnxruntime")

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        wanted = providers or default_providers()
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=wanted)
        except Exception as exc:
            first = first_line(exc)
            raise ArtifactError(f"ONNX Runtime cannot load the model: {first}") from None
        self.providers = self.session.get_providers()
        self.input = self.session.get_inputs()[0]
        self.input_name = self.input.name
        self.input_dtype = np.float16 if "float16" in self.input.type else np.float32
        self.name = f"{name}[{self.providers[0]}]"

    @property
    def static_batch(self) -> int | None:
        """The graph's fixed batch size, or None when its batch axis is dynamic."""
        first = self.input.shape[0] if self.input.shape else None
        return first if isinstance(first, int) and first > 0 else None

    def check_image_input(self, chw: tuple[int, int, int], what: str) -> None:
        """One clear error unless the graph takes exactly one float ``(batch, C, H, W)`` image input of
        these C, H, W (a static batch size is fine: :meth:`run` feeds it chunk by chunk)."""
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise ArtifactError(f"{what} has {len(inputs)} inputs ({names}); an image classifier has one")
        if self.input.type not in ("tensor(float)", "tensor(float16)"):
            raise ArtifactError(f"{what}: input {self.input_name!r} is {self.input.type}, not a float image")
        shape = list(self.input.shape)
        if len(shape) != 4 or tuple(shape[1:]) != tuple(chw):
            raise ArtifactError(
                f"{what}: input {self.input_name!r} has shape {shape}, which does not fit the model's "
                f"(batch, {', '.join(map(str, chw))})"
            )

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        static = self.static_batch
        if static is None or len(x) == static:
            return self.session.run(None, {self.input_name: x})[0].astype(np.float32)
        chunks = []
        for start in range(0, len(x), static):  # a fixed batch size: full chunks, the last one padded
            part = x[start : start + static]
            padded = np.concatenate([part, np.zeros((static - len(part), *part.shape[1:]), part.dtype)])
            chunks.append(self.session.run(None, {self.input_name: padded})[0][: len(part)])
        return np.concatenate(chunks).astype(np.float32)


def default_providers(tensorrt: bool = False) -> list[str]:
    """CUDA (and, with ``tensorrt``, TensorRT) first only where a session really runs on it; CPU otherwise
    (and always as the fallback). Parity checks leave TensorRT out: its execution provider picks its own
    kernels and tactics, which is what ``deploykit predict`` wants and ``validate`` must not hide."""
    wanted = ["TensorrtExecutionProvider"] if tensorrt else []
    wanted.append("CUDAExecutionProvider")
    return [p for p in wanted if provider_loads(p)] + ["CPUExecutionProvider"]


def cuda_provider_loads() -> bool:
    """True only when a session really runs on CUDAExecutionProvider (not merely listed as available)."""
    return provider_loads("CUDAExecutionProvider")


@functools.cache
def provider_loads(provider: str) -> bool:
    """True only when a session really runs on ``provider`` (not merely listed as available)."""
    ort = require("onnxruntime")

    if provider not in ort.get_available_providers():
        return False
    from deploykit.runtime.providers import probe_provider

    return probe_provider(provider).runs  # a one-node graph, shipped serialized: no onnx needed

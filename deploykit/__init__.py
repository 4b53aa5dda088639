"""deploykit: export ConViT, CeiT, DeepViT, CvT and HVT to ONNX / TensorRT and prove parity.

Each package declares what it may import (``tests/test_architecture.py`` checks it; docs/architecture.md):

==============  ==========================================================================================
``core``        torch-free basics: errors, atomic writes, ONNX load/save, configs, the artifact record
``models``      the five model families and their checkpoint layouts
``runtime``     runners (PyTorch, ONNX Runtime), preprocessing, postprocessing
``validation``  validation images, the parity comparator and its records, divergence, baselines, references
``transforms``  graph transforms: rewrites, ONNX export, simplify, FP16, INT8, TensorRT-parser lint
``engine``      the TensorRT backend: build, run, trtexec script
``workflows``   what each command does, returning what it made: export, validate, predict, bench, build
``serving``     Triton model repositories and a supervised Triton server
``cli``         the commands: flags, what they print, one-line errors and exit codes
==============  ==========================================================================================

``deploykit.export(model_or_preset, out_dir, ...)`` is the Python entry point of ``export`` (it also takes a
model held in memory); ``deploykit.load(path)`` (an exported artifact as a classifier) that of ``predict``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: ``import deploykit`` stays free of torch, onnx and onnxruntime
    if name == "load":
        from deploykit.workflows.predict import load

        return load
    if name == "export":
        from deploykit.core.parts import require

        require("torch", "deploykit.export")  # one line naming [export] on a device install
        from deploykit.workflows.export import export

        return export
    raise AttributeError(f"module 'deploykit' has no attribute {name!r}")

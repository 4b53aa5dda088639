"""deploykit: export ConViT, CeiT, DeepViT, CvT and HVT to ONNX / TensorRT and prove parity.

The package is layered; each layer imports only the ones below it (``tests/test_architecture.py`` checks it):

==============  ==========================================================================================
``core``        torch-free basics: errors, atomic writes and hashes, ONNX load/save, configs, artifact kinds
``models``      the five model families and their checkpoint layouts
``runtime``     runners (PyTorch, ONNX Runtime), preprocessing, postprocessing
``validation``  validation images, the parity comparator, module-level divergence, baselines
``transforms``  graph transforms: rewrites, ONNX export, simplify, FP16, TensorRT-parser lint
``engine``      the TensorRT backend: build, run, trtexec script
``workflows``   what each command does: export pipeline + manifest + report, validate gate, predict, bench
``serving``     Triton model repositories and a supervised Triton server
``cli``         argument parsing only: one workflow call per command
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
        from deploykit.workflows.pipeline import export

        return export
    raise AttributeError(f"module 'deploykit' has no attribute {name!r}")

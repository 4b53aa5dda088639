"""Graph transforms, each usable on its own: export rewrites of the model's custom ops (:mod:`.rewrites`),
PyTorch -> ONNX (:mod:`.onnx_export`, through the trace cache :mod:`.trace_cache`), simplification
(:mod:`.simplify`), the FP16 conversion with FP32 islands (:mod:`.fp16`, which takes the PyTorch reference
outputs from its caller), INT8 (:mod:`.int8`, :mod:`.int8_gated`) and the TensorRT-parser lint
(:mod:`.lint`). The order they run in, and parity between them, is the export pipeline's
(:mod:`deploykit.workflows.export`).

Owns: model -> graph and graph -> graph transformations.
May import: core, models, runtime, validation."""

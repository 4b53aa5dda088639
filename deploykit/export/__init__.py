"""Export pipeline: rewrites -> ONNX -> simplify -> validate -> lint -> manifest (each stage runnable alone)."""

"""deploykit: export ConViT, CeiT, DeepViT, CvT and HVT to ONNX / TensorRT and prove parity."""

__version__ = "0.1.0"

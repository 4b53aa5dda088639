"""Serving with NVIDIA Triton Inference Server: model repositories (``deploykit triton``) and a supervised
real server (``deploykit serve``).

Owns: Triton repositories, configs, the Python-backend models and the server process.
May import: core, runtime, engine."""

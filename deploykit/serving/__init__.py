"""Serving with NVIDIA Triton Inference Server: model repositories (``deploykit triton``) and a supervised
real server (``deploykit serve``)."""

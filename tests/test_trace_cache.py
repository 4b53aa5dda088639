"""The trace cache (deploykit.transforms.trace_cache): a warm export fills the cached graph with the
model's own weights instead of tracing — byte for byte the graph a fresh trace writes — and a cache entry
that is corrupt, foreign or wrong never changes what an export publishes."""

from __future__ import annotations

import dataclasses

import onnx
import pytest
import torch

import deploykit
import deploykit.transforms.onnx_export as onnx_export
from deploykit.core.config import default_config
from deploykit.models import create_model
from deploykit.transforms import trace_cache

SIZE = 64


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("DEPLOYKIT_TRACE_CACHE", "on")
    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(folder))
    return folder / "traces"


def _model(seed: int):
    torch.manual_seed(seed)
    # three blocks (one pooling) instead of twelve: a quarter of the tracing, the same kinds of layers
    return create_model(
        "hvt_ti_1", image_size=SIZE, num_classes=10, num_encoder_blocks=3, hvt_pool=[1]
    ).eval()


def _config():
    return dataclasses.replace(default_config("hvt"), image_size=SIZE)  # dynamo, the default exporter


def _no_tracing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("traced although the graph was cached")

    monkeypatch.setattr(onnx_export, "export_onnx", refuse)


def test_warm_export_fills_other_weights_byte_identical_to_a_fresh_trace(cache, tmp_path, monkeypatch):
    first = deploykit.export(_model(1), tmp_path / "first", config=_config())
    assert first.manifest["trace_cache"]["status"] == "stored"
    (entry,) = cache.glob("*.onnx")
    skeleton = onnx.load(str(entry))
    assert all(not init.raw_data for init in skeleton.graph.initializer)  # no weights in the cache
    assert entry.stat().st_size < 0.1 * first.onnx_path.stat().st_size

    with monkeypatch.context() as patch:
        _no_tracing(patch)
        warm = deploykit.export(_model(2), tmp_path / "warm", config=_config())  # other weights, same net
    assert warm.manifest["trace_cache"]["status"] == "hit" and warm.manifest["passed"]
    monkeypatch.setenv("DEPLOYKIT_TRACE_CACHE", "off")
    cold = deploykit.export(_model(2), tmp_path / "cold", config=_config())
    assert cold.manifest["trace_cache"]["status"] == "off"
    for name in ("model.onnx", "reference.npz"):
        assert (tmp_path / "warm" / name).read_bytes() == (tmp_path / "cold" / name).read_bytes(), name
    assert (tmp_path / "warm" / "model.onnx").read_bytes() != first.onnx_path.read_bytes()


def test_another_architecture_misses(cache, tmp_path):
    model = _model(1)
    key = trace_cache.trace_key(model, (3, SIZE, SIZE), 20, "dynamo", 64, 2)
    assert key == trace_cache.trace_key(_model(2), (3, SIZE, SIZE), 20, "dynamo", 64, 2)  # weights: same key
    model.encoder.blocks[0].attn.num_heads = 1  # a plain attribute the forward reads
    assert trace_cache.trace_key(model, (3, SIZE, SIZE), 20, "dynamo", 64, 2) != key
    base = {"input_shape": (3, SIZE, SIZE), "opset": 20, "exporter": "dynamo", "max_batch": 64}
    for change in (
        {"input_shape": (3, SIZE, 2 * SIZE)},
        {"opset": 18},
        {"exporter": "torchscript"},
        {"max_batch": 8},
    ):
        assert trace_cache.trace_key(_model(1), **{**base, **change}, example_batch=2) != key


def test_corrupt_or_wrong_entries_are_replaced_by_a_fresh_trace(cache, tmp_path):
    first = deploykit.export(_model(1), tmp_path / "first", config=_config())
    (entry,) = cache.glob("*.onnx")
    good = entry.read_bytes()

    entry.write_bytes(b"not an onnx file")
    corrupt = deploykit.export(_model(1), tmp_path / "corrupt", config=_config())
    info = corrupt.manifest["trace_cache"]
    assert info["status"] == "stored" and "unusable" in info["notes"][0]
    assert corrupt.onnx_path.read_bytes() == first.onnx_path.read_bytes()

    # a graph that fits every initializer but computes something else: its parity check fails, the
    # export traces afresh, publishes the right graph and stores it over the wrong one
    wrong = onnx.load_from_string(good)
    add = next(n for n in wrong.graph.node if n.op_type == "Add")
    add.op_type = "Sub"
    entry.write_bytes(wrong.SerializeToString())
    fixed = deploykit.export(_model(1), tmp_path / "fixed", config=_config())
    info = fixed.manifest["trace_cache"]
    assert info["status"] == "stored" and "failed its parity check" in " ".join(info["notes"])
    assert fixed.manifest["passed"] and fixed.onnx_path.read_bytes() == first.onnx_path.read_bytes()
    assert entry.read_bytes() == good


def test_unwritable_cache_never_fails_an_export(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be created under a file")
    monkeypatch.setenv("DEPLOYKIT_TRACE_CACHE", "on")
    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(blocker))
    result = deploykit.export(_model(1), tmp_path / "out", config=_config())
    info = result.manifest["trace_cache"]
    assert result.manifest["passed"] and info["status"] == "miss" and "not writable" in info["notes"][0]


def test_torchscript_graphs_are_not_stored(cache, tmp_path):
    """The TorchScript exporter folds weights into new initializers: such a graph cannot be refilled."""
    config = dataclasses.replace(_config(), exporter="torchscript")
    result = deploykit.export(_model(1), tmp_path / "ts", config=config)
    info = result.manifest["trace_cache"]
    assert info["status"] == "miss" and "not stored" in info["notes"][0]
    assert not list(cache.glob("*.onnx"))

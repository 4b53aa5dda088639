"""deploykit.core: the shared basics other layers rely on (one error type for ONNX files, the first line of
an error, the config a command resolves)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deploykit.core.config import resolve_config
from deploykit.core.errors import ArtifactError, ConfigError, first_line
from deploykit.core.onnx_io import io_signature, load_onnx, read_onnx_graph
from deploykit.core.record import variant_of


def test_first_line_of_errors_and_texts():
    assert first_line(RuntimeError("\n  \n  boom here  \nsecond")) == "boom here"
    assert first_line(ValueError("")) == "ValueError"  # never empty, never IndexError
    assert first_line("") == ""
    assert first_line("a\nb") == "a"


def _relu(tmp_path, half=False):
    dtype = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "w"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", dtype, ["batch", 4])],
        [helper.make_tensor_value_info("logits", dtype, ["batch", 4])],
        [
            helper.make_tensor(
                "w", dtype, [4], np.ones(4, np.float16 if half else np.float32).tobytes(), raw=True
            )
        ],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_onnx_files_fail_with_one_error_type(tmp_path):
    good = _relu(tmp_path)
    assert io_signature(load_onnx(good))["inputs"] == [
        {"name": "input", "dtype": "float", "shape": ["batch", 4]}
    ]
    assert read_onnx_graph(good).graph.node[0].op_type == "Add"
    corrupt = tmp_path / "bad.onnx"
    corrupt.write_bytes(b"\x08\x07not a protobuf\xff\xff")
    for reader in (load_onnx, read_onnx_graph):
        with pytest.raises(ArtifactError, match="not found"):
            reader(tmp_path / "missing.onnx")
        with pytest.raises(ArtifactError, match="bad.onnx is not a") as info:
            reader(corrupt)
        assert "\n" not in str(info.value)


def test_variant_from_metadata_or_weights(tmp_path):
    assert variant_of(proto=load_onnx(_relu(tmp_path))) == "fp32"
    assert variant_of(proto=load_onnx(_relu(tmp_path, half=True))) == "fp16"
    proto = load_onnx(_relu(tmp_path))
    proto.metadata_props.add(key="deploykit.precision", value="fp16")
    assert variant_of(proto=proto) == "fp16"  # what deploykit recorded wins


def test_resolve_config_overrides_and_family_check(tmp_path):
    base = resolve_config("hvt")
    changed = resolve_config("hvt", opset=20, batch="1,2,4", simplify=False)
    assert (changed.opset, changed.batch.max, changed.simplify) == (20, 4, False)
    assert (base.opset, base.simplify) != (20, False)
    assert resolve_config("hvt", simplify=None).simplify == base.simplify
    with pytest.raises(ConfigError, match="is for family 'hvt', the model is 'cvt'"):
        resolve_config("cvt", base.source)

"""TensorRT-parser lint: each rule fires on a small hand-built graph, and clean graphs stay clean."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from deploykit.core.errors import ArtifactError
from deploykit.transforms.lint import EINSUM_MESSAGE, dtype_name, format_report, lint_model, load_table

F32, F64, I64 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64


def _model(nodes, inputs, outputs, initializers=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
        initializer=list(initializers),
    )
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets)


def _ints(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _only(report, rule):
    assert [v.rule for v in report.violations] == [rule], format_report(report)
    return report.violations[0]


# ---------------------------------------------------------------------------------------- the table


def test_table_is_the_transcribed_matrix():
    table = load_table()
    source = table["source"]
    assert source["store_file_id"] == "68298414222" and source["commit"] is None
    assert source["header"] == "Parser table: TensorRT 11.2, opset 9-24"
    assert source["derived_from"] == {
        "repo": "onnx/onnx-tensorrt",
        "path": "docs/operators.md",
        "tensorrt_version": "11.2",
    }
    assert table["tensorrt_version"] == "11.2" and table["tensorrt_version"] in source["header"]
    assert table["opset_range"] == {"domain": "ai.onnx", "min": 9, "max": 24}
    ops = table["operators"]
    assert len(ops) == 201 and sum(e["supported"] for e in ops.values()) == 160
    assert ops["MaxPool"]["restrictions"].startswith("2D or 3D pooling only")
    assert ops["ReduceMean"]["restrictions"] == "`axes` must be an initializer"
    assert not ops["ConvInteger"]["supported"] and ops["ConvInteger"]["types"] == []
    # What TensorRT 11.2's table changed relative to the 10.15 transcription.
    assert ops["DFT"]["supported"] and ops["DFT"]["types"] == ["FP32", "FP16", "BF16"]
    assert ops["Swish"]["supported"]
    assert ops["STFT"]["types"] == ops["GridSample"]["types"] == ["FP32", "FP16", "BF16"]
    assert ops["GridSample"]["restrictions"] == "Input must be 4D or 5D."
    assert "FP64" not in ops["Add"]["types"]
    known = set(table["data_types"])
    assert {"FP64", "TF32"} <= known and "DOUBLE" not in known
    for name, entry in ops.items():
        assert set(entry["types"]) <= known, name
        assert entry["supported"] == bool(entry["types"]), name


def test_dtype_names_follow_the_table():
    assert [dtype_name(t) for t in (F32, TensorProto.FLOAT16, TensorProto.BFLOAT16, F64, I64)] == [
        "FP32",
        "FP16",
        "BF16",
        "FP64",
        "INT64",
    ]
    assert dtype_name(TensorProto.FLOAT8E4M3FN) == "FP8"
    assert dtype_name(TensorProto.FLOAT8E5M2) == "FLOAT8E5M2"  # not TensorRT's FP8
    # Every element type the table's type lists name is something dtype_name() can produce (TF32 is no
    # element type, so it is the one data_types entry nothing maps to).
    produced = {dtype_name(v) for v in TensorProto.DataType.values()}
    assert set(load_table()["data_types"]) - produced == {"TF32"}


# ------------------------------------------------------------------------------------ violations


def test_1d_maxpool_is_flagged_with_its_node_name():
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool1d", kernel_shape=[3], strides=[2])
    v = _only(lint_model(_model([node], [("x", F32, [1, 4, 16])], [("y", F32, None)])), "pool-rank")
    assert (v.node, v.op_type) == ("pool1d", "MaxPool")
    assert v.message.startswith("2D or 3D pooling only")
    assert format_report(lint_model(_model([node], [("x", F32, [1, 4, 16])], [("y", F32, None)]))) == (
        f"pool1d (MaxPool): {v.message} [pool-rank]"
    )


def test_1d_averagepool_is_flagged():
    node = helper.make_node("AveragePool", ["x"], ["y"], name="avg1d", kernel_shape=[2])
    v = _only(lint_model(_model([node], [("x", F32, [1, 4, 16])], [("y", F32, None)])), "pool-rank")
    assert v.node == "avg1d"


def test_unsupported_and_unknown_ops():
    nodes = [
        helper.make_node("ConvInteger", ["a", "w"], ["c"], name="convint"),  # listed as unsupported
        helper.make_node("Hardmax", ["x"], ["h"], name="hm"),  # listed, supported
        helper.make_node("Gradient", ["x"], ["g"], name="grad", xs=["x"], y="h"),  # not in the table
    ]
    report = lint_model(
        _model(
            nodes,
            [
                ("a", TensorProto.UINT8, [1, 1, 4, 4]),
                ("w", TensorProto.UINT8, [1, 1, 2, 2]),
                ("x", F32, [2, 3]),
            ],
            [("c", TensorProto.INT32, None), ("h", F32, None), ("g", F32, None)],
        )
    )
    assert [(v.node, v.rule) for v in report.violations] == [
        ("convint", "unsupported-op"),
        ("grad", "unknown-op"),
    ]


def test_custom_domain_op_is_flagged():
    node = helper.make_node("FusedGelu", ["x"], ["y"], name="gelu_plugin", domain="com.example")
    report = lint_model(
        _model([node], [("x", F32, [2, 3])], [("y", F32, None)], extra_opsets=[("com.example", 1)])
    )
    v = _only(report, "custom-op")
    assert v.node == "gelu_plugin" and "com.example::FusedGelu" in v.message


def test_runtime_axes_violate_initializer_restriction():
    # ReduceSum's `axes` comes from a graph input (run time) -> "`axes` must be an initializer".
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="rsum", keepdims=1)
    model = _model([node], [("x", F32, [2, 3, 4]), ("axes", I64, [1])], [("y", F32, None)], opset=18)
    v = _only(lint_model(model), "const-input")
    assert v.node == "rsum" and "`axes` must be an initializer" in v.message


def test_initializer_or_constant_axes_pass():
    axes_const = helper.make_node(
        "Constant", [], ["axes_c"], name="axes_c", value=numpy_helper.from_array(np.array([1], np.int64))
    )
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes_i"], ["m"], name="rmean"),
        axes_const,
        helper.make_node("ReduceMax", ["x", "axes_c"], ["mx"], name="rmax"),
    ]
    model = _model(
        nodes,
        [("x", F32, [2, 3, 4])],
        [("m", F32, None), ("mx", F32, None)],
        [_ints("axes_i", [2])],
        opset=18,
    )
    assert lint_model(model).ok, format_report(lint_model(model))


def test_unsqueeze_axes_computed_from_constants_is_build_time():
    # "`axes` must be resolvable to a constant": a chain of constants is fine, a graph input is not.
    nodes = [
        helper.make_node("Add", ["one", "one"], ["two"], name="fold"),
        helper.make_node("Unsqueeze", ["x", "two"], ["y"], name="unsq_ok"),
        helper.make_node("Unsqueeze", ["x", "dyn_axes"], ["z"], name="unsq_bad"),
    ]
    model = _model(
        nodes,
        [("x", F32, [2, 3]), ("dyn_axes", I64, [1])],
        [("y", F32, None), ("z", F32, None)],
        [_ints("one", [1])],
    )
    v = _only(lint_model(model), "const-input")
    assert v.node == "unsq_bad"


def test_double_input_violates_type_list():
    node = helper.make_node("Add", ["a", "b"], ["c"], name="add64")
    v = _only(lint_model(_model([node], [("a", F64, [2]), ("b", F64, [2])], [("c", F64, None)])), "dtype")
    assert v.node == "add64" and "`a` is FP64" in v.message


def test_dft_is_supported_but_its_opset20_axis_must_be_build_time():
    # TensorRT 11.2 lists DFT (10.15 marked it unsupported): "The opset 20 `axis` input must be a build-time
    # constant scalar."
    nodes = [
        helper.make_node("DFT", ["x", "", "axis_c"], ["y"], name="dft_ok"),
        helper.make_node("DFT", ["x", "", "axis_dyn"], ["z"], name="dft_dyn"),
    ]
    model = _model(
        nodes,
        [("x", F32, [1, 16, 2]), ("axis_dyn", I64, [])],
        [("y", F32, None), ("z", F32, None)],
        [numpy_helper.from_array(np.array(-2, np.int64), "axis_c")],
        opset=20,
    )
    v = _only(lint_model(model), "const-input")
    assert v.node == "dft_dyn" and "`axis` must be a build-time constant" in v.message


@pytest.mark.parametrize("opset, flagged", [(20, False), (21, True), (24, True)])
def test_opset_above_the_oldest_supported_parser_is_flagged(opset, flagged):
    """deploykit targets TensorRT 10.3+ and 11.x: one file must parse on 10.3, whose parser documents
    opsets up to 20 (trt_operators.json opset_by_target)."""
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [("x", F32, [2, 3])],
        [("y", F32, None)],
        opset=opset,
    )
    rules = [v.rule for v in lint_model(model).violations]
    assert rules == (["opset-range"] if flagged else [])


def test_ops_new_or_widened_in_11_2_are_clean():
    # Swish (opset 24) is new in the 11.2 table; STFT gained FP16/BF16 and GridSample BF16.
    f16, bf16 = TensorProto.FLOAT16, TensorProto.BFLOAT16
    swish = _model(
        [helper.make_node("Swish", ["x"], ["y"], name="swish")],
        [("x", F32, [2, 3])],
        [("y", F32, None)],
        opset=24,
    )
    # the op is clean in the 11.2 table; opset 24 itself is above what TensorRT 10.3's parser documents
    report = lint_model(swish)
    assert [v.rule for v in report.violations] == ["opset-range"], format_report(report)
    assert "TensorRT 10.3" in report.violations[0].message
    stft = _model(
        [helper.make_node("STFT", ["sig", "step", "win"], ["out"], name="stft", onesided=1)],
        [("sig", f16, [1, 64, 1])],
        [("out", f16, None)],
        [_ints("step", 8), numpy_helper.from_array(np.hanning(16).astype(np.float16), "win")],
    )
    assert lint_model(stft).ok, format_report(lint_model(stft))
    grid = _model(
        [helper.make_node("GridSample", ["x", "g"], ["y"], name="gs")],
        [("x", bf16, [1, 2, 4, 4]), ("g", bf16, [1, 4, 4, 2])],
        [("y", bf16, None)],
    )
    assert lint_model(grid).ok, format_report(lint_model(grid))


def test_where_is_typed_by_its_data_not_its_condition():
    node = helper.make_node("Where", ["cond", "a", "b"], ["c"], name="where")
    ok = _model(
        [node], [("cond", TensorProto.BOOL, [2]), ("a", F32, [2]), ("b", F32, [2])], [("c", F32, None)]
    )
    assert lint_model(ok).ok
    bad = _model(
        [node], [("cond", TensorProto.BOOL, [2]), ("a", F64, [2]), ("b", F64, [2])], [("c", F64, None)]
    )
    assert _only(lint_model(bad), "dtype").node == "where"


def test_einsum_reports_project_rule_only():
    # The table lists Einsum as supported without restrictions; deploykit forbids it on its own account.
    node = helper.make_node("Einsum", ["a", "b"], ["c"], name="attn_einsum", equation="bij,bjk->bik")
    v = _only(
        lint_model(_model([node], [("a", F32, [1, 2, 3]), ("b", F32, [1, 3, 4])], [("c", F32, None)])),
        "no-einsum",
    )
    assert (v.node, v.message) == ("attn_einsum", EINSUM_MESSAGE)


def test_local_function_bodies_are_linted():
    # TensorRT inlines model-local functions, so an Einsum inside one is still an Einsum.
    body = helper.make_node("Einsum", ["a", "b"], ["c"], name="inner_einsum", equation="ij,jk->ik")
    fn = helper.make_function("local", "Contract", ["a", "b"], ["c"], [body], [helper.make_opsetid("", 17)])
    call = helper.make_node("Contract", ["x", "y"], ["z"], name="call", domain="local")
    model = _model(
        [call], [("x", F32, [2, 3]), ("y", F32, [3, 4])], [("z", F32, None)], extra_opsets=[("local", 1)]
    )
    model.functions.append(fn)
    v = _only(lint_model(model), "no-einsum")
    assert v.op_type == "Einsum"


@pytest.mark.parametrize("opset", [8, 25])
def test_opset_out_of_range(opset):
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    report = lint_model(_model([node], [("x", F32, [2])], [("y", F32, None)], opset=opset))
    v = _only(report, "opset-range")
    assert str(opset) in v.message and "9-24" in v.message


def test_restrictions_on_attributes_and_outputs():
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "idx"], name="pool_idx", kernel_shape=[2, 2]),
        helper.make_node(
            "AveragePool", ["x"], ["ap"], name="pool_dil", kernel_shape=[2, 2], dilations=[2, 2]
        ),
        helper.make_node("Resize", ["x", "", "scales"], ["r"], name="bicubic", mode="cubic"),
    ]
    report = lint_model(
        _model(
            nodes,
            [("x", F32, [1, 1, 8, 8])],
            [("p", F32, None), ("idx", I64, None), ("ap", F32, None), ("r", F32, None)],
            [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")],
            opset=19,
        )
    )
    assert [(v.node, v.rule) for v in report.violations] == [
        ("pool_idx", "extra-output"),
        ("pool_dil", "dilations"),
        ("bicubic", "attr-value"),
    ]


def test_unnamed_node_gets_a_readable_name_and_report_serializes():
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3])
    report = lint_model(_model([node], [("x", F32, [1, 4, 16])], [("y", F32, None)]))
    d = report.to_dict()
    assert d["ok"] is False and d["opset"] == 17
    assert d["violations"] == [
        {
            "node": "<MaxPool #0>",
            "op_type": "MaxPool",
            "rule": "pool-rank",
            "message": report.violations[0].message,
        }
    ]


def test_missing_file_is_an_artifact_error(tmp_path):
    # the one error type of every ONNX file read (deploykit.core.onnx_io)
    with pytest.raises(ArtifactError, match="ONNX file not found"):
        lint_model(tmp_path / "nope.onnx")


# -------------------------------------------------------------------------------------- clean graphs


def test_2d_maxpool_graph_is_clean():
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool2d", kernel_shape=[2, 2], strides=[2, 2])
    report = lint_model(_model([node], [("x", F32, [1, 4, 8, 8])], [("y", F32, None)]))
    assert report.ok and format_report(report) == ""


def test_matmul_softmax_layernorm_graph_is_clean():
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
        numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
        _ints("shape", [1, 4, 2, 4]),
        _ints("axes", [0]),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "w"], ["q"], name="mm"),
        helper.make_node("Softmax", ["q"], ["s"], name="sm", axis=-1),
        helper.make_node("Erf", ["s"], ["e"], name="erf"),
        helper.make_node("Reshape", ["e", "shape"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t"], name="tr", perm=[0, 2, 1, 3]),
        helper.make_node("Squeeze", ["t", "axes"], ["y"], name="sq"),
    ]
    report = lint_model(_model(nodes, [("x", F32, [1, 4, 8])], [("y", F32, None)], inits))
    assert report.ok, format_report(report)


class _TinyViT(nn.Module):
    """Conv patch embedding, 2-D max pool, one pre-norm attention block with GELU, mean-pool head."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.pool = nn.MaxPool2d(2)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.pool(self.embed(x)).flatten(2).transpose(1, 2)
        B, N, C = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim)
        attn = (q @ k.transpose(-2, -1) * (C // self.heads) ** -0.5).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
        x = x + self.mlp(x)
        return self.head(x.mean(1))


def test_exported_torch_model_is_clean(tmp_path):
    path = tmp_path / "tiny_vit.onnx"
    torch.onnx.export(
        _TinyViT().eval(),
        (torch.randn(1, 3, 32, 32),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Conv", "MaxPool", "LayerNormalization", "Softmax", "MatMul", "Erf"} <= ops
    report = lint_model(path)
    assert report.ok, format_report(report)
    assert report.opset == 17


def test_lint_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import deploykit.transforms.lint as lint\n"
        "assert lint.load_table()['operators']['MatMul']['supported']\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])

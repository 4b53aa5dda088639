"""Each export rewrite: original vs rewritten on random input (max abs diff <= 1e-5), on whole models, and
whether its kind is true of the exported graphs: a ``required`` rewrite's original fails to export or is
reported by the TensorRT-parser lint; an ``optimization`` rewrite's original exports and lints clean, and the
rewritten graph lacks the ops the rewrite claims to remove and is smaller (or, simplified as the pipeline
ships it, at most :data:`GROWS` nodes larger, for a rewrite whose point is a faster op)."""

import pytest
import torch
from torch import nn

from deploykit.core.errors import ConfigError, ExportError
from deploykit.core.onnx_io import node_attribute
from deploykit.models import create_model
from deploykit.transforms.lint import lint_model
from deploykit.transforms.onnx_export import export_onnx
from deploykit.transforms.rewrites import (
    REWRITES,
    Rewrite,
    RewriteKind,
    apply_rewrites,
    randomize_batchnorm_,
)
from deploykit.transforms.simplify import simplify_onnx

RULES = {r.name: r for r in REWRITES.values()}
REQUIRED = sorted(n for n, r in RULES.items() if r.kind is RewriteKind.REQUIRED)
OPTIMIZATIONS = sorted(n for n, r in RULES.items() if r.kind is RewriteKind.OPTIMIZATION)
OPSET = 18

#: required rewrite -> the lint rule its original form breaks
BREAKS = {"token-maxpool-as-2d-pool": "pool-rank"}
#: optimization rewrite -> ONNX ops its original export has and its rewritten export no longer has
REMOVES = {
    "ceit-i2t-folded-batchnorm": {"BatchNormalization"},
    "ceit-leff-folded-batchnorm": {"BatchNormalization"},
    "cvt-depthwise-projection-folded-batchnorm": {"BatchNormalization"},
    "reattention-folded-batchnorm": {"BatchNormalization", "Mul", "Conv"},
    "cnn-stem-folded-batchnorm": {"BatchNormalization"},
    "unfold-patchify-as-strided-conv": {"Pad", "Range", "Gather"},
    "gpsa-constant-positional-attention": {"Sigmoid", "ReduceSum", "Div"},
}
#: optimization rewrite -> how many nodes larger its simplified graph may be, because it trades a slow op
#: for faster ones (the reason is in the rewrite's ``fixes``; the timing in docs/measured.md)
GROWS = {"reattention-folded-batchnorm": 1}  # Conv (BN, Mul folded) -> Reshape, MatMul, Reshape, Add


def _example(rule: Rewrite) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    module, x = rule.example()
    module.eval()
    with torch.no_grad():
        new = rule.convert(module)
    assert new is not None, f"{rule.name} did not rewrite its own example"
    return module, new.eval(), x


@pytest.fixture(scope="module")
def exported():
    """``name -> (original export or its ExportError, rewritten export)``; each example is exported once."""
    cache = {}

    def get(name):
        if name not in cache:
            module, new, x = _example(RULES[name])
            shape = tuple(x.shape[1:])
            try:
                original = export_onnx(module, shape, OPSET)
            except ExportError as exc:
                original = exc
            cache[name] = (original, export_onnx(new, shape, OPSET))
        return cache[name]

    return get


def _ops(proto) -> set[str]:
    return {node.op_type for node in proto.graph.node}


@pytest.mark.parametrize("name", sorted(RULES))
def test_rewrite_is_numerically_equivalent(name):
    module, new, x = _example(RULES[name])
    assert type(new) is not type(module)
    with torch.no_grad():
        diff = (module(x) - new(x)).abs().max().item()
    assert diff <= 1e-5, f"{name}: max abs diff {diff}"


def test_every_rewrite_is_classified_and_its_text_says_which():
    assert set(REQUIRED) | set(OPTIMIZATIONS) == set(RULES)
    assert set(BREAKS) == set(REQUIRED) and set(REMOVES) == set(OPTIMIZATIONS)
    for rule in RULES.values():
        lead = "Required for " if rule.kind is RewriteKind.REQUIRED else "Optimization: "
        assert rule.fixes.startswith(lead), rule.name


@pytest.mark.parametrize("name", REQUIRED)
def test_required_rewrite_removes_what_the_backend_rejects(name, exported):
    original, rewritten = exported(name)
    if not isinstance(original, ExportError):
        violations = lint_model(original).rules()
        assert violations, f"{name} is marked required, yet its original exports and lints clean"
        assert BREAKS.get(name) in violations, (
            f"{name}: expected {BREAKS.get(name)!r}, the lint says {violations}"
        )
    assert lint_model(rewritten).ok, lint_model(rewritten).violations


@pytest.mark.parametrize("name", OPTIMIZATIONS)
def test_optimization_rewrite_original_deploys_and_rewrite_is_smaller(name, exported):
    original, rewritten = exported(name)
    assert not isinstance(original, ExportError), f"{name} is marked optimization, yet: {original}"
    assert lint_model(original).ok, f"{name} is marked optimization, yet: {lint_model(original).violations}"
    assert lint_model(rewritten).ok
    if name in GROWS:  # counted as shipped (simplified: its Reshape targets fold to constants)
        (small_original, _), (small_rewritten, _) = simplify_onnx(original), simplify_onnx(rewritten)
        assert len(small_rewritten.graph.node) <= len(small_original.graph.node) + GROWS[name]
    else:
        assert len(rewritten.graph.node) < len(original.graph.node)
    assert REMOVES[name] <= _ops(original)
    assert not REMOVES[name] & _ops(rewritten)


def test_a_rewrite_needs_a_kind():
    rule = RULES["token-maxpool-as-2d-pool"]
    with pytest.raises(ConfigError, match="kind"):
        Rewrite(
            name="x",
            kind="required",
            fixes="",
            source=nn.Identity,
            convert=rule.convert,
            example=rule.example,
        )


@pytest.mark.parametrize(
    "preset, size, expected",
    [
        ("convit_tiny", 64, {"gpsa-constant-positional-attention": 10}),
        ("deepvit_s", 64, {"reattention-folded-batchnorm": 5, "cnn-stem-folded-batchnorm": 1}),
        ("cvt_13", 64, {"cvt-depthwise-projection-folded-batchnorm": 39}),
        ("ceit_tiny", 64, {"ceit-i2t-folded-batchnorm": 1, "ceit-leff-folded-batchnorm": 12}),
        ("hvt_s_4", 128, {"token-maxpool-as-2d-pool": 4}),
    ],
)
def test_whole_model_rewrites(preset, size, expected):
    model = randomize_batchnorm_(create_model(preset, image_size=size))
    rewritten, records = apply_rewrites(model)
    assert {r.name: r.modules for r in records} == expected
    # the manifest's record carries the kind and the reason of the rewrite it names
    for record in records:
        rule = RULES[record.name]
        assert record.to_dict() == {
            "name": rule.name,
            "kind": rule.kind.value,
            "modules": expected[rule.name],
            "fixes": rule.fixes,
        }
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        assert (model(x) - rewritten(x)).abs().max().item() <= 1e-5
    # the original model is untouched (rewrites work on a copy)
    assert not any(type(m).__name__.endswith("Folded") for m in model.modules())


def test_linear_patchify_rewrite_on_cv_layout_model():
    from deploykit.models import DeepViT

    model = DeepViT(10, 32, 32, 8, 16, 64, 2, 2, re_attention=True)
    rewritten, records = apply_rewrites(randomize_batchnorm_(model))
    assert {r.name for r in records} == {"unfold-patchify-as-strided-conv", "reattention-folded-batchnorm"}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - rewritten(x)).abs().max().item() <= 1e-5


def _ort_optimized(proto, tmp_path) -> list:
    """The nodes ONNX Runtime CPU actually runs: its optimized graph (all levels, NCHWc layout included)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return list(onnx.load(options.optimized_model_filepath).graph.node)


def test_token_pool_needs_no_transposes(exported):
    """The (k, 1) pool over the (B, 1, N, d) token map: the tokens are never transposed (the (1, k) form
    over (B, d, 1, N) paid a 4-D transpose that ONNX Runtime ran ten times slower than a plain one)."""
    _, rewritten = exported("token-maxpool-as-2d-pool")
    assert "MaxPool" in _ops(rewritten) and "Transpose" not in _ops(rewritten)
    (pool,) = (n for n in rewritten.graph.node if n.op_type == "MaxPool")
    assert list(node_attribute(pool, "kernel_shape")) == [
        RULES["token-maxpool-as-2d-pool"].example()[0].kernel_size,
        1,
    ]


def test_leff_token_map_transposes_fold_into_onnxruntime_reorders(tmp_path):
    """LeFF's tokens enter and leave the conv map channels-last, so ONNX Runtime's NCHWc pass folds both
    transposes into its reorders: the graph it runs has no Transpose left (the original form kept two).
    Channels are a multiple of every NCHWc block size (8 with AVX2, 16 with AVX-512)."""
    from deploykit.models.ceit import LeFF

    module = randomize_batchnorm_(
        LeFF(32, expand_ratio=4, kernel_size=3, padding=1, separable=False, out_act=False)
    )
    with torch.no_grad():
        new = RULES["ceit-leff-folded-batchnorm"].convert(module.eval())
    runs = {}
    for name, m in (("original", module), ("rewritten", new)):
        simplified, _ = simplify_onnx(export_onnx(m.eval(), (17, 32), OPSET))
        runs[name] = [n.op_type for n in _ort_optimized(simplified, tmp_path)]
    if "ReorderInput" not in runs["original"]:
        pytest.skip("ONNX Runtime's NCHWc layout is not used on this CPU")
    assert runs["original"].count("Transpose") == 2, runs["original"]
    assert "Transpose" not in runs["rewritten"] and "ReorderInput" in runs["rewritten"], runs["rewritten"]

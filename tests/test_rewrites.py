"""Each export rewrite: original vs rewritten on random input (max abs diff <= 1e-5), and on whole models."""

import pytest
import torch

from deploykit.models import create_model
from deploykit.transforms.rewrites import REWRITES, apply_rewrites, randomize_batchnorm_

RULES = {r.name: r for r in REWRITES.values()}


@pytest.mark.parametrize("name", sorted(RULES))
def test_rewrite_is_numerically_equivalent(name):
    rule = RULES[name]
    module, x = rule.example()
    module.eval()
    with torch.no_grad():
        new = rule.convert(module)
        assert new is not None, f"{name} did not rewrite its own example"
        assert type(new) is not type(module)
        diff = (module(x) - new(x)).abs().max().item()
    assert diff <= 1e-5, f"{name}: max abs diff {diff}"
    assert rule.fixes and len(rule.fixes) > 40  # names the backend limitation it fixes


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

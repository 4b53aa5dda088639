"""The checks every family must pass, run over the registry's families (a family registered without a
tiny configuration in ``tests/tiny_models.py`` fails here): train and eval forward/backward with finite
gradients, eval determinism, batch-size changes, a state_dict that a forward never changes, bad inputs
refused, the stochastic-depth update, a headless model. Each family's own maths, layouts and options stay in
``tests/test_<family>.py``.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, IMAGE_SIZE, NUM_CLASSES, randomize_bn, tiny_model
from torch import nn

from deploykit.models import get_preset, list_models
from deploykit.models.base import InputShapeError
from deploykit.models.layers import DropPath

REGISTERED = sorted({get_preset(name).family for name in list_models()})
VARIANTS = [
    (family, option) for family in REGISTERED if family in FAMILIES for option in FAMILIES[family].options
]


def _x(batch: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


@pytest.fixture(params=REGISTERED)
def family(request) -> str:
    """Every family in the registry."""
    return request.param


@pytest.fixture(params=VARIANTS, ids=[f"{f}-{o}" for f, o in VARIANTS])
def variant(request) -> tuple[str, dict, nn.Module]:
    """Every option variant of every registered family: ``(family, options, tiny model)``."""
    family, option = request.param
    options = dict(FAMILIES[family].options[option])
    return family, options, tiny_model(family, **options)


def test_every_registered_family_has_a_tiny_configuration():
    assert set(FAMILIES) == set(REGISTERED)
    for family in REGISTERED:
        assert FAMILIES[family].options, family


def test_train_and_eval_forward_backward(variant):
    """Both modes: logits of the right shape, finite, and a finite gradient for every parameter."""
    _, options, model = variant
    x = _x(2)
    for train in (True, False):
        model.train(train)
        model.zero_grad()
        out = model(x)
        assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()
        out.square().sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"parameters without gradient: {missing}"
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
        assert not bad, f"non-finite gradients: {bad}"
    if options.get("patchify_technique") in ("convolutional", "conv"):  # a registered, trainable Conv2d
        assert isinstance(model.patch_embed.proj, nn.Conv2d)


def test_eval_is_deterministic(variant):
    """Dropout, stochastic depth and BatchNorm updates are off in eval mode."""
    _, _, model = variant
    randomize_bn(model)
    model.eval()
    x = _x(3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_batch_size_can_change(variant):
    """One model, batches of 1, 3 and 5: each sample's logits do not depend on the batch."""
    _, _, model = variant
    randomize_bn(model)
    model.eval()
    x = _x(5)
    with torch.no_grad():
        three = model(x[:3])
        one = model(x[:1])
        five = model(x)
    assert (one.shape, three.shape, five.shape) == ((1, NUM_CLASSES), (3, NUM_CLASSES), (5, NUM_CLASSES))
    torch.testing.assert_close(one, three[:1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(five[:3], three, rtol=1e-5, atol=1e-5)


def test_state_dict_stable_after_forward(variant):
    """An eval forward changes no key, shape or value; a train step changes no key or shape (only
    BatchNorm statistics move)."""
    _, _, model = variant
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(_x(2))
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.train()
    model(_x(2)).sum().backward()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in before.items()
    }


def test_bad_inputs_are_refused(family):
    """Wrong rank or channels: an InputShapeError; another square size: refused by a fixed-resolution
    family (naming its size), classified by one that resamples."""
    model = tiny_model(family).eval()
    with pytest.raises(InputShapeError, match="expects input"):
        model(torch.randn(1, 1, IMAGE_SIZE, IMAGE_SIZE))
    with pytest.raises(InputShapeError, match="expects input"):
        model(torch.randn(3, IMAGE_SIZE, IMAGE_SIZE))
    if model.fixed_resolution:
        with pytest.raises(InputShapeError, match=f"{IMAGE_SIZE}x{IMAGE_SIZE}"):
            model(_x(1, 48))
    else:
        with torch.no_grad():
            assert model(_x(1, 48)).shape == (1, NUM_CLASSES)


def _scheduled(model: nn.Module) -> list[DropPath]:
    return [m for m in model.modules() if isinstance(m, DropPath) and m.block_index is not None]


def test_update_stochastic_depth_rate(family):
    """``updateStochasticDepthRate(k)`` adds ``i*k/(L-1)``: the last block gains ``k``, the first none;
    cumulative; rates outside the schedule (CeiT's LCA) stay."""
    model = tiny_model(family, **FAMILIES[family].stochastic)
    paths = _scheduled(model)
    fixed = {id(m): m.drop_prob for m in model.modules() if isinstance(m, DropPath) and m.block_index is None}
    assert paths and max(m.drop_prob for m in paths) > 0
    first, last = min(m.drop_prob for m in paths), max(m.drop_prob for m in paths)
    model.updateStochasticDepthRate(0.05)
    model.updateStochasticDepthRate(k=0.05)
    assert min(m.drop_prob for m in paths) == pytest.approx(first) == 0.0
    assert max(m.drop_prob for m in paths) == pytest.approx(last + 0.1)
    assert {id(m): m.drop_prob for m in model.modules() if id(m) in fixed} == fixed


def test_no_stochastic_depth_no_drop_path(family):
    """Without stochastic depth there is no DropPath module, and the update is a no-op."""
    model = tiny_model(family, **FAMILIES[family].no_stochastic).eval()
    assert not any(isinstance(m, DropPath) for m in model.modules())
    x = _x(2)
    with torch.no_grad():
        before = model(x)
        model.updateStochasticDepthRate(0.1)
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_num_classes_zero_gives_features(family):
    model = tiny_model(family, **FAMILIES[family].headless).eval()
    x = _x(2)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, model.forward_features(x))
    assert out.shape == (2, model.num_features) and model.num_classes == 0

import pytest
import torch
from tiny_models import FAMILIES

from deploykit.core.errors import ConfigError
from deploykit.models import ConViT, count_parameters
from deploykit.models.convit import GPSA, relative_position_table
from deploykit.models.layers import Attention

TINY = FAMILIES["convit"].kwargs  # 32 px, patch 8, 4 blocks (2 gated), 5 classes


@pytest.mark.slow
def test_seed_example():
    model = ConViT(
        d_model=1024,
        image_size=224,
        patch_size=16,
        classifier_mlp_d=2048,
        encoder_mlp_d=4096,
        encoder_num_heads=16,
        num_encoder_blocks=12,
    ).eval()
    assert round(count_parameters(model) / 1e6, 2) == 156.06  # the documented library's count
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_relative_position_table_is_not_in_the_state_dict():
    """A non-persistent buffer built at construction (the shared checks: the state_dict never changes)."""
    assert not any("rel_indices" in k for k in ConViT(**TINY).state_dict())


def test_residual_order_works_and_uses_final_norm():
    model = ConViT(**TINY, ln_order="residual").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = model(x)
        model.encoder.final_norm.weight.mul_(3.0)
        assert not torch.allclose(a, model(x))


def test_relative_position_table():
    t = relative_position_table(3, 4)
    assert t.shape == (1, 9, 9, 4)
    q, k = 1 * 3 + 0, 2 * 3 + 2  # query (row 1, col 0), key (row 2, col 2)
    assert t[0, q, k].tolist() == [2.0, 1.0, 5.0, 0.0]


def test_gpsa_is_convex_mix_of_content_and_position():
    gpsa = GPSA(16, 4, grid_size=3, qkv_bias=False).eval()
    with torch.no_grad():
        gpsa.gating_param.fill_(50.0)  # gate ~1: pure positional attention
        x = torch.randn(2, 9, 16)
        pos = gpsa.positional_attention()[0]  # (H, N, N)
        v = gpsa.v(x).reshape(2, 9, 4, 4).transpose(1, 2)
        want = gpsa.proj((pos @ v).transpose(1, 2).reshape(2, 9, 16))
        torch.testing.assert_close(gpsa(x), want, atol=1e-5, rtol=1e-5)


def test_local_init_centres_heads_on_a_kernel():
    gpsa = GPSA(16, 4, grid_size=5, locality_strength=1.0)
    torch.testing.assert_close(gpsa.v.weight, torch.eye(16))
    pos = gpsa.positional_attention()[0]  # (H, N, N)
    centre = 2 * 5 + 2
    # 4 heads -> 2x2 kernel with centre 0.5: each head peaks at one of the offsets {-0.5, +0.5}^2
    peaks = {tuple(divmod(int(pos[h, centre].argmax()), 5)) for h in range(4)}
    assert peaks <= {(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (3, 3)}
    w = gpsa.pos_proj.weight
    assert sorted(w[:, 0].tolist()) == [-1.0, -1.0, 1.0, 1.0] and w[:, 2].tolist() == [-1.0] * 4


def test_heads_divisibility_uses_modulo():
    model = ConViT(**{**TINY, "d_model": 100, "encoder_num_heads": 5})  # 100 & 5 != 0 but 5 divides 100
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_gated_block_count_and_cls_placement():
    model = ConViT(**TINY).eval()
    kinds = [type(b.attn) for b in model.encoder.blocks]
    assert kinds == [GPSA, GPSA, Attention, Attention]
    all_gated = ConViT(**{**TINY, "num_gated_blocks": 4})
    assert all_gated.cls_token is None
    assert all_gated(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize(
    "override, param",
    [
        (dict(encoder_num_heads=3), "encoder_num_heads"),
        (dict(image_size=36), "patch_size"),
        (dict(ln_order="sandwich"), "ln_order"),
        (dict(patchify_technique="unfold"), "patchify_technique"),
        (dict(locality_distance_method="linear"), "locality_distance_method"),
        (dict(d_pos=2), "d_pos"),
        (dict(num_gated_blocks=5), "num_gated_blocks"),
        (dict(patch_size=-8), "patch_size"),
        (dict(locality_strength=0.0), "locality_strength"),
    ],
)
def test_bad_arguments(override, param):
    with pytest.raises(ConfigError, match=param):
        ConViT(**{**TINY, **override})

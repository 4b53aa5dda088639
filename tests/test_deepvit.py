import pytest
import torch
from tiny_models import FAMILIES

from deploykit.core.errors import ConfigError
from deploykit.models import DeepViT, count_parameters, create_model
from deploykit.models.deepvit import ReAttention

TINY = FAMILIES["deepvit"].kwargs  # 32 px, patch 8, d=24, 3 heads, 3 blocks, 5 classes


@pytest.mark.slow
def test_seed_example():
    model = DeepViT(
        num_classes=1000,
        d_model=384,
        image_size=224,
        patch_size=16,
        classifier_mlp_d=2048,
        encoder_mlp_d=1152,
        encoder_num_heads=12,
        num_encoder_blocks=32,
    ).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    # cv count 50.43M (residual) + our real position embedding (196 extra rows x 384)
    assert count_parameters(model) == pytest.approx(50_431_592 + 196 * 384, abs=5_000)


def test_re_attention_mixes_heads_and_is_in_every_block():
    model = DeepViT(**TINY, re_attention=True)
    assert sum(isinstance(m, ReAttention) for m in model.modules()) == 3
    plain = DeepViT(**TINY, re_attention=False)
    # Conv(H,H,1)+bias and BN(H) weight/bias per block
    assert count_parameters(model) - count_parameters(plain) == 3 * (3 * 3 + 3 + 2 * 3)


def test_re_attention_math():
    ra = ReAttention(3, scale=0.5).eval()
    with torch.no_grad():
        ra.var_norm.running_mean.uniform_(-0.1, 0.1)
        ra.var_norm.running_var.uniform_(0.5, 2.0)
    a = torch.softmax(torch.randn(2, 3, 4, 4), -1)
    theta = ra.reatten_matrix.weight[:, :, 0, 0]
    mixed = torch.einsum("gh,bhij->bgij", theta, a) + ra.reatten_matrix.bias.view(1, 3, 1, 1)
    bn = ra.var_norm
    want = (mixed - bn.running_mean.view(1, 3, 1, 1)) / torch.sqrt(bn.running_var.view(1, 3, 1, 1) + bn.eps)
    want = (want * bn.weight.view(1, 3, 1, 1) + bn.bias.view(1, 3, 1, 1)) * 0.5
    torch.testing.assert_close(ra(a), want)


def test_position_embedding_carries_position():
    model = DeepViT(**TINY).eval()
    assert model.pos_embed.shape == (1, 17, 24)
    assert not torch.allclose(model.pos_embed[0, 1], model.pos_embed[0, 2])


def test_deepvit_s_layout():
    model = create_model("deepvit_s", image_size=64)
    blocks = model.encoder.blocks
    assert [isinstance(b.attn.attn_transform, ReAttention) for b in blocks] == [False] * 11 + [True] * 5
    assert blocks[-1].attn.attn_transform.scale == pytest.approx(33**-0.5)
    assert all(b.residual_scale == 0.5 for b in blocks)
    assert model.patch_embed.proj.kernel_size == (8, 8)


def test_residual_scale_formula():
    blk = create_model("deepvit_s", image_size=64).encoder.blocks[0].eval()
    x = torch.randn(2, 17, 396)
    with torch.no_grad():
        y = x + blk.attn(blk.norm1(0.5 * x)) / 0.5
        want = y + blk.mlp(blk.norm2(0.5 * y)) / 0.5
        torch.testing.assert_close(blk(x), want)


@pytest.mark.parametrize(
    "override, param",
    [
        (dict(encoder_num_heads=5), "encoder_num_heads"),
        (dict(image_size=30), "patch_size"),
        (dict(ln_order="middle"), "ln_order"),
        (dict(patchify_technique="pixels"), "patchify_technique"),
        (dict(d_model=0), "d_model"),
        (dict(dropout=1.0), "dropout"),
        (dict(stochastic_depth=True), "stochastic_depth_mp"),
        (dict(re_attention_depth=9), "re_attention_depth"),
        (dict(layer_scale=-1.0), "layer_scale"),
    ],
)
def test_bad_arguments(override, param):
    with pytest.raises(ConfigError, match=param):
        DeepViT(**{**TINY, **override})

"""Pretrained checkpoints in the reference layouts: detection, conversion, strict loading, clear errors.

No peer package is needed here: official layouts are built from our models with each family's inverse
converter, and literal official key names/shapes (of each official repository's checkpoints) are checked
independently. Logit parity against timm / transformers lives in test_peers.py.
"""

import argparse
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from tiny_models import perturbed

from deploykit.cli import WEIGHTS_FORMATS, cli
from deploykit.core.errors import WeightsError
from deploykit.models import create_model, load_pretrained
from deploykit.models.pretrained import FORMATS, detect_format


def _meta_official(preset: str, fmt: str, **overrides) -> dict[str, tuple[int, ...]]:
    """Official key -> shape of a preset, without allocating weights."""
    with torch.device("meta"):
        state = create_model(preset, **overrides).state_dict()
    return {k: tuple(v.shape) for k, v in FORMATS[fmt].inverse(state).items()}


# ------------------------------------------------------------- literal official layouts (the official checkpoints')
LITERAL = {
    ("convit_tiny", "timm-convit"): (
        180,
        {
            "cls_token": (1, 1, 192),
            "pos_embed": (1, 196, 192),
            "patch_embed.proj.weight": (192, 3, 16, 16),
            "blocks.0.attn.qk.weight": (384, 192),
            "blocks.0.attn.v.weight": (192, 192),
            "blocks.9.attn.pos_proj.weight": (4, 3),
            "blocks.9.attn.gating_param": (4,),
            "blocks.10.attn.qkv.weight": (576, 192),
            "blocks.11.mlp.fc2.weight": (192, 768),
            "norm.weight": (192,),
            "head.weight": (1000, 192),
        },
    ),
    ("ceit_tiny", "official-ceit"): (
        None,
        {
            "pos_embed": (1, 197, 192),
            "pos_layer_embed": (1, 12, 192),
            "i2t.backbone.conv.weight": (64, 3, 7, 7),
            "i2t.backbone.bn.running_var": (64,),
            "i2t.proj.weight": (192, 64, 4, 4),
            "blocks.0.attn.qkv.weight": (576, 192),
            "blocks.0.attn.qkv.bias": (576,),
            "blocks.0.leff.conv1.weight": (768, 192, 1, 1),
            "blocks.0.leff.conv2.weight": (768, 1, 3, 3),
            "blocks.0.leff.conv3.weight": (192, 768, 1, 1),
            "blocks.11.leff.bn3.running_mean": (192,),
            "lca.attn.qkv.weight": (576, 192),
            "lca.feedforward.fc1.weight": (768, 192),
            "norm.weight": (192,),
            "head.weight": (1000, 192),
        },
    ),
    ("deepvit_16b", "official-deepvit"): (
        None,
        {
            "pos_embed": (1, 197, 384),
            "patch_embed.proj.weight": (384, 3, 16, 16),
            "blocks.0.attn.qkv.weight": (1152, 384),
            "blocks.0.attn.reatten_matrix.weight": (12, 12, 1, 1),
            "blocks.0.attn.reatten_matrix.bias": (12,),
            "blocks.15.attn.var_norm.num_batches_tracked": (),
            "blocks.15.mlp.fc1.weight": (1152, 384),
            "head.weight": (1000, 384),
        },
    ),
    ("deepvit_s", "official-deepvit"): (
        None,
        {
            "pos_embed": (1, 197, 396),
            "patch_embed.conv1.weight": (64, 3, 7, 7),
            "patch_embed.bn1.running_mean": (64,),
            "patch_embed.conv2.weight": (64, 64, 3, 3),
            "patch_embed.bn2.weight": (64,),
            "patch_embed.proj.weight": (396, 64, 8, 8),
            "blocks.11.attn.reatten_matrix.weight": (12, 12, 1, 1),
            "blocks.15.attn.var_norm.running_var": (12,),
            "blocks.10.attn.qkv.weight": (1188, 396),
        },
    ),
    ("hvt_s_4", "official-hvt"): (
        None,
        {
            "pos_embed": (1, 196, 384),
            "patch_embed.proj.weight": (384, 3, 16, 16),
            "blocks.0.pos_embed": (1, 97, 384),
            "blocks.3.pos_embed": (1, 48, 384),
            "blocks.6.pos_embed": (1, 23, 384),
            "blocks.9.pos_embed": (1, 11, 384),
            "blocks.0.attn.qkv.bias": (1152,),
            "norm.weight": (384,),
            "head.weight": (1000, 384),
        },
    ),
    ("cvt_13", "official-cvt"): (
        459,
        {
            "stage0.patch_embed.proj.weight": (64, 3, 7, 7),
            "stage0.patch_embed.norm.weight": (64,),
            "stage2.cls_token": (1, 1, 384),
            "stage1.blocks.1.attn.conv_proj_q.conv.weight": (192, 1, 3, 3),
            "stage2.blocks.9.attn.conv_proj_v.bn.num_batches_tracked": (),
            "stage2.blocks.9.attn.proj_k.weight": (384, 384),
            "stage2.blocks.9.mlp.fc1.weight": (1536, 384),
            "norm.weight": (384,),
            "head.weight": (1000, 384),
        },
    ),
    ("cvt_13", "hf-cvt"): (
        459,
        {
            "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight": (64, 3, 7, 7),
            "cvt.encoder.stages.0.embedding.convolution_embeddings.normalization.bias": (64,),
            "cvt.encoder.stages.2.cls_token": (1, 1, 384),
            "cvt.encoder.stages.1.layers.0.attention.attention.convolution_projection_query"
            ".convolution_projection.convolution.weight": (192, 1, 3, 3),
            "cvt.encoder.stages.1.layers.0.attention.attention.convolution_projection_key"
            ".convolution_projection.normalization.running_var": (192,),
            "cvt.encoder.stages.1.layers.1.attention.attention.projection_value.weight": (192, 192),
            "cvt.encoder.stages.2.layers.9.attention.output.dense.weight": (384, 384),
            "cvt.encoder.stages.2.layers.9.intermediate.dense.weight": (1536, 384),
            "cvt.encoder.stages.2.layers.9.output.dense.weight": (384, 1536),
            "cvt.encoder.stages.2.layers.9.layernorm_before.weight": (384,),
            "cvt.encoder.stages.2.layers.9.layernorm_after.bias": (384,),
            "layernorm.weight": (384,),
            "classifier.weight": (1000, 384),
        },
    ),
}


@pytest.mark.parametrize("preset,fmt", sorted(LITERAL))
def test_official_layout_names_and_shapes(preset, fmt):
    count, expected = LITERAL[(preset, fmt)]
    shapes = _meta_official(preset, fmt)
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    if count is not None:
        assert len(shapes) == count
    with torch.device("meta"):
        assert detect_format(FORMATS[fmt].inverse(create_model(preset).state_dict())) == fmt


def test_deepvit_s_re_attention_only_in_last_five_blocks():
    shapes = _meta_official("deepvit_s", "official-deepvit")
    with_re = sorted(int(k.split(".")[1]) for k in shapes if k.endswith("reatten_matrix.weight"))
    assert with_re == [11, 12, 13, 14, 15]


# ------------------------------------------------------------------ load: every tensor lands in place
#: (preset, overrides, format, official key -> our key, written out independently of the converters)
LOAD_CASES = [
    (
        "convit_tiny",
        {},
        "timm-convit",
        {
            "pos_embed": "pos_embed",
            "patch_embed.proj.bias": "patch_embed.proj.bias",
            "blocks.3.attn.qk.weight": "encoder.blocks.3.attn.qk.weight",
            "blocks.9.attn.gating_param": "encoder.blocks.9.attn.gating_param",
            "blocks.11.attn.qkv.weight": "encoder.blocks.11.attn.qkv.weight",
            "norm.bias": "norm.bias",
            "head.weight": "head.fc.weight",
        },
    ),
    (
        "ceit_tiny",
        {},
        "official-ceit",
        {
            "i2t.backbone.conv.weight": "i2t.conv.weight",
            "i2t.backbone.bn.running_mean": "i2t.bn.running_mean",
            "i2t.proj.weight": "patch_embed.proj.weight",
            "blocks.4.leff.bn2.running_var": "encoder.blocks.4.mlp.bn2.running_var",
            "blocks.4.leff.conv2.weight": "encoder.blocks.4.mlp.conv2.weight",
            "blocks.7.norm2.weight": "encoder.blocks.7.norm2.weight",
            "pos_layer_embed": "pos_layer_embed",
            "lca.feedforward.fc2.bias": "lca.feedforward.fc2.bias",
            "head.bias": "head.fc.bias",
        },
    ),
    (
        "deepvit_16b",
        {"num_encoder_blocks": 4},
        "official-deepvit",
        {
            "patch_embed.proj.weight": "patch_embed.proj.weight",
            "blocks.2.attn.reatten_matrix.weight": "encoder.blocks.2.attn.attn_transform.reatten_matrix.weight",
            "blocks.2.attn.var_norm.running_mean": "encoder.blocks.2.attn.attn_transform.var_norm.running_mean",
            "blocks.3.attn.qkv.bias": "encoder.blocks.3.attn.qkv.bias",
            "head.weight": "head.fc.weight",
        },
    ),
    (
        "deepvit_s",
        {"num_encoder_blocks": 4, "re_attention_depth": 2},
        "official-deepvit",
        {
            "patch_embed.conv1.weight": "patch_embed.conv1.weight",
            "patch_embed.bn2.running_var": "patch_embed.bn2.running_var",
            "patch_embed.proj.bias": "patch_embed.proj.bias",
            "blocks.3.attn.var_norm.weight": "encoder.blocks.3.attn.attn_transform.var_norm.weight",
            "blocks.0.mlp.fc1.weight": "encoder.blocks.0.mlp.fc1.weight",
        },
    ),
    (
        "hvt_ti_1",
        {"hvt_pool": [1, 5, 9]},
        "official-hvt",
        {
            "pos_embed": "pos_embed",
            "blocks.0.pos_embed": "pools.1.pos_embed",
            "blocks.4.pos_embed": "pools.5.pos_embed",
            "blocks.8.pos_embed": "pools.9.pos_embed",
            "blocks.8.attn.proj.weight": "encoder.blocks.8.attn.proj.weight",
            "head.weight": "head.fc.weight",
        },
    ),
    (
        "cvt_13",
        {"depth": (1, 1, 2)},
        "official-cvt",
        {
            "stage2.cls_token": "stage2.cls_token",
            "stage1.blocks.0.attn.conv_proj_k.bn.running_mean": "stage1.blocks.0.attn.conv_proj_k.bn.running_mean",
        },
    ),
    (
        "cvt_13",
        {"depth": (1, 1, 2)},
        "hf-cvt",
        {
            "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight": "stage0.patch_embed.proj.weight",
            "cvt.encoder.stages.1.embedding.convolution_embeddings.normalization.weight": "stage1.patch_embed.norm.weight",
            "cvt.encoder.stages.2.cls_token": "stage2.cls_token",
            "cvt.encoder.stages.2.layers.1.attention.attention.convolution_projection_value"
            ".convolution_projection.normalization.running_var": "stage2.blocks.1.attn.conv_proj_v.bn.running_var",
            "cvt.encoder.stages.2.layers.1.attention.attention.convolution_projection_key"
            ".convolution_projection.convolution.weight": "stage2.blocks.1.attn.conv_proj_k.conv.weight",
            "cvt.encoder.stages.2.layers.0.attention.attention.projection_query.bias": "stage2.blocks.0.attn.proj_q.bias",
            "cvt.encoder.stages.2.layers.0.attention.output.dense.weight": "stage2.blocks.0.attn.proj.weight",
            "cvt.encoder.stages.2.layers.0.intermediate.dense.weight": "stage2.blocks.0.mlp.fc1.weight",
            "cvt.encoder.stages.2.layers.0.output.dense.bias": "stage2.blocks.0.mlp.fc2.bias",
            "cvt.encoder.stages.0.layers.0.layernorm_before.weight": "stage0.blocks.0.norm1.weight",
            "cvt.encoder.stages.0.layers.0.layernorm_after.weight": "stage0.blocks.0.norm2.weight",
            "layernorm.bias": "norm.bias",
            "classifier.weight": "head.weight",
        },
    ),
]


@pytest.mark.parametrize("preset,overrides,fmt,spots", LOAD_CASES, ids=[f"{c[0]}-{c[2]}" for c in LOAD_CASES])
def test_official_checkpoint_loads_every_tensor_in_place(tmp_path, preset, overrides, fmt, spots):
    torch.manual_seed(1)
    source = perturbed(create_model(preset, image_size=64, **overrides))
    official = FORMATS[fmt].inverse(source.state_dict())
    path = tmp_path / "w.pth"
    torch.save({"model": official, "epoch": 3, "args": argparse.Namespace(lr=0.1)}, path)

    torch.manual_seed(2)
    target = create_model(preset, image_size=64, **overrides).eval()
    model, info = load_pretrained(target, path)
    assert model is target and info.format == fmt and info.container == "torch"
    loaded = model.state_dict()
    for off_key, our_key in spots.items():
        assert torch.equal(official[off_key], loaded[our_key]), (off_key, our_key)
    expected = source.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    back = FORMATS[fmt].inverse(loaded)  # lossless round trip to the official layout
    assert back.keys() == official.keys() and all(torch.equal(back[k], official[k]) for k in official)

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        if (
            fmt == "hf-cvt"
        ):  # HF trains with exact GELU: the loaded model must differ from the QuickGELU source
            assert isinstance(model.stage0.blocks[0].mlp.act, torch.nn.GELU)
            assert info.adjustments and "GELU" in info.adjustments[0]
            source.set_mlp_activation(torch.nn.GELU)
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_safetensors_and_hf_directory_containers(tmp_path):
    torch.manual_seed(1)
    source = perturbed(create_model("hvt_ti_1", image_size=64))
    official = FORMATS["official-hvt"].inverse(source.state_dict())
    save_file({k: v.contiguous() for k, v in official.items()}, tmp_path / "w.safetensors")
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({k: v.contiguous() for k, v in official.items()}, hf / "model.safetensors")
    (hf / "config.json").write_text(json.dumps({"architectures": ["HVT"]}))
    for path, container in ((tmp_path / "w.safetensors", "safetensors"), (hf, "hf-directory")):
        model, info = load_pretrained(create_model("hvt_ti_1", image_size=64), path)
        assert info.container == container and info.format == "official-hvt"
        assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    # a preset name builds the model at the checkpoint's resolution (64 px here), as export does
    model, info = load_pretrained("hvt_ti_1", hf)
    assert model.image_size == 64 and info.container == "hf-directory"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())


def test_deploykit_state_dict_still_loads(tmp_path):
    source = perturbed(create_model("convit_tiny", image_size=64))
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model, info = load_pretrained(create_model("convit_tiny", image_size=64), path)
    assert info.format == "deploykit" and info.tensors == len(source.state_dict())
    model, info = load_pretrained(
        create_model("convit_tiny", image_size=64), path, weights_format="deploykit"
    )
    assert info.format == "deploykit"


# ------------------------------------------------------------------------------------------- bad input
def _zeros(preset: str, fmt: str, **overrides) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(s) for k, s in _meta_official(preset, fmt, **overrides).items()}


def test_wrong_preset_size_is_one_line(tmp_path):
    path = tmp_path / "convit_small.pth"
    torch.save(_zeros("convit_small", "timm-convit"), path)
    with pytest.raises(WeightsError) as err:
        load_pretrained(create_model("convit_tiny"), path)
    msg = str(err.value)
    assert (
        "checkpoint is timm ConViT with d=432, 12 blocks (convit_small), model is convit_tiny (d=192" in msg
    )
    assert "\n" not in msg

    path = tmp_path / "deepvit_24b.pth"
    torch.save(_zeros("deepvit_24b", "official-deepvit", image_size=64), path)
    with pytest.raises(
        WeightsError,
        match=r"d=384, 24 blocks \(deepvit_24b at image_size=64\), model is deepvit_16b \(d=384, 16",
    ):
        load_pretrained(create_model("deepvit_16b", image_size=64), path)


def test_wrong_image_size_names_what_fits(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_zeros("convit_tiny", "timm-convit"), path)  # 224 px: pos_embed (1, 196, d)
    with pytest.raises(WeightsError) as err:
        load_pretrained(create_model("convit_tiny", image_size=64), path)
    assert str(err.value) == (
        "checkpoint w.pth is for image_size=224 (pos_embed (1, 196, 192): a 14x14 grid of 16-pixel patches), "
        'the model was built for image_size=64: build it with create_model("convit_tiny", image_size=224) '
        'or pass the preset name: load_pretrained("convit_tiny", "w.pth")'
    )


def test_wrong_family_is_one_line(tmp_path):
    path = tmp_path / "ceit.pth"
    torch.save(_zeros("ceit_tiny", "official-ceit", image_size=64), path)
    with pytest.raises(WeightsError) as err:
        load_pretrained(create_model("hvt_ti_1", image_size=64), path)
    assert str(err.value) == (
        "weights ceit.pth: checkpoint is official CeiT (coeusguo/ceit) (ceit family), "
        "model is hvt_ti_1 (hvt family)"
    )
    with pytest.raises(WeightsError, match="checkpoint is Hugging Face CvT .* model is hvt_ti_1"):
        load_pretrained(create_model("hvt_ti_1", image_size=64), path, weights_format="hf_cvt")
    with pytest.raises(WeightsError, match="unknown weights format 'onnx'"):
        load_pretrained(create_model("hvt_ti_1", image_size=64), path, weights_format="onnx")


def test_unreadable_and_unknown_checkpoints(tmp_path):
    model = create_model("hvt_ti_1", image_size=64)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable checkpoint"):
        load_pretrained(model, corrupt)

    good = tmp_path / "good.safetensors"
    save_file({"blocks.0.pos_embed": torch.zeros(1, 97, 192), "x": torch.zeros(1000)}, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated.safetensors is not a readable checkpoint"):
        load_pretrained(model, truncated)

    unknown = tmp_path / "unknown.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, unknown)
    with pytest.raises(WeightsError, match="cannot tell which model layout.*features.0.weight"):
        load_pretrained(model, unknown)

    with pytest.raises(WeightsError, match="without model.safetensors or pytorch_model.bin"):
        load_pretrained(model, tmp_path)
    with pytest.raises(WeightsError, match="not found"):
        load_pretrained(model, tmp_path / "missing.pth")


def test_cli_weights_errors_exit_2(tmp_path):
    path = tmp_path / "ceit.pth"
    torch.save(_zeros("ceit_tiny", "official-ceit"), path)
    runner = CliRunner()
    r = runner.invoke(cli, ["export", "hvt_ti_1", "--weights", str(path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "model is hvt_ti_1 (hvt family)" in r.output and "Traceback" not in r.output
    r = runner.invoke(
        cli,
        [
            "export",
            "ceit_tiny",
            "--weights",
            str(path),
            "--weights-format",
            "timm-convit",
            "--out",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 2 and "checkpoint is timm ConViT (convit family)" in r.output
    r = runner.invoke(cli, ["validate", str(path), "--model", "hvt", "--weights", str(path)])
    assert r.exit_code == 2
    r = runner.invoke(cli, ["export", "hvt", "--weights-format", "keras"])
    assert r.exit_code == 2 and "keras" in r.output


def test_cli_format_choices_match_the_library():
    assert tuple(FORMATS) == WEIGHTS_FORMATS

"""Logit parity with the peer libraries that publish the reference weights: timm (ConViT) and Hugging Face
transformers (CvT). Models are randomly initialised (no download), perturbed off their init, saved in the
peer's own format and loaded with :func:`deploykit.models.load_pretrained`.

Needs ``timm`` and ``transformers`` (CI installs them; see README); each half skips when its package is
missing.
"""

import dataclasses

import pytest
import torch
from exporting import export_preset
from tiny_models import perturbed

from deploykit.core.config import default_config
from deploykit.models import create_model, load_pretrained
from deploykit.models.layers import QuickGELU
from deploykit.workflows.validate import validate_artifact

ATOL = 1e-5


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Move every float tensor off its init, so swapped norms, biases or BN statistics cannot hide."""
    torch.manual_seed(3)
    return perturbed(model)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _export_config(family: str, size: int):
    return dataclasses.replace(default_config(family), image_size=size, exporter="torchscript")


# ----------------------------------------------------------------------------------------------- timm
@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")


@pytest.mark.parametrize("name,suffix", [("convit_tiny", ".pth"), ("convit_small", ".safetensors")])
def test_timm_convit_logits(timm, tmp_path, name, suffix):
    peer = _perturb(timm.create_model(name, pretrained=False))
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in peer.state_dict().items()}, path)
    else:
        torch.save(peer.state_dict(), path)
    model, info = load_pretrained(name, path)
    assert info.format == "timm-convit"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        err = _max_abs(model.eval()(x), peer(x))
    print(f"{name}: max abs logit difference vs timm {err:.2e}")
    assert err <= ATOL


def test_timm_convit_exports_and_validates(timm, tmp_path):
    peer = _perturb(timm.create_model("convit_tiny", pretrained=False, img_size=64))
    path = tmp_path / "convit_tiny_64.pth"
    torch.save(peer.state_dict(), path)
    config = _export_config("convit", 64)
    result = export_preset("convit_tiny", tmp_path / "out", config, weights=path)
    weights = result.manifest["weights"]
    assert weights["format"] == "timm-convit" and len(weights["sha256"]) == 64
    assert result.manifest["passed"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (
            _max_abs(load_pretrained(create_model("convit_tiny", image_size=64), path)[0](x), peer(x)) <= ATOL
        )
    report = validate_artifact(result.onnx_path, "convit_tiny", weights=path, config=config)
    assert report.passed and report.facts["weights"]["format"] == "timm-convit"


# --------------------------------------------------------------------------------------- transformers
@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _hf_cvt(transformers, depth: list[int]):
    config = transformers.CvtConfig(
        num_labels=1000,
        embed_dim=[64, 192, 384],
        num_heads=[1, 3, 6],
        depth=depth,
        patch_sizes=[7, 3, 3],
        patch_stride=[4, 2, 2],
        patch_padding=[2, 1, 1],
        mlp_ratio=[4.0, 4.0, 4.0],
        cls_token=[False, False, True],
        drop_path_rate=[0.0, 0.0, 0.1],
    )
    torch.manual_seed(0)
    return _perturb(transformers.CvtForImageClassification(config))


@pytest.mark.parametrize("preset,depth", [("cvt_13", [1, 2, 10]), ("cvt_21", [1, 4, 16])])
def test_hf_cvt_logits(transformers, tmp_path, preset, depth):
    peer = _hf_cvt(transformers, depth)
    file = tmp_path / "pytorch_model.bin"
    torch.save(peer.state_dict(), file)
    directory = tmp_path / "hf"
    peer.save_pretrained(directory)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = peer(pixel_values=x).logits
        for path, container in ((file, "torch"), (directory, "hf-directory")):
            model, info = load_pretrained(preset, path)
            assert info.format == "hf-cvt" and info.container == container
            err = _max_abs(model.eval()(x), expected)
            print(f"{preset} ({container}): max abs logit difference vs transformers {err:.2e}")
            assert err <= ATOL
        # the same weights with the preset's QuickGELU (official CvT) give other logits: the swap matters
        model.set_mlp_activation(QuickGELU)
        quick = _max_abs(model(x), expected)
        print(f"{preset}: with QuickGELU instead of GELU the logits move by {quick:.2e}")
        assert quick > 100 * ATOL


def test_hf_cvt_exports_and_validates(transformers, tmp_path):
    peer = _hf_cvt(transformers, [1, 2, 10])
    directory = tmp_path / "hf"
    peer.save_pretrained(directory)
    config = _export_config("cvt", 64)  # CvT has no position embedding: any input size
    result = export_preset("cvt_13", tmp_path / "out", config, weights=directory, weights_format="hf-cvt")
    weights = result.manifest["weights"]
    assert weights["format"] == "hf-cvt" and weights["container"] == "hf-directory"
    assert "GELU" in weights["adjustments"][0]
    assert result.manifest["passed"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _max_abs(load_pretrained("cvt_13", directory)[0](x), peer(pixel_values=x).logits) <= ATOL
    report = validate_artifact(result.onnx_path, "cvt_13", weights=directory, config=config)
    assert report.passed and report.facts["weights"]["sha256"] == weights["sha256"]

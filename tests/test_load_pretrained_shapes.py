"""``load_pretrained(PRESET, FILE)`` builds what ``deploykit export PRESET --weights FILE`` builds: the
classes and resolution the checkpoint says (head rows, position-embedding grid; a Hugging Face processor's
size; a deploykit checkpoint's recorded preset and architecture). A keyword that contradicts the checkpoint
and a built model of another size are one line each, naming the values.

Every family's checkpoint is saved in its reference layout (each family's inverse converter) from a model
built at 10 classes and a resolution other than its preset's.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import perturbed

from deploykit.core.config import default_config
from deploykit.core.errors import ConfigError, WeightsError
from deploykit.models import create_model, get_preset, load_pretrained
from deploykit.models.checkpoints import jsonable_args, save_checkpoint
from deploykit.models.pretrained import FORMATS, read_pretrained
from deploykit.models.shapes import resolve_model_args

#: preset, reference layout, resolution of the saved model (CvT has no position embedding: any size, None)
CASES = {
    "convit": ("convit_tiny", "timm-convit", 48),
    "ceit": ("ceit_tiny", "official-ceit", 64),
    "deepvit": ("deepvit_16b", "official-deepvit", 48),
    "cvt": ("cvt_13", "official-cvt", None),
    "hvt": ("hvt_ti_1", "official-hvt", 64),
}
CLASSES = 10
#: the input size the outputs are compared at (CvT's model is built at its preset's 224 and takes any size)
RUN_SIZE = {"cvt": 64}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> (the source model, its checkpoint file in the family's reference layout)."""
    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for family, (preset, fmt, size) in CASES.items():
        torch.manual_seed(3)
        sizes = {"image_size": size} if size is not None else {}
        source = perturbed(create_model(preset, num_classes=CLASSES, **sizes))
        path = root / f"{preset}_{size or 'any'}.pth"
        torch.save({"model": FORMATS[fmt].inverse(source.state_dict())}, path)
        out[family] = (source, path)
    return out


def _meta(preset: str, **overrides) -> torch.nn.Module:
    """A model that is refused before anything is copied needs no weights (built on the meta device)."""
    with torch.device("meta"):
        return create_model(preset, **overrides)


def _same_outputs(model: torch.nn.Module, source: torch.nn.Module, size: int) -> None:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


@pytest.mark.parametrize("family", list(CASES))
def test_preset_name_builds_the_checkpoints_classes_and_resolution(saved, family):
    preset, fmt, size = CASES[family]
    source, path = saved[family]
    model, info = load_pretrained(preset, path)
    assert info.format == fmt and not model.training
    assert model.num_classes == CLASSES
    assert model.image_size == (size or get_preset(preset).kwargs.get("image_size", 224))
    assert model.state_dict().keys() == source.state_dict().keys()
    _same_outputs(model, source, size or RUN_SIZE[family])


def _export_builds(preset: str, path, model: torch.nn.Module) -> None:
    """API = CLI: ``model`` has the arguments and weights of the model ``deploykit export PRESET --weights
    PATH`` builds (``prepare_model``, with no size flag)."""
    from deploykit.workflows.export.model import prepare_model

    config = dataclasses.replace(default_config(get_preset(preset).family), image_size=None)
    prepared = prepare_model(preset, config=config, weights=path)
    assert jsonable_args(model) == prepared.model_args
    assert all(torch.equal(v, prepared.model.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", list(CASES))
def test_api_builds_what_export_builds(saved, family):
    preset, _, _ = CASES[family]
    _, path = saved[family]
    _export_builds(preset, path, load_pretrained(preset, path)[0])


@pytest.mark.parametrize("family", list(CASES))
def test_contradicting_keywords_are_one_line(saved, family):
    preset, _, size = CASES[family]
    _, path = saved[family]
    with pytest.raises(ConfigError) as err:
        load_pretrained(preset, path, num_classes=5)
    assert str(err.value).startswith("num_classes=5 contradicts the checkpoint: ")
    assert str(err.value).endswith(f"means num_classes {CLASSES}") and "\n" not in str(err.value)
    if size is None:  # no position embedding: any resolution is the caller's to choose
        assert load_pretrained(preset, path, image_size=96)[0].image_size == 96
        return
    with pytest.raises(ConfigError) as err:
        load_pretrained(preset, path, image_size=224)
    message = str(err.value)
    assert message.startswith("image_size=224 contradicts the checkpoint: ") and "pos_embed (1, " in message
    assert message.endswith(f"means image_size {size}") and "\n" not in message
    # agreeing keywords are fine
    model, _ = load_pretrained(preset, path, num_classes=CLASSES, image_size=size)
    assert (model.num_classes, model.image_size) == (CLASSES, size)


@pytest.mark.parametrize("family", list(CASES))
def test_built_model_of_another_size_is_one_line(saved, family):
    preset, _, size = CASES[family]
    _, path = saved[family]
    with pytest.raises(WeightsError) as err:
        load_pretrained(_meta(preset), path)  # the preset's 1000 classes (and 224 px)
    message = str(err.value)
    assert "\n" not in message and "mis-shaped" not in message
    assert message.startswith(f"checkpoint {path.name} is for num_classes={CLASSES} (")
    wanted = f"num_classes={CLASSES}" + (f", image_size={size}" if size is not None else "")
    assert f'build it with create_model("{preset}", {wanted}) or pass the preset name' in message
    if size is None:
        return
    assert f"and image_size={size} (pos_embed (1, " in message
    assert "the model was built for num_classes=1000 and image_size=224:" in message
    # the same resolution, other classes: only the classes are named, the size is kept in the advice
    with pytest.raises(WeightsError) as err:
        load_pretrained(_meta(preset, image_size=size), path)
    message = str(err.value)
    assert "the model was built for num_classes=1000: " in message and "image_size=224" not in message
    assert f'create_model("{preset}", image_size={size}, num_classes={CLASSES})' in message


def test_the_brief_s_example_ceit_at_384(tmp_path):
    """``deploykit export ceit_tiny --weights ceit_384.pth`` infers 384 px; so does load_pretrained."""
    with torch.device("meta"):
        shapes = create_model("ceit_tiny", image_size=384).state_dict()
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}
    path = tmp_path / "ceit_384.pth"
    torch.save(FORMATS["official-ceit"].inverse(state), path)
    assert load_pretrained("ceit_tiny", path)[0].image_size == 384
    assert load_pretrained("ceit", path)[0].image_size == 384  # the family alias is enough, as in the CLI
    with pytest.raises(WeightsError) as err:
        load_pretrained(_meta("ceit_tiny"), path)
    assert str(err.value) == (
        "checkpoint ceit_384.pth is for image_size=384 (pos_embed (1, 577, 192): a 24x24 grid of 16-pixel "
        'patches), the model was built for image_size=224: build it with create_model("ceit_tiny", '
        'image_size=384) or pass the preset name: load_pretrained("ceit_tiny", "ceit_384.pth")'
    )


def test_recorded_architecture_wins(tmp_path):
    """A deploykit checkpoint's header (preset, overrides, classes, size) is the model, as for export."""
    torch.manual_seed(4)
    source = perturbed(create_model("deepvit_16b", num_encoder_blocks=2, num_classes=CLASSES, image_size=48))
    path = save_checkpoint(source, tmp_path / "small.safetensors")
    model, info = load_pretrained("deepvit", path)
    assert info.format == "deploykit" and len(model.encoder.blocks) == 2
    assert jsonable_args(model) == jsonable_args(source)
    _same_outputs(model, source, 48)
    _export_builds("deepvit", path, model)
    # a built model of the recorded architecture at another size: the suggestion keeps the architecture
    with pytest.raises(
        WeightsError,
        match=r'create_model\("deepvit_16b", num_encoder_blocks=2, num_classes=10, image_size=48\)',
    ):
        load_pretrained(_meta("deepvit_16b", num_encoder_blocks=2, num_classes=CLASSES), path)


def test_plain_deploykit_state_dict_and_headless_checkpoint(tmp_path):
    torch.manual_seed(5)
    source = perturbed(create_model("hvt_ti_1", num_classes=0, image_size=96))
    path = tmp_path / "features.pt"
    torch.save(source.state_dict(), path)
    model, info = load_pretrained("hvt_ti_1", path)
    assert info.format == "deploykit" and (model.num_classes, model.image_size) == (0, 96)
    _same_outputs(model, source, 96)
    _export_builds("hvt_ti_1", path, model)


def test_hugging_face_directory_gives_cvt_its_size(tmp_path):
    """CvT's checkpoint cannot say its resolution; a save_pretrained directory's processor does."""
    torch.manual_seed(6)
    source = perturbed(create_model("cvt_13", num_classes=CLASSES, depth=(1, 1, 1)))
    state = {k: v.contiguous() for k, v in FORMATS["hf-cvt"].inverse(source.state_dict()).items()}
    directory = tmp_path / "hf"
    directory.mkdir()
    save_file(state, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps({"architectures": ["CvtForImageClassification"]}))
    (directory / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 160}}))
    model, info = load_pretrained("cvt_13", directory, architecture={"depth": (1, 1, 1)})
    assert info.format == "hf-cvt" and (model.num_classes, model.image_size) == (CLASSES, 160)
    source.set_mlp_activation(torch.nn.GELU)  # what the HF checkpoint's own code computes
    _same_outputs(model, source, 64)


def test_real_layout_mismatch_still_lists_the_keys(tmp_path):
    """Shapes that classes and resolution cannot explain keep the strict listing."""
    with torch.device("meta"):
        shapes = create_model("convit_tiny", image_size=48, num_classes=CLASSES).state_dict()
    state = {k: torch.zeros(v.shape) for k, v in shapes.items()}
    state["encoder.blocks.0.mlp.fc1.bias"] = torch.zeros(7)  # not a size: a broken layout
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"mis-shaped keys: .*encoder\.blocks\.0\.mlp\.fc1\.bias \(7,\)"):
        load_pretrained(_meta("convit_tiny"), path)


def test_size_keywords_go_with_a_preset_name(saved):
    _, path = saved["convit"]
    with pytest.raises(ConfigError, match=r"image_size=48 build a model from a preset name.*already built"):
        load_pretrained(_meta("convit_tiny", image_size=48), path, image_size=48)


def test_resolve_model_args_spells_the_cli_flags(saved):
    """The models-level rule export shares: with the CLI's spelling, export's own message."""
    _, path = saved["ceit"]
    checkpoint = read_pretrained(path)
    args = resolve_model_args("ceit_tiny", checkpoint)
    assert (args.preset, args.sizes, args.architecture) == (
        "ceit_tiny",
        {"num_classes": CLASSES, "image_size": 64},
        {},
    )
    assert args.inferred is not None and args.inferred.image_size == 64
    with pytest.raises(ConfigError) as err:
        resolve_model_args("ceit_tiny", checkpoint, image_size=96, spelling="--{flag} {value}")
    assert str(err.value) == (
        "--image-size 96 contradicts the checkpoint: pos_embed (1, 17, 192): a 4x4 grid of 16-pixel "
        "patches means image_size 64"
    )
    assert resolve_model_args("cvt", None, num_classes=3).kwargs == {"num_classes": 3}

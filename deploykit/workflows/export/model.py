"""The model an export builds, and everything that follows from it: the preset, the model arguments
(classes and resolution: from the flags, the config, the checkpoint's own head and position embedding),
the weights, the class names and the preprocessing (preset, then a Hugging Face directory's
``preprocessor_config.json``, then the config's ``[preprocessing]``, then flags).

A flag that contradicts the checkpoint is a :class:`ConfigError` naming both values; an image size the
family cannot take is the constructor's one-line :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deploykit.core.config import ExportConfig
from deploykit.core.errors import ConfigError
from deploykit.core.labels import check_labels
from deploykit.core.record import WeightsSource
from deploykit.models import create_model, get_preset
from deploykit.models.checkpoints import jsonable_args
from deploykit.models.pretrained import Checkpoint, load_checkpoint, model_family, read_pretrained
from deploykit.models.registry import Preset, list_models
from deploykit.models.shapes import InferredArgs, resolve_model_args
from deploykit.models.weights import WeightsInfo
from deploykit.runtime.postprocess import read_labels

#: the model classes an in-memory export takes (every registered family)
FAMILY_CLASSES = ("ConViT", "CeiT", "DeepViT", "CvT", "HPool_ViT")


@dataclass(kw_only=True)
class PreparedModel:
    """An eval-mode model ready to export, with what it was built from."""

    model: nn.Module
    spec: Preset
    weights_info: WeightsInfo | None = None
    #: the constructor arguments the preset was built with beyond its own: num_classes, image_size
    model_args: dict[str, Any] = field(default_factory=dict)
    inferred: InferredArgs | None = None
    labels: tuple[str, ...] | None = None
    #: where the weights came from: a file, a model handed to the Python API, or random
    weights_source: WeightsSource = WeightsSource.RANDOM

    @property
    def random_weights(self) -> bool:
        return self.weights_source is WeightsSource.RANDOM

    def state_sha256(self) -> str:
        """A fingerprint of the weights themselves (names, dtypes, shapes, bytes), the same for a
        checkpoint file and the model it was loaded into."""
        return state_sha256(self.model)


def state_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(
            value.numpy().tobytes() if value.dtype != torch.bfloat16 else value.float().numpy().tobytes()
        )
    return digest.hexdigest()


def prepare_model(
    preset: str,
    *,
    config: ExportConfig,
    weights: str | Path | None = None,
    weights_format: str | None = None,
    labels: str | Path | Sequence[str] | None = None,
    architecture: dict[str, Any] | None = None,
) -> PreparedModel:
    """Build ``preset`` (seeded with ``config.seed``) at the classes and resolution the config asks for
    or the checkpoint says, with ``architecture``'s (or a deploykit checkpoint's) constructor overrides,
    load ``weights``, and resolve labels and preprocessing."""
    spec = get_preset(preset)
    checkpoint = (
        read_pretrained(weights, weights_format, family=spec.family, model=spec.name)
        if weights is not None
        else None
    )
    # the same rule load_pretrained(preset, path) follows: API = CLI
    args = resolve_model_args(
        spec.name,
        checkpoint,
        num_classes=config.num_classes,
        image_size=config.image_size,
        architecture=architecture,
        spelling="--{flag} {value}",
    )
    torch.manual_seed(config.seed)
    model = create_model(args.preset, **args.kwargs).eval()
    info = load_checkpoint(model, checkpoint) if checkpoint is not None else None
    prepared = PreparedModel(
        model=model.eval(),
        spec=get_preset(args.preset),
        weights_info=info,
        model_args=_model_args(model),
        inferred=args.inferred,
        weights_source=WeightsSource.FILE if checkpoint is not None else WeightsSource.RANDOM,
    )
    finish(prepared, config, labels=labels, checkpoint=checkpoint)
    return prepared


def _model_args(model: nn.Module) -> dict[str, Any]:
    """What rebuilds ``model`` from its preset: the constructor overrides it was built with, its classes
    and resolution."""
    return jsonable_args(model)


def finish(
    prepared: PreparedModel,
    config: ExportConfig,
    *,
    labels: str | Path | Sequence[str] | None,
    checkpoint: Checkpoint | None = None,
) -> None:
    """Class names (argument, else the config's file, else a Hugging Face ``id2label``; the length must
    match the head) and the preprocessing overrides (checkpoint directory, then config)."""
    model = prepared.model
    chosen = labels if labels is not None else config.labels
    if isinstance(chosen, str | Path):
        names = read_labels(chosen)
    elif chosen is not None:
        names = check_labels(chosen, "labels")
    else:  # the checkpoint's header or id2label (checked where it was read), or none
        names = checkpoint.labels if checkpoint is not None else None
    if names is not None:
        if model.num_classes == 0:
            raise ConfigError(f"{len(names)} labels given for a headless model (it outputs features)")
        if len(names) != model.num_classes:
            raise ConfigError(f"{len(names)} labels given for a model with {model.num_classes} classes")
    prepared.labels = names
    overrides = {k: v for k, v in ((checkpoint.preprocessing if checkpoint else None) or {}).items()}
    overrides.pop("image_size", None)
    if model.image_size >= overrides.pop("no_crop_from", float("inf")):
        overrides["crop_pct"] = 1.0  # what the Hugging Face processor does at this size
    overrides.update(config.preprocessing)
    if overrides:
        model.data_config = dataclasses.replace(model.data_config, **overrides)


def family_of(model: object) -> str:
    """The family of a preset name or of a model held in memory; anything else is one line naming what
    deploykit exports."""
    if isinstance(model, str):
        return get_preset(model).family
    family = model_family(model) if isinstance(model, nn.Module) else None
    if family is None:
        raise ConfigError(
            f"cannot export a {type(model).__module__}.{type(model).__qualname__}: deploykit exports models of "
            f"its five families ({', '.join(FAMILY_CLASSES)}, e.g. deploykit.models.create_model(preset, ...))"
        )
    return family


def from_memory(
    model: nn.Module, config: ExportConfig, *, labels: str | Path | Sequence[str] | None = None
) -> PreparedModel:
    """An in-memory model of one of the five families (an eval-mode copy; the caller's model is not
    touched): its preset (``create_model``'s name, else the registered preset of the same architecture)
    and its own classes and resolution."""
    family_of(model)
    check_exportable_tensors(model)
    copied = copy.deepcopy(model).eval()
    spec = (
        get_preset(copied.preset_name) if getattr(copied, "preset_name", None) else _same_architecture(copied)
    )
    for key, value in (("num_classes", copied.num_classes), ("image_size", copied.image_size)):
        wanted = getattr(config, key)
        if wanted is not None and wanted != value:
            raise ConfigError(f"{key} {wanted} asked for, the model has {key} {value}")
    prepared = PreparedModel(
        model=copied, spec=spec, model_args=_model_args(copied), weights_source=WeightsSource.MEMORY
    )
    finish(prepared, config, labels=labels)
    return prepared


def check_exportable_tensors(model: nn.Module) -> None:
    """A model in memory must hold its weights, in float32, before anything traces it: one on the meta
    device (built under ``torch.device("meta")`` and never loaded) or in float16/bfloat16 (``model.half()``)
    is a :class:`ConfigError` saying what is wrong and what to do (the exporter would fail later with a
    message about itself)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    meta = [name for name, t in tensors if t.is_meta]
    if meta:
        raise ConfigError(
            f"the model's weights are on the meta device (not materialized: {meta[0]} has no data, "
            f"{len(meta)} tensor(s) in all): load real weights first (model.to_empty(device='cpu') then "
            "model.load_state_dict(...)), or build the model outside torch.device('meta')"
        )
    other = sorted(
        {str(t.dtype).removeprefix("torch.") for _, t in tensors if t.is_floating_point()} - {"float32"}
    )
    if other:
        raise ConfigError(
            f"the model is {' and '.join(other)}: export takes a float32 model (the FP16 graph is an export "
            "option: fp16=True); call model.float() first"
        )


def _same_architecture(model: nn.Module) -> Preset:
    """The registered preset of ``model``'s family whose module tree and weight shapes equal the model's
    at its classes and resolution."""
    family = model_family(model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    args = _model_args(model)
    for name in list_models():
        spec = get_preset(name)
        if spec.family != family:
            continue
        try:
            with torch.device("meta"):
                candidate = create_model(name, **args)
        except ConfigError:
            continue
        same = [type(m) for m in candidate.modules()] == [type(m) for m in model.modules()]
        if same and {k: tuple(v.shape) for k, v in candidate.state_dict().items()} == shapes:
            return spec
    raise ConfigError(
        f"this {type(model).__name__} matches no registered {family} preset (deploykit list {family}*): "
        "build it with deploykit.models.create_model(preset, num_classes=..., image_size=...)"
    )


def model_record(prepared: PreparedModel) -> dict[str, Any]:
    """What the artifact records about its model (ONNX metadata, manifest, engine sidecar)."""
    return {
        "preset": prepared.spec.name,
        "model_args": dict(prepared.model_args),
        "weights": prepared.weights_source,
        "weights_state_sha256": None if prepared.random_weights else prepared.state_sha256(),
    }


def build_model(
    preset: str,
    image_size: int | None = None,
    weights: str | Path | None = None,
    *,
    seed: int = 0,
    weights_format: str | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, WeightsInfo | None]:
    """The registered preset in eval mode, built with a fixed seed, optionally with weights (a reference
    checkpoint or a deploykit state_dict, see :func:`deploykit.models.load_pretrained`) whose head and
    position embedding set the classes and resolution unless given."""
    config = ExportConfig(
        family=get_preset(preset).family, image_size=image_size, num_classes=num_classes, seed=seed
    )
    prepared = prepare_model(preset, config=config, weights=weights, weights_format=weights_format)
    return prepared.model, prepared.weights_info

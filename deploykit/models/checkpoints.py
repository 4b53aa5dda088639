"""deploykit's own checkpoint: a safetensors file whose metadata says how to rebuild the model.

``save_checkpoint(model, path)`` writes the weights (FP32, or FP16 to halve the file) and, in the
safetensors header, the preset, the constructor arguments given beyond it (``create_model``'s overrides,
plus ``num_classes`` and ``image_size``), the class names and the preprocessing the model was trained with.
``read_checkpoint_record(path)`` reads that header back; ``deploykit export PRESET --weights FILE`` then
builds exactly that architecture, so a fine-tuned model with fewer blocks or another width exports with one
flag.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deploykit.core.errors import ConfigError, WeightsError
from deploykit.core.io import atomic_write_bytes
from deploykit.core.labels import check_labels
from deploykit.core.record import KEY_LABELS, KEY_MODEL_ARGS, KEY_PREPROCESSING, KEY_PRESET

# a checkpoint's header uses the artifact record's keys (the same facts, spelled once)
PRESET_KEY = KEY_PRESET
ARGS_KEY = KEY_MODEL_ARGS
LABELS_KEY = KEY_LABELS
PREPROCESSING_KEY = KEY_PREPROCESSING


@dataclass(frozen=True, kw_only=True)
class CheckpointRecord:
    """What a deploykit checkpoint's header says: ``preset`` and ``model_args`` (constructor arguments
    beyond the preset), ``labels`` and ``preprocessing`` (``None`` when not recorded)."""

    preset: str
    model_args: dict[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None
    preprocessing: dict[str, Any] | None = None


def jsonable_args(model: nn.Module) -> dict[str, Any]:
    """The constructor arguments that rebuild ``model`` from its preset (overrides, classes, resolution);
    tuples become lists. An override that JSON cannot hold (a class, a function) is a ConfigError."""
    args: dict[str, Any] = {}
    for key, value in dict(getattr(model, "preset_overrides", {}) or {}).items():
        plain = list(value) if isinstance(value, tuple) else value
        try:
            json.dumps(plain)
        except TypeError:
            raise ConfigError(
                f"the model was built with {key}={value!r}, which an artifact cannot record; "
                "give it as numbers or strings"
            ) from None
        args[key] = plain
    args["num_classes"] = int(model.num_classes)
    args["image_size"] = int(model.image_size)
    return args


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``model`` (built with :func:`deploykit.models.create_model`) as a safetensors checkpoint that
    records how to rebuild it; floating tensors are stored as ``dtype``. The file is replaced atomically."""
    from safetensors.torch import save

    preset = getattr(model, "preset_name", None)
    if not preset:
        raise ConfigError(
            "save_checkpoint needs a model built with deploykit.models.create_model(preset, ...)"
        )
    if labels is not None:
        labels = check_labels(labels, "labels")
        if len(labels) != model.num_classes:
            raise ConfigError(f"{len(labels)} labels given for a model with {model.num_classes} classes")
    state = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    meta = {PRESET_KEY: preset, ARGS_KEY: json.dumps(jsonable_args(model), sort_keys=True)}
    if labels is not None:
        meta[LABELS_KEY] = json.dumps(list(labels))
    if preprocessing:
        meta[PREPROCESSING_KEY] = json.dumps(preprocessing, sort_keys=True)
    return atomic_write_bytes(path, save(state, metadata=meta))


def _json(meta: dict[str, str], key: str, path: Path) -> Any:
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except ValueError:
        raise WeightsError(f"{path}: its {key} metadata is not JSON") from None


def read_checkpoint_record(path: str | Path) -> CheckpointRecord | None:
    """The record in a deploykit safetensors checkpoint's header, ``None`` for any other file."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
    except Exception:  # an unreadable file is read_state_dict's to report
        return None
    if PRESET_KEY not in meta:
        return None
    args = _json(meta, ARGS_KEY, path) or {}
    labels = _json(meta, LABELS_KEY, path)
    pre = _json(meta, PREPROCESSING_KEY, path)
    if not isinstance(args, dict) or (labels is not None and not isinstance(labels, list)):
        raise WeightsError(f"{path}: its deploykit metadata is malformed")
    if pre is not None and not isinstance(pre, dict):
        raise WeightsError(f"{path}: its {PREPROCESSING_KEY} metadata is malformed")
    return CheckpointRecord(
        preset=str(meta[PRESET_KEY]),
        model_args=args,
        labels=check_labels(labels, f"{path}: its {LABELS_KEY} metadata") if labels is not None else None,
        preprocessing=pre,
    )

"""The model an artifact was exported from, rebuilt from its record: preset, classes, resolution, seed,
weights (the recorded file, or ``--weights`` that must be the same) and preprocessing."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from deploykit.core.config import ExportConfig, default_config
from deploykit.core.errors import ConfigError, DeployKitError, distinct_prefixes
from deploykit.core.record import (
    ArtifactRecord,
    WeightsSource,
)

if TYPE_CHECKING:
    from deploykit.models.registry import Preset


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "?"


def artifact_preset(path: str | Path, record: ArtifactRecord | None, model: str | None = None) -> Preset:
    """The preset ``path`` was exported from: its record's; ``model`` (``--model``) must name the same."""
    from deploykit.models import get_preset

    if model is not None:
        spec = get_preset(model)
        recorded = record.preset if record is not None else None
        if recorded and recorded != spec.name:
            named = model if model == spec.name else f"{model} ({spec.name})"
            raise ConfigError(
                f"--model {named} contradicts {path}: it was exported from {recorded} "
                "(leave --model out: the artifact records its preset)"
            )
        return spec
    if record is None or not record.preset:
        raise ConfigError(f"{path} records no preset (not exported by deploykit?): pass --model PRESET")
    return get_preset(record.preset)


def _recorded_weights(path: Path, record: ArtifactRecord, hint: str) -> tuple[Path | None, str | None]:
    """The weights the artifact was exported with, from its record (none: random weights); a file that is
    not there, or weights no file holds (a model in memory), is a ConfigError saying what to pass."""
    info = record.weights_file or {}
    if info.get("path"):
        weights = Path(str(info["path"]))
        if not weights.exists():
            raise ConfigError(
                f"{path} was exported with weights {weights} (sha256 {_short(info.get('sha256'))}), which "
                f"are not there: {hint}"
            )
        return weights, info.get("format") or None
    state = _short(record.weights_state_sha256)
    if record.weights_source is WeightsSource.MEMORY:
        raise ConfigError(
            f"{path} was exported from a model in memory (weights state sha256 {state}): pass --weights with "
            "that model's state_dict (torch.save(model.state_dict(), 'weights.pth'))"
        )
    if record.random_weights is False:
        raise ConfigError(
            f"{path} was exported with weights (state sha256 {state}) that no manifest.json beside it "
            f"names: {hint}"
        )
    return None, None


def rebuild_model(
    path: str | Path,
    record: ArtifactRecord,
    spec: Preset,
    config: ExportConfig | None = None,
    *,
    weights: str | Path | None = None,
    weights_format: str | None = None,
    hint: str = "pass --weights FILE",
):
    """The model ``path`` was exported from (a :class:`~deploykit.workflows.export.model.PreparedModel`): the
    preset at its recorded classes and resolution, the export's seed, the given ``weights`` or else the
    recorded ones (file there and unchanged), the recorded preprocessing (``config``: tolerances and
    defaults, the family's by default). Weights whose content differs from the recorded hash, and a config
    that contradicts the record, are a :class:`ConfigError` naming both; ``hint`` ends the messages about
    weights the artifact needs and cannot find."""
    path = Path(path)
    wanted = _recorded_config(path, record, config or default_config(spec.family))
    given = weights is not None
    if not given:
        weights, weights_format = _recorded_weights(path, record, hint)
    what = f"--weights {weights}" if given else f"the recorded weights {weights}"
    prepared = _prepare(
        path,
        record,
        spec,
        wanted,
        weights=weights,
        weights_format=weights_format,
        what=what,
        hint=hint,
        given=given,
    )
    info = prepared.weights_info
    recorded_file = (record.weights_file or {}).get("sha256")
    if not given and info is not None and recorded_file and info.sha256 != recorded_file:
        then, now = distinct_prefixes(recorded_file, info.sha256)
        raise ConfigError(
            f"{path} was exported with weights {weights} (sha256 {then}), which have "
            f"changed since (sha256 now {now}): {hint}"
        )
    if weights is not None and (record.weights_state_sha256 or record.random_weights):
        _same_weights(path, record, prepared.model, what)
    _recorded_preprocessing(prepared.model, record)
    return prepared


def _recorded_config(path: Path, record: ArtifactRecord, config: ExportConfig) -> ExportConfig:
    """``config`` at the recorded classes, resolution and seed (a config that contradicts them: one line)."""
    args = record.model_args or {}
    for key in ("num_classes", "image_size"):
        asked = getattr(config, key)
        if key in args and asked is not None and asked != args[key]:
            raise ConfigError(f"{path} records {key} {args[key]}; the config's {key} {asked} does not fit it")
    return dataclasses.replace(
        config,
        num_classes=args.get("num_classes", config.num_classes),
        image_size=args.get("image_size", config.image_size),
        seed=record.seed if record.seed is not None else config.seed,
        labels=None,
        preprocessing={},
    )


def _prepare(
    path: Path,
    record: ArtifactRecord,
    spec: Preset,
    config: ExportConfig,
    *,
    weights,
    weights_format,
    what: str,
    hint: str,
    given: bool,
):
    """The preset at the recorded architecture with ``weights``; weights that do not fit the record, or
    recorded weights that no longer load, are one line saying so."""
    from deploykit.workflows.export.model import prepare_model

    args = record.model_args or {}
    try:
        return prepare_model(
            spec.name,
            config=config,
            weights=weights,
            weights_format=weights_format,
            architecture={k: v for k, v in args.items() if k not in ("num_classes", "image_size")},
        )
    except ConfigError as exc:
        if weights is None or "contradicts the checkpoint" not in str(exc):
            raise
        found = str(exc).split(": ", 1)[-1]
        raise ConfigError(f"{what} do not fit {path} ({record.describe_args()}): {found}") from None
    except DeployKitError as exc:
        if given or weights is None:
            raise
        raise ConfigError(f"{what} no longer load ({exc}): {hint}") from None


def _same_weights(path: Path, record: ArtifactRecord, model, what: str) -> None:
    """The weights loaded are the ones the artifact records (by content), and it recorded weights at all."""
    from deploykit.workflows.export.model import state_sha256

    state = state_sha256(model)
    if record.random_weights:
        raise ConfigError(
            f"{path} was exported with random weights, but {what} were given (state sha256 "
            f"{_short(state)}): leave --weights out"
        )
    if state != record.weights_state_sha256:
        given, recorded = distinct_prefixes(state, record.weights_state_sha256 or "?")
        raise ConfigError(
            f"{what} are not the weights {path} was exported with: state sha256 {given}, the "
            f"artifact records {recorded}"
        )


def _recorded_preprocessing(model, record: ArtifactRecord) -> None:
    """The validation images are made as the export recorded (mean, std, crop, interpolation)."""
    names = {f.name for f in dataclasses.fields(model.data_config)} - {"input_size"}
    recorded = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in (record.preprocessing or {}).items()
        if k in names and v is not None
    }
    if recorded:
        model.data_config = dataclasses.replace(model.data_config, **recorded)

"""One export request: what ``deploykit export`` and ``deploykit.export`` ask for, built once and checked
once (:meth:`ExportRequest.create`), so both paths accept and refuse exactly the same things with the same
one-line errors.

The command line parses its text (``--batch 1,8,32``, ``--mean 0.5,0.5,0.5``) and the Python API takes
values; both then call :meth:`ExportRequest.create`, which applies the flags to the export config and the
implications between them:

* ``int8`` implies ``fp16`` (the Q/DQ graph is built on the FP16 graph);
* ``fp16_io`` needs ``fp16`` (or ``int8``);
* the calibration options (``calib``, ``calib_count``, ``calib_method``) need ``int8``;
* ``weights`` go with a preset name (a model held in memory brings its own);
* a config file must be for the model's family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.core.config import BatchProfile, CalibMethod, ExportConfig, resolve_config
from deploykit.core.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True, kw_only=True)
class Int8Options:
    """``--calib DIR``, ``--calib-count N``, ``--calib-method``; ``weight_scale`` multiplies named nodes'
    weight scales (a fault for tests: the gate and the sensitivity step must catch it)."""

    calib: Path | None = None
    calib_count: int | None = None
    calib_method: CalibMethod = CalibMethod.ENTROPY
    weight_scale: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "calib_method", CalibMethod.parse(self.calib_method))
        if self.calib is not None:
            object.__setattr__(self, "calib", Path(self.calib))
        count = self.calib_count
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ConfigError(f"--calib-count must be a positive integer, got {count!r}")


#: what ``labels`` may be: a label file, or the names themselves
Labels = str | Path | Sequence[str]


@dataclass(frozen=True, kw_only=True)
class ExportRequest:
    """Everything one export is asked for, checked (build it with :meth:`create`)."""

    #: a preset name, or an ``nn.Module`` of one of the five families held in memory
    model: str | nn.Module
    #: the export config with every flag applied (tolerances, batch profile, opset, preprocessing, ...)
    config: ExportConfig
    #: the output folder; None: ``deploykit_out/<preset>``
    out_dir: Path | None = None
    weights: Path | None = None
    weights_format: str | None = None
    #: class names (a label file or the names); None: the config's file, else the checkpoint's
    labels: Labels | None = None
    #: a folder of the user's own validation images
    inputs_dir: Path | None = None
    fp16: bool = False
    fp16_io: bool = False
    #: the INT8 options; None: no INT8
    int8: Int8Options | None = None
    #: build (or script) the TensorRT engine
    engine: bool = False
    timing_cache: Path | None = None
    #: the user's labelled images (an ImageFolder or a CSV of path,label rows): accuracy of every file
    dataset: Path | None = None

    @property
    def family(self) -> str:
        return self.config.family

    @classmethod
    def create(
        cls,
        model: str | nn.Module,
        *,
        out_dir: str | Path | None = None,
        config: str | Path | ExportConfig | None = None,
        opset: int | None = None,
        batch: BatchProfile | None = None,
        exporter: str | None = None,
        simplify: bool | None = None,
        image_size: int | None = None,
        num_classes: int | None = None,
        labels: Labels | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        weights: str | Path | None = None,
        weights_format: str | None = None,
        inputs_dir: str | Path | None = None,
        fp16: bool = False,
        fp16_io: bool = False,
        int8: bool | Int8Options = False,
        calib: str | Path | None = None,
        calib_count: int | None = None,
        calib_method: str | CalibMethod | None = None,
        engine: bool = False,
        timing_cache: str | Path | None = None,
        dataset: str | Path | None = None,
    ) -> ExportRequest:
        """The request for ``model`` with these flags (``None``: the config's value), checked: see the
        module doc. ``config``: an export TOML (path) or an :class:`ExportConfig` (default: the family's
        shipped one)."""
        from deploykit.workflows.export.model import family_of

        family = family_of(model)
        options = _int8_options(int8, calib=calib, calib_count=calib_count, calib_method=calib_method)
        if fp16_io and not (fp16 or options is not None):
            raise ConfigError("--fp16-io needs --fp16")
        if weights is not None and not isinstance(model, str):
            raise ConfigError("weights= goes with a preset name; a model in memory brings its own weights")
        sizes = {"image_size": image_size, "num_classes": num_classes}
        overrides = {"opset": opset, "exporter": exporter, "simplify": simplify, **sizes}
        preprocessing = dict(preprocessing) if preprocessing else None
        resolved = _config(family, config, batch=batch, preprocessing=preprocessing, **overrides)
        return cls(
            model=model,
            config=resolved,
            out_dir=_path(out_dir),
            weights=_path(weights),
            weights_format=weights_format,
            labels=labels,
            inputs_dir=_path(inputs_dir),
            fp16=fp16 or options is not None,  # the Q/DQ graph is built on the FP16 graph
            fp16_io=fp16_io,
            int8=options,
            engine=engine,
            timing_cache=_path(timing_cache),
            dataset=_path(dataset),
        )


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None


def _int8_options(
    int8: bool | Int8Options, *, calib, calib_count: int | None, calib_method
) -> Int8Options | None:
    """The INT8 options, or ``None`` without ``int8``; the calibration options need it."""
    if isinstance(int8, Int8Options):
        if calib is not None or calib_count is not None or calib_method is not None:
            raise ConfigError("give the calibration options in Int8Options or as arguments, not both")
        return int8
    if not int8:
        given = [
            flag
            for flag, value in (
                ("--calib", calib),
                ("--calib-count", calib_count),
                ("--calib-method", calib_method),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(f"{given[0]} needs --int8")
        return None
    return Int8Options(calib=calib, calib_count=calib_count, calib_method=calib_method or CalibMethod.ENTROPY)


def _config(
    family: str, config: str | Path | ExportConfig | None, *, batch: BatchProfile | None, **overrides: Any
) -> ExportConfig:
    """The export config: ``config`` (a file or a config; default the family's) with the overrides given
    (``preprocessing``: its keys replace the config's)."""
    if isinstance(config, ExportConfig):
        if config.family != family:
            raise ConfigError(
                f"config {config.source or '(given)'} is for family {config.family!r}, the model is {family!r}"
            )
        base = config
    else:
        base = resolve_config(family, config)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if batch is not None:
        changes["batch"] = batch
    if "preprocessing" in changes:
        changes["preprocessing"] = {**base.preprocessing, **changes["preprocessing"]}
    return dataclasses.replace(base, **changes) if changes else base

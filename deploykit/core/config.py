"""Export configuration: one TOML file per preset family under ``export_configs/`` (installed as the
package data ``deploykit.export_configs``).

Every value is validated on load; an unknown key or a bad value is a :class:`ConfigError` that names the
file and the key. ``--config FILE`` takes any such file.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

try:  # Python 3.11+; JetPack 6 images run Python 3.10, which has tomli instead
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - exercised on Python 3.10
    import tomli as tomllib

try:
    from importlib.resources.abc import Traversable
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    from importlib.abc import Traversable

from deploykit.core.artifacts import Named
from deploykit.core.errors import ConfigError

#: the package the shipped ``<family>.toml`` files are installed as (the repository's ``export_configs/``)
CONFIG_PACKAGE = "deploykit.export_configs"


class Exporter(Named):
    """The torch exporter: ``torch.onnx.export(dynamo=True)``, or the TorchScript one."""

    DYNAMO = "dynamo"
    TORCHSCRIPT = "torchscript"


#: LayerNormalization is a single op from opset 17; TensorRT 11's parser documents opsets up to 24
MIN_OPSET, MAX_OPSET = 17, 24


@dataclass(frozen=True, kw_only=True)
class Tolerances:
    """Parity thresholds for one precision: ``max_abs`` bounds the max abs error of every output. Built by
    keyword only (several are fractions in [0, 1], easily swapped when passed by position)."""

    max_abs: float
    min_cosine: float
    min_top1: float
    min_top5: float | None = None
    #: reference-logit gap under which a top-1 disagreement is a near-tie (0 = strict top-1)
    top1_margin: float = 0.0
    #: ``--locate``: a module output diverges when its max abs error exceeds this fraction of the
    #: reference's max abs value, or its cosine similarity falls below ``module_min_cosine``
    module_max_rel: float = 1e-3
    module_min_cosine: float = 0.9999
    #: given labelled images (``--dataset``, or an ImageFolder ``--calib`` for INT8): the largest top-1 drop
    #: allowed against PyTorch FP32, as a fraction (0.01 = one point); ``None``: reported, not gated
    max_accuracy_drop: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "max_abs",
            "min_cosine",
            "min_top1",
            "min_top5",
            "top1_margin",
            "module_max_rel",
            "module_min_cosine",
            "max_accuracy_drop",
        ):
            v = getattr(self, name)
            if v is None and name in ("min_top5", "max_accuracy_drop"):
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"tolerances.{name} must be a finite non-negative number, got {v!r}")
            if name not in ("max_abs", "top1_margin", "module_max_rel") and v > 1:
                raise ConfigError(f"tolerances.{name} is a fraction in [0, 1], got {v!r}")


#: INT8's max-abs bound: reported, barely gated (logit scales differ between models; cosine, decisive
#: top-1 and the accuracy drop are what mean something)
INT8_MAX_ABS = 5.0


class CalibMethod(Named):
    """How INT8 activation ranges are calibrated (ONNX Runtime's calibrators)."""

    ENTROPY = "entropy"
    MAX = "max"
    PERCENTILE = "percentile"

    @classmethod
    def parse(cls, value: object) -> CalibMethod:
        """``value`` as a method; anything else is the one :class:`ConfigError` every path gives."""
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ConfigError(f"--calib-method must be one of {names}, got {value!r}") from None


#: the largest batch a profile may ask for (TensorRT allocates for it; Triton's max_batch_size follows it)
MAX_BATCH = 4096


@dataclass(frozen=True, kw_only=True)
class BatchProfile:
    min: int = 1
    opt: int = 1
    max: int = 32

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_BATCH:
                raise ConfigError(f"batch.{name} must be an integer in [1, {MAX_BATCH}], got {v!r}")
        if not self.min <= self.opt <= self.max:
            raise ConfigError(f"batch must satisfy min <= opt <= max, got {self.min},{self.opt},{self.max}")

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """``"MIN,OPT,MAX"`` (the CLI's ``--batch``)."""
        parts = [p.strip() for p in str(text).split(",")]
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ConfigError(f"--batch must be MIN,OPT,MAX (three positive integers), got {text!r}")
        low, opt, high = (int(p) for p in parts)
        return cls(min=low, opt=opt, max=high)


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    family: str
    opset: int = 20  # the highest opset TensorRT 10.3's parser documents (trt_operators.json opset_by_target)
    exporter: Exporter = Exporter.DYNAMO
    simplify: bool = True
    image_size: int | None = None
    #: the classifier's classes (0: a headless feature extractor); default: the checkpoint's, else the preset's
    num_classes: int | None = None
    #: a class-names file (one per line), relative to the config file
    labels: str | None = None
    #: overrides of the recorded preprocessing: crop_pct, mean, std, interpolation
    preprocessing: dict[str, Any] = field(default_factory=dict)
    batch: BatchProfile = field(default_factory=BatchProfile)
    num_images: int = 16
    seed: int = 0
    baseline_factor: float = 2.0
    fp32: Tolerances = field(
        default_factory=lambda: Tolerances(
            max_abs=1e-4, min_cosine=0.99999, min_top1=1.0, min_top5=1.0, max_accuracy_drop=0.001
        )
    )
    fp16: Tolerances = field(
        default_factory=lambda: Tolerances(
            max_abs=0.5,
            min_cosine=0.999,
            min_top1=0.99,
            min_top5=None,
            top1_margin=0.01,
            module_max_rel=0.05,
            module_min_cosine=0.999,
            max_accuracy_drop=0.002,
        )
    )
    #: both INT8 graphs against PyTorch FP32 (int8 logits move by a few hundredths of their range; the
    #: decisive top-1 and, given labelled images, the accuracy are what the gate holds)
    int8: Tolerances = field(
        default_factory=lambda: Tolerances(
            max_abs=INT8_MAX_ABS,
            min_cosine=0.99,
            min_top1=0.98,
            min_top5=None,
            top1_margin=0.1,
            module_max_rel=0.25,
            module_min_cosine=0.98,
            max_accuracy_drop=0.01,
        )
    )
    workspace_mib: int = 4096
    builder_optimization_level: int = 3
    source: str = ""

    def __post_init__(self) -> None:
        if (
            isinstance(self.opset, bool)
            or not isinstance(self.opset, int)
            or not MIN_OPSET <= self.opset <= MAX_OPSET
        ):
            raise ConfigError(f"opset must be an integer in [{MIN_OPSET}, {MAX_OPSET}], got {self.opset!r}")
        if self.exporter not in [e.value for e in Exporter]:
            raise ConfigError(f"exporter must be one of {', '.join(Exporter)}, got {self.exporter!r}")
        object.__setattr__(self, "exporter", Exporter(self.exporter))
        if not isinstance(self.simplify, bool):
            raise ConfigError(f"simplify must be true or false, got {self.simplify!r}")
        if self.image_size is not None and (
            isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 16
        ):
            raise ConfigError(f"image_size must be an integer >= 16, got {self.image_size!r}")
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or self.num_classes < 0
        ):
            raise ConfigError(f"num_classes must be an integer >= 0, got {self.num_classes!r}")
        if self.labels is not None and not isinstance(self.labels, str):
            raise ConfigError(f"labels must be a file path, got {self.labels!r}")
        object.__setattr__(self, "preprocessing", check_preprocessing(self.preprocessing))
        if isinstance(self.num_images, bool) or not isinstance(self.num_images, int) or self.num_images < 16:
            raise ConfigError(f"validation.num_images must be an integer >= 16, got {self.num_images!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"validation.seed must be an integer in [0, 2**32), got {self.seed!r}")
        factor = self.baseline_factor
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor >= 1.0:
            raise ConfigError(f"validation.baseline_factor must be a number >= 1, got {factor!r}")
        if (
            isinstance(self.workspace_mib, bool)
            or not isinstance(self.workspace_mib, int)
            or self.workspace_mib < 16
        ):
            raise ConfigError(f"engine.workspace_mib must be an integer >= 16, got {self.workspace_mib!r}")
        level = self.builder_optimization_level
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 5:
            raise ConfigError(
                f"engine.builder_optimization_level must be an integer in [0, 5], got {level!r}"
            )

    def tolerances(self, precision: str) -> Tolerances:
        """The tolerances of ``precision`` (``fp32``, ``fp16``, ``int8``; ``int8-cpu`` is ``int8``'s)."""
        if precision.startswith("int8"):
            return self.int8
        return self.fp16 if precision == "fp16" else self.fp32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: PIL resampling filters a recorded preprocessing may name
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
#: the longest side of a model input (a preprocessing record's ``input_size``)
MAX_INPUT_SIDE = 8192
#: the smallest ``crop_pct``: the eval transform resizes to ``size / crop_pct`` before the centre crop
#: (timm's presets use 0.875-1.0, a few go down to about 0.5); 0.05 is a 20x zoom-out, far past any of
#: them, and keeps a 224-px input's resize at 4480 px
MIN_CROP_PCT = 0.05
#: the longest side the resize may ask for (``floor(size / crop_pct)``), whatever the input size
MAX_RESIZE_SIDE = 16384


def crop_pct_problem(value: Any, size: int | None = None) -> str | None:
    """What ``crop_pct`` must be when ``value`` is not that (``None``: it is): a finite number in
    [:data:`MIN_CROP_PCT`, 1] and, for an input of ``size`` pixels, one that resizes to at most
    :data:`MAX_RESIZE_SIDE` pixels. The one rule for the flag, a config file, ``deploykit.export`` and
    every recorded preprocessing."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not MIN_CROP_PCT <= value <= 1
    ):
        return f"a number in [{MIN_CROP_PCT}, 1]"
    if size is not None and math.floor(size / value) > MAX_RESIZE_SIDE:
        return (
            f"at least {size / MAX_RESIZE_SIDE:.4g} for a {size}-px input (the image is resized to "
            f"size / crop_pct, at most {MAX_RESIZE_SIDE} px)"
        )
    return None


def check_crop_pct(value: Any, name: str = "crop_pct", size: int | None = None) -> float:
    """``value`` as a float when it is a valid ``crop_pct`` (:func:`crop_pct_problem`), else a one-line
    :class:`ConfigError` naming ``name``."""
    problem = crop_pct_problem(value, size)
    if problem is not None:
        raise ConfigError(f"{name} must be {problem}, got {value!r}")
    return float(value)


def _channels(name: str, value: Any, positive: bool) -> tuple[float, ...]:
    ok = isinstance(value, list | tuple) and len(value) in (1, 3)
    ok = ok and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not ok or (positive and any(v <= 0 for v in value)):
        kind = "positive " if positive else ""
        raise ConfigError(
            f"preprocessing.{name} must be 1 or 3 {kind}numbers (one per channel), got {value!r}"
        )
    return tuple(float(v) for v in value)


def check_preprocessing(values: dict[str, Any]) -> dict[str, Any]:
    """Validated preprocessing overrides (``crop_pct`` in [:data:`MIN_CROP_PCT`, 1], ``mean``/``std`` per
    channel, ``interpolation`` a PIL filter name); an unknown key is a :class:`ConfigError`."""
    out: dict[str, Any] = {}
    for key, value in dict(values).items():
        if key == "crop_pct":
            out[key] = check_crop_pct(value, "preprocessing.crop_pct")
        elif key in ("mean", "std"):
            out[key] = _channels(key, value, positive=key == "std")
        elif key == "interpolation":
            if value not in INTERPOLATIONS:
                raise ConfigError(
                    f"preprocessing.interpolation must be one of {', '.join(INTERPOLATIONS)}, got {value!r}"
                )
            out[key] = value
        else:
            raise ConfigError(f"unknown key preprocessing.{key} (known: crop_pct, mean, std, interpolation)")
    return out


_SECTIONS: dict[str, dict[str, str]] = {
    "": {"family": "family"},
    "export": {
        "opset": "opset",
        "exporter": "exporter",
        "simplify": "simplify",
        "image_size": "image_size",
        "num_classes": "num_classes",
        "labels": "labels",
    },
    "preprocessing": {"crop_pct": "crop_pct", "mean": "mean", "std": "std", "interpolation": "interpolation"},
    "batch": {"min": "min", "opt": "opt", "max": "max"},
    "validation": {"num_images": "num_images", "seed": "seed", "baseline_factor": "baseline_factor"},
    "engine": {"workspace_mib": "workspace_mib", "builder_optimization_level": "builder_optimization_level"},
    "tolerances": {"fp32": "fp32", "fp16": "fp16", "int8": "int8"},
}


def _parse(data: dict[str, Any], source: str) -> ExportConfig:
    kwargs: dict[str, Any] = {"source": source}
    for key, value in data.items():
        if key not in _SECTIONS and key != "family":
            raise ConfigError(
                f"{source}: unknown section or key {key!r} (known: {', '.join(k for k in _SECTIONS if k)})"
            )
        if key == "family":
            kwargs["family"] = value
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: [{key}] must be a table")
        for sub in value:
            if sub not in _SECTIONS[key]:
                raise ConfigError(f"{source}: unknown key {key}.{sub} (known: {', '.join(_SECTIONS[key])})")
        if key == "batch":
            kwargs["batch"] = BatchProfile(**value)
        elif key == "preprocessing":
            kwargs["preprocessing"] = dict(value)
        elif key == "tolerances":
            for precision, tol in value.items():
                if not isinstance(tol, dict):
                    raise ConfigError(f"{source}: [tolerances.{precision}] must be a table")
                unknown = set(tol) - set(Tolerances.__dataclass_fields__)
                if unknown:
                    raise ConfigError(f"{source}: unknown key tolerances.{precision}.{sorted(unknown)[0]}")
                try:
                    kwargs[precision] = Tolerances(**tol)
                except TypeError as exc:
                    raise ConfigError(f"{source}: [tolerances.{precision}] {exc}") from None
        else:
            kwargs.update(value)
    if "family" not in kwargs:
        raise ConfigError(f"{source}: missing top-level key 'family'")
    try:
        return ExportConfig(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: str | Path | Traversable) -> ExportConfig:
    path = path if isinstance(path, Traversable) else Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    config = _parse(data, str(path))
    if config.labels is not None and isinstance(path, Path) and not Path(config.labels).is_absolute():
        config = replace(config, labels=str(path.parent / config.labels))
    return config


def default_config_path(family: str) -> Traversable:
    """The shipped ``export_configs/<family>.toml`` (a file inside the installed package)."""
    return resources.files(CONFIG_PACKAGE) / f"{family}.toml"


def default_config(family: str) -> ExportConfig:
    """The shipped ``export_configs/<family>.toml``, read through ``importlib.resources``."""
    path = default_config_path(family)
    if not path.is_file():
        known = sorted(
            p.name.removesuffix(".toml")
            for p in resources.files(CONFIG_PACKAGE).iterdir()
            if p.name.endswith(".toml")
        )
        raise ConfigError(f"no default export config for family {family!r} (shipped: {', '.join(known)})")
    return load_config(path)


def resolve_config(
    family: str,
    config_path: str | Path | None = None,
    *,
    opset: int | None = None,
    batch: str | None = None,
    exporter: str | None = None,
    simplify: bool | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    labels: str | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> ExportConfig:
    """The config a command runs with: ``config_path`` (else the family's shipped file), which must be for
    ``family``, with the command line's overrides applied (``None``: keep the file's value;
    ``preprocessing``: the keys given replace the file's)."""
    config = load_config(config_path) if config_path else default_config(family)
    if config.family != family:
        raise ConfigError(f"config {config.source} is for family {config.family!r}, the model is {family!r}")
    changes: dict[str, Any] = {
        key: value
        for key, value in (
            ("opset", opset),
            ("exporter", exporter),
            ("simplify", simplify),
            ("image_size", image_size),
            ("num_classes", num_classes),
            ("labels", labels),
        )
        if value is not None
    }
    if batch is not None:
        changes["batch"] = BatchProfile.parse(batch)
    if preprocessing:
        changes["preprocessing"] = {**config.preprocessing, **preprocessing}
    return replace(config, **changes) if changes else config

"""Pretrained weights from the reference implementations: read, detect the layout, convert, load strictly.

Containers: a torch file (``.pth``/``.pt``/``.bin``), ``.safetensors``, or a Hugging Face
``save_pretrained`` directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, sharded or
not). Nested checkpoints (``model``, ``state_dict``, ... and ``module.`` prefixes) are unwrapped.

Source layouts (:data:`FORMATS`), detected from the keys in this order (``weights_format`` forces one):

* ``hf-cvt``: ``cvt.encoder.stages.*`` (Hugging Face ``CvtForImageClassification``)
* ``official-cvt``: ``stage0.patch_embed.*`` (microsoft/CvT; deploykit's CvT uses the same names)
* ``timm-convit``: ``blocks.*.attn.gating_param`` (timm ``convit_*``)
* ``official-ceit``: ``i2t.backbone.*`` or ``blocks.*.leff.*`` (coeusguo/ceit)
* ``official-deepvit``: ``blocks.*.attn.reatten_matrix.*`` (zhoudaquan/dvit_repo; plain or CNN stem)
* ``official-hvt``: ``blocks.*.pos_embed``, or ``blocks.*`` + ``patch_embed.proj`` without a ``cls_token``
  (zhuang-group/HVT)
* ``deploykit``: ``encoder.blocks.*`` (a deploykit state_dict)

Each family's conversion lives in its own module (``convert_*_checkpoint`` and the inverse). A preset name
is built at the classes and resolution the checkpoint says (:mod:`deploykit.models.shapes`, the rule
``export`` uses too). Loading is strict: a checkpoint of another family or another preset size, or a built
model of other classes or another resolution, is refused in one line; otherwise every missing, unexpected
or mis-shaped key is listed before anything is copied. Where the references differ
in math, the model is adjusted to compute what the checkpoint's own code computes (HF CvT: exact GELU in
the MLPs instead of the official QuickGELU) and the adjustment is recorded in :class:`WeightsInfo`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deploykit.core.config import check_preprocessing
from deploykit.core.errors import ConfigError, WeightsError
from deploykit.core.io import sha256_files
from deploykit.core.labels import check_labels
from deploykit.models import ceit, convit, cvt, deepvit, hvt
from deploykit.models.checkpoints import CheckpointRecord, read_checkpoint_record
from deploykit.models.registry import create_model, get_preset, list_models
from deploykit.models.shapes import SIZE_ARGS, infer_model_args, resolve_model_args, size_mismatch
from deploykit.models.weights import WeightsInfo, check_state_dict, read_state_dict

StateDict = dict[str, torch.Tensor]


def _identity(state: StateDict) -> StateDict:
    return dict(state)


def _exact_gelu(model: nn.Module) -> str:
    model.set_mlp_activation(nn.GELU)
    return "mlp activation: exact GELU (Hugging Face CvT) instead of the preset's QuickGELU"


@dataclass(frozen=True, kw_only=True)
class SourceFormat:
    """A checkpoint layout: its family, how to convert to and from deploykit names, and any model change
    needed to reproduce the checkpoint's own forward pass."""

    name: str
    label: str
    family: str | None  # None: deploykit's own layout, any family
    convert: Callable[[StateDict], StateDict]
    inverse: Callable[[StateDict], StateDict]
    adjust: Callable[[nn.Module], str] | None = None


FORMATS: dict[str, SourceFormat] = {
    f.name: f
    for f in (
        SourceFormat(
            name="hf-cvt",
            label="Hugging Face CvT",
            family="cvt",
            convert=cvt.convert_hf_checkpoint,
            inverse=cvt.to_hf_checkpoint,
            adjust=_exact_gelu,
        ),
        SourceFormat(
            name="official-cvt",
            label="official CvT (microsoft/CvT)",
            family="cvt",
            convert=_identity,
            inverse=_identity,
        ),
        SourceFormat(
            name="timm-convit",
            label="timm ConViT",
            family="convit",
            convert=convit.convert_timm_checkpoint,
            inverse=convit.to_timm_checkpoint,
        ),
        SourceFormat(
            name="official-ceit",
            label="official CeiT (coeusguo/ceit)",
            family="ceit",
            convert=ceit.convert_official_checkpoint,
            inverse=ceit.to_official_checkpoint,
        ),
        SourceFormat(
            name="official-deepvit",
            label="official DeepViT (zhoudaquan/dvit_repo)",
            family="deepvit",
            convert=deepvit.convert_official_checkpoint,
            inverse=deepvit.to_official_checkpoint,
        ),
        SourceFormat(
            name="official-hvt",
            label="official HVT (zhuang-group/HVT)",
            family="hvt",
            convert=hvt.convert_official_checkpoint,
            inverse=hvt.to_official_checkpoint,
        ),
        SourceFormat(name="deploykit", label="deploykit", family=None, convert=_identity, inverse=_identity),
    )
}

_FAMILY_CLASSES = {
    convit.ConViT: "convit",
    ceit.CeiT: "ceit",
    cvt.CvT: "cvt",
    deepvit.DeepViT: "deepvit",
    hvt.HPool_ViT: "hvt",
}


# ---------------------------------------------------------------------------------------------- reading
def _hf_weight_files(directory: Path) -> list[Path]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return [directory / name]
        index = directory / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise WeightsError(f"{index} is not a readable shard index ({type(exc).__name__})") from None
            return [_shard(directory, index, s) for s in shards]
    raise WeightsError(
        f"{directory} is a directory without model.safetensors or pytorch_model.bin "
        "(expected a Hugging Face save_pretrained directory)"
    )


def _shard(directory: Path, index: Path, name: object) -> Path:
    """A shard named by the index: a plain file name inside ``directory`` (never ``../`` or an absolute
    path: the index must not make deploykit read files elsewhere, or say whether they exist)."""
    root = directory.resolve()
    path = (root / str(name)).resolve()
    if not isinstance(name, str) or not name or path.parent != root:
        raise WeightsError(f"{index} names a shard outside its folder ({str(name)[:80]!r})")
    return path


def read_checkpoint(path: str | Path) -> tuple[StateDict, str, str]:
    """``(state_dict, container, sha256)`` of a weights file or a Hugging Face ``save_pretrained`` directory.

    For a directory the digest covers its weight file(s), concatenated in shard order.
    """
    path = Path(path)
    if path.is_dir():
        files = _hf_weight_files(path)
        state: StateDict = {}
        for file in files:
            state.update(read_state_dict(file))
        return state, "hf-directory", sha256_files(files)
    state = read_state_dict(path)
    container = "safetensors" if path.suffix == ".safetensors" else "torch"
    return state, container, sha256_files([path])


# -------------------------------------------------------------------------------------------- detection
def _any(keys: list[str], pattern: str) -> bool:
    rx = re.compile(pattern)
    return any(rx.match(k) for k in keys)


def detect_format(state: StateDict) -> str:
    """The source layout of ``state`` (a :data:`FORMATS` name), from its keys; WeightsError if none fits."""
    keys = list(state)
    if _any(keys, r"(cvt\.)?encoder\.stages\.\d+\."):
        return "hf-cvt"
    if _any(keys, r"stage\d+\.patch_embed\."):
        return "official-cvt"
    if _any(keys, r"blocks\.\d+\.attn\.gating_param$"):
        return "timm-convit"
    if _any(keys, r"i2t\.backbone\.") or _any(keys, r"blocks\.\d+\.leff\."):
        return "official-ceit"
    if _any(keys, r"blocks\.\d+\.attn\.reatten_matrix\."):
        return "official-deepvit"
    if _any(keys, r"blocks\.\d+\.pos_embed$") or (
        _any(keys, r"blocks\.\d+\.attn\.qkv\.")
        and "patch_embed.proj.weight" in state
        and "cls_token" not in state
    ):
        return "official-hvt"
    if _any(keys, r"encoder\.blocks\.\d+\."):
        return "deploykit"
    shown = ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
    raise WeightsError(
        f"cannot tell which model layout this checkpoint uses (keys: {shown}); "
        f"pass weights_format= one of {', '.join(FORMATS)}"
    )


def _deploykit_family(state: StateDict) -> str | None:
    """The family of a deploykit-layout state_dict, when its keys say so."""
    keys = list(state)
    if _any(keys, r"encoder\.blocks\.\d+\.attn\.gating_param$"):
        return "convit"
    if "i2t.conv.weight" in state or "lca.attn.qkv.weight" in state:
        return "ceit"
    if _any(keys, r"encoder\.blocks\.\d+\.attn\.attn_transform\.reatten_matrix\."):
        return "deepvit"
    if _any(keys, r"pools\.\d+\.pos_embed$"):
        return "hvt"
    return None


def model_family(model: nn.Module) -> str | None:
    name = getattr(model, "preset_name", None)
    if name:
        return get_preset(name).family
    return next((fam for cls, fam in _FAMILY_CLASSES.items() if isinstance(model, cls)), None)


# ------------------------------------------------------------------------------------------- mismatches
def _shape_summary(state: StateDict) -> str:
    """``d=192, 12 blocks`` (CvT: ``d=384, depths 1/2/10``) from deploykit-layout keys."""
    parts = []
    if "norm.weight" in state:
        parts.append(f"d={state['norm.weight'].shape[0]}")
    stages: dict[int, set[int]] = {}
    for key in state:
        m = re.match(r"stage(\d+)\.blocks\.(\d+)\.", key)
        if m:
            stages.setdefault(int(m[1]), set()).add(int(m[2]))
    if stages:
        parts.append("depths " + "/".join(str(len(stages[i])) for i in sorted(stages)))
    else:
        blocks = {int(m[1]) for k in state if (m := re.match(r"encoder\.blocks\.(\d+)\.", k))}
        if blocks:
            parts.append(f"{len(blocks)} blocks")
    return ", ".join(parts)


def _matching_presets(state: StateDict, family: str) -> list[str]:
    """Presets of ``family`` that have exactly these keys and shapes at the classes and resolution the
    checkpoint says (built on the meta device): ``convit_small``, ``ceit_tiny at image_size=384``."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    found = []
    for name in list_models():
        if get_preset(name).family != family:
            continue
        try:
            inferred = infer_model_args(name, state)
            with torch.device("meta"):
                default = create_model(name)
                sizes = {k: getattr(inferred, k) for k in SIZE_ARGS if getattr(inferred, k) is not None}
                sizes = {k: v for k, v in sizes.items() if v != getattr(default, k)}
                own = create_model(name, **sizes).state_dict()
        except Exception:  # a preset that cannot be built at this size simply does not match
            continue
        if {k: tuple(v.shape) for k, v in own.items()} == shapes:
            found.append(name + (" at " + ", ".join(f"{k}={v}" for k, v in sizes.items()) if sizes else ""))
    return found


def _model_name(model: nn.Module) -> str:
    return getattr(model, "preset_name", None) or type(model).__name__


def _check_fits(model: nn.Module, state: StateDict, fmt: SourceFormat, source: str) -> None:
    """One line when the checkpoint is another preset size; else the key listing of check_state_dict."""
    own = model.state_dict()
    family = model_family(model)
    theirs, ours = _shape_summary(state), _shape_summary(own)
    if family is not None and theirs and theirs != ours:
        fits = _matching_presets(state, family)
        hint = ", ".join(fits) if fits else "no registered preset"
        raise WeightsError(
            f"{source}: checkpoint is {fmt.label} with {theirs} ({hint}), model is {_model_name(model)} ({ours})"
        )
    try:
        check_state_dict(model, state, f"{source} ({fmt.label} layout)")
    except WeightsError as exc:
        if family is not None and all(k in own for k in state) and all(k in state for k in own):
            native = _matching_presets(state, family)
            if native:
                raise WeightsError(f"{exc}; the checkpoint fits {native[0]}") from None
        raise


# ----------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """A checkpoint read and converted to deploykit's layout, not yet loaded into a model; ``labels`` and
    ``preprocessing`` come from a Hugging Face directory's ``config.json`` (``id2label``) and
    ``preprocessor_config.json`` when present."""

    path: Path
    state: StateDict
    format: SourceFormat
    container: str
    sha256: str
    family: str | None
    labels: tuple[str, ...] | None = None
    preprocessing: dict | None = None
    #: a deploykit checkpoint's header (preset and architecture), None for any other file
    record: CheckpointRecord | None = None

    @property
    def source(self) -> str:
        return f"weights {self.path.name}"


def _format(state: StateDict, weights_format: str | None) -> SourceFormat:
    if weights_format is None:
        return FORMATS[detect_format(state)]
    key = weights_format.strip().lower().replace("_", "-")
    if key not in FORMATS:
        raise WeightsError(f"unknown weights format {weights_format!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[key]


def read_pretrained(
    path: str | Path, weights_format: str | None = None, *, family: str | None = None, model: str = ""
) -> Checkpoint:
    """Read ``path`` (a weights file or a Hugging Face directory), detect (or take) its layout and convert
    it to deploykit's names; with ``family``, a checkpoint of another family is refused in one line."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    state, container, sha = read_checkpoint(path)
    fmt = _format(state, weights_format)
    ckpt_family = fmt.family or _deploykit_family(state)
    if family is not None and ckpt_family is not None and ckpt_family != family:
        raise WeightsError(
            f"weights {path.name}: checkpoint is {fmt.label} ({ckpt_family} family), "
            f"model is {model or 'a ' + family + ' model'} ({family} family)"
        )
    labels, preprocessing = hf_extras(path) if path.is_dir() else (None, None)
    record = read_checkpoint_record(path)
    if record is not None:
        labels = record.labels
        try:
            preprocessing = check_preprocessing(record.preprocessing or {})
        except ConfigError as exc:
            raise WeightsError(f"{path}: {exc}") from None
    converted = fmt.convert(state)
    return Checkpoint(
        path=path,
        state=converted,
        format=fmt,
        container=container,
        sha256=sha,
        family=ckpt_family,
        labels=labels,
        preprocessing=preprocessing,
        record=record,
    )


def load_checkpoint(model: nn.Module, checkpoint: Checkpoint) -> WeightsInfo:
    """Load a read checkpoint into ``model`` strictly (every mismatch named before anything is copied; a
    model of other classes or another resolution than the checkpoint's is one line naming what to build)."""
    family = model_family(model)
    if family is not None and checkpoint.family is not None and checkpoint.family != family:
        raise WeightsError(
            f"{checkpoint.source}: checkpoint is {checkpoint.format.label} ({checkpoint.family} family), "
            f"model is {_model_name(model)} ({family} family)"
        )
    mismatch = size_mismatch(model, checkpoint.state, checkpoint.path.name)
    if mismatch is not None:
        raise WeightsError(mismatch)
    _check_fits(model, checkpoint.state, checkpoint.format, checkpoint.source)
    model.load_state_dict(checkpoint.state, strict=True)
    adjust = checkpoint.format.adjust
    return WeightsInfo(
        path=str(checkpoint.path),
        sha256=checkpoint.sha256,
        format=checkpoint.format.name,
        tensors=len(checkpoint.state),
        container=checkpoint.container,
        adjustments=(adjust(model),) if adjust is not None else (),
    )


def load_pretrained(
    model_or_preset: nn.Module | str,
    path: str | Path,
    weights_format: str | None = None,
    *,
    num_classes: int | None = None,
    image_size: int | None = None,
    architecture: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, WeightsInfo]:
    """Load a reference checkpoint (or a deploykit one) into a model, strictly.

    ``model_or_preset``: a preset name (or family alias), built at the classes and resolution the
    checkpoint says, as ``deploykit export PRESET --weights PATH`` builds it (a deploykit checkpoint's
    recorded preset and architecture win; see :func:`~deploykit.models.shapes.resolve_model_args`) and
    returned in eval mode; or a built model, loaded in place with its train/eval mode kept (built for
    other classes or another resolution than the checkpoint's: a one-line ``WeightsError`` naming what to
    build). ``num_classes`` / ``image_size`` / ``architecture`` go with a preset name: a value that
    contradicts the checkpoint is a one-line ``ConfigError`` naming both. ``weights_format`` forces a
    :data:`FORMATS` layout instead of detecting it. Returns ``(model, info)``; raises
    :class:`~deploykit.core.errors.WeightsError` naming the problem (wrong family, wrong size, the
    offending keys).
    """
    if not isinstance(model_or_preset, str):
        given = {"num_classes": num_classes, "image_size": image_size, "architecture": architecture or None}
        named = [f"{k}={v!r}" for k, v in given.items() if v is not None]
        if named:
            raise ConfigError(
                f"{', '.join(named)} build a model from a preset name, and this {_model_name(model_or_preset)} "
                "is already built: pass the preset name (or build the model with them)"
            )
        return model_or_preset, load_checkpoint(model_or_preset, read_pretrained(path, weights_format))
    spec = get_preset(model_or_preset)
    checkpoint = read_pretrained(path, weights_format, family=spec.family, model=spec.name)
    args = resolve_model_args(
        spec.name, checkpoint, num_classes=num_classes, image_size=image_size, architecture=architecture
    )
    model = create_model(args.preset, **args.kwargs).eval()
    return model, load_checkpoint(model, checkpoint)


# ------------------------------------------------------------------------------ Hugging Face directories
#: PIL resample codes of Hugging Face image processors
_HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not readable JSON: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path} is not a JSON object")
    return data


def hf_extras(directory: Path) -> tuple[tuple[str, ...] | None, dict | None]:
    """Class names from ``config.json``'s ``id2label`` and the preprocessing of
    ``preprocessor_config.json`` (``size``, ``crop_pct``, ``image_mean``, ``image_std``, ``resample``) as
    deploykit's preprocessing keys, each ``None`` when absent."""
    labels = None
    config = _json(directory / "config.json") or {}
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        where = f"{directory / 'config.json'}: id2label"
        by_index = {_class_index(key, where): name for key, name in id2label.items()}
        if sorted(by_index) != list(range(len(by_index))):
            raise WeightsError(f"{where} does not name classes 0..{len(by_index) - 1}")
        labels = check_labels((by_index[i] for i in range(len(by_index))), where)
    processor = _json(directory / "preprocessor_config.json")
    return labels, (_hf_preprocessing(processor) if processor is not None else None)


def _class_index(key: object, where: str) -> int:
    """An ``id2label`` key as a class index: a canonical non-negative decimal (``"0"``, ``"12"``; never
    ``"00"``, ``" 1"`` or ``"+1"``, which would silently stand for another key's class)."""
    try:
        index = int(key) if isinstance(key, str) else -1
    except ValueError:
        index = -1
    if index < 0 or str(index) != key:
        raise WeightsError(f"{where} key {key!r} is not a class index (0, 1, 2, ... written plainly)")
    return index


def _hf_preprocessing(processor: dict) -> dict:
    out: dict = {}
    size = processor.get("size")
    if isinstance(size, dict):
        size = size.get("shortest_edge", size.get("height"))
    if isinstance(size, int) and not isinstance(size, bool):
        out["image_size"] = size
    if processor.get("crop_pct") is not None:
        out["crop_pct"] = float(processor["crop_pct"])
    if "ConvNext" in str(processor.get("image_processor_type", "")):
        # ConvNextImageProcessor ignores crop_pct from 384 px on and resizes without cropping (for a square
        # image, the same as deploykit's resize with crop_pct 1.0; non-square images are stretched there)
        out["no_crop_from"] = 384
    for theirs, ours in (("image_mean", "mean"), ("image_std", "std")):
        value = processor.get(theirs)
        if isinstance(value, list | tuple) and value:
            out[ours] = tuple(float(v) for v in value)
    if processor.get("resample") in _HF_RESAMPLE:
        out["interpolation"] = _HF_RESAMPLE[processor["resample"]]
    return out

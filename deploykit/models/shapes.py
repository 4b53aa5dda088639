"""What a checkpoint says about the model it was trained as: its number of classes (the classifier head's
rows; none at all for a headless feature extractor) and, where the family has a position embedding
(ConViT, CeiT, DeepViT, HVT), its input resolution (the embedding's token grid). CvT has no position
embedding and takes any size.

The keys are found on the preset itself (built on the meta device, no memory): the head's weight is the
``head.*`` matrix with one row per class, the grid is the first 3-D ``*pos_embed`` with its token count
``grid**2`` plus any class tokens. The checkpoint must already be in deploykit's layout
(:mod:`deploykit.models.pretrained` converts the reference layouts).

:func:`resolve_model_args` is the one rule that turns a checkpoint (and what the caller asked for) into the
arguments of ``create_model``: ``deploykit export PRESET --weights FILE`` and
``load_pretrained(PRESET, FILE)`` build the same model. :func:`size_mismatch` explains in one line a
checkpoint that does not fit an already built model only because of its classes or resolution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from deploykit.core.errors import ConfigError, UnknownModelError, WeightsError, display_path, first_line
from deploykit.models.registry import create_model, get_preset

if TYPE_CHECKING:  # pretrained imports this module
    from deploykit.models.pretrained import Checkpoint

StateDict = dict[str, torch.Tensor]

#: the constructor arguments a checkpoint itself says (the rest of the architecture is the preset's)
SIZE_ARGS = ("num_classes", "image_size")


@dataclass(frozen=True, kw_only=True)
class InferredArgs:
    """``num_classes`` (0: headless) and ``image_size`` (``None``: the family takes any size) read from a
    checkpoint, with the key and shape each was read from (``sources``)."""

    num_classes: int
    image_size: int | None
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"num_classes": self.num_classes, "image_size": self.image_size, "from": dict(self.sources)}


@dataclass(frozen=True, kw_only=True)
class _Layout:
    head_key: str  # the classifier's weight: (classes, features)
    pos_key: str | None  # the first position embedding (1, tokens, dim), None when the family has none
    extra_tokens: int  # tokens besides the grid in pos_key (class tokens)
    stride: int  # input pixels per grid cell
    head_prefix: str  # every key of the classifier head


def _layout_of(model: nn.Module, name: str) -> _Layout:
    state = model.state_dict()
    rows = [
        k
        for k, v in state.items()
        if k.startswith("head.") and v.ndim == 2 and v.shape[0] == model.num_classes
    ]
    if not rows:  # every registered preset has a classifier head; a headless model built by hand has not
        raise WeightsError(f"{name}: no classifier weight found among its head.* keys")
    head_key = rows[-1]
    pos = next((k for k, v in state.items() if k.endswith("pos_embed") and v.ndim == 3), None)
    extra = stride = 0
    if pos is not None:
        tokens = state[pos].shape[1]
        grid = math.isqrt(tokens)
        extra, stride = tokens - grid * grid, model.image_size // grid
    return _Layout(
        head_key=head_key,
        pos_key=pos,
        extra_tokens=extra,
        stride=stride,
        head_prefix=head_key.rsplit(".", 1)[0] + ".",
    )


def _layout(preset: str, architecture: Mapping[str, Any] | None = None) -> _Layout:
    with torch.device("meta"):
        model = create_model(preset, **(architecture or {}))
    return _layout_of(model, preset)


def infer_model_args(preset: str, state: StateDict, architecture: dict | None = None) -> InferredArgs:
    """The number of classes and input resolution of the model ``state`` (deploykit layout) belongs to,
    for the architecture of ``preset`` (with ``architecture``'s constructor overrides)."""
    return _infer(_layout(preset, architecture), state, get_preset(preset).name)


def _infer(layout: _Layout, state: StateDict, name: str) -> InferredArgs:
    sources: dict[str, str] = {}
    head = state.get(layout.head_key)
    if head is not None:
        num_classes = int(head.shape[0])
        sources["num_classes"] = f"{layout.head_key} {tuple(head.shape)}"
    elif any(k.startswith(layout.head_prefix) for k in state):
        raise WeightsError(f"the checkpoint has {layout.head_prefix}* keys but no {layout.head_key}")
    else:
        num_classes = 0
        sources["num_classes"] = f"no {layout.head_key}: a headless checkpoint (features)"
    image_size = None
    if layout.pos_key is not None and layout.pos_key in state:
        tokens = int(state[layout.pos_key].shape[1])
        grid = math.isqrt(max(tokens - layout.extra_tokens, 0))
        if grid < 1 or grid * grid != tokens - layout.extra_tokens:
            raise WeightsError(
                f"{layout.pos_key} has {tokens} tokens: not a square grid of patches"
                f"{' plus a class token' if layout.extra_tokens else ''} ({name})"
            )
        image_size = grid * layout.stride
        sources["image_size"] = (
            f"{layout.pos_key} {tuple(state[layout.pos_key].shape)}: a {grid}x{grid} grid of "
            f"{layout.stride}-pixel patches"
        )
    return InferredArgs(num_classes=num_classes, image_size=image_size, sources=sources)


# --------------------------------------------------------------------------- a checkpoint -> create_model
@dataclass(frozen=True, kw_only=True)
class ModelArgs:
    """What to build for a checkpoint: ``create_model(preset, **kwargs)``.

    ``preset`` is a deploykit checkpoint's recorded preset (with its recorded overrides it is the whole
    architecture) or else the one asked for; ``architecture`` the constructor overrides beyond it (the
    recorded ones, the caller's winning); ``sizes`` the ``num_classes`` / ``image_size`` that are known (the
    caller's, else the checkpoint's; absent: the preset's); ``inferred`` what the checkpoint's own tensors
    say (``None`` without a checkpoint)."""

    preset: str
    architecture: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    inferred: InferredArgs | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``create_model(self.preset, ...)``."""
        return {**self.architecture, **self.sizes}


def resolve_model_args(
    preset: str,
    checkpoint: Checkpoint | None = None,
    *,
    num_classes: int | None = None,
    image_size: int | None = None,
    architecture: Mapping[str, Any] | None = None,
    spelling: str = "{name}={value}",
) -> ModelArgs:
    """The preset and constructor arguments that fit ``checkpoint`` (read by
    :func:`~deploykit.models.pretrained.read_pretrained`), the rule ``export`` and ``load_pretrained``
    share.

    Classes come from the checkpoint's head and resolution from its position embedding; where the
    checkpoint cannot say (CvT), a Hugging Face directory's processor ``size``, then a deploykit
    checkpoint's recorded ``image_size``. A deploykit checkpoint's recorded preset and overrides are the
    architecture (``architecture``'s entries win over them; ``num_classes`` / ``image_size`` in it are
    ignored: pass them as arguments). A ``num_classes`` or ``image_size`` that contradicts the checkpoint
    is a one-line :class:`ConfigError` naming both values, the given one written by ``spelling``
    (``{name}``: ``image_size``, ``{flag}``: ``image-size``, ``{value}``; the CLI passes
    ``"--{flag} {value}"``)."""
    name = get_preset(preset).name
    arch = dict(architecture or {})
    record = checkpoint.record if checkpoint is not None else None
    if record is not None:
        name = _recorded_preset(checkpoint)
        arch = {k: v for k, v in record.model_args.items() if k not in SIZE_ARGS} | arch
    for key in SIZE_ARGS:
        arch.pop(key, None)
    try:
        inferred = infer_model_args(name, checkpoint.state, arch) if checkpoint is not None else None
    except TypeError as exc:  # an architecture argument the family's constructor does not take
        raise ConfigError(f"{name}: {first_line(exc)}") from None
    sizes = {
        "num_classes": _agree("num_classes", num_classes, inferred, spelling),
        "image_size": _agree("image_size", image_size, inferred, spelling),
    }
    if sizes["image_size"] is None and checkpoint is not None and checkpoint.preprocessing:
        sizes["image_size"] = checkpoint.preprocessing.get("image_size")
    if sizes["image_size"] is None and record is not None:
        sizes["image_size"] = record.model_args.get("image_size")  # the size it was trained at
    known = {k: v for k, v in sizes.items() if v is not None}
    return ModelArgs(preset=name, architecture=arch, sizes=known, inferred=inferred)


def _agree(what: str, given: int | None, inferred: InferredArgs | None, spelling: str) -> int | None:
    """The value of ``what``: the given one, the checkpoint's, or ``None`` (the preset's); a given value
    that contradicts the checkpoint is an error naming both."""
    found = getattr(inferred, what, None) if inferred is not None else None
    if given is not None and found is not None and given != found:
        asked = spelling.format(name=what, flag=what.replace("_", "-"), value=given)
        raise ConfigError(
            f"{asked} contradicts the checkpoint: {inferred.sources[what]} means {what} {found}"
        )
    return given if given is not None else found


def _recorded_preset(checkpoint: Checkpoint) -> str:
    """The preset a deploykit checkpoint was saved from (it wins over the preset asked for, which then
    only picks the family)."""
    try:
        return get_preset(checkpoint.record.preset).name
    except UnknownModelError:
        raise ConfigError(
            f"{checkpoint.source} was saved from preset {checkpoint.record.preset!r}, which this deploykit "
            "does not know"
        ) from None


# ------------------------------------------------------------------ a built model of another size
def size_mismatch(model: nn.Module, state: StateDict, filename: str) -> str | None:
    """One line when ``state`` (deploykit layout) does not fit the built ``model`` only because the model
    has other classes or another resolution than the checkpoint (every differing key is the head's or a
    position embedding, and the model rebuilt at the checkpoint's values fits), naming what to build;
    ``None`` when the checkpoint fits or differs in its layout (the caller lists the keys)."""
    own = model.state_dict()
    common = set(own) & set(state)
    differing = (set(own) ^ set(state)) | {k for k in common if own[k].shape != state[k].shape}
    if not differing:
        return None
    preset = getattr(model, "preset_name", None)
    overrides = dict(getattr(model, "preset_overrides", {}) or {})
    arch = {k: v for k, v in overrides.items() if k not in SIZE_ARGS}
    try:
        layout = _layout(preset, arch) if preset else _layout_of(model, type(model).__name__)
        inferred = _infer(layout, state, preset or type(model).__name__)
    except (ConfigError, WeightsError, TypeError):
        return None
    wanted = {
        k: getattr(inferred, k)
        for k in SIZE_ARGS
        if getattr(inferred, k) is not None and getattr(inferred, k) != getattr(model, k)
    }
    if not wanted or not all(k.startswith(layout.head_prefix) or k.endswith("pos_embed") for k in differing):
        return None
    # the sizes to build with: the ones the model was built with, the checkpoint's where they differ
    sizes = {k: v for k, v in overrides.items() if k in SIZE_ARGS} | wanted
    if preset and not _fits(preset, {**arch, **sizes}, state):
        return None
    name = display_path(filename)
    theirs = " and ".join(f"{k}={v} ({inferred.sources[k]})" for k, v in wanted.items())
    ours = " and ".join(f"{k}={getattr(model, k)}" for k in wanted)
    return f"checkpoint {name} is for {theirs}, the model was built for {ours}: {_fix(preset, arch, sizes, name)}"


def _fits(preset: str, kwargs: dict[str, Any], state: StateDict) -> bool:
    """Whether ``create_model(preset, **kwargs)`` has exactly the keys and shapes of ``state``."""
    try:
        with torch.device("meta"):
            candidate = create_model(preset, **kwargs).state_dict()
    except (ConfigError, TypeError):
        return False
    return {k: tuple(v.shape) for k, v in candidate.items()} == {k: tuple(v.shape) for k, v in state.items()}


def _fix(preset: str | None, arch: dict[str, Any], sizes: dict[str, int], name: str) -> str:
    """What to call instead: ``create_model`` with the sizes, or ``load_pretrained`` with the preset name."""
    given = ", ".join(f"{k}={v!r}" for k, v in sizes.items())
    if preset is None:
        return f"build it with {given} (e.g. deploykit.models.create_model(preset, {given}))"
    args = "".join(f", {k}={v!r}" for k, v in {**arch, **sizes}.items())
    again = f", architecture={arch!r}" if arch else ""
    return (
        f'build it with create_model("{preset}"{args}) or pass the preset name: '
        f'load_pretrained("{preset}", "{name}"{again})'
    )

"""Weights files: read a checkpoint (torch pickle or safetensors), unwrap common nesting, check it strictly.

Loading is strict and checked before anything is copied: missing, unexpected and mis-shaped keys are listed
by name in one :class:`WeightsError`.
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from deploykit.core.errors import WeightsError, first_line

_NESTING_KEYS = ("state_dict", "model", "module", "model_state", "state_dict_ema")


@dataclass(frozen=True, kw_only=True)
class WeightsInfo:
    """What was loaded: ``format`` is the detected source layout (e.g. ``'timm-convit'``, ``'hf-cvt'``),
    ``container`` the file kind (``'torch'``, ``'safetensors'``, ``'hf-directory'``) and ``adjustments``
    any change made to the model so that it computes what the checkpoint's own code computes."""

    path: str
    sha256: str
    format: str
    tensors: int
    container: str = ""
    adjustments: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "format": self.format,
            "container": self.container,
            "tensors": self.tensors,
            "adjustments": list(self.adjustments),
        }


Rule = tuple[str, str | Callable[[re.Match], str]]


def rename_keys(state: dict[str, torch.Tensor], rules: Iterable[Rule]) -> dict[str, torch.Tensor]:
    """Rename every key by the first rule whose regex matches at its start (``re.sub``, count 1).

    Keys no rule matches keep their name, so the strict check later reports them as unexpected.
    Tensors are not copied.
    """
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for pattern, repl in compiled:
            if pattern.match(key):
                new = pattern.sub(repl, key, count=1)
                break
        if new in out:
            raise WeightsError(f"two checkpoint keys map to {new!r} (one of them is {key!r})")
        out[new] = value
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            # training scripts (DeiT and its descendants) save their argparse options next to the weights
            with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notes on pickle protocols: not the user's problem
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        refused = _unpickler_refusal(str(exc))
        if refused:
            raise WeightsError(
                f"{path} is not a readable checkpoint: torch's weights-only loader refused it ({refused}); "
                "deploykit loads tensors only, never code from a checkpoint"
            ) from None
        raise WeightsError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: {first_line(exc)[:200]})"
        ) from None
    for _ in range(3):  # {'model': {'state_dict': ...}} and similar
        if isinstance(obj, dict):
            nested = [k for k in _NESTING_KEYS if isinstance(obj.get(k), dict)]
            if nested and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = obj[nested[0]]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _unpickler_refusal(text: str) -> str | None:
    """The reason in torch's weights-only refusal (its first lines are advice; the reason comes later)."""
    if "Weights only load failed" not in text:
        return None
    after = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
    reason = next((line.strip() for line in after.splitlines() if line.strip()), "")
    return reason[:200] or "torch refused to unpickle it"


def _listing(kind: str, names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
    return f"{len(names)} {kind}: {shown}"


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    problems = [
        _listing(kind, names)
        for kind, names in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("mis-shaped keys", misshaped),
        )
        if names
    ]
    if problems:
        name = getattr(model, "preset_name", None) or type(model).__name__
        raise WeightsError(f"{source} do not fit {name}: " + "; ".join(problems))

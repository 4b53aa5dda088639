"""Export rewrites: explicit, local module swaps, each named after what it changes in the exported graph.

A :class:`Rewrite` maps one module type to its export form and says which :class:`RewriteKind` it is:
``required`` (a backend cannot take the original form: ``fixes`` names the backend and why) or
``optimization`` (the original exports and parses; ``fixes`` says what the rewrite saves).
:func:`apply_rewrites` works on a deep copy of an eval-mode model, replaces every matching module top-down
(a replacement is not visited again) and reports how many modules each rewrite touched. Every rewrite
carries a small ``example`` (original module plus input) so that its numeric test (original vs rewritten,
max abs diff <= 1e-5) and the test of its kind (the original and rewritten exports) are generic.
No monkeypatching: the model's classes are untouched; only this copy's submodules are replaced.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from deploykit.core.errors import ConfigError


class RewriteKind(str, Enum):
    """Why a rewrite exists."""

    #: a backend cannot take the original form (it fails to export, or the backend's parser rejects it)
    REQUIRED = "required"
    #: the original exports and parses; the rewrite makes the graph smaller or faster
    OPTIMIZATION = "optimization"


@dataclass(frozen=True, kw_only=True)
class Rewrite:
    #: stable identifier, recorded in the ONNX metadata and the manifest: never rename one
    name: str
    kind: RewriteKind
    #: one paragraph: for ``REQUIRED`` the backend and the limitation, for ``OPTIMIZATION`` what it saves;
    #: then why the new form is equivalent
    fixes: str
    source: type[nn.Module]
    #: eval-mode module -> its export form, or ``None`` when the module is already export-friendly
    convert: Callable[[nn.Module], nn.Module | None]
    #: builds ``(original_module, example_input)`` for the rewrite's numeric test
    example: Callable[[], tuple[nn.Module, torch.Tensor]]

    def __post_init__(self) -> None:
        if not isinstance(self.kind, RewriteKind):
            raise ConfigError(f"rewrite {self.name!r}: kind must be a RewriteKind, got {self.kind!r}")


@dataclass(frozen=True, kw_only=True)
class RewriteRecord:
    """What :func:`apply_rewrites` did with one rewrite: how many modules it replaced."""

    name: str
    kind: RewriteKind
    fixes: str
    modules: int

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind.value, "modules": self.modules, "fixes": self.fixes}


REWRITES: dict[type[nn.Module], Rewrite] = {}


def register_rewrite(rewrite: Rewrite) -> Rewrite:
    if rewrite.source in REWRITES:
        raise ConfigError(f"a rewrite for {rewrite.source.__name__} is already registered")
    REWRITES[rewrite.source] = rewrite
    return rewrite


def apply_rewrites(model: nn.Module) -> tuple[nn.Module, list[RewriteRecord]]:
    """Return an eval-mode copy of ``model`` with every registered rewrite applied, and what was done."""
    model = copy.deepcopy(model).eval()
    counts: dict[str, int] = {}

    def visit(parent: nn.Module) -> None:
        for child_name, child in list(parent.named_children()):
            rewrite = REWRITES.get(type(child))
            replacement = rewrite.convert(child) if rewrite is not None else None
            if replacement is None:
                visit(child)
                continue
            setattr(parent, child_name, replacement.eval())
            counts[rewrite.name] = counts.get(rewrite.name, 0) + 1

    with torch.no_grad():
        visit(model)
    by_name = {r.name: r for r in REWRITES.values()}
    records = [
        RewriteRecord(name=n, kind=by_name[n].kind, fixes=by_name[n].fixes, modules=c)
        for n, c in sorted(counts.items())
    ]
    return model, records


def randomize_batchnorm_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine values (for numeric tests)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return module.eval()


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``BN(conv(x))`` as one Conv2d with bias (eval-mode statistics), via torch's own fusion helper."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv.eval(), bn.eval())

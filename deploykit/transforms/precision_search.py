"""The higher-precision search that the FP16 and INT8 transforms share: when a graph misses its gate, keep
whole groups of nodes in the higher precision, worst first, until the gate passes.

A group is a set of node names the caller chooses (FP16: the segments between LayerNormalizations; INT8:
the transformer blocks). Each group's *damage* is measured on the graph with only that group in the lower
precision, everything else kept (the caller's metric: FP16 the max abs logit error, INT8 1 - the worst
per-sample cosine). Then groups are kept one at a time, worst first, and after each the graph is rebuilt
and gated again; the search stops at the first graph that passes, or when every group is kept.

A gate is a function ``graph -> GateResult``: the :class:`~deploykit.validation.metrics.Check` records of
that graph's logits and the logits themselves; it passes when every record passed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from deploykit.validation.metrics import Check


@dataclass(frozen=True, kw_only=True)
class GateResult:
    """A gate's verdict on one graph: the records it was gated by and the logits they were computed from."""

    checks: tuple[Check, ...]
    logits: np.ndarray = field(repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass(frozen=True, kw_only=True)
class Kept:
    """A group the search kept in the higher precision: its nodes, its damage alone and why it was kept."""

    group: str
    nodes: tuple[str, ...]
    damage: float
    reason: str


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    """What :func:`keep_in_higher_precision` found: the last graph it built and that graph's gate result
    (``None`` both when there was no group), the groups it kept in order, and every group's damage."""

    graph: onnx.ModelProto | None
    gate: GateResult | None
    kept: tuple[Kept, ...]
    damage: Mapping[str, float]

    @property
    def passed(self) -> bool:
        """False when even keeping every group left the gate failing (or there was no group)."""
        return self.gate is not None and self.gate.passed


def worst_first(damage: Mapping[str, float]) -> list[str]:
    """The groups by damage, highest first; ties keep the groups' order (a stable sort)."""
    return sorted(damage, key=damage.get, reverse=True)


def worst_first_later_ties(damage: Mapping[str, float]) -> list[str]:
    """The groups by damage, highest first; ties: the later group first (``(damage, index)`` pairs sorted
    in reverse)."""
    index = {group: i for i, group in enumerate(damage)}
    return sorted(damage, key=lambda group: (damage[group], index[group]), reverse=True)


def keep_in_higher_precision(
    groups: Mapping[str, Sequence[str]],
    *,
    build: Callable[[frozenset[str]], onnx.ModelProto],
    damage: Callable[[onnx.ModelProto], float],
    gate: Callable[[onnx.ModelProto], GateResult],
    reason: Callable[[str, float], str],
    order: Callable[[Mapping[str, float]], Sequence[str]] = worst_first,
    kept: frozenset[str] = frozenset(),
) -> SearchResult:
    """Keep whole ``groups`` (name -> node names) in the higher precision, worst first, until ``gate``
    passes.

    ``build(nodes)`` makes the graph with ``nodes`` in the higher precision; every build gets ``kept`` (nodes
    the caller already keeps) too. ``damage(graph)`` measures a group on the graph with only that group in
    the lower precision; ``order(damages)`` lists the groups worst first (default :func:`worst_first`);
    ``reason(group, damage)`` is the text recorded for a kept group. The search builds and gates once per
    kept group and stops at the first graph that passes; :attr:`SearchResult.passed` is false when even
    keeping every group fails.
    """
    grouped = frozenset().union(*groups.values())
    measured = {name: damage(build((grouped - frozenset(nodes)) | kept)) for name, nodes in groups.items()}
    nodes = set(kept)
    chosen: list[Kept] = []
    graph: onnx.ModelProto | None = None
    result: GateResult | None = None
    for name in order(measured):
        nodes.update(groups[name])
        chosen.append(
            Kept(
                group=name,
                nodes=tuple(groups[name]),
                damage=measured[name],
                reason=reason(name, measured[name]),
            )
        )
        graph = build(frozenset(nodes))
        result = gate(graph)
        if result.passed:
            break
    return SearchResult(graph=graph, gate=result, kept=tuple(chosen), damage=measured)

"""From logits to classes: softmax, top-k and class names (bundled ImageNet-1k names, label files).
Used by ``deploykit predict`` and the Triton postprocess model; numpy only. Every class name passes
:func:`~deploykit.core.labels.check_labels` (one line each; the rule lives in ``core`` because checkpoints
carry labels too)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from deploykit.core.errors import ConfigError, InputError
from deploykit.core.labels import check_labels, parse_label_file


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order (first WordNet lemma of each synset)."""
    text = resources.files("deploykit").joinpath("data/imagenet1k_labels.txt").read_text(encoding="utf-8")
    return parse_label_file(text, "deploykit/data/imagenet1k_labels.txt")


def read_labels(path: str | Path) -> tuple[str, ...]:
    """A label file: UTF-8 text, one label per line, split on ``\\n`` only (``\\r\\n`` tolerated, a
    leading BOM dropped, blank lines at the end ignored); a line holding any other line break is refused
    (:func:`~deploykit.core.labels.parse_label_file`)."""
    try:
        text = Path(path).read_bytes().decode("utf-8")  # bytes: text mode would turn a lone \r into \n
    except FileNotFoundError:
        raise InputError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labels file {path}: {exc}") from None
    names = parse_label_file(text, f"labels file {path}")
    if not names:
        raise InputError(f"labels file {path} is empty")
    return names


def class_labels(num_classes: int, labels: str | Path | Sequence[str] | None = None) -> tuple[str, ...]:
    """One name per class: from ``labels`` (a label file or a sequence of one-line strings; its length must
    match), else the bundled ImageNet-1k names for a 1000-class model, else ``class 0``, ``class 1``, ..."""
    if labels is None:
        return imagenet_labels() if num_classes == 1000 else tuple(f"class {i}" for i in range(num_classes))
    names = read_labels(labels) if isinstance(labels, str | Path) else check_labels(labels)
    if len(names) != num_classes:
        raise ConfigError(f"{len(names)} labels given for a model with {num_classes} classes")
    return names


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def topk_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of each row, largest first (ties: lower index first)."""
    return np.argsort(-probs, axis=-1, kind="stable")[..., :k]

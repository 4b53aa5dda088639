"""Calibration images for INT8: a folder of images, or an ImageFolder (one subfolder per class, named by
the class's label or index: the rule of :func:`deploykit.validation.dataset.class_index`), preprocessed
exactly as the artifact will be fed.

With class subfolders the images are labelled, so the export can report accuracy (FP32 and INT8 side by
side). Every bad input is one :class:`InputError` line: a missing or empty folder, a file that is not a
readable image, fewer images than asked for, a class folder that names no class of the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.core.errors import DeployKitError, InputError, display_path
from deploykit.runtime.preprocess import IMAGE_SUFFIXES, Preprocessing, load_image
from deploykit.validation.dataset import class_index

#: labelled images the accuracy is measured on (all of a folder up to this many, an even draw beyond)
MAX_EVAL_IMAGES = 512
#: calibration images when --calib-count is not given (TensorRT's and ModelOpt's advice: a few hundred
#: are plenty; these models saturate well before)
DEFAULT_CALIB_COUNT = 64


@dataclass(frozen=True, kw_only=True)
class CalibrationSet:
    """``images`` (N, C, H, W) float32, preprocessed, to calibrate on; ``eval_images`` (every image of
    the folder, up to :data:`MAX_EVAL_IMAGES`) to check the INT8 graphs on and, for a labelled folder,
    ``eval_labels`` to measure accuracy with; ``source`` says what they are, for the manifest."""

    images: np.ndarray
    source: str
    eval_images: np.ndarray | None = None
    eval_labels: np.ndarray | None = None

    @property
    def labelled(self) -> bool:
        return self.eval_labels is not None

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "images": int(len(self.images)),
            "labelled": self.labelled,
            "checked_images": int(len(self.eval_images)) if self.eval_images is not None else 0,
        }


def _files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))


def _listing(folder: Path, labels: Sequence[str] | None, num_classes: int) -> list[tuple[Path, int | None]]:
    if not folder.is_dir():
        raise InputError(f"calibration folder {display_path(folder)} does not exist or is not a directory")
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs:
        if num_classes <= 0:
            raise InputError(
                f"calibration folder {display_path(folder)} has class folders, but the model has no classifier"
            )
        entries = []
        for d in subdirs:
            index = class_index(
                d.name, labels, num_classes, f"calibration folder {display_path(folder)}: class folder"
            )
            entries.extend((f, index) for f in _files(d))
        return entries
    return [(f, None) for f in _files(folder)]


def calibration_set(
    folder: str | Path,
    preprocessing: Preprocessing,
    *,
    count: int,
    labels: Sequence[str] | None = None,
    num_classes: int = 0,
    seed: int = 0,
) -> CalibrationSet:
    """``count`` images of ``folder`` (an even draw over it, seeded), preprocessed."""
    folder = Path(folder)
    shown = display_path(folder)  # every message names files as one line, whatever their names hold
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError(f"--calib-count must be a positive integer, got {count!r}")
    entries = _listing(folder, labels, num_classes)
    not_images = [f for f, _ in entries if f.suffix.lower() not in IMAGE_SUFFIXES]
    if not_images:
        raise InputError(
            f"calibration folder {shown}: {display_path(not_images[0].relative_to(folder))} is not an image "
            f"(expected {', '.join(IMAGE_SUFFIXES)}; {len(not_images)} such file(s))"
        )
    if not entries:
        raise InputError(f"calibration folder {shown} holds no images")
    if len(entries) < count:
        raise InputError(
            f"calibration folder {shown} holds {len(entries)} images; --calib-count asks for {count}"
        )
    order = np.random.default_rng(seed).permutation(len(entries))
    picks = np.sort(order[:count])
    labelled = entries[0][1] is not None
    evaluated = sorted(order[:MAX_EVAL_IMAGES].tolist())
    wanted = set(picks.tolist()) | set(evaluated)
    pixels = {}
    for i in sorted(wanted):
        try:
            pixels[i] = preprocessing.crop(load_image(entries[i][0]))
        except DeployKitError as exc:
            raise InputError(f"calibration folder {shown}: {exc}") from None
    return CalibrationSet(
        images=preprocessing.normalize(np.stack([pixels[i] for i in picks])),
        source=f"{folder} ({count} of {len(entries)} images{', labelled' if labelled else ''})",
        eval_images=preprocessing.normalize(np.stack([pixels[i] for i in evaluated])),
        eval_labels=np.array([entries[i][1] for i in evaluated], dtype=np.int64) if labelled else None,
    )

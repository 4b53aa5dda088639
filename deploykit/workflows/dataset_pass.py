"""One pass over a labelled dataset (:mod:`deploykit.validation.dataset`): every image read and decoded once,
preprocessed once and fed to every runner of the pass in batches, so memory is bounded by the batch. The
answers kept per runner are its top-5 classes and their probabilities (and, when asked, its logits, for
output parity); the thumbnails kept are those of the images where two answer sets disagree about being
right (the flips), at most :data:`MAX_FLIPS`. ``validate --dataset`` and ``export --dataset`` both run it."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from deploykit.core.errors import InputError
from deploykit.runtime.base import Runner, run_batched
from deploykit.runtime.postprocess import softmax, topk_indices
from deploykit.runtime.preprocess import Preprocessing
from deploykit.validation.accuracy import TOP_K
from deploykit.validation.dataset import LabelledDataset, dataset_batches, first_difference

#: the pixels of one forward pass over a dataset: memory is the batch's activations in every runner, which
#: grow with the image's area (CvT-13 at 224 px went past 2 GB at 32 images a batch, docs/measured.md)
BATCH_PIXELS = 8 * 224 * 224
#: the largest batch, for small images (more gains little on a CPU)
MAX_DATASET_BATCH = 32
#: thumbnails kept of images that changed their answer
MAX_FLIPS = 200
#: a thumbnail's longest side, in pixels
THUMBNAIL = 96
#: ``progress(done, total)`` after every batch
Progress = Callable[[int, int], None]


@dataclass(frozen=True, kw_only=True)
class Answers:
    """One model's answers on the dataset: its top-5 classes (best first) and their probabilities."""

    topk: np.ndarray
    probs: np.ndarray | None = None
    logits: np.ndarray | None = None

    @property
    def top1(self) -> np.ndarray:
        return self.topk[:, 0]


@dataclass(frozen=True, kw_only=True)
class DatasetPass:
    """What one pass found: every image's ``(name, sha256, label)``, each runner's answers, the flipped
    images' thumbnails (PNG bytes, by index), how long it took and how much of that was inference."""

    rows: list[tuple[str, str, int]]
    answers: dict[str, Answers]
    thumbnails: dict[int, bytes] = field(default_factory=dict)
    seconds: float = 0.0
    inference_seconds: dict[str, float] = field(default_factory=dict)
    #: images per forward pass (:func:`dataset_batch`)
    batch: int = 0
    #: the first image whose file differs from the recorded one (``expected``), when the pass went on
    changed: str | None = None

    @property
    def labels(self) -> np.ndarray:
        return np.array([r[2] for r in self.rows], dtype=np.int64)

    @property
    def images_per_second(self) -> float:
        return len(self.rows) / self.seconds if self.seconds else 0.0


def dataset_batch(preprocessing: Preprocessing) -> int:
    """Images per forward pass for this input size: as many as fit :data:`BATCH_PIXELS` (8 at 224 px, 32 at
    112 px and below). ``validate --dataset`` and ``export --dataset`` both use it, so the CPU INT8 file,
    whose activations are quantized per batch, answers the same in both."""
    _, height, width = (int(d) for d in preprocessing.input_size)
    return max(1, min(MAX_DATASET_BATCH, BATCH_PIXELS // (height * width)))


def run_dataset_pass(
    dataset: LabelledDataset,
    preprocessing: Preprocessing,
    runners: Mapping[str, Runner],
    *,
    known: Mapping[str, Answers] | None = None,
    expected: Sequence[tuple[str, str, int]] | None = None,
    stop_on_change: bool = True,
    keep_logits: bool = False,
    progress: Progress | None = None,
) -> DatasetPass:
    """Run ``runners`` over ``dataset`` (see the module doc). ``known``: answers recorded before (a
    golden reference's), compared like a runner's. ``expected``: the recorded ``(name, sha256, label)`` of
    each image, in order; the first file that differs is one :class:`InputError` (``stop_on_change``) or
    noted in ``changed``."""
    known = dict(known or {})
    batch = dataset_batch(preprocessing)
    t0 = time.perf_counter()
    rows: list[tuple[str, str, int]] = []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    spent = dict.fromkeys(runners, 0.0)
    thumbnails: dict[int, bytes] = {}
    changed = None
    for chunk in dataset_batches(dataset, preprocessing, batch):
        start = len(rows)
        rows.extend((e.name, sha, e.label) for e, sha in zip(chunk.entries, chunk.sha256))
        if expected is not None and changed is None:
            changed = first_difference(expected[start : len(rows)], rows[start:])
            if changed is not None and stop_on_change:
                raise InputError(f"the dataset differs from the one the export recorded: {changed}")
        for name, runner in runners.items():
            t = time.perf_counter()
            parts[name].append(run_batched(runner, chunk.images, batch))
            spent[name] += time.perf_counter() - t
        _keep_flips(thumbnails, chunk, start, {n: p[-1] for n, p in parts.items()}, known)
        if progress is not None:
            progress(len(rows), len(dataset))
    answers = {name: _answers(np.concatenate(p), keep_logits) for name, p in parts.items()}
    return DatasetPass(
        rows=rows,
        answers={**known, **answers},
        thumbnails=thumbnails,
        seconds=time.perf_counter() - t0,
        inference_seconds={k: round(v, 3) for k, v in spent.items()},
        batch=batch,
        changed=changed,
    )


def _answers(logits: np.ndarray, keep_logits: bool) -> Answers:
    probs = softmax(logits)
    k = min(TOP_K, logits.shape[1])
    order = topk_indices(probs, k)
    return Answers(
        topk=order.astype(np.int32),
        probs=np.take_along_axis(probs, order, axis=1).astype(np.float32),
        logits=logits.astype(np.float32) if keep_logits else None,
    )


def _keep_flips(
    thumbnails, chunk, start: int, logits: Mapping[str, np.ndarray], known: Mapping[str, Answers]
):
    """Thumbnails of the images of ``chunk`` where two answer sets disagree about being right."""
    if len(thumbnails) >= MAX_FLIPS:
        return
    labels = np.array([e.label for e in chunk.entries])
    stop = start + len(chunk.entries)
    right = [logit.argmax(1) == labels for logit in logits.values()]
    right += [a.topk[start:stop, 0] == labels for a in known.values()]
    if len(right) < 2:
        return
    stacked = np.stack(right)
    for offset in np.flatnonzero(stacked.any(0) & ~stacked.all(0)):
        if len(thumbnails) >= MAX_FLIPS:
            return
        thumbnails[start + int(offset)] = thumbnail_png(chunk.decoded[int(offset)])


def thumbnail_png(image) -> bytes:
    """A small PNG of a decoded PIL image (the longest side :data:`THUMBNAIL` pixels)."""
    small = image.convert("RGB").copy()
    small.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()

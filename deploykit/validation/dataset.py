"""A labelled dataset of the user's: an ImageFolder (one subfolder per class, named by the class's label or
index) or a CSV file of ``path,label`` rows (paths relative to the CSV's folder; a label is a class name
or index; a first row ``path,label`` is a header). The one rule for class folders is here: the INT8
calibration folder (:mod:`.calibration`) follows it too.

The images are read once each, as a stream of batches (:func:`dataset_batches`): every file's bytes are
hashed (the dataset's fingerprint: relative path, sha256 and label of every image) and decoded from the same
bytes, so memory holds one batch, never the dataset. Every bad input is one :class:`InputError` line
naming what is wrong: a class folder that names no class, an empty folder, a folder without images, a file
that is not an image, an unreadable image, a CSV row with a missing file or an unknown label.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.core.errors import DeployKitError, InputError, display_path, distinct_prefixes
from deploykit.runtime.preprocess import IMAGE_SUFFIXES, Preprocessing, load_image

#: the largest CSV deploykit reads (a million rows of ``path,label`` fit)
MAX_CSV_BYTES = 256 << 20
#: the largest image file read (a 50 MP PNG fits)
MAX_IMAGE_BYTES = 512 << 20


@dataclass(frozen=True, kw_only=True)
class DatasetEntry:
    """One image: its file, its name in the dataset (the path relative to the dataset, POSIX) and label."""

    path: Path
    name: str
    label: int


@dataclass(frozen=True, kw_only=True)
class LabelledDataset:
    """The images of a dataset and their labels, in a fixed order (sorted by name)."""

    source: Path
    entries: tuple[DatasetEntry, ...]

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def labels(self) -> np.ndarray:
        return np.array([e.label for e in self.entries], dtype=np.int64)


@dataclass(frozen=True, kw_only=True)
class DatasetBatch:
    """A batch of the stream: the preprocessed images, their entries and each file's sha256."""

    images: np.ndarray
    entries: tuple[DatasetEntry, ...]
    sha256: tuple[str, ...]
    #: the decoded images before preprocessing (for thumbnails), in entry order
    decoded: tuple


def class_index(name: str, labels: Sequence[str] | None, num_classes: int, where: str) -> int:
    """The class a folder name or CSV label names: one of the model's labels, else a class index
    ``0..num_classes-1``; anything else is one :class:`InputError` line that starts with ``where``."""
    if labels is not None and name in labels:
        return list(labels).index(name)
    if name.isdigit() and int(name) < num_classes:
        return int(name)
    shown = ", ".join(list(labels)[:5]) + (", ..." if len(labels) > 5 else "") if labels else None
    known = f"its labels ({shown})" if shown else f"0..{num_classes - 1}"
    raise InputError(f"{where}: {name!r} is not one of the model's classes {known}")


def _files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))


def read_dataset(
    path: str | Path, *, labels: Sequence[str] | None, num_classes: int, what: str = "dataset"
) -> LabelledDataset:
    """The dataset at ``path``: an ImageFolder, or a CSV file of ``path,label`` rows (see the module doc)."""
    path = Path(path)
    if num_classes <= 0:
        raise InputError(f"{what} {display_path(path)}: the model has no classifier (it outputs features)")
    if path.is_file():
        entries = _csv_entries(path, labels, num_classes, what)
    elif path.is_dir():
        entries = _folder_entries(path, labels, num_classes, what)
    else:
        raise InputError(f"{what} {display_path(path)} does not exist")
    if not entries:
        raise InputError(f"{what} {display_path(path)} holds no images")
    return LabelledDataset(source=path, entries=tuple(sorted(entries, key=lambda e: e.name)))


def _folder_entries(folder: Path, labels, num_classes: int, what: str) -> list[DatasetEntry]:
    shown = display_path(folder)
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [f for f in _files(folder) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not subdirs:
        detail = f" ({len(loose)} images without a class folder)" if loose else ""
        raise InputError(f"{what} {shown} has no class folders (one subfolder per class){detail}")
    if loose:
        raise InputError(f"{what} {shown}: {display_path(loose[0].name)} is not in a class folder")
    entries = []
    for d in subdirs:
        index = class_index(d.name, labels, num_classes, f"{what} {shown}: class folder")
        files = _files(d)
        if not files:
            raise InputError(f"{what} {shown}: class folder {display_path(d.name)} is empty")
        for f in files:
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(
                    f"{what} {shown}: {display_path(f.relative_to(folder))} is not an image "
                    f"(expected {', '.join(IMAGE_SUFFIXES)})"
                )
            entries.append(DatasetEntry(path=f, name=f.relative_to(folder).as_posix(), label=index))
    return entries


def _csv_entries(file: Path, labels, num_classes: int, what: str) -> list[DatasetEntry]:
    shown = display_path(file)
    if file.stat().st_size > MAX_CSV_BYTES:
        raise InputError(f"{what} {shown}: over {MAX_CSV_BYTES >> 20} MiB")
    try:
        rows = list(csv.reader(io.StringIO(file.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{what} {shown} is not a readable CSV file ({type(exc).__name__})") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = [[], *rows[1:]]  # the header row: keep the numbering of the file's lines
    entries, seen = [], set()
    for number, row in enumerate(rows, 1):
        if not row or not "".join(row).strip():
            continue
        where = f"{what} {shown}, row {number}"
        if len(row) != 2:
            raise InputError(f"{where}: expected path,label, got {len(row)} fields")
        relative, label = row[0].strip(), row[1].strip()
        image = (file.parent / relative).resolve()
        if not image.is_file():
            raise InputError(f"{where}: image not found: {display_path(relative)}")
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"{where}: {display_path(relative)} is not an image")
        name = Path(relative).as_posix()
        if name in seen:
            raise InputError(f"{where}: {display_path(relative)} is listed twice")
        seen.add(name)
        entries.append(
            DatasetEntry(path=image, name=name, label=class_index(label, labels, num_classes, where))
        )
    return entries


def sample_images(
    dataset: LabelledDataset, preprocessing: Preprocessing, *, count: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """An even, seeded draw of up to ``count`` images of ``dataset`` (all of them when it is smaller),
    preprocessed, in dataset order, with their labels."""
    order = np.random.default_rng(seed).permutation(len(dataset))
    picks = sorted(order[:count].tolist())
    chosen = LabelledDataset(source=dataset.source, entries=tuple(dataset.entries[i] for i in picks))
    images = np.concatenate([b.images for b in dataset_batches(chosen, preprocessing, 64)])
    return images, chosen.labels


def dataset_batches(
    dataset: LabelledDataset, preprocessing: Preprocessing, batch: int
) -> Iterator[DatasetBatch]:
    """The dataset in order, ``batch`` images at a time: each file read once, hashed and decoded."""
    for start in range(0, len(dataset), batch):
        chunk = dataset.entries[start : start + batch]
        decoded, hashes, pixels = [], [], []
        for entry in chunk:
            data = _read(entry, dataset.source)
            hashes.append(hashlib.sha256(data).hexdigest())
            try:
                image = load_image(data)
            except DeployKitError as exc:
                raise InputError(f"dataset image {display_path(entry.name)}: {exc}") from None
            decoded.append(image)
            pixels.append(preprocessing.crop(image))
        images = preprocessing.normalize(np.stack(pixels))
        yield DatasetBatch(images=images, entries=tuple(chunk), sha256=tuple(hashes), decoded=tuple(decoded))


def _read(entry: DatasetEntry, source: Path) -> bytes:
    try:
        with open(entry.path, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except OSError as exc:
        raise InputError(
            f"dataset image {display_path(entry.name)} cannot be read ({exc.strerror})"
        ) from None
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(f"dataset image {display_path(entry.name)}: over {MAX_IMAGE_BYTES >> 20} MiB")
    return data


def fingerprint(rows: Sequence[tuple[str, str, int]]) -> str:
    """The sha256 of a dataset: every image's ``(name, sha256, label)``, in order."""
    return hashlib.sha256(json.dumps([list(r) for r in rows]).encode()).hexdigest()


def first_difference(recorded: Sequence[Sequence], found: Sequence[Sequence]) -> str | None:
    """The first way ``found`` (``(name, sha256, label)`` rows) differs from ``recorded``, in words: an image
    added, removed, changed or relabelled; None when they are the same."""
    before = {r[0]: (r[1], int(r[2])) for r in recorded}
    after = {r[0]: (r[1], int(r[2])) for r in found}
    for name in sorted(set(before) | set(after)):
        if name not in after:
            return f"{name} is gone"
        if name not in before:
            return f"{name} was added"
        (sha_then, label_then), (sha_now, label_now) = before[name], after[name]
        if sha_then != sha_now:
            then, now = distinct_prefixes(sha_then, sha_now)
            return f"{name} has changed (sha256 {then} then, {now} now)"
        if label_then != label_now:
            return f"{name} was relabelled (class {label_then} then, {label_now} now)"
    return None

"""Golden references: what an export ships so any artifact can be checked anywhere, without PyTorch.

``reference.npz`` (NumPy's zip of arrays, read with ``allow_pickle=False``: no code in it) holds

- ``images``: the export's validation images **after resize and centre crop, as uint8** ``(N, H, W, C)``, so
  a device applies only the recorded mean/std (deterministic float math, no image-library differences);
- ``outputs``: their PyTorch FP32 outputs (``(N, classes)`` logits, or features);
- optionally ``int8_images`` / ``int8_outputs``: images from the INT8 calibration folder (where an INT8 model
  is deployed) and their PyTorch FP32 outputs, which the INT8 files are checked on;
- ``record``: JSON with the tolerances per precision, the model's identity (preset, family, model args,
  weights state sha256, input shape and name, preprocessing) and the image names.

Its sha256 goes into ``manifest.json`` and every artifact's metadata, so a reference from another export, or
a tampered one, is refused (:func:`check_reference`). 16 images at 224 px are 2.4 MB of uint8.

Reading one (:func:`read_reference`) costs about its own size in memory, whatever the file claims: the
file is read once (at most :data:`MAX_FILE_BYTES`) and hashed, and a hash that is not the one the artifact
records is refused before the zip is opened. Then only the five known members are looked at; each one's
``.npy`` header is read from its first bytes (a pickled ``object`` dtype is refused), its declared size
must be what the zip entry holds and within :data:`MAX_MEMBER_BYTES` (all of them within
:data:`MAX_TOTAL_BYTES`), and the record is checked (:data:`deploykit.core.schema.REFERENCE`) against the
arrays' shapes before the arrays are inflated, each into a buffer of its declared size.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.core.config import Tolerances
from deploykit.core.errors import (
    ArtifactError,
    ConfigError,
    DeployKitError,
    display_path,
    distinct_prefixes,
    first_line,
    one_line,
)
from deploykit.core.io import sha256_bytes
from deploykit.core.schema import REFERENCE, shown, validate
from deploykit.runtime.preprocess import Preprocessing

REFERENCE_NAME = "reference.npz"
FORMAT = 1
#: the identity keys an artifact and its reference must agree on
IDENTITY_KEYS = ("preset", "model_args", "weights_state_sha256")

_MIB = 1 << 20
#: the most each member may declare (its ``.npy`` data): a reference keeps the export's validation images
#: (16 by default; 512 MiB is 1200 images at 384 px, 3500 at 224 px), their logits (256 MiB: 3000 images
#: of a 21843-class head in float32) and a JSON record (tolerances, identity, image names)
MAX_MEMBER_BYTES = {
    "images": 512 * _MIB,
    "outputs": 256 * _MIB,
    "record": 16 * _MIB,
    "int8_images": 512 * _MIB,
    "int8_outputs": 256 * _MIB,
    # a recorded dataset's answers: top-5 classes and their probabilities (3 million images fit)
    "dataset_top5": 64 * _MIB,
    "dataset_probs": 64 * _MIB,
}
#: the most all members together may declare: what reading a reference can inflate, at most
MAX_TOTAL_BYTES = 768 * _MIB
#: the largest reference file: its members, compressed or stored, plus zip headers (deflate never grows
#: data by more than a fraction of a percent)
MAX_FILE_BYTES = MAX_TOTAL_BYTES + 16 * _MIB
#: entries a reference's zip directory may list (it has five at most; a directory of millions would cost
#: gigabytes to parse)
MAX_ENTRIES = 64
_CHUNK = 16 * _MIB


@dataclass(frozen=True, kw_only=True)
class RecordedDataset:
    """A labelled dataset as an export recorded it: every image's ``(name, sha256, class)`` and PyTorch
    FP32's top-5 classes (best first) and their probabilities on it, and its top-1 / top-5 accuracy."""

    source: str
    sha256: str
    rows: tuple[tuple[str, str, int], ...]
    top5: np.ndarray
    probs: np.ndarray
    top1_accuracy: float
    top5_accuracy: float

    def to_record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "rows": [list(r) for r in self.rows],
            "top1": self.top1_accuracy,
            "top5": self.top5_accuracy,
        }


@dataclass(frozen=True, kw_only=True)
class GoldenReference:
    images: np.ndarray  # uint8 (N, H, W, C)
    outputs: np.ndarray
    record: dict[str, Any]
    int8_images: np.ndarray | None = None
    int8_outputs: np.ndarray | None = None
    #: the dataset the export was given (``export --dataset``) and PyTorch FP32's answers on it
    dataset: RecordedDataset | None = None
    sha256: str = ""
    path: str = ""

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self.record.get("identity") or {})

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.identity.get("preprocessing") or {})

    def batch(self, precision: str) -> tuple[np.ndarray, np.ndarray]:
        """``(normalized float32 NCHW images, reference outputs)`` the artifact of ``precision`` is
        checked on: the INT8 set for INT8 files when the export had one, else the validation images."""
        images, outputs = self.images, self.outputs
        if precision.startswith("int8") and self.int8_images is not None:
            images, outputs = self.int8_images, self.int8_outputs
        pixels = images.astype(np.float32) / 255.0  # what preprocess.to_array computes from a PIL image
        return self.preprocessing.normalize(pixels), outputs

    def tolerances(self, precision: str) -> Tolerances:
        key = "int8" if precision.startswith("int8") else precision
        stored = (self.record.get("tolerances") or {}).get(key)
        if not isinstance(stored, dict):
            raise ConfigError(f"{self.path}: the reference stores no tolerances for {key}")
        try:
            return Tolerances(**stored)
        except (TypeError, ConfigError) as exc:
            raise ConfigError(f"{self.path}: its {key} tolerances are invalid ({exc})") from None


def pixels_u8(images: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Normalized float32 NCHW images back to the uint8 NHWC pixels they were made from."""
    mean = np.asarray(preprocessing.mean, dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(preprocessing.std, dtype=np.float64).reshape(1, -1, 1, 1)
    pixels = (images.astype(np.float64) * std + mean) * 255.0
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def reference_bytes(
    images_u8: np.ndarray,
    outputs: np.ndarray,
    *,
    tolerances: dict[str, dict],
    identity: dict[str, Any],
    names: list[str],
    int8: tuple[np.ndarray, np.ndarray] | None = None,
    dataset: RecordedDataset | None = None,
) -> bytes:
    """The ``reference.npz`` file's bytes (deterministic: fixed zip member times)."""
    record = {"format": FORMAT, "tolerances": tolerances, "identity": identity, "names": names}
    if dataset is not None:
        record["dataset"] = dataset.to_record()
    arrays = {
        "images": np.ascontiguousarray(images_u8, dtype=np.uint8),
        "outputs": np.ascontiguousarray(outputs, dtype=np.float32),
        "record": np.frombuffer(json.dumps(record, sort_keys=True).encode(), dtype=np.uint8),
    }
    if int8 is not None:
        arrays["int8_images"] = np.ascontiguousarray(int8[0], dtype=np.uint8)
        arrays["int8_outputs"] = np.ascontiguousarray(int8[1], dtype=np.float32)
    if dataset is not None:
        arrays["dataset_top5"] = np.ascontiguousarray(dataset.top5, dtype=np.int32)
        arrays["dataset_probs"] = np.ascontiguousarray(dataset.probs, dtype=np.float32)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def read_reference(
    path: str | Path, expected_sha256: str | None = None, *, artifact: str | Path | None = None
) -> GoldenReference:
    """The reference file ``path``, checked before anything in it is inflated (see the module doc). With
    ``expected_sha256`` (what ``artifact`` records) a file of another hash is a :class:`ConfigError`
    (exit 2: the wrong file given) before its zip is opened; a file that is not a well-formed reference
    is one :class:`ArtifactError` line."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"reference not found: {display_path(path)}")
    data = _read_bounded(path)
    if not data.startswith(b"PK\x03\x04"):  # the magic of a zip with members: no parsing yet
        raise _refused(path, "not a zip archive (a NumPy .npz)")
    sha = sha256_bytes(data)
    if expected_sha256 is not None:
        _check_sha256(
            str(path), sha, expected_sha256, str(artifact) if artifact is not None else "the artifact"
        )
    _check_directory(path, data)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = _members(path, archive)
            record = validate(_record(path, archive, members["record"]), REFERENCE, path, root="record")
            _check_shapes(path, members, record)
            arrays = {name: _inflate(path, archive, m) for name, m in members.items() if name != "record"}
    except DeployKitError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, ValueError, OSError, EOFError, RuntimeError,
            NotImplementedError, struct.error) as exc:  # fmt: skip
        raise _refused(path, f"{type(exc).__name__}: {first_line(exc)}") from None
    for name in ("outputs", "int8_outputs", "dataset_probs"):
        if name in arrays and not np.isfinite(arrays[name]).all():
            raise _refused(path, f"{name} hold NaN or Inf")
    top5 = arrays.get("dataset_top5")
    if top5 is not None and top5.size and (top5.min() < 0 or top5.max() >= arrays["outputs"].shape[1]):
        raise _refused(path, "dataset_top5 holds classes the outputs do not have")
    return GoldenReference(
        images=arrays["images"],
        outputs=arrays["outputs"],
        record=record,
        int8_images=arrays.get("int8_images"),
        int8_outputs=arrays.get("int8_outputs"),
        dataset=_recorded_dataset(record, arrays),
        sha256=sha,
        path=str(path),
    )


def _recorded_dataset(record: dict[str, Any], arrays: dict[str, np.ndarray]) -> RecordedDataset | None:
    found = record.get("dataset")
    if found is None:
        return None
    return RecordedDataset(
        source=found["source"],
        sha256=found["sha256"],
        rows=tuple((r[0], r[1], int(r[2])) for r in found["rows"]),
        top5=arrays["dataset_top5"].astype(np.int64),
        probs=arrays["dataset_probs"].astype(np.float32),
        top1_accuracy=float(found["top1"]),
        top5_accuracy=float(found["top5"]),
    )


@dataclass(frozen=True, kw_only=True)
class _Member:
    """One ``.npy`` member as its header declares it (nothing inflated yet)."""

    name: str
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    header: int  # bytes of the .npy header before the data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def describe(self) -> str:
        return f"{self.dtype} {self.shape}"


def _refused(path: Path, why: str) -> ArtifactError:
    return ArtifactError(f"{display_path(path)} is not a deploykit reference: {one_line(why)}")


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, read once; a file over :data:`MAX_FILE_BYTES` is refused without reading it."""
    size = path.stat().st_size
    too_big = f"{size} bytes, over the {MAX_FILE_BYTES // _MIB} MiB a reference may have"
    if size > MAX_FILE_BYTES:
        raise _refused(path, too_big)
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:  # it grew since
        raise _refused(path, too_big)
    return data


def _check_sha256(path: str, sha: str, want: Any, artifact: str) -> None:
    if not isinstance(want, str) or sha == want:
        return
    ours, theirs = distinct_prefixes(sha, want)
    raise ConfigError(
        f"{display_path(path)} (sha256 {ours}) is not the reference {display_path(artifact)} was exported "
        f"with (it records sha256 {theirs}): tampered, or from another export"
    )


def _check_directory(path: Path, data: bytes) -> None:
    """The zip's end record, before :mod:`zipfile` parses the directory it points to: a handful of
    entries in a small directory (no ZIP64 directory: a reference is far below 4 GiB)."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 0xFFFF))
    if end < 0 or end + 22 > len(data):
        raise _refused(path, "not a zip archive (a NumPy .npz)")
    entries, directory = struct.unpack_from("<HI", data, end + 10)
    if entries > MAX_ENTRIES or directory > MAX_ENTRIES * 1024:
        raise _refused(
            path, f"its zip directory lists {entries} entries in {directory} bytes (at most {MAX_ENTRIES})"
        )


_UINT8 = np.dtype(np.uint8)


def _allowed(name: str, dtype: np.dtype) -> bool:
    if name in ("images", "int8_images", "record"):
        return dtype == _UINT8
    if name == "dataset_top5":
        return dtype.kind in "iu" and dtype.itemsize <= 8
    return dtype.kind == "f" and dtype.itemsize in (2, 4, 8)


def _members(path: Path, archive: zipfile.ZipFile) -> dict[str, _Member]:
    """The known members' headers, each checked against the zip entry and its cap; unknown members are
    never opened."""
    found: dict[str, _Member] = {}
    names = set(archive.namelist())
    for name, cap in MAX_MEMBER_BYTES.items():
        if f"{name}.npy" not in names:
            continue
        info = archive.getinfo(f"{name}.npy")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
            raise _refused(path, f"{name}.npy is encrypted or compressed with method {info.compress_type}")
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise _refused(path, f"{name}.npy has .npy format version {version} (1.0 or 2.0 only)")
            member = _Member(
                name=name,
                info=info,
                shape=tuple(int(d) for d in shape),
                dtype=dtype,
                fortran=bool(fortran),
                header=f.tell(),
            )
        if dtype.hasobject or not _allowed(name, dtype):
            raise _refused(path, f"{name}.npy holds {dtype} (pickled objects are never read)")
        if member.nbytes > cap:
            raise _refused(
                path,
                f"{name}.npy declares {member.describe()}, {member.nbytes / _MIB:.0f} MiB (at most "
                f"{cap // _MIB} MiB)",
            )
        if info.file_size != member.header + member.nbytes:
            raise _refused(
                path,
                f"{name}.npy's zip entry says {info.file_size} bytes, its header declares "
                f"{member.header + member.nbytes}",
            )
        found[name] = member
    missing = [n for n in ("images", "outputs", "record") if n not in found]
    if missing:
        raise _refused(path, f"no {', '.join(f'{n}.npy' for n in missing)} (format {FORMAT})")
    total = sum(m.nbytes for m in found.values())
    if total > MAX_TOTAL_BYTES:
        raise _refused(
            path, f"its arrays declare {total / _MIB:.0f} MiB (at most {MAX_TOTAL_BYTES // _MIB} MiB)"
        )
    return found


def _inflate(path: Path, archive: zipfile.ZipFile, member: _Member) -> np.ndarray:
    """A member's array, inflated into a buffer of its declared size (a member that holds more or less
    than it declares is refused; the zip's CRC is checked at its end)."""
    out = np.empty(member.nbytes, dtype=np.uint8)
    view = memoryview(out)
    got = 0
    with archive.open(member.info) as f:
        f.read(member.header)
        while got < member.nbytes:
            chunk = f.read(min(_CHUNK, member.nbytes - got))
            if not chunk:
                break
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
        if got != member.nbytes or f.read(1):
            raise _refused(path, f"{member.name}.npy does not hold the {member.nbytes} bytes it declares")
    return out.view(member.dtype).reshape(member.shape, order="F" if member.fortran else "C")


def _record(path: Path, archive: zipfile.ZipFile, member: _Member) -> Any:
    if len(member.shape) != 1:
        raise _refused(path, f"record.npy holds {member.describe()}, not JSON bytes")
    try:
        return json.loads(_inflate(path, archive, member).tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise _refused(path, f"its record is not JSON ({type(exc).__name__})") from None


def _check_shapes(path: Path, members: dict[str, _Member], record: dict[str, Any]) -> None:
    """The arrays' declared shapes against the record: uint8 ``(N, H, W, C)`` images of the recorded input
    shape, ``(N, classes)`` float outputs of the same N, the INT8 pair both or neither."""
    identity = record["identity"]
    shape = identity["input"]["shape"]
    channels, height, width = (int(d) for d in shape[1:])
    where = display_path(path)

    def wrong(field: str, want: str, member: _Member | None = None, got: Any = None) -> ArtifactError:
        found = member.describe() if member is not None else shown(got)
        return ArtifactError(f"{where}: {field} must be {want}, got {found}")

    size = identity["preprocessing"]["input_size"]
    if [int(d) for d in size] != [channels, height, width]:
        raise wrong(
            "record.identity.preprocessing.input_size",
            f"{[channels, height, width]} (the input shape)",
            got=size,
        )
    pixels = (height, width, channels)
    images, outputs = members["images"], members["outputs"]
    if images.dtype != _UINT8 or len(images.shape) != 4 or images.shape[0] < 1 or images.shape[1:] != pixels:
        raise wrong(
            "images",
            f"uint8 (N, {height}, {width}, {channels}) with N >= 1 (the input shape {shape})",
            images,
        )
    n = images.shape[0]
    if len(outputs.shape) != 2 or outputs.shape[0] != n or outputs.shape[1] < 1:
        raise wrong("outputs", f"float (N, classes) with the images' N = {n}", outputs)
    _check_dataset(where, members, record, outputs.shape[1])
    int8_images, int8_outputs = members.get("int8_images"), members.get("int8_outputs")
    if (int8_images is None) != (int8_outputs is None):
        given = "int8_images" if int8_images is not None else "int8_outputs"
        raise ArtifactError(f"{where}: int8_images and int8_outputs go together, it holds only {given}")
    if int8_images is not None and int8_outputs is not None:
        if len(int8_images.shape) != 4 or int8_images.shape[0] < 1 or int8_images.shape[1:] != pixels:
            raise wrong("int8_images", f"uint8 (N, {height}, {width}, {channels}) with N >= 1", int8_images)
        m = int8_images.shape[0]
        if len(int8_outputs.shape) != 2 or int8_outputs.shape != (m, outputs.shape[1]):
            raise wrong(
                "int8_outputs",
                f"float ({m}, {outputs.shape[1]}) (int8_images' N, the outputs' classes)",
                int8_outputs,
            )


def _check_dataset(where: str, members: dict[str, _Member], record: dict[str, Any], classes: int) -> None:
    """A recorded dataset's two arrays: both or neither, with its record; ``(images, k)`` each, k <= 5."""
    top5, probs = members.get("dataset_top5"), members.get("dataset_probs")
    dataset = record.get("dataset")
    present = [top5 is not None, probs is not None, dataset is not None]
    if any(present) and not all(present):
        raise ArtifactError(f"{where}: dataset_top5, dataset_probs and record.dataset go together")
    if dataset is None:
        return
    n, k = len(dataset["rows"]), min(5, classes)
    for member in (top5, probs):
        if member.shape != (n, k):
            raise ArtifactError(
                f"{where}: {member.name} must be ({n}, {k}) (the recorded images, top-{k}), got {member.describe()}"
            )


def check_reference(reference: GoldenReference, artifact: str, recorded: dict[str, Any]) -> None:
    """The reference must be the one the artifact was exported with: its sha256 when the artifact records
    one (``recorded["reference_sha256"]``; :func:`read_reference` checks it first when given it), else its
    identity (preset, model args, weights). A mismatch is a :class:`ConfigError` (bad usage: exit 2) naming
    both."""
    want = recorded.get("reference_sha256")
    if want:
        _check_sha256(reference.path, reference.sha256, want, artifact)
    identity = reference.identity
    for key in IDENTITY_KEYS:
        ours, theirs = recorded.get(key), identity.get(key)
        if ours is not None and theirs is not None and ours != theirs:
            if isinstance(ours, str) and isinstance(theirs, str):
                theirs, ours = distinct_prefixes(theirs, ours)
            raise ConfigError(
                f"{display_path(reference.path)} belongs to another model: its {key} is {shown(theirs)}, "
                f"{display_path(artifact)} records {shown(ours)}"
            )

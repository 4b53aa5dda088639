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
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.core.config import Tolerances
from deploykit.core.errors import ArtifactError, ConfigError
from deploykit.core.io import sha256_bytes
from deploykit.runtime.preprocess import Preprocessing

REFERENCE_NAME = "reference.npz"
FORMAT = 1
#: the identity keys an artifact and its reference must agree on
IDENTITY_KEYS = ("preset", "model_args", "weights_state_sha256")


@dataclass(frozen=True)
class GoldenReference:
    images: np.ndarray  # uint8 (N, H, W, C)
    outputs: np.ndarray
    record: dict[str, Any]
    int8_images: np.ndarray | None = None
    int8_outputs: np.ndarray | None = None
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
) -> bytes:
    """The ``reference.npz`` file's bytes (deterministic: fixed zip member times)."""
    record = {"format": FORMAT, "tolerances": tolerances, "identity": identity, "names": names}
    arrays = {
        "images": np.ascontiguousarray(images_u8, dtype=np.uint8),
        "outputs": np.ascontiguousarray(outputs, dtype=np.float32),
        "record": np.frombuffer(json.dumps(record, sort_keys=True).encode(), dtype=np.uint8),
    }
    if int8 is not None:
        arrays["int8_images"] = np.ascontiguousarray(int8[0], dtype=np.uint8)
        arrays["int8_outputs"] = np.ascontiguousarray(int8[1], dtype=np.float32)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def read_reference(path: str | Path) -> GoldenReference:
    """A reference file, checked for shape and content; anything else is one :class:`ArtifactError`."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"reference not found: {path}")
    data = path.read_bytes()
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as found:
            arrays = {k: found[k] for k in found.files}
        record = json.loads(bytes(arrays["record"]).decode())
    except Exception as exc:  # a zip, npy and JSON reader each raise their own kinds
        raise ArtifactError(
            f"{path} is not a deploykit reference ({type(exc).__name__}: {exc})"[:300]
        ) from None
    images, outputs = arrays.get("images"), arrays.get("outputs")
    if (
        not isinstance(record, dict)
        or record.get("format") != FORMAT
        or images is None
        or outputs is None
        or images.dtype != np.uint8
        or images.ndim != 4
        or len(outputs) != len(images)
    ):
        raise ArtifactError(
            f"{path} is not a deploykit reference (format {FORMAT}: uint8 images and outputs)"
        )
    return GoldenReference(
        images,
        outputs,
        record,
        arrays.get("int8_images"),
        arrays.get("int8_outputs"),
        sha256_bytes(data),
        str(path),
    )


def check_reference(reference: GoldenReference, artifact: str, recorded: dict[str, Any]) -> None:
    """The reference must be the one the artifact was exported with: its sha256 when the artifact records
    one (``recorded["reference_sha256"]``), else its identity (preset, model args, weights). A mismatch is a
    :class:`ConfigError` (bad usage: exit 2) naming both."""
    want = recorded.get("reference_sha256")
    if want and want != reference.sha256:
        raise ConfigError(
            f"{reference.path} (sha256 {reference.sha256[:12]}) is not the reference {artifact} was exported "
            f"with (it records sha256 {want[:12]}): tampered, or from another export"
        )
    identity = reference.identity
    for key in IDENTITY_KEYS:
        ours, theirs = recorded.get(key), identity.get(key)
        if ours is not None and theirs is not None and ours != theirs:
            raise ConfigError(
                f"{reference.path} belongs to another model: its {key} is {theirs}, {artifact} records {ours}"
            )

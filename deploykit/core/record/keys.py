"""The artifact record's vocabulary: file names, the ONNX metadata keys, where weights came from, and the
schemas of the three files that carry a record (ONNX metadata, an engine's sidecar, ``manifest.json``)."""

from __future__ import annotations

import re
from enum import Enum

from deploykit.core.record.target import HardwareCompatibility
from deploykit.core.schema import (
    BOOL,
    FILE_NAME,
    LIST,
    MODEL_ARGS,
    PREPROCESSING,
    SHA256,
    STRING,
    Json,
    Leaf,
    ListOf,
    MapOf,
    Obj,
    Opt,
    int_in,
)

MANIFEST_NAME = "manifest.json"
#: an engine's sidecar is its file name + this suffix (``model.engine`` -> ``model.engine.json``)
SIDECAR_SUFFIX = ".json"

# ------------------------------------------------------------------------------------------ the keys
#: the ``metadata_props`` keys deploykit writes into every exported ONNX graph
KEY_VERSION = "deploykit.version"
KEY_PRESET = "deploykit.preset"
KEY_FAMILY = "deploykit.family"
KEY_INPUT = "deploykit.input"
KEY_PREPROCESSING = "deploykit.preprocessing"
KEY_REWRITES = "deploykit.rewrites"
KEY_OPSET = "deploykit.opset"
KEY_EXPORTER = "deploykit.exporter"
KEY_TORCH = "deploykit.torch"
KEY_MODEL_ARGS = "deploykit.model_args"
KEY_WEIGHTS_STATE = "deploykit.weights_state_sha256"
KEY_LABELS = "deploykit.labels"
KEY_PRECISION = "deploykit.precision"
KEY_PARITY = "deploykit.parity"
KEY_LINT = "deploykit.lint_violations"
KEY_REFERENCE = "deploykit.reference_sha256"
#: the node-level key of the PyTorch module scopes a node came from (:mod:`deploykit.core.scopes`)
KEY_NODE_SCOPES = "deploykit.scopes"
METADATA_KEYS = (
    KEY_VERSION,
    KEY_PRESET,
    KEY_FAMILY,
    KEY_INPUT,
    KEY_PREPROCESSING,
    KEY_REWRITES,
    KEY_OPSET,
    KEY_EXPORTER,
    KEY_TORCH,
    KEY_MODEL_ARGS,
    KEY_WEIGHTS_STATE,
    KEY_LABELS,
    KEY_PRECISION,
    KEY_PARITY,
    KEY_LINT,
    KEY_REFERENCE,
)


class WeightsSource(str, Enum):
    """Where an export's weights came from."""

    FILE = "file"
    MEMORY = "memory"  # a model handed to the Python API
    RANDOM = "random"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


# ---------------------------------------------------------------------------------------- schemas
#: the ``deploykit.*`` metadata of an exported ONNX file that deploykit reads back (``""``: absent)
METADATA = Obj(
    {
        KEY_PRESET: Opt(STRING),
        KEY_MODEL_ARGS: Opt(Json(MODEL_ARGS)),
        KEY_LABELS: Opt(Json(LIST)),
        KEY_WEIGHTS_STATE: Opt(SHA256),
        KEY_PREPROCESSING: Opt(Json(PREPROCESSING)),
        KEY_REFERENCE: Opt(SHA256),
        KEY_PRECISION: Opt(STRING),
    }
)
_PROFILE_SHAPE = ListOf(int_in(1), min_len=1, max_len=8, what="a shape (a list of positive integers)")
#: an engine's sidecar (``deploykit.engine.builder``); only what is read is checked
SIDECAR = Obj(
    {
        "precision": Opt(STRING),
        "preset": Opt(STRING),
        "model_args": Opt(MODEL_ARGS),
        "labels": Opt(LIST),
        "weights_state_sha256": Opt(SHA256),
        "random_weights": Opt(BOOL),
        "reference_sha256": Opt(SHA256),
        "preprocessing": Opt(PREPROCESSING),
        # readers take these two as objects when present (`.get(...)` on them)
        "profile": Opt(
            Obj(
                {
                    "input": Opt(STRING),
                    "min": Opt(_PROFILE_SHAPE),
                    "opt": Opt(_PROFILE_SHAPE),
                    "max": Opt(_PROFILE_SHAPE),
                }
            ),
            null=False,
        ),
        "source_onnx": Opt(Obj({"file": Opt(FILE_NAME), "sha256": Opt(SHA256)}), null=False),
        # where the engine can run (deploykit.core.record.target.EngineTarget); absent in older sidecars
        "tensorrt": Opt(STRING),
        "gpu": Opt(
            Obj(
                {
                    "name": Opt(STRING),
                    "compute_capability": Opt(
                        Leaf(
                            what="a compute capability such as '8.7'",
                            test=lambda v: isinstance(v, str) and re.fullmatch(r"\d{1,3}\.\d{1,3}", v),
                        )
                    ),
                    "memory_mib": Opt(int_in(0)),
                }
            )
        ),
        "l4t": Opt(STRING),
        "version_compatible": Opt(BOOL),
        "hardware_compatibility": Opt(
            Leaf(
                what=" or ".join(repr(level.value) for level in HardwareCompatibility),
                test=lambda v: v in [level.value for level in HardwareCompatibility],
            )
        ),
    },
    what="a JSON object (an engine sidecar)",
)
_IO_TENSOR = Obj(
    {
        "name": STRING,
        "dtype": Opt(STRING),
        "shape": ListOf(Leaf(what="a dimension", test=lambda v: v is not None)),
    },
    what="a JSON object (name, dtype, shape)",
)
#: what ``manifest.json`` tells readers (the record's fields, the I/O, the batch profile, the files)
MANIFEST = Obj(
    {
        "preset": Opt(STRING),
        "family": Opt(STRING),
        "model": Opt(
            Obj(
                {
                    "model_args": Opt(MODEL_ARGS),
                    "weights": Opt(
                        Leaf(
                            what="file, memory or random",
                            test=lambda v: v in [s.value for s in WeightsSource],
                        )
                    ),
                    "weights_state_sha256": Opt(SHA256),
                }
            )
        ),
        "weights": Opt(Obj({"path": Opt(STRING), "sha256": Opt(SHA256), "format": Opt(STRING)})),
        "random_weights": Opt(BOOL),
        "export_config": Opt(
            Obj(
                {
                    "seed": Opt(int_in(0, 2**32 - 1)),
                    "batch": Opt(Obj({"min": int_in(1), "opt": int_in(1), "max": int_in(1)})),
                }
            )
        ),
        "labels": Opt(LIST),
        "preprocessing": Opt(PREPROCESSING),
        "reference": Opt(Obj({"sha256": Opt(SHA256)})),
        "io": Opt(Obj({"inputs": Opt(ListOf(_IO_TENSOR)), "outputs": Opt(ListOf(_IO_TENSOR))})),
        "artifacts": Opt(MapOf(Obj({"sha256": Opt(SHA256), "bytes": Opt(int_in(0))}))),
        "fp16": Opt(Obj({"io": Opt(STRING)})),
        "parity": Opt(MapOf(Obj({}))),
    },
    what="a JSON object (a deploykit manifest)",
)

"""The shape of every file deploykit reads, declared once and checked before use.

A schema is a tree of a few node kinds — :class:`Leaf` (a type or a predicate), :class:`Opt` (may be
absent or ``null``), :class:`Obj` (a JSON object with named fields), :class:`ListOf`, :class:`MapOf`,
:class:`Json` (a string holding JSON: ONNX metadata values) and :class:`Custom` (a check across fields) —
and :func:`validate` walks a value along it. The first mismatch is one line,
``{file}: {field} must be {what}, got {value}`` (the value's ``repr``, cut at 60 characters), raised as an
:class:`~deploykit.core.errors.ArtifactError` (exit 2) unless the caller names another error class.

The files, their schema here and the one reader that applies it:

==========================  =====================  ==================================================
file                        schema                 checked by
==========================  =====================  ==================================================
``--baseline`` JSON         :data:`BASELINE`       ``deploykit.validation.baseline.read_baseline``
engine sidecar JSON         ``SIDECAR``            ``deploykit.core.record.read_sidecar``
``reference.npz`` record    :data:`REFERENCE`      ``deploykit.validation.reference.read_reference``
ONNX ``deploykit.*`` keys   ``METADATA``           ``deploykit.core.record.ArtifactRecord.from_metadata``
``manifest.json``           ``MANIFEST``           ``deploykit.core.record.read_manifest``
a preprocessing record      :data:`PREPROCESSING`  inside each of the above, and ``Preprocessing.from_dict``
==========================  =====================  ==================================================

(The artifact record's three schemas — ``METADATA``, ``SIDECAR``, ``MANIFEST`` — live beside the record
in :mod:`deploykit.core.record`.) Class names inside a record are only checked to be a
list here; each name is checked where it is used (:mod:`deploykit.core.labels`).

Standard library only (the layer's rule): no jsonschema dependency for a few dozen fields.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploykit.core.config import INTERPOLATIONS, MAX_INPUT_SIDE, crop_pct_problem
from deploykit.core.errors import ArtifactError, DeployKitError, display_path

#: how much of a wrong value a message shows
SHOWN = 60
#: the largest JSON file deploykit reads (a sidecar, a baseline, a manifest are a few kB)
MAX_JSON_BYTES = 16 << 20


class _Missing:
    def __repr__(self) -> str:
        return "nothing (the field is missing)"


MISSING = _Missing()


class Invalid(Exception):
    """One mismatch: ``field`` is not ``what`` (``message``: a whole sentence instead)."""

    def __init__(self, field: str, what: str, value: Any = MISSING, message: str | None = None) -> None:
        super().__init__(field)
        self.field, self.what, self.value, self.message = field, what, value, message

    def describe(self, where: str) -> str:
        """The one line: ``{where}: {field} must be {what}, got {value}`` (``{where} must be ...`` for the
        whole value)."""
        if self.message is not None:
            return f"{where}: {self.message}"
        subject = f"{where}: {self.field}" if self.field else where
        return f"{subject} must be {self.what}, got {shown(self.value)}"


def shown(value: Any) -> str:
    """A value in a message: its ``repr`` (one line by construction), cut at :data:`SHOWN` characters."""
    if value is MISSING:
        return repr(value)
    try:
        text = repr(value)
    except Exception:  # a value read from JSON always has a repr; be safe anyway
        text = f"<{type(value).__name__}>"
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def join(parent: str, key: object) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


class Node:
    """A schema node: :meth:`check` returns the value (converted where the node converts) or raises
    :class:`Invalid`."""

    what: str  # what a value must be, as a message says it (each node sets it)

    def check(self, value: Any, where: str) -> Any:  # pragma: no cover - every node overrides it
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Leaf(Node):
    what: str
    test: Callable[[Any], bool]

    def check(self, value: Any, where: str) -> Any:
        try:
            ok = bool(self.test(value))
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise Invalid(where, self.what, value)
        return value


@dataclass(frozen=True, kw_only=True)
class Opt(Node):
    """``node``, or absent, or (unless not ``null``) ``null``."""

    node: Node = field(kw_only=False)
    null: bool = True

    @property
    def what(self) -> str:  # type: ignore[override]
        return self.node.what

    def check(self, value: Any, where: str) -> Any:
        return None if value is None and self.null else self.node.check(value, where)


@dataclass(frozen=True, kw_only=True)
class Obj(Node):
    """A JSON object: the named ``fields`` (required unless :class:`Opt`); other keys are kept unchecked
    unless ``closed``."""

    fields: Mapping[str, Node] = field(kw_only=False)
    closed: bool = False
    what: str = "a JSON object"

    def check(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise Invalid(where, self.what, value)
        out = dict(value)
        for key, node in self.fields.items():
            if key in value:
                out[key] = node.check(value[key], join(where, key))
            elif not isinstance(node, Opt):
                raise Invalid(join(where, key), node.what)
        if self.closed:
            for key in value:
                if key not in self.fields:
                    raise Invalid(
                        join(where, key),
                        "",
                        message=f"{join(where, key)} is not a known field (known: {', '.join(self.fields)})",
                    )
        return out


@dataclass(frozen=True, kw_only=True)
class ListOf(Node):
    item: Node = field(kw_only=False)
    min_len: int = 0
    max_len: int | None = None
    what: str = ""

    def check(self, value: Any, where: str) -> list[Any]:
        sized = isinstance(value, list | tuple) and len(value) >= self.min_len
        if not sized or (self.max_len is not None and len(value) > self.max_len):
            raise Invalid(where, self.what or f"a list of {self.item.what}", value)
        return [self.item.check(v, join(where, i)) for i, v in enumerate(value)]


@dataclass(frozen=True, kw_only=True)
class MapOf(Node):
    """A JSON object whose every value is ``value`` (its keys are free)."""

    value: Node = field(kw_only=False)
    what: str = ""

    def check(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise Invalid(where, self.what or f"a JSON object of {self.value.what}", value)
        return {k: self.value.check(v, join(where, k)) for k, v in value.items()}


@dataclass(frozen=True, kw_only=True)
class Json(Node):
    """A string holding JSON that is ``node`` (an ONNX metadata value); returns the parsed value."""

    node: Node = field(kw_only=False)

    @property
    def what(self) -> str:  # type: ignore[override]
        return f"JSON text of {self.node.what}"

    def check(self, value: Any, where: str) -> Any:
        if not isinstance(value, str):
            raise Invalid(where, self.what, value)
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            raise Invalid(where, self.what, value) from None
        return self.node.check(parsed, where)


@dataclass(frozen=True, kw_only=True)
class Custom(Node):
    """A check written as a function ``check(value, where) -> value`` that raises :class:`Invalid`."""

    what: str
    fn: Callable[[Any, str], Any] = field(repr=False)

    def check(self, value: Any, where: str) -> Any:
        return self.fn(value, where)


def validate(
    value: Any,
    schema: Node,
    where: str | Path,
    *,
    root: str = "",
    error: type[DeployKitError] = ArtifactError,
) -> Any:
    """``value`` checked against ``schema`` (and converted where a node converts: :class:`Json`); the
    first mismatch is one ``error`` line ``{where}: {field} must be {what}, got {value}``. ``root``
    prefixes every field name (``deploykit.preprocessing``)."""
    try:
        return schema.check(value, root)
    except Invalid as bad:
        raise error(bad.describe(display_path(where))) from None
    except RecursionError:  # JSON nested thousands deep
        raise error(f"{display_path(where)}: nested too deeply to be a deploykit record") from None


def read_json(path: str | Path, what: str, *, error: type[DeployKitError] = ArtifactError) -> Any:
    """The JSON value of the file ``path`` (at most :data:`MAX_JSON_BYTES`): a file that cannot be read
    or is not JSON is one ``error`` line saying it is not ``what``. A missing file raises
    :class:`FileNotFoundError` (each reader decides what no file means)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise error(f"cannot read {what} {display_path(path)}: {exc.strerror or exc}") from None
    if len(data) > MAX_JSON_BYTES:
        raise error(f"{display_path(path)} is not {what}: over {MAX_JSON_BYTES >> 20} MiB")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = shown(str(exc)).strip("'\"")
        raise error(f"{display_path(path)} is not {what}: not JSON ({reason})") from None


# ----------------------------------------------------------------------------------------- leaves
def _number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def int_in(low: int, high: int | None = None) -> Leaf:
    if high is None:
        return Leaf(what=f"an integer >= {low}", test=lambda v: _int(v) and v >= low)
    return Leaf(what=f"an integer in [{low}, {high}]", test=lambda v: _int(v) and low <= v <= high)


STRING = Leaf(what="a string", test=lambda v: isinstance(v, str))
BOOL = Leaf(what="true or false", test=lambda v: isinstance(v, bool))
FINITE = Leaf(what="a finite number", test=lambda v: _number(v) and math.isfinite(v))
SHA256 = Leaf(
    what="a sha256 (64 hex digits)", test=lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)
)
LIST = Leaf(what="a list", test=lambda v: isinstance(v, list))
#: a file name beside the file that names it: no folder, no way out of it
FILE_NAME = Leaf(
    what="a plain file name",
    test=lambda v: isinstance(v, str) and v not in ("", ".", "..") and not re.search(r"[/\\\x00-\x1f]", v),
)

MODEL_ARGS = Obj(
    {"num_classes": Opt(int_in(0)), "image_size": Opt(int_in(1, MAX_INPUT_SIDE))},
    what="a JSON object of model arguments",
)


def _side(v: Any) -> bool:
    return _int(v) and 1 <= v <= MAX_INPUT_SIDE


def _input_shape(v: Any) -> bool:
    """``["batch", C, H, W]``: a named (or fixed) batch axis, then 1 or 3 channels and the sides."""
    return (
        isinstance(v, list)
        and len(v) == 4
        and (isinstance(v[0], str) or (_int(v[0]) and v[0] >= 1))
        and _int(v[1])
        and v[1] in (1, 3)
        and _side(v[2])
        and _side(v[3])
    )


INPUT_SHAPE = Leaf(what='["batch", C, H, W] (C 1 or 3, H and W integers in [1, 8192])', test=_input_shape)


# ----------------------------------------------------------------------------------- preprocessing
def _preprocessing(value: Any, where: str) -> dict[str, Any]:
    """A recorded ``data_config``: ``input_size`` ``[C, H, W]``, ``mean``/``std`` one finite number or one
    per channel (std positive), ``interpolation`` a PIL filter, ``crop_pct`` as
    :func:`~deploykit.core.config.crop_pct_problem` allows for that input size. Lists or tuples."""
    record = Obj(
        {"input_size": Leaf(what="[C, H, W] (C 1 or 3, H and W integers in [1, 8192])", test=_size3)},
        what="a JSON object (input_size, mean, std, interpolation, crop_pct)",
    ).check(value, where)
    channels = int(record["input_size"][0])
    for name in ("mean", "std"):
        values = record.get(name, MISSING)
        sub = join(where, name)
        kind = "positive finite numbers" if name == "std" else "finite numbers"
        ok = isinstance(values, list | tuple) and all(
            _number(v) and math.isfinite(v) and (name == "mean" or v > 0) for v in values
        )
        if not ok or len(values) not in (1, channels):
            fits = f" (this does not fit {channels} channel(s))" if ok else ""
            raise Invalid(sub, f"1 or {channels} {kind}, one per channel{fits}", values)
    interpolation = record.get("interpolation")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise Invalid(join(where, "interpolation"), f"one of {', '.join(INTERPOLATIONS)}", interpolation)
    crop = record.get("crop_pct")
    if crop is not None:
        problem = crop_pct_problem(crop, max(int(record["input_size"][1]), int(record["input_size"][2])))
        if problem is not None:
            raise Invalid(join(where, "crop_pct"), problem, crop)
    return record


def _size3(v: Any) -> bool:
    return (
        isinstance(v, list | tuple)
        and len(v) == 3
        and _int(v[0])
        and v[0] in (1, 3)
        and all(map(_side, v[1:]))
    )


PREPROCESSING = Custom(
    what="a preprocessing record (input_size, mean, std, interpolation, crop_pct)", fn=_preprocessing
)


# ----------------------------------------------------------------------------------------- files
#: ``deploykit validate --baseline FILE`` (:func:`deploykit.validation.baseline.baseline_record`)
BASELINE_METRICS = ("max_abs", "mean_abs", "max_rel", "cosine_min", "cosine_mean", "top1", "top5")
BASELINE = Obj(
    {
        "preset": STRING,
        "precision": STRING,
        "metrics": MapOf(
            Obj({m: Opt(FINITE) for m in BASELINE_METRICS}, closed=True, what="a JSON object of metrics"),
            what="a JSON object of outputs, each a JSON object of metric: number",
        ),
        "images": Opt(int_in(0)),
        "artifact_sha256": Opt(SHA256),
        "deploykit": Opt(STRING),
        "created": Opt(STRING),
    },
    what="a JSON object (a deploykit baseline)",
)

#: one image of a recorded dataset: its path in the dataset, its file's sha256, its class
DATASET_ROW = Leaf(
    what="[name, sha256, class]",
    test=lambda v: (
        isinstance(v, list)
        and len(v) == 3
        and isinstance(v[0], str)
        and isinstance(v[1], str)
        and re.fullmatch(r"[0-9a-f]{64}", v[1]) is not None
        and _int(v[2])
        and v[2] >= 0
    ),
)

_TOLERANCES = MapOf(
    MapOf(Opt(FINITE), what="a JSON object of finite numbers"),
    what="a JSON object of precisions, each a JSON object of finite numbers",
)
#: ``reference.npz``'s ``record`` (:func:`deploykit.validation.reference.reference_bytes`); its arrays
#: are checked against it by ``read_reference``
REFERENCE = Obj(
    {
        "format": Leaf(what="1", test=lambda v: _int(v) and v == 1),
        "tolerances": _TOLERANCES,
        "identity": Obj(
            {
                "preset": Opt(STRING),
                "family": Opt(STRING),
                "model_args": Opt(MODEL_ARGS),
                "weights_state_sha256": Opt(SHA256),
                "random_weights": Opt(BOOL),
                "input": Obj({"name": Opt(STRING), "shape": INPUT_SHAPE}),
                "preprocessing": PREPROCESSING,
            },
            what="a JSON object (preset, model_args, input, preprocessing, ...)",
        ),
        "names": Opt(ListOf(STRING)),
        "dataset": Opt(
            Obj(
                {
                    "source": STRING,
                    "sha256": SHA256,
                    "rows": ListOf(DATASET_ROW, min_len=1),
                    "top1": FINITE,
                    "top5": FINITE,
                },
                what="a JSON object (source, sha256, rows, top1, top5)",
            )
        ),
    },
    what="a JSON object (format, tolerances, identity, names, dataset)",
)

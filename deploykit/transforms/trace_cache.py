"""A cache of traced graphs: what ``torch.onnx.export`` made of an architecture, without its weights.

Tracing is most of an export's time (dynamo: 13-15 s of ``deploykit export cvt``'s ~24 s on a 2-core
machine), and what it produces depends on the architecture, not on the weights: every initializer of the
exported graph is one of the module's parameters or buffers, under its own name. So the first export of
an architecture stores the graph with its initializers emptied (a few hundred KB), and the next export of
the same architecture — a re-export, other weights (a fine-tune), ``--fp16`` or ``--int8`` after a plain
export — fills them from the module instead of tracing again. The filled graph is byte for byte what the
exporter writes (tested), and it goes through the same parity checks as a traced one; the export stage
traces afresh if a cached graph ever fails its check (docs/export.md#trace-cache).

The key covers everything the trace depends on: deploykit's own source files, the torch, onnx and
onnxscript versions, the exporter, opset, input shape and batch range, and the module tree — every
submodule's class (with the source of classes from outside torch and deploykit), its plain attributes
(head counts, scales, flags), its tensors' names, shapes and dtypes, and the values of tensors that are
plain attributes. A graph whose initializers are not all parameters or buffers by name (the TorchScript
exporter folds constants into new ones) is never stored.

``DEPLOYKIT_TRACE_CACHE=off`` turns the cache off; ``DEPLOYKIT_CACHE_DIR`` moves it (default
``$XDG_CACHE_HOME/deploykit`` or ``~/.cache/deploykit``; traces go to its ``traces/``). A cache that cannot
be read or written is skipped with a note, never an error: it only saves time.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from deploykit.core.io import atomic_write_bytes

#: traces kept (least recently used go first); one is 0.1-1 MB
MAX_ENTRIES = 64
_OFF = {"0", "off", "false", "no"}
_SOURCE_HASH: str | None = None


@dataclass
class TraceCacheInfo:
    """What the cache did for one export (recorded in the manifest)."""

    status: str = "off"  # "off", "miss", "hit", "stored"
    key: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"status": self.status, "key": self.key, "notes": list(self.notes)}


def cache_dir() -> Path | None:
    """Where traces are kept, or None when the cache is off."""
    if os.environ.get("DEPLOYKIT_TRACE_CACHE", "").strip().lower() in _OFF:
        return None
    root = os.environ.get("DEPLOYKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "deploykit"
    )
    return Path(root) / "traces"


def _source_hash() -> str:
    """sha256 over deploykit's own .py files (an edited checkout invalidates every trace)."""
    global _SOURCE_HASH
    if _SOURCE_HASH is None:
        package = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for path in sorted(package.rglob("*.py")):
            h.update(path.relative_to(package).as_posix().encode())
            h.update(path.read_bytes())
        _SOURCE_HASH = h.hexdigest()
    return _SOURCE_HASH


def _version(distribution: str) -> str | None:
    """An installed package's version without importing it (onnxscript takes 0.1-0.5 s to import)."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _plain(value: object) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _class_source(cls: type) -> str | None:
    """The source of a class defined outside torch and deploykit (a user's subclass), hashed."""
    module = cls.__module__ or ""
    if module.split(".")[0] in ("torch", "deploykit"):
        return None
    try:
        return hashlib.sha256(inspect.getsource(cls).encode()).hexdigest()
    except (OSError, TypeError):
        return "unavailable"


def _module_tree(model: nn.Module) -> list:
    tree = []
    for name, module in model.named_modules():
        cls = type(module)
        attrs, tensors = {}, {}
        for key, value in sorted(vars(module).items()):
            if key.startswith("_"):
                continue
            if isinstance(value, torch.Tensor):
                data = value.detach().cpu().contiguous().reshape(-1)
                digest = hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()
                tensors[key] = [list(value.shape), str(value.dtype), digest]
            elif _plain(value):
                attrs[key] = repr(value)
        own = [
            [n, list(t.shape), str(t.dtype)]
            for n, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            if t is not None
        ]
        tree.append([name, f"{cls.__module__}.{cls.__qualname__}", _class_source(cls), attrs, tensors, own])
    return tree


def trace_key(
    model: nn.Module,
    input_shape: tuple[int, ...],
    opset: int,
    exporter: str,
    max_batch: int,
    example_batch: int,
) -> str:
    from deploykit import __version__

    described = {
        "deploykit": [__version__, _source_hash()],
        "versions": [torch.__version__, onnx.__version__, _version("onnxscript")],
        "export": [exporter, opset, list(input_shape), max_batch, example_batch],
        "model": _module_tree(model),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def load(folder: Path, key: str, model: nn.Module, info: TraceCacheInfo) -> onnx.ModelProto | None:
    """The cached graph of ``key`` with ``model``'s tensors filled in, or None (a miss, or an entry that
    does not fit the model: then it is deleted)."""
    path = folder / f"{key}.onnx"
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # not cached (yet)
        return None
    except OSError as exc:
        info.notes.append(f"cache entry unreadable ({exc.strerror or exc})")
        return None
    tensors = _tensors(model)
    try:
        proto = onnx.load_from_string(data)
        for init in proto.graph.initializer:
            array = tensors[init.name].detach().cpu().contiguous().numpy()
            if (
                list(init.dims) != list(array.shape)
                or onnx.helper.tensor_dtype_to_np_dtype(init.data_type) != array.dtype
            ):
                raise ValueError(f"initializer {init.name} does not match the module's tensor")
            init.raw_data = array.tobytes()
    except Exception as exc:  # a corrupt or foreign file: drop it and trace
        info.notes.append(f"cache entry unusable, traced instead ({type(exc).__name__}: {exc})")
        path.unlink(missing_ok=True)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # most recently used
    return proto


def store(folder: Path, key: str, proto: onnx.ModelProto, model: nn.Module, info: TraceCacheInfo) -> None:
    """Keep ``proto``'s structure under ``key`` (initializers emptied) if every initializer is one of
    ``model``'s tensors by name; prune the oldest entries beyond :data:`MAX_ENTRIES`."""
    tensors = _tensors(model)
    fits = all(
        init.name in tensors and init.HasField("raw_data") and not init.external_data
        for init in proto.graph.initializer
    )
    if not fits:
        info.notes.append("not stored: the graph has initializers that are not the module's tensors")
        return
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(proto)
    for init in skeleton.graph.initializer:
        init.ClearField("raw_data")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / f"{key}.onnx", skeleton.SerializeToString(deterministic=True))
        entries = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[MAX_ENTRIES:]:
            old.unlink(missing_ok=True)
    except OSError as exc:
        info.notes.append(f"not stored: {folder} is not writable ({exc.strerror or exc})")
        return
    info.status = "stored"


def export_cached(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    opset: int,
    exporter: str,
    max_batch: int,
    *,
    fresh: bool = False,
) -> tuple[onnx.ModelProto, TraceCacheInfo]:
    """:func:`~deploykit.transforms.onnx_export.export_onnx` through the cache: a hit fills the cached
    graph with ``model``'s tensors; a miss (or ``fresh``: trace even if cached) traces and stores."""
    from deploykit.transforms.onnx_export import EXAMPLE_BATCH, export_onnx

    folder, info = cache_dir(), TraceCacheInfo()
    if folder is None:
        return export_onnx(model, input_shape, opset, exporter, max_batch), info
    info.key = trace_key(model, input_shape, opset, exporter, max_batch, EXAMPLE_BATCH)
    if not fresh:
        proto = load(folder, info.key, model, info)
        if proto is not None:
            info.status = "hit"
            return proto, info
    info.status = "miss"
    proto = export_onnx(model, input_shape, opset, exporter, max_batch)
    store(folder, info.key, proto, model, info)
    return proto, info

"""A cache of traced graphs: what ``torch.onnx.export`` made of an architecture, without its weights.

Tracing is most of an export's time (docs/measured.md), and what it produces depends on the architecture,
not on the weights: every initializer of the exported graph is one of the module's parameters or buffers,
under its own name. So the first export of an architecture stores the graph with its initializers emptied
(0.1-2.5 MB), and the next export of the same architecture — a re-export, other weights (a fine-tune),
``--fp16`` or ``--int8`` after a plain export — fills them from the module instead of tracing again. The
filled graph is byte for byte what the exporter writes (tested), and it goes through the same parity checks
as a traced one; the export stage traces afresh if a cached graph ever fails its check.

The key covers everything the trace depends on: deploykit's own source files, the torch, onnx and
onnxscript versions, the exporter, opset, input shape and batch range, and the module tree — every
submodule's class (with the source of classes from outside torch and deploykit), its plain attributes
(head counts, scales, flags), its tensors' names, shapes and dtypes, and the values of tensors that are
plain attributes. A graph whose initializers are not all parameters or buffers by name (the TorchScript
exporter folds constants into new ones) is never stored.

Trust (docs/export.md#trace-cache): the parity checks cannot prove a cached graph right, so an entry is
used only if this user's deploykit wrote it — sealed with an HMAC under a per-user secret, in a regular
file and a folder of this user's (:mod:`deploykit.transforms.trace_cache_trust`). Every refusal is a note
on :class:`TraceCacheInfo` and the export traces; a refused entry is not deleted (the fresh trace's store
replaces it with one rename). Pruning only removes regular files owned by this user whose name is a key.

``DEPLOYKIT_TRACE_CACHE=off`` turns the cache off; ``DEPLOYKIT_CACHE_DIR`` moves it (default
``$XDG_CACHE_HOME/deploykit`` or ``~/.cache/deploykit``; traces go to its ``traces/``). A cache that cannot
be read or written, a key file that cannot be used and an entry that cannot be trusted are notes, never
errors: the cache only saves time.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from deploykit.core.artifacts import Named
from deploykit.core.io import atomic_write_bytes
from deploykit.transforms.trace_cache_trust import (
    Refused,
    make_private_dirs,
    read_own_file,
    seal,
    secret_key,
    unseal,
    usable_folder,
)

#: traces kept (least recently used go first); one is 0.1-2.5 MB
MAX_ENTRIES = 64
#: an entry longer than this is not read (a trace is 0.1-2.5 MB)
MAX_ENTRY_BYTES = 64 * 2**20
_ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.onnx")
_OFF = {"0", "off", "false", "no"}
_SOURCE_HASH: str | None = None


class CacheStatus(Named):
    """What the cache did for one export (see :class:`TraceCacheInfo`)."""

    OFF = "off"
    MISS = "miss"
    HIT = "hit"
    STORED = "stored"


@dataclass(kw_only=True)
class TraceCacheInfo:
    """What the cache did for one export (recorded in the manifest): ``off`` (turned off, or its folder
    or key cannot be used: see ``notes``), ``miss`` (traced), ``hit`` (a cached graph filled) or
    ``stored`` (traced and kept)."""

    status: CacheStatus = CacheStatus.OFF
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
    """An installed package's version, read without importing the package (importing onnxscript takes
    long enough to matter, docs/measured.md)."""
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
    *,
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


def load(
    folder: Path, key: str, model: nn.Module, *, info: TraceCacheInfo, secret: bytes
) -> onnx.ModelProto | None:
    """The cached graph of ``key`` with ``model``'s tensors filled in, or None: not cached, or an entry
    that is refused (not a regular file of this user's, not sealed under ``secret`` for ``key``) or does
    not fit the model — a note says which. Nothing here raises, and nothing is deleted: the fresh trace's
    store replaces the entry."""
    path = folder / f"{key}.onnx"
    try:
        data = read_own_file(path, MAX_ENTRY_BYTES, 0o022)
        if data is None:  # not cached (yet)
            return None
    except Refused as exc:
        info.notes.append(f"cache entry not used ({exc}), traced instead")
        return None
    except OSError as exc:
        info.notes.append(f"cache entry unreadable ({exc.strerror or exc}), traced instead")
        return None
    try:
        payload = unseal(secret, key, data)
    except Refused as exc:
        info.notes.append(f"cache entry not written by this user's deploykit ({exc}), traced instead")
        return None
    tensors = _tensors(model)
    try:
        proto = onnx.load_from_string(payload)
        for init in proto.graph.initializer:
            array = tensors[init.name].detach().cpu().contiguous().numpy()
            if (
                list(init.dims) != list(array.shape)
                or onnx.helper.tensor_dtype_to_np_dtype(init.data_type) != array.dtype
            ):
                raise ValueError(f"initializer {init.name} does not match the module's tensor")
            init.raw_data = array.tobytes()
    except Exception as exc:  # this user's entry, but not a graph of this model (a deploykit bug)
        info.notes.append(f"cache entry unusable, traced instead ({type(exc).__name__}: {exc})")
        return None
    with contextlib.suppress(OSError):
        os.utime(path, follow_symlinks=False)  # most recently used
    return proto


def _prune(folder: Path) -> None:
    """Remove the least recently used entries beyond :data:`MAX_ENTRIES`. Only regular files owned by
    this user whose name is a key count and are removed (a symbolic link is not followed, a user's
    ``notes.onnx`` stays); a file that cannot be removed is left."""
    entries = []
    with os.scandir(folder) as scan:
        for entry in scan:
            if not _ENTRY_NAME.fullmatch(entry.name):
                continue
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                    entries.append((st.st_mtime, entry.path))
    entries.sort(reverse=True)
    for _, path in entries[MAX_ENTRIES:]:
        with contextlib.suppress(OSError):
            os.unlink(path)


def store(
    folder: Path, key: str, proto: onnx.ModelProto, model: nn.Module, *, info: TraceCacheInfo, secret: bytes
) -> None:
    """Keep ``proto``'s structure under ``key`` (initializers emptied, sealed under ``secret``) if every
    initializer is one of ``model``'s tensors by name; prune the oldest entries beyond
    :data:`MAX_ENTRIES`. The folder (and parents) are created 0700, the entry 0600."""
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
        make_private_dirs(folder)
        atomic_write_bytes(
            folder / f"{key}.onnx",
            seal(secret, key, skeleton.SerializeToString(deterministic=True)),
            private=True,
        )
    except OSError as exc:
        info.notes.append(f"not stored: {folder} is not writable ({exc.strerror or exc})")
        return
    with contextlib.suppress(OSError):
        _prune(folder)
    info.status = CacheStatus.STORED


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
    graph with ``model``'s tensors; a miss (or ``fresh``: trace even if cached) traces and stores. When
    the folder or the secret cannot be used the status is ``off`` (with a note) and the export traces."""
    from deploykit.transforms.onnx_export import EXAMPLE_BATCH, export_onnx

    folder, info = cache_dir(), TraceCacheInfo()
    if folder is None or not usable_folder(folder, info):
        return export_onnx(model, input_shape, opset, exporter, max_batch), info
    secret = secret_key(info)
    if secret is None:
        return export_onnx(model, input_shape, opset, exporter, max_batch), info
    info.key = trace_key(
        model, input_shape, opset=opset, exporter=exporter, max_batch=max_batch, example_batch=EXAMPLE_BATCH
    )
    if not fresh:
        proto = load(folder, info.key, model, info=info, secret=secret)
        if proto is not None:
            info.status = CacheStatus.HIT
            return proto, info
    info.status = CacheStatus.MISS
    proto = export_onnx(model, input_shape, opset, exporter, max_batch)
    store(folder, info.key, proto, model, info=info, secret=secret)
    return proto, info

"""The trace cache (deploykit.transforms.trace_cache): a warm export fills the cached graph with the
model's own weights instead of tracing — byte for byte the graph a fresh trace writes — and a cache entry
that is corrupt, foreign, planted or wrong never changes what an export publishes and never fails it.

Most tests plant files in a fresh cache folder next to the one entry that the module-scoped ``stored``
export wrote, under the same per-user key (``config_home``): one trace serves them all."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

import deploykit
import deploykit.transforms.onnx_export as onnx_export
from deploykit.core.config import default_config
from deploykit.models import create_model
from deploykit.models.checkpoints import save_checkpoint
from deploykit.transforms import trace_cache
from deploykit.transforms import trace_cache_trust as trust
from deploykit.transforms.trace_cache import TraceCacheInfo

SIZE = 64
HEADER = len(trust.MAGIC) + trust.MAC_BYTES
AS_ROOT = os.geteuid() == 0
OTHER_UID = 65534  # nobody


def _model(seed: int):
    torch.manual_seed(seed)
    # three blocks (one pooling) instead of twelve: a quarter of the tracing, the same kinds of layers
    return create_model(
        "hvt_ti_1", image_size=SIZE, num_classes=10, num_encoder_blocks=3, hvt_pool=[1]
    ).eval()


def _config():
    return dataclasses.replace(default_config("hvt"), image_size=SIZE)  # dynamo, the default exporter


def _cache_env(patch: pytest.MonkeyPatch, root: Path, config_home: Path) -> Path:
    """The cache on, in ``root/cache``, with the per-user key file under ``config_home``."""
    patch.setenv("DEPLOYKIT_TRACE_CACHE", "on")
    patch.setenv("DEPLOYKIT_CACHE_DIR", str(root / "cache"))
    patch.setenv("XDG_CONFIG_HOME", str(config_home))
    patch.delenv(trust.KEY_ENV, raising=False)
    return root / "cache" / "traces"


@dataclasses.dataclass
class Stored:
    name: str  # the entry's file name: <key>.onnx
    entry: bytes
    manifest: dict
    onnx: bytes  # the model.onnx of that export (traced)


@pytest.fixture(scope="module")
def config_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("config")


@pytest.fixture(scope="module")
def stored(tmp_path_factory, config_home) -> Stored:
    """``_model(1)`` exported once with the cache on: the entry it stored."""
    root = tmp_path_factory.mktemp("stored")
    with pytest.MonkeyPatch.context() as patch:
        folder = _cache_env(patch, root, config_home)
        result = deploykit.export(_model(1), root / "out", config=_config())
    (entry,) = folder.glob("*.onnx")
    return Stored(entry.name, entry.read_bytes(), result.manifest, result.onnx_path.read_bytes())


@pytest.fixture(scope="module")
def cold(tmp_path_factory) -> bytes:
    """``_model(2)`` (other weights, the same architecture) exported with DEPLOYKIT_TRACE_CACHE=off."""
    root = tmp_path_factory.mktemp("cold")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEPLOYKIT_TRACE_CACHE", "off")
        result = deploykit.export(_model(2), root / "out", config=_config())
    assert result.manifest["trace_cache"]["status"] == "off"
    return result.onnx_path.read_bytes()


@pytest.fixture
def cache(tmp_path, monkeypatch, config_home) -> Path:
    """A fresh cache folder (not created yet), under the same per-user key as ``stored``."""
    return _cache_env(monkeypatch, tmp_path, config_home)


def _secret() -> bytes:
    info = TraceCacheInfo()
    secret = trust.secret_key(info)
    assert secret is not None, info.notes
    return secret


def _plant(cache: Path, name: str, data: bytes) -> Path:
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    (cache / name).write_bytes(data)
    return cache / name


def _key(stored: Stored) -> str:
    return stored.name.removesuffix(".onnx")


def _no_tracing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("traced although the graph was cached")

    monkeypatch.setattr(onnx_export, "export_onnx", refuse)


def _canned_tracing(monkeypatch, stored: Stored) -> None:
    """export_onnx returns ``stored``'s graph filled with ``_model(1)``'s tensors, at once."""
    payload = stored.entry[HEADER:]
    traced = onnx.load_from_string(payload)
    model = _model(1)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for init in traced.graph.initializer:
        init.raw_data = tensors[init.name].detach().contiguous().numpy().tobytes()

    def canned(*args, **kwargs):
        copy = onnx.ModelProto()
        copy.CopyFrom(traced)
        return copy

    monkeypatch.setattr(onnx_export, "export_onnx", canned)


def _export_cached():
    return trace_cache.export_cached(_model(1), (3, SIZE, SIZE), 20, "dynamo", 64)


def _poisoned(payload: bytes) -> bytes:
    """A valid graph that fits every initializer but answers differently: +5e-5 on every logit, and the
    logits negated at batch 5 only (the parity checks run batches 1, 3 and 8)."""
    model = onnx.load_from_string(payload)
    graph = model.graph
    out = graph.output[0].name
    producer = next(node for node in graph.node if out in node.output)
    producer.output[list(producer.output).index(out)] = "poison_clean"

    def const(name, dtype, dims, values):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, dims, values))

    graph.node.extend(
        [
            const("poison_eps", TensorProto.FLOAT, [], [5e-5]),
            helper.make_node("Add", ["poison_clean", "poison_eps"], ["poison_shifted"]),
            helper.make_node("Shape", ["poison_clean"], ["poison_shape"]),
            const("poison_axis", TensorProto.INT64, [1], [0]),
            helper.make_node("Gather", ["poison_shape", "poison_axis"], ["poison_batch"]),
            const("poison_five", TensorProto.INT64, [1], [5]),
            helper.make_node("Equal", ["poison_batch", "poison_five"], ["poison_at_five"]),
            helper.make_node("Neg", ["poison_shifted"], ["poison_negated"]),
            helper.make_node("Where", ["poison_at_five", "poison_negated", "poison_shifted"], [out]),
        ]
    )
    return model.SerializeToString()


def test_warm_export_fills_other_weights_byte_identical_to_a_fresh_trace(
    cache, stored, cold, monkeypatch, tmp_path
):
    assert stored.manifest["trace_cache"]["status"] == "stored"
    assert stored.entry.startswith(trust.MAGIC)
    skeleton = onnx.load_from_string(stored.entry[HEADER:])
    assert all(not init.raw_data for init in skeleton.graph.initializer)  # no weights in the cache
    assert len(stored.entry) < 0.1 * len(stored.onnx)
    _plant(cache, stored.name, stored.entry)

    with monkeypatch.context() as patch:
        _no_tracing(patch)
        warm = deploykit.export(_model(2), tmp_path / "warm", config=_config())  # other weights
    assert warm.manifest["trace_cache"]["status"] == "hit" and warm.manifest["passed"]
    assert warm.onnx_path.read_bytes() == cold  # the same bytes as with the cache off
    assert warm.onnx_path.read_bytes() != stored.onnx


def test_another_architecture_misses(cache, tmp_path):
    model = _model(1)
    export = {"opset": 20, "exporter": "dynamo", "max_batch": 64, "example_batch": 2}
    key = trace_cache.trace_key(model, (3, SIZE, SIZE), **export)
    assert key == trace_cache.trace_key(_model(2), (3, SIZE, SIZE), **export)  # weights: same key
    model.encoder.blocks[0].attn.num_heads = 1  # a plain attribute the forward reads
    assert trace_cache.trace_key(model, (3, SIZE, SIZE), **export) != key
    base = {"input_shape": (3, SIZE, SIZE), "opset": 20, "exporter": "dynamo", "max_batch": 64}
    for change in (
        {"input_shape": (3, SIZE, 2 * SIZE)},
        {"opset": 18},
        {"exporter": "torchscript"},
        {"max_batch": 8},
    ):
        assert trace_cache.trace_key(_model(1), **{**base, **change}, example_batch=2) != key


def test_a_poisoned_entry_is_never_published(cache, stored, cold, tmp_path):
    """A planted graph that passes every parity check (a tiny shift, a batch-5 backdoor) under the right
    key, with the MAC of the entry it replaced: refused before parsing, traced, the cache-off bytes."""
    poisoned = _poisoned(stored.entry[HEADER:])
    entry = _plant(cache, stored.name, stored.entry[:HEADER] + poisoned)
    result = deploykit.export(_model(2), tmp_path / "out", config=_config())
    info = result.manifest["trace_cache"]
    assert info["status"] == "stored" and result.manifest["passed"]
    assert "not written by this user's deploykit (its MAC does not match" in info["notes"][0]
    assert result.onnx_path.read_bytes() == cold
    assert entry.read_bytes() == stored.entry  # the fresh trace replaced it


def test_an_entry_of_this_user_that_fails_parity_is_traced_afresh(cache, stored, tmp_path):
    """A graph this user's deploykit sealed (a bug, say) that fits every initializer but computes
    something else: its parity check fails, the export traces afresh, publishes the right graph and
    stores it over the wrong one."""
    wrong = onnx.load_from_string(stored.entry[HEADER:])
    add = next(n for n in wrong.graph.node if n.op_type == "Add")
    add.op_type = "Sub"
    _plant(cache, stored.name, trust.seal(_secret(), _key(stored), wrong.SerializeToString()))
    fixed = deploykit.export(_model(1), tmp_path / "fixed", config=_config())
    info = fixed.manifest["trace_cache"]
    assert info["status"] == "stored" and "failed its parity check" in " ".join(info["notes"])
    assert fixed.manifest["passed"] and fixed.onnx_path.read_bytes() == stored.onnx
    assert (cache / stored.name).read_bytes() == stored.entry


def test_a_zero_byte_or_fifo_entry_leaves_the_next_exports_green(cache, stored, tmp_path):
    """``deploykit export`` (a real process, a real exit code) of the same architecture as ``stored``
    (a deploykit checkpoint of ``_model(1)``): a zero-byte entry parsed as an empty graph (exit 2), a FIFO
    blocked the read forever. Now each is a note, the export traces and stores, the next one hits."""
    weights = save_checkpoint(_model(1), tmp_path / "hvt.safetensors")

    def export(out: str) -> dict:
        cmd = [sys.executable, "-m", "deploykit", "export", "hvt_ti_1", "--weights", str(weights)]
        cmd += ["--out", str(tmp_path / out), "--no-engine", "--quiet"]
        proc = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / out / "model.onnx").read_bytes() == stored.onnx
        return json.loads((tmp_path / out / "manifest.json").read_text())["trace_cache"]

    entry = _plant(cache, stored.name, b"")
    first = export("zero")
    assert first["key"] == _key(stored) and first["status"] == "stored"
    assert first["notes"] == ["cache entry not written by this user's deploykit (empty), traced instead"]
    assert export("zero-then")["status"] == "hit"

    entry.unlink()
    os.mkfifo(entry)
    first = export("fifo")
    assert first["status"] == "stored"
    assert first["notes"] == ["cache entry not used (not a regular file), traced instead"]
    assert export("fifo-then")["status"] == "hit"


ENTRIES = {
    # kind: (what the note says, root only)
    "symlink to /dev/zero": ("cache entry not used (a symbolic link)", False),
    "dangling symlink": ("cache entry not used (a symbolic link)", False),
    "symlink to the good entry": ("cache entry not used (a symbolic link)", False),
    "fifo": ("cache entry not used (not a regular file)", False),
    "folder": ("cache entry not used (not a regular file)", False),
    "group-writable": ("cache entry not used (writable by group or others (mode 0664))", False),
    "owned by another user": (f"cache entry not used (owned by another user (uid {OTHER_UID}))", True),
    "too large": ("cache entry not used (larger than", False),
    "zero bytes": ("not written by this user's deploykit (empty)", False),
    "a plain graph": ("not written by this user's deploykit (no deploykit trace header)", False),
    "sealed under another key": ("not written by this user's deploykit (its MAC does not match", False),
    "moved from another entry": ("not written by this user's deploykit (its MAC does not match", False),
    "sealed garbage": ("cache entry unusable, traced instead (DecodeError", False),
}


@pytest.mark.parametrize("kind", list(ENTRIES))
def test_an_unusable_entry_is_a_note(kind, cache, stored, tmp_path, monkeypatch):
    note, root_only = ENTRIES[kind]
    if root_only and not AS_ROOT:
        pytest.skip("only root can give a file to another user")
    key, secret, payload = _key(stored), _secret(), stored.entry[HEADER:]
    path = cache / stored.name
    cache.mkdir(mode=0o700, parents=True)
    if kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "dangling symlink":
        path.symlink_to(tmp_path / "nowhere.onnx")
    elif kind == "symlink to the good entry":
        good = _plant(tmp_path, "good.onnx", stored.entry)
        path.symlink_to(good)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "group-writable":
        _plant(cache, stored.name, stored.entry).chmod(0o664)
    elif kind == "owned by another user":
        os.chown(_plant(cache, stored.name, stored.entry), OTHER_UID, OTHER_UID)
    elif kind == "too large":
        monkeypatch.setattr(trace_cache, "MAX_ENTRY_BYTES", len(stored.entry) - 1)
        _plant(cache, stored.name, stored.entry)
    elif kind == "zero bytes":
        _plant(cache, stored.name, b"")
    elif kind == "a plain graph":
        _plant(cache, stored.name, payload)
    elif kind == "sealed under another key":
        _plant(cache, stored.name, trust.seal(b"\x01" * 32, key, payload))
    elif kind == "moved from another entry":
        _plant(cache, stored.name, trust.seal(secret, "f" * 64, payload))
    elif kind == "sealed garbage":
        _plant(cache, stored.name, trust.seal(secret, key, b"not an onnx file"))
    before = os.lstat(path)

    info = TraceCacheInfo()
    assert trace_cache.load(cache, key, _model(1), info=info, secret=secret) is None
    assert len(info.notes) == 1 and note in info.notes[0], info.notes
    assert os.lstat(path).st_ino == before.st_ino  # not deleted

    # the export traces and its store replaces the entry (a folder stays: then it is not stored)
    _canned_tracing(monkeypatch, stored)
    monkeypatch.setattr(trace_cache, "trace_key", lambda *args, **kwargs: key)
    proto, info = _export_cached()
    assert proto.graph.initializer and note in info.notes[0]
    monkeypatch.setattr(trace_cache, "MAX_ENTRY_BYTES", 64 * 2**20)
    if kind == "folder":
        assert info.status == "miss" and "not stored" in info.notes[1]
    else:
        assert info.status == "stored" and path.read_bytes() == stored.entry
        assert trace_cache.load(cache, key, _model(1), info=TraceCacheInfo(), secret=secret) is not None


def _deny_writes(monkeypatch, folder: Path) -> None:
    """Make ``folder`` read-only. Root ignores the mode bits: for root, refuse every call that would
    create, rename or remove something in it."""
    folder.chmod(0o500)
    if not AS_ROOT:
        return
    folder = folder.resolve()

    def inside(path) -> bool:
        return Path(os.fsdecode(path)).resolve().parent == folder

    def deny(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    def guard(name, paths):
        real = getattr(os, name)

        def guarded(*args, **kwargs):
            if any(inside(args[i]) for i in paths if i < len(args)):
                deny(args[paths[0]])
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, guarded)

    real_open = os.open

    def guarded_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and inside(path):
            deny(path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    for name, paths in (("unlink", (0,)), ("remove", (0,)), ("rmdir", (0,)), ("mkdir", (0,))):
        guard(name, paths)
    for name in ("replace", "rename", "link", "symlink"):
        guard(name, (0, 1))


def test_a_read_only_cache_holding_a_bad_entry_never_fails(cache, stored, monkeypatch):
    """A corrupt entry in a folder this user cannot write: the export traces; nothing is removed or
    stored, and nothing raises."""
    entry = _plant(cache, stored.name, b"not an onnx file")
    _canned_tracing(monkeypatch, stored)
    monkeypatch.setattr(trace_cache, "trace_key", lambda *args, **kwargs: _key(stored))
    with monkeypatch.context() as patch:
        _deny_writes(patch, cache)
        try:
            proto, info = _export_cached()
        finally:
            cache.chmod(0o700)
    assert proto.graph.initializer and info.status == "miss"
    assert info.notes == [
        "cache entry not written by this user's deploykit (no deploykit trace header), traced instead",
        f"not stored: {cache} is not writable (Permission denied)",
    ]
    assert entry.read_bytes() == b"not an onnx file"


def test_pruning_removes_only_entries_of_this_user(cache, stored, monkeypatch, tmp_path):
    """Beyond MAX_ENTRIES the least recently used entries go — and only files whose name is a key,
    regular and owned by this user: a user's ``notes.onnx``, a symbolic link and its target stay."""
    monkeypatch.setattr(trace_cache, "MAX_ENTRIES", 2)
    oldest = {}
    for i, name in enumerate(["notes.onnx", "A" * 64 + ".onnx", "a" * 63 + ".onnx", "0" * 64 + ".onnx"]):
        oldest[name] = _plant(cache, name, b"kept")
        os.utime(oldest[name], (i, i))
    target = _plant(tmp_path, "target.onnx", b"kept")
    (cache / ("1" * 64 + ".onnx")).symlink_to(target)
    os.utime(cache / ("1" * 64 + ".onnx"), (5, 5), follow_symlinks=False)
    if AS_ROOT:
        os.chown(_plant(cache, "2" * 64 + ".onnx", b"kept"), OTHER_UID, OTHER_UID)
        os.utime(cache / ("2" * 64 + ".onnx"), (6, 6))
        oldest["2" * 64 + ".onnx"] = cache / ("2" * 64 + ".onnx")
    entries = [_plant(cache, f"{i:064x}.onnx", stored.entry) for i in range(10, 13)]
    for i, path in enumerate(entries):
        os.utime(path, (100 + i, 100 + i))
    del oldest["0" * 64 + ".onnx"]  # the only old entry that is this user's and named as a key

    _canned_tracing(monkeypatch, stored)
    monkeypatch.setattr(trace_cache, "trace_key", lambda *args, **kwargs: _key(stored))
    _, info = _export_cached()
    assert info.status == "stored"
    left = sorted(p.name for p in cache.iterdir())
    assert left == sorted([*oldest, "1" * 64 + ".onnx", stored.name, entries[-1].name])
    assert all(path.read_bytes() == b"kept" for path in [*oldest.values(), target])


def test_the_cache_folder_is_private(cache, stored, monkeypatch):
    _canned_tracing(monkeypatch, stored)
    _, info = _export_cached()
    assert info.status == "stored" and not info.notes
    for folder in (cache, cache.parent):  # traces/ and the cache folder deploykit created
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    (entry,) = cache.glob("*.onnx")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600

    cache.chmod(0o777)  # this user's folder, opened up (by hand, or an older deploykit and umask 002)
    _, info = _export_cached()
    assert info.status == "hit"
    assert info.notes == [f"{cache} was open to group or others (mode 0777): made it 0700"]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


@pytest.mark.skipif(not AS_ROOT, reason="only root can give a folder to another user")
def test_a_cache_folder_of_another_user_is_not_used(cache, stored, monkeypatch):
    _plant(cache, stored.name, stored.entry)
    os.chown(cache, OTHER_UID, OTHER_UID)
    _canned_tracing(monkeypatch, stored)
    monkeypatch.setattr(trace_cache, "trace_key", lambda *args, **kwargs: _key(stored))
    _, info = _export_cached()
    assert info.status == "off"
    assert info.notes == [f"trace cache off: {cache} is owned by another user (uid {OTHER_UID})"]
    assert [p.name for p in cache.iterdir()] == [stored.name]


def test_the_key_file_is_private_and_binds_the_entries(cache, stored, monkeypatch, tmp_path):
    """The key file is made 0600 in a 0700 folder; an entry sealed under one key is refused under another
    (DEPLOYKIT_TRACE_CACHE_KEY); a key that cannot be trusted turns the cache off for the export."""
    _canned_tracing(monkeypatch, stored)
    monkeypatch.setattr(trace_cache, "trace_key", lambda *args, **kwargs: _key(stored))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    _, info = _export_cached()
    assert info.status == "stored" and not info.notes
    key_file = tmp_path / "config" / "deploykit" / "trace-cache.key"
    assert trust.key_file() == key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and key_file.stat().st_size == 32
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert _export_cached()[1].status == "hit"

    monkeypatch.setenv(trust.KEY_ENV, "ab" * 32)  # another key: the entry is not this one's
    _, info = _export_cached()
    assert info.status == "stored"
    assert info.notes == [
        "cache entry not written by this user's deploykit (its MAC does not match this user's key), "
        "traced instead"
    ]
    assert _export_cached()[1].status == "hit"
    for bad in ("ab" * 31, "not hex"):
        monkeypatch.setenv(trust.KEY_ENV, bad)
        _, info = _export_cached()
        assert info.status == "off" and info.notes[0].startswith(f"trace cache off: {trust.KEY_ENV}")

    monkeypatch.delenv(trust.KEY_ENV)
    key_file.chmod(0o640)
    _, info = _export_cached()
    assert info.status == "off"
    assert info.notes[0].startswith(f"trace cache off: key file {key_file} not used (readable by group")
    key_file.chmod(0o600)
    assert _export_cached()[1].status == "stored"  # this key file's entry was replaced meanwhile

    key_file.rename(tmp_path / "elsewhere.key")
    key_file.symlink_to(tmp_path / "elsewhere.key")
    _, info = _export_cached()
    assert info.status == "off" and "not used (a symbolic link" in info.notes[0]


def test_the_first_exports_agree_on_one_key_file(tmp_path, monkeypatch):
    """The key file is published with link(): a second writer keeps the first one's key; without hard
    links it is created O_EXCL."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv(trust.KEY_ENV, raising=False)
    path = trust.key_file()
    trust._create_key_file(path)
    first = path.read_bytes()
    trust._create_key_file(path)  # lost the race: the key stays
    assert path.read_bytes() == first and _secret() == first
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left

    path.unlink()

    def no_links(*args):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    assert len(_secret()) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600

    path.unlink()
    monkeypatch.setenv(trust.KEY_ENV, "0f" * 40)  # the secret given: no key file is made
    assert _secret() == bytes.fromhex("0f" * 40) and not path.exists()
    monkeypatch.delenv(trust.KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/config")  # ignored, as the XDG spec says
    assert trust.key_file() == Path.home() / ".config" / "deploykit" / "trace-cache.key"


def test_unwritable_cache_never_fails_an_export(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be created under a file")
    _cache_env(monkeypatch, tmp_path, tmp_path / "config")
    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(blocker))
    result = deploykit.export(_model(1), tmp_path / "out", config=_config())
    info = result.manifest["trace_cache"]
    assert result.manifest["passed"] and info["status"] == "miss" and "not writable" in info["notes"][0]


def test_torchscript_graphs_are_not_stored(cache, tmp_path):
    """The TorchScript exporter folds weights into new initializers: such a graph cannot be refilled."""
    config = dataclasses.replace(_config(), exporter="torchscript")
    result = deploykit.export(_model(1), tmp_path / "ts", config=config)
    info = result.manifest["trace_cache"]
    assert info["status"] == "miss" and "not stored" in info["notes"][0]
    assert not list(cache.glob("*.onnx"))

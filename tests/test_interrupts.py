"""Interrupts abort, always (SIGINT: exit 130, SIGTERM: exit 143), never fall back to another exporter and
never publish; the FP16 stage's background child dies with its parent; a dead export's staging folder is
removed by the next export; a publish leaves exactly what the new manifest lists."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploykit.core.io import remove_stale_staging

EXPORT = [sys.executable, "-m", "deploykit", "export", "hvt_ti_1", "--image-size", "64", "--no-engine"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def start_until(out: Path, stage: str, *extra: str) -> subprocess.Popen:
    """An export into ``out`` started and read until its progress line for ``stage``."""
    proc = subprocess.Popen([*EXPORT, "--out", str(out), *extra], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    seen = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if ready:
            line = proc.stderr.readline()
            seen += line
            if f"] {stage} " in line:
                return proc
        if proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"the export never reached stage {stage!r}:\n{seen}")


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("interrupts") / "out"
    subprocess.run([*EXPORT, "--out", str(out), "--quiet"], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_inside_the_onnx_stage_aborts_and_keeps_the_previous_artifact(published, sig, code):
    before = {p.name: sha(p) for p in published.iterdir() if p.is_file()}
    proc = start_until(published, "onnx")
    time.sleep(1.0)  # well inside the dynamo trace (several seconds)
    proc.send_signal(sig)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, rest
    assert "Traceback" not in rest and "fell back" not in rest
    assert {p.name: sha(p) for p in published.iterdir() if p.is_file()} == before
    assert not list(published.glob(".staging-*"))


def test_sigkill_during_fp16_kills_the_background_child(tmp_path):
    proc = start_until(tmp_path / "out", "onnx", "--fp16")
    kids = children(proc.pid)
    assert kids, "the FP16 stage's background child should be running"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while not all(gone(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(k) for k in kids), "the background child outlived its parent"
    # the dead export's staging folder is removed by the next export into the folder
    assert list((tmp_path / "out").glob(".staging-*"))
    removed = remove_stale_staging(tmp_path / "out")
    assert removed and not list((tmp_path / "out").glob(".staging-*"))


def test_live_staging_folders_are_kept(tmp_path):
    mine = tmp_path / f".staging-{os.getpid()}-abc"
    dead = tmp_path / ".staging-999999999-abc"
    legacy = tmp_path / ".staging-k2j3h4"
    for d in (mine, dead, legacy):
        d.mkdir()
    assert sorted(remove_stale_staging(tmp_path)) == sorted([dead, legacy])
    assert mine.is_dir()


def test_a_publish_leaves_exactly_what_the_manifest_lists(tmp_path):
    out = tmp_path / "out"
    subprocess.run([*EXPORT, "--out", str(out), "--fp16", "--quiet"], check=True, capture_output=True)
    assert (out / "model.fp16.onnx").is_file()
    (out / "rejected").mkdir()  # as a failed export leaves it
    (out / "rejected" / "model.onnx").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")  # not deploykit's: untouched
    subprocess.run([*EXPORT, "--out", str(out), "--quiet"], check=True, capture_output=True)
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {*manifest["artifacts"], "manifest.json", "report.html", "notes.txt"}
    assert {p.name for p in out.iterdir()} == listed
    assert "model.fp16.onnx" not in listed and (out / "notes.txt").read_text() == "mine"

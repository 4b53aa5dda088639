"""The export's background process (PyTorch references, the FP16 check's work): results bitwise equal to
the in-process computation, a failing or killed child falls back, jobs the child has not started run in
the export process, an ended export leaves no process and no file behind."""

import os
import select
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import small_config
from exporting import export_preset

import deploykit.workflows.export.background as background
from deploykit.core.errors import ParityError
from deploykit.runtime.base import run_batched
from deploykit.runtime.torch_runner import TorchRunner
from deploykit.transforms.fp16 import SCREEN_LIMIT
from deploykit.validation import validation_batch
from deploykit.validation.metrics import Tolerances
from deploykit.workflows.export.background import Worker, collect, fork_available, one_thread
from deploykit.workflows.export.fp16 import fp16_inputs
from deploykit.workflows.export.model import build_model
from deploykit.workflows.export.products import BULK_BATCH

pytestmark = pytest.mark.skipif(not fork_available(), reason="the background process needs os.fork (Linux)")


def _fails_in_child(context, parent: int) -> int:
    if os.getpid() != parent:
        raise RuntimeError("only in the child")
    return 42


def _echo(context, value: float) -> float:
    return value


def _held_in_child(context, parent: int, started_fd: int | None = None) -> str:
    """In the child: write one byte to ``started_fd`` (when given), then wait to be killed; it never
    finishes there. Run in-process (after the child died) it returns at once."""
    if os.getpid() == parent:
        return "in-process"
    if started_fd is not None:
        os.write(started_fd, b"!")
    while True:
        signal.pause()


def _readable(fd: int, timeout_s: float = 60.0) -> bool:
    """True once ``fd`` has data to read (False after ``timeout_s``)."""
    return bool(select.select([fd], [], [], timeout_s)[0])


def _pid(context) -> int:
    return os.getpid()


def _children() -> list[int]:
    """Live (not zombie) child processes of this process."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(scope="module")
def small_model():
    model, _ = build_model("hvt_ti_1", image_size=64)
    images = validation_batch(model.data_config, 16, 0, None).images
    return {"model": model, "images": images}


def test_child_results_equal_in_process_bitwise(small_model, tmp_path, monkeypatch):
    worker = Worker(tmp_path, small_model)
    try:
        job = worker.submit(fp16_inputs, 64, 0, None, BULK_BATCH)
        pid_job = worker.submit(_pid)
        pid = pid_job.result()
        images, rows, logits = job.result()
        assert pid_job.result() == pid  # a second call returns the value again (no second wait)
    finally:
        worker.close()
    assert pid != os.getpid() and job.note is None
    # the 16 FP32-stage images are among the 64, found by content; the other 48 were computed
    assert sorted(r for r in rows if r is not None) == list(range(16))
    for i, row in enumerate(rows):
        if row is not None:
            assert np.array_equal(images[i], small_model["images"][row])
    extra = [i for i, row in enumerate(rows) if row is None]
    assert images.shape == (64, 3, 64, 64) and logits.shape == (48, 1000)
    with one_thread():
        expected = run_batched(TorchRunner(small_model["model"]), images[extra], BULK_BATCH)
    assert np.array_equal(logits, expected)  # bitwise: one thread in the child and in-process alike

    monkeypatch.setattr(background, "fork_available", lambda: False)
    fallback = Worker(tmp_path, small_model)
    job = fallback.submit(fp16_inputs, 64, 0, None, BULK_BATCH)
    same_images, same_rows, same_logits = job.result()
    fallback.close()
    assert fallback.pid is None and "no os.fork" in job.note
    assert np.array_equal(same_images, images) and same_rows == rows and np.array_equal(same_logits, logits)
    assert list(tmp_path.iterdir()) == []


def test_failing_job_and_killed_child_fall_back(tmp_path):
    worker = Worker(tmp_path, {})
    try:
        failing = worker.submit(_fails_in_child, os.getpid())
        assert failing.result() == 42  # computed in-process after the child's failure
        assert "RuntimeError: only in the child" in failing.note
        quick = worker.submit(_echo, 7.0)
        slow = worker.submit(_held_in_child, os.getpid())  # never finishes in the child
        # the failing job's message was collected: the next one on the pipe is quick's "done", which the
        # child sends after writing quick's result file (one small write: it arrives whole)
        assert _readable(worker._done_r), "the child did not report the quick job"
        os.kill(worker.pid, signal.SIGKILL)
        assert slow.result() == "in-process" and "ended (exit -9)" in slow.note
        assert worker.pid is None
        # reported by the child before it died: collected from the child, not recomputed
        assert quick.result() == 7.0 and quick.note is None
        late = worker.submit(_echo, 0.0)  # no child any more: runs in-process at once
        assert late.result() == 0.0 and "ended" in late.note
    finally:
        worker.close()
    assert list(tmp_path.iterdir()) == []


def test_close_kills_a_busy_child_at_once(tmp_path):
    started_r, started_w = os.pipe()  # before the fork: the child inherits the write end
    worker = Worker(tmp_path, {})
    try:
        worker.submit(_held_in_child, os.getpid(), started_w)
        pid = worker.pid
        assert _readable(started_r) and os.read(started_r, 1) == b"!"  # the child is running the job
        assert pid in _children()
        t0 = time.perf_counter()
        worker.close()  # the job would never end: close must not wait for it
        assert time.perf_counter() - t0 < 5
    finally:
        worker.close()  # a no-op after the close above; kills the child if an assertion failed first
        os.close(started_r)
        os.close(started_w)
    assert pid not in _children() and worker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie


def test_collect_runs_what_the_child_has_not_started_in_the_main_process(tmp_path):
    """While the child is busy, the jobs it has not reached run in the main process (last first), once
    each: the child skips a job the main process claimed; a job the child started stays the child's."""
    started_r, started_w = os.pipe()
    worker = Worker(tmp_path, {})
    try:
        quick = worker.submit(_pid)
        assert quick.result() == worker.pid and quick.where == "background"
        busy = worker.submit(_held_in_child, os.getpid(), started_w)
        assert _readable(started_r) and os.read(started_r, 1) == b"!"  # the child is on it, for good
        first, second = worker.submit(_pid), worker.submit(_echo, 3.0)
        assert collect(first, second) == [os.getpid(), 3.0]
        assert first.where == second.where == "main process" and first.note is None
        assert first.steal() and first.result() == os.getpid()  # collected once, kept
        assert sorted(p.suffix for p in tmp_path.iterdir()) == [".claim"] * 4
        assert busy.where == "background"
    finally:
        worker.close()
        os.close(started_r)
        os.close(started_w)
    assert list(tmp_path.iterdir()) == []


def test_the_child_skips_a_job_the_main_process_claimed(tmp_path):
    started_r, started_w = os.pipe()
    worker = Worker(tmp_path, {})
    try:
        gate = worker.submit(_wait_for_byte, started_r)  # the child waits until we let it go
        taken, after = worker.submit(_pid), worker.submit(_pid)
        assert taken.steal() and taken.result() == os.getpid()
        os.write(started_w, b"!")
        assert gate.result() == "released"
        assert after.result() == worker.pid and after.where == "background"  # the child went past it
    finally:
        worker.close()
        os.close(started_r)
        os.close(started_w)


def _wait_for_byte(context, fd: int) -> str:
    os.read(fd, 1)
    return "released"


def test_fp16_export_with_and_without_fork_is_byte_identical(tmp_path, monkeypatch):
    config = small_config("hvt_ti_1", 64, exporter="torchscript")
    forked = export_preset("hvt_ti_1", tmp_path / "a", config, fp16=True)
    info = forked.manifest["fp16"]["background"]
    assert info["reference_images"] == 48 and info["reused_images"] == 16 and info["notes"] == []
    assert all(seconds > 0 for seconds in info["seconds"].values()), info
    assert set(forked.manifest["timings_s"]) >= {"fp16-reference", "fp16"}
    # the PyTorch screen (in the background) found no activation near FP16's limit: no ONNX probe ran
    fp16 = forked.manifest["fp16"]
    assert (
        fp16["range_images"] == 8 and 0 < fp16["range_screen"] < SCREEN_LIMIT and fp16["range_tensors"] == 0
    )
    assert set(info["seconds"]) == {"images and reference", "range screen"}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "manifest.json",
        "model.fp16.onnx",
        "model.onnx",
        "reference.npz",
        "report.html",
    ]
    monkeypatch.setattr(background, "fork_available", lambda: False)
    in_process = export_preset("hvt_ti_1", tmp_path / "b", config, fp16=True)
    assert [n for n in in_process.manifest["fp16"]["background"]["notes"]] and not _children()
    jobs = {"reference", "rewrites", "inputs", "screen"}
    assert set(forked.manifest["background"]) == set(in_process.manifest["background"]) == jobs
    assert {job["ran"] for job in in_process.manifest["background"].values()} == {"main process"}
    # the PyTorch references (reference.npz) too: one thread in the child and in-process alike
    for name in ("model.onnx", "model.fp16.onnx", "reference.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert forked.manifest["parity"]["fp16"] == in_process.manifest["parity"]["fp16"]
    assert forked.manifest["fp16"]["kept_fp32"] == in_process.manifest["fp16"]["kept_fp32"]


def test_rejected_fp16_export_leaves_no_process_and_no_background_file(tmp_path):
    impossible = small_config(
        "hvt_ti_1",
        64,
        exporter="torchscript",
        fp32=Tolerances(max_abs=0.0, min_cosine=1.0, min_top1=1.0, min_top5=1.0),
    )
    with pytest.raises(ParityError, match="nothing was published"):
        export_preset("hvt_ti_1", tmp_path / "out", impossible, fp16=True)
    assert not _children()
    rejected = sorted(p.name for p in (tmp_path / "out" / "rejected").iterdir())
    assert "model.onnx" in rejected and not [n for n in rejected if n.startswith(".")]


def test_interrupted_fp16_export_kills_the_background_process(tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        assert _children()  # the background process is there while the export runs
        raise KeyboardInterrupt

    monkeypatch.setattr("deploykit.workflows.export.stages.simplify_onnx", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_preset(
            "hvt_ti_1", tmp_path / "out", small_config("hvt_ti_1", 64, exporter="torchscript"), fp16=True
        )
    assert not _children()
    assert not (tmp_path / "out").exists()  # nothing published: not even an empty folder is left

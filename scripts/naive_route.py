#!/usr/bin/env python3
"""Is deploykit's artifact ever slower than the naive route? One run, one process, same weights:

    python scripts/naive_route.py [--family convit ...] [--iters 40] [--out DIR]

For every family, the FP32 ``model.onnx`` of ``deploykit export`` against what a user gets from a bare
``torch.onnx.export(model, x, dynamo=True)`` (the exporter's default opset) + onnxsim:

- ConViT: timm's ``convit_tiny`` (the peer people start from), random init; deploykit exports the same
  weights through its timm converter (``--weights`` a timm state_dict);
- CvT: Hugging Face's ``CvtForImageClassification`` with CvT-13's config, random init, saved with
  ``save_pretrained``; deploykit exports that directory;
- CeiT, DeepViT, HVT (no maintained peer package): deploykit's own preset model, exported bare.

ONNX Runtime CPU, 2 threads, batch 1 and 8, the files' runs interleaved in a rotating order: in each
rotation every file takes a turn of 50 ms of untimed runs (so ONNX Runtime's spinning worker threads of the
file before do not slow it), then ``--runs`` timed runs of which the fastest counts; p50 of ``--iters``
rotations. A ratio is the median over rotations of the two files' times in the same rotation
(paired: the machine's drift cancels out of each pair), with the quartiles in brackets. A third session of
the naive file runs in the same rotation: its ratio to the naive file (A/A: the same graph against itself)
is the run's noise floor. Prints a Markdown table of latency ratios (deploykit / naive: <= 1.0 means
deploykit is not slower), the A/A ratios, the p50 milliseconds, the node counts, and the largest logit
difference between the two files (the same model).
Needs the peers (``pip install -e ".[peers]"``) for ConViT and CvT.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

PRESETS = {
    "convit": "convit_tiny",
    "ceit": "ceit_tiny",
    "deepvit": "deepvit_16b",
    "cvt": "cvt_13",
    "hvt": "hvt_ti_1",
}


class _Logits(torch.nn.Module):
    """A Hugging Face model's ``.logits`` (the naive user's wrapper)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


def peer(family: str, folder: Path) -> tuple[torch.nn.Module, Path | None]:
    """The model the naive route exports, and the weights deploykit exports (None: its own preset)."""
    torch.manual_seed(0)
    if family == "convit":
        import timm

        model = timm.create_model("convit_tiny", pretrained=False).eval()
        weights = folder / "timm_convit_tiny.pth"
        torch.save(model.state_dict(), weights)
        return model, weights
    if family == "cvt":
        from transformers import CvtConfig, CvtForImageClassification

        model = CvtForImageClassification(CvtConfig(num_labels=1000)).eval()
        weights = folder / "hf_cvt_13"
        model.save_pretrained(weights)
        return _Logits(model).eval(), weights
    from deploykit.models import create_model

    return create_model(PRESETS[family]).eval(), None


def naive_export(model: torch.nn.Module, size: int) -> onnx.ModelProto:
    import onnxsim

    buffer = io.BytesIO()
    x = torch.randn(2, 3, size, size)
    program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(buffer)
    proto = onnx.load_from_string(buffer.getvalue())
    simplified, ok = onnxsim.simplify(proto)
    return simplified if ok else proto


def session(proto_or_path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    options.log_severity_level = 3
    data = (
        proto_or_path.SerializeToString()
        if isinstance(proto_or_path, onnx.ModelProto)
        else str(proto_or_path)
    )
    return ort.InferenceSession(data, options)


def interleaved(
    sessions: dict[str, ort.InferenceSession], x: np.ndarray, iters: int, runs: int = 3
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in sessions}
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for _ in range(3):
        for k, s in sessions.items():
            s.run(None, feeds[k])
    order = list(sessions.items())
    for i in range(iters):
        # rotated: each file runs first, second, ... equally often (the position in a rotation shifts a
        # p50 by up to ~15 % on these machines: one graph in two sessions measured 13.8 and 12.3 ms)
        for k, s in order[i % len(order) :] + order[: i % len(order)]:
            settle = time.perf_counter() + 0.05
            while time.perf_counter() < settle:
                s.run(None, feeds[k])
            turn = []
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, feeds[k])
                turn.append(time.perf_counter() - t)
            times[k].append(min(turn))  # a turn's fastest run: an interruption lengthens one run, not all
    return times


def paired(times: dict[str, list[float]], a: str, b: str) -> str:
    """Median over rotations of ``a``'s time over ``b``'s in the same rotation (a drift of the machine
    cancels out of each pair), with the rotations' quartiles."""
    ratios = np.array(times[a]) / np.array(times[b])
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return f"{median:.2f} [{q1:.2f}-{q3:.2f}]"


def ms(times: list[float]) -> str:
    return f"{np.median(times) * 1e3:.1f}"


def main(argv: list[str] | None = None) -> int:
    from deploykit.workflows.export import ExportRequest, run_export

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", action="append", choices=sorted(PRESETS))
    parser.add_argument("--iters", type=int, default=40, help="rotations")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per turn (the fastest counts)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="naive-route-"))
    rows = []
    for family in args.family or list(PRESETS):
        folder = out / family
        folder.mkdir(parents=True, exist_ok=True)
        model, weights = peer(family, folder)
        result = run_export(
            ExportRequest.create(PRESETS[family], out_dir=folder / "deploykit", weights=weights)
        )
        ours = onnx.load(str(result.onnx_path))
        size = int(ours.graph.input[0].type.tensor_type.shape.dim[-1].dim_value)
        theirs = naive_export(model, size)
        sessions = {
            "deploykit": session(result.onnx_path),
            "naive": session(theirs),
            "naive again": session(theirs),
        }
        x1 = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        x8 = np.random.default_rng(1).standard_normal((8, 3, size, size)).astype(np.float32)
        naive = sessions["naive"]
        theirs_out = naive.run(None, {naive.get_inputs()[0].name: x8})[0]
        same = float(np.abs(sessions["deploykit"].run(None, {"input": x8})[0] - theirs_out).max())
        b1, b8 = (interleaved(sessions, x, args.iters, args.runs) for x in (x1, x8))
        opset, naive_opset = (
            next(o.version for o in p.opset_import if o.domain in ("", "ai.onnx")) for p in (ours, theirs)
        )
        source = "timm" if family == "convit" else "Hugging Face" if family == "cvt" else "deploykit"
        rows.append(
            f"| {PRESETS[family]} ({source}) "
            f"| {paired(b1, 'deploykit', 'naive')} ({ms(b1['deploykit'])} / {ms(b1['naive'])} ms) "
            f"| {paired(b8, 'deploykit', 'naive')} ({ms(b8['deploykit'])} / {ms(b8['naive'])} ms) "
            f"| {paired(b1, 'naive again', 'naive')} / {paired(b8, 'naive again', 'naive')} "
            f"| {len(ours.graph.node)} (opset {opset}) / {len(theirs.graph.node)} (opset {naive_opset}) | {same:.1e} |"
        )
        print(rows[-1], flush=True)
    from deploykit.workflows.bench.measure import cpu_model

    print(
        f"\n{cpu_model()}, ONNX Runtime {ort.__version__}, 2 threads, {args.iters} rotations of {args.runs} timed "
        "runs per file, the fastest counting (median [quartiles] of paired ratios; p50 ms)\n"
    )
    print(
        "| model (naive route's source) | batch 1: deploykit / naive | batch 8: deploykit / naive "
        "| A/A (naive again / naive) b1 / b8 | nodes: deploykit / naive | max abs logit difference |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

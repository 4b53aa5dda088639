#!/usr/bin/env python3
"""What would close the ORT <= 0.4x eager gap? Measures, for an exported model, batch-1 latency (2 threads,
median of 30 after 5 warm-up) of: eager PyTorch, the deploykit ONNX in ORT, the same after ORT's transformer
fusions (onnxruntime.transformers.optimizer, model_type 'vit'), and after ORT dynamic int8 quantization of
MatMul/Gemm — with the accuracy cost of each against eager on 16 random inputs.

    deploykit export hvt --out /tmp/dk/hvt --no-engine
    python scripts/ort_speedup_probe.py hvt_ti_1 /tmp/dk/hvt/model.onnx --heads 3 --hidden 192
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from deploykit.core.config import default_config
from deploykit.models import create_model, get_preset


def median_ms(fn, runs: int = 30) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset")
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--hidden", type=int, required=True)
    args = ap.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    torch.set_num_threads(2)
    torch.manual_seed(default_config(get_preset(args.preset).family).seed)
    model = create_model(args.preset).eval()  # the same seeded weights the export used
    x1 = torch.randn(1, *model.input_size)
    xb = torch.randn(16, *model.input_size)
    with torch.inference_mode():
        eager = median_ms(lambda: model(x1))
        ref = model(xb).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        fused, int8 = Path(tmp) / "fused.onnx", Path(tmp) / "int8.onnx"
        optimize_model(
            str(args.onnx), model_type="vit", num_heads=args.heads, hidden_size=args.hidden, opt_level=2
        ).save_model_to_file(str(fused))
        quantize_dynamic(
            str(args.onnx), str(int8), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
        )
        print(f"{args.preset}: eager {eager:.1f} ms at batch 1")
        for label, path in (
            ("deploykit ONNX", args.onnx),
            ("+ ORT transformer fusions", fused),
            ("+ int8 dynamic", int8),
        ):
            s = session(path)
            ms = median_ms(lambda s=s: s.run(None, {"input": x1.numpy()}))
            out = s.run(None, {"input": xb.numpy()})[0]
            cos = (ref * out).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
            print(
                f"  {label:<27} {ms:6.1f} ms ({ms / eager:.2f}x eager)  max abs {np.abs(out - ref).max():.1e}  "
                f"cosine min {cos.min():.5f}  top-1 {(ref.argmax(1) == out.argmax(1)).mean():.0%}"
            )


if __name__ == "__main__":
    main()

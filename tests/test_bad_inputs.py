"""Bad input, table-driven, the way a careless user or an attacker would try it: every case is one line on
stderr, the documented exit code (2), no traceback, nothing new in the output folder, and the previous
good artifact there byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

DK = [sys.executable, "-m", "deploykit"]


class Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    out = root / "out"
    subprocess.run(
        [*DK, "export", "hvt_ti_1", "--image-size", "64", "--no-engine", "--out", str(out), "--quiet"],
        check=True,
        capture_output=True,
    )
    (root / "corrupt.pth").write_bytes(b"\x80\x04garbage" * 10)
    buf = io.BytesIO()
    pickle.dump({"head.fc.weight": Evil()}, buf)
    (root / "evil.pth").write_bytes(buf.getvalue())
    for name, target in (("escape", "../outside.safetensors"), ("shadow", "/etc/shadow")):
        d = root / name
        d.mkdir()
        (d / "config.json").write_text("{}")
        index = {"weight_map": {"head.fc.weight": target}}
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
    torch.save({"x": torch.zeros(1)}, root / "outside.safetensors")
    (root / "labels3.txt").write_text("a\nb\nc\n")
    Image.new("L", (10000, 1)).save(root / "strip.png")
    (root / "seed.toml").write_text('family = "hvt"\n[validation]\nseed = -1\n')
    (root / "seed66.toml").write_text(f'family = "hvt"\n[validation]\nseed = {2**66}\n')
    (root / "prep.toml").write_text('family = "hvt"\n[preprocessing]\nmean = [0.5, 0.5]\n')
    _odd_graphs(root)
    return {"root": root, "out": out}


def _odd_graphs(root: Path) -> None:
    """Small graphs that break the image-classifier contract (with deploykit's preprocessing record)."""
    import onnx
    from onnx import TensorProto, helper

    record = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}
    reduce = [helper.make_node("ReduceMean", ["x"], ["logits"], axes=[2, 3], keepdims=0)]
    zero = helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0])
    graphs = {
        "int64": ("input", TensorProto.INT64, ["batch", 3, 32, 32], 1, record),
        "two_inputs": ("input", TensorProto.FLOAT, ["batch", 3, 32, 32], 2, record),
        "other_size": ("input", TensorProto.FLOAT, ["batch", 3, 48, 48], 1, record),
        "mean2": ("input", TensorProto.FLOAT, ["batch", 3, 32, 32], 1, {**record, "mean": [0.5, 0.5]}),
        "nan": ("input", TensorProto.FLOAT, ["batch", 3, 32, 32], 1, record),
        "static1": ("input", TensorProto.FLOAT, [1, 3, 32, 32], 1, record),
    }
    for name, (inp, dtype, shape, n_inputs, meta) in graphs.items():
        inputs = [helper.make_tensor_value_info(f"{inp}{i or ''}", dtype, shape) for i in range(n_inputs)]
        nodes = [helper.make_node("Identity", [inputs[0].name], ["x"])] + reduce
        if name == "nan":
            nodes = [helper.make_node("Identity", ["input"], ["x0"]), helper.make_node("Div", ["x0", "z"], ["x1"]),
                     helper.make_node("Mul", ["x1", "z"], ["x"])] + reduce  # fmt: skip
        out = helper.make_tensor_value_info("logits", dtype, [shape[0], 3])
        graph = helper.make_graph(nodes, name, inputs, [out], [zero] if name == "nan" else [])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.metadata_props.add(key="deploykit.preprocessing", value=json.dumps(meta))
        onnx.save(model, str(root / f"{name}.onnx"))
    Image.new("RGB", (40, 30), (10, 200, 30)).save(root / "green.png")


EXPORT = ["export", "hvt_ti_1", "--image-size", "64", "--no-engine", "--quiet", "--out", "{out}"]
CASES = {
    "unknown model": (["export", "nosuch", "--out", "{out}"], "unknown model 'nosuch'"),
    "image size not a multiple of the patch": (
        ["export", "hvt_ti_1", "--image-size", "100", "--out", "{out}"],
        "not divisible by patch_size=16",
    ),
    "too small for HVT's pooling": (["export", "hvt_s_4", "--image-size", "64", "--out", "{out}"], "pooling"),
    "negative classes": ([*EXPORT, "--num-classes", "-1"], "num_classes must be an integer >= 0"),
    "labels of the wrong length": ([*EXPORT, "--labels", "{root}/labels3.txt"], "3 labels given"),
    "missing weights": ([*EXPORT, "--weights", "{root}/gone.pth"], "weights file not found"),
    "corrupt weights": ([*EXPORT, "--weights", "{root}/corrupt.pth"], "not a readable checkpoint"),
    "malicious pickle": ([*EXPORT, "--weights", "{root}/evil.pth"], "never code from a checkpoint"),
    "shard index escaping its folder": ([*EXPORT, "--weights", "{root}/escape"], "names a shard outside"),
    "shard index naming /etc/shadow": ([*EXPORT, "--weights", "{root}/shadow"], "names a shard outside"),
    "absurd batch": ([*EXPORT, "--batch", "1,1,9223372036854775807"], "batch.max must be an integer in"),
    "negative seed": ([*EXPORT, "--config", "{root}/seed.toml"], "validation.seed must be an integer in"),
    "huge seed": ([*EXPORT, "--config", "{root}/seed66.toml"], "validation.seed must be an integer in"),
    "two-channel mean": ([*EXPORT, "--config", "{root}/prep.toml"], "preprocessing.mean must be 1 or 3"),
    "unknown option": ([*EXPORT, "--bogus"], "No such option '--bogus'"),
    "unwritable output folder": (
        ["export", "hvt_ti_1", "--image-size", "64", "--out", "/proc"],
        "not writable",
    ),
    "image strip to predict": (["predict", "{out}/model.onnx", "{root}/strip.png"], "aspect ratio over 32:1"),
    "missing artifact": (["validate", "{root}/gone.onnx"], "not found"),
    "int64 input": (["predict", "{root}/int64.onnx", "{root}/green.png"], "not a float image"),
    "two inputs": (["predict", "{root}/two_inputs.onnx", "{root}/green.png"], "has 2 inputs"),
    "input of another size": (["predict", "{root}/other_size.onnx", "{root}/green.png"], "has shape"),
    "two-element mean in the record": (
        ["predict", "{root}/mean2.onnx", "{root}/green.png"],
        "does not fit 3",
    ),
    "model name with a trailing newline": (
        ["triton", "{out}", "--repo", "{root}/repo", "--name", "hvt\n"],
        "model name 'hvt\\n' may only hold",
    ),
    "max batch beyond the profile": (
        ["triton", "{out}", "--repo", "{root}/repo", "--max-batch", "100000"],
        "--max-batch",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(world, name):
    args, message = CASES[name]
    before = tree(world["root"])
    argv = [a.format(out=world["out"], root=world["root"]) for a in args]
    proc = subprocess.run([*DK, *argv], capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "this ran" not in proc.stdout + proc.stderr
    assert tree(world["root"]) == before  # nothing new, the previous artifact untouched


def test_concurrent_triton_runs_into_one_repository_take_different_versions(world, tmp_path):
    import concurrent.futures

    from deploykit.serving.repository import write_repository

    repo = tmp_path / "repo"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: write_repository(world["out"], repo), range(2)))
    assert sorted(r.version for r in results) == [1, 2] and not any(r.replaced for r in results)
    assert sorted(p.name for p in (repo / "hvt_ti_1").iterdir() if p.is_dir()) == ["1", "2"]


def test_predict_fails_on_nan_and_runs_a_static_batch(world):
    root = world["root"]
    nan = subprocess.run([*DK, "predict", f"{root}/nan.onnx", f"{root}/green.png", "--json", f"{root}/x.json"],
                         capture_output=True, text=True)  # fmt: skip
    assert nan.returncode == 1 and "output NaN/Inf" in nan.stderr and not (root / "x.json").exists()
    images = [f"{root}/green.png"] * 3  # three images through a graph with a fixed batch of 1
    static = subprocess.run([*DK, "predict", f"{root}/static1.onnx", *images], capture_output=True, text=True)
    assert static.returncode == 0 and static.stdout.count("class 0") == 3, static.stderr

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
import zipfile
from pathlib import Path

import numpy as np
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
    _crafted_records(root, out)
    _datasets(root)
    return {"root": root, "out": out}


def _datasets(root: Path) -> None:
    """Labelled datasets that are wrong in one way each (for ``--dataset``)."""
    green = Image.new("RGB", (40, 30), (10, 200, 30))
    for name, folders in {
        "ds_noclass": ("cat",),
        "ds_empty": ("3",),
        "ds_bad": ("2",),
        "ds_txt": ("4",),
    }.items():
        for folder in folders:
            (root / name / folder).mkdir(parents=True)
    green.save(root / "ds_noclass" / "cat" / "a.png")
    green.save(root / "ds_bad" / "2" / "good.png")
    (root / "ds_bad" / "2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    (root / "ds_txt" / "4" / "notes.txt").write_text("not an image")
    (root / "ds_none").mkdir()
    (root / "ds_none" / "readme.txt").write_text("no images here")
    green.save(root / "ds_row.png")
    (root / "ds_missing.csv").write_text("path,label\nds_row.png,3\ngone.png,3\n")
    (root / "ds_label.csv").write_text("ds_row.png,tabby\n")


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


def _meta(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _stamped(target: Path, meta: dict[str, str]) -> Path:
    """A small graph of the exported model's I/O (hvt_ti_1 at 64 px, 1000 classes) carrying ``meta``: what
    the readers look at before anything runs, without another 20 MB copy of the weights."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 64, 64])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])
    nodes = [
        helper.make_node("Flatten", ["input"], ["f"]),
        helper.make_node("Slice", ["f", "a", "b", "c"], ["logits"]),
    ]
    bounds = [
        helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("a", 0), ("b", 1000), ("c", 1))
    ]
    graph = helper.make_graph(nodes, "stamped", [x], [y], bounds)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


def _npz(path: Path, arrays: dict[str, object]) -> Path:
    """A reference-like zip of ``.npy`` members (raw bytes or arrays), as NumPy writes them."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            if isinstance(value, np.ndarray):
                member = io.BytesIO()
                np.lib.format.write_array(member, value, allow_pickle=False)
                value = member.getvalue()
            archive.writestr(f"{name}.npy", value)
    return path


def _crafted_records(root: Path, out: Path) -> None:
    """Files deploykit reads, each wrong in one way: baselines, engine sidecars, references re-stamped into
    an artifact (so that their hash is the recorded one and their content is what is refused), recorded
    preprocessing, manifests, calibration file names with a line break."""
    from deploykit.validation.reference import read_reference, reference_bytes

    metrics = {"preset": "hvt_ti_1", "precision": "fp32"}
    (root / "baseline_list.json").write_text(json.dumps({**metrics, "metrics": [1, 2]}))
    (root / "baseline_strings.json").write_text(
        json.dumps({**metrics, "metrics": {"logits": {"max_abs": "0.1"}}})
    )
    for name, sidecar in (
        ("engine_sha", {"reference_sha256": 12345}),
        ("engine_pre", {"preprocessing": "abc"}),
    ):
        (root / name).mkdir()
        (root / name / "model.engine").write_bytes(b"not an engine: never deserialized")
        (root / name / "model.engine.json").write_text(json.dumps({"precision": "fp32", **sidecar}))

    meta = _meta(out / "model.onnx")
    golden = read_reference(out / "reference.npz")
    identity, record = golden.identity, golden.record
    good = {"tolerances": record["tolerances"], "identity": identity, "names": record["names"]}
    images, outputs = golden.images, golden.outputs
    references = {
        "identity_list": reference_bytes(images, outputs, **{**good, "identity": [1, 2]}),
        "shape_string": reference_bytes(
            images,
            outputs,
            **{**good, "identity": {**identity, "input": {"name": "input", "shape": "64x64"}}},
        ),
        "empty_images": reference_bytes(images[:0], outputs[:0], **good),
        "other_size": reference_bytes(np.zeros((len(images), 32, 32, 3), np.uint8), outputs, **good),
    }
    for name, data in references.items():
        (root / f"ref_{name}").mkdir()
        (root / f"ref_{name}" / "reference.npz").write_bytes(data)
    with zipfile.ZipFile(out / "reference.npz") as archive:  # int8_images with no int8_outputs
        members = {n.removesuffix(".npy"): archive.read(n) for n in archive.namelist()}
    (root / "ref_int8_alone").mkdir()
    _npz(root / "ref_int8_alone" / "reference.npz", {**members, "int8_images": images[:2]})
    for folder in root.glob("ref_*"):
        sha = hashlib.sha256((folder / "reference.npz").read_bytes()).hexdigest()
        _stamped(folder / "model.onnx", {**meta, "deploykit.reference_sha256": sha})

    preprocessing = json.loads(meta["deploykit.preprocessing"])
    crop = {**meta, "deploykit.preprocessing": json.dumps({**preprocessing, "crop_pct": 1e-300})}
    _stamped(root / "crop" / "model.onnx", crop)
    (root / "crop.toml").write_text('family = "hvt"\n[preprocessing]\ncrop_pct = 0.001\n')
    _stamped(root / "manifest_text" / "model.onnx", meta)
    (root / "manifest_text" / "manifest.json").write_text('{"preset": "hvt_ti_1", ')  # cut short
    _stamped(root / "manifest_field" / "model.onnx", meta)
    (root / "manifest_field" / "manifest.json").write_text(
        json.dumps({"preset": "hvt_ti_1", "labels": "a,b"})
    )

    for name, file in (("calib_nl", "bad\nerror: fake.png"), ("calib_txt", "notes\nerror: fake.txt")):
        (root / name).mkdir()
        (root / name / file).write_bytes(b"not an image")


EXPORT = ["export", "hvt_ti_1", "--image-size", "64", "--no-engine", "--quiet", "--out", "{out}"]
#: ``validate`` against a reference, without torch's model (what a device runs)
GATE = ["validate", "{out}/model.onnx", "--reference", "{out}/reference.npz"]


def _restamped(name: str) -> list[str]:
    """``validate`` of a graph that records the sha256 of the crafted reference beside it."""
    return [
        "validate",
        f"{{root}}/ref_{name}/model.onnx",
        "--reference",
        f"{{root}}/ref_{name}/reference.npz",
    ]


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
    # issue 26, item 5: files of the wrong shape are bad input (exit 2, one line), never a traceback (exit 1)
    "baseline whose metrics are a list": (
        [*GATE, "--baseline", "{root}/baseline_list.json"],
        "baseline_list.json: metrics must be a JSON object of outputs",
    ),
    "baseline whose metrics are strings": (
        [*GATE, "--baseline", "{root}/baseline_strings.json"],
        "metrics.logits.max_abs must be a finite number, got '0.1'",
    ),
    "engine sidecar with a numeric reference sha256": (
        ["validate", "{root}/engine_sha/model.engine", "--reference", "{out}/reference.npz"],
        "model.engine.json: reference_sha256 must be a sha256 (64 hex digits), got 12345",
    ),
    "engine sidecar with a string preprocessing, predict": (
        ["predict", "{root}/engine_pre/model.engine", "{root}/green.png"],
        "model.engine.json: preprocessing must be a JSON object",
    ),
    "engine sidecar with a string preprocessing, validate": (
        ["validate", "{root}/engine_pre/model.engine"],
        "model.engine.json: preprocessing must be a JSON object",
    ),
    "re-stamped reference whose identity is a list": (
        _restamped("identity_list"),
        "record.identity must be a JSON object",
    ),
    "re-stamped reference whose input shape is a string": (
        _restamped("shape_string"),
        'record.identity.input.shape must be ["batch", C, H, W]',
    ),
    "re-stamped reference with no images": (
        _restamped("empty_images"),
        "images must be uint8 (N, 64, 64, 3) with N >= 1",
    ),
    "re-stamped reference with images of another size": (
        _restamped("other_size"),
        "got uint8 (16, 32, 32, 3)",
    ),
    "re-stamped reference with int8_images and no int8_outputs": (
        _restamped("int8_alone"),
        "int8_images and int8_outputs go together",
    ),
    "--crop-pct 0.0001 (a 2.24 M px resize)": (
        [*EXPORT, "--crop-pct", "0.0001"],
        "preprocessing.crop_pct must be a number in [0.05, 1], got 0.0001",
    ),
    "--crop-pct 1e-300 (an overflow)": (
        [*EXPORT, "--crop-pct", "1e-300"],
        "crop_pct must be a number in [0.05, 1]",
    ),
    "--crop-pct nan": ([*EXPORT, "--crop-pct", "nan"], "crop_pct must be a number in [0.05, 1], got nan"),
    "crop_pct 0.001 in a config file": (
        [*EXPORT, "--config", "{root}/crop.toml"],
        "crop_pct must be a number in",
    ),
    "crop_pct 1e-300 in an artifact's metadata, predict": (
        ["predict", "{root}/crop/model.onnx", "{root}/green.png"],
        "model.onnx: deploykit.preprocessing.crop_pct must be a number in [0.05, 1], got 1e-300",
    ),
    "crop_pct 1e-300 in an artifact's metadata, validate": (
        ["validate", "{root}/crop/model.onnx"],
        "deploykit.preprocessing.crop_pct must be a number in [0.05, 1], got 1e-300",
    ),
    "manifest beside the artifact that is not JSON": (
        ["predict", "{root}/manifest_text/model.onnx", "{root}/green.png"],
        "manifest.json is not a deploykit manifest: not JSON",
    ),
    "manifest beside the artifact with labels of the wrong kind": (
        ["validate", "{root}/manifest_field/model.onnx"],
        "manifest.json: labels must be a list, got 'a,b'",
    ),
    # item 6: a file name with a line break stays inside the one line (no fake "error:" line of its own)
    "calibration image named with a line break": (
        [*EXPORT, "--int8", "--calib", "{root}/calib_nl", "--calib-count", "1"],
        "cannot read image {root}/calib_nl/bad\\nerror: fake.png",
    ),
    "calibration non-image named with a line break": (
        [*EXPORT, "--int8", "--calib", "{root}/calib_txt", "--calib-count", "1"],
        "notes\\nerror: fake.txt is not an image",
    ),
    # issue 28: labelled datasets (validate --dataset, export --dataset)
    "dataset class folder naming no class": (
        ["validate", "{out}/model.onnx", "--dataset", "{root}/ds_noclass"],
        "class folder: 'cat' is not one of the model's classes",
    ),
    "dataset with an empty class folder": (
        ["validate", "{out}/model.onnx", "--dataset", "{root}/ds_empty"],
        "class folder 3 is empty",
    ),
    "dataset folder without images": (
        ["validate", "{out}/model.onnx", "--dataset", "{root}/ds_none"],
        "has no class folders",
    ),
    "dataset with a file that is not an image": (
        ["validate", "{out}/model.onnx", "--dataset", "{root}/ds_txt"],
        "4/notes.txt is not an image",
    ),
    "dataset with an unreadable image": (
        ["validate", "{out}/model.onnx", "--dataset", "{root}/ds_bad"],
        "dataset image 2/broken.png: cannot decode image",
    ),
    "dataset CSV row with a missing file": (
        ["validate", "{out}/model.onnx", "--dataset", "{root}/ds_missing.csv"],
        "row 3: image not found: gone.png",
    ),
    "dataset CSV row with an unknown label": (
        ["validate", "{out}/model.onnx", "--dataset", "{root}/ds_label.csv"],
        "row 1: 'tabby' is not one of the model's classes",
    ),
    "export with a dataset without images": (
        [*EXPORT, "--dataset", "{root}/ds_none"],
        "has no class folders",
    ),
    "accuracy page without a dataset": (
        ["validate", "{out}/model.onnx", "--html", "{root}/p.html"],
        "--html renders",
    ),
    "accuracy floor over 100 percent": (
        ["validate", "{out}/model.onnx", "--dataset", "{root}/ds_bad", "--min-accuracy", "150"],
        "--min-accuracy is in points / percent, 0 to 100",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(world, name):
    args, message = CASES[name]
    message = message.replace("{root}", str(world["root"]))
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


# ------------------------------------------------------------------------- issue 26: references, API
def _one_error_line(proc: subprocess.CompletedProcess | dict, code: int = 2) -> str:
    stderr = proc["stderr"] if isinstance(proc, dict) else proc.stderr
    returncode = proc["code"] if isinstance(proc, dict) else proc.returncode
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == code and len(lines) == 1 and lines[0].startswith("error: "), (returncode, stderr)
    assert "Traceback" not in stderr
    return lines[0]


def test_a_sha_mismatch_names_prefixes_that_differ(world, tmp_path):
    """A recorded sha256 that shares its first 12 characters with the file's: the message shows enough
    of both to tell them apart."""
    out = world["out"]
    real = hashlib.sha256((out / "reference.npz").read_bytes()).hexdigest()
    near = real[:12] + ("0" if real[12] != "0" else "1") + real[13:]
    artifact = _stamped(
        tmp_path / "near" / "model.onnx", {**_meta(out / "model.onnx"), "deploykit.reference_sha256": near}
    )
    proc = subprocess.run([*DK, "validate", str(artifact), "--reference", str(out / "reference.npz")],
                          capture_output=True, text=True)  # fmt: skip
    line = _one_error_line(proc)
    assert f"(sha256 {real[:16]})" in line and f"records sha256 {near[:16]})" in line, line


#: runs a command and reports its exit code, stderr and peak resident memory (KiB): RUSAGE_CHILDREN of a
#: fresh process covers that one child only
RSS = (
    "import json, resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "print(json.dumps({'code': p.returncode, 'stderr': p.stderr, "
    "'kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
)


def _measured(*argv) -> dict:
    proc = subprocess.run([sys.executable, "-c", RSS, *DK, *map(str, argv)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _zip_bomb(path: Path, members: dict[str, bytes], gib: int = 4) -> int:
    """``reference.npz`` whose ``images.npy`` declares ``gib`` GiB of 64x64 RGB zeros, deflated to a few
    MB (written by streaming zeros through zipfile: nothing this size is ever held); its other members
    are ``members``. Returns the images' count."""
    count = (gib << 30) // (64 * 64 * 3) + 1
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (count, 64, 64, 3)}
    )
    zeros = bytes(16 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("images.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            left = count * 64 * 64 * 3
            while left:
                member.write(zeros[: min(left, len(zeros))])
                left -= min(left, len(zeros))
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return count


def test_a_zip_bomb_reference_is_refused_in_bounded_memory(world, tmp_path):
    """Issue 26, item 4: a reference of a few MB whose images inflate to 4 GiB costs no more than reading
    a few MB: refused by its hash when the artifact records another one, and by the declared size of its
    member when the hash is the recorded one; peak memory of the whole command under 1 GB."""
    out = world["out"]
    with zipfile.ZipFile(out / "reference.npz") as archive:
        members = {n.removesuffix(".npy"): archive.read(n) for n in ("outputs.npy", "record.npy")}
    bomb = tmp_path / "bomb.npz"
    _zip_bomb(bomb, members)
    assert bomb.stat().st_size < 40 << 20
    sha = hashlib.sha256(bomb.read_bytes()).hexdigest()
    stamped = _stamped(
        tmp_path / "stamped" / "model.onnx", {**_meta(out / "model.onnx"), "deploykit.reference_sha256": sha}
    )
    for artifact, words in ((out / "model.onnx", "is not the reference"), (stamped, "images.npy declares")):
        before = tree(out)
        result = _measured("validate", artifact, "--reference", bomb)
        line = _one_error_line(result)
        assert words in line and result["kib"] < 1_000_000, (line, result["kib"])
        assert tree(out) == before


def test_reference_members_are_bounded_before_they_are_inflated(world, tmp_path):
    """In-process: a member whose header declares more than its cap (its zip entry holds a few bytes), a
    zip entry that lies about its size, a pickled member, a directory of many entries: each one line."""
    from deploykit.core.errors import ArtifactError
    from deploykit.validation.reference import read_reference

    source = world["out"] / "reference.npz"
    with zipfile.ZipFile(source) as archive:
        members = {n.removesuffix(".npy"): archive.read(n) for n in archive.namelist()}
    huge = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        huge, {"descr": "|u1", "fortran_order": False, "shape": (1 << 20, 64, 64, 3)}
    )
    pickled = io.BytesIO()
    np.lib.format.write_array(pickled, np.array([Evil()], dtype=object), allow_pickle=True)
    lying = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = archive.getinfo("images.npy")
    central = -1
    while lying[central + 46 : central + 56] != b"images.npy":  # its entry in the zip's directory
        central = lying.index(b"PK\x01\x02", central + 1)
    lying[central + 24 : central + 28] = (info.file_size - 100).to_bytes(4, "little")  # directory: 100 fewer
    lying[info.header_offset + 22 : info.header_offset + 26] = (info.file_size - 100).to_bytes(4, "little")
    many = tmp_path / "many.npz"
    with zipfile.ZipFile(many, "w") as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
        for i in range(100):
            archive.writestr(f"x{i}", b"")
    cases = {
        "declares.npz": (_npz(tmp_path / "d.npz", {**members, "images": huge.getvalue()}), "declares"),
        "pickled.npz": (
            _npz(tmp_path / "p.npz", {**members, "images": pickled.getvalue()}),
            "pickled objects",
        ),
        "lying.npz": (tmp_path / "lying.npz", "zip entry says"),
        "many.npz": (many, "lists 10"),
    }
    (tmp_path / "lying.npz").write_bytes(bytes(lying))
    for name, (path, words) in cases.items():
        with pytest.raises(ArtifactError) as info:
            read_reference(path)
        assert words in str(info.value) and "\n" not in str(info.value), (name, str(info.value))
    assert read_reference(source).images.shape == (16, 64, 64, 3)  # the real one still reads


@pytest.mark.parametrize("kind", ["meta", "float16", "bfloat16"])
def test_export_of_a_model_without_float32_weights_says_what_is_wrong(tmp_path, kind):
    """Issue 26, item 6: a model on the meta device or in half precision, handed to deploykit.export, is a
    ConfigError naming the problem and the fix (not a failure of the exporter), before anything is written."""
    import deploykit
    from deploykit.core.errors import ConfigError
    from deploykit.models import create_model

    if kind == "meta":
        with torch.device("meta"):
            model = create_model("hvt_ti_1", image_size=64)
        words = "on the meta device"
    else:
        model = create_model("hvt_ti_1", image_size=64).to(getattr(torch, kind))
        words = f"the model is {kind}: export takes a float32 model"
    with pytest.raises(ConfigError) as info:
        deploykit.export(model, tmp_path / "out")
    assert words in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert not (tmp_path / "out").exists()


def test_one_crop_pct_rule_for_flags_api_and_records():
    """crop_pct is bounded in one place (core.config): the API's preprocessing=, a recorded preprocessing,
    a Preprocessing built directly (the resize target of a large input too), NaN and inf."""
    import deploykit
    from deploykit.core.errors import ConfigError
    from deploykit.runtime.preprocess import Preprocessing

    record = {"input_size": [3, 224, 224], "mean": [0.5] * 3, "std": [0.5] * 3}
    for crop in (1e-300, 0.0001, 0.0, -1.0, 1.5, float("nan"), float("inf"), True, "0.9"):
        with pytest.raises(ConfigError, match="crop_pct must be"):
            deploykit.export("hvt_ti_1", image_size=64, preprocessing={"crop_pct": crop})
        with pytest.raises(ConfigError, match="crop_pct must be"):
            Preprocessing.from_dict({**record, "crop_pct": crop})
    with pytest.raises(ConfigError, match="at least 0.5 for a 8192-px input"):
        Preprocessing(input_size=(3, 8192, 8192), mean=(0.5,), std=(0.5,), crop_pct=0.4)
    assert Preprocessing.from_dict({**record, "crop_pct": 0.05}).crop_pct == 0.05


def test_error_lines_escape_line_breaks():
    from deploykit.core.errors import display_path, distinct_prefixes, one_line

    assert one_line("calib/bad\nerror: fake.png") == "calib/bad\\nerror: fake.png"
    assert one_line("a\r\x1b[31mb\u2028c\tz") == "a\\r\\x1b[31mb\\u2028c\\tz"
    assert one_line("photo é 写真.png") == "photo é 写真.png"
    assert display_path(Path("x\ny")) == "x\\ny"
    assert distinct_prefixes("a" * 12 + "b" * 52, "a" * 12 + "c" * 52) == (
        "a" * 12 + "bbbb",
        "a" * 12 + "cccc",
    )
    assert distinct_prefixes("0" * 64, "1" * 64) == ("0" * 12, "1" * 12)

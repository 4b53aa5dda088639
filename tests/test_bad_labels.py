"""Class names that would misalign (issue 26, item 1): a label with a line break — any character
``str.splitlines()`` splits on — is refused in one line wherever it enters (a label file, the API's
``labels=``, a checkpoint's header, a Hugging Face ``id2label``, an artifact's recorded labels); a label file
is split on ``\\n`` only (CRLF tolerated, a BOM dropped); ``id2label`` keys are plain class indices; and a
real Triton server answers every class with that class's own name (``labels.json``).

The CLI rows follow ``tests/test_bad_inputs.py``: exit 2, one ``error:`` line on stderr, no traceback, nothing
new written and the previous artifact byte-for-byte unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_bad_inputs import DK, tree

import deploykit
from deploykit.core.config import default_config
from deploykit.core.errors import ConfigError, WeightsError
from deploykit.core.io import sha256_file
from deploykit.core.labels import LINE_BREAKS, check_labels, parse_label_file
from deploykit.runtime.postprocess import class_labels, read_labels

#: ten names with no line break but everything else a careless reader trips on
TRICKY = [
    "zero",
    " ",  # blank-looking
    "naïve café",
    "a,b",
    'say "cheese"',
    "it's",
    "tab\there",
    "日本語 🐱",
    "",  # empty
    "\x1f\u200bend",  # a unit separator (no line break for splitlines) and a zero-width space
]
#: ten names, two with a line break: a one-name-per-line file of them has twelve lines
BROKEN = ["zero", "one", "two\nthree", "four", "five", "six", "seven\u2028eight", "nine", "ten", "eleven"]


# ------------------------------------------------------------------------------------------- the rule
def test_line_breaks_are_exactly_what_splitlines_splits_on():
    splits = {chr(i) for i in range(0x110000) if len(f"a{chr(i)}b".splitlines()) > 1}
    assert splits == set(LINE_BREAKS)


@pytest.mark.parametrize("char", list(LINE_BREAKS), ids=[f"U+{ord(c):04X}" for c in LINE_BREAKS])
def test_a_label_with_any_line_break_is_refused_in_one_line(char):
    with pytest.raises(ConfigError) as info:
        check_labels(["fine", f"a{char}b", "also fine"], "labels")
    message = str(info.value)
    assert message.splitlines() == [message]
    assert message.startswith("labels: label 1 ") and repr(f"a{char}b") in message
    with pytest.raises(ConfigError, match="label 1 "):
        class_labels(3, ["fine", f"a{char}b", "also fine"])


def test_labels_must_be_strings_of_utf8_text():
    assert check_labels(TRICKY) == tuple(TRICKY)
    with pytest.raises(ConfigError, match=r"^labels: label 1 is a int, not a string$"):
        check_labels(["a", 1])
    with pytest.raises(ConfigError, match=r"label 0 .* lone surrogate"):
        check_labels(["\ud800"])


def test_label_file_is_split_on_newline_only(tmp_path):
    names = ["cat", "dog", "naïve café", "a,b"]
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(("\ufeff" + "\r\n".join(names) + "\r\n\r\n").encode())  # BOM, CRLF, blank last line
    assert read_labels(crlf) == tuple(names)
    assert parse_label_file("a\n  b  \n\n \n", "f") == ("a", "b")
    assert parse_label_file("a\n\nc", "f") == ("a", "", "c")  # a blank line inside is a (blank) name
    assert parse_label_file("a\nb\ufeff\n", "f") == ("a", "b\ufeff")  # only a leading BOM is the file's


@pytest.mark.parametrize("char", [c for c in LINE_BREAKS if c != "\n"], ids=lambda c: f"U+{ord(c):04X}")
def test_label_file_line_with_another_line_break_is_refused(tmp_path, char):
    lines = [f"name {i}" for i in range(9)]
    lines[3] = f"three{char}four"  # read with splitlines(), nine lines would be ten labels
    path = tmp_path / "labels.txt"
    path.write_bytes(("\n".join(lines) + "\n").encode())
    with pytest.raises(ConfigError) as info:
        read_labels(path)
    message = str(info.value)
    assert message.splitlines() == [message]
    assert message.startswith(f"labels file {path}: line 4 {lines[3]!r} holds a line break")


def test_id2label_keys_are_plain_class_indices(tmp_path):
    from deploykit.models.pretrained import hf_extras

    def extras(id2label: dict) -> tuple:
        (tmp_path / "config.json").write_text(json.dumps({"id2label": id2label}))
        return hf_extras(tmp_path)[0]

    assert extras({"1": "b", "0": "a", "2": "c"}) == ("a", "b", "c")
    for key in ("00", "01", " 1", "+1", "-1", "1.0", "١", "1_0", "one"):
        with pytest.raises(WeightsError) as info:
            extras({"0": "a", key: "b"})
        message = str(info.value)
        assert message.splitlines() == [message] and f"id2label key {key!r} is not a class index" in message
    with pytest.raises(ConfigError, match=r"config.json: id2label: label 1 'b\\x85c' holds a line break"):
        extras({"0": "a", "1": "b\x85c"})


def test_checkpoint_header_labels_are_checked(tmp_path):
    import torch
    from safetensors.torch import save_file

    from deploykit.models import create_model
    from deploykit.models.checkpoints import LABELS_KEY, PRESET_KEY, read_checkpoint_record, save_checkpoint

    model = create_model("hvt_ti_1", num_classes=3, image_size=64)
    with pytest.raises(ConfigError, match=r"^labels: label 2 'c\\rd' holds a line break"):
        save_checkpoint(model, tmp_path / "refused.safetensors", labels=["a", "b", "c\rd"])
    assert not (tmp_path / "refused.safetensors").exists()
    path = tmp_path / "hostile.safetensors"
    header = {PRESET_KEY: "hvt_ti_1", LABELS_KEY: '["a", "b\\u2028c"]'}
    save_file({"x": torch.zeros(1)}, path, metadata=header)
    with pytest.raises(ConfigError, match=rf"{LABELS_KEY} metadata: label 1 'b\\u2028c' holds a line break"):
        read_checkpoint_record(path)


def test_export_refuses_labels_with_line_breaks_in_one_line(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        deploykit.export("hvt_ti_1", out, image_size=64, num_classes=10, labels=BROKEN)
    assert str(info.value) == (
        "labels: label 2 'two\\nthree' holds a line break ('\\n'); a class name must be one line"
    )
    assert not out.exists()


# ------------------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A 10-class export named with :data:`TRICKY`, and the bad inputs of the rows below."""
    import onnx
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from deploykit.models import create_model
    from deploykit.models.checkpoints import LABELS_KEY, save_checkpoint

    root = tmp_path_factory.mktemp("labels")
    config = dataclasses.replace(default_config("hvt"), exporter="torchscript")
    out = root / "out"
    deploykit.export("hvt_ti_1", out, image_size=64, num_classes=10, labels=TRICKY, config=config)

    nine = [f"class {i}" for i in range(9)]
    nine[3] = "three\x0cfour"  # nine lines, ten "lines" for str.splitlines()
    (root / "formfeed.txt").write_bytes(("\n".join(nine) + "\n").encode())
    ten = [f"class {i}" for i in range(10)]
    (root / "cr.txt").write_bytes(("\n".join([*ten[:4], "four\rfive", *ten[5:]]) + "\n").encode())
    (root / "ls.txt").write_bytes(("\n".join([*ten[:9], "nine\u2028ten"]) + "\n").encode())

    hostile = root / "hostile"  # an artifact whose metadata names class 3 with a line break
    shutil.copytree(out, hostile)
    proto = onnx.load(str(hostile / "model.onnx"))
    (entry,) = [p for p in proto.metadata_props if p.key == "deploykit.labels"]
    entry.value = json.dumps(["zero", "one", "two", "three\nthree and a half", *map(str, range(4, 10))])
    onnx.save(proto, str(hostile / "model.onnx"))
    manifest = json.loads((hostile / "manifest.json").read_text())
    manifest["artifacts"]["model.onnx"]["sha256"] = sha256_file(hostile / "model.onnx")
    (hostile / "manifest.json").write_text(json.dumps(manifest))

    checkpoint = root / "hostile.safetensors"  # a deploykit checkpoint naming class 3 the same way
    torch.manual_seed(0)
    save_checkpoint(create_model("hvt_ti_1", num_classes=10, image_size=64), checkpoint)
    with safe_open(str(checkpoint), framework="pt") as handle:
        meta = dict(handle.metadata()) | {LABELS_KEY: entry.value}
    save_file(load_file(checkpoint), checkpoint, metadata=meta)
    Image.new("RGB", (40, 30), (10, 200, 30)).save(root / "green.png")
    return {"root": root, "out": out}


EXPORT = ["export", "hvt_ti_1", "--image-size", "64", "--num-classes", "10", "--no-engine", "--quiet"]
LINE4 = "labels file {root}/formfeed.txt: line 4 'three\\x0cfour' holds a line break ('\\x0c') other than \\n"
RECORDED = "{root}/hostile/model.onnx: its recorded labels: label 3 'three\\nthree and a half'"
CASES = {
    "export: a form feed in a 9-line label file": (
        [*EXPORT, "--labels", "{root}/formfeed.txt", "--out", "{out}"],
        LINE4,
    ),
    "export: a lone carriage return in a label file": (
        [*EXPORT, "--labels", "{root}/cr.txt", "--out", "{out}"],
        "cr.txt: line 5 'four\\rfive' holds a line break ('\\r')",
    ),
    "export: a line separator in a label file": (
        [*EXPORT, "--labels", "{root}/ls.txt", "--out", "{out}"],
        "ls.txt: line 10 'nine\\u2028ten' holds a line break ('\\u2028')",
    ),
    "export: a checkpoint header's label with a line break": (
        [*EXPORT, "--weights", "{root}/hostile.safetensors", "--out", "{out}"],
        "hostile.safetensors: its deploykit.labels metadata: label 3 'three\\nthree and a half'",
    ),
    "predict: a form feed in --labels": (
        ["predict", "{out}/model.onnx", "{root}/green.png", "--labels", "{root}/formfeed.txt"],
        LINE4,
    ),
    "predict: an artifact recording a label with a line break": (
        ["predict", "{root}/hostile/model.onnx", "{root}/green.png", "--json", "{root}/p.json"],
        RECORDED,
    ),
    "triton: a form feed in --labels": (
        ["triton", "{out}", "--repo", "{root}/repo", "--labels", "{root}/formfeed.txt"],
        LINE4,
    ),
    "triton: an artifact recording a label with a line break": (
        ["triton", "{root}/hostile", "--repo", "{root}/repo"],
        RECORDED,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_label_is_one_line_exit_2_and_touches_nothing(world, name):
    args, message = CASES[name]
    before = tree(world["root"])
    argv = [a.format(out=world["out"], root=world["root"]) for a in args]
    proc = subprocess.run([*DK, *argv], capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    expected = message.format(root=world["root"])
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree(world["root"]) == before  # nothing new, the previous artifact untouched


def test_the_export_records_and_predicts_its_tricky_names(world):
    manifest = json.loads((world["out"] / "manifest.json").read_text())
    assert manifest["labels"] == TRICKY
    predictor = deploykit.load(world["out"] / "model.onnx")
    assert predictor.labels == tuple(TRICKY)
    (result,) = predictor.predict([world["root"] / "green.png"], top_k=10)
    assert sorted(t.cls for t in result.topk) == list(range(10))
    assert all(t.label == TRICKY[t.cls] for t in result.topk)


# ------------------------------------------------------------------------------------ a real server
def test_a_real_server_answers_every_class_with_its_own_label(world, tmp_path):
    """The tricky names (the artifact's) and a CRLF label file with a BOM (``--labels``) through
    ``deploykit triton`` and a real tritonserver: with top-k 10 every class of the 10 is in each answer, and
    each class carries its own name — the names ``deploykit predict`` gives."""
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed")
    http = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed")
    from test_triton import PHOTOS, Serve, _ports

    repo = tmp_path / "repo"
    from_file = [f"{name} (file)" for name in ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept",
                                                "huit", "neuf")]  # fmt: skip
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(("\ufeff" + "\r\n".join(from_file) + "\r\n").encode())
    for extra in ([], ["--name", "from_file", "--labels", str(crlf)]):
        cmd = [*DK, "triton", str(world["out"]), "--repo", str(repo), "--top-k", "10", *extra]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
    written = json.loads((repo / "hvt_ti_1_postprocess" / "1" / "labels.json").read_text(encoding="utf-8"))
    assert written == TRICKY
    assert json.loads((repo / "from_file_postprocess" / "1" / "labels.json").read_text()) == from_file

    images = [world["root"] / "green.png", *PHOTOS[:2]]
    expected = deploykit.load(world["out"] / "model.onnx").predict(images, top_k=10)
    serve = Serve(repo, _ports(), tmp_path / "triton.log")
    try:
        assert serve.ready(), serve.stop()
        client = http.InferenceServerClient(f"127.0.0.1:{serve.http}")
        blobs = np.array([[p.read_bytes()] for p in images], dtype=object)
        tensor = http.InferInput("IMAGE", list(blobs.shape), "BYTES")
        tensor.set_data_from_numpy(blobs)
        for model, names in (("hvt_ti_1_classify", TRICKY), ("from_file_classify", from_file)):
            response = client.infer(model, [tensor])
            classes, labels = response.as_numpy("CLASSES"), response.as_numpy("LABELS")
            for row, want in enumerate(expected):
                assert sorted(classes[row]) == list(range(10)), classes[row]
                got = [(int(c), s.decode("utf-8")) for c, s in zip(classes[row], labels[row], strict=True)]
                assert got == [(c, names[c]) for c in classes[row]], (model, got)
                assert [c for c, _ in got] == [t.cls for t in want.topk]
        client.close()
    finally:
        rc, out, err = serve.stop()
    assert rc == 0, (rc, out, err)

"""Generated manifests and preprocessing records (hypothesis): whatever JSON sits in an export folder or an
artifact's metadata, ``deploykit triton`` and the preprocessing either work or raise one deploykit error
(one line, exit 2) — never a traceback."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploykit.core.errors import DeployKitError
from deploykit.runtime.preprocess import Preprocessing
from deploykit.serving.repository import read_export

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
GOOD = {
    "preset": "hvt_ti_1",
    "io": {
        "inputs": [{"name": "input", "dtype": "float", "shape": ["batch", 3, 64, 64]}],
        "outputs": [{"name": "logits", "dtype": "float", "shape": ["batch", 7]}],
    },
    "export_config": {"batch": {"min": 1, "opt": 1, "max": 8}},
    "preprocessing": {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.5] * 3},
    "artifacts": {"model.onnx": {"sha256": "0" * 64, "bytes": 1}},
}
PATHS = [("preset",), ("io",), ("io", "inputs"), ("io", "outputs"), ("export_config", "batch"),
         ("export_config", "batch", "max"), ("preprocessing",), ("artifacts",)]  # fmt: skip


@st.composite
def damaged_manifests(draw):
    manifest = json.loads(json.dumps(GOOD))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        node = manifest
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            if draw(st.booleans()):
                node[path[-1]] = draw(json_values)
            else:
                node.pop(path[-1], None)
    return manifest


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damaged_manifests())
def test_any_manifest_reads_or_fails_with_one_line(tmp_path_factory, manifest):
    folder = tmp_path_factory.mktemp("export")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    try:
        export = read_export(folder)
    except DeployKitError as exc:
        assert exc.exit_code == 2 and "\n" not in str(exc)
        return
    assert len(export.input_dims) == 3 and len(export.output_dims) == 1 and export.batch["max"] >= 1


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["input_size", "mean", "std", "interpolation", "crop_pct"]), json_values)
)
def test_any_preprocessing_record_builds_or_fails_with_one_line(record):
    try:
        pre = Preprocessing.from_dict(record)
    except DeployKitError as exc:
        assert exc.exit_code == 2 and "\n" not in str(exc)
        return
    assert len(pre.mean) in (1, pre.input_size[0]) and min(pre.std) > 0 and max(pre.input_size) <= 8192

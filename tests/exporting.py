"""The tests' shorthand for an export: ``export_preset(model, out, config, **flags)`` builds the request as
``deploykit export`` and ``deploykit.export`` do (:meth:`ExportRequest.create`) and runs it."""

from __future__ import annotations

from pathlib import Path

from deploykit.workflows.export import ExportRequest, run_export


def export_preset(model, out=None, config=None, **flags):
    return run_export(ExportRequest.create(model, out_dir=out, config=config, **flags))


# ------------------------------------------------------------------------- the trained INT8 references
DATA = Path(__file__).parent / "data"
REFERENCES = DATA / "reference"
HELDOUT = DATA / "digits" / "heldout"
CALIB = DATA / "digits" / "calib"
FAMILIES = ("convit", "ceit", "deepvit", "cvt", "hvt")
#: entropy is the default; the others are exercised on the rest (and are faster)
METHODS = {"convit": "entropy", "ceit": "percentile", "deepvit": "max", "cvt": "entropy", "hvt": "percentile"}


def export_reference(family: str, out: Path, *, dataset: Path | None = None, **options):
    """A trained reference (tests/data/reference) exported with INT8, calibrated on the digits' calibration
    split (32 images), the engine stage on; ``dataset``: the labelled images it records."""
    from deploykit.core.config import default_config
    from deploykit.models import get_preset
    from deploykit.workflows.export import Int8Options

    config = default_config(get_preset(family).family)
    int8 = Int8Options(calib=CALIB, calib_count=32, calib_method=METHODS[family], **options)
    return export_preset(
        family,
        out,
        config,
        weights=REFERENCES / f"{family}.safetensors",
        engine=True,
        int8=int8,
        dataset=dataset,
    )

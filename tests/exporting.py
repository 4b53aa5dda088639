"""The tests' shorthand for an export: ``export_preset(model, out, config, **flags)`` builds the request as
``deploykit export`` and ``deploykit.export`` do (:meth:`ExportRequest.create`) and runs it."""

from __future__ import annotations

from deploykit.workflows.export import ExportRequest, run_export


def export_preset(model, out=None, config=None, **flags):
    return run_export(ExportRequest.create(model, out_dir=out, config=config, **flags))

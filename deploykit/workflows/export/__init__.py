"""``deploykit export`` end to end: the request (:mod:`.request`), the model it builds (:mod:`.model`), the
stages and what each makes (:mod:`.stages`, :mod:`.fp16`, :mod:`.int8`, :mod:`.products`), the work done
beside the trace (:mod:`.background`), the files, manifest, report and atomic publish (:mod:`.publish`,
:mod:`.manifest`, :mod:`.report`), run in order by :func:`~.run.run_export`."""

from deploykit.workflows.export.products import ExportResult
from deploykit.workflows.export.request import ExportRequest, Int8Options
from deploykit.workflows.export.run import export, run_export

__all__ = ["ExportRequest", "ExportResult", "Int8Options", "export", "run_export"]

"""``deploykit bench``: latency and throughput of every runtime of one export, measured in one process
(:mod:`.run`), the timing itself and the machine's ceilings (:mod:`.measure`), the report (:mod:`.report`)."""

from deploykit.workflows.bench.measure import BenchProgress
from deploykit.workflows.bench.report import BenchReport
from deploykit.workflows.bench.run import run_bench

__all__ = ["BenchProgress", "BenchReport", "run_bench"]

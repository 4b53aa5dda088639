"""The TensorRT engine step, shared by the export's ``engine`` stage and ``deploykit build``: build the
engine where TensorRT and a GPU exist, otherwise write ``build_engine.sh`` (the equivalent trtexec
command) beside the ONNX file and say why."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from deploykit.core.config import BatchProfile, ExportConfig, load_config
from deploykit.core.errors import EngineUnavailableError
from deploykit.core.io import ensure_writable_dir
from deploykit.core.onnx_io import load_onnx, onnx_precision


@dataclass(frozen=True)
class EngineOutcome:
    """What the engine step did: ``result`` (an EngineResult) when it built, else ``script`` and ``reason``."""

    result: Any = None
    script: Path | None = None
    reason: str = ""


def build_or_script(
    source: Path,
    *,
    engine_path: Path,
    config: ExportConfig,
    timing_cache: Path | None,
    script_cache_name: str,
    input_name: str,
    input_chw: tuple[int, int, int],
    expect_fp16: bool,
    script_dir: Path | None = None,
) -> EngineOutcome:
    """``engine_path`` from ``source`` (strongly typed, one profile over ``config.batch``), or
    ``build_engine.sh`` in ``script_dir`` (default: beside ``source``) for a copy of ``source`` there when
    this machine cannot build."""
    from deploykit.engine.builder import build_engine, tensorrt_available
    from deploykit.engine.script import write_build_script

    ok, reason = tensorrt_available()
    if not ok:
        script = write_build_script(
            (script_dir or source.parent) / source.name,
            batch=config.batch,
            input_name=input_name,
            input_shape_chw=tuple(input_chw),
            workspace_mib=config.workspace_mib,
            opt_level=config.builder_optimization_level,
            timing_cache_name=script_cache_name,
            engine_name=engine_path.name,
            reason=reason,
        )
        return EngineOutcome(script=script, reason=reason)
    result = build_engine(
        source,
        engine_path,
        batch=config.batch,
        workspace_mib=config.workspace_mib,
        opt_level=config.builder_optimization_level,
        timing_cache=timing_cache,
        expect_fp16=expect_fp16,
    )
    return EngineOutcome(result=result)


def export_engine_info(outcome: EngineOutcome, source: str) -> dict[str, Any]:
    """The manifest's ``engine`` record for the export's engine stage."""
    if outcome.result is None:
        return {"status": f"skipped: {outcome.reason}", "script": outcome.script.name, "source": source}
    result = outcome.result
    return {
        "status": "built",
        "source": source,
        "files": [result.engine_path.name, result.sidecar_path.name],
        "fp16_layer_share": result.fp16_share,
        "build_seconds": result.build_seconds,
        "precision": result.sidecar.get("precision"),
        "sidecar": result.sidecar,
    }


def build_command(
    onnx_file: str,
    *,
    batch: str | None = None,
    config_path: str | None = None,
    timing_cache: str | None = None,
    out_dir: str | None = None,
) -> None:
    """``deploykit build``: the engine of ``onnx_file`` (FP16 when the graph is), or build_engine.sh and
    :class:`EngineUnavailableError` where TensorRT or a GPU is missing."""
    import dataclasses

    from deploykit.engine.builder import onnx_input

    source = Path(onnx_file)
    proto = load_onnx(source)
    config = load_config(config_path) if config_path else ExportConfig(family="any")
    if batch:
        config = dataclasses.replace(config, batch=BatchProfile.parse(batch))
    out = Path(out_dir) if out_dir else source.parent
    created = not out.exists()
    ensure_writable_dir(out)
    cache = Path(timing_cache) if timing_cache else out / "timing.cache"
    name, chw = onnx_input(source, proto)
    try:
        outcome = build_or_script(
            source,
            engine_path=out / f"{source.name.removesuffix('.onnx')}.engine",
            config=config,
            timing_cache=cache,
            script_cache_name=cache.name,
            input_name=name,
            input_chw=chw,
            expect_fp16=onnx_precision(proto) == "fp16",
            script_dir=out,
        )
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # a failed or interrupted build leaves no empty folder behind
        raise
    if outcome.result is None and out.resolve() != source.parent.resolve():
        shutil.copyfile(source, out / source.name)  # the script builds the file beside it
    if outcome.result is None:
        raise EngineUnavailableError(
            f"engine not built: {outcome.reason}; wrote {outcome.script} (trtexec, TensorRT 10.3+ / 11.x)"
        )
    result = outcome.result
    click.echo(
        f"built {result.engine_path} ({result.sidecar.get('precision')}, FP16 layers "
        f"{result.fp16_share:.0%}, {result.build_seconds:.1f} s) + {result.sidecar_path.name}"
    )

"""The TensorRT engine step, shared by the export's ``engine`` stage and ``deploykit build``: build the
engine where TensorRT and a GPU exist, otherwise write ``build_engine.sh`` (the equivalent trtexec
command) beside the ONNX file and say why. An INT8 graph (``model.int8.onnx``: QuantizeLinear/
DequantizeLinear pairs) is built like the others, strongly typed, into ``model.int8.engine``."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.core.artifacts import Variant
from deploykit.core.config import BatchProfile, ExportConfig, load_config
from deploykit.core.errors import ConfigError, EngineUnavailableError
from deploykit.core.io import ensure_writable_dir
from deploykit.core.onnx_io import load_onnx, read_onnx_graph
from deploykit.core.record import variant_of


@dataclass(frozen=True, kw_only=True)
class EngineOutcome:
    """What the engine step did: ``result`` (an EngineResult) when it built, else ``script`` and ``reason``.
    ``extra``: the ``(source ONNX name, engine name)`` of each further build asked for, and
    ``extra_results`` their EngineResults when they were built."""

    result: Any = None
    script: Path | None = None
    reason: str = ""
    extra: tuple[tuple[str, str], ...] = ()
    extra_results: tuple[Any, ...] = ()


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
    extra_builds: Sequence[tuple[Path, Path]] = (),
    version_compatible: bool = False,
    hardware_compatible: bool = False,
) -> EngineOutcome:
    """``engine_path`` from ``source`` (strongly typed, one profile over ``config.batch``), or
    ``build_engine.sh`` in ``script_dir`` (default: beside ``source``) for a copy of ``source`` there when
    this machine cannot build.

    ``extra_builds``: further ``(source ONNX, engine path)`` pairs of the same export, in ``source``'s
    folder (e.g. ``model.int8.onnx`` -> ``model.int8.engine``), built after the first with the same settings
    (each FP16-gated only when its own graph is FP16; a Q/DQ graph is recorded ``int8``), or added to the
    same ``build_engine.sh``. ``version_compatible`` / ``hardware_compatible``: the engines (or the script's
    trtexec commands) are built version-compatible / hardware-compatible (Ampere and newer)."""
    from deploykit.engine.builder import build_engine
    from deploykit.engine.device import tensorrt_available
    from deploykit.engine.script import write_build_script

    extra = _extra_builds(source, engine_path, extra_builds)
    names = tuple((s.name, e.name) for s, e in extra)
    compat = {"version_compatible": version_compatible, "hardware_compatible": hardware_compatible}
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
            extra_builds=names,
            **compat,
        )
        return EngineOutcome(script=script, reason=reason, extra=names)
    settings = {
        "batch": config.batch,
        "workspace_mib": config.workspace_mib,
        "opt_level": config.builder_optimization_level,
        "timing_cache": timing_cache,
        **compat,
    }
    result = build_engine(source, engine_path, expect_fp16=expect_fp16, **settings)
    extra_results = tuple(
        build_engine(s, e, expect_fp16=variant_of(proto=read_onnx_graph(s)) is Variant.FP16, **settings)
        for s, e in extra
    )
    return EngineOutcome(result=result, extra=names, extra_results=extra_results)


def _extra_builds(
    source: Path, engine_path: Path, extra_builds: Sequence[tuple[Path, Path]]
) -> tuple[tuple[Path, Path], ...]:
    """The further ``(source ONNX, engine)`` builds, each beside ``source`` and ``engine_path``."""
    extra = tuple((Path(s), Path(e)) for s, e in extra_builds)
    for extra_source, extra_engine in extra:
        if extra_source.parent != source.parent or extra_engine.parent != engine_path.parent:
            raise ConfigError(
                f"{extra_source.name} -> {extra_engine.name}: extra builds stay beside {source.name} "
                f"and {engine_path.name}"
            )
    return extra


def _built_info(result: Any, source: str) -> dict[str, Any]:
    return {
        "status": "built",
        "source": source,
        "files": [result.engine_path.name, result.sidecar_path.name],
        "fp16_layer_share": result.fp16_share,
        "build_seconds": result.build_seconds,
        "precision": result.sidecar.get("precision"),
        "sidecar": result.sidecar,
    }


def export_engine_info(outcome: EngineOutcome, source: str) -> dict[str, Any]:
    """The manifest's ``engine`` record for the export's engine stage; the further builds (``extra_builds``)
    under ``"also"``, one record each (source, engine and, when built, what :func:`_built_info` says). When
    built, ``"files"`` lists every engine and sidecar written, the first build's first, so the manifest
    lists and publishes them all."""
    if outcome.result is None:
        info = {"status": f"skipped: {outcome.reason}", "script": outcome.script.name, "source": source}
        also = [{"source": s, "engine": e} for s, e in outcome.extra]
    else:
        info = _built_info(outcome.result, source)
        also = [{"engine": e, **_built_info(r, s)} for (s, e), r in zip(outcome.extra, outcome.extra_results)]
    if also:
        info["also"] = also
        if outcome.result is not None:
            info["files"] = [*info["files"], *(f for record in also for f in record["files"])]
    return info


def build_onnx(
    onnx_file: str | Path,
    *,
    batch: str | None = None,
    config_path: str | Path | None = None,
    timing_cache: str | Path | None = None,
    out_dir: str | Path | None = None,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
):
    """``deploykit build``: the engine of ``onnx_file`` (FP16 when the graph is; INT8 from a Q/DQ graph,
    strongly typed: ``model.int8.onnx`` -> ``model.int8.engine``) and its
    :class:`~deploykit.engine.builder.EngineResult`, or build_engine.sh and :class:`EngineUnavailableError`
    where TensorRT or a GPU is missing. ``version_compatible``: the engine also runs on later TensorRT
    versions; ``hardware_compatible``: on any Ampere-or-newer GPU (refused on a Jetson, in one line)."""
    import dataclasses

    from deploykit.engine.builder import onnx_input
    from deploykit.engine.compat import check_hardware_compatible
    from deploykit.engine.device import is_jetson

    if hardware_compatible:  # before anything is read or written (the GPU is checked where it is known)
        check_hardware_compatible(jetson=is_jetson())
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
            expect_fp16=variant_of(proto=proto) is Variant.FP16,
            script_dir=out,
            version_compatible=version_compatible,
            hardware_compatible=hardware_compatible,
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
    return outcome.result

"""``deploykit build``."""

from __future__ import annotations

from typing import Any

import click

from deploykit.cli.app import cli, handle_errors


@cli.command("build")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--batch", help="Optimization profile MIN,OPT,MAX (default: the config's [batch]).")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="Export config for [batch]/[engine]."
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    help="Timing cache to load and save (default <dir>/timing.cache).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Output directory (default: beside the ONNX file).",
)
@click.option(
    "--version-compatible",
    is_flag=True,
    help="Version-compatible engine: also runs on later TensorRT versions (may be slower).",
)
@click.option(
    "--hardware-compatible",
    is_flag=True,
    help="Hardware-compatible engine: runs on any Ampere-or-newer GPU (not on Jetson; may be slower).",
)
@handle_errors
def build_cmd(onnx_file: str, **options: Any) -> None:
    """Build a TensorRT engine (10.3+ or 11.x) from ONNX_FILE, strongly typed: FP16 comes from an FP16 graph.

    Exit 0 built; 1 an FP16 graph came out FP32; 2 bad input or build failure; 3 TensorRT or a GPU is
    missing (then build_engine.sh with the equivalent trtexec command is written instead).
    """
    from deploykit.core.record import EngineTarget, HardwareCompatibility
    from deploykit.workflows.build import build_onnx

    result = build_onnx(onnx_file, **options)
    target = EngineTarget.from_sidecar(result.sidecar)
    compatible = [
        what
        for what, on in (
            ("version-compatible", target.version_compatible),
            (
                "hardware-compatible: Ampere+",
                target.hardware_compatibility is HardwareCompatibility.AMPERE_PLUS,
            ),
        )
        if on
    ]
    click.echo(
        f"built {result.engine_path} ({result.sidecar.get('precision')}, FP16 layers "
        f"{result.fp16_share:.0%}, {result.build_seconds:.1f} s{''.join(f', {c}' for c in compatible)}) "
        f"+ {result.sidecar_path.name}"
    )

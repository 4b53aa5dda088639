"""``deploykit list`` and ``deploykit inspect``."""

from __future__ import annotations

import click

from deploykit.cli.app import cli, handle_errors


@cli.command("list")
@click.argument("pattern", required=False)
@handle_errors
def list_cmd(pattern: str | None) -> None:
    """List registered presets (optionally matching an fnmatch PATTERN such as 'cvt*')."""
    from rich.console import Console
    from rich.table import Table

    from deploykit.core.parts import require

    require("torch", "list")  # the presets are PyTorch models: their parameters are counted on them
    from deploykit.models import list_aliases
    from deploykit.workflows.info import preset_rows

    table = Table(title="deploykit presets")
    for col in ("preset", "family", "params (M)", "reference (M)", "input size", "reference"):
        table.add_column(col, justify="right" if "(M)" in col else "left")
    for row in preset_rows(pattern):
        size = f"{row.image_size}x{row.image_size}"
        cells = (row.name, row.family, f"{row.params / 1e6:.3f}", row.reference_params, size, row.reference)
        table.add_row(*cells)
    console = Console(width=max(Console().width, 120))
    console.print(table)
    aliases = ", ".join(f"{a} -> {t}" for a, t in list_aliases().items())
    console.print(f"family aliases: {aliases}")


@cli.command("inspect")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the facts as JSON.")
@handle_errors
def inspect_cmd(onnx_file: str, json_out: str | None) -> None:
    """Opset, inputs/outputs, op histogram, size, metadata and TensorRT-parser lint of ONNX_FILE."""
    from deploykit.transforms.lint import format_report
    from deploykit.workflows.info import inspect_onnx

    facts = inspect_onnx(onnx_file, json_out)
    click.echo(
        f"{onnx_file}: {facts.bytes / 1e6:.2f} MB, {facts.nodes} nodes, "
        f"{facts.initializers} initializers, opsets {facts.opsets}"
    )
    for kind in ("inputs", "outputs"):
        for v in facts.signature[kind]:
            click.echo(f"  {kind[:-1]:<6} {v['name']}: {v['dtype']} {v['shape']}")
    click.echo("  ops: " + ", ".join(f"{op} {n}" for op, n in facts.ops.most_common()))
    click.echo(f"  precision: {facts.variant} ({facts.variant.description})")
    for key, value in facts.metadata.items():
        click.echo(f"  meta {key} = {value}")
    lint = facts.lint
    click.echo(
        "  lint: " + ("no TensorRT-parser violations" if lint.ok else f"{len(lint.violations)} violation(s)")
    )
    if not lint.ok:
        click.echo(format_report(lint))

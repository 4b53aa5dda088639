"""``deploykit list`` and ``deploykit inspect``: what is registered, and what an ONNX file holds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

from deploykit.core.artifacts import VARIANT_DESCRIPTIONS, graph_variant, variant_precision
from deploykit.core.io import atomic_write_text
from deploykit.core.onnx_io import io_signature, load_onnx


def list_command(pattern: str | None) -> None:
    """A table of the registered presets (optionally matching an fnmatch ``pattern``) and the aliases."""
    from rich.console import Console
    from rich.table import Table

    from deploykit.models import get_preset, list_aliases, list_models, preset_parameter_count

    table = Table(title="deploykit presets")
    for col in ("preset", "family", "params (M)", "reference (M)", "input size", "reference"):
        table.add_column(col, justify="right" if "(M)" in col else "left")
    for name in list_models(pattern):
        p = get_preset(name)
        params = preset_parameter_count(name)
        ref = (
            "" if p.reference_params_m is None else f"{p.reference_params_m:.{p.reference_params_decimals}f}"
        )
        size = p.kwargs.get("image_size", 224)
        table.add_row(name, p.family, f"{params / 1e6:.3f}", ref, f"{size}x{size}", p.reference)
    console = Console(width=max(Console().width, 120))
    console.print(table)
    aliases = ", ".join(f"{a} -> {t}" for a, t in list_aliases().items())
    console.print(f"family aliases: {aliases}")


def inspect_command(onnx_file: str, json_out: str | None = None) -> None:
    """Opset, I/O, op histogram, precision, size, metadata and TensorRT-parser lint of ``onnx_file``."""
    from deploykit.transforms.lint import format_report, lint_model

    proto = load_onnx(onnx_file)
    size = Path(onnx_file).stat().st_size
    opsets = {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
    ops = Counter(n.op_type for n in proto.graph.node)
    sig = io_signature(proto)
    lint = lint_model(proto)
    variant = graph_variant(proto, onnx_file)  # by its operators: a quantized graph keeps FP32 metadata
    click.echo(
        f"{onnx_file}: {size / 1e6:.2f} MB, {len(proto.graph.node)} nodes, "
        f"{len(proto.graph.initializer)} initializers, opsets {opsets}"
    )
    for kind in ("inputs", "outputs"):
        for v in sig[kind]:
            click.echo(f"  {kind[:-1]:<6} {v['name']}: {v['dtype']} {v['shape']}")
    click.echo("  ops: " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
    click.echo(f"  precision: {variant} ({VARIANT_DESCRIPTIONS.get(variant, variant)})")
    for p in proto.metadata_props:
        click.echo(f"  meta {p.key} = {p.value}")
    click.echo(
        "  lint: " + ("no TensorRT-parser violations" if lint.ok else f"{len(lint.violations)} violation(s)")
    )
    if not lint.ok:
        click.echo(format_report(lint))
    if json_out:
        facts = {
            "file": onnx_file,
            "bytes": size,
            "nodes": len(proto.graph.node),
            "opsets": opsets,
            "ops": dict(ops.most_common()),
            "precision": variant_precision(variant),
            "variant": variant,
            **sig,
            "metadata": {p.key: p.value for p in proto.metadata_props},
            "lint": lint.to_dict(),
        }
        atomic_write_text(json_out, json.dumps(facts, indent=2) + "\n")

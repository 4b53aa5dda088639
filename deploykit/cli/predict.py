"""``deploykit predict``."""

from __future__ import annotations

import json

import click

from deploykit.cli.app import cli, handle_errors


@cli.command("predict")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True)
@click.option("--top-k", "top_k", type=int, default=5, show_default=True, help="Classes per image.")
@click.option(
    "--labels",
    type=click.Path(dir_okay=False),
    help="Class names, one per line (default: the artifact's own, else ImageNet-1k names for 1000-class "
    "models).",
)
@click.option(
    "--batch", "batch_size", type=int, help="Images per forward pass (default: 8, or the engine's max)."
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
@handle_errors
def predict_cmd(
    artifact: str,
    images: tuple[str, ...],
    top_k: int,
    labels: str | None,
    batch_size: int | None,
    json_out: str | None,
) -> None:
    """Classify IMAGES (files or folders of images) with ARTIFACT (.onnx, or a TensorRT .engine/.plan).

    Preprocessing (resize, crop, interpolation, mean/std) and class names come from the artifact's own
    record; one warning line on stderr when it was exported with random weights. Exit 0 done; 2 bad input
    (missing, unreadable or truncated image, bad or headless artifact, bad option).
    """
    from rich.console import Console
    from rich.table import Table

    from deploykit.core.io import atomic_write_text
    from deploykit.runtime.preprocess import expand_image_paths
    from deploykit.workflows.predict import load

    files = expand_image_paths(images)
    predictor = load(artifact, labels=labels)
    results = predictor.predict(files, top_k=top_k, batch_size=batch_size)
    if predictor.random_weights:  # after the images were read: a bad input stays one error line
        click.echo(random_weights_warning(artifact), err=True)
    what = f", {predictor.variant}" if predictor.variant else ""
    table = Table(title=f"{artifact} ({predictor.runner.name}{what})")
    table.add_column("image", overflow="fold")
    for col in ("#", "class", "label", "prob"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for result in results:
        for rank, top in enumerate(result.topk, 1):
            table.add_row(
                result.image if rank == 1 else "", str(rank), str(top.cls), top.label, f"{top.prob:.4f}"
            )
        table.add_section()
    Console(width=max(Console().width, 100)).print(table)
    if json_out:
        atomic_write_text(json_out, json.dumps([r.to_dict() for r in results], indent=2) + "\n")


def random_weights_warning(artifact: str) -> str:
    """The one line ``deploykit predict`` prints for an artifact exported with random weights."""
    return (
        f"warning: {artifact} was exported with random weights (no --weights): its classes are meaningless; "
        "export with --weights CHECKPOINT for a model that predicts"
    )

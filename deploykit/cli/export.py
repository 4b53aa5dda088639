"""``deploykit export``: the flags, the progress lines and what is printed when it is done."""

from __future__ import annotations

import time
from typing import Any

import click

from deploykit.cli.app import WEIGHTS_FORMATS, cli, handle_errors
from deploykit.core.config import CalibMethod, Exporter


@cli.command("export")
@click.argument("model")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Export config TOML (default: export_configs/<family>.toml).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Output directory (default ./deploykit_out/<preset>/).",
)
@click.option("--opset", type=int, help="ONNX opset (17-24).")
@click.option("--batch", help="Batch profile MIN,OPT,MAX.")
@click.option(
    "--weights",
    type=click.Path(dir_okay=True),
    help="Weights to load first: a .pth/.pt/.bin/.safetensors file or a Hugging Face save_pretrained "
    "directory (timm ConViT, HF or official CvT, official CeiT/DeepViT/HVT, or deploykit's own layout).",
)
@click.option(
    "--weights-format",
    type=click.Choice(WEIGHTS_FORMATS),
    help="Checkpoint layout of --weights (default: detected from its keys).",
)
@click.option(
    "--exporter", type=click.Choice([e.value for e in Exporter]), help="torch exporter (default dynamo)."
)
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim/onnxslim.")
@click.option("--inputs", "inputs_dir", type=click.Path(), help="Folder of your own validation images.")
@click.option(
    "--fp16", is_flag=True, help="Also write model.fp16.onnx (FP16 with FP32 islands), verified on CPU."
)
@click.option("--fp16-io", is_flag=True, help="FP16 graph inputs/outputs (default: FP32 I/O).")
@click.option(
    "--int8",
    is_flag=True,
    help="Also write model.int8.onnx (TensorRT Q/DQ on the FP16 graph; implies --fp16) and "
    "model.int8.cpu.onnx (ONNX Runtime dynamic INT8), both gated against PyTorch FP32.",
)
@click.option(
    "--calib",
    type=click.Path(),
    help="INT8 calibration images: a folder, or an ImageFolder (class subfolders: accuracy is reported "
    "and gated). Default: the bundled images.",
)
@click.option("--calib-count", type=int, help="INT8 calibration images to use (default 64).")
@click.option(
    "--calib-method",
    type=click.Choice([m.value for m in CalibMethod]),
    help="INT8 activation ranges (default entropy).",
)
@click.option("--no-engine", is_flag=True, help="Skip the TensorRT engine stage.")
@click.option(
    "--timing-cache", type=click.Path(dir_okay=False), help="TensorRT timing cache to load and save."
)
@click.option(
    "--image-size",
    type=int,
    help="Input resolution (default: the checkpoint's position grid, else the preset's).",
)
@click.option(
    "--num-classes", type=int, help="Classifier classes, 0 for features (default: the checkpoint's head)."
)
@click.option(
    "--labels", type=click.Path(dir_okay=False), help="Class names, one per line; stored in the artifact."
)
@click.option(
    "--crop-pct", type=float, help="Preprocessing: centre-crop fraction (resize to SIZE / crop_pct)."
)
@click.option("--mean", help="Preprocessing: per-channel mean, e.g. 0.5,0.5,0.5.")
@click.option("--std", help="Preprocessing: per-channel std, e.g. 0.5,0.5,0.5.")
@click.option(
    "--interpolation",
    type=click.Choice(["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]),
    help="Preprocessing: resize filter.",
)
@click.option(
    "--dataset",
    type=click.Path(),
    help="Your labelled images (an ImageFolder, or a CSV of path,label rows): every file's accuracy beside "
    "PyTorch's, gated by max_accuracy_drop; recorded in reference.npz for validate --dataset without torch.",
)
@click.option("--quiet", is_flag=True, help="No progress output.")
@handle_errors
def export_cmd(model: str, **options: Any) -> None:
    """Export MODEL (a preset or family alias) to a validated, simplified, dynamic-batch ONNX file."""
    from deploykit.workflows.export import run_export

    progress = StderrProgress(options.pop("quiet"))
    request = export_request(model, **options)
    result = run_export(request, progress=progress)
    for line in summary_lines(result, fp16=request.fp16):
        click.echo(line)


def export_request(
    model: str,
    *,
    config_path: str | None,
    out_dir: str | None,
    batch: str | None,
    no_simplify: bool,
    no_engine: bool,
    crop_pct: float | None,
    mean: str | None,
    std: str | None,
    interpolation: str | None,
    **flags: Any,
):
    """The request of ``deploykit export``: the command line's text parsed (``--batch 1,8,32``, ``--mean
    0.5,0.5,0.5``), the rest as given; checked by :meth:`~deploykit.workflows.export.ExportRequest.create`
    as the Python API's is."""
    from deploykit.core.config import BatchProfile
    from deploykit.workflows.export import ExportRequest

    preprocessing = {
        "crop_pct": crop_pct,
        "mean": _floats("--mean", mean),
        "std": _floats("--std", std),
        "interpolation": interpolation,
    }
    return ExportRequest.create(
        model,
        config=config_path,
        out_dir=out_dir,
        batch=BatchProfile.parse(batch) if batch is not None else None,
        simplify=False if no_simplify else None,
        engine=not no_engine,
        preprocessing={k: v for k, v in preprocessing.items() if v is not None},
        **flags,
    )


def _floats(name: str, text: str | None) -> tuple[float, ...] | None:
    from deploykit.core.errors import ConfigError

    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{name} takes comma-separated numbers, got {text!r}") from None


class StderrProgress:
    """Per-stage progress lines on stderr, with the time since the start (``quiet``: none)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, stage: str, message: str) -> None:
        if not self.quiet:
            click.echo(f"[{time.perf_counter() - self.t0:6.1f}s] {stage:<14} {message}", err=True)


def summary_lines(result, *, fp16: bool) -> list[str]:
    """What ``deploykit export`` prints when it is done: the FP32 file, the FP16 file, the engine."""
    final = result.parity["dynamic batch"]
    lint = result.manifest["lint"]
    lines = [
        f"exported {result.manifest['preset']} -> {result.onnx_path}  "
        f"(max abs logit error {final.worst_metric('max_abs'):.2e}, top-1 agreement "
        f"{final.worst_metric('top1'):.0%}, lint violations {len(lint['violations'])})"
    ]
    model = result.manifest["model"]
    args = model["model_args"]
    head = f"{args['num_classes']} classes" if args["num_classes"] else "no head: outputs features"
    named = " (named)" if result.manifest.get("labels") else ""
    lines.append(f"model: {args['image_size']}x{args['image_size']} input, {head}{named}")
    if fp16:
        half = result.parity["fp16"]
        info = result.manifest["fp16"]
        lines.append(
            f"fp16 -> {result.out_dir / 'model.fp16.onnx'}  (cosine min {half.worst_metric('cosine_min'):.6f}, "
            f"top-1 {half.worst_metric('top1'):.1%} ({half.worst_metric('top1_decisive'):.1%} counting "
            f"near-ties as agreement), max abs {half.worst_metric('max_abs'):.2e} on {info['images']} images; "
            f"{info['size_ratio']:.2f}x the fp32 file; {len(info['kept_fp32'])} nodes kept FP32; "
            f"lint violations {len(info['lint']['violations'])})"
        )
    if "int8" in result.manifest:
        lines.extend(_int8_lines(result))
    if "dataset" in result.manifest:
        lines.append(_dataset_line(result.manifest["dataset"]))
    engine = result.manifest["engine"]
    if engine["status"].startswith("skipped"):
        lines.append(
            f"engine: {engine['status']}; run {result.out_dir / engine['script']} on the target GPU "
            "(trtexec of TensorRT 10.3+ or 11.x) to build it there"
        )
    elif engine["status"] == "built":
        lines.append(f"engine -> {result.out_dir / 'model.engine'} ({engine.get('precision', '')})")
    if result.manifest.get("random_weights"):
        lines.append(
            "weights: RANDOM (no --weights given): the export is checked, but its classes mean nothing; "
            "export with --weights CHECKPOINT for a model that predicts"
        )
    return lines


def _int8_lines(result) -> list[str]:
    info = result.manifest["int8"]
    accuracy = info.get("accuracy") or {}
    lines = []
    for key, name, part in (
        ("int8", "model.int8.onnx", "tensorrt"),
        ("int8-cpu", "model.int8.cpu.onnx", "cpu"),
    ):
        parity = result.parity[key]
        kept = info[part]["kept_blocks"]
        acc = accuracy.get("int8" if key == "int8" else "int8_cpu")
        shown = f", accuracy {acc:.1%} (FP32 {accuracy['fp32']:.1%})" if acc is not None else ""
        lines.append(
            f"{key} -> {result.out_dir / name}  (cosine min {parity.worst_metric('cosine_min'):.4f}, top-1 "
            f"{parity.worst_metric('top1'):.1%} ({parity.worst_metric('top1_decisive'):.1%} counting near-ties)"
            f"{shown}; {info[part]['size_ratio']:.2f}x the fp32 file"
            + (f"; kept in higher precision: {', '.join(k['block'] for k in kept)}" if kept else "")
            + ")"
        )
    cal = info["calibration"]
    lines.append(f"int8 calibration: {cal['method']} on {cal['source']}")
    return lines


def _dataset_line(info: dict) -> str:
    """Top-1 on the export's --dataset: PyTorch FP32, then every file (with its drop in points)."""
    files = ", ".join(
        f"{name} {f['artifact_top1']:.2%} ({f['drop_top1'] * 100:+.2f})" for name, f in info["files"].items()
    )
    return f"dataset: {info['images']} images, top-1 PyTorch {info['pytorch']['top1']:.2%}, {files}"

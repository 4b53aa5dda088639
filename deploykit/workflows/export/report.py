"""``report.html``: one self-contained page per export, written next to ``manifest.json`` (and into
``rejected/`` for a rejected export), rendered from the manifest alone.

It shows what was exported (preset, classes, resolution, class names, the weights, and a warning when they
were random: the classes then mean nothing), parity per stage against the tolerances, the per-image error
distributions, the first diverging module when there is one, the FP32 islands of the FP16 graph and why,
the lint result, the engine stage and the stage timings. With matplotlib installed (extra ``[plot]``) the error bars and distributions are PNG
charts embedded as data URIs; without it, the same numbers are tables.
"""

from __future__ import annotations

import base64
import io
import math
from collections import Counter
from html import escape
from typing import Any

from deploykit.workflows.dataset_page import FLIP_CSS

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.box{border:2px solid #cf222e;padding:.6em 1em;border-radius:6px;background:#fff5f5}code{background:#f4f4f4;padding:0 3px}
img{max-width:100%}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    return escape(str(value))


def _table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    head = "".join(f"<th class='{'l' if i < left else ''}'>{escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(f"<td class='{'l' if i < left else ''}'>{_fmt(v)}</td>" for i, v in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _status(passed: bool) -> str:
    return "<span class='pass'>PASS</span>" if passed else "<span class='fail'>FAIL</span>"


# -------------------------------------------------------------------------------------------- charts
def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"<img alt='chart' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _charts(manifest: dict[str, Any]) -> str | None:
    """Error bars per stage and per-image distributions, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    parity, per_image = manifest["parity"], manifest.get("per_image", {})
    stages = list(parity)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    values = [max(parity[s]["outputs"]["logits"]["max_abs"] or 1e-12, 1e-12) for s in stages]
    limits = [parity[s]["tolerances"]["max_abs"] for s in stages]
    colors = ["#1a7f37" if parity[s]["passed"] else "#cf222e" for s in stages]
    axes[0].bar(stages, values, color=colors)
    axes[0].scatter(stages, limits, marker="_", s=400, color="k", label="tolerance")
    axes[0].set(yscale="log", title="max abs logit error per stage")
    axes[0].legend(loc="lower right")
    for ax, key, title in (
        (axes[1], "max_abs", "max abs error per image"),
        (axes[2], "cosine", "1 - cosine per image"),
    ):
        data = []
        for s in stages:
            series = [v for v in per_image.get(s, {}).get(key, []) if v is not None]
            data.append([max(1.0 - v if key == "cosine" else v, 1e-12) for v in series] or [1e-12])
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(stages) + 1), stages)
        ax.set(yscale="log", title=title)
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30)
    return _png(fig)


# ------------------------------------------------------------------------------------------ sections
def _parity(manifest: dict[str, Any]) -> str:
    """Each metric beside its threshold, the threshold named by its metric (a dash: not gated)."""
    rows = []
    for stage, p in manifest["parity"].items():
        m, tol = p["outputs"]["logits"], p["tolerances"]
        rows.append(
            [
                stage,
                p["stage"],
                m["samples"],
                m["max_abs"],
                tol["max_abs"],
                m["mean_abs"],
                m["cosine_min"],
                tol["min_cosine"],
                m["top1"],
                tol.get("min_top1"),
                m["top5"],
                tol.get("min_top5"),
                "PASS" if p["passed"] else "FAIL",
            ]
        )
    header = [
        "stage",
        "check",
        "images",
        "max abs",
        "max abs ≤",
        "mean abs",
        "cosine min",
        "cosine ≥",
        "top-1",
        "top-1 ≥",
        "top-5",
        "top-5 ≥",
        "",
    ]
    return _table(header, rows, left=2)


def _dataset(manifest: dict[str, Any], section: str | None) -> str:
    """Accuracy on the export's ``--dataset``: PyTorch FP32 and every file side by side, then the flips."""
    info = manifest.get("dataset")
    if not info:
        return ""
    rows = [["PyTorch FP32", info["pytorch"]["top1"], info["pytorch"]["top5"], None, None, None, None, None]]
    for name, f in info["files"].items():
        gated = f.get("gated") or []
        verdict = "–" if not gated else "PASS" if all(c["passed"] for c in gated) else "FAIL"
        lo, hi = f["ci95"]
        flips = f"{f['flips']['reference_only']} / {f['flips']['artifact_only']}"
        rows.append(
            [
                name,
                f["artifact_top1"],
                f["artifact_top5"],
                f["drop_top1"] * 100,
                f"{lo * 100:+.2f} to {hi * 100:+.2f}",
                flips,
                f["p_value"],
                verdict,
            ]  # fmt: skip
        )
    header = ["", "top-1", "top-5", "drop (points)", "95 % CI", "lost / gained", "McNemar p", ""]
    head = (
        f"<h2>Accuracy on {escape(info['source'])}</h2><p>{info['images']} labelled images "
        f"({info['images_per_second']:.1f} images/s through PyTorch and every file)</p>"
    )
    return head + _table(header, rows) + (section or "")


def _per_image(manifest: dict[str, Any]) -> str:
    per_image = manifest.get("per_image", {})
    names = manifest.get("validation_inputs", {}).get("names", [])
    stages = [s for s in per_image if len(per_image[s]["max_abs"]) == len(names)]
    rows = [
        [name] + [per_image[s][k][i] for s in stages for k in ("max_abs", "cosine")]
        for i, name in enumerate(names)
    ]
    header = ["image"] + [f"{s} {k}" for s in stages for k in ("max abs", "cosine")]
    return _table(header, rows)


def _divergence(manifest: dict[str, Any]) -> str:
    locate = manifest.get("locate")
    if not locate:
        return ""
    first = locate.get("first_divergence")
    if not first:
        return f"<h2>First divergence</h2><p>{escape(locate['message'])}</p>"
    rows = [
        ["module", f"{first['module']} ({first['module_type']})"],
        ["stage", first["stage"]],
        ["max abs / max rel", f"{_fmt(first['max_abs'])} / {_fmt(first['max_rel'])}"],
        ["cosine min", first["cosine_min"]],
        ["ONNX tensor", first.get("onnx_tensor")],
        ["ONNX nodes", ", ".join(first.get("onnx_nodes", [])[:12])],
        ["thresholds", ", ".join(f"{k} {v}" for k, v in locate["thresholds"].items())],
        ["compared", f"{locate['modules_compared']} modules on {locate['images']} images"],
    ]
    return "<h2>First divergence</h2><div class='box'>" + _table(["", ""], rows, left=2) + "</div>"


def _fp16(manifest: dict[str, Any]) -> str:
    info = manifest.get("fp16")
    if not info:
        return ""
    reasons = Counter(k["reason"] for k in info["kept_fp32"])
    rows = [[reason, count] for reason, count in reasons.most_common()]
    facts = (
        f"<p>{info['fp16_nodes']} of {info['total_nodes']} nodes in FP16; file {_fmt(info.get('size_ratio'))}× "
        f"the FP32 file; I/O {escape(info['io'])}; checked on {info['images']} images; module checks "
        f"{info.get('modules_checked', 0)}, segments checked {info['segments_checked']}.</p>"
    )
    return "<h2>FP16: FP32 islands and why</h2>" + facts + _table(["reason", "nodes"], rows)


def _lint(manifest: dict[str, Any]) -> str:
    violations = manifest["lint"].get("violations", [])
    if not violations:
        return "<h2>TensorRT parser lint</h2><p class='pass'>no violations</p>"
    rows = [[v.get("node"), v.get("op_type"), v.get("message")] for v in violations]
    return "<h2>TensorRT parser lint</h2>" + _table(["node", "op", "problem"], rows, left=3)


def _model(manifest: dict[str, Any]) -> str:
    """The model's identity: preset, classes and resolution (and where they came from), class names, the
    weights; a random-weights warning box."""
    model = manifest.get("model") or {}
    args = model.get("model_args") or {}
    classes = args.get("num_classes")
    weights = manifest.get("weights") or {}
    labels = manifest.get("labels")
    inferred = (model.get("inferred") or {}).get("from") or {}
    names = "none recorded"
    if labels:
        names = f"{len(labels)}: {', '.join(map(str, labels[:8]))}{', ...' if len(labels) > 8 else ''}"
    rows = [
        ["preset", model.get("preset", manifest.get("preset"))],
        ["classes", "0 (headless: the output is features)" if classes == 0 else classes],
        ["input size", f"{args['image_size']} px" if args.get("image_size") else None],
        ["class names", names],
        ["weights", model.get("weights")],
    ]
    if weights:
        rows += [["weights file", f"{weights.get('path')} ({weights.get('format')})"]]
        rows += [["file sha256", str(weights.get("sha256", ""))[:16]]]
    if model.get("weights_state_sha256"):
        rows.append(["weights content sha256", model["weights_state_sha256"][:16]])
    rows += [[f"{k} from", v] for k, v in inferred.items()]
    warning = ""
    if manifest.get("random_weights"):
        warning = (
            "<div class='box'><b>Random weights</b>: no weights were given, so the export is checked for "
            "parity but its classes mean nothing. Export with <code>--weights CHECKPOINT</code> for a model "
            "that predicts.</div>"
        )
    return "<h2>Model</h2>" + warning + _table(["", ""], rows, left=2)


def _rewrites(manifest: dict[str, Any]) -> str:
    return ", ".join(f"{r['name']} ({r.get('kind', '?')})" for r in manifest["rewrites"]) or "none"


def render_report(manifest: dict[str, Any], *, dataset: str | None = None) -> str:
    """The HTML page for an export's manifest (``dataset``: the flipped images' section, HTML)."""
    title = f"deploykit export: {manifest['preset']}"
    status = _status(bool(manifest.get("passed")))
    artifacts = [[n, a["bytes"] / 1e6, a["sha256"][:16]] for n, a in manifest["artifacts"].items()]
    io_rows = [
        [k[:-1], v["name"], v["dtype"], str(v["shape"])]
        for k in ("inputs", "outputs")
        for v in manifest["io"][k]
    ]
    versions = ", ".join(f"{k} {v}" for k, v in manifest["versions"].items())
    charts = _charts(manifest)
    timings = manifest.get("timings_s", {})
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{CSS}{FLIP_CSS}</style></head><body>",
        f"<h1>{escape(title)} — {status}</h1>",
        f"<p>{escape(manifest['family'])} family; exporter {escape(manifest['exporter'])}, opset {manifest['opset']}; "
        f"nodes {manifest['nodes']['exported']} exported → {manifest['nodes']['final']} final "
        f"({escape(manifest['simplify'].get('tool', ''))}); rewrites: "
        f"{escape(_rewrites(manifest))}.</p>",
        f"<p><small>{escape(versions)}</small></p>",
        _table(["artifact", "MB", "sha256"], artifacts),
        _table(["", "name", "dtype", "shape"], io_rows, left=4),
        _model(manifest),
        _divergence(manifest),
        "<h2>Parity per stage</h2>",
        _parity(manifest),
        charts
        or "<p><small>(install matplotlib — <code>pip install 'deploykit[plot]'</code> — for charts)</small></p>",
        "<h2>Per image</h2>",
        _per_image(manifest),
        _dataset(manifest, dataset),
        _fp16(manifest),
        _lint(manifest),
        "<h2>Engine</h2>",
        f"<p>{escape(str(manifest['engine'].get('status')))}</p>",
        "<h2>Timings</h2>",
        _table(
            ["stage", "seconds"], [[k, v] for k, v in timings.items()] + [["total", sum(timings.values())]]
        ),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"

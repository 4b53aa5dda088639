"""The page a person opens when the accuracy gate goes red: the paired comparison, per-class accuracy of
the reference and the artifact, and the images that changed their answer as thumbnails with both top-3
answers. ``validate --html`` writes it as a page of its own; ``report.html`` of an export given a dataset
holds the same section. Self-contained HTML (thumbnails as data URIs); every name is escaped."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

import numpy as np

from deploykit.validation.accuracy import PairedAccuracy
from deploykit.validation.metrics import Check
from deploykit.workflows.dataset_pass import Answers, DatasetPass

FLIP_CSS = """
.flips{display:flex;flex-wrap:wrap;gap:10px}.flip{border:1px solid #ddd;border-radius:6px;padding:6px;width:230px;
font-size:.8em}.flip img{display:block;margin:0 auto 4px;image-rendering:pixelated;width:96px}.flip .name{word-break:break-all;
color:#555}.flip ol{margin:2px 0 2px 1.3em;padding:0}.ok{color:#1a7f37}.bad{color:#cf222e}
"""


def _name(classes: Sequence[str], index: int) -> str:
    return classes[index] if 0 <= index < len(classes) else f"class {index}"


def _images(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def per_class_rows(
    labels: np.ndarray, reference: Answers | None, artifact: Answers, classes: Sequence[str]
) -> list[tuple[str, int, float | None, float, int]]:
    """``(class, images, reference top-1, artifact top-1, images that changed)`` of every class present."""
    out = []
    for index in np.unique(labels):
        mask = labels == index
        art = artifact.top1[mask] == index
        ref = reference.top1[mask] == index if reference is not None else None
        changed = int(np.sum(ref != art)) if ref is not None else 0
        out.append(
            (
                _name(classes, int(index)),
                int(mask.sum()),
                float(ref.mean()) if ref is not None else None,
                float(art.mean()),
                changed,
            )  # fmt: skip
        )
    return out


def _summary(paired: PairedAccuracy | None, checks: Sequence[Check], note: str | None) -> str:
    parts = []
    if note:
        parts.append(f"<p class='box'>{escape(note)}</p>")
    if paired is not None:
        lo, hi = paired.ci95
        rows = [
            ("top-1", _pct(paired.reference_top1), _pct(paired.artifact_top1)),
            ("top-5", _pct(paired.reference_top5), _pct(paired.artifact_top5)),
        ]
        body = "".join(f"<tr><td class='l'>{a}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in rows)
        parts.append(
            "<table><tr><th class='l'></th><th>reference</th><th>artifact</th></tr>" + body + "</table>"
            f"<p>top-1 drop <b>{paired.drop_top1 * 100:+.2f} points</b> (95 % CI {lo * 100:+.2f} to "
            f"{hi * 100:+.2f}), {_images(paired.reference_only)} lost, {paired.artifact_only} gained, "
            f"McNemar exact p = {paired.p_value:.3g} on {paired.images} images</p>"
        )
    for check in checks:
        verdict = "<span class='pass'>PASS</span>" if check.passed else "<span class='fail'>FAIL</span>"
        parts.append(f"<p>{verdict} {escape(check.describe())}</p>")
    return "".join(parts)


def _class_table(rows) -> str:
    head = (
        "<tr><th class='l'>class</th><th>images</th><th>reference</th><th>artifact</th><th>changed</th></tr>"
    )
    body = []
    for name, count, ref, art, changed in rows:
        worse = ref is not None and art < ref
        cls = " class='bad'" if worse else ""
        body.append(
            f"<tr{cls}><td class='l'>{escape(name)}</td><td>{count}</td><td>{_pct(ref)}</td>"
            f"<td>{_pct(art)}</td><td>{changed}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _answers(answers: Answers | None, row: int, classes: Sequence[str], label: int) -> str:
    if answers is None:
        return "<ol><li>–</li></ol>"
    items = []
    for j in range(min(3, answers.topk.shape[1])):
        cls = int(answers.topk[row, j])
        prob = f" {answers.probs[row, j]:.1%}" if answers.probs is not None else ""
        mark = "ok" if cls == label else ""
        items.append(f"<li class='{mark}'>{escape(_name(classes, cls))}{prob}</li>")
    return f"<ol>{''.join(items)}</ol>"


def _flips(found: DatasetPass, reference: Answers | None, artifact: Answers, classes: Sequence[str]) -> str:
    if not found.thumbnails:
        return "<p>No image changed its answer.</p>"
    cards = []
    for row in sorted(found.thumbnails):
        name, _, label = found.rows[row]
        lost = reference is not None and reference.top1[row] == label and artifact.top1[row] != label
        tag = "<span class='bad'>lost</span>" if lost else "<span class='ok'>gained</span>"
        data = base64.b64encode(found.thumbnails[row]).decode()
        cards.append(
            f"<div class='flip'><img alt='' src='data:image/png;base64,{data}'><div class='name'>{escape(name)}</div>"
            f"<div>{tag} · true: <b>{escape(_name(classes, label))}</b></div>"
            f"<div>reference{_answers(reference, row, classes, label)}</div>"
            f"<div>artifact{_answers(artifact, row, classes, label)}</div></div>"
        )
    more = "" if len(cards) < 200 else "<p>(the first 200 are shown)</p>"
    return f"<div class='flips'>{''.join(cards)}</div>{more}"


def dataset_section(
    *,
    found: DatasetPass,
    paired: PairedAccuracy | None,
    checks: Sequence[Check],
    classes: Sequence[str],
    artifact: str = "artifact",
    reference: str = "reference",
    note: str | None = None,
    caption: str | None = None,
) -> str:
    """The section: summary and records, per-class accuracy, the flipped images (``artifact`` and
    ``reference`` name the answer sets of ``found`` to compare; ``note``: a warning in a box; ``caption``:
    what the section compares)."""
    ref = found.answers.get(reference)
    art = found.answers[artifact]
    rows = per_class_rows(found.labels, ref, art, classes)
    return (
        (f"<p>{escape(caption)}</p>" if caption else "")
        + _summary(paired, checks, note)
        + "<h3>Per class</h3>"
        + _class_table(rows)
        + f"<h3>Images that changed their answer ({len(found.thumbnails)})</h3>"
        + _flips(found, ref, art, classes)
    )

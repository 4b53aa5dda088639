"""``deploykit validate``: the CI gate. Re-runs the PyTorch model and the artifact on the same inputs and
checks parity against the family's tolerances for the artifact's precision.

The artifact knows what it is (:func:`~deploykit.workflows.predict.artifact_record`): the preset, the
classes and resolution, the weights' content hash (ONNX metadata or engine sidecar) and the weights file
(``manifest.json`` beside it). :func:`rebuild_model` rebuilds exactly that model, so ``--model`` and
``--weights`` are optional; given, they must agree with the record (a contradiction is bad usage, exit 2,
not a parity failure).

The gate's verdict is a list of :class:`~deploykit.validation.metrics.Check` records: one per gated parity
metric of every output, one per metric compared with a ``--baseline``, and one for the ``--locate``
finding when it ran. The exit code, the text summary, ``--json`` and ``--junit`` are all rendered from those
records, so they cannot disagree.

Exit codes: 0 every record passed, 1 one failed (parity, or a metric regressed), 2 bad usage or bad input.
"""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from deploykit.core.artifacts import ENGINE_SUFFIXES, ONNX_SUFFIXES
from deploykit.core.config import ExportConfig, default_config, resolve_config
from deploykit.core.errors import ArtifactError, ConfigError, DeployKitError, distinct_prefixes
from deploykit.core.io import atomic_write_text, sha256_file
from deploykit.runtime.base import run_batched
from deploykit.validation.baseline import compare_baseline, read_baseline, regression_dict, write_baseline
from deploykit.validation.inputs import validation_batch
from deploykit.validation.locate import LocateReport
from deploykit.validation.metrics import Check, ParityResult, compare_outputs
from deploykit.validation.reference import REFERENCE_NAME, GoldenReference, check_reference, read_reference
from deploykit.workflows.predict import ArtifactRecord, artifact_record

if TYPE_CHECKING:
    from deploykit.models.registry import Preset


def locate_check(locate: LocateReport) -> Check:
    """The ``--locate`` finding as a record: it fails when a module of the model diverges."""
    return Check(
        kind="locate",
        output="modules",
        metric="first_divergence",
        value=None,
        threshold=None,
        passed=locate.first is None,
        detail=locate.describe(),
    )


@dataclass(kw_only=True)
class ValidationReport:
    """What ``deploykit validate`` found; :attr:`checks` are its records, and the verdict, the text, the JSON
    and the JUnit report are rendered from them alone."""

    artifact: str
    preset: str
    precision: str
    runtime: str
    parity: ParityResult
    facts: dict[str, Any]
    locate: LocateReport | None = None
    baseline: list[Check] | None = None  # None: no baseline compared

    @property
    def checks(self) -> list[Check]:
        """Every record of the gate: parity, then the --locate finding, then the baseline comparison."""
        found = [locate_check(self.locate)] if self.locate is not None else []
        return [*self.parity.checks, *found, *(self.baseline or [])]

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def _worst(self) -> Check | None:
        return max((c for c in self.failures if c.kind == "parity"), key=Check.excess, default=None)

    def summary(self) -> str:
        p = self.parity
        head = (
            f"{'PASS' if self.passed else 'FAIL'} {self.artifact} vs {self.preset} ({self.precision}, "
            f"{self.runtime}): max abs {p.worst_metric('max_abs'):.3g}, cosine min "
            f"{p.worst_metric('cosine_min'):.6f}, top-1 {p.worst_metric('top1'):.1%}, "
            f"top-5 {p.worst_metric('top5'):.1%} over {self.facts['images']} images"
        )
        lines = [head]
        ref = self.facts.get("reference")
        if ref:
            lines.append(f"reference: {ref['file']} (sha256 {ref['sha256'][:12]}), outputs {ref['outputs']}")
        checks, worst = self.checks, self._worst()
        if worst is not None:
            lines.append(f"worst: {worst.describe()}")
        lines += [
            f"also failed: {c.describe()}"
            for c in checks
            if c.kind == "parity" and not c.passed and c is not worst
        ]
        lines += [c.describe() for c in checks if c.kind == "locate"]
        if self.baseline is not None:
            regressed = [c for c in checks if c.kind == "baseline" and not c.passed]
            lines += [f"baseline: {c.describe()}" for c in regressed] or ["baseline: no metric regressed"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        worst = self._worst()
        checks = self.checks
        return {
            "artifact": self.artifact,
            "preset": self.preset,
            "precision": self.precision,
            "runtime": self.runtime,
            "passed": self.passed,
            "worst": worst.to_dict() if worst else None,
            "first_divergence": self.locate.first.to_dict() if self.locate and self.locate.first else None,
            **self.facts,
            "parity": self.parity.to_dict(),
            "locate": self.locate.to_dict() if self.locate else None,
            "baseline_regressions": None
            if self.baseline is None
            else [regression_dict(c) for c in checks if c.kind == "baseline" and not c.passed],
            "checks": [c.to_dict() for c in checks],
        }


def _onnx_runner(path: Path, proto, expected: tuple[int, ...]):
    from deploykit.core.onnx_io import onnx_precision
    from deploykit.runtime.ort_runner import OrtRunner

    runner = OrtRunner(path)
    runner.check_image_input(tuple(expected), str(path))  # one float image input of the model's size
    return runner, onnx_precision(proto), proto


def _engine_source(path: Path):
    """The ONNX file an engine was built from, when it is beside the engine (for --locate)."""
    from deploykit.core.onnx_io import load_onnx
    from deploykit.engine.runner import read_sidecar

    source = path.parent / str((read_sidecar(path).get("source_onnx") or {}).get("file") or "")
    return load_onnx(source) if source.is_file() and source.suffix == ".onnx" else None


# ------------------------------------------------------------------------------- the artifact's model
def _short(sha: str | None) -> str:
    return sha[:12] if sha else "?"


def artifact_preset(path: str | Path, record: ArtifactRecord | None, model: str | None = None) -> Preset:
    """The preset ``path`` was exported from: its record's; ``model`` (``--model``) must name the same."""
    from deploykit.models import get_preset

    if model is not None:
        spec = get_preset(model)
        recorded = record.preset if record is not None else None
        if recorded and recorded != spec.name:
            named = model if model == spec.name else f"{model} ({spec.name})"
            raise ConfigError(
                f"--model {named} contradicts {path}: it was exported from {recorded} "
                "(leave --model out: the artifact records its preset)"
            )
        return spec
    if record is None or not record.preset:
        raise ConfigError(f"{path} records no preset (not exported by deploykit?): pass --model PRESET")
    return get_preset(record.preset)


def _recorded_weights(path: Path, record: ArtifactRecord, hint: str) -> tuple[Path | None, str | None]:
    """The weights the artifact was exported with, from its record (none: random weights); a file that is
    not there, or weights no file holds (a model in memory), is a ConfigError saying what to pass."""
    info = record.weights_file or {}
    if info.get("path"):
        weights = Path(str(info["path"]))
        if not weights.exists():
            raise ConfigError(
                f"{path} was exported with weights {weights} (sha256 {_short(info.get('sha256'))}), which "
                f"are not there: {hint}"
            )
        return weights, info.get("format") or None
    state = _short(record.weights_state_sha256)
    if record.weights_source == "memory":
        raise ConfigError(
            f"{path} was exported from a model in memory (weights state sha256 {state}): pass --weights with "
            "that model's state_dict (torch.save(model.state_dict(), 'weights.pth'))"
        )
    if record.random_weights is False:
        raise ConfigError(
            f"{path} was exported with weights (state sha256 {state}) that no manifest.json beside it "
            f"names: {hint}"
        )
    return None, None


def rebuild_model(
    path: str | Path,
    record: ArtifactRecord,
    spec: Preset,
    config: ExportConfig | None = None,
    *,
    weights: str | Path | None = None,
    weights_format: str | None = None,
    hint: str = "pass --weights FILE",
):
    """The model ``path`` was exported from (a :class:`~deploykit.workflows.model.PreparedModel`): the
    preset at its recorded classes and resolution, the export's seed, the given ``weights`` or else the
    recorded ones (file there and unchanged), the recorded preprocessing (``config``: tolerances and
    defaults, the family's by default). Weights whose content differs from the recorded hash, and a config
    that contradicts the record, are a :class:`ConfigError` naming both; ``hint`` ends the messages about
    weights the artifact needs and cannot find."""
    from deploykit.workflows.model import prepare_model, state_sha256

    path = Path(path)
    config = config or default_config(spec.family)
    args = record.model_args or {}
    for key in ("num_classes", "image_size"):
        asked = getattr(config, key)
        if key in args and asked is not None and asked != args[key]:
            raise ConfigError(f"{path} records {key} {args[key]}; the config's {key} {asked} does not fit it")
    wanted = dataclasses.replace(
        config,
        num_classes=args.get("num_classes", config.num_classes),
        image_size=args.get("image_size", config.image_size),
        seed=record.seed if record.seed is not None else config.seed,
        labels=None,
        preprocessing={},
    )
    given = weights is not None
    if not given:
        weights, weights_format = _recorded_weights(path, record, hint)
    what = f"--weights {weights}" if given else f"the recorded weights {weights}"
    try:
        prepared = prepare_model(
            spec.name,
            config=wanted,
            weights=weights,
            weights_format=weights_format,
            architecture={k: v for k, v in args.items() if k not in ("num_classes", "image_size")},
        )
    except ConfigError as exc:
        if weights is None or "contradicts the checkpoint" not in str(exc):
            raise
        found = str(exc).split(": ", 1)[-1]
        raise ConfigError(f"{what} do not fit {path} ({record.describe_args()}): {found}") from None
    except DeployKitError as exc:
        if given or weights is None:
            raise
        raise ConfigError(f"{what} no longer load ({exc}): {hint}") from None
    info = prepared.weights_info
    recorded_file = (record.weights_file or {}).get("sha256")
    if not given and info is not None and recorded_file and info.sha256 != recorded_file:
        then, now = distinct_prefixes(recorded_file, info.sha256)
        raise ConfigError(
            f"{path} was exported with weights {weights} (sha256 {then}), which have "
            f"changed since (sha256 now {now}): {hint}"
        )
    if weights is not None and (record.weights_state_sha256 or record.random_weights):
        state = state_sha256(prepared.model)
        if record.random_weights:
            raise ConfigError(
                f"{path} was exported with random weights, but {what} were given (state sha256 "
                f"{_short(state)}): leave --weights out"
            )
        if state != record.weights_state_sha256:
            given, recorded = distinct_prefixes(state, record.weights_state_sha256 or "?")
            raise ConfigError(
                f"{what} are not the weights {path} was exported with: state sha256 {given}, the "
                f"artifact records {recorded}"
            )
    _recorded_preprocessing(prepared.model, record)
    return prepared


def _recorded_preprocessing(model, record: ArtifactRecord) -> None:
    """The validation images are made as the export recorded (mean, std, crop, interpolation)."""
    names = {f.name for f in dataclasses.fields(model.data_config)} - {"input_size"}
    recorded = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in (record.preprocessing or {}).items()
        if k in names and v is not None
    }
    if recorded:
        model.data_config = dataclasses.replace(model.data_config, **recorded)


def _read_artifact(path: Path):
    """``(record, proto)``: the artifact's record and, for an ONNX file, its checked graph."""
    if path.suffix in ONNX_SUFFIXES:
        from deploykit.core.onnx_io import load_onnx

        proto = load_onnx(path)
        return artifact_record(path, meta={p.key: p.value for p in proto.metadata_props}), proto
    if path.suffix in ENGINE_SUFFIXES:
        return artifact_record(path), None
    raise ArtifactError(
        f"{path}: unknown artifact type (expected {', '.join(ONNX_SUFFIXES + ENGINE_SUFFIXES)})"
    )


def validate_artifact(
    artifact: str | Path,
    preset: str | None = None,
    *,
    weights: str | Path | None = None,
    inputs_dir: str | Path | None = None,
    config: ExportConfig | None = None,
    weights_format: str | None = None,
    locate: bool = False,
    reference: str | Path | None = None,
) -> ValidationReport:
    """Parity of ``artifact`` against the PyTorch model it was exported from (its recorded preset, model
    args and weights; ``preset`` and ``weights``, when given, must agree with the record: see
    :func:`rebuild_model`); with ``locate``, a failure is traced to the first diverging module (no extra
    work when parity holds). With ``reference`` (a golden ``reference.npz``) the model's outputs are
    recomputed on the reference's images, which the report names."""
    from deploykit.runtime.torch_runner import TorchRunner

    path = Path(artifact)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    record, proto = _read_artifact(path)
    spec = artifact_preset(path, record, preset)
    config = config or default_config(spec.family)
    prepared = rebuild_model(path, record, spec, config, weights=weights, weights_format=weights_format)
    model, weights_info = prepared.model, prepared.weights_info
    if proto is not None:
        runner, precision, graph = _onnx_runner(path, proto, tuple(model.input_size))
        runtime = runner.name
    else:
        from deploykit.engine.runner import TensorRTRunner

        runner = TensorRTRunner(path)
        precision, runtime, graph = runner.precision, runner.name, None
    golden = None
    if reference is not None:
        golden = _golden(path, record, reference)
        if inputs_dir is not None:
            raise ConfigError("--inputs and --reference both choose the images: give one")
        images = golden.batch(precision)[0]
    else:
        count = config.num_images if precision == "fp32" else max(config.num_images, 64)
        images = validation_batch(model.data_config, count, config.seed, inputs_dir).images
    reference_out = run_batched(TorchRunner(model), images, config.batch.max)
    candidate = run_batched(runner, images, config.batch.max)
    parity = _artifact_parity(reference_out, candidate, config.tolerances(precision), precision)
    facts = {
        "sha256": sha256_file(path),
        "images": len(images),
        "inputs": str(inputs_dir) if inputs_dir else "built-in" if golden is None else "reference",
        "reference": None if golden is None else _reference_fact(golden, "recomputed with PyTorch"),
        "weights": weights_info.to_dict() if weights_info else None,
        "model_args": dict(prepared.model_args),
        "random_weights": prepared.random_weights,
    }
    report = ValidationReport(
        artifact=str(path), preset=spec.name, precision=precision, runtime=runtime, parity=parity, facts=facts
    )
    if locate and not parity.passed:
        report.locate = _locate(
            model,
            path,
            graph=graph,
            precision=precision,
            images=images,
            reference=reference_out,
            candidate=candidate,
            config=config,
        )
    return report


def _locate(
    model, path: Path, *, graph, precision: str, images, reference, candidate, config: ExportConfig
) -> LocateReport:
    stage = "fp16" if precision == "fp16" else "onnx"
    if path.suffix in ENGINE_SUFFIXES:
        graph, stage = _engine_source(path), "onnx (the engine's source)"
    from deploykit.workflows.locate import locate_failure

    report = locate_failure(
        model, images, reference, candidate, config.fp32, config.tolerances(precision), graph, stage
    )
    if path.suffix in ENGINE_SUFFIXES and report.first is None:
        report.stage = "engine"
        report.note = (
            "the engine's source ONNX matches PyTorch module by module: the divergence comes from the "
            "TensorRT build (an engine exposes no intermediate tensors)"
            if graph is not None
            else "the engine's source ONNX is not beside it; an engine exposes no intermediate tensors"
        )
    return report


def _artifact_parity(
    reference: np.ndarray, candidate: np.ndarray, tolerances, precision: str
) -> ParityResult:
    """The artifact's logits against the PyTorch FP32 ones (recomputed, or stored in a reference)."""
    return compare_outputs(
        {"logits": reference.astype(np.float32)},
        {"logits": candidate.astype(np.float32)},
        tolerances,
        stage=f"{precision} artifact",
    )


# ------------------------------------------------------------------------------- golden references
def torch_available() -> bool:
    """Whether PyTorch imports here (a device install has no torch)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _golden(path: Path, record: ArtifactRecord, reference: str | Path | None) -> GoldenReference:
    """The golden reference of ``path``: ``reference``, else the one beside it; checked against what the
    artifact records (its sha256, else its identity)."""
    ref_path = Path(reference) if reference is not None else path.parent / REFERENCE_NAME
    if reference is None and not ref_path.is_file():
        raise ConfigError(
            f"no {REFERENCE_NAME} beside {path} and PyTorch is not installed: copy the export's {REFERENCE_NAME} "
            "next to the artifact, pass --reference FILE, or install torch to recompute"
        )
    # the hash the artifact records is checked first, on the file's bytes: a wrong file is refused before
    # anything in it is opened
    golden = read_reference(ref_path, record.reference_sha256, artifact=path)
    check_reference(
        golden,
        str(path),
        {
            "reference_sha256": record.reference_sha256,
            "preset": record.preset,
            "model_args": record.model_args,
            "weights_state_sha256": record.weights_state_sha256,
        },
    )
    return golden


def _reference_fact(golden: GoldenReference, outputs: str) -> dict[str, Any]:
    return {"file": golden.path, "sha256": golden.sha256, "outputs": outputs}


def validate_with_reference(
    artifact: str | Path, *, reference: str | Path | None = None, batch: int = 32
) -> ValidationReport:
    """Parity of ``artifact`` against the PyTorch FP32 outputs its export stored in its golden reference
    (``reference``, else ``reference.npz`` beside it), on the reference's images, with the reference's
    tolerances for the artifact's precision: no PyTorch needed. ONNX files run on ONNX Runtime, engines on
    the torch-free TensorRT runner."""
    path = Path(artifact)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    record, proto = _read_artifact(path)
    golden = _golden(path, record, reference)
    shape = (golden.identity.get("input") or {}).get("shape") or []
    if proto is not None:
        runner, precision, _ = _onnx_runner(path, proto, tuple(int(d) for d in shape[1:]))
    else:
        from deploykit.engine.runner import TensorRTRunner

        runner = TensorRTRunner(path)
        precision = runner.precision
    images, outputs = golden.batch(precision)
    candidate = run_batched(runner, images, batch)
    parity = _artifact_parity(outputs, candidate, golden.tolerances(precision), precision)
    facts = {
        "sha256": sha256_file(path),
        "images": len(images),
        "inputs": "reference",
        "reference": _reference_fact(golden, "stored (PyTorch FP32 at export)"),
        "family": str(golden.identity.get("family") or ""),
        "weights": None,
        "model_args": golden.identity.get("model_args"),
        "random_weights": golden.identity.get("random_weights"),
    }
    preset = str(golden.identity.get("preset") or record.preset or "?")
    return ValidationReport(
        artifact=str(path),
        preset=preset,
        precision=precision,
        runtime=runner.name,
        parity=parity,
        facts=facts,
    )


def write_json(report: ValidationReport, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2) + "\n")


def _junit_case(report: ValidationReport, check: Check) -> tuple[str, str]:
    """(classname, name) of a record's test case: ``<preset>.<precision>.<output>`` / ``<metric>`` for parity,
    ``....baseline`` / ``<output>.<metric>`` for the baseline, ``....locate`` / ``first_divergence``."""
    prefix = f"{report.preset}.{report.precision}"
    if check.kind == "parity":
        return f"{prefix}.{check.output}", check.metric
    if check.kind == "baseline":
        return f"{prefix}.baseline", f"{check.output}.{check.metric}"
    return f"{prefix}.{check.kind}", check.metric


def write_junit(report: ValidationReport, path: str | Path) -> None:
    """One JUnit test case per record of the gate, failing when the record failed, so CI dashboards show
    which check failed (and the failure count is the number of failed records)."""
    suite = ET.Element("testsuite", name=f"deploykit.validate.{report.preset}")
    checks = report.checks
    for check in checks:
        classname, name = _junit_case(report, check)
        case = ET.SubElement(suite, "testcase", classname=classname, name=name)
        ET.SubElement(case, "system-out").text = check.describe()
        if not check.passed:
            ET.SubElement(case, "failure", message=check.describe())
    suite.set("tests", str(len(checks)))
    suite.set("failures", str(sum(not c.passed for c in checks)))
    atomic_write_text(path, ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n")


def validate_command(
    artifact: str | Path,
    *,
    model: str | None = None,
    weights: str | Path | None = None,
    weights_format: str | None = None,
    inputs_dir: str | Path | None = None,
    config_path: str | Path | None = None,
    json_out: str | Path | None = None,
    junit_out: str | Path | None = None,
    locate: bool = False,
    baseline_path: str | Path | None = None,
    update_baseline: bool = False,
    reference: str | Path | None = None,
) -> int:
    """``deploykit validate``: validate, write the requested reports, print the summary; the exit code.
    ``model``: the preset, by default the one the artifact records. Without PyTorch (or with
    ``reference`` and no ``model``/``weights``) the artifact is checked against its golden reference's
    stored outputs; with PyTorch the model is rebuilt and run (on the reference's images when given)."""
    if update_baseline and not baseline_path:
        raise ConfigError("--update-baseline needs --baseline FILE")
    # a baseline to compare with is read (and checked) before anything runs
    baseline = read_baseline(baseline_path) if baseline_path and not update_baseline else None
    path = Path(artifact)
    if not torch_available() or (reference is not None and model is None and weights is None):
        if not torch_available() and (model is not None or weights is not None or locate):
            given = "--model" if model is not None else "--weights" if weights is not None else "--locate"
            raise ConfigError(
                f"{given} runs the PyTorch model, which is not installed here; without it validate checks "
                f"against the export's {REFERENCE_NAME}"
            )
        if inputs_dir is not None or locate:
            raise ConfigError(
                f"{'--inputs' if inputs_dir is not None else '--locate'} needs the PyTorch model (--model); "
                f"the stored reference has its own images"
            )
        report = validate_with_reference(artifact, reference=reference)
        config = resolve_config(report.facts["family"], config_path)
        return _finish_report(
            report, config.baseline_factor, baseline, baseline_path, update_baseline, json_out, junit_out
        )
    if model is None:
        if not path.is_file():
            raise ArtifactError(f"artifact not found: {path}")
        preset = artifact_preset(path, artifact_record(path))
    else:
        from deploykit.models import get_preset

        preset = get_preset(model)  # checked against the artifact's record by validate_artifact
    config = resolve_config(preset.family, config_path)
    report = validate_artifact(
        artifact,
        model if model is not None else preset.name,
        weights=weights,
        inputs_dir=inputs_dir,
        config=config,
        weights_format=weights_format,
        locate=locate,
        reference=reference,
    )
    return _finish_report(
        report, config.baseline_factor, baseline, baseline_path, update_baseline, json_out, junit_out
    )


def _finish_report(
    report: ValidationReport,
    factor: float,
    baseline: dict[str, Any] | None,
    baseline_path: str | Path | None,
    update_baseline: bool,
    json_out: str | Path | None,
    junit_out: str | Path | None,
) -> int:
    """The comparison with ``baseline`` (read from ``baseline_path``), the JSON and JUnit files and the
    summary of ``report``; its exit code."""
    if baseline is not None:
        report.baseline = compare_baseline(report, baseline, factor)
    if json_out:
        write_json(report, json_out)
    if junit_out:
        write_junit(report, junit_out)
    click.echo(report.summary())
    if update_baseline:
        if report.passed:
            write_baseline(report, baseline_path)
            click.echo(f"baseline written: {baseline_path}")
        else:
            click.echo(f"baseline not written: parity failed ({baseline_path} unchanged)")
    return report.exit_code

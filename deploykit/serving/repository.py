"""``deploykit triton``: a Triton Inference Server model repository from an export directory.

Four models, all at the same version number:

* ``NAME`` — the artifact: ``onnxruntime`` (``model.onnx``), ``tensorrt`` (``model.plan``, the engine
  built on the target GPU) or ``python`` (``model.py`` running ``model.onnx`` with ONNX Runtime: the variant
  a CPU-only server such as the one in nvidia-pytriton can serve). The precision picks the export's file:
  ``fp32`` ``model.onnx``, ``fp16`` ``model.fp16.onnx``, ``int8`` ``model.int8.cpu.onnx`` (ONNX Runtime's
  dynamic quantization, FP32 I/O) for ONNX Runtime, or the engine built from ``model.int8.onnx`` for
  ``tensorrt``; whichever it is, it is served as ``model.onnx`` / ``model.plan``. ``max_batch_size`` is the export's batch
  profile maximum; inputs/outputs carry the artifact's names, types and dims without the batch axis;
  dynamic batching prefers the profile's batch sizes.
* ``NAME_preprocess`` — Python backend: encoded image bytes -> the preset's preprocessing.
* ``NAME_postprocess`` — Python backend: logits -> top-k classes, probabilities and labels (the
  artifact's own class names unless ``labels`` are given; ImageNet-1k names for an unnamed 1000-class
  model, else ``class i``), kept as ``labels.json`` (a JSON list: no reading of it can misalign a class;
  a name with a line break is refused before anything is written).
* ``NAME_classify`` — ensemble of the three: image bytes in, what ``deploykit predict`` reports out.

Versions are written atomically (a staging directory renamed into place, :mod:`deploykit.serving.versions`)
and never overwritten silently: a new run adds the next version number; replacing an existing one needs
``force``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from deploykit.core.artifacts import Precision, Variant
from deploykit.core.errors import ArtifactError, ConfigError
from deploykit.core.io import sha256_file
from deploykit.core.record import (
    MANIFEST_NAME,
    EngineTarget,
    ExportManifest,
    artifact_record,
    read_export_manifest,
    read_sidecar,
    variant_of,
)
from deploykit.runtime.postprocess import class_labels
from deploykit.serving.choices import (
    VERSION_COMPATIBLE_ARG,
    VERSION_COMPATIBLE_PARAM,
    Backend,
    InstanceKind,
)
from deploykit.serving.pbtxt import Enum
from deploykit.serving.versions import choose_version, locked, open_repository, publish

#: the export's ONNX file each precision serves through ONNX Runtime (onnxruntime and python backends)
ONNX_SOURCES = {
    Precision.FP32: Variant.FP32.file,
    Precision.FP16: Variant.FP16.file,
    Precision.INT8: Variant.INT8_CPU.file,
}
#: the ONNX file a TensorRT engine of each precision is built from
ENGINE_SOURCES = {
    Precision.FP32: Variant.FP32.file,
    Precision.FP16: Variant.FP16.file,
    Precision.INT8: Variant.INT8.file,
}
#: ONNX element types (as io_signature and the manifest spell them) -> Triton data types
TRITON_TYPES = {"float": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
IMAGE_INPUT = "IMAGE"
TOPK_OUTPUTS = (("CLASSES", "TYPE_INT64"), ("PROBS", "TYPE_FP32"), ("LABELS", "TYPE_STRING"))
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # fullmatch: "$" would accept a trailing newline


@dataclass(kw_only=True)
class RepositoryResult:
    repo: Path
    name: str
    version: int
    backend: Backend
    models: list[str] = field(default_factory=list)
    replaced: bool = False
    #: the export's file the main model serves (model.int8.cpu.onnx, model.fp16.engine, ...)
    artifact: str = ""
    #: what tritonserver must be started with to load it (a version-compatible plan:
    #: ``--backend-config=tensorrt,version-compatible=true``; ``deploykit serve`` passes it)
    server_args: tuple[str, ...] = ()


def read_export(export_dir: str | Path) -> ExportManifest:
    """What the repository needs to know about an export directory: its manifest
    (:func:`~deploykit.core.record.read_export_manifest`)."""
    return read_export_manifest(export_dir)


def _artifact(export: ExportManifest, backend: Backend, precision: Precision) -> tuple[Path, str]:
    """The file to serve and its name inside the version directory; ONNX files are checked against the
    manifest's sha256 (a corrupt or swapped file is refused)."""
    if backend is Backend.TENSORRT:
        onnx_name = ENGINE_SOURCES[precision]
        # deploykit build writes model[.fp16|.int8].engine; deploykit export's engine stage writes model.engine
        for source in (
            export.directory / onnx_name.replace(".onnx", ".engine"),
            export.directory / "model.engine",
        ):
            if source.is_file() and variant_of(source) == precision:
                return source, "model.plan"
        raise ArtifactError(
            f"no {precision} engine in {export.directory}: engines are built on the target GPU (deploykit build "
            f"{export.directory / onnx_name}, or build_engine.sh there); or use --backend onnxruntime"
        )
    source = export.directory / ONNX_SOURCES[precision]
    recorded = export.artifacts.get(source.name)
    if not source.is_file() or recorded is None:
        hints = {Precision.FP16: " (export with --fp16)", Precision.INT8: " (export with --int8)"}
        hint = hints.get(precision, "")
        raise ArtifactError(f"{source} not found in the export{hint}")
    if sha256_file(source) != recorded.get("sha256"):
        raise ArtifactError(f"{source} does not match the sha256 in {MANIFEST_NAME} (modified or corrupt)")
    return source, "model.onnx"


def _io_type(export: ExportManifest, precision: Precision, backend: Backend = Backend.PYTHON) -> str:
    """The Triton type of the served model's input and output: the export's, FP16 for the FP16 graph (and
    the INT8 engine built on it) when that has FP16 I/O, and the INT8 CPU artifact's own (FP32)."""
    dtype = export.input_dtype
    if precision is Precision.INT8 and backend is not Backend.TENSORRT:
        dtype = _int8_cpu_io(export)
    elif precision in (Precision.FP16, Precision.INT8) and export.fp16_io:
        dtype = "float16"
    return TRITON_TYPES.get(dtype, "TYPE_FP32")


def _int8_cpu_io(export: ExportManifest) -> str:
    """The element type of the INT8 CPU artifact's input and output, after checking that its names and dims
    are the export's (the configs carry the export's); an ArtifactError otherwise."""
    from deploykit.core.onnx_io import io_signature, read_onnx_graph

    path = export.directory / ONNX_SOURCES[Precision.INT8]
    signature = io_signature(read_onnx_graph(path))
    want = {
        "inputs": [(export.input_name, list(export.input_dims))],
        "outputs": [(export.output_name, list(export.output_dims))],
    }
    for kind, expected in want.items():
        got = [(v["name"], v["shape"][1:]) for v in signature[kind]]
        if got != expected:
            raise ArtifactError(f"{path}: {kind} {got} are not the export's {expected} (see {MANIFEST_NAME})")
    dtypes = {v["dtype"] for v in signature["inputs"] + signature["outputs"]}
    if len(dtypes) != 1 or next(iter(dtypes)) not in TRITON_TYPES:
        raise ArtifactError(f"{path}: input/output types {sorted(dtypes)} are not one float type")
    return dtypes.pop()


def _tensor(name: str, data_type: str, dims: list[int]) -> dict[str, Any]:
    return {"name": name, "data_type": Enum(data_type), "dims": list(dims)}


def _params(**values: Any) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in values.items()]


def _engine_max_batch(engine: Path) -> int | None:
    profile = read_sidecar(engine).get("profile", {})
    return int(profile["max"][0]) if profile.get("max") else None


@dataclass(frozen=True, kw_only=True)
class _Options:
    """The checked choices that shape the four configs (see :func:`write_repository`)."""

    name: str
    backend: Backend
    max_batch: int
    instances: int
    kind: InstanceKind
    queue_delay_us: int
    precision: Precision
    top_k: int
    ort_tensorrt: bool
    #: the TensorRT plan was built version-compatible (its sidecar says so)
    version_compatible: bool = False


#: how the main model names what serves it
_SERVED_BY = {
    Backend.TENSORRT: {"platform": "tensorrt_plan", "default_model_filename": "model.plan"},
    Backend.ONNXRUNTIME: {"platform": "onnxruntime_onnx", "default_model_filename": "model.onnx"},
    Backend.PYTHON: {"backend": "python"},
}


def model_configs(export: ExportManifest, options: _Options) -> dict[str, dict[str, Any]]:
    """The four ``ModelConfig`` messages (as plain data for :func:`to_pbtxt`), keyed by model name."""
    io_type = _io_type(export, options.precision, options.backend)
    main = _main_config(export, options, io_type)
    pre = _preprocess_config(export, options, io_type)
    post = _postprocess_config(export, options, io_type)
    ensemble = _ensemble_config(export, options, pre, post)
    return {main["name"]: main, pre["name"]: pre, post["name"]: post, ensemble["name"]: ensemble}


def _main_config(export: ExportManifest, options: _Options, io_type: str) -> dict[str, Any]:
    """The model that serves the artifact, with dynamic batching at the export's batch profile."""
    max_batch, instances = options.max_batch, options.instances
    preferred = sorted(
        {b for b in (export.batch["opt"], export.batch["max"], max_batch) if 1 < b <= max_batch}
    )
    main: dict[str, Any] = {"name": options.name, **_SERVED_BY[options.backend]}
    main |= {
        "max_batch_size": max_batch,
        "input": [_tensor(export.input_name, io_type, export.input_dims)],
        "output": [_tensor(export.output_name, io_type, export.output_dims)],
        "dynamic_batching": {
            "preferred_batch_size": preferred or None,
            "max_queue_delay_microseconds": options.queue_delay_us,
        },
        "instance_group": [{"kind": Enum(f"KIND_{options.kind.upper()}"), "count": instances}],
    }
    if options.backend is Backend.PYTHON:  # ONNX Runtime threads per instance: the cores shared by instances
        main["parameters"] = _params(
            onnx_file="model.onnx", intra_op_threads=max(1, (os.cpu_count() or 1) // instances)
        )
    if options.backend is Backend.TENSORRT and options.version_compatible:
        # Triton's TensorRT backend has no per-model switch for it: this marks the model, and the server
        # needs VERSION_COMPATIBLE_ARG (deploykit serve reads the mark and passes it)
        main["parameters"] = _params(**{VERSION_COMPATIBLE_PARAM: "true"})
    if options.backend is Backend.ONNXRUNTIME and options.ort_tensorrt:
        accelerator = {
            "name": "tensorrt",
            "parameters": [{"key": "precision_mode", "value": options.precision.upper()}],
        }
        main["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [accelerator]}}
    return main


def _preprocess_config(export: ExportManifest, options: _Options, io_type: str) -> dict[str, Any]:
    """Python backend: encoded image bytes -> the preset's preprocessing, one instance per main instance."""
    return {
        "name": f"{options.name}_preprocess",
        "backend": "python",
        "max_batch_size": options.max_batch,
        "input": [_tensor(IMAGE_INPUT, "TYPE_STRING", [1])],
        "output": [_tensor(export.input_name, io_type, export.input_dims)],
        "instance_group": [{"kind": Enum("KIND_CPU"), "count": options.instances}],
        "parameters": _params(preprocessing=json.dumps(export.preprocessing, sort_keys=True)),
    }


def _postprocess_config(export: ExportManifest, options: _Options, io_type: str) -> dict[str, Any]:
    """Python backend: logits -> top-k classes, probabilities and labels."""
    return {
        "name": f"{options.name}_postprocess",
        "backend": "python",
        "max_batch_size": options.max_batch,
        "input": [_tensor(export.output_name, io_type, export.output_dims)],
        "output": [_tensor(out, dtype, [options.top_k]) for out, dtype in TOPK_OUTPUTS],
        "instance_group": [{"kind": Enum("KIND_CPU"), "count": 1}],
        "parameters": _params(top_k=options.top_k),
    }


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
    """One ensemble step: ``model``'s tensors (keys) mapped to the ensemble's (values)."""
    return {
        "model_name": model,
        "model_version": -1,
        "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
        "output_map": [{"key": k, "value": v} for k, v in outputs.items()],
    }


def _ensemble_config(
    export: ExportManifest, options: _Options, pre: dict[str, Any], post: dict[str, Any]
) -> dict[str, Any]:
    """``NAME_classify``: preprocess -> the main model -> postprocess (image bytes in, top-k out)."""
    name, inp, out = options.name, export.input_name, export.output_name
    return {
        "name": f"{name}_classify",
        "platform": "ensemble",
        "max_batch_size": options.max_batch,
        "input": [_tensor(IMAGE_INPUT, "TYPE_STRING", [1])],
        "output": post["output"],
        "ensemble_scheduling": {
            "step": [
                _step(pre["name"], {IMAGE_INPUT: IMAGE_INPUT}, {inp: "pixels"}),
                _step(name, {inp: "pixels"}, {out: "logits"}),
                _step(post["name"], {out: "logits"}, {o: o for o, _ in TOPK_OUTPUTS}),
            ]
        },
    }


def _template(name: str) -> bytes:
    return resources.files("deploykit.serving").joinpath(f"triton_models/{name}").read_bytes()


def write_repository(
    export_dir: str | Path,
    repo: str | Path,
    *,
    name: str | None = None,
    backend: Backend | str = Backend.PYTHON,
    max_batch: int | None = None,
    instances: int = 1,
    kind: InstanceKind | str = InstanceKind.CPU,
    queue_delay_us: int = 1000,
    precision: Precision | str = Precision.FP32,
    version: int | None = None,
    force: bool = False,
    top_k: int = 5,
    labels: str | Path | None = None,
    ort_tensorrt: bool = False,
) -> RepositoryResult:
    """Write (or add a version to) the four models of ``export_dir`` in ``repo``; see the module doc."""
    export = read_export(export_dir)
    name = name or export.preset
    backend, kind, precision = _check_choices(
        name, backend=backend, kind=kind, precision=precision, ort_tensorrt=ort_tensorrt
    )
    source, target_name = _artifact(export, backend, precision)
    options = _Options(
        name=name,
        backend=backend,
        max_batch=_max_batch(export, backend, source, max_batch),
        instances=instances,
        kind=kind,
        queue_delay_us=queue_delay_us,
        precision=precision,
        top_k=top_k,
        ort_tensorrt=ort_tensorrt,
        version_compatible=backend is Backend.TENSORRT
        and bool(EngineTarget.from_sidecar(read_sidecar(source)).version_compatible),
    )
    record = artifact_record(source)
    if record.headless:
        raise ArtifactError(
            f"{source} is a headless export (num_classes 0): it outputs features, not classes, and the "
            "repository's classify ensemble needs a classifier (export with --num-classes N)"
        )
    _check_counts(options, num_classes=export.output_dims[-1])
    names = class_labels(export.output_dims[-1], labels if labels is not None else record.checked_labels())
    configs = model_configs(export, options)
    repo = open_repository(repo)
    with locked(repo):  # two `deploykit triton` runs into one repository: one after the other
        version, replaced = choose_version(repo, list(configs), version, force)
        publish(repo, version, _version_files(options, source, target_name, names), configs)
    return RepositoryResult(
        repo=repo,
        name=name,
        version=version,
        backend=backend,
        models=list(configs),
        replaced=replaced,
        artifact=source.name,
        server_args=(VERSION_COMPATIBLE_ARG,) if options.version_compatible else (),
    )


def _check_choices(
    name: str, *, backend: str, kind: str, precision: str, ort_tensorrt: bool
) -> tuple[Backend, InstanceKind, Precision]:
    """The model name and the options that must be one of a fixed set (ConfigError, exit 2, otherwise);
    returns those options as members of their sets."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"model name {name!r} may only hold letters, digits, '_', '.' and '-'")
    for what, value, allowed in (
        ("backend", backend, Backend),
        ("kind", kind, InstanceKind),
        ("precision", precision, Precision),
    ):
        names = [member.value for member in allowed]
        if value not in names:
            raise ConfigError(f"--{what} must be one of {', '.join(names)}, got {value!r}")
    backend, kind, precision = Backend(backend), InstanceKind(kind), Precision(precision)
    if ort_tensorrt and (backend is not Backend.ONNXRUNTIME or kind is not InstanceKind.GPU):
        raise ConfigError("the TensorRT execution accelerator needs --backend onnxruntime --kind gpu")
    if ort_tensorrt and precision is Precision.INT8:
        raise ConfigError(
            "--ort-tensorrt takes fp32 or fp16: the INT8 ONNX Runtime artifact is dynamically quantized for "
            "the CPU; for INT8 on a GPU serve the engine of model.int8.onnx (--backend tensorrt)"
        )
    return backend, kind, precision


def _max_batch(export: ExportManifest, backend: Backend, source: Path, max_batch: int | None) -> int:
    """``max_batch``, or the artifact's batch profile maximum when None (an engine's own profile, else the
    export's); a value outside 1..that maximum is a ConfigError."""
    limit = _engine_max_batch(source) if backend is Backend.TENSORRT else None
    limit = limit or export.batch["max"]
    max_batch = limit if max_batch is None else max_batch
    if not 1 <= max_batch <= limit:
        raise ConfigError(
            f"--max-batch must be in 1..{limit} (the artifact's batch profile), got {max_batch}"
        )
    return max_batch


def _check_counts(options: _Options, *, num_classes: int) -> None:
    if options.instances < 1:
        raise ConfigError(f"--instances must be at least 1, got {options.instances}")
    if options.queue_delay_us < 0:
        raise ConfigError(f"--queue-delay-us must be >= 0, got {options.queue_delay_us}")
    if not 1 <= options.top_k <= num_classes:
        raise ConfigError(f"--top-k must be in 1..{num_classes}, got {options.top_k}")


def labels_json(names: tuple[str, ...]) -> bytes:
    """The postprocess model's ``labels.json``: a JSON list, class ``i``'s name at index ``i`` (no reading
    of it can split a name in two; one name per line for a human reader)."""
    return (json.dumps(list(names), ensure_ascii=False, indent=0) + "\n").encode("utf-8")


def _version_files(
    options: _Options, source: Path, target_name: str, names: tuple[str, ...]
) -> dict[str, dict[str, bytes | Path]]:
    """Each model's version directory: file name -> bytes to write, or a Path to copy."""
    name = options.name
    return {
        name: {target_name: source}
        | ({"model.py": _template("onnx_model.py")} if options.backend is Backend.PYTHON else {}),
        f"{name}_preprocess": {"model.py": _template("preprocess_model.py")},
        f"{name}_postprocess": {
            "model.py": _template("postprocess_model.py"),
            "labels.json": labels_json(names),
        },
        f"{name}_classify": {},  # an ensemble has an empty version directory
    }

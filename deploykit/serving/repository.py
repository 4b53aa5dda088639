"""``deploykit triton``: a Triton Inference Server model repository from an export directory.

Four models, all at the same version number:

* ``NAME`` — the artifact: ``onnxruntime`` (``model.onnx``), ``tensorrt`` (``model.plan``, the engine
  built on the target GPU) or ``python`` (``model.py`` running ``model.onnx`` with ONNX Runtime: the variant
  a CPU-only server such as the one in nvidia-pytriton can serve). ``max_batch_size`` is the export's batch
  profile maximum; inputs/outputs carry the artifact's names, types and dims without the batch axis;
  dynamic batching prefers the profile's batch sizes.
* ``NAME_preprocess`` — Python backend: encoded image bytes -> the preset's preprocessing.
* ``NAME_postprocess`` — Python backend: logits -> top-k classes, probabilities and labels.
* ``NAME_classify`` — ensemble of the three: image bytes in, what ``deploykit predict`` reports out.

Versions are written atomically (a staging directory renamed into place) and never overwritten silently:
a new run adds the next version number; replacing an existing one needs ``force``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from deploykit.core.errors import ArtifactError, ConfigError
from deploykit.core.io import atomic_write_text, ordinary_mode, sha256_file
from deploykit.runtime.postprocess import class_labels
from deploykit.serving.pbtxt import Enum, to_pbtxt

BACKENDS = ("onnxruntime", "tensorrt", "python")
KINDS = ("cpu", "gpu")
PRECISIONS = ("fp32", "fp16")
#: ONNX element types (as io_signature and the manifest spell them) -> Triton data types
TRITON_TYPES = {"float": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
IMAGE_INPUT = "IMAGE"
TOPK_OUTPUTS = (("CLASSES", "TYPE_INT64"), ("PROBS", "TYPE_FP32"), ("LABELS", "TYPE_STRING"))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class RepositoryResult:
    repo: Path
    name: str
    version: int
    backend: str
    models: list[str] = field(default_factory=list)
    replaced: bool = False


@dataclass(frozen=True)
class _Export:
    """What the repository needs to know about an export directory (from its manifest.json)."""

    dir: Path
    preset: str
    input_name: str
    output_name: str
    input_dims: list[int]
    output_dims: list[int]
    batch: dict[str, int]
    preprocessing: dict[str, Any]
    manifest: dict[str, Any]


def read_export(export_dir: str | Path) -> _Export:
    path = Path(export_dir)
    manifest_path = path / "manifest.json"
    if not path.is_dir():
        raise ArtifactError(f"export directory not found: {path}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        io = manifest["io"]
        (inp,), (out,) = io["inputs"], io["outputs"]
        return _Export(
            path,
            manifest["preset"],
            inp["name"],
            out["name"],
            [int(d) for d in inp["shape"][1:]],
            [int(d) for d in out["shape"][1:]],
            {k: int(v) for k, v in manifest["export_config"]["batch"].items()},
            manifest["preprocessing"],
            manifest,
        )
    except FileNotFoundError:
        raise ArtifactError(f"{path} has no manifest.json (not a deploykit export directory?)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{manifest_path} is not a readable deploykit manifest: {exc!r}") from None


def _artifact(export: _Export, backend: str, precision: str) -> tuple[Path, str]:
    """The file to serve and its name inside the version directory; ONNX files are checked against the
    manifest's sha256 (a corrupt or swapped file is refused)."""
    suffix = ".fp16" if precision == "fp16" else ""
    if backend == "tensorrt":
        from deploykit.engine.runner import engine_precision

        # deploykit build writes model[.fp16].engine; deploykit export's engine stage writes model.engine
        for source in (export.dir / f"model{suffix}.engine", export.dir / "model.engine"):
            if source.is_file() and engine_precision(source) == precision:
                return source, "model.plan"
        raise ArtifactError(
            f"no {precision} engine in {export.dir}: engines are built on the target GPU (deploykit build "
            f"{export.dir / f'model{suffix}.onnx'}, or build_engine.sh there); or use --backend onnxruntime"
        )
    source = export.dir / f"model{suffix}.onnx"
    recorded = export.manifest.get("artifacts", {}).get(source.name)
    if not source.is_file() or recorded is None:
        hint = " (export with --fp16)" if precision == "fp16" else ""
        raise ArtifactError(f"{source} not found in the export{hint}")
    if sha256_file(source) != recorded["sha256"]:
        raise ArtifactError(f"{source} does not match the sha256 in manifest.json (modified or corrupt)")
    return source, "model.onnx"


def _io_type(export: _Export, precision: str) -> str:
    dtype = export.manifest["io"]["inputs"][0]["dtype"]
    if precision == "fp16" and export.manifest.get("fp16", {}).get("io") == "fp16":
        dtype = "float16"
    return TRITON_TYPES.get(dtype, "TYPE_FP32")


def _tensor(name: str, data_type: str, dims: list[int]) -> dict[str, Any]:
    return {"name": name, "data_type": Enum(data_type), "dims": list(dims)}


def _params(**values: Any) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in values.items()]


def _engine_max_batch(engine: Path) -> int | None:
    from deploykit.engine.runner import read_sidecar

    profile = read_sidecar(engine).get("profile", {})
    return int(profile["max"][0]) if profile.get("max") else None


def model_configs(
    export: _Export,
    name: str,
    backend: str,
    max_batch: int,
    instances: int,
    kind: str,
    queue_delay_us: int,
    precision: str,
    top_k: int,
    ort_tensorrt: bool,
) -> dict[str, dict[str, Any]]:
    """The four ``ModelConfig`` messages (as plain data for :func:`to_pbtxt`), keyed by model name."""
    io_type = _io_type(export, precision)
    preferred = sorted(
        {b for b in (export.batch["opt"], export.batch["max"], max_batch) if 1 < b <= max_batch}
    )
    batching = {"preferred_batch_size": preferred or None, "max_queue_delay_microseconds": queue_delay_us}
    group = [{"kind": Enum(f"KIND_{kind.upper()}"), "count": instances}]
    main: dict[str, Any] = {"name": name}
    if backend == "tensorrt":
        main |= {"platform": "tensorrt_plan", "default_model_filename": "model.plan"}
    elif backend == "onnxruntime":
        main |= {"platform": "onnxruntime_onnx", "default_model_filename": "model.onnx"}
    else:
        main["backend"] = "python"
    main |= {
        "max_batch_size": max_batch,
        "input": [_tensor(export.input_name, io_type, export.input_dims)],
        "output": [_tensor(export.output_name, io_type, export.output_dims)],
        "dynamic_batching": batching,
        "instance_group": group,
    }
    if backend == "python":  # ONNX Runtime threads per instance: the cores shared between instances
        main["parameters"] = _params(
            onnx_file="model.onnx", intra_op_threads=max(1, (os.cpu_count() or 1) // instances)
        )
    if backend == "onnxruntime" and ort_tensorrt:
        accelerator = {
            "name": "tensorrt",
            "parameters": [{"key": "precision_mode", "value": precision.upper()}],
        }
        main["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [accelerator]}}
    cpu = [{"kind": Enum("KIND_CPU"), "count": instances}]
    pre = {
        "name": f"{name}_preprocess",
        "backend": "python",
        "max_batch_size": max_batch,
        "input": [_tensor(IMAGE_INPUT, "TYPE_STRING", [1])],
        "output": [_tensor(export.input_name, io_type, export.input_dims)],
        "instance_group": cpu,
        "parameters": _params(preprocessing=json.dumps(export.preprocessing, sort_keys=True)),
    }
    post = {
        "name": f"{name}_postprocess",
        "backend": "python",
        "max_batch_size": max_batch,
        "input": [_tensor(export.output_name, io_type, export.output_dims)],
        "output": [_tensor(out, dtype, [top_k]) for out, dtype in TOPK_OUTPUTS],
        "instance_group": [{"kind": Enum("KIND_CPU"), "count": 1}],
        "parameters": _params(top_k=top_k),
    }

    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
        return {
            "model_name": model,
            "model_version": -1,
            "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
            "output_map": [{"key": k, "value": v} for k, v in outputs.items()],
        }

    ensemble = {
        "name": f"{name}_classify",
        "platform": "ensemble",
        "max_batch_size": max_batch,
        "input": [_tensor(IMAGE_INPUT, "TYPE_STRING", [1])],
        "output": post["output"],
        "ensemble_scheduling": {
            "step": [
                step(pre["name"], {IMAGE_INPUT: IMAGE_INPUT}, {export.input_name: "pixels"}),
                step(name, {export.input_name: "pixels"}, {export.output_name: "logits"}),
                step(post["name"], {export.output_name: "logits"}, {o: o for o, _ in TOPK_OUTPUTS}),
            ]
        },
    }
    return {name: main, pre["name"]: pre, post["name"]: post, ensemble["name"]: ensemble}


def _existing_versions(model_dir: Path) -> set[int]:
    if not model_dir.is_dir():
        return set()
    return {int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()}


def _template(name: str) -> bytes:
    return resources.files("deploykit.serving").joinpath(f"triton_models/{name}").read_bytes()


def write_repository(
    export_dir: str | Path,
    repo: str | Path,
    name: str | None = None,
    backend: str = "python",
    max_batch: int | None = None,
    instances: int = 1,
    kind: str = "cpu",
    queue_delay_us: int = 1000,
    precision: str = "fp32",
    version: int | None = None,
    force: bool = False,
    top_k: int = 5,
    labels: str | Path | None = None,
    ort_tensorrt: bool = False,
) -> RepositoryResult:
    """Write (or add a version to) the four models of ``export_dir`` in ``repo``; see the module doc."""
    export = read_export(export_dir)
    name = name or export.preset
    if not _NAME.match(name):
        raise ConfigError(f"model name {name!r} may only hold letters, digits, '_', '.' and '-'")
    for what, value, allowed in (
        ("backend", backend, BACKENDS),
        ("kind", kind, KINDS),
        ("precision", precision, PRECISIONS),
    ):
        if value not in allowed:
            raise ConfigError(f"--{what} must be one of {', '.join(allowed)}, got {value!r}")
    if ort_tensorrt and (backend != "onnxruntime" or kind != "gpu"):
        raise ConfigError("the TensorRT execution accelerator needs --backend onnxruntime --kind gpu")
    source, target_name = _artifact(export, backend, precision)
    limit = _engine_max_batch(source) if backend == "tensorrt" else None
    limit = limit or export.batch["max"]
    max_batch = limit if max_batch is None else max_batch
    if not 1 <= max_batch <= limit:
        raise ConfigError(
            f"--max-batch must be in 1..{limit} (the artifact's batch profile), got {max_batch}"
        )
    if instances < 1:
        raise ConfigError(f"--instances must be at least 1, got {instances}")
    if queue_delay_us < 0:
        raise ConfigError(f"--queue-delay-us must be >= 0, got {queue_delay_us}")
    num_classes = export.output_dims[-1]
    if not 1 <= top_k <= num_classes:
        raise ConfigError(f"--top-k must be in 1..{num_classes}, got {top_k}")
    label_lines = class_labels(num_classes, labels)
    configs = model_configs(
        export, name, backend, max_batch, instances, kind, queue_delay_us, precision, top_k, ort_tensorrt
    )

    repo = Path(repo)
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot create repository {repo}: {exc.strerror or exc}") from None
    existing = {m: _existing_versions(repo / m) for m in configs}
    taken = set().union(*existing.values())
    if version is None:
        version = max(taken, default=0) + 1
    if version < 1:
        raise ConfigError(f"--version must be at least 1, got {version}")
    clash = sorted(m for m, versions in existing.items() if version in versions)
    if clash and not force:
        raise ConfigError(
            f"version {version} of {', '.join(clash)} already exists in {repo}; pass --force to replace it "
            f"(or --version N)"
        )

    files: dict[str, dict[str, bytes | Path]] = {
        name: {target_name: source}
        | ({"model.py": _template("onnx_model.py")} if backend == "python" else {}),
        f"{name}_preprocess": {"model.py": _template("preprocess_model.py")},
        f"{name}_postprocess": {
            "model.py": _template("postprocess_model.py"),
            "labels.txt": ("\n".join(label_lines) + "\n").encode(),
        },
        f"{name}_classify": {},  # an ensemble has an empty version directory
    }
    staged: dict[str, Path] = {}
    try:
        for model, contents in files.items():
            model_dir = repo / model
            model_dir.mkdir(exist_ok=True)
            stage = Path(tempfile.mkdtemp(dir=model_dir, prefix=".deploykit-staging-"))
            stage.chmod(ordinary_mode(executable=True))
            staged[model] = stage
            for filename, data in contents.items():
                if isinstance(data, Path):
                    shutil.copyfile(data, stage / filename)
                else:
                    atomic_write_text(stage / filename, data.decode())
        for model, stage in staged.items():  # every file is in place: publish versions, then configs
            final = repo / model / str(version)
            if final.exists():
                trash = Path(tempfile.mkdtemp(dir=repo / model, prefix=".deploykit-replaced-"))
                final.rename(trash / "old")
                stage.rename(final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                stage.rename(final)
            atomic_write_text(repo / model / "config.pbtxt", to_pbtxt(configs[model]) + "\n")
    except OSError as exc:
        raise ArtifactError(f"cannot write the repository {repo}: {exc.strerror or exc}") from None
    finally:  # a failure leaves no staging directory behind (published ones were renamed away)
        for stage in staged.values():
            shutil.rmtree(stage, ignore_errors=True)
    return RepositoryResult(repo, name, version, backend, list(configs), replaced=bool(clash))

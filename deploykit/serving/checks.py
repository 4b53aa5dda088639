"""The checks ``deploykit serve`` runs on a model repository before Triton sees it.

Triton hangs forever (never ready, never exits) when a Python stub dies before its handshake, e.g. on a
missing ``model.py``; a repository error found here is one clear line instead, before anything starts.
"""

from __future__ import annotations

import re
from pathlib import Path

from deploykit.core.errors import ArtifactError, ConfigError
from deploykit.serving.choices import VERSION_COMPATIBLE_ARG, VERSION_COMPATIBLE_PARAM
from deploykit.serving.install import ServerUnavailableError


def check_repository(repo: str | Path, python_only: bool = False) -> list[str]:
    """Check a model repository before Triton sees it; returns the model names or raises one clear error.

    Every model needs a numeric version directory; Python-backend models need their ``model.py`` (without
    it Triton hangs). With tritonclient installed (extra ``[serve]``) also: every ``config.pbtxt`` parses
    as Triton's ``ModelConfig`` and names its directory; the ONNX file a model serves exists and its
    input/output names, dims and types are the config's; ensemble steps name models of the repository.
    ``python_only``: the server has only the Python backend (nvidia-pytriton's), so every other model is
    refused here rather than by the server a few seconds later.
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise ArtifactError(f"model repository not found: {repo}")
    configs = sorted(repo.glob("*/config.pbtxt"))
    if not configs:
        raise ArtifactError(f"{repo} holds no model (no */config.pbtxt)")
    uses_python = False
    names = {path.parent.name for path in configs}
    for where in configs:
        model = where.parent.name
        versions = sorted(p for p in where.parent.iterdir() if p.is_dir() and p.name.isdigit())
        if not versions:
            raise ArtifactError(f"{where.parent}: no version directory (e.g. {where.parent / '1'})")
        config = _parse_config(where)
        if config is None:  # no tritonclient: file checks only, Triton reports the rest
            if re.search(r'^backend\s*:\s*"python"', where.read_text(encoding="utf-8"), re.MULTILINE):
                uses_python = True
                for version in versions:
                    if not (version / "model.py").is_file():
                        raise ArtifactError(
                            f"{version / 'model.py'} is missing (the Python backend needs it)"
                        )
            continue
        if config.name and config.name != model:
            raise ConfigError(f"{where}: name {config.name!r} must equal its directory name {model!r}")
        if config.platform == "ensemble":
            for step in config.ensemble_scheduling.step:
                if step.model_name not in names:
                    raise ConfigError(f"{where}: ensemble step model {step.model_name!r} is not in {repo}")
            continue
        uses_python |= config.backend == "python"
        if python_only and config.backend != "python":
            kind = config.platform or config.backend
            raise ConfigError(
                f"{where}: {kind!r} needs a Triton with that backend; nvidia-pytriton's tritonserver has only "
                "the Python backend (write the repository with --backend python, or serve it with the NGC "
                "tritonserver container)"
            )
        for version in versions:
            _check_version(config, version, where)
    if uses_python:
        _check_numpy()
    return sorted(names)


#: a config.pbtxt parameter ``<VERSION_COMPATIBLE_PARAM>: "true"`` as the repository writes it
_MARKED = re.compile(
    rf'key\s*:\s*"{VERSION_COMPATIBLE_PARAM}"\s*,?\s*value\s*:?\s*\{{\s*string_value\s*:\s*"true"', re.S
)


def server_args(repo: str | Path) -> tuple[str, ...]:
    """The options tritonserver needs for the models of ``repo``: :data:`VERSION_COMPATIBLE_ARG` when a
    ``tensorrt_plan`` model is marked version-compatible (``deploykit triton`` marks it from the engine's
    sidecar). Read from the text, so it works without tritonclient; an unreadable config adds nothing
    (:func:`check_repository` reports it)."""
    for path in sorted(Path(repo).glob("*/config.pbtxt")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if re.search(r'^platform\s*:\s*"tensorrt_plan"', text, re.MULTILINE) and _MARKED.search(text):
            return (VERSION_COMPATIBLE_ARG,)
    return ()


def _parse_config(path: Path):
    """Triton's ``ModelConfig`` of ``path``, or None without tritonclient; a syntax error is one line."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}:{exc}") from None


def _check_version(config, version: Path, where: Path) -> None:
    if config.backend == "python":
        filename = config.default_model_filename or "model.py"
        if not (version / filename).is_file():
            raise ArtifactError(f"{version / filename} is missing (the Python backend needs it)")
        onnx_file = config.parameters["onnx_file"].string_value if "onnx_file" in config.parameters else None
    elif config.platform in ("onnxruntime_onnx",) or config.backend == "onnxruntime":
        onnx_file = config.default_model_filename or "model.onnx"
    else:  # tensorrt_plan and others: the file must exist
        filename = config.default_model_filename or "model.plan"
        if not (version / filename).is_file():
            raise ArtifactError(f"{version / filename} is missing")
        return
    if onnx_file is None:
        return
    path = version / onnx_file
    if not path.is_file():
        raise ArtifactError(f"{path} is missing ({where} serves it)")
    if config.input or config.output:
        _check_onnx_io(config, path, where)


def _check_onnx_io(config, onnx_path: Path, where: Path) -> None:
    from tritonclient.grpc import model_config_pb2

    from deploykit.core.onnx_io import io_signature, read_onnx_graph
    from deploykit.serving.repository import TRITON_TYPES

    # only the graph's I/O signature is compared with the config: Triton's ONNX Runtime backend decides
    # whether it can run the graph (onnx's checker could refuse a model it serves; serve checks any
    # repository, not only deploykit's)
    proto = read_onnx_graph(onnx_path)
    signature = io_signature(proto)
    initializers = {t.name for t in proto.graph.initializer}
    graph = {
        "input": {v["name"]: v for v in signature["inputs"] if v["name"] not in initializers},
        "output": {v["name"]: v for v in signature["outputs"]},
    }
    batched = config.max_batch_size > 0
    for kind in ("input", "output"):
        for tensor in getattr(config, kind):
            value = graph[kind].get(tensor.name)
            if value is None:
                raise ConfigError(
                    f"{where}: {kind} {tensor.name!r} is not an {kind} of {onnx_path.name} "
                    f"(it has {sorted(graph[kind])})"
                )
            dims = [d if isinstance(d, int) and d > 0 else -1 for d in value["shape"]]  # symbolic: -1
            dims = dims[1:] if batched else dims
            if list(tensor.dims) != dims:
                raise ConfigError(
                    f"{where}: {kind} {tensor.name!r} dims {list(tensor.dims)} do not match {onnx_path.name} {dims}"
                )
            want = TRITON_TYPES.get(value["dtype"])
            got = model_config_pb2.DataType.Name(tensor.data_type)
            if want and got != want:
                raise ConfigError(f"{where}: {kind} {tensor.name!r} is {got}, {onnx_path.name} has {want}")


def _check_numpy() -> None:
    """The Python backend stub of nvidia-pytriton 0.7.0 (Triton 2.51) returns empty output tensors when the
    environment has numpy 2 (measured here); nvidia-pytriton itself requires numpy < 2."""
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise ServerUnavailableError(
            f"the Python backend of this Triton needs numpy < 2 in the serving environment, found numpy "
            f"{numpy.__version__} (pip install 'numpy<2')"
        )

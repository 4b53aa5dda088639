"""The TensorRT names deploykit's engine code uses (TensorRT 10.3+ and 11.x), checked without TensorRT.

The engine code uses only names that exist in **both** real Python bindings (the committed identifier
lists of tensorrt_cu12_bindings 10.3.0 and tensorrt_cu13_bindings 11.4, read with ``ast``), declares each
in its module's ``TRT_API_USED``, and uses none of the APIs TensorRT 11 removed. Importing the engine
package needs neither TensorRT nor torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from deploykit.engine import builder as engine_builder

ENGINE_DIR = Path(engine_builder.__file__).parent
IDENTIFIER_LISTS = {
    "10.3": Path(__file__).parent / "data" / "tensorrt10_identifiers.txt",
    "11.4": Path(__file__).parent / "data" / "tensorrt11_identifiers.txt",
}
#: variables (or ``self.`` attributes, leading underscores ignored) that hold TensorRT objects
TRT_OBJECTS = {
    "builder",
    "network",
    "config",
    "parser",
    "profile",
    "engine",
    "context",
    "inspector",
    "runtime",
    "cache",
    "error",
    "logger",
    "serialized",
}
#: APIs removed (or deprecated and ignored) in TensorRT 11 ("Removed Python APIs and Replacements")
REMOVED = {
    # every precision flag of BuilderFlag (TF32 stays: deploykit clears it)
    "FP16",
    "INT8",
    "BF16",
    "FP8",
    "INT4",
    "FP4",
    "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS",
    "device_memory_size",
    "get_device_memory_size_for_profile",
    "platform_has_fast_fp16",
    "platform_has_fast_int8",
    "int8_calibrator",
    "set_quantization_flag",
    "EXPLICIT_BATCH",
    # not here: STRONGLY_TYPED, deprecated and ignored in 11.x but what makes a 10.x network strongly typed
    "max_workspace_size",
    "execute_async_v2",
    "get_binding_shape",
    "binding_is_input",
}


# -------------------------------------------------------------------------------- identifier checks
def _identifiers(version: str) -> set[str]:
    lines = IDENTIFIER_LISTS[version].read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def _modules() -> list[Path]:
    return sorted(ENGINE_DIR.glob("*.py"))


def _trt_chains(tree: ast.AST) -> list[list[str]]:
    """Maximal attribute chains rooted at the name ``trt``: ``trt.MemoryPoolType.WORKSPACE`` -> [..]."""
    chains, inner = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            parts, cur = [], node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                inner.add(id(cur.value))
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "trt":
                chains.append(parts[::-1])
    return chains


def _receiver(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id.lstrip("_")
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr.lstrip("_")
    return None


def _trt_object_members(tree: ast.AST) -> set[str]:
    """Attributes read, written or called on variables holding TensorRT objects (``config.x``, ...)."""
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and _receiver(node.value) in TRT_OBJECTS
    }


def _declared(tree: ast.Module) -> tuple[str, ...] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "TRT_API_USED" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return None


def test_identifier_list_is_from_tensorrt11_bindings():
    text = IDENTIFIER_LISTS["11.4"].read_text(encoding="utf-8")
    assert IDENTIFIER_LISTS["11.4"].stat().st_size < 1_500_000
    assert text.startswith("# ") and "tensorrt_cu13_bindings 11." in text.splitlines()[0]
    ids = _identifiers("11.4")
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == sorted(set(body)), "identifier list must be sorted and deduplicated"
    # TensorRT 11 facts the list must reflect: the core API is there, the removed one is not
    assert {"Builder", "OnnxParser", "build_serialized_network", "execute_async_v3", "Runtime"} <= ids
    assert {"device_memory_size_v2", "get_engine_information", "set_timing_cache"} <= ids
    assert not {"FP16", "device_memory_size", "platform_has_fast_fp16", "EXPLICIT_BATCH"} & ids
    assert not {"int8_calibrator", "OBEY_PRECISION_CONSTRAINTS"} & ids


def test_identifier_list_is_from_tensorrt10_bindings():
    text = IDENTIFIER_LISTS["10.3"].read_text(encoding="utf-8")
    assert text.startswith("# ") and "tensorrt_cu12_bindings 10.3.0" in text.splitlines()[0]
    ids = _identifiers("10.3")
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == sorted(set(body)), "identifier list must be sorted and deduplicated"
    # TensorRT 10.3 facts: weak typing is still there (FP16 flag, EXPLICIT_BATCH) next to the name-based API
    assert {
        "Builder",
        "OnnxParser",
        "execute_async_v3",
        "set_tensor_address",
        "get_engine_information",
    } <= ids
    assert {"FP16", "OBEY_PRECISION_CONSTRAINTS", "EXPLICIT_BATCH", "STRONGLY_TYPED", "TF32"} <= ids
    assert ids != _identifiers("11.4")


@pytest.mark.parametrize("version", sorted(IDENTIFIER_LISTS))
@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_trt_attribute_chains_exist_in_both_bindings(path: Path, version: str):
    ids = _identifiers(version)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    missing = {".".join(c) for c in _trt_chains(tree) if not set(c) <= ids}
    assert not missing, f"{path.name}: not in the TensorRT {version} bindings: {sorted(missing)}"


@pytest.mark.parametrize("version", sorted(IDENTIFIER_LISTS))
@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_trt_api_used_is_complete_and_exists(path: Path, version: str):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    chains = _trt_chains(tree)
    members = _trt_object_members(tree)
    declared = _declared(tree)
    if declared is None:
        assert not chains and not members, f"{path.name} uses TensorRT but declares no TRT_API_USED"
        return
    assert len(declared) == len(set(declared)), f"{path.name}: duplicates in TRT_API_USED"
    unknown = sorted(set(declared) - _identifiers(version))
    assert not unknown, f"{path.name}: TRT_API_USED names not in the TensorRT {version} bindings: {unknown}"
    used = {name for chain in chains for name in chain} | members
    undeclared = sorted(used - set(declared))
    assert not undeclared, f"{path.name}: TensorRT names used but not listed in TRT_API_USED: {undeclared}"
    unused = sorted(set(declared) - used)
    assert not unused, f"{path.name}: TRT_API_USED lists names the code does not use: {unused}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_no_api_removed_in_tensorrt11(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & REMOVED, f"{path.name} uses APIs removed in TensorRT 11: {sorted(names & REMOVED)}"


#: the one builder flag deploykit turns on (``set_flag`` is still in 11.x): never a precision flag, which is
#: how weak typing starts
ALLOWED_FLAGS = {"trt.BuilderFlag.VERSION_COMPATIBLE"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_the_only_builder_flag_set_is_version_compatible(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "set_flag"
    ]
    flags = {ast.unparse(arg) for call in calls for arg in call.args}
    assert flags <= ALLOWED_FLAGS, f"{path.name} sets builder flags {sorted(flags - ALLOWED_FLAGS)}"
    assert all(len(call.args) == 1 and not call.keywords for call in calls)


def test_engine_package_imports_without_tensorrt():
    code = "import sys, deploykit.engine, deploykit.engine.runner; assert 'tensorrt' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_engine_runtime_imports_no_torch():
    code = (
        "import sys, deploykit.engine.runner, deploykit.runtime; "
        "from deploykit import load; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

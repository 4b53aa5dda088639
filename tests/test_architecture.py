"""The package's shape, read from its sources (nothing is imported or written into the package):

- every ``deploykit.*`` import (also those inside functions) goes to a package the importing package's
  ``__init__`` docstring declares under "May import:", and the declared lists form no circle;
- the artifact record is kept in one place: no module outside ``deploykit/core/record/`` spells a metadata
  key or ``manifest.json``, or parses ONNX metadata, a sidecar or a manifest itself;
- only the command line prints;
- files, functions and package folders stay small enough to read.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import deploykit
from deploykit.core import record

ROOT = Path(deploykit.__file__).parent
#: top-level modules that are not packages, and the package they count as
MODULE_PACKAGE = {"__main__": "cli"}
#: the one package that spells and parses the artifact record
RECORD = ROOT / "core" / "record"


def package_of(module: str) -> str | None:
    """``deploykit.core.io`` -> ``core``; the root package (``deploykit``) belongs to no package."""
    parts = module.split(".")
    if parts[0] != "deploykit" or len(parts) < 2:
        return None
    return MODULE_PACKAGE.get(parts[1], parts[1])


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import in ``source`` (relative ones resolved)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
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
    return sorted(p for p in ROOT.rglob("*.py") if p != ROOT / "__init__.py")


def packages() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())


def declared(package: str) -> set[str]:
    """The packages ``package``'s ``__init__`` docstring says it may import."""
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text(encoding="utf-8"))) or ""
    assert "Owns:" in doc and "May import:" in doc, f"{package}/__init__.py must say Owns: and May import:"
    allowed = doc.split("May import:", 1)[1].split("\n\n", 1)[0]
    if "everything" in allowed:
        return set(packages()) - {package}
    return {name for name in re.findall(r"[a-z_]+", allowed) if name in packages() and name != package}


def violations(path: Path, source: str | None = None) -> list[str]:
    """The imports of ``path`` (or of ``source`` as if it were at ``path``) its package may not make."""
    module = module_name(path)
    mine = package_of(module)
    if mine not in packages():  # the command-line module: the top, it may import every package
        return []
    allowed = declared(mine)
    text = source if source is not None else path.read_text(encoding="utf-8")
    bad = []
    for line, target in imports_of(text, module, path.name == "__init__.py"):
        theirs = package_of(target)
        if mine and theirs and theirs != mine and theirs not in allowed:
            bad.append(f"{path.relative_to(ROOT.parent)}:{line} ({mine}) imports {target} ({theirs})")
    return bad


def test_every_package_declares_what_it_may_import():
    for package in packages():
        declared(package)


def test_imports_stay_within_each_package_s_declared_list():
    found = [v for path in sources() for v in violations(path)]
    assert not found, "\n".join(found)


def test_the_declared_lists_form_no_circle():
    graph = {p: declared(p) for p in packages()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 1:
            raise AssertionError("circle: " + " -> ".join([*trail, node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*trail, node])
        state[node] = 2

    for package in graph:
        visit(package, [])


def test_the_import_check_sees_an_undeclared_import():
    # the check itself, on text: an import that core does not declare is seen, wherever it is written
    probe = ROOT / "core" / "probe.py"  # never written: the source is checked as if it were there
    found = violations(probe, "def f():\n    from deploykit.workflows import predict\n")
    assert found and "imports deploykit.workflows" in found[0]
    assert not violations(probe, "from deploykit.core import io\n")


# ------------------------------------------------------------------------------------ the record
def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are not docstrings."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


RECORD_STRINGS = {*record.METADATA_KEYS, record.KEY_NODE_SCOPES, record.MANIFEST_NAME}
#: attributes through which only the record reads a model's metadata
METADATA_READERS = {"custom_metadata_map", "get_modelmeta"}
#: the JSON reader of deploykit's files: the record's files, and the baseline (a file of validate's own)
JSON_READERS = {ROOT / "validation" / "baseline.py", ROOT / "core" / "schema.py"}


def record_violations(path: Path, source: str) -> list[str]:
    tree = ast.parse(source)
    where = path.relative_to(ROOT.parent)
    bad = [f"{where}:{line} spells {value!r}" for line, value in _strings(tree) if value in RECORD_STRINGS]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in METADATA_READERS:
            bad.append(f"{where}:{node.lineno} reads model metadata ({node.attr})")
        if isinstance(node, ast.DictComp | ast.comprehension) and _over_metadata(node):
            bad.append(f"{where}:{node.lineno} parses metadata_props")
        reader = isinstance(node, ast.Call) and _called(node) in ("read_json", "sidecar_path_for")
        if reader and path not in JSON_READERS and RECORD not in path.parents:
            bad.append(f"{where}:{node.lineno} reads a record file itself ({_called(node)})")
    return bad


def _called(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _over_metadata(node: ast.AST) -> bool:
    """A dict built from ``<model>.metadata_props`` (``{p.key: p.value for p in proto.metadata_props}``)."""
    if not isinstance(node, ast.DictComp):
        return False
    return any(isinstance(g.iter, ast.Attribute) and g.iter.attr == "metadata_props" for g in node.generators)


def test_only_the_record_module_spells_or_parses_the_artifact_record():
    found = []
    for path in sources():
        if RECORD not in path.parents:
            found += record_violations(path, path.read_text(encoding="utf-8"))
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        'meta["deploykit.labels"] = "[]"',
        'name = "manifest.json"',
        "meta = {p.key: p.value for p in proto.metadata_props}",
        "meta = session.get_modelmeta().custom_metadata_map",
        'data = read_json(path, "a sidecar")',
    ],
)
def test_the_record_check_sees_each_way_around_the_record(source):
    assert record_violations(ROOT / "workflows" / "probe.py", source)


# ------------------------------------------------------------------------------------------ printing
CLI = ROOT / "cli"


def printing_calls(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` of every call that writes to the terminal: print, click.echo/secho, a rich
    Console, sys.stdout/stderr.write."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = ast.unparse(func)
        if name in ("print", "click.echo", "click.secho", "Console", "rich.console.Console") or name in (
            "sys.stdout.write",
            "sys.stderr.write",
        ):
            found.append((node.lineno, name))
    return found


def test_only_the_command_line_prints():
    found = [
        f"{path.relative_to(ROOT.parent)}:{line} {what}"
        for path in sources()
        if CLI not in path.parents
        for line, what in printing_calls(path.read_text(encoding="utf-8"))
    ]
    assert not found, "\n".join(found)


def test_the_print_check_sees_each_way_to_print():
    source = "print(1)\nclick.echo('x', err=True)\nConsole(stderr=True).print('x')\nsys.stderr.write('x')\n"
    found = sorted(printing_calls(source))
    assert [what for _, what in found] == ["print", "click.echo", "Console", "sys.stderr.write"]


# --------------------------------------------------------------------------------------------- size
MAX_FILE_LINES = 500
#: a model family's module holds its whole architecture
MAX_FAMILY_LINES = 550
MAX_FUNCTION_LINES = 60
MAX_MODULES_PER_FOLDER = 12
FAMILY_MODULES = {ROOT / "models" / f"{family}.py" for family in ("convit", "ceit", "deepvit", "cvt", "hvt")}


def oversized(path: Path, source: str) -> list[str]:
    """Files and functions over their limits (a family constructor's ``__init__`` builds the whole model
    from its documented arguments: it is excepted)."""
    where = path.relative_to(ROOT.parent)
    limit = MAX_FAMILY_LINES if path in FAMILY_MODULES else MAX_FILE_LINES
    lines = len(source.splitlines())
    found = [f"{where}: {lines} lines (at most {limit})"] if lines > limit else []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = node.end_lineno - node.lineno + 1
        constructor = path in FAMILY_MODULES and node.name == "__init__"
        if length > MAX_FUNCTION_LINES and not constructor:
            found.append(f"{where}:{node.lineno} {node.name}: {length} lines (at most {MAX_FUNCTION_LINES})")
    return found


def test_files_and_functions_stay_small():
    found = [line for path in sources() for line in oversized(path, path.read_text(encoding="utf-8"))]
    assert not found, "\n".join(found)


def test_the_size_check_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    assert oversized(ROOT / "core" / "probe.py", f"def f():\n{body}\n")
    assert not oversized(ROOT / "core" / "probe.py", "def f():\n    return 1\n")


def test_no_package_folder_but_models_holds_more_than_twelve_modules():
    crowded = []
    for folder in sorted(p for p in ROOT.rglob("*") if p.is_dir() and (p / "__init__.py").is_file()):
        entries = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        entries += [p for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
        if len(entries) > MAX_MODULES_PER_FOLDER and folder != ROOT / "models":
            crowded.append(f"{folder.relative_to(ROOT.parent)}: {len(entries)}")
    assert not crowded, crowded


def _dataclasses(tree: ast.AST) -> list[ast.ClassDef]:
    def is_dataclass(decorator: ast.expr) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return ast.unparse(target) in ("dataclass", "dataclasses.dataclass")

    return [
        n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and any(map(is_dataclass, n.decorator_list))
    ]


def test_records_are_built_by_keyword():
    """Every dataclass is keyword-only: two fields of one type side by side (two tolerances, two paths)
    cannot be swapped by position."""
    positional = []
    for path in sources():
        for node in _dataclasses(ast.parse(path.read_text(encoding="utf-8"))):
            keywords = {
                k.arg: ast.unparse(k.value)
                for d in node.decorator_list
                if isinstance(d, ast.Call)
                for k in d.keywords
            }
            if keywords.get("kw_only") != "True":
                positional.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}")
            kept = _positional_fields(node)
            if kept and (node.name not in ONE_POSITIONAL or len(kept) > 1):
                where = f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}"
                positional.append(f"{where}: {', '.join(kept)} positional")
    assert not positional, "\n".join(positional)


#: the schema combinators (``deploykit.core.schema``) keep the one node they wrap positional —
#: ``Opt(STRING)``, ``ListOf(item, max_len=8)``: nothing else they take can be mistaken for it
ONE_POSITIONAL = {"Opt", "Obj", "ListOf", "MapOf", "Json"}


def _positional_fields(node: ast.ClassDef) -> list[str]:
    """The fields of a dataclass taken back out of ``kw_only=True`` with ``field(kw_only=False)``."""
    return [
        ast.unparse(s.target)
        for s in node.body
        if isinstance(s, ast.AnnAssign)
        and isinstance(s.value, ast.Call)
        and ast.unparse(s.value.func) in ("field", "dataclasses.field")
        and any(k.arg == "kw_only" and ast.unparse(k.value) == "False" for k in s.value.keywords)
    ]


# ----------------------------------------------------------------------------------------- arguments
#: more arguments than this by position and a call cannot be read (or checked) without the signature
MAX_POSITIONAL = 5


def crowded_calls(path: Path, source: str) -> list[str]:
    """Calls that pass more than :data:`MAX_POSITIONAL` arguments by position (``*args`` not counted)."""
    where = path.relative_to(ROOT.parent)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            count = sum(not isinstance(a, ast.Starred) for a in node.args)
            if count > MAX_POSITIONAL:
                found.append(f"{where}:{node.lineno} {ast.unparse(node.func)}: {count} positional arguments")
    return found


def two_tolerances(path: Path, source: str) -> list[str]:
    """Functions that take two :class:`~deploykit.core.config.Tolerances` where a call could pass them by
    position (side by side, they can be swapped unseen): each must be keyword-only."""
    where = path.relative_to(ROOT.parent)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            params = [*node.args.posonlyargs, *node.args.args]
            tolerances = [a.arg for a in params if a.annotation and "Tolerances" in ast.unparse(a.annotation)]
            if len(tolerances) > 1:
                found.append(f"{where}:{node.lineno} {node.name}: {', '.join(tolerances)} by position")
    return found


@pytest.mark.parametrize("check", [crowded_calls, two_tolerances], ids=lambda f: f.__name__)
def test_no_call_passes_six_arguments_or_two_tolerances_by_position(check):
    found = [line for path in sorted(ROOT.rglob("*.py")) for line in check(path, path.read_text("utf-8"))]
    assert not found, "\n".join(found)


def test_the_argument_checks_see_a_crowded_call_and_two_tolerances():
    probe = ROOT / "workflows" / "probe.py"  # never written: the source is checked as if it were there
    assert crowded_calls(probe, "locate(model, images, reference, candidate, config.fp32, tol)\n")
    assert not crowded_calls(probe, "locate(model, images, ref, cand, fp32=config.fp32, tol=tol)\n")
    assert not crowded_calls(probe, "table.add_row(*cells)\nf(a, b, c, d, e, *rest)\n")
    signature = "def locate(model, images, {}fp32: Tolerances, tol: Tolerances | None = None): ...\n"
    assert two_tolerances(probe, signature.format(""))
    assert not two_tolerances(probe, signature.format("*, "))

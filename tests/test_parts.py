"""The optional parts (issue 29): the base install is the device runtime, and a command that needs a part
that is not installed says which extra brings it in one line, exit 2 — never an ImportError traceback.
``deploykit`` and every ``--help`` import neither torch nor ONNX Runtime. (The real device install, a fresh
venv from the wheel, is ``tests/test_packaging.py``.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from deploykit.core.errors import DeployKitError, MissingPartError
from deploykit.core.parts import EXPORT, ORT, PARTS, have, missing, missing_part, require

ROOT = Path(__file__).resolve().parents[1]


def hidden(*modules: str) -> str:
    """Python source that makes ``modules`` unimportable, as on a device install."""
    return "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)


def deploykit_cli(*args: str, hide: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    source = hidden(*hide) + "from deploykit.cli import main\nsys.argv[0] = 'deploykit'\nmain()\n"
    return subprocess.run([sys.executable, "-c", source, *args], capture_output=True, text=True, timeout=300)


def test_a_missing_part_is_one_line_naming_its_extra():
    torch = missing_part(ModuleNotFoundError("No module named 'torch'", name="torch"), "export")
    assert str(torch) == "export needs PyTorch: pip install 'deploykit[export]'"
    assert isinstance(torch, DeployKitError) and isinstance(torch, ImportError) and torch.exit_code == 2
    ort = missing_part(ModuleNotFoundError(name="onnxruntime.quantization"), "predict")
    assert str(ort) == "predict needs ONNX Runtime: pip install 'deploykit[cpu]' (or [gpu])"
    # the export side needs [export] whatever part it misses (it brings onnxruntime too)
    assert missing("onnxruntime", "export").install == EXPORT
    assert str(missing("torch")) == f"PyTorch is not installed here: {EXPORT}"
    assert missing("matplotlib").install == "pip install 'deploykit[plot]'"
    # not a part, or a part that is installed but failed on something else: left alone (a real error)
    assert missing_part(ModuleNotFoundError(name="no_such_module_xyz"), "predict") is None
    assert missing_part(ImportError("libcudnn.so.9: cannot open shared object file"), "export") is None


def test_require_imports_or_names_the_extra(monkeypatch):
    assert require("json").dumps([]) == "[]"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert not have("onnxruntime")
    with pytest.raises(MissingPartError) as caught:
        require("onnxruntime", "validate")
    assert str(caught.value) == f"validate needs ONNX Runtime: {ORT}" and caught.value.name == "onnxruntime"


def test_every_extra_a_message_names_exists():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = {p.install.split("[")[1].split("]")[0] for p in PARTS.values() if "deploykit[" in p.install}
    named |= {"gpu"}  # ORT: "[cpu]' (or [gpu])"
    assert named <= extras, named - extras


def test_import_and_help_need_neither_torch_nor_onnxruntime():
    """``import deploykit`` and each command's --help with torch, ONNX Runtime and the export-only
    libraries unimportable (what the base install lacks)."""
    hide = (
        "torch",
        "onnxruntime",
        "onnxscript",
        "onnxsim",
        "onnxslim",
        "onnxconverter_common",
        "safetensors",
    )
    commands = ["", "export", "validate", "predict", "inspect", "build", "bench", "triton", "serve", "list"]
    source = hidden(*hide) + (
        "import deploykit\nfrom click.testing import CliRunner\nfrom deploykit.cli import cli\n"
        f"for c in {commands!r}:\n"
        "    r = CliRunner().invoke(cli, [*c.split(), '--help'])\n"
        "    assert r.exit_code == 0 and 'Usage:' in r.output, (c, r.output)\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


@pytest.mark.parametrize(
    "args, hide, line",
    [
        (["export", "cvt"], ("torch",), "error: export needs PyTorch: pip install 'deploykit[export]'"),
        (["list"], ("torch",), "error: list needs PyTorch: pip install 'deploykit[export]'"),
        (
            ["bench", "hvt_ti_1"],
            ("torch",),
            "error: bench hvt_ti_1 (no export directory of that name: a preset, exported first) needs "
            "PyTorch: pip install 'deploykit[export]'",
        ),
    ],
)
def test_a_command_without_its_part_says_which_extra(args, hide, line):
    r = deploykit_cli(*args, hide=hide)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [line], (r.returncode, r.stderr)


def test_deploykit_export_from_python_names_the_extra():
    source = hidden("torch") + "import deploykit\ndeploykit.export\n"
    r = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "MissingPartError: deploykit.export needs PyTorch" in r.stderr, r.stderr


def test_an_import_error_that_is_not_a_part_stays_a_traceback(monkeypatch):
    """The net catches only the parts: any other ImportError is a bug, shown as one."""
    from click.testing import CliRunner

    from deploykit.cli import cli
    from deploykit.workflows import info

    def broken(pattern=None):
        import no_such_module_xyz  # noqa: F401

    monkeypatch.setattr(info, "preset_rows", broken)
    r = CliRunner().invoke(cli, ["list"])
    assert isinstance(r.exception, ModuleNotFoundError) and r.exception.name == "no_such_module_xyz"

"""``build_engine.sh``, the trtexec script written where this machine cannot build the engine: its flags
and shapes, valid bash, and its version branches run against stub ``trtexec`` binaries of TensorRT 10.3,
10.16 and 11.4 (strong typing, ``--noTF32`` only where trtexec has it, old or unknown versions refused).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from deploykit.core.config import BatchProfile
from deploykit.core.errors import ConfigError
from deploykit.core.io import ordinary_mode
from deploykit.engine.script import SCRIPT_NAME, write_build_script


def _script(
    tmp_path: Path,
    reason: str = "TensorRT is not importable (ImportError: no module)",
    chw: tuple[int, int, int] = (3, 224, 224),
) -> Path:
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"")
    return write_build_script(
        onnx_path,
        batch=BatchProfile(min=1, opt=4, max=32),
        input_name="input",
        input_shape_chw=chw,
        workspace_mib=4096,
        opt_level=3,
        timing_cache_name="timing.cache",
        engine_name="model.engine",
        reason=reason,
    )


EXPECTED_ARGS = [
    "--onnx=model.onnx",
    "--saveEngine=model.engine",
    "--minShapes=input:1x3x224x224",
    "--optShapes=input:4x3x224x224",
    "--maxShapes=input:32x3x224x224",
    "--memPoolSize=workspace:4096M",
    "--builderOptimizationLevel=3",
    "--timingCacheFile=timing.cache",
]


def test_build_script_flags_and_shapes(tmp_path: Path):
    path = _script(tmp_path)
    assert path == tmp_path / SCRIPT_NAME
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail\n" in text and 'cd "$(dirname "$0")"\n' in text
    for arg in EXPECTED_ARGS:
        assert f"    {arg} \\\n" in text
    assert "engines must be built on the target device" in text.replace("\n# ", " ")
    assert "TensorRT is not importable (ImportError: no module)" in text
    code = [line for line in text.splitlines() if not line.startswith("#")]
    # weak typing is never asked for; --workspace is gone since 10.x
    for removed in ("--fp16", "--int8", "--bf16", "--best", "--workspace"):
        assert not any(removed in line for line in code)


def test_build_script_is_executable_and_valid_bash(tmp_path: Path):
    path = _script(tmp_path, reason="no CUDA GPU\nsecond line; $(rm -rf /)")
    assert stat.S_IMODE(path.stat().st_mode) == ordinary_mode(executable=True)
    subprocess.run(["bash", "-n", str(path)], check=True)
    comment = [line for line in path.read_text().splitlines() if "no CUDA GPU" in line]
    assert len(comment) == 1 and comment[0].startswith("#")  # a multi-line reason stays one comment line
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temp file"


def test_build_script_refuses_a_shape_that_is_not_chw(tmp_path: Path):
    for chw in ((3, 0, 224), (3, 224)):
        with pytest.raises(ConfigError, match="three positive dims C,H,W"):
            _script(tmp_path, chw=chw)
    assert not (tmp_path / SCRIPT_NAME).exists()


def _stub_trtexec(bin_dir: Path, banner_version: str | None, no_tf32: bool = True) -> Path:
    """A ``trtexec`` that answers ``--help`` like the real one (banner line first, then the flags) and
    otherwise prints its working directory and arguments."""
    bin_dir.mkdir(exist_ok=True)
    banner = (
        f"&&&& RUNNING TensorRT.trtexec [TensorRT v{banner_version}] # trtexec --help"
        if banner_version
        else "usage"
    )
    help_text = "  --noTF32                    Disable tf32 precision" if no_tf32 else "  --verbose"
    fake = bin_dir / "trtexec"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = --help ]; then echo "{banner}"; echo "{help_text}"; exit 1; fi\n'
        'pwd\nprintf "%s\\n" "$@"\n'
    )
    fake.chmod(0o755)
    return fake


def _run_script(path: Path, bin_dir: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env_extra)
    return subprocess.run(["bash", str(path), *args], cwd="/", env=env, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("banner", "version_flags"),
    [
        ("100300", ["--stronglyTyped", "--noTF32"]),  # TensorRT 10.3.0 (JetPack 6): strong typing asked for
        ("101601", ["--stronglyTyped", "--noTF32"]),
        ("110400", ["--noTF32"]),  # TensorRT 11.4: always strongly typed, the flag is not needed
    ],
)
def test_build_script_branches_on_the_trtexec_version(tmp_path: Path, banner: str, version_flags: list[str]):
    path = _script(tmp_path)
    bin_dir = tmp_path / "bin"
    _stub_trtexec(bin_dir, banner)
    run = _run_script(path, bin_dir, "--verbose")
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert Path(out[0]).resolve() == tmp_path.resolve()  # runs from its own directory
    assert out[1:] == [*EXPECTED_ARGS, *version_flags, "--verbose"]
    major, minor = int(banner) // 10000, int(banner) // 100 % 100
    assert f"TensorRT {major}.{minor}" in run.stderr


def test_build_script_passes_no_tf32_only_where_trtexec_has_it(tmp_path: Path):
    path = _script(tmp_path)
    _stub_trtexec(tmp_path / "bin", "100300", no_tf32=False)
    run = _run_script(path, tmp_path / "bin")
    assert run.returncode == 0 and run.stdout.splitlines()[1:] == [*EXPECTED_ARGS, "--stronglyTyped"]


@pytest.mark.parametrize(
    ("banner", "message"), [("8601", "TensorRT 8.6"), ("100200", "TensorRT 10.2"), (None, "cannot read")]
)
def test_build_script_refuses_old_or_unknown_trtexec(tmp_path: Path, banner, message: str):
    path = _script(tmp_path)
    _stub_trtexec(tmp_path / "bin", banner)
    run = _run_script(path, tmp_path / "bin")
    assert run.returncode == 2 and message in run.stderr and not run.stdout


def test_build_script_takes_trtexec_from_the_environment(tmp_path: Path):
    path = _script(tmp_path)
    fake = _stub_trtexec(tmp_path / "elsewhere", "110400")
    run = _run_script(path, tmp_path / "empty", TRTEXEC=str(fake))
    assert run.returncode == 0 and run.stdout.splitlines()[1] == EXPECTED_ARGS[0]
    missing = _run_script(path, tmp_path / "empty", TRTEXEC=str(tmp_path / "nope"))
    assert missing.returncode == 127 and "trtexec not found" in missing.stderr


# ---------------------------------------------------------------------- INT8: a second build, model.int8.engine
def _int8_script(tmp_path: Path) -> Path:
    for name in ("model.fp16.onnx", "model.int8.onnx"):
        (tmp_path / name).write_bytes(b"")
    return write_build_script(
        tmp_path / "model.fp16.onnx",
        batch=BatchProfile(min=1, opt=4, max=32),
        input_name="input",
        input_shape_chw=(3, 224, 224),
        workspace_mib=4096,
        opt_level=3,
        timing_cache_name="timing.cache",
        engine_name="model.engine",
        reason="no GPU",
        extra_builds=[("model.int8.onnx", "model.int8.engine")],
    )


def _args(onnx_name: str, engine_name: str) -> list[str]:
    return [f"--onnx={onnx_name}", f"--saveEngine={engine_name}", *EXPECTED_ARGS[2:]]


def test_build_script_adds_the_int8_engine_strongly_typed(tmp_path: Path):
    text = _int8_script(tmp_path).read_text()
    subprocess.run(["bash", "-n", str(tmp_path / SCRIPT_NAME)], check=True)
    assert (
        "# Build, one after the other, with trtexec (TensorRT 10.3 or newer):\n"
        "#   model.engine from model.fp16.onnx\n"
        "#   model.int8.engine from model.int8.onnx\n"
    ) in text
    assert "# model.int8.onnx is explicitly quantized" in text and "no calibration cache" in text
    for arg in [*_args("model.fp16.onnx", "model.engine"), *_args("model.int8.onnx", "model.int8.engine")]:
        assert f"    {arg} \\\n" in text
    code = [line for line in text.splitlines() if not line.startswith("#")]
    # the Q/DQ graph is explicit quantization: no --int8 (weak typing, a calibrator), no precision flag at all
    for removed in ("--fp16", "--int8", "--bf16", "--best", "--calib", "--workspace"):
        assert not any(removed in line for line in code)
    # the first build runs and returns, the last one is exec'd; both get the version flags and "$@"
    assert [line for line in code if line.endswith('"$TRTEXEC" \\')] == [
        '"$TRTEXEC" \\',
        'exec "$TRTEXEC" \\',
    ]
    assert text.count('    ${flags[@]+"${flags[@]}"} "$@"') == 2


@pytest.mark.parametrize(
    ("banner", "version_flags"), [("100300", ["--stronglyTyped", "--noTF32"]), ("110400", ["--noTF32"])]
)
def test_build_script_runs_both_builds_on_each_version(tmp_path: Path, banner: str, version_flags: list[str]):
    path = _int8_script(tmp_path)
    _stub_trtexec(tmp_path / "bin", banner)
    run = _run_script(path, tmp_path / "bin", "--verbose")
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    first, second = out[: len(out) // 2], out[len(out) // 2 :]
    assert first[1:] == [*_args("model.fp16.onnx", "model.engine"), *version_flags, "--verbose"]
    assert second[1:] == [*_args("model.int8.onnx", "model.int8.engine"), *version_flags, "--verbose"]
    assert "building model.int8.engine from model.int8.onnx" in run.stderr


def test_build_script_stops_at_the_first_failed_build(tmp_path: Path):
    path = _int8_script(tmp_path)
    fake = _stub_trtexec(tmp_path / "bin", "110400")
    fake.write_text(fake.read_text().replace("pwd\n", "pwd\nexit 7\n"))
    run = _run_script(path, tmp_path / "bin")
    assert run.returncode == 7 and "model.int8.engine" not in run.stdout


def test_build_script_extra_builds_are_file_names_with_their_own_engines(tmp_path: Path):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"")
    common = dict(
        batch=BatchProfile(min=1, opt=1, max=1),
        input_name="input",
        input_shape_chw=(3, 8, 8),
        workspace_mib=64,
        opt_level=3,
        timing_cache_name="timing.cache",
        engine_name="model.engine",
        reason="no GPU",
    )
    with pytest.raises(ConfigError, match="file names"):
        write_build_script(onnx_path, extra_builds=[("../model.int8.onnx", "model.int8.engine")], **common)
    with pytest.raises(ConfigError, match="the same engine"):
        write_build_script(onnx_path, extra_builds=[("model.int8.onnx", "model.engine")], **common)
    assert not (tmp_path / SCRIPT_NAME).exists()

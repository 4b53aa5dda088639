"""The device facts (deploykit/engine/device.py) on fake device trees: a Jetson AGX Orin on JetPack 6.2, a
Jetson AGX Thor on JetPack 7 and a machine that is no Jetson; ``nvpmodel -q`` through a fake runner; the
clocks read from cpufreq/devfreq; the CUDA versions and TensorRT's builder through the fakes of
tests/fakes.py.

The strings have the published form (the device-tree model of the AGX Orin / AGX Thor developer kits, the
first line of ``/etc/nv_tegra_release`` on Jetson Linux 36.4.3 / 38.2, ``nvpmodel -q`` printing ``NV Power
Mode: <name>`` and the mode id); the GCID and date values are placeholders, and the Thor's ``nvpmodel -q``
output is assumed to have the Orin's form. None was read from a real device here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fakes import install_fakes

from deploykit.engine import device

ORIN_RELEASE = (
    "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 "
    "UTC 2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
)
THOR_RELEASE = (
    "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64, DATE: Fri Aug 22 2025\n"
)


def fake_jetson(
    root: Path,
    *,
    model: str,
    release: str,
    cpus: dict[int, tuple[int, int]] | None = None,
    gpu: tuple[str, int, int] | None = None,
) -> Path:
    """A device tree: ``/proc/device-tree/model`` (NUL-terminated), ``/etc/nv_tegra_release``, each CPU's
    cpufreq min/max and the GPU's devfreq node ``(name, min, max)``."""
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "proc" / "device-tree" / "model").write_bytes(model.encode() + b"\x00")
    (root / "etc").mkdir()
    (root / "etc" / "nv_tegra_release").write_text(release)
    for cpu, (low, high) in (cpus or {}).items():
        policy = root / "sys" / "devices" / "system" / "cpu" / f"cpu{cpu}" / "cpufreq"
        policy.mkdir(parents=True)
        (policy / "scaling_min_freq").write_text(f"{low}\n")
        (policy / "scaling_max_freq").write_text(f"{high}\n")
    if gpu is not None:
        name, low, high = gpu
        node = root / "sys" / "class" / "devfreq" / name
        node.mkdir(parents=True)
        (node / "min_freq").write_text(f"{low}\n")
        (node / "max_freq").write_text(f"{high}\n")
    return root


def nvpmodel(output: str | None):
    calls = []

    def run(argv: list[str]) -> str | None:
        calls.append(argv)
        return output if argv[0] == "nvpmodel" else None

    run.calls = calls
    return run


def orin(tmp_path: Path, *, locked: bool = True) -> Path:
    top = 2201600
    return fake_jetson(
        tmp_path / "orin",
        model="NVIDIA Jetson AGX Orin Developer Kit",
        release=ORIN_RELEASE,
        cpus={i: (top if locked else 115200, top) for i in range(4)},
        gpu=("17000000.ga10b", 1300500000 if locked else 306000000, 1300500000),
    )


def thor(tmp_path: Path) -> Path:
    return fake_jetson(
        tmp_path / "thor",
        model="NVIDIA Jetson AGX Thor Developer Kit",
        release=THOR_RELEASE,
        cpus={i: (972000, 2601000) for i in range(2)},
    )


def test_orin_on_jetpack_6_2(tmp_path: Path):
    run = nvpmodel("NV Power Mode: MAXN\n0\n")
    facts = device.jetson_facts(orin(tmp_path), run)
    assert facts.model == "NVIDIA Jetson AGX Orin Developer Kit"  # the NUL terminator is gone
    assert (facts.l4t, facts.jetpack) == ("36.4.3", "6.2")
    assert (facts.power_mode, facts.power_mode_id) == ("MAXN", 0)
    assert facts.clocks_locked is True and facts.clocks == "CPU 4/4 locked, GPU 1/1 locked"
    assert run.calls == [["nvpmodel", "-q"]]
    assert facts.to_dict() == {
        "model": "NVIDIA Jetson AGX Orin Developer Kit",
        "l4t": "36.4.3",
        "jetpack": "6.2",
        "power_mode": "MAXN",
        "power_mode_id": 0,
        "clocks_locked": True,
        "clocks": "CPU 4/4 locked, GPU 1/1 locked",
    }


def test_thor_on_jetpack_7(tmp_path: Path):
    facts = device.jetson_facts(
        thor(tmp_path), nvpmodel("NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0")
    )
    assert facts.model == "NVIDIA Jetson AGX Thor Developer Kit"
    assert (facts.l4t, facts.jetpack) == ("38.2.0", "7.0")
    assert (facts.power_mode, facts.power_mode_id) == ("MAXN", 0)
    # the CPUs' minimum is below their maximum: not locked (the GPU node is not there: not needed to say so)
    assert (
        facts.clocks_locked is False and "CPU 0/2 locked" in facts.clocks and "jetson_clocks" in facts.clocks
    )


def test_clocks_unlocked_or_unknown(tmp_path: Path):
    assert device.clocks_locked(orin(tmp_path, locked=False))[0] is False
    bare = fake_jetson(tmp_path / "bare", model="NVIDIA Jetson Orin Nano", release=ORIN_RELEASE)
    locked, why = device.clocks_locked(bare)
    assert locked is None and "no readable cpufreq" in why
    cpus_only = fake_jetson(
        tmp_path / "cpus", model="x", release=ORIN_RELEASE, cpus={0: (5, 5)}
    )  # CPUs locked, no GPU node found: not known
    assert device.clocks_locked(cpus_only) == (None, "CPU 1/1 locked, GPU not found")


def test_no_jetson_and_no_nvpmodel(tmp_path: Path):
    assert device.jetson_facts(tmp_path, nvpmodel("NV Power Mode: MAXN\n0")) is None
    assert not device.is_jetson(tmp_path) and device.l4t_release(tmp_path) is None
    facts = device.jetson_facts(orin(tmp_path), nvpmodel(None))  # nvpmodel missing or failing
    assert facts.power_mode is None and facts.power_mode_id is None and facts.l4t == "36.4.3"


@pytest.mark.parametrize(
    ("line", "l4t", "jetpack"),
    [
        ("# R36 (release), REVISION: 4.4, GCID: 1", "36.4.4", "6.2.1"),
        ("# R36 (release), REVISION: 3.0, GCID: 1", "36.3.0", "6.0"),
        ("# R35 (release), REVISION: 4.1, GCID: 1", "35.4.1", "5.1.2"),
        ("# R38 (release), REVISION: 4.0, GCID: 1", "38.4.0", "7.1"),
        ("# R36 (release), REVISION: 9.9, GCID: 1", "36.9.9", "6.x"),  # not in the table: the major only
        ("# R38 (release), REVISION: 2.2, GCID: 1", "38.2.2", "7.x"),
        ("# R99 (release), REVISION: 1, GCID: 1", "99.1.0", None),
        ("not a release line", None, None),
    ],
)
def test_l4t_to_jetpack(tmp_path: Path, line: str, l4t: str | None, jetpack: str | None):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text(line + "\n")
    assert device.l4t_release(tmp_path) == l4t
    assert device.jetpack_for(l4t) == jetpack


def test_the_root_is_read_when_called_not_bound(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(device, "ROOT", orin(tmp_path))
    assert device.is_jetson() and device.l4t_release() == "36.4.3"


def test_nvpmodel_parsing():
    assert device.parse_nvpmodel("NV Power Mode: MAXN_SUPER\n2\n") == ("MAXN_SUPER", 2)
    assert device.parse_nvpmodel("NV Power Mode: 30W\n") == ("30W", None)
    assert device.parse_nvpmodel("") == (None, None) and device.parse_nvpmodel(None) == (None, None)


def test_cuda_and_tensorrt_facts_through_the_fakes(monkeypatch):
    install_fakes(monkeypatch, "11.4.0.106")
    cuda = device.cuda_facts()
    assert cuda["driver"] == "12.6" and cuda["runtime"] == "12.6"
    trt = device.tensorrt_facts()
    assert trt == {"importable": True, "version": "11.4.0.106", "supported": True, "builder": True}
    install_fakes(monkeypatch, "10.2.0.19", devices=0)
    assert device.tensorrt_facts()["supported"] is False
    assert device.cuda_facts()["driver"] is None and "no CUDA driver" in device.cuda_facts()["driver_error"]


def test_without_cuda_python_or_tensorrt(monkeypatch):
    for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    assert device.tensorrt_facts()["importable"] is False
    cuda = device.cuda_facts()
    assert cuda["cuda_python"] is None and "pip install cuda-python" in cuda["reason"]

import dataclasses
import os

import pytest
import torch

from deploykit.core.config import default_config
from deploykit.models import get_preset

# the trace cache (deploykit.transforms.trace_cache) stays out of the tests' way — a test's export traces,
# as it always did — except in tests/test_trace_cache.py, which turns it on with a folder of its own
os.environ["DEPLOYKIT_TRACE_CACHE"] = "off"

# one preset of every family, at reduced resolution for speed (cvt_13 also runs at 224 in test_export)
FAMILY_CASES = {"convit_tiny": 64, "ceit_tiny": 64, "deepvit_s": 64, "cvt_13": 64, "hvt_s_4": 128}


def small_config(preset: str, size: int, **changes):
    return dataclasses.replace(default_config(get_preset(preset).family), image_size=size, **changes)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Every family exported once (FP32 + FP16 + engine stage) through the real pipeline."""
    from exporting import export_preset

    root = tmp_path_factory.mktemp("exports")
    return {
        name: export_preset(name, root / name, small_config(name, size), fp16=True, engine=True)
        for name, size in FAMILY_CASES.items()
    }


@pytest.fixture(scope="session")
def int8_exports(tmp_path_factory):
    """Every family's trained reference exported with INT8 (both INT8 files, the engine stage) and the
    held-out digits as its --dataset (recorded in reference.npz)."""
    from exporting import FAMILIES, HELDOUT, export_reference

    root = tmp_path_factory.mktemp("int8")
    return {family: export_reference(family, root / family, dataset=HELDOUT) for family in FAMILIES}

"""Every test in tests/gpu/ is marked `gpu` and needs a CUDA GPU: without one it is skipped with the reason.

    pytest -m gpu                                          # on a GPU machine (`make gpu-check` runs this)
    ALPACA_MEDIS_GPU_TESTS_ON_CPU=1 pytest -m gpu          # the same tests on the CPU (~2 min on 2 cores)

The tests are written once for both devices: on the CPU they run the same code paths the CPU takes (gloo for
nccl, packed_sdpa for flash-attention, fp32 or bf16 autocast as trainer.train decides) and leave out only the
assertions about what exists on CUDA alone (TF32, CUDA peak memory, flash-attention, nccl). That CPU run keeps
the tests' own logic checked on machines without a GPU; the normal suite skips them (they take minutes).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ON_CPU = os.environ.get("ALPACA_MEDIS_GPU_TESTS_ON_CPU") == "1"
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# Ranks of the torchrun tests: every visible GPU (one included); two gloo processes on the CPU.
WORLD = torch.cuda.device_count() if CUDA else 2
# --tf32 needs Ampere (compute capability 8.0) or newer: the Trainer refuses it on older GPUs.
TF32 = CUDA and torch.cuda.get_device_capability() >= (8, 0)
FLASH_ATTN = CUDA and importlib.util.find_spec("flash_attn") is not None

SKIP_REASON = (f"no CUDA GPU (torch {torch.__version__}: torch.cuda.is_available() is False); `make gpu-check` runs "
               "these on a GPU machine, ALPACA_MEDIS_GPU_TESTS_ON_CPU=1 runs them on the CPU")


@pytest.hookimpl(tryfirst=True)  # before `-m gpu` selects by marker
def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.gpu)
            if not CUDA and not ON_CPU:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


def cpu_test_module(relative: str):
    """The CPU suite's test module tests/RELATIVE, imported as pytest imports it (asserts rewritten), so that a GPU
    test calls its tests with a model on the GPU instead of copying them."""
    path = Path(__file__).parents[1] / relative
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    return importlib.import_module(path.stem)

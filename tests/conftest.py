"""Shared test settings: small thread count, deterministic seeds, the optional ../shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny tensors: a second thread only adds barrier waits, and on a loaded
    2-core machine those made such tests about 10x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the repo (benchmarks and CI have it; the kit itself never needs it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (only present beside the repo in this project's CI)")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA GPU: skipped here and in CI, run by bench/gpu_check.py on a GPU machine."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine: python bench/gpu_check.py)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


class _FakeHandle:
    def __init__(self, log):
        self.log = log

    def update(self, obj):
        self.log.append(("update", obj))


@pytest.fixture
def fake_display():
    """``make(log)``: an IPython-like ``display`` that records ("display", obj, display_id) and ("update", obj)."""
    def make(log):
        def display(obj, display_id=False):
            log.append(("display", obj, display_id))
            return _FakeHandle(log)

        return display

    return make

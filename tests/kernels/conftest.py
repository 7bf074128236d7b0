"""GPU-only tests: every module calls tests.kernels.helpers.require_gpu() at import, so on a machine
without CuPy or a usable GPU the whole directory is skipped cleanly."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """Outputs the CUDA backend allocates start as NaN / -77 (see helpers.PoisonedCupy)."""
    if importlib.util.find_spec("cupy") is None:
        yield
        return
    import cupy
    from refengine.ops import cuda_status
    if cuda_status()[1] is not None:
        yield
        return
    from refengine.ops import cuda
    from tests.kernels.helpers import PoisonedCupy
    monkeypatch.setattr(cuda, "cp", PoisonedCupy(cupy))
    yield

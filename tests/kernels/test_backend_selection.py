"""Backend choice without a GPU to hand: a fake `cupy` stands in for the three situations (no CuPy, a GPU
too old for the kernels, a good GPU). Runs on any machine."""

from __future__ import annotations

import logging
import sys
import types

import pytest

from refengine.errors import RefengineError
from refengine.ops import BACKENDS, cuda_status, get_backend, reference


def fake_cupy(compute_capability: str, count: int = 1):
    cp = types.ModuleType("cupy")
    device = types.SimpleNamespace(id=0, compute_capability=compute_capability)
    runtime = types.SimpleNamespace(getDeviceCount=lambda: count,
                                    getDeviceProperties=lambda i: {"name": b"Old GPU"})
    cp.cuda = types.SimpleNamespace(runtime=runtime, Device=lambda *a: device)
    return cp


def test_cli_choices():
    assert BACKENDS == ("auto", "numpy", "cupy")


def test_old_gpu_is_reported_and_auto_falls_back(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy("61"))
    present, problem = cuda_status()
    assert present and "compute capability 6.1" in problem and "7.0 or newer" in problem
    with caplog.at_level(logging.WARNING, logger="refengine"):
        assert get_backend("auto") is reference
    assert "falling back to the NumPy backend" in caplog.text and "6.1" in caplog.text
    with pytest.raises(RefengineError, match="--backend cupy cannot run here: .*compute capability 6.1"):
        get_backend("cupy")


def test_no_device(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy("90", count=0))
    assert cuda_status() == (False, "no CUDA device")
    with caplog.at_level(logging.WARNING, logger="refengine"):
        assert get_backend("auto") is reference
    assert caplog.text == ""                      # nothing to warn about on a CPU machine


def test_no_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)    # import cupy -> ImportError
    present, problem = cuda_status()
    assert not present and "CuPy is not installed" in problem
    assert get_backend("auto") is reference and get_backend("numpy") is reference

"""Shared by the GPU kernel tests: skip without a usable GPU, poisoned outputs, fresh random inputs.

    cp = require_gpu()                    # at the top of a test module: skips the module on a CPU machine
    rng, seed = fresh_rng()               # new inputs every run; the seed goes into failure messages
    out = run_version("linear", "v3", x, w, None)   # None when the version refuses these shapes

Poisoning: the `poisoned` fixture (tests/kernels/conftest.py, autouse) makes every array the CUDA backend
allocates for an output start as NaN (floats) or -77 (integers), so an element a kernel forgets to write
fails the comparison instead of passing on leftover memory.
"""

from __future__ import annotations

import numpy as np
import pytest


def require_gpu():
    cp = pytest.importorskip("cupy", reason="the GPU kernel tests need CuPy")
    from refengine.ops import cuda_status
    _, problem = cuda_status()
    if problem is not None:
        pytest.skip(f"GPU kernel tests: {problem}", allow_module_level=True)
    return cp


def fresh_rng() -> tuple[np.random.Generator, int]:
    seed = int(np.random.SeedSequence().entropy % (2 ** 32))
    return np.random.default_rng(seed), seed


def randn(rng, shape, dtype=np.float32, scale=1.0) -> np.ndarray:
    """Host random normal values, rounded to `dtype` (never zeros)."""
    return (rng.standard_normal(shape) * scale).astype(dtype)


def run_version(op: str, version: str, *args):
    """The version's result, or None if it raises Unsupported for these arguments."""
    from refengine.ops import cuda
    try:
        return cuda.VERSIONS[op][version](*args)
    except cuda.Unsupported:
        return None


def supports(op: str, version: str, *args) -> bool:
    """Run the version (for in-place ops); False if it raises Unsupported for these arguments."""
    from refengine.ops import cuda
    try:
        cuda.VERSIONS[op][version](*args)
    except cuda.Unsupported:
        return False
    return True


def host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


class PoisonedCupy:
    """cupy, except that empty / empty_like return arrays filled with NaN (floats) or -77 (integers)."""

    def __init__(self, cp):
        self._cp = cp

    def __getattr__(self, name):
        return getattr(self._cp, name)

    def _poison(self, a):
        a.fill(np.nan if a.dtype.kind == "f" else -77)
        return a

    def empty(self, shape, dtype=float, order="C"):
        return self._poison(self._cp.empty(shape, dtype, order))

    def empty_like(self, a, dtype=None, order="K", subok=None, shape=None):
        return self._poison(self._cp.empty_like(a, dtype=dtype, shape=shape))


def programmatic_replays_match(run, want, seed, monkeypatch, names=("x", "residual"), replays=3) -> list[str]:
    """Capture run() (a chain of kernels, each reading what the one before wrote) under programmatic dependent
    launch, replay the graph `replays` times and require the eager results `want` (host arrays, bit for bit).
    Returns the names of the kernels that were launched programmatically (through pdl.launch)."""
    import cupy as cp
    from refengine.ops import pdl
    launched = []
    real_launch = pdl.launch
    monkeypatch.setattr(pdl, "launch", lambda *a, **k: (launched.append(a[0].name), real_launch(*a, **k)))
    stream, pool = cp.cuda.Stream(non_blocking=False), cp.cuda.MemoryPool()
    with cp.cuda.using_allocator(pool.malloc), stream:
        stream.begin_capture()
        try:
            with pdl.programmatic_launches():
                got = run()
        finally:
            graph = stream.end_capture()
        for replay in range(replays):
            graph.launch(stream)
            stream.synchronize()
            for name, g, ww in zip(names, got, want):
                np.testing.assert_array_equal(g.get(), ww, err_msg=f"{name}, replay {replay}, seed {seed}")
    return launched


"""Op backends. Model code calls `ops.<name>(...)` on whichever backend it was given:

    numpy  refengine.ops.reference  the specification, runs anywhere
    cupy   refengine.ops.cuda       CuPy + the kernels of kernels_cu/ (float16 on an NVIDIA GPU, sm_70+)
    auto   cupy when a GPU is usable here, else numpy

Every backend exposes the same names with the same signatures (see reference.py for the list).
CuPy stays optional: nothing here imports it unless a GPU backend is asked for.
"""

from __future__ import annotations

import logging
from types import ModuleType

from refengine.errors import RefengineError

logger = logging.getLogger("refengine")

BACKENDS = ("auto", "numpy", "cupy")
MIN_COMPUTE_CAPABILITY = (7, 0)


def cuda_status() -> tuple[bool, str | None]:
    """(present, problem): whether CuPy and a CUDA device are there at all, and why the GPU backend cannot
    run (None when it can)."""
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install 'refengine[cuda13]', or cuda12 / cuda11)"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:      # CUDARuntimeError, or a driver missing entirely (no libcuda)
        return False, f"no usable CUDA device ({e})"
    if count == 0:
        return False, "no CUDA device"
    dev = cupy.cuda.Device()
    major, minor = divmod(int(dev.compute_capability), 10)
    if (major, minor) < MIN_COMPUTE_CAPABILITY:
        name = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"].decode(errors="replace")
        return True, (f"GPU {dev.id} ({name}) has compute capability {major}.{minor}; refengine's CUDA kernels "
                      f"need {MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]} or newer")
    return True, None


def get_backend(name: str = "auto") -> ModuleType:
    if name not in BACKENDS:
        raise RefengineError(f"--backend {name!r} is not available (choose from: {', '.join(BACKENDS)})")
    from refengine.ops import reference
    if name == "numpy":
        return reference
    present, problem = cuda_status()
    if problem is None:
        from refengine.ops import cuda
        return cuda
    if name == "cupy":
        raise RefengineError(f"--backend cupy cannot run here: {problem}")
    if present:                 # a GPU is there but cannot be used: say so, then run on the CPU
        logger.warning("%s; falling back to the NumPy backend", problem)
    return reference

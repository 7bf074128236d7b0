"""Programmatic dependent launch (PDL, sm_90+): let a kernel start while the one before it is still finishing.

In a decode step of a 7B model a few hundred small kernels run back to back, and each one pays a launch
gap and a ramp (its first loads wait a full memory latency) before it streams. With PDL the next kernel's
blocks are scheduled as soon as the running kernel lets them, they do work that depends on nothing
(the GEMVs load their first weights), and then block in `griddepcontrol.wait` until the kernel before has
finished and its writes are visible (kernels_cu/common.cuh: pdl_wait, pdl_launch_dependents):

    kernel A   ████████████▒▒▒          ▒ A's last blocks
    kernel B          ░░░░░░░░░░████████    ░ B's blocks launched, weights loading; █ after pdl_wait

A kernel may be launched this way only if it calls pdl_wait() before touching memory that another kernel
writes: the launch sites in refengine/ops/cuda.py opt in per kernel (`pdl=True`). Launches use PDL only
inside `programmatic_launches()` — the CUDA-graph captures of the decode step and of the kernel
benchmarks — where the graph keeps the programmatic edge; eager launches go through CuPy as before.

CuPy has no launch call that takes launch attributes, so this module calls the driver's cuLaunchKernelEx
through ctypes (only while capturing: its ~20 µs of host time per launch is paid once per graph). CuPy is
imported where it is used, so that the ctypes layouts can be checked on a machine without it.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import os

import numpy as np

_ACTIVE = contextvars.ContextVar("refengine_pdl", default=False)
CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6      # cuda.h CUlaunchAttributeID


class _AttrValue(ctypes.Union):                  # CUlaunchAttributeValue: a 64-byte union
    _fields_ = [("flag", ctypes.c_int), ("align", ctypes.c_void_p), ("raw", ctypes.c_char * 64)]


class _Attr(ctypes.Structure):                   # CUlaunchAttribute: id, 4 bytes of padding, value
    _fields_ = [("id", ctypes.c_uint), ("pad", ctypes.c_char * 4), ("value", _AttrValue)]


class _Config(ctypes.Structure):                 # CUlaunchConfig
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_Attr)), ("numAttrs", ctypes.c_uint)]


_SCALARS = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
            np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.float32): ctypes.c_float,
            np.dtype(np.uint32): ctypes.c_uint32}


@functools.lru_cache(maxsize=1)
def _launch_kernel_ex():
    fn = ctypes.CDLL("libcuda.so.1").cuLaunchKernelEx
    fn.argtypes = [ctypes.POINTER(_Config), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


@functools.lru_cache(maxsize=None)
def supported(device_id: int) -> bool:
    """The device is sm_90+ and the driver has cuLaunchKernelEx."""
    import cupy as cp
    if cp.cuda.runtime.getDeviceProperties(device_id)["major"] < 9:
        return False
    try:
        _launch_kernel_ex()
    except (OSError, AttributeError):
        return False
    return True


@contextlib.contextmanager
def programmatic_launches(enabled: bool = True):
    """Launches of opted-in kernels inside this block carry the programmatic-serialization attribute (where
    the device supports it; REFENGINE_PDL=0 in the environment turns it off, for comparisons)."""
    import cupy as cp
    on = enabled and os.environ.get("REFENGINE_PDL", "1") != "0" and supported(cp.cuda.Device().id)
    token = _ACTIVE.set(on)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active() -> bool:
    return _ACTIVE.get()


def _arg(a):
    if hasattr(a, "data") and hasattr(a.data, "ptr"):            # a cupy.ndarray: its device address
        return ctypes.c_void_p(a.data.ptr)
    kind = _SCALARS.get(getattr(a, "dtype", None))
    if kind is None:
        raise TypeError(f"pdl.launch: unsupported kernel argument {type(a).__name__}")
    return kind(a.item())


def launch(kernel, grid, block, args, shared_mem: int = 0) -> None:
    """Launch a cupy RawKernel on the current stream with programmatic stream serialization."""
    import cupy as cp
    values = [_arg(a) for a in args]
    params = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
    attr = _Attr(id=CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION)
    attr.value.flag = 1
    grid, block = tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block))
    config = _Config(*grid, *block, shared_mem, cp.cuda.get_current_stream().ptr, ctypes.pointer(attr), 1)
    status = _launch_kernel_ex()(ctypes.byref(config), kernel.kernel.ptr, params, None)
    if status != 0:
        raise RuntimeError(f"cuLaunchKernelEx failed with CUresult {status} for {kernel.name}")

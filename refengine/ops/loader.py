"""Compile kernels_cu/*.cu with CuPy (NVRTC) and keep the modules: one compile per (source text, options,
GPU architecture) — CuPy's own disk cache (~/.cupy/kernel_cache) is keyed the same way, so a second run
loads the cubin instead of compiling.

`#include "x.cuh"` lines are expanded here, textually and once per file (the `#pragma once` meaning), so
NVRTC needs no include path and the cache key covers the headers too. Nothing here imports cupy at module
import time: `import refengine.ops.loader` works on a machine without it.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from refengine.share import share_dir


def find_kernel_dir() -> Path:
    """Where the .cu sources are: $REFENGINE_KERNEL_DIR, else the checkout's kernels_cu/ (a source or
    editable install), else <prefix>/share/refengine/kernels_cu (where a wheel installs them)."""
    if "REFENGINE_KERNEL_DIR" in os.environ:
        return Path(os.environ["REFENGINE_KERNEL_DIR"])
    return share_dir("kernels_cu")


KERNEL_DIR = find_kernel_dir()
OPTIONS = ("-std=c++17",)
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)


def read_source(name: str, directory: Path = KERNEL_DIR) -> str:
    """The text of kernels_cu/<name> with its local includes expanded (each header once)."""
    seen: set[str] = set()

    def expand(file: str) -> str:
        if file in seen:
            return ""
        seen.add(file)
        path = directory / file
        if not path.is_file():
            raise FileNotFoundError(f"kernel source {path} not found (set REFENGINE_KERNEL_DIR?)")
        text = path.read_text()
        text = text.replace("#pragma once", "")
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(name)


@functools.lru_cache(maxsize=None)
def _module(name: str, options: tuple[str, ...], arch: str):
    import cupy
    return cupy.RawModule(code=read_source(name), options=options)


_functions: dict[tuple[str, str, int], object] = {}


def function(file: str, kernel: str):
    """The compiled kernel `kernel` of kernels_cu/<file> for the current device (looked up once: a Python
    launch is on the critical path of every eager op)."""
    import cupy
    device = cupy.cuda.runtime.getDevice()
    key = (file, kernel, device)
    fn = _functions.get(key)
    if fn is None:
        arch = cupy.cuda.Device(device).compute_capability      # e.g. "90"
        fn = _functions[key] = _module(file, OPTIONS, arch).get_function(kernel)
    return fn

"""Every kernels_cu/*.cu compiles for sm_80 and sm_90 — on a CPU machine, with nvcc and with NVRTC — so a
syntax error never reaches the GPU. The text compiled is what the CUDA backend hands NVRTC (refengine/ops/loader.py
expands the local #includes), and each file carries its teaching header (DESIGN.md §9). NVRTC is what CuPy
compiles with at run time; it has its own front-end settings and no host compiler, so a file nvcc takes may
still fail there: the NVRTC library comes from the nvidia-cuda-nvrtc wheel (a test dependency; no GPU needed)."""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from refengine.ops.loader import KERNEL_DIR, OPTIONS, read_source

SOURCES = sorted(p.name for p in KERNEL_DIR.glob("*.cu"))
NVCC = os.environ.get("NVCC") or shutil.which("nvcc") or next(
    (p for p in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc") if Path(p).is_file()), None)


def test_there_are_kernels():
    assert SOURCES, f"no .cu files in {KERNEL_DIR}"


@pytest.mark.parametrize("name", SOURCES)
def test_teaching_header(name):
    head = (KERNEL_DIR / name).read_text().split("#include")[0]
    assert head.startswith(f"// {name} — "), "the first line names the file and its op"
    for word in ("Twin", "Versions:", "Launch", "v1 "):
        assert word in head, f"{name}: the header lacks {word!r} (DESIGN.md §9)"


@pytest.mark.parametrize("name", SOURCES)
def test_includes_expand(name):
    text = read_source(name)
    assert '#include "' not in text and "#pragma once" not in text
    assert re.search(r'extern "C"', text)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (set NVCC=...)")
@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("name", SOURCES)
def test_compiles(name, arch, tmp_path):
    src = tmp_path / name
    src.write_text(read_source(name))
    cmd = [NVCC, "-std=c++17", "--cubin", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-o",
           str(tmp_path / "out.cubin"), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{name} for sm_{arch}:\n{result.stderr[-3000:]}"


def _libnvrtc() -> ctypes.CDLL | None:
    """libnvrtc from the nvidia-cuda-nvrtc wheel (site-packages/nvidia/cu*/lib), if it is installed."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec is not None else []
    libs = sorted(p for r in roots for p in glob.glob(os.path.join(r, "*", "lib", "libnvrtc.so*"))
                  if "builtins" not in p)
    return ctypes.CDLL(libs[0]) if libs else None


NVRTC = _libnvrtc()


@pytest.mark.skipif(NVRTC is None, reason="NVRTC not found (pip install nvidia-cuda-nvrtc)")
@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("name", SOURCES)
def test_compiles_with_nvrtc(name, arch):
    prog = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(prog), read_source(name).encode(), name.encode(), 0, None, None) == 0
    try:
        options = [o.encode() for o in OPTIONS] + [f"-arch=compute_{arch}".encode()]
        status = NVRTC.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
        size = ctypes.c_size_t()
        NVRTC.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetProgramLog(prog, log)
        assert status == 0, f"{name} for compute_{arch}:\n{log.value.decode(errors='replace')[-3000:]}"
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(prog))


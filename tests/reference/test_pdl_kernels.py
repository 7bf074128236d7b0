"""Every kernel that refengine/ops/cuda.py may launch with programmatic dependence (`pdl_ready=True`) waits
for the kernel before it: its sm_90 PTX holds `griddepcontrol.wait`. A kernel launched that way without the
wait would read activations that are still being written — a race that GPU tests catch only by luck, so it
is checked here, on the CPU, from cuda.py's launch sites and nvcc's PTX.

Launch sites are read with `ast`: `_launch("file.cu", name, ..., pdl_ready=True)` where name is a string, an
f-string (each {...} matches any identifier part) or a variable (any kernel of that file)."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

import refengine.ops
from refengine.ops.loader import read_source
from tests.reference.test_compile_kernels import NVCC

CUDA_PY = ast.parse((Path(refengine.ops.__file__).parent / "cuda.py").read_text(encoding="utf-8"))


def name_pattern(node: ast.expr) -> str:
    if isinstance(node, ast.Constant):
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(re.escape(v.value) if isinstance(v, ast.Constant) else r"\w+" for v in node.values)
    return r"\w+"


def pdl_launch_sites() -> dict[str, list[str]]:
    """file -> kernel name patterns of every _launch(..., pdl_ready=True)."""
    sites: dict[str, list[str]] = {}
    for node in ast.walk(CUDA_PY):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_launch"
                and any(k.arg == "pdl_ready" and getattr(k.value, "value", False) for k in node.keywords)):
            sites.setdefault(node.args[0].value, []).append(name_pattern(node.args[1]))
    return sites


SITES = pdl_launch_sites()


def ptx_entries(name: str, tmp_path) -> dict[str, str]:
    """kernel name -> its PTX body, compiled for sm_90 as NVRTC will see the file."""
    src = tmp_path / name
    src.write_text(read_source(name))
    out = tmp_path / "out.ptx"
    result = subprocess.run([NVCC, "-std=c++17", "-ptx", "-arch=compute_90", "-o", str(out), str(src)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    starts = [(m.group(1), m.start()) for m in re.finditer(r"\.entry\s+(\w+)\s*\(", text)]
    return {n: text[s:(starts[i + 1][1] if i + 1 < len(starts) else len(text))] for i, (n, s) in enumerate(starts)}


def test_the_decode_kernels_opt_in():
    assert {"w4a16_gemv.cu", "linear_f16.cu", "rms_norm.cu", "attention_decode.cu"} <= set(SITES)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (set NVCC=...)")
@pytest.mark.parametrize("name", sorted(SITES))
def test_programmatic_launches_wait(name, tmp_path):
    entries = ptx_entries(name, tmp_path)
    for pattern in SITES[name]:
        matched = [n for n in entries if re.fullmatch(pattern, n)]
        assert matched, f"{name}: no kernel matches the launch site {pattern!r}"
        missing = [n for n in matched if "griddepcontrol.wait" not in entries[n]]
        assert not missing, f"{name}: launched with pdl_ready=True but never calls pdl_wait(): {missing}"

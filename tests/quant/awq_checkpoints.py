"""Tiny AutoAWQ-format checkpoints written from known integer codes, for the import tests.

The packing below is AutoAWQ's own (WQLinear_GEMM.from_linear), written out literally and independently
of refengine/quant/autoawq.py, so a shared misunderstanding of the order cannot pass unnoticed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

AUTOAWQ_ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]


def autoawq_pack(intweight: np.ndarray) -> np.ndarray:
    """int codes [rows, cols] -> int32 [rows, cols/8], as AutoAWQ packs qweight and qzeros."""
    rows, cols = intweight.shape
    packed = np.zeros((rows, cols // 8), dtype=np.uint32)
    for col in range(cols // 8):
        for i in range(8):
            packed[:, col] |= intweight[:, col * 8 + AUTOAWQ_ORDER_MAP[i]].astype(np.uint32) << np.uint32(i * 4)
    return packed.view(np.int32)


def write_awq_checkpoint(src: Path, dst: Path, group_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Re-save the HF checkpoint at `src` as an AutoAWQ GEMM checkpoint at `dst`: every 2-D linear of the
    decoder layers becomes qweight / qzeros / scales of random codes. Returns {weight name: the dense
    [out, in] float32 weight those tensors encode}."""
    rng = np.random.default_rng(seed)
    tensors, out, expected = load_file(str(src / "model.safetensors")), {}, {}
    for name, t in tensors.items():
        if not (name.startswith("model.layers.") and t.ndim == 2):
            out[name] = t
            continue
        rows, width = t.shape                                         # [out, in]
        codes = rng.integers(0, 16, size=(width, rows))               # AutoAWQ's [in, out]
        zeros = rng.integers(0, 16, size=(width // group_size, rows))
        scales = rng.uniform(0.002, 0.05, size=(width // group_size, rows)).astype(np.float16)
        base = name[:-len("weight")]
        out[base + "qweight"], out[base + "qzeros"], out[base + "scales"] = \
            autoawq_pack(codes), autoawq_pack(zeros), scales
        dense_t = (codes - np.repeat(zeros, group_size, axis=0)) * np.repeat(scales.astype(np.float32), group_size, axis=0)
        expected[name] = np.ascontiguousarray(dense_t.T, dtype=np.float32)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, dst / f.name)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group_size,
                                     "zero_point": True, "version": "gemm"}
    (dst / "config.json").write_text(json.dumps(config))
    save_file(out, str(dst / "model.safetensors"))
    return expected

"""Group-wise asymmetric 4-bit quantization and the int4 packing the kernels read.

A linear weight W [out, in] is cut into groups of `group_size` consecutive input channels per row.
Each group gets a scale and an integer zero point (asymmetric uint4, the AWQ / LMDeploy convention):

    scale = (max − min) / 15          zero = round(−min / scale)   (clamped to [0, 15])
    q     = clamp(round(w / scale) + zero, 0, 15)
    w'    = (q − zero) · scale                                      (dequantized)

Packed layout (docs/ALGORITHMS.md, "int4 weights"):

    qweight [out, in / 8]          uint32   element (o, i) = (qweight[o, i // 8] >> 4·(i % 8)) & 0xF
    scales  [out, in / group_size] float16
    zeros   [out, in / group_size] float16  integer zero points 0..15, stored as float16

Eight consecutive input channels share one 32-bit word (lowest nibble first), so a thread that walks a
row along `in` reads contiguous words — the order a GEMV wants. Every function here is
array-module agnostic: pass NumPy or CuPy arrays, get the same module back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refengine.errors import RefengineError

BITS = 4
QMAX = (1 << BITS) - 1          # 15
PACK = 32 // BITS               # 8 values per uint32 word
GROUP_SIZES = (32, 64, 128)


def array_module(a):
    """numpy or cupy, whichever `a` belongs to (without importing cupy on a CPU-only machine)."""
    if type(a).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def check_group_size(in_features: int, group_size: int, what: str = "weight") -> None:
    if group_size not in GROUP_SIZES:
        raise RefengineError(f"--group-size {group_size} is not supported (choose from {GROUP_SIZES})")
    if in_features % group_size:
        raise RefengineError(f"--group-size {group_size} does not divide the input dimension {in_features} "
                             f"of {what}")


@dataclass(frozen=True)
class GroupSizeFit:
    """How a group size fits a model: every linear's input dimension is one of `widths`."""
    widths: tuple[tuple[str, int], ...]     # (what, input dimension): hidden, attention (heads × head_dim), MLP
    fitting: tuple[int, ...]                # the GROUP_SIZES that divide every width
    misfit: tuple[str, int] | None          # the first width that the asked group size does not divide


def group_size_fit(cfg, group_size: int) -> GroupSizeFit:
    """Check `group_size` against the input dimensions of a model's linears (cfg: a ModelConfig).

    The callers (workspace convert, bench random model) word their own one-line errors from the result."""
    widths = (("hidden size", cfg.hidden_size), ("attention width (heads × head_dim)", cfg.q_size),
              ("intermediate size", cfg.intermediate_size))
    fitting = tuple(g for g in GROUP_SIZES if all(width % g == 0 for _, width in widths))
    misfit = next(((what, width) for what, width in widths if width % group_size), None)
    return GroupSizeFit(widths, fitting, misfit)


@dataclass
class Int4Weight:
    """A packed W4A16 linear weight [out, in] (see the module docstring for the layout)."""
    qweight: object        # [out, in/8] uint32
    scales: object         # [out, in/g] float16
    zeros: object          # [out, in/g] float16
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.qweight.shape[0], self.qweight.shape[1] * PACK


def float16_at_least(x):
    """Round float32 scales to the float16 values they will be stored as, upwards, so that
    (max − min) / scale never exceeds 15 and every weight stays within half a step of its code."""
    xp = array_module(x)
    x16 = x.astype(xp.float16)
    x16 = xp.where(x16.astype(xp.float32) < x, xp.nextafter(x16, xp.float16(xp.inf)), x16)
    return x16.astype(xp.float32)


def quantize_groups(w, group_size: int, max_shrink=None):
    """Integer codes q [out, in] (uint8), scales and zeros [out, in/g] (float32) for W [out, in].

    `max_shrink` (optional, [out, in/g]) scales each group's max and min toward zero before quantizing
    — the clipping that AWQ's search picks."""
    xp = array_module(w)
    g, scales, zeros = group_scales(w, group_size, max_shrink)
    q = xp.clip(xp.rint(g / scales[..., None]) + zeros[..., None], 0, QMAX)
    return q.reshape(w.shape).astype(xp.uint8), scales, zeros


def group_scales(w, group_size: int, max_shrink=None):
    """(W as float32 groups [out, in/g, g] — a new array —, scales, zeros [out, in/g] float32) for W [out, in]."""
    xp = array_module(w)
    out_f, in_f = w.shape
    g = w.reshape(out_f, in_f // group_size, group_size).astype(xp.float32)
    wmax, wmin = g.max(axis=-1), g.min(axis=-1)
    if max_shrink is not None:
        wmax, wmin = wmax * max_shrink, wmin * max_shrink
    wmax, wmin = xp.maximum(wmax, 0), xp.minimum(wmin, 0)       # the range always holds 0 exactly
    scales = float16_at_least(xp.maximum((wmax - wmin) / QMAX, 1e-6))
    zeros = xp.clip(xp.rint(-wmin / scales), 0, QMAX)
    return g, scales, zeros


def dequantize_codes(q, scales, zeros, group_size: int):
    """(q − zero) · scale -> float32 [out, in]."""
    xp = array_module(q)
    out_f, in_f = q.shape
    g = q.reshape(out_f, in_f // group_size, group_size).astype(xp.float32)
    return ((g - zeros[..., None]) * scales[..., None]).reshape(out_f, in_f)


def fake_quantize(w, group_size: int, max_shrink=None):
    """Quantize and dequantize in one go (float32): what the int4 weights will compute with."""
    q, s, z = quantize_groups(w, group_size, max_shrink)
    return dequantize_codes(q, s, z, group_size)


def pack_int4(q):
    """Codes [out, in] (values 0..15) -> uint32 words [out, in/8], lowest nibble = lowest input channel."""
    xp = array_module(q)
    out_f, in_f = q.shape
    nibbles = q.reshape(out_f, in_f // PACK, PACK).astype(xp.uint32)
    shifts = (xp.arange(PACK, dtype=xp.uint32) * BITS)
    return (nibbles << shifts).sum(axis=-1, dtype=xp.uint32)


def unpack_int4(qweight):
    """uint32 words [out, in/8] -> codes [out, in] (uint8); the exact inverse of pack_int4."""
    xp = array_module(qweight)
    shifts = (xp.arange(PACK, dtype=xp.uint32) * BITS)
    nibbles = (qweight[..., None] >> shifts) & QMAX
    return nibbles.reshape(qweight.shape[0], -1).astype(xp.uint8)


def quantize_int4(w, group_size: int, max_shrink=None) -> Int4Weight:
    """W [out, in] (float) -> packed Int4Weight with float16 scales and zeros."""
    check_group_size(w.shape[1], group_size)
    q, s, z = quantize_groups(w, group_size, max_shrink)
    xp = array_module(w)
    return Int4Weight(pack_int4(q), s.astype(xp.float16), z.astype(xp.float16), group_size)


def dequantize_int4(w: Int4Weight):
    """Packed Int4Weight -> float32 [out, in], using the stored float16 scales and zeros."""
    xp = array_module(w.qweight)
    return dequantize_codes(unpack_int4(w.qweight), w.scales.astype(xp.float32), w.zeros.astype(xp.float32),
                            w.group_size)

"""AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization", 2023) for one decoder block.

A few input channels carry much larger activations than the rest; their weights matter most. Scaling a
linear's input channel c by s_c before quantizing (W·diag(s), x/s — the product is unchanged) gives the
salient weights more of the 16 levels. The inverse 1/s folds into the op before the linear, so it costs
nothing at run time. Per block, in order (fused linears: one scale serves q, k and v, one gate and up):

    group                        previous op (÷ s)       linear (× s)   judged by the output MSE of
    input_layernorm → q,k,v      attn_norm weight        qkv columns    attention (qkv → rope → attn → o)
    v → o   (only without GQA)   v rows of qkv           o columns      o
    post_attn_layernorm → g,u    mlp_norm weight         gate_up cols   mlp (gate_up → silu·up → down)
    up → down                    up rows of gate_up      down columns   down

Scale search: s(r) = x_mean^r / w_mean^(1−r), normalised by sqrt(max(s)·min(s)), r on a 20-point grid
(0, 0.05, …, 0.95) plus s = 1 (no scaling, i.e. plain RTN: the search can only improve on it); the loss
is ‖module(x; Q(W·s)/s) − module(x; W)‖² on a sample of calibration tokens. x_mean = mean |x| per
channel over every token; w_mean = |w| / max|w| of its group, averaged over output rows. Without search
(LMDeploy's fast smoothing) r is fixed at 0.5.

Clip search: for v, o, gate, up and down (not q, k: their errors pass through softmax, where clipping
hurts — the AWQ code skips them too), each (row, group) picks the shrink of its range, among 20 steps
from 1 down to 1 − 0.5, that minimises the group's output error E[(x_g·(w_g − q_g))²], computed exactly
over every calibration token from the group's Gram matrix (stats.py).

Everything is array-module agnostic: NumPy on the CPU, CuPy when the block lives on a GPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from refengine.model.weights import LayerWeights
from refengine.quant.primitives import QMAX, array_module, group_scales

GRID = 20
MAX_SHRINK = 0.5


@dataclass(frozen=True)
class ScaleGroup:
    name: str
    linear: str        # the fused linear whose input channels are scaled
    prev: str          # where 1/s is folded: attn_norm | mlp_norm | v (rows of qkv) | up (rows of gate_up)
    module: str        # whose output judges a scale: attention | mlp | o | down

    def applies(self, cfg) -> bool:
        # o reads all H·D attention channels, v writes KVH·D: one scale per channel needs H == KVH
        return self.prev != "v" or cfg.num_heads == cfg.num_kv_heads


SCALE_GROUPS = (
    ScaleGroup("input_layernorm -> q,k,v", "qkv", "attn_norm", "attention"),
    ScaleGroup("v -> o", "o", "v", "o"),
    ScaleGroup("post_attention_layernorm -> gate,up", "gate_up", "mlp_norm", "mlp"),
    ScaleGroup("up -> down", "down", "up", "down"),
)


@dataclass(frozen=True)
class AwqOptions:
    group_size: int = 128
    search_scale: bool = True
    clip: bool = True
    quantized_inputs: bool = False     # calibrate block i on the quantized blocks' outputs (one more forward)


def weight_mean(w, group_size: int):
    """AWQ's w_mean [in]: each |w| relative to the largest in its quantization group, averaged over rows."""
    xp = array_module(w)
    out_f, in_f = w.shape
    g = xp.abs(w).reshape(out_f, in_f // group_size, group_size)
    g = g / (g.max(axis=-1, keepdims=True) + 1e-6)
    return g.reshape(out_f, in_f).mean(axis=0)


def candidate_scale(x_mean, w_mean, ratio: float):
    """s = x_mean^r / w_mean^(1−r), normalised so that max(s)·min(s) = 1."""
    xp = array_module(x_mean)
    s = xp.maximum(x_mean ** ratio / (w_mean ** (1 - ratio) + 1e-4), 1e-4)
    return (s / xp.sqrt(s.max() * s.min())).astype(xp.float32)


def fake_quantize_lean(w, group_size: int, max_shrink=None):
    """primitives.fake_quantize(w, group_size, max_shrink), bit for bit (tests/quant/test_awq.py checks it),
    computed in place without the round trip through uint8 codes: half the memory passes. The searches
    below fake-quantize a whole linear 20-odd times per block, so this is where their time goes."""
    xp = array_module(w)
    g, scales, zeros = group_scales(w, group_size, max_shrink)
    scales, zeros = scales[..., None], zeros[..., None]
    g /= scales
    xp.rint(g, out=g)
    g += zeros
    xp.clip(g, 0, QMAX, out=g)                 # the integer code q, still in float32
    g -= zeros
    g *= scales                                # (q − zero) · scale
    return g.reshape(w.shape)


def fake_quantize_scaled(w, s, group_size: int):
    """Q(W·diag(s))·diag(1/s): what the linear computes on x once s is folded into the previous op."""
    return fake_quantize_lean(w * s[None, :], group_size) / s[None, :]


def mse(a, b) -> float:
    """Mean squared difference, in float32 even for float16 outputs (whose squared errors would underflow)."""
    xp = array_module(a)
    d = a.astype(xp.float32) - b.astype(xp.float32)
    return float(xp.mean(d * d))


def search_scale(loss, x_mean, w_mean, search: bool):
    """(best s, its ratio or None for s = 1, the loss of each candidate)."""
    if not search:
        return candidate_scale(x_mean, w_mean, 0.5), 0.5, {}
    xp = array_module(x_mean)
    best_s, best_ratio = xp.ones_like(x_mean), None
    losses = {None: loss(best_s)}
    for i in range(GRID):
        ratio = i / GRID
        s = candidate_scale(x_mean, w_mean, ratio)
        losses[ratio] = loss(s)
        if losses[ratio] < losses[best_ratio]:
            best_s, best_ratio = s, ratio
    return best_s, best_ratio, losses


def fold_scale(layer: LayerWeights, group: ScaleGroup, s, cfg) -> LayerWeights:
    """The block with s folded in: the linear's columns × s, the previous op ÷ s. Exact in real numbers."""
    changes = {group.linear: getattr(layer, group.linear) * s[None, :]}
    if group.prev in ("attn_norm", "mlp_norm"):
        changes[group.prev] = getattr(layer, group.prev) / s
    else:   # rows of a fused linear: v is the tail of qkv, up the tail of gate_up
        fused = "qkv" if group.prev == "v" else "gate_up"
        start = cfg.q_size + cfg.kv_size if group.prev == "v" else cfg.intermediate_size
        w = changes.get(fused, getattr(layer, fused)).copy()
        w[start:] /= s[:, None]
        changes[fused] = w
        bias = getattr(layer, f"{fused}_bias")
        if bias is not None:
            bias = bias.copy()
            bias[start:] /= s
            changes[f"{fused}_bias"] = bias
    return dataclasses.replace(layer, **changes)


def search_clip(w, gram, group_size: int, rows: slice = slice(None)):
    """max_shrink [out, in/g] for quantize_int4: per (row, group) the shrink minimising Δw_g G_g Δw_gᵀ.
    Rows outside `rows` keep 1 (no clipping)."""
    xp = array_module(w)
    out_f, in_f = w.shape
    ng = in_f // group_size
    shrink = xp.ones((out_f, ng), xp.float32)
    sub = w[rows]
    best_err = xp.full((sub.shape[0], ng), xp.inf, xp.float32)
    best = xp.ones_like(best_err)
    for step in range(GRID):
        factor = 1.0 - MAX_SHRINK * step / (GRID - 1)
        trial = xp.full_like(best, factor)
        delta = (sub - fake_quantize_lean(sub, group_size, trial)).reshape(-1, ng, group_size)
        delta = xp.ascontiguousarray(delta.transpose(1, 0, 2))                 # [in/g, rows, g] (BLAS needs it)
        err = ((delta @ gram) * delta).sum(axis=-1).T                          # [rows, in/g]
        better = err < best_err
        best_err = xp.where(better, err, best_err)
        best = xp.where(better, trial, best)
    shrink[rows] = best
    return shrink

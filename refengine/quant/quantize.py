"""Quantizing a model's decoder blocks one at a time: round-to-nearest, or AWQ on each block's real inputs.

AWQ walks the blocks in order, holding one block and the calibration activations:

    hidden = embed(calibration ids)                        [N·S, hidden]  the residual stream
    for block i:
        float forward over the batches  → per-linear input statistics (stats.py), a token sample kept
        scale search + fold, clip search (awq.py)  → int4 block, written out by the caller
        forward of the QUANTIZED block  → hidden for block i+1

so block i+1 calibrates on what it will really receive: the outputs of the already-quantized blocks
before it (GPTQ-style sequential calibration; AutoAWQ instead passes on the float block's output).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from refengine.model.weights import LayerWeights
from refengine.quant.awq import (SCALE_GROUPS, AwqOptions, fake_quantize_scaled, fold_scale, mse, search_clip,
                                 search_scale, weight_mean)
from refengine.quant.block import LINEARS, BlockModel, BlockRunner
from refengine.quant.primitives import Int4Weight, array_module, dequantize_int4, quantize_int4
from refengine.quant.progress import Progress
from refengine.quant.stats import InputStats

SEARCH_TOKENS = 2048      # tokens (whole sequences) the scale search runs each candidate module on


def rtn_layer(layer: LayerWeights, group_size: int) -> LayerWeights:
    """Round-to-nearest: every linear quantized as it is (asymmetric uint4 per group)."""
    return dataclasses.replace(layer, **{n: quantize_int4(_float32(getattr(layer, n)), group_size) for n in LINEARS})


def float32_layer(layer: LayerWeights, xp=np) -> LayerWeights:
    return LayerWeights(**{k: None if v is None else _float32(v, xp) for k, v in vars(layer).items()})


def dequantized_layer(layer: LayerWeights) -> LayerWeights:
    return dataclasses.replace(layer, **{n: dequantize_int4(getattr(layer, n)) for n in LINEARS
                                         if isinstance(getattr(layer, n), Int4Weight)})


def host_layer(layer: LayerWeights) -> LayerWeights:
    """The block in host memory (the writer's side), wherever it was computed."""
    def host(a):
        return a.get() if a is not None and array_module(a) is not np else a
    fields = {k: Int4Weight(host(v.qweight), host(v.scales), host(v.zeros), v.group_size)
              if isinstance(v, Int4Weight) else host(v) for k, v in vars(layer).items()}
    return LayerWeights(**fields)


def _float32(a, xp=np):
    return xp.ascontiguousarray(xp.asarray(a), dtype=xp.float32)


def batches(hidden, seqlen: int, batch_size: int):
    """Row slices of `hidden` [N·S, hidden] covering batch_size sequences each."""
    rows = batch_size * seqlen
    return [slice(start, min(start + rows, hidden.shape[0])) for start in range(0, hidden.shape[0], rows)]


def collect_stats(runner: BlockRunner, model: BlockModel, hidden, batch_size: int, group_size: int, keep: int,
                  progress: Progress, out=None) -> dict[str, InputStats]:
    """Forward the float block over every batch, gathering each linear's input statistics (and, into
    `out` when given, the float block's output)."""
    stats = {name: InputStats(group_size, keep) for name in LINEARS}
    runner.ops.capture = lambda name, x: stats[name].add(x)
    try:
        for rows in batches(hidden, runner.seqlen, batch_size):
            y = runner.forward(model, hidden[rows])
            if out is not None:
                out[rows] = y
            progress.step(rows.stop // runner.seqlen, "calibrating")
    finally:
        runner.ops.capture = None
    return stats


def propagate(runner: BlockRunner, model: BlockModel, hidden, batch_size: int, progress: Progress):
    """The block's output for every calibration sequence (the next block's input)."""
    out = array_module(hidden).empty_like(hidden)
    for rows in batches(hidden, runner.seqlen, batch_size):
        out[rows] = runner.forward(model, hidden[rows])
        progress.step(rows.stop // runner.seqlen, "quantized forward")
    return out


def run_module(runner: BlockRunner, model: BlockModel, module: str, x):
    """The output of one piece of the block: attention (qkv … o), mlp (gate_up … down), o or down alone."""
    if module == "attention":
        return runner.attention(model, x)
    if module == "mlp":
        return model.mlp(0, x)
    return model.linear(x, getattr(model.layer, module), getattr(model.layer, f"{module}_bias"))


def scale_loss(runner: BlockRunner, model: BlockModel, group, w, x, group_size: int):
    """loss(s): output MSE of the group's module, its linear (float32 weight w) fake-quantized under scale s."""
    x = x.astype(model.dtype, copy=False)           # the sample is kept in float32; a GPU block runs float16
    reference = run_module(runner, model, group.module, x)

    def loss(s) -> float:
        with model.replaced(group.linear, fake_quantize_scaled(w, s, group_size)):
            return mse(run_module(runner, model, group.module, x), reference)
    return loss


def awq_layer(runner: BlockRunner, model: BlockModel, layer: LayerWeights, stats: dict[str, InputStats],
              opts: AwqOptions) -> tuple[LayerWeights, dict]:
    """Scale search + fold for each group, then clip search, then int4. `layer` is the block in float32
    (the copy AWQ edits), `model` runs it in the backend's dtype. Returns (int4 block, report)."""
    cfg, g = runner.cfg, opts.group_size
    report = {}
    for group in SCALE_GROUPS:
        if not group.applies(cfg):
            continue
        st, w = stats[group.linear], getattr(layer, group.linear)
        loss = scale_loss(runner, model, group, w, st.sample, g) if opts.search_scale else None
        s, ratio, losses = search_scale(loss, st.mean_abs, weight_mean(w, g), opts.search_scale)
        layer = fold_scale(layer, group, s, cfg)
        model.set_layer(layer)
        st.scale_inputs(s)
        report[group.name] = {"ratio": ratio, **({"loss": losses[ratio], "loss_rtn": losses[None]} if losses else {})}
    shrink = {}
    if opts.clip:
        v_rows = slice(cfg.q_size + cfg.kv_size, None)             # q and k are not clipped
        shrink = {n: search_clip(getattr(layer, n), stats[n].gram, g, v_rows if n == "qkv" else slice(None))
                  for n in LINEARS}
    quantized = {n: quantize_int4(getattr(layer, n), g, shrink.get(n)) for n in LINEARS}
    return dataclasses.replace(layer, **quantized), report


def awq_layers(source, calib_ids: np.ndarray, opts: AwqOptions, ops, batch_size: int,
               progress: Progress = Progress()) -> Iterator[tuple[int, LayerWeights, dict]]:
    """Yield (i, int4 block i, report) for every block, in order, calibrated on `calib_ids` [N, S]."""
    cfg = source.config
    num_seqs, seqlen = calib_ids.shape
    runner = BlockRunner(cfg, ops, seqlen)
    xp = runner.ops.xp                                       # numpy, or cupy on a GPU backend
    embed = xp.asarray(source.global_weight("embed"))
    hidden = runner.ops.embedding(xp.asarray(calib_ids.reshape(-1)), embed).astype(runner.ops.DEFAULT_DTYPE)
    del embed
    keep = max(1, min(num_seqs, SEARCH_TOKENS // seqlen)) * seqlen
    passes = 2 if opts.quantized_inputs else 1
    for i in range(cfg.num_layers):
        progress.stage(f"block {i + 1}/{cfg.num_layers}", passes * num_seqs)
        layer = float32_layer(source.layer(i), xp)
        model = runner.model(layer)
        float_out = None if opts.quantized_inputs else xp.empty_like(hidden)
        stats = collect_stats(runner, model, hidden, batch_size, opts.group_size, keep, progress, float_out)
        progress.step(num_seqs, "searching scales and clipping")
        quantized, report = awq_layer(runner, model, layer, stats, opts)
        del stats
        if opts.quantized_inputs:               # the next block sees what the quantized model will feed it
            model.set_layer(dequantized_layer(quantized))
            hidden = propagate(runner, model, hidden, batch_size, _Offset(progress, num_seqs))
        else:                                   # ... or the float model's activations (AutoAWQ, LMDeploy)
            hidden = float_out
        yield i, host_layer(quantized), report


class _Offset(Progress):
    """Second half of a block's bar: the quantized forward counts after the float one."""

    def __init__(self, inner: Progress, offset: int):
        self.inner, self.offset = inner, offset

    def step(self, done: int, note: str = "") -> None:
        self.inner.step(self.offset + done, note)

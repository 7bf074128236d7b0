"""Cut an ordinary loaded model (refengine/model/weights.py) into one tensor-parallel rank's weights.

Every linear is [out, in] (y = x @ W.T). Column-parallel linears keep some output rows, so each rank
computes some outputs whole; row-parallel linears keep some input columns, so each rank computes a partial
sum of every output, and the ranks' partial sums add up (the all-reduce) to the full result:

    qkv      [(H + 2KVH)·D, hidden]  rows   q heads of the rank | its k heads | its v heads  (same fused order)
    gate_up  [2I, hidden]            rows   its gate channels | its up channels              (same fused order)
    o        [hidden, H·D]           cols   the inputs its q heads produce
    down     [hidden, I]             cols   the inputs its channels produce
    lm_head  [V, hidden]             rows   its vocabulary block, zero rows padding the last rank's
    embed, norms                     whole on every rank (the residual stream is never split)
    o / down biases                  rank 0 only: added once to the sum

int4 (Int4Weight, layout in refengine/quant/primitives.py): qweight [out, in/8] and scales / zeros
[out, in/g] are all row-major by output feature, so a row cut takes the same rows of all three; a column
cut takes in/8 words and in/g groups, which needs the cut to fall on a group boundary (plan.py checks it).
The slices are copies: a memory-mapped workspace is read only where this rank's shard lies.
"""

from __future__ import annotations

import numpy as np

from refengine.model.weights import LayerWeights, ModelWeights
from refengine.parallel.plan import RankShard, TensorParallelError, TPPlan
from refengine.quant.primitives import PACK, Int4Weight


def take_rows(w, spans: list[range]):
    """Rows of a dense [out, ...] array (a weight or a bias) or an Int4Weight, the spans back to back."""
    if w is None:
        return None
    if isinstance(w, Int4Weight):
        return Int4Weight(*(take_rows(getattr(w, f), spans) for f in ("qweight", "scales", "zeros")), w.group_size)
    return np.ascontiguousarray(np.concatenate([w[s.start:s.stop] for s in spans]))


def take_cols(w, cols: range, what: str):
    """Input columns [cols) of a dense [out, in] array or an Int4Weight (cut on group boundaries)."""
    if not isinstance(w, Int4Weight):
        return np.ascontiguousarray(w[:, cols.start:cols.stop])
    g = w.group_size
    if cols.start % g or cols.stop % g:
        raise TensorParallelError(f"{what}: the shard [{cols.start}, {cols.stop}) does not fall on int4 group "
                                  f"boundaries (group size {g})")
    words = slice(cols.start // PACK, cols.stop // PACK)
    groups = slice(cols.start // g, cols.stop // g)
    return Int4Weight(np.ascontiguousarray(w.qweight[:, words]), np.ascontiguousarray(w.scales[:, groups]),
                      np.ascontiguousarray(w.zeros[:, groups]), g)


def qkv_spans(plan: TPPlan, s: RankShard) -> list[range]:
    """The fused qkv rows of rank s: its q heads, then its k heads, then its v heads (each head D rows)."""
    D, q_size, kv_size = plan.cfg.head_dim, plan.cfg.q_size, plan.cfg.kv_size
    heads = lambda base, r: range(base + r.start * D, base + r.stop * D)
    return [heads(0, s.q_heads), heads(q_size, s.kv_heads), heads(q_size + kv_size, s.kv_heads)]


def gate_up_spans(plan: TPPlan, s: RankShard) -> list[range]:
    """The fused gate_up rows of rank s: its gate channels, then the same channels of up."""
    inter = plan.cfg.intermediate_size
    return [s.inter, range(inter + s.inter.start, inter + s.inter.stop)]


def shard_layer(layer: LayerWeights, plan: TPPlan, s: RankShard, i: int) -> LayerWeights:
    D = plan.cfg.head_dim
    first = s.rank == 0
    qkv, gate_up = qkv_spans(plan, s), gate_up_spans(plan, s)
    return LayerWeights(
        attn_norm=layer.attn_norm,
        qkv=take_rows(layer.qkv, qkv),
        qkv_bias=take_rows(layer.qkv_bias, qkv),
        o=take_cols(layer.o, range(s.q_heads.start * D, s.q_heads.stop * D), f"layer {i} o_proj"),
        o_bias=layer.o_bias if first else None,
        mlp_norm=layer.mlp_norm,
        gate_up=take_rows(layer.gate_up, gate_up),
        gate_up_bias=take_rows(layer.gate_up_bias, gate_up),
        down=take_cols(layer.down, s.inter, f"layer {i} down_proj"),
        down_bias=layer.down_bias if first else None,
    )


def shard_lm_head(lm_head, plan: TPPlan, s: RankShard) -> np.ndarray:
    """Rows s.vocab of the LM head, padded with zero rows to vocab_per_rank (equal blocks for the gather;
    the padding's logits are 0 and are cut off after it)."""
    block = np.zeros((plan.vocab_per_rank, lm_head.shape[1]), dtype=lm_head.dtype)
    block[:len(s.vocab)] = lm_head[s.vocab.start:s.vocab.stop]
    return block


def shard_weights(weights: ModelWeights, plan: TPPlan, rank: int) -> ModelWeights:
    """Rank `rank`'s weights: a ModelWeights of the shape plan.local_config() describes."""
    s = plan.shard(rank)
    layers = [shard_layer(layer, plan, s, i) for i, layer in enumerate(weights.layers)]
    return ModelWeights(weights.embed, weights.final_norm, shard_lm_head(weights.lm_head, plan, s), layers)


def group_size_of(weights: ModelWeights) -> int | None:
    """The int4 group size of a loaded model (None when its linears are float)."""
    for layer in weights.layers:
        for w in (layer.qkv, layer.o, layer.gate_up, layer.down):
            if isinstance(w, Int4Weight):
                return w.group_size
    return None

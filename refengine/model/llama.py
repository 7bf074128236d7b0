"""The Llama-family decoder, written once against an ops backend (NumPy reference or CUDA kernels).

One forward pass takes a packed batch: the new tokens of several sequences back to back, each sequence
with its own position range and its own block table into the paged KV cache. Prefill, chunked prefill,
a session's next turn and decode are all the same call.

    x = embed(ids)                                    # [T, hidden]
    for each layer:
        h, residual = add_rms_norm(x, residual)       # residual stream carried un-normalised
        q, k, v = split(h @ Wqkv.T + b)               # [T, H, D], [T, KVH, D], [T, KVH, D]
        q, k = rope(q), rope(k)
        cache[slots] = k, v
        x = attention(q, cache) @ Wo.T
        h, residual = add_rms_norm(x, residual)
        x = (silu(h @ Wgate.T) · (h @ Wup.T)) @ Wdown.T
    logits = rms_norm(x + residual) @ Wlm_head.T      # only for the rows asked for
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refengine.config import ModelConfig
from refengine.engine.kv_cache import KVCache
from refengine.model.weights import ModelWeights
from refengine.ops import reference as reference_ops
from refengine.quant.primitives import Int4Weight


@dataclass
class ForwardBatch:
    """The packed inputs of one forward pass (B sequences, T new tokens in all)."""
    input_ids: np.ndarray       # [T] int64
    positions: np.ndarray       # [T] position of each token within its sequence
    cu_seqlens_q: np.ndarray    # [B+1] sequence b's new tokens are rows cu[b]:cu[b+1]
    context_lens: np.ndarray    # [B] tokens in the cache for b after this step (earlier + new)
    block_tables: np.ndarray    # [B, max_blocks] int32 block ids (unused entries are ignored)
    slot_mapping: np.ndarray    # [T] cache slot each new token's K/V is written to
    logits_rows: np.ndarray     # [R] which of the T rows get logits (usually each sequence's last)

    @classmethod
    def single(cls, ids, start_pos: int, block_table, block_size: int, all_logits: bool = False
               ) -> "ForwardBatch":
        """One sequence whose tokens [start_pos, start_pos + len(ids)) are new this step."""
        ids = np.asarray(ids, dtype=np.int64)
        positions = np.arange(start_pos, start_pos + len(ids), dtype=np.int64)
        table = np.asarray(block_table, dtype=np.int32)
        slots = table[positions // block_size].astype(np.int64) * block_size + positions % block_size
        rows = np.arange(len(ids)) if all_logits else np.array([len(ids) - 1])
        return cls(ids, positions, np.array([0, len(ids)]), np.array([start_pos + len(ids)]),
                   table[None, :], slots, rows)


class LlamaModel:
    """Forward pass of a Llama-family model. `ops` is a backend module (refengine.ops.get_backend)."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, ops, dtype=None, comm=None):
        self.cfg = cfg
        self.ops = ops
        # Tensor parallelism (refengine/parallel): this model is one rank's shard (cfg holds the rank's head,
        # channel and vocabulary counts) and `comm` sums the partial outputs of o and down across ranks and
        # gathers the logits' vocabulary shards. None: the whole model in one place, nothing to combine.
        self.comm = comm
        self.dtype = np.dtype(dtype if dtype is not None else ops.DEFAULT_DTYPE)   # float32 / GPU: float16
        self.weights = ops.prepare_weights(weights, self.dtype)                   # on the backend's device
        if ops is reference_ops:
            # The NumPy reference unpacks an int4 weight on every call (it is the spec, not a kernel), so on
            # this backend each int4 linear is dequantized once, here: an int4 workspace then decodes as fast
            # as a float one, holding float32 like every weight on this backend (kernels keep the int4).
            self.weights = self.weights.dequantized()
        self.scale = 1.0 / float(np.sqrt(cfg.head_dim))

    def inv_freq(self, positions: np.ndarray) -> np.ndarray:
        c = self.cfg
        # only dynamic NTK depends on the length; reading positions elsewhere would stall a GPU step
        dynamic = c.rope_scaling.type == "dynamic"
        seq_len = int(positions.max()) + 1 if dynamic and len(positions) else 0
        return self.ops.rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling, c.max_position_embeddings,
                                      seq_len)

    def rope_plan(self, batch: ForwardBatch) -> list[tuple[slice, np.ndarray]]:
        """(rows, inv_freq [D/2]) pairs covering the batch. Dynamic-NTK frequencies depend on the sequence's
        own length (as in transformers, which sees one sequence), so a packed batch gets one pair per
        sequence there — a sequence's logits must not depend on its batch mates. Other types: one pair."""
        cu = batch.cu_seqlens_q
        if self.cfg.rope_scaling.type != "dynamic" or len(cu) <= 2:
            return [(slice(None), self.inv_freq(batch.positions))]
        return [(slice(int(cu[b]), int(cu[b + 1])), self.inv_freq(batch.positions[cu[b]:cu[b + 1]]))
                for b in range(len(cu) - 1)]

    def rope(self, x: np.ndarray, positions: np.ndarray, plan) -> np.ndarray:
        parts = [self.ops.rotary_embedding(x[rows], positions[rows], inv_freq) for rows, inv_freq in plan]
        return parts[0] if len(parts) == 1 else self.ops.xp.concatenate(parts)

    def rope_and_store(self, qk, v, batch: ForwardBatch, plan, k_cache, v_cache):
        """Rotate the q|k heads [T, H + KVH, D] and store the rotated k and v [T, KVH, D] at the batch's slots."""
        parts = [self.ops.rotary_embedding_write_kv(qk[rows], v[rows], batch.positions[rows], inv_freq, k_cache,
                                                    v_cache, batch.slot_mapping[rows]) for rows, inv_freq in plan]
        return parts[0] if len(parts) == 1 else self.ops.xp.concatenate(parts)

    def forward(self, batch: ForwardBatch, kv: KVCache, hidden_states: list | None = None) -> np.ndarray:
        """Logits [R, V] float32 for batch.logits_rows. If `hidden_states` is a list, the residual stream
        after the embedding and after every layer ([T, hidden] each) is appended to it, then the final
        normed hidden state — the same points as transformers' output_hidden_states."""
        ops, w, c = self.ops, self.weights, self.cfg
        rope = self.rope_plan(batch)                                     # [(rows, inv_freq [D/2])]
        batch = ops.prepare_batch(batch)                                 # index arrays onto the device, once
        x = ops.embedding(batch.input_ids, w.embed)                      # [T, hidden]
        residual = ops.xp.zeros_like(x)
        if hidden_states is not None:
            hidden_states.append(x)
        for i, layer in enumerate(w.layers):
            h, residual = ops.add_rms_norm(x, residual, layer.attn_norm, c.rms_norm_eps)
            x = self.attention(i, h, batch, kv, rope)
            h, residual = ops.add_rms_norm(x, residual, layer.mlp_norm, c.rms_norm_eps)
            x = self.mlp(i, h)
            if hidden_states is not None:
                hidden_states.append(x + residual)
        rows = batch.logits_rows
        final = ops.rms_norm((x + residual)[rows], w.final_norm, c.rms_norm_eps)     # [R, hidden]
        if hidden_states is not None:
            hidden_states.append(ops.rms_norm(x + residual, w.final_norm, c.rms_norm_eps))
        logits = ops.logits(final, w.lm_head)                            # [R, V] float32
        return logits if self.comm is None else self.comm.gather_vocab(logits)   # a rank's [R, V/tp] -> [R, V]

    def attention(self, i: int, h: np.ndarray, batch: ForwardBatch, kv: KVCache, rope) -> np.ndarray:
        ops, c, layer = self.ops, self.cfg, self.weights.layers[i]
        T = h.shape[0]
        qkv = self.linear(h, layer.qkv, layer.qkv_bias)                   # [T, (H + 2KVH)·D]
        # q and k heads sit side by side in qkv: rotate both and store k, v in the cache in one op
        qk = qkv[:, :c.q_size + c.kv_size].reshape(T, c.num_heads + c.num_kv_heads, c.head_dim)
        v = qkv[:, c.q_size + c.kv_size:].reshape(T, c.num_kv_heads, c.head_dim)
        qk = self.rope_and_store(qk, v, batch, rope, kv.k_caches[i], kv.v_caches[i])   # [T, H + KVH, D]
        q = qk[:, :c.num_heads]                                          # [T, H, D] (a view)
        attn = ops.paged_attention(q, kv.k_caches[i], kv.v_caches[i], batch.block_tables,
                                   batch.context_lens, batch.cu_seqlens_q, self.scale)   # [T, H, D]
        out = self.linear(attn.reshape(T, c.q_size), layer.o, layer.o_bias)          # [T, hidden]
        return out if self.comm is None else self.comm.all_reduce(out)   # a rank's heads give a partial sum

    def linear(self, x, weight, bias=None):
        """x @ W.T (+ b) for a dense or a packed int4 (W4A16) weight."""
        if isinstance(weight, Int4Weight):
            return self.ops.linear_w4a16(x, weight.qweight, weight.scales, weight.zeros, weight.group_size, bias)
        return self.ops.linear(x, weight, bias)

    def mlp(self, i: int, h: np.ndarray) -> np.ndarray:
        ops, layer = self.ops, self.weights.layers[i]
        gate_up = self.linear(h, layer.gate_up, layer.gate_up_bias)      # [T, 2I]
        down = layer.down                                                # silu(gate)·up @ Wdown.T as one op
        if isinstance(down, Int4Weight):
            out = ops.silu_and_mul_linear_w4a16(gate_up, down.qweight, down.scales, down.zeros, down.group_size,
                                                layer.down_bias)
        else:
            out = ops.silu_and_mul_linear(gate_up, down, layer.down_bias)
        return out if self.comm is None else self.comm.all_reduce(out)   # a rank's channels give a partial sum

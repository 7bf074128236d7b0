"""One decoder block run on calibration batches, with the model's own code (LlamaModel.attention / mlp).

A calibration batch is rectangular: B sequences of S tokens, positions 0..S-1, all new. It goes through
a throwaway one-layer KV cache whose block b is sequence b (block size S), so LlamaModel.attention
writes and reads keys exactly as it does when serving:

    hidden [B·S, hidden] ─ rms_norm ─► h ─ attention(qkv, rope, cache, o) ─► a
    h2, hidden2 = add_rms_norm(a, hidden)  ─ mlp(gate_up, silu·up, down) ─► m        out = hidden2 + m

which is one iteration of LlamaModel.forward's loop (its `x + residual` is our `hidden`).

Speed: the NumPy reference paged_attention loops over sequences with einsum (a spec, written for
clarity). On this rectangular batch the cache *is* the dense [B, S, KVH, D] keys, so `CalibrationOps`
answers paged_attention with one batched matmul per KV head instead — the same math
(tests/quant/test_awq.py checks it against the reference), about 5× faster on CPU; every other op is
the backend's own. CalibrationOps also lets AWQ see each linear's input (`capture`).
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from refengine.engine.kv_cache import KVCache
from refengine.model.llama import ForwardBatch, LlamaModel
from refengine.model.weights import LayerWeights, ModelWeights
from refengine.quant.primitives import array_module

LINEARS = ("qkv", "o", "gate_up", "down")


def causal_attention(q, k, v, scale: float, chunk: int = 128):
    """q [B, S, H, D], k / v [B, S, KVH, D] -> [B·S, H, D] in q's dtype (computed in float32):
    softmax(q·kᵀ·scale, causal)·v, query head h reading KV head h // (H / KVH) — what
    ops.paged_attention computes for a rectangular batch.

    Queries go in chunks of `chunk` positions; chunk c only reads keys [0, end of c), so the products
    skip most of the masked upper triangle (S = 512, chunk 128: 10/16 of the full S×S work)."""
    xp = array_module(q)
    f32 = xp.float32
    B, S, H, D = q.shape
    kvh = k.shape[2]
    group = H // kvh
    # rows (g, s) of one KV head's query group share that head's keys: one [G·s, D] @ [D, t] product
    qg = q.astype(f32, copy=False).reshape(B, S, kvh, group, D).transpose(0, 2, 3, 1, 4)   # [B, KVH, G, S, D]
    # (contiguous operands: NumPy hands stacked matmuls to BLAS only then — 30× faster than its own loop)
    keys_t = xp.ascontiguousarray(k.astype(f32, copy=False).transpose(0, 2, 3, 1))     # [B, KVH, D, S]
    values = xp.ascontiguousarray(v.astype(f32, copy=False).transpose(0, 2, 1, 3))     # [B, KVH, S, D]
    out = xp.empty((B, kvh, group, S, D), f32)
    for start in range(0, S, chunk):
        stop = min(start + chunk, S)                                                   # queries [start, stop)
        qc = xp.ascontiguousarray(qg[:, :, :, start:stop]).reshape(B, kvh, group * (stop - start), D)
        scores = (qc @ keys_t[..., :stop]).reshape(B, kvh, group, stop - start, stop)  # keys [0, stop)
        scores *= f32(scale)
        scores[..., start:] += xp.triu(xp.full((stop - start, stop - start), -xp.inf, f32), 1)  # key t > query s
        scores -= scores.max(axis=-1, keepdims=True)
        xp.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        out[:, :, :, start:stop] = (scores.reshape(B, kvh, -1, stop) @ values[:, :, :stop]).reshape(
            B, kvh, group, stop - start, D)
    out = out.transpose(0, 3, 1, 2, 4).reshape(B * S, H, D)
    return out if q.dtype == f32 else out.astype(q.dtype)        # a GPU backend computes in float16


class CalibrationOps:
    """The backend's ops, with two additions for calibration (every other op is the backend's own):

    - paged_attention on BlockRunner's rectangular batches is answered by causal_attention;
    - while `capture` is set, the linears report their input: capture(name, x) for linear(x, W) and, for
      the MLP's fused silu_and_mul_linear(gate_up, W_down), the activation silu(gate)·up it feeds W_down.
      `names` maps id(W) -> qkv | o | gate_up | down (set by BlockModel.set_layer).
    """

    def __init__(self, ops):
        self.base = ops
        self.capture = None
        self.names: dict[int, str] = {}

    def __getattr__(self, name):
        return getattr(self.base, name)

    def linear(self, x, weight, bias=None):
        if self.capture is not None and id(weight) in self.names:
            self.capture(self.names[id(weight)], x)
        return self.base.linear(x, weight, bias)

    def silu_and_mul_linear(self, gate_up, weight, bias=None):
        if self.capture is None:
            return self.base.silu_and_mul_linear(gate_up, weight, bias)
        act = self.base.silu_and_mul(gate_up)                      # the same op, unfused, to see its input
        self.capture(self.names.get(id(weight), "down"), act)
        return self.base.linear(act, weight, bias)

    def paged_attention(self, q, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q, scale):
        B, S = k_cache.shape[:2]
        rectangular = q.shape[0] == B * S and len(context_lens) == B
        if rectangular and isinstance(context_lens, np.ndarray):     # host arrays: check the values too
            rectangular = bool(np.all(context_lens == S) and np.all(block_tables[:, 0] == np.arange(B)))
        if not rectangular:
            return self.base.paged_attention(q, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q, scale)
        return causal_attention(q.reshape(B, S, *q.shape[1:]), k_cache, v_cache, scale)


class BlockModel(LlamaModel):
    """A LlamaModel holding one decoder block (no embedding, no LM head), in the backend's dtype.

    Its weights are swapped freely — set_layer, or `replaced` for one candidate linear — because the
    search evaluates the block with many versions of a linear."""

    def __init__(self, cfg, layer: LayerWeights, ops: CalibrationOps):
        no_vocab = np.zeros((1, cfg.hidden_size), np.float32)           # no embedding or LM head: one empty row
        super().__init__(cfg, ModelWeights(no_vocab, no_vocab[0], no_vocab, []), ops)
        self.weights.layers.append(None)
        self.set_layer(layer)

    @property
    def layer(self) -> LayerWeights:
        return self.weights.layers[0]

    def set_layer(self, layer: LayerWeights) -> None:
        """Use `layer` (arrays already where the backend computes): cast to the model's dtype, which is all
        ops.prepare_weights does besides the upload."""
        xp = self.ops.xp
        cast = lambda a: None if a is None else xp.ascontiguousarray(xp.asarray(a), dtype=self.dtype)
        self.weights.layers[0] = LayerWeights(**{k: cast(v) for k, v in vars(layer).items()})
        self.ops.names = {id(getattr(self.layer, n)): n for n in LINEARS}

    @contextlib.contextmanager
    def replaced(self, name: str, weight):
        """Run with one linear swapped (e.g. for a fake-quantized candidate), then put it back."""
        original = self.layer
        self.weights.layers[0] = dataclasses.replace(original, **{
            name: self.ops.xp.ascontiguousarray(weight, dtype=self.dtype)})
        try:
            yield self
        finally:
            self.weights.layers[0] = original


class BlockRunner:
    """Runs decoder blocks on rectangular batches of `seqlen`-token sequences."""

    def __init__(self, cfg, ops, seqlen: int):
        self.cfg = cfg
        self.seqlen = seqlen
        self.ops = ops if isinstance(ops, CalibrationOps) else CalibrationOps(ops)
        self._batches: dict[int, tuple] = {}
        self._ropes: dict[int, list] = {}

    def model(self, layer: LayerWeights) -> BlockModel:
        return BlockModel(self.cfg, layer, self.ops)

    def batch(self, num_seqs: int, xp=np) -> tuple[ForwardBatch, ForwardBatch, KVCache]:
        """(the ForwardBatch on the host, the same on the backend's device, a one-layer KV cache) for
        num_seqs sequences; cached per size."""
        if num_seqs not in self._batches:
            S = self.seqlen
            positions = np.tile(np.arange(S, dtype=np.int64), num_seqs)
            batch = ForwardBatch(np.zeros(num_seqs * S, np.int64), positions, np.arange(num_seqs + 1) * S,
                                 np.full(num_seqs, S), np.arange(num_seqs, dtype=np.int32)[:, None],
                                 np.arange(num_seqs * S, dtype=np.int64), np.zeros(0, np.int64))
            shape = (num_seqs, S, self.cfg.num_kv_heads, self.cfg.head_dim)
            dtype = self.ops.DEFAULT_DTYPE
            kv = KVCache([xp.zeros(shape, dtype)], [xp.zeros(shape, dtype)], S)
            self._batches[num_seqs] = (batch, self.ops.prepare_batch(batch), kv)
        return self._batches[num_seqs]

    def attention(self, model: BlockModel, h):
        """h [B·S, hidden] (the normed attention input) -> the attention output after o [B·S, hidden]."""
        num_seqs = h.shape[0] // self.seqlen
        host_batch, batch, kv = self.batch(num_seqs, array_module(h))
        if num_seqs not in self._ropes:
            self._ropes[num_seqs] = model.rope_plan(host_batch)
        return model.attention(0, h, batch, kv, self._ropes[num_seqs])

    def forward(self, model: BlockModel, hidden):
        """hidden [B·S, hidden] (the residual stream entering the block) -> the stream leaving it."""
        ops, eps, layer = self.ops, self.cfg.rms_norm_eps, model.layer
        h = ops.rms_norm(hidden, layer.attn_norm, eps)
        a = self.attention(model, h)
        h, hidden = ops.add_rms_norm(a, hidden, layer.mlp_norm, eps)
        return hidden + model.mlp(0, h)

"""The NumPy specification of every op the model uses.

This file is the reference: each CUDA kernel in kernels_cu/ has a twin here with the same name and
signature, and tests/kernels/ checks one against the other. Write for clarity, not speed; accumulate
in float32 (or wider) whatever the storage dtype. Shapes use these letters:

    T  tokens in the packed batch (all sequences' new tokens, back to back)
    B  sequences in the batch          H / KVH  query / key-value heads       D  head_dim
    NB blocks in the KV cache          BS       tokens per KV block           V  vocab
"""

from __future__ import annotations

import math

import numpy as np

from refengine.config import RopeScaling
from refengine.quant.primitives import dequantize_codes, unpack_int4

F32 = np.float32


# ---------------------------------------------------------------- embedding, norms, activations

def embedding(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """ids [T] int -> rows of table [V, hidden] as float32 [T, hidden]."""
    return table[ids].astype(F32)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x [T, hidden] -> x / sqrt(mean(x²) + eps) · weight, computed in float32."""
    x32 = x.astype(F32)
    variance = np.mean(x32 * x32, axis=-1, keepdims=True)
    return weight.astype(F32) * (x32 / np.sqrt(variance + F32(eps)))


def add_rms_norm(x: np.ndarray, residual: np.ndarray, weight: np.ndarray, eps: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The residual add fused with the next norm: residual' = x + residual; return (rms_norm(residual'), residual')."""
    residual = x.astype(F32) + residual.astype(F32)
    return rms_norm(residual, weight, eps), residual


def silu_and_mul(gate_up: np.ndarray) -> np.ndarray:
    """gate_up [T, 2I] (gate | up) -> silu(gate) · up  [T, I]."""
    gate, up = np.split(gate_up.astype(F32), 2, axis=-1)
    return gate / (F32(1) + np.exp(-gate)) * up


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x [T, in] @ weight[out, in].T (+ bias [out]) -> [T, out], float32 accumulation."""
    y = x.astype(F32) @ weight.astype(F32, copy=False).T
    return y if bias is None else y + bias.astype(F32)


def logits(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The vocabulary projection x [R, hidden] @ weight[V, hidden].T -> float32 [R, V] (a linear whose
    output is float32 on every backend, so that the sampler sees full-precision logits)."""
    return linear(x, weight)


def linear_w4a16(x: np.ndarray, qweight: np.ndarray, scales: np.ndarray, zeros: np.ndarray, group_size: int,
                 bias: np.ndarray | None = None) -> np.ndarray:
    """x [T, in] @ dequant(W).T (+ bias) for a packed int4 weight (layout: refengine/quant/primitives.py):

        qweight [out, in/8] uint32, scales / zeros [out, in/g] float16,  W[o, i] = (q − zero) · scale
    """
    w = dequantize_codes(unpack_int4(qweight), scales.astype(F32), zeros.astype(F32), group_size)
    return linear(x, w, bias)


def silu_and_mul_linear(gate_up: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """The MLP's down projection of its activation: linear(silu_and_mul(gate_up), weight, bias). One kernel on
    the GPU for decode-sized inputs (the activation is computed while the GEMV loads it)."""
    return linear(silu_and_mul(gate_up), weight, bias)


def silu_and_mul_linear_w4a16(gate_up: np.ndarray, qweight: np.ndarray, scales: np.ndarray, zeros: np.ndarray,
                              group_size: int, bias: np.ndarray | None = None) -> np.ndarray:
    """linear_w4a16(silu_and_mul(gate_up), ...): silu_and_mul_linear for a packed int4 weight."""
    return linear_w4a16(silu_and_mul(gate_up), qweight, scales, zeros, group_size, bias)


# ---------------------------------------------------------------- rotary position embedding

def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling, max_position: int,
                  seq_len: int = 0) -> np.ndarray:
    """Inverse frequencies [D/2] (float32, as transformers computes them) for each rope scaling type.

    seq_len (the largest position in this forward pass + 1) matters only for `dynamic`, whose base grows
    once the context passes the trained length: base · (factor·L/Lmax − (factor − 1))^(D/(D−2)).
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(F32) / F32(head_dim)
    base = theta
    if scaling.type == "dynamic":
        trained = scaling.original_max_position or max_position
        if seq_len > trained:
            base = theta * ((scaling.factor * seq_len / trained) - (scaling.factor - 1)) ** (
                head_dim / (head_dim - 2))
    inv_freq = (F32(1.0) / (F32(base) ** exponents)).astype(F32)
    if scaling.type == "linear":
        inv_freq = inv_freq / F32(scaling.factor)
    elif scaling.type == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, scaling)
    return inv_freq.astype(F32)


def _llama3_inv_freq(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
    """Llama 3.1: wavelengths longer than Lorig/low_freq_factor slow down by `factor`, shorter than
    Lorig/high_freq_factor stay, and the band between blends the two linearly in Lorig/wavelength."""
    wavelen = F32(2 * math.pi) / inv_freq
    low_wavelen = s.original_max_position / s.low_freq_factor
    high_wavelen = s.original_max_position / s.high_freq_factor
    scaled = np.where(wavelen > low_wavelen, inv_freq / F32(s.factor), inv_freq)
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * scaled / F32(s.factor) + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, blended, scaled).astype(F32)


def rotary_embedding(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Rotate x [T, heads, D] by position (the "rotate half" layout of Hugging Face Llama):

        x = [x1 | x2] (halves of D);  out = [x1·cos − x2·sin | x2·cos + x1·sin],
        angle[t, i] = positions[t] · inv_freq[i],  i in [0, D/2)
    """
    angles = positions.astype(F32)[:, None] * inv_freq[None, :]          # [T, D/2]
    cos = np.cos(angles)[:, None, :]                                      # [T, 1, D/2]
    sin = np.sin(angles)[:, None, :]
    x32 = x.astype(F32)
    x1, x2 = np.split(x32, 2, axis=-1)
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rotary_embedding_write_kv(qk: np.ndarray, v: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray,
                              k_cache: np.ndarray, v_cache: np.ndarray, slot_mapping: np.ndarray) -> np.ndarray:
    """Rotate the q|k heads qk [T, H + KVH, D] (q heads first, as the fused qkv matmul lays them out), then store
    the rotated k heads (the last KVH) and v [T, KVH, D] in the paged caches; returns the rotated qk. The GPU
    does both in one kernel (a decode step is launch-bound)."""
    out = rotary_embedding(qk, positions, inv_freq)
    write_kv_cache(out[:, qk.shape[1] - v.shape[1]:], v, k_cache, v_cache, slot_mapping)
    return out


# ---------------------------------------------------------------- paged KV cache and attention

def write_kv_cache(k: np.ndarray, v: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray,
                   slot_mapping: np.ndarray) -> None:
    """Store new keys/values k, v [T, KVH, D] into the paged caches [NB, BS, KVH, D] in place.

    Token t goes to slot slot_mapping[t] = block · BS + offset (a flat index over NB·BS slots); a negative
    slot skips the token (the padding rows of a CUDA-graph batch bucket).
    """
    block_size = k_cache.shape[1]
    slots = np.asarray(slot_mapping).astype(np.int64)
    keep = slots >= 0
    blocks, offsets = np.divmod(slots[keep], block_size)
    k_cache[blocks, offsets] = k[keep].astype(k_cache.dtype)
    v_cache[blocks, offsets] = v[keep].astype(v_cache.dtype)


def copy_blocks(k_caches: list, v_caches: list, src, dst) -> None:
    """Copy KV block src[j] -> dst[j] in every layer's key and value cache, in place, pairs in order
    (copy-on-write of a block shared by a prefix or by the n > 1 completions of one request)."""
    for s, d in zip(np.asarray(src).tolist(), np.asarray(dst).tolist()):
        for cache in list(k_caches) + list(v_caches):
            cache[d] = cache[s]


def gather_kv(cache: np.ndarray, block_table: np.ndarray, length: int) -> np.ndarray:
    """The first `length` tokens of one sequence from a paged cache -> [length, KVH, D]."""
    block_size = cache.shape[1]
    n_blocks = -(-length // block_size)
    return cache[block_table[:n_blocks]].reshape(-1, *cache.shape[2:])[:length]


def paged_attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, block_tables: np.ndarray,
                    context_lens: np.ndarray, cu_seqlens_q: np.ndarray, scale: float) -> np.ndarray:
    """Causal GQA attention of a packed batch of queries over a paged KV cache -> [T, H, D] float32.

    Sequence b owns queries q[cu_seqlens_q[b] : cu_seqlens_q[b+1]] (n_b of them) and has context_lens[b]
    tokens in the cache, this step's included; its queries sit at positions context_lens[b] − n_b + j and
    see keys at positions ≤ their own. Prefill, a chunk of prefill, a session's next turn and a decode
    step are all this one case. Query head h reads KV head h // (H / KVH).
    """
    num_heads, kv_heads = q.shape[1], k_cache.shape[2]
    group = num_heads // kv_heads
    out = np.empty(q.shape, dtype=F32)
    for b in range(len(context_lens)):
        start, end, ctx = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]), int(context_lens[b])
        n = end - start
        keys = np.repeat(gather_kv(k_cache, block_tables[b], ctx).astype(F32), group, axis=1)   # [ctx, H, D]
        values = np.repeat(gather_kv(v_cache, block_tables[b], ctx).astype(F32), group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q[start:end].astype(F32), keys) * F32(scale)      # [H, n, ctx]
        q_pos = np.arange(ctx - n, ctx)[:, None]
        scores = np.where(np.arange(ctx)[None, :] <= q_pos, scores, -np.inf)
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        out[start:end] = np.einsum("hqk,khd->qhd", probs, values)
    return out


# ---------------------------------------------------------------- sampling, batched (the GPU kernels' form)
#
# The engine samples one row at a time with refengine.engine.sampler; the GPU kernels take all rows of a
# step at once, with the per-request settings as arrays. These twins run the sampler's own functions row
# by row, so the two backends share one definition of every processor.

def apply_penalties_rows(logits: np.ndarray, ids, counts, offsets, repetition, presence, frequency) -> np.ndarray:
    """Penalised copy of logits [R, V] float32. Row r's distinct seen tokens (prompt and output) are
    ids[offsets[r]:offsets[r+1]], counts[...] = how often each occurs in the output (0: prompt only)."""
    from refengine.engine.sampler import apply_penalties
    from refengine.sampling_params import GenerationConfig
    out = np.empty(logits.shape, dtype=F32)
    for r in range(logits.shape[0]):
        seen = np.asarray(ids[offsets[r]:offsets[r + 1]], dtype=np.int64)
        output = np.repeat(seen, np.asarray(counts[offsets[r]:offsets[r + 1]], dtype=np.int64))
        cfg = GenerationConfig(repetition_penalty=float(repetition[r]), presence_penalty=float(presence[r]),
                               frequency_penalty=float(frequency[r]))
        out[r] = apply_penalties(logits[r], cfg, seen, output)
    return out


def sample_rows(logits: np.ndarray, temperature, top_k, top_p, min_p, uniforms) -> np.ndarray:
    """Token ids [R] int64: row r greedy (temperature 0 or top_k 1: first argmax), else temperature ->
    top-k -> top-p -> min-p and the inverse-CDF draw at uniforms[r] — what numpy's Generator.choice does
    with the one uniform number it draws, so sampler.sample with that generator picks the same token."""
    from refengine.engine.sampler import filter_logits, log_softmax
    from refengine.sampling_params import GenerationConfig
    tokens = np.empty(logits.shape[0], dtype=np.int64)
    for r in range(logits.shape[0]):
        cfg = GenerationConfig(temperature=float(temperature[r]), top_k=int(top_k[r]), top_p=float(top_p[r]),
                               min_p=float(min_p[r]))
        if cfg.greedy:
            tokens[r] = int(np.argmax(logits[r]))
            continue
        probs = np.exp(log_softmax(filter_logits(logits[r].astype(F32), cfg)))
        cdf = np.cumsum(probs / probs.sum())
        tokens[r] = int(np.searchsorted(cdf / cdf[-1], float(uniforms[r]), side="right"))
    return tokens


def argmax_rows(logits: np.ndarray) -> np.ndarray:
    """Greedy choice for every row of logits [R, V]: the first index of the maximum, int64 [R]."""
    return np.argmax(logits, axis=-1).astype(np.int64)


def logprobs_rows(logits: np.ndarray, tokens, num_top: int):
    """(chosen [R], top_ids [R, num_top], top_logprobs [R, num_top]) from log_softmax of the raw logits;
    the top list is best first, ties by lower token id."""
    from refengine.engine.sampler import log_softmax
    R = logits.shape[0]
    chosen = np.empty(R, dtype=np.float64)
    top_ids = np.empty((R, num_top), dtype=np.int64)
    top_lp = np.empty((R, num_top), dtype=np.float64)
    for r in range(R):
        logp = log_softmax(logits[r])
        chosen[r] = logp[int(tokens[r])]
        top_ids[r] = np.argsort(-logp, kind="stable")[:num_top]
        top_lp[r] = logp[top_ids[r]]
    return chosen, top_ids, top_lp


# ---------------------------------------------------------------- backend hooks (not kernels)
#
# What refengine/model/llama.py asks of any backend besides the ops: the array module, the default
# compute dtype, and where weights and a batch's index arrays live.

xp = np                       # the array module this backend computes with
DEFAULT_DTYPE = np.float32    # activations (and weights) when the model is not told otherwise


def prepare_weights(weights, dtype):
    """The model's weights in `dtype`, where this backend computes (host memory for NumPy)."""
    return weights.astype(dtype)


def prepare_batch(batch):
    """A ForwardBatch whose index arrays live where this backend computes (as given, for NumPy)."""
    return batch

"""Every NumPy reference op (refengine/ops/reference.py) against PyTorch / transformers on random inputs.

Sizes are odd on purpose (a transposed or mis-strided index shows), inputs are never zero, seeds vary
per case. The reference ops compute in float32 whatever the input dtype, so float16 inputs are compared
with torch computing in float32 on the same (exactly upcast) values, under the "float32" tolerances.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refengine.config import RopeScaling
from refengine.model.arch import parse_rope
from refengine.ops import reference as ops
from tests.tolerances import assert_close

DTYPES = [np.float32, np.float16]


def randn(rng, *shape, dtype=np.float32, scale=1.0):
    """Normal noise pushed away from zero (|x| ≥ 0.01·scale): no accidental zeros in any input."""
    x = rng.standard_normal(shape)
    x = np.where(np.abs(x) < 0.01, np.copysign(0.01, x), x) * scale
    return x.astype(dtype)


def t(a: np.ndarray) -> torch.Tensor:
    """torch float32 tensor of a NumPy array (float16 upcast exactly)."""
    return torch.from_numpy(np.asarray(a, dtype=np.float32))


# ---------------------------------------------------------------- embedding, norms, activations, linear

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_embedding(seed, dtype):
    rng = np.random.default_rng(seed)
    table = randn(rng, 37, 23, dtype=dtype)
    ids = rng.integers(0, 37, 29)
    ids[:3] = [36, 0, 36]                                      # both ends and a repeat
    got = ops.embedding(ids, table)
    assert got.dtype == np.float32
    assert_close(got, F.embedding(torch.from_numpy(ids), t(table)), "embedding", "float32")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed,tokens,hidden,eps", [(2, 1, 67, 1e-6), (3, 13, 67, 1e-5), (4, 7, 130, 1e-6)])
def test_rms_norm(seed, tokens, hidden, eps, dtype):
    rng = np.random.default_rng(seed)
    x = randn(rng, tokens, hidden, dtype=dtype, scale=3.0)
    w = (1 + randn(rng, hidden, scale=0.3)).astype(dtype)
    ref = F.rms_norm(t(x), (hidden,), t(w), eps)
    assert_close(ops.rms_norm(x, w, eps), ref, "rms_norm", "float32")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [5, 6])
def test_add_rms_norm(seed, dtype):
    rng = np.random.default_rng(seed)
    x, residual = randn(rng, 11, 67, dtype=dtype), randn(rng, 11, 67, dtype=dtype, scale=2.0)
    w = (1 + randn(rng, 67, scale=0.3)).astype(dtype)
    normed, new_residual = ops.add_rms_norm(x, residual, w, 1e-5)
    ref_residual = t(x) + t(residual)
    assert_close(new_residual, ref_residual, "add_rms_norm", "float32", msg="residual")
    assert_close(normed, F.rms_norm(ref_residual, (67,), t(w), 1e-5), "add_rms_norm", "float32", msg="normed")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed,tokens,inter", [(7, 1, 45), (8, 9, 45), (9, 5, 171)])
def test_silu_and_mul(seed, tokens, inter, dtype):
    rng = np.random.default_rng(seed)
    gate_up = randn(rng, tokens, 2 * inter, dtype=dtype, scale=4.0)    # wide range: both tails of silu
    gate, up = t(gate_up).chunk(2, dim=-1)
    assert_close(ops.silu_and_mul(gate_up), F.silu(gate) * up, "silu_and_mul", "float32")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed,tokens,n_in,n_out", [(10, 1, 67, 45), (11, 13, 67, 131), (12, 6, 257, 33)])
def test_linear(seed, tokens, n_in, n_out, dtype, bias):
    rng = np.random.default_rng(seed)
    x = randn(rng, tokens, n_in, dtype=dtype)
    w = randn(rng, n_out, n_in, dtype=dtype, scale=1 / np.sqrt(n_in))
    b = randn(rng, n_out, dtype=dtype) if bias else None
    got = ops.linear(x, w, b)
    assert got.dtype == np.float32 and got.shape == (tokens, n_out)
    assert_close(got, F.linear(t(x), t(w), None if b is None else t(b)), "linear", "float32")


# ---------------------------------------------------------------- rope

def hf_rope_config(head_dim: int, theta: float, max_pos: int, rope_scaling: dict | None):
    from transformers import LlamaConfig
    heads = 3
    return LlamaConfig(hidden_size=heads * head_dim, num_attention_heads=heads, num_key_value_heads=heads,
                       head_dim=head_dim, rope_theta=theta, max_position_embeddings=max_pos,
                       rope_scaling=rope_scaling, num_hidden_layers=1, intermediate_size=8, vocab_size=8)


def hf_inv_freq(config, seq_len=None) -> torch.Tensor:
    """transformers' own inverse frequencies for `config` (ROPE_INIT_FUNCTIONS; default from Llama)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    rope_type = config.rope_parameters["rope_type"]
    if rope_type not in ROPE_INIT_FUNCTIONS:      # transformers 5 keeps "default" on the model class
        assert rope_type == "default", rope_type
        return LlamaRotaryEmbedding.compute_default_rope_parameters(config)[0]
    return ROPE_INIT_FUNCTIONS[rope_type](config, None, seq_len=seq_len)[0]


ROPE_CASES = [
    # (head_dim, theta, max_position, rope_scaling)
    (128, 10000.0, 4096, None),
    (80, 1000000.0, 32768, None),
    (16, 500000.0, 64, None),
    (128, 10000.0, 4096, {"rope_type": "linear", "factor": 4.0}),
    (64, 10000.0, 2048, {"type": "linear", "factor": 2.5}),               # the 4.x key spelling
    (128, 500000.0, 131072, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    (64, 10000.0, 4096, {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 128}),
    (16, 10000.0, 64, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0,
                       "high_freq_factor": 8.0, "original_max_position_embeddings": 32}),
]


@pytest.mark.parametrize("head_dim,theta,max_pos,rope_scaling", ROPE_CASES)
def test_rope_inv_freq_matches_transformers(head_dim, theta, max_pos, rope_scaling):
    config = hf_rope_config(head_dim, theta, max_pos, rope_scaling)
    our_theta, scaling = parse_rope(config.to_dict())           # the same config, through our parser
    assert our_theta == theta
    got = ops.rope_inv_freq(head_dim, our_theta, scaling, max_pos)
    assert got.dtype == np.float32 and got.shape == (head_dim // 2,)
    assert_close(got, hf_inv_freq(config), "rope_inv_freq", "float32")


@pytest.mark.parametrize("head_dim,theta,max_pos,factor,original", [
    (128, 10000.0, 4096, 2.0, None), (64, 1000000.0, 2048, 3.0, None), (16, 10000.0, 24, 2.0, None),
    (16, 10000.0, 24, 2.0, 16),     # transformers ignores original_max_position_embeddings for dynamic
])
def test_rope_inv_freq_dynamic_matches_transformers(head_dim, theta, max_pos, factor, original):
    """Dynamic NTK: the trained base up to max_position, a growing base beyond it."""
    scaling = {"rope_type": "dynamic", "factor": factor}
    if original is not None:
        scaling["original_max_position_embeddings"] = original
    config = hf_rope_config(head_dim, theta, max_pos, scaling)
    our_theta, scaling = parse_rope(config.to_dict())
    for seq_len in (1, max_pos // 3, max_pos, max_pos + 1, 2 * max_pos + 5, 9 * max_pos):
        got = ops.rope_inv_freq(head_dim, our_theta, scaling, max_pos, seq_len=seq_len)
        assert_close(got, hf_inv_freq(config, seq_len=seq_len), "rope_inv_freq", "float32",
                     msg=f"seq_len={seq_len}")
    plain = ops.rope_inv_freq(head_dim, our_theta, RopeScaling(), max_pos)
    assert np.array_equal(ops.rope_inv_freq(head_dim, our_theta, scaling, max_pos, seq_len=max_pos), plain)
    assert (ops.rope_inv_freq(head_dim, our_theta, scaling, max_pos, seq_len=2 * max_pos)[1:] < plain[1:]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed,tokens,heads,kv_heads,head_dim,rope_scaling", [
    (20, 1, 4, 2, 16, None),
    (21, 19, 6, 2, 64, None),
    (22, 11, 3, 3, 128, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}),
    (23, 7, 8, 1, 80, {"rope_type": "linear", "factor": 2.0}),
])
def test_rotary_embedding_matches_transformers(seed, tokens, heads, kv_heads, head_dim, rope_scaling, dtype):
    """Against transformers' LlamaRotaryEmbedding (cos/sin) + apply_rotary_pos_emb, positions unsorted and
    up to 5000 (large angles), queries and keys with different head counts."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
    rng = np.random.default_rng(seed)
    config = hf_rope_config(head_dim, 10000.0, 8192, rope_scaling)
    rotary = LlamaRotaryEmbedding(config)
    positions = rng.integers(0, 5000, tokens)
    q = randn(rng, tokens, heads, head_dim, dtype=dtype, scale=2.0)
    k = randn(rng, tokens, kv_heads, head_dim, dtype=dtype, scale=2.0)
    cos, sin = rotary(t(q), torch.from_numpy(positions)[None])            # [1, T, D]
    # transformers' layout: [batch, heads, T, D]
    q_ref, k_ref = apply_rotary_pos_emb(t(q).transpose(0, 1)[None], t(k).transpose(0, 1)[None], cos, sin)
    inv_freq = rotary.inv_freq.numpy()                                    # the same frequencies on both sides
    assert_close(ops.rotary_embedding(q, positions, inv_freq), q_ref[0].transpose(0, 1), "rotary_embedding",
                 "float32", msg="q")
    assert_close(ops.rotary_embedding(k, positions, inv_freq), k_ref[0].transpose(0, 1), "rotary_embedding",
                 "float32", msg="k")


# ---------------------------------------------------------------- paged KV cache and attention

def sdpa_reference(q, keys, values, earlier: int, scale: float) -> torch.Tensor:
    """Causal GQA attention of n queries at positions earlier..earlier+n-1 over ctx keys, by
    torch SDPA with K/V heads repeated (repeat_interleave: query head h reads KV head h // group)."""
    n, heads, _ = q.shape
    ctx, kv_heads, _ = keys.shape
    group = heads // kv_heads
    k = t(keys).repeat_interleave(group, dim=1).transpose(0, 1)[None]     # [1, H, ctx, D]
    v = t(values).repeat_interleave(group, dim=1).transpose(0, 1)[None]
    qq = t(q).transpose(0, 1)[None]                                       # [1, H, n, D]
    if earlier == 0:
        out = F.scaled_dot_product_attention(qq, k, v, is_causal=True, scale=scale)
    else:   # SDPA's is_causal aligns the mask top-left; a chunk after cached context needs bottom-right
        mask = torch.arange(ctx)[None, :] <= (earlier + torch.arange(n))[:, None]
        out = F.scaled_dot_product_attention(qq, k, v, attn_mask=mask, scale=scale)
    return out[0].transpose(0, 1)                                         # [n, H, D]


def slots_for(table: np.ndarray, positions: np.ndarray, block_size: int) -> np.ndarray:
    return table[positions // block_size].astype(np.int64) * block_size + positions % block_size


ATTENTION_CASES = {
    # name: (sequences as (tokens already cached, new tokens), heads, kv_heads, head_dim, block_size)
    "packed-prefill": ([(0, 7), (0, 1), (0, 13), (0, 5)], 4, 2, 16, 4),
    "chunk-after-context": ([(9, 4), (3, 11), (16, 16)], 6, 2, 24, 5),
    "decode": ([(12, 1), (1, 1), (30, 1), (7, 1), (16, 1)], 8, 1, 16, 16),
    "mixed": ([(0, 6), (10, 1), (4, 9), (0, 1)], 3, 3, 32, 3),
    "long-context": ([(150, 3), (0, 70)], 4, 2, 16, 7),
}


@pytest.mark.parametrize("cache_dtype", DTYPES)
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_write_kv_cache_and_paged_attention(case, cache_dtype):
    """Write the cached context, then this step's keys/values (two packed write_kv_cache calls into a
    NaN-poisoned cache with random non-contiguous block tables), check the cache, then attention."""
    seqs, heads, kv_heads, head_dim, block_size = ATTENTION_CASES[case]
    rng = np.random.default_rng(sorted(ATTENTION_CASES).index(case) + 100 * (cache_dtype == np.float16))
    lengths = [a + n for a, n in seqs]
    blocks_needed = [-(-ctx // block_size) for ctx in lengths]
    num_blocks = 2 * sum(blocks_needed) + 3
    perm = rng.permutation(num_blocks)
    tables = np.full((len(seqs), max(blocks_needed) + 2), np.iinfo(np.int32).max, dtype=np.int32)
    starts = np.cumsum([0] + blocks_needed)
    for b, nb in enumerate(blocks_needed):
        tables[b, :nb] = perm[starts[b]:starts[b] + nb]
    keys = [randn(rng, ctx, kv_heads, head_dim) for ctx in lengths]
    values = [randn(rng, ctx, kv_heads, head_dim) for ctx in lengths]
    k_cache = np.full((num_blocks, block_size, kv_heads, head_dim), np.nan, dtype=cache_dtype)
    v_cache = np.full_like(k_cache, np.nan)

    def write(part):   # part(a, n) -> the range of positions of each sequence written in this call
        pos = [np.arange(*part(a, n)) for a, n in seqs]
        slots = np.concatenate([slots_for(tables[b], p, block_size) for b, p in enumerate(pos)])
        ops.write_kv_cache(np.concatenate([keys[b][p] for b, p in enumerate(pos)]),
                           np.concatenate([values[b][p] for b, p in enumerate(pos)]), k_cache, v_cache, slots)
    write(lambda a, n: (0, a))              # the context cached by earlier steps
    write(lambda a, n: (a, a + n))          # this step's new tokens

    for b, ctx in enumerate(lengths):       # the cache holds exactly the (cast) keys and values
        for cache, want in ((k_cache, keys[b]), (v_cache, values[b])):
            got = ops.gather_kv(cache, tables[b], ctx)
            assert_close(got, want.astype(cache_dtype), "write_kv_cache", "float32", msg=f"sequence {b}")

    q = [randn(rng, n, heads, head_dim, dtype=cache_dtype) for _, n in seqs]
    cu = np.cumsum([0] + [n for _, n in seqs])
    scale = 1 / np.sqrt(head_dim) * 1.7     # not the default 1/√D: the scale must be the one passed
    out = ops.paged_attention(np.concatenate(q), k_cache, v_cache, tables, np.array(lengths), cu, scale)
    assert out.shape == (cu[-1], heads, head_dim) and out.dtype == np.float32
    for b, (a, n) in enumerate(seqs):
        ref = sdpa_reference(q[b], keys[b].astype(cache_dtype), values[b].astype(cache_dtype), a, scale)
        assert_close(out[cu[b]:cu[b + 1]], ref, "paged_attention", "float32", msg=f"{case} sequence {b}")


def test_paged_attention_reads_only_its_own_blocks():
    """Changing another sequence's blocks (or unused tail slots of a block) leaves a sequence's output as is."""
    rng = np.random.default_rng(42)
    block_size, kv_heads, head_dim = 5, 2, 8
    k_cache = randn(rng, 9, block_size, kv_heads, head_dim)
    v_cache = randn(rng, 9, block_size, kv_heads, head_dim)
    tables = np.array([[6, 2, 8], [0, 4, 1]], dtype=np.int32)
    q = randn(rng, 4, 4, head_dim)
    args = (tables, np.array([12, 7]), np.array([0, 3, 4]), 0.35)
    before = ops.paged_attention(q, k_cache, v_cache, *args)
    k_cache[[0, 4]] += randn(rng, 2, block_size, kv_heads, head_dim)    # sequence 1's blocks
    v_cache[8, 2:] = 99.0                   # sequence 0's last block beyond its 12 tokens
    after = ops.paged_attention(q, k_cache, v_cache, *args)
    assert np.array_equal(before[:3], after[:3])
    assert not np.allclose(before[3:], after[3:])

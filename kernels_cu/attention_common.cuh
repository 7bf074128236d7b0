// attention_common.cuh — what both attention files share: the paged-cache addressing and the simplest
// correct kernel (one warp per query row and head, online softmax over its causal context).
//
// Semantics (refengine.ops.reference.paged_attention): sequence b owns query rows [cu[b], cu[b+1]) (n_b of
// them) and has ctx[b] tokens in the cache, this step's included. Its j-th query sits at position
// ctx[b] − n_b + j and sees keys at positions ≤ its own. Query head h reads KV head h / (H / KVH).
//
//     q        [T, H, D]        T      token rows ldq elements apart (q may be a view into the rotated q|k
//                                      heads), heads and D contiguous
//     k_cache  [NB, BS, KVH, D] T      token p of sequence b: block tables[b·ldt + p / BS], offset p % BS
//     tables   [B, ldt]         int32
//     ctx      [B]              int64  tokens in the cache after this step (0: the row's output is 0)
//     cu       [B + 1]          int64
//     out      [T, H, D]        T      contiguous
//
// Softmax is done in base 2: scores are pre-multiplied by scale·log2(e), so exp(x·scale) = exp2(x·scale').
#pragma once
#include "common.cuh"

// the address of token p's [D] vector of KV head kvh in a paged cache
__device__ __forceinline__ i64 kv_offset(const int* __restrict__ table_row, int p, int block_size, int kv_heads,
                                         int kvh, int head_dim) {
    const i64 block = table_row[p / block_size];
    return ((block * block_size + p % block_size) * kv_heads + kvh) * (i64)head_dim;
}

// the sequence b that owns query row t: the last b with cu[b] <= t (binary search over B + 1 offsets)
__device__ __forceinline__ int sequence_of_row(const i64* __restrict__ cu, int num_seqs, int t) {
    int lo = 0, hi = num_seqs - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (cu[mid] <= t) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// v1: one warp computes out[t, h, :]. Lane owns dims d = lane + 32·i, i < ceil(D/32) (D <= 256).
// Each key costs a warp-wide reduction of the q·k partial sums: simple, and slow.
template <typename T>
__device__ void attention_row_v1(const T* __restrict__ q, int ldq, const T* __restrict__ k_cache,
                                 const T* __restrict__ v_cache, const int* __restrict__ tables, int ldt,
                                 const i64* __restrict__ ctx_lens, const i64* __restrict__ cu, T* __restrict__ out,
                                 int num_seqs, int t, int h, int num_heads, int kv_heads, int block_size,
                                 int head_dim, float scale_log2) {
    constexpr int MAXI = 8;                                           // 8 · 32 lanes = D up to 256
    const int lane = threadIdx.x & 31;
    const int b = sequence_of_row(cu, num_seqs, t);
    const int n = (int)(cu[b + 1] - cu[b]);
    const int ctx = (int)ctx_lens[b];
    const int num_keys = min(ctx, ctx - n + (t - (int)cu[b]) + 1);   // keys at positions [0, q_pos]
    const int kvh = h / (num_heads / kv_heads);
    const int* table_row = tables + (i64)b * ldt;
    float qv[MAXI], acc[MAXI];
#pragma unroll
    for (int i = 0; i < MAXI; ++i) {
        const int d = lane + 32 * i;
        qv[i] = d < head_dim ? to_float(q[(i64)t * ldq + h * head_dim + d]) * scale_log2 : 0.f;
        acc[i] = 0.f;
    }
    float m = NEG_INF, l = 0.f;
    for (int p = 0; p < num_keys; ++p) {                              // p in [0, q_pos]
        const i64 base = kv_offset(table_row, p, block_size, kv_heads, kvh, head_dim);
        float partial = 0.f;
#pragma unroll
        for (int i = 0; i < MAXI; ++i) {
            const int d = lane + 32 * i;
            if (d < head_dim) partial += qv[i] * to_float(k_cache[base + d]);
        }
        const float s = warp_sum(partial);
        const float m_new = fmaxf(m, s);
        const float corr = exp2f(m - m_new), e = exp2f(s - m_new);
        l = l * corr + e;
#pragma unroll
        for (int i = 0; i < MAXI; ++i) {
            const int d = lane + 32 * i;
            if (d < head_dim) acc[i] = acc[i] * corr + e * to_float(v_cache[base + d]);
        }
        m = m_new;
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int i = 0; i < MAXI; ++i) {
        const int d = lane + 32 * i;
        if (d < head_dim) out[((i64)t * num_heads + h) * head_dim + d] = from_float<T>(acc[i] * inv);
    }
}

// attention_prefill.cu — causal GQA attention of a packed batch of query rows over the paged KV cache:
// prefill, a chunk of prefill, a session's next turn (earlier turns are read from the cache).
//
// Op:  out[t, h] = softmax_{p ≤ q_pos(t)}(q[t, h] · k[p, h/G] · scale) · v[p, h/G]       G = H / KVH
// Twin: refengine.ops.reference.paged_attention (layouts and semantics: attention_common.cuh)
//
// Versions:
//     v1  one warp per (query row, head); online softmax one key at a time, a warp-wide reduction per key.
//         Any D <= 256, float16 or float32. T=2048 causal, H=32, KVH=8, D=128: 11.6 ms (3.0 TFLOP/s).
//     v2  flash-attention tiling on CUDA cores: a block owns BQ = 16 query rows of one sequence and one head;
//         it walks the causal context in tiles of BK = 64 keys that it gathers from the paged cache into
//         shared memory (16-byte loads), computes the 16×64 score tile, updates the running max / sum
//         (online softmax) and the 16×D output accumulator in registers. float16, D in {64, 128}.
//         Tiles past the last query's position are never loaded (causal skip). Same shape: 3.5 ms
//         (9.8 TFLOP/s, 1.4% of cuBLAS GEMM: CUDA-core FMAs; a tensor-core (mma) v3 is the next step).
//
// Launch:
//     v1  grid (T, H), block 32
//     v2  grid (ceil(T / 16) + B, H), block 128 — an upper bound on the number of 16-row query tiles
//         (sum over b of ceil(n_b / 16)); block x finds its tile by walking cu on the device (no host sync),
//         tile x covers query rows [cu[b] + q0, cu[b] + q0 + 16) of sequence b; surplus blocks exit.
//         Thread tid owns query row r = tid / 8 of the tile and, within it, keys c, c + 8, ... of each key
//         tile and output dims c, c + 8, ... (c = tid % 8); the 8 threads of a row are adjacent lanes of one
//         warp, so row max / row sum are 3 shuffles.
//         Shared memory: q 16×D float, K BK×(D+8) half (padded: the 8 rows a warp reads at one d fall in
//         different banks), V BK×D half, P 16×BK float — 45.5 KB for D = 128.
#include "attention_common.cuh"

template <typename T>
__device__ void prefill_v1(const T* q, int ldq, const T* kc, const T* vc, const int* tables, int ldt, const i64* ctx,
                           const i64* cu, T* out, int num_seqs, int heads, int kv_heads, int block_size,
                           int head_dim, float scale_log2) {
    attention_row_v1<T>(q, ldq, kc, vc, tables, ldt, ctx, cu, out, num_seqs, blockIdx.x, blockIdx.y, heads, kv_heads,
                        block_size, head_dim, scale_log2);
}

template <int D>
__device__ void prefill_v2(const half_t* __restrict__ q, int ldq, const half_t* __restrict__ k_cache,
                           const half_t* __restrict__ v_cache, const int* __restrict__ tables, int ldt,
                           const i64* __restrict__ ctx_lens, const i64* __restrict__ cu,
                           int num_seqs, half_t* __restrict__ out, int heads, int kv_heads, int block_size,
                           float scale_log2) {
    constexpr int BQ = 16, BK = 64, KPAD = D + 8, DPT = D / 8;        // DPT: output dims per thread
    __shared__ float qs[BQ][D];
    __shared__ __align__(16) half_t ks[BK][KPAD];
    __shared__ __align__(16) half_t vs[BK][D];
    __shared__ float ps[BQ][BK];
    __shared__ int tile_b, tile_q0;

    const int tid = threadIdx.x, r = tid / 8, c = tid % 8;
    if (tid == 0) {                                                   // which (sequence, first row) is tile x
        int x = blockIdx.x, sb = -1, sq = 0;
        for (int bb = 0; bb < num_seqs; ++bb) {
            const int tiles = (int)((cu[bb + 1] - cu[bb] + BQ - 1) / BQ);
            if (x < tiles) { sb = bb; sq = x * BQ; break; }
            x -= tiles;
        }
        tile_b = sb;
        tile_q0 = sq;
    }
    __syncthreads();
    if (tile_b < 0) return;                                           // past the last tile
    const int b = tile_b, q0 = tile_q0, h = blockIdx.y;
    const int kvh = h / (heads / kv_heads);
    const int n = (int)(cu[b + 1] - cu[b]), ctx = (int)ctx_lens[b];
    const int rows = min(BQ, n - q0);                                 // valid query rows in this tile
    const int first_pos = ctx - n + q0;                               // position of the tile's row 0
    const int q_pos = first_pos + r;                                  // this thread's row position
    const int num_keys = first_pos + rows;                            // keys the last valid row sees
    const int* table_row = tables + (i64)b * ldt;

    for (int e = tid; e < BQ * D; e += blockDim.x) {                  // e = (row, d)
        const int rr = e / D, d = e % D;
        qs[rr][d] = rr < rows ? to_float(q[((i64)cu[b] + q0 + rr) * ldq + h * D + d]) * scale_log2 : 0.f;
    }
    float m = NEG_INF, l = 0.f, o[DPT];
#pragma unroll
    for (int i = 0; i < DPT; ++i) o[i] = 0.f;

    for (int kt = 0; kt < num_keys; kt += BK) {                       // key tiles [kt, kt + BK)
        for (int e = tid; e < BK * (D / 8); e += blockDim.x) {        // e = (key, 16-byte vector)
            const int kk = e / (D / 8), dv = (e % (D / 8)) * 8, p = kt + kk;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
            if (p < num_keys) {
                const i64 off = kv_offset(table_row, p, block_size, kv_heads, kvh, D) + dv;
                kv = ldg16(k_cache + off);
                vv = ldg16(v_cache + off);
            }
            *reinterpret_cast<uint4*>(&ks[kk][dv]) = kv;
            *reinterpret_cast<uint4*>(&vs[kk][dv]) = vv;
        }
        __syncthreads();
        float s[BK / 8];
        float tile_max = NEG_INF;
#pragma unroll
        for (int j = 0; j < BK / 8; ++j) {                            // key kk = c + 8j
            const int kk = c + 8 * j;
            float acc = 0.f;
#pragma unroll 8
            for (int d = 0; d < D; d += 2) {
                const u32 k2 = *reinterpret_cast<const u32*>(&ks[kk][d]);
                acc += qs[r][d] * lo_half(k2) + qs[r][d + 1] * hi_half(k2);
            }
            s[j] = (r < rows && kt + kk <= q_pos) ? acc : NEG_INF;   // causal mask
            tile_max = fmaxf(tile_max, s[j]);
        }
#pragma unroll
        for (int o2 = 4; o2 > 0; o2 >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o2));
        const float m_new = fmaxf(m, tile_max);
        const float corr = m_new == NEG_INF ? 1.f : exp2f(m - m_new);
        float row_sum = 0.f;
#pragma unroll
        for (int j = 0; j < BK / 8; ++j) {
            const float pj = s[j] == NEG_INF ? 0.f : exp2f(s[j] - m_new);
            ps[r][c + 8 * j] = pj;
            row_sum += pj;
        }
#pragma unroll
        for (int o2 = 4; o2 > 0; o2 >>= 1) row_sum += __shfl_xor_sync(0xffffffffu, row_sum, o2);
        l = l * corr + row_sum;
        m = m_new;
        __syncwarp();                                                 // row r's P is written by its own warp
#pragma unroll
        for (int i = 0; i < DPT; ++i) o[i] *= corr;
        for (int kk = 0; kk < BK; ++kk) {
            const float pk = ps[r][kk];
#pragma unroll
            for (int i = 0; i < DPT; ++i) o[i] += pk * to_float(vs[kk][c + 8 * i]);
        }
        __syncthreads();                                              // before the next tile overwrites ks / vs
    }
    if (r < rows) {
        const float inv = l > 0.f ? 1.f / l : 0.f;
        half_t* orow = out + (((i64)cu[b] + q0 + r) * heads + h) * D;
#pragma unroll
        for (int i = 0; i < DPT; ++i) orow[c + 8 * i] = from_float<half_t>(o[i] * inv);
    }
}

extern "C" {
#define PREFILL_PARAMS(T) const T *q, int ldq, const T *kc, const T *vc, const int *tables, int ldt, const i64 *ctx, \
                          const i64 *cu
__global__ void attention_prefill_v1_f16(PREFILL_PARAMS(half_t), half_t* out, int num_seqs, int heads, int kv_heads,
                                         int block_size, int head_dim, float scale_log2) {
    prefill_v1<half_t>(q, ldq, kc, vc, tables, ldt, ctx, cu, out, num_seqs, heads, kv_heads, block_size, head_dim,
                       scale_log2);
}
__global__ void attention_prefill_v1_f32(PREFILL_PARAMS(float), float* out, int num_seqs, int heads, int kv_heads,
                                         int block_size, int head_dim, float scale_log2) {
    prefill_v1<float>(q, ldq, kc, vc, tables, ldt, ctx, cu, out, num_seqs, heads, kv_heads, block_size, head_dim,
                      scale_log2);
}
__global__ void attention_prefill_v2_d64(PREFILL_PARAMS(half_t), int num_seqs, half_t* out, int heads, int kv_heads,
                                         int block_size, float scale_log2) {
    prefill_v2<64>(q, ldq, kc, vc, tables, ldt, ctx, cu, num_seqs, out, heads, kv_heads, block_size, scale_log2);
}
__global__ void attention_prefill_v2_d128(PREFILL_PARAMS(half_t), int num_seqs, half_t* out, int heads, int kv_heads,
                                          int block_size, float scale_log2) {
    prefill_v2<128>(q, ldq, kc, vc, tables, ldt, ctx, cu, num_seqs, out, heads, kv_heads, block_size, scale_log2);
}
}

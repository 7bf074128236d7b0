// attention_decode.cu — decode attention over the paged KV cache: one new query row per sequence.
//
// Op:  out[b, h] = softmax_{p < ctx[b]}(q[b, h] · k[p, h/G] · scale) · v[p, h/G]            G = H / KVH
// Twin: refengine.ops.reference.paged_attention with cu_seqlens_q = [0, 1, ..., B] (layouts and
//       semantics: attention_common.cuh; the query row of sequence b is cu[b]).
//
// Versions:
//     v1  one warp per (sequence, head): online softmax one key at a time (attention_common.cuh). Any D <= 256.
//         B=32, ctx 4096, 32 heads × 128, fp16 KV: 3.88 ms (19% of copy BW).
//     v2  flash-decoding: the context is split into S chunks of max(ceil(ctx / S), min_split) keys, one block per
//         (chunk, KV head, sequence); a context that fits one chunk is finished by chunk 0 alone (the other
//         blocks exit at once and no merge runs). S is fixed by the launch (the host picks it from B·KVH so
//         that the grid fills the GPU several times over, which also keeps a captured CUDA graph valid for any
//         context); the chunk length follows each sequence's real context. GQA-aware: the block reads each
//         K/V vector once for all G query heads of its KV head. D / 8 lanes hold one key (16 bytes = 8 dims
//         each), so a warp works on 32 / (D/8) keys at once and the 4 warps of a block on NSG = 4·32/(D/8)
//         keys; U such groups are loaded before any is used (U·NSG keys of K and V in flight per block).
//         Scores are reduced over the D/8 lanes of a key with log2(D/8) shuffles; each sub-group keeps its own
//         running (max, sum, acc) for the G heads, and the block merges its NSG sub-groups in shared memory.
//         With several chunks each block writes its (max, sum, acc[D]) partial; the last block to finish for
//         a (sequence, KV head) — found with an atomic counter, which it resets — merges them (no second
//         launch, so a CUDA-graph step stays one node per layer). float16, D in {64, 128, 256}, G <= 8.
//         B=32, ctx 4096, 32 heads × 128: 0.714 ms (101% of copy BW); B=1, ctx 4096, 9/3 heads × 64: 11.9 µs.
//         min_split (the host's decode_min_split): 256 keys once B·KVH blocks fill the GPU (shorter chunks
//         only add merges), 32 below that — a llama2-7b batch-1 step (ctx 192, 32 KV heads): 9.3 µs with 256,
//         7.7 with 64, 7.4 with 32 (6 chunks of 32 keys on 192 blocks instead of one block per KV head).
//
// Launch:
//     v1  grid (B, H), block 32
//     v2  grid (S, KVH, B), block 128; shared memory NSG·MAXG·(D + 2) floats (33 KB);
//         scratch: part_ml [B, H, S, 2] float32, part_acc [B, H, S, D] float32, counters [B·KVH] int32 (zero)
#include "attention_common.cuh"

#define MAX_SPLITS 64          // the host never launches more chunks (refengine/ops/cuda.py: decode_splits)
#define TABLE_CACHE 256        // block-table entries a block keeps in shared memory (longer chunks read global)

template <typename T>
__device__ void decode_v1(const T* q, int ldq, const T* kc, const T* vc, const int* tables, int ldt, const i64* ctx,
                          const i64* cu, T* out, int num_seqs, int heads, int kv_heads, int block_size,
                          int head_dim, float scale_log2) {
    const int b = blockIdx.x;
    attention_row_v1<T>(q, ldq, kc, vc, tables, ldt, ctx, cu, out, num_seqs, (int)cu[b], blockIdx.y, heads, kv_heads,
                        block_size, head_dim, scale_log2);
}

template <int D, int MAXG>
__device__ void decode_v2(const half_t* __restrict__ q, int ldq, const half_t* __restrict__ k_cache,
                          const half_t* __restrict__ v_cache, const int* __restrict__ tables, int ldt,
                          const i64* __restrict__ ctx_lens, const i64* __restrict__ cu, half_t* __restrict__ out,
                          float* __restrict__ part_ml, float* __restrict__ part_acc, int* __restrict__ counters,
                          int heads, int kv_heads, int block_size, float scale_log2, int min_split) {
    pdl_enter();
    constexpr int LPK = D / 8;                 // lanes per key
    constexpr int KPW = 32 / LPK;              // keys per warp at once
    constexpr int NSG = 4 * KPW;               // sub-groups (keys at once) per block
    // key groups loaded before use: more keys in flight per block (the small-batch case has few blocks),
    // bounded by registers (q and acc take 16·MAXG floats)
    constexpr int U = MAXG >= 8 ? 2 : (D == 64 ? 8 : 4);
    __shared__ float sm_m[NSG][MAXG], sm_l[NSG][MAXG];
    __shared__ float sm_acc[NSG][MAXG][D];
    __shared__ int is_last;
    __shared__ float weight[MAXG][MAX_SPLITS];                        // the last block's merge weights
    __shared__ int blk_ids[TABLE_CACHE];                              // block ids of this chunk's keys

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int sg = lane / LPK, li = lane % LPK;                       // key slot in the warp, lane in the key
    const int sgi = warp * KPW + sg;                                  // sub-group in the block, [0, NSG)
    const int split = blockIdx.x, num_splits = gridDim.x, kvh = blockIdx.y, b = blockIdx.z;
    const int G = heads / kv_heads;
    const int ctx = (int)ctx_lens[b];
    const i64 t = cu[b];                                              // this sequence's query row
    // chunks follow the real context (the grid is fixed, e.g. by a CUDA graph): at least min_split keys each,
    // so a short context uses few chunks and the blocks past its end only check in with the counter
    const int split_len = max((ctx + num_splits - 1) / num_splits, min_split);
    const int active = (ctx + split_len - 1) / split_len;             // chunks that hold keys
    const int k0 = min(split * split_len, ctx);
    const int k1 = min(k0 + split_len, ctx);                          // keys [k0, k1)
    const bool single = active <= 1;          // the whole context fits chunk 0: it finishes alone, no merge
    if (single && split > 0) return;
    const int* table_row = tables + (i64)b * ldt;

    // the block ids of this chunk's keys, fetched once into shared memory (issued before the q loads, so the
    // two latencies overlap; the key loop then needs no dependent global load before each K/V load)
    const int first_blk = k0 / block_size;
    const int num_blk = k1 > k0 ? (k1 - 1) / block_size - first_blk + 1 : 0;
    const bool cached = num_blk <= TABLE_CACHE;
    for (int i = tid; cached && i < num_blk; i += blockDim.x) blk_ids[i] = table_row[first_blk + i];

    float qf[MAXG][8], acc[MAXG][8], m[MAXG], l[MAXG];
#pragma unroll
    for (int g = 0; g < MAXG; ++g) {
        m[g] = NEG_INF;
        l[g] = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = 0.f;
        if (g < G) {
            unpack8(ldg16(q + t * ldq + (kvh * G + g) * D + li * 8), qf[g]);
#pragma unroll
            for (int i = 0; i < 8; ++i) qf[g][i] *= scale_log2;
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) qf[g][i] = 0.f;
        }
    }

    __syncthreads();                                                  // blk_ids ready
    if (num_splits > 1 && k0 >= k1) goto check_in;                   // an empty chunk: nothing to merge
    for (int it = k0; it < k1; it += NSG * U) {                       // uniform over the block
        uint4 kr[U], vr[U];
        bool valid[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {                                 // issue all loads first
            const int p = it + u * NSG + sgi;                         // key position
            valid[u] = p < k1;
            kr[u] = make_uint4(0, 0, 0, 0);
            vr[u] = kr[u];
            if (valid[u]) {
                const i64 blk = cached ? blk_ids[p / block_size - first_blk] : table_row[p / block_size];
                const i64 off = ((blk * block_size + p % block_size) * kv_heads + kvh) * (i64)D + li * 8;
                kr[u] = ldg16(k_cache + off);
                vr[u] = ldg16(v_cache + off);
            }
        }
#pragma unroll
        for (int g = 0; g < MAXG; ++g) {
            if (g >= G) break;                                        // uniform: G is the same everywhere
            float s[U];
            float mx = m[g];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                float kf[8];
                unpack8(kr[u], kf);
                float partial = 0.f;
#pragma unroll
                for (int i = 0; i < 8; ++i) partial += qf[g][i] * kf[i];
#pragma unroll
                for (int o = LPK / 2; o > 0; o >>= 1) partial += __shfl_xor_sync(0xffffffffu, partial, o);
                s[u] = valid[u] ? partial : NEG_INF;
                mx = fmaxf(mx, s[u]);
            }
            if (mx == NEG_INF) continue;                              // nothing valid yet for this sub-group
            const float corr = exp2f(m[g] - mx);
            float psum = 0.f;
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[g][i] *= corr;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const float pu = exp2f(s[u] - mx);                    // 0 for invalid keys
                psum += pu;
                float vf[8];
                unpack8(vr[u], vf);
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[g][i] += pu * vf[i];
            }
            l[g] = l[g] * corr + psum;
            m[g] = mx;
        }
    }

    // merge the NSG sub-groups of this block
#pragma unroll
    for (int g = 0; g < MAXG; ++g) {
        if (g < G) {
            if (li == 0) { sm_m[sgi][g] = m[g]; sm_l[sgi][g] = l[g]; }
#pragma unroll
            for (int i = 0; i < 8; ++i) sm_acc[sgi][g][li * 8 + i] = acc[g][i];
        }
    }
    __syncthreads();
    for (int e = tid; e < G * D; e += blockDim.x) {                   // e = (g, d)
        const int g = e / D, d = e % D;
        float M = NEG_INF;
        for (int j = 0; j < NSG; ++j) M = fmaxf(M, sm_m[j][g]);
        float L = 0.f, A = 0.f;
        if (M != NEG_INF) {
            for (int j = 0; j < NSG; ++j) {
                const float w = exp2f(sm_m[j][g] - M);
                L += sm_l[j][g] * w;
                A += sm_acc[j][g][d] * w;
            }
        }
        const int h = kvh * G + g;
        if (num_splits == 1 || single) {
            out[(t * heads + h) * D + d] = from_float<half_t>(L > 0.f ? A / L : 0.f);
        } else {
            const i64 slot = ((i64)b * heads + h) * num_splits + split;
            part_acc[slot * D + d] = A;
            if (d == 0) { part_ml[slot * 2] = M; part_ml[slot * 2 + 1] = L; }
        }
    }
    if (num_splits == 1 || single) return;

check_in:
    // the last block of this (sequence, KV head) to finish merges the `active` partials
    __threadfence();
    __syncthreads();
    if (tid == 0) is_last = atomicAdd(&counters[b * kv_heads + kvh], 1) == num_splits - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    for (int g = warp; g < G; g += 4) {                               // one warp per head: weights of its chunks
        const i64 base = ((i64)b * heads + kvh * G + g) * num_splits;
        float ms[MAX_SPLITS / 32], M = NEG_INF;
#pragma unroll
        for (int i = 0; i < MAX_SPLITS / 32; ++i) {
            const int j = lane + 32 * i;
            ms[i] = j < active ? __ldcg(part_ml + (base + j) * 2) : NEG_INF;
            M = fmaxf(M, ms[i]);
        }
        M = warp_max(M);
        float L = 0.f;
#pragma unroll
        for (int i = 0; i < MAX_SPLITS / 32; ++i) {
            const int j = lane + 32 * i;
            const float wj = (j < active && ms[i] != NEG_INF) ? exp2f(ms[i] - M) : 0.f;
            if (j < active) L += __ldcg(part_ml + (base + j) * 2 + 1) * wj;
            if (j < MAX_SPLITS) weight[g][j] = wj;
        }
        L = warp_sum(L);
#pragma unroll
        for (int i = 0; i < MAX_SPLITS / 32; ++i) weight[g][lane + 32 * i] *= L > 0.f ? 1.f / L : 0.f;
    }
    __syncthreads();
    for (int e = tid; e < G * D; e += blockDim.x) {                   // e = (g, d)
        const int g = e / D, d = e % D, h = kvh * G + g;
        const float* acc_g = part_acc + ((i64)b * heads + h) * num_splits * D + d;
        float A = 0.f;
#pragma unroll 4
        for (int j = 0; j < active; ++j) A += __ldcg(acc_g + (i64)j * D) * weight[g][j];
        out[(t * heads + h) * D + d] = from_float<half_t>(A);
    }
    if (tid == 0) counters[b * kv_heads + kvh] = 0;                   // ready for the next launch
}

#define DECODE_V2(D, G)                                                                                       \
    __global__ void __launch_bounds__(128) attention_decode_v2_d##D##_g##G(                                  \
        const half_t* q, int ldq, const half_t* kc, const half_t* vc, const int* tables, int ldt,              \
        const i64* ctx,                                                                                       \
        const i64* cu, half_t* out, float* part_ml, float* part_acc, int* counters, int heads, int kv_heads, \
        int block_size, float scale_log2, int min_split) {                                                   \
        decode_v2<D, G>(q, ldq, kc, vc, tables, ldt, ctx, cu, out, part_ml, part_acc, counters, heads, kv_heads,  \
                        block_size, scale_log2, min_split);                                                  \
    }

extern "C" {
__global__ void attention_decode_v1_f16(const half_t* q, int ldq, const half_t* kc, const half_t* vc, const int* tables,
                                        int ldt, const i64* ctx, const i64* cu, half_t* out, int num_seqs,
                                        int heads, int kv_heads, int block_size, int head_dim, float scale_log2) {
    decode_v1<half_t>(q, ldq, kc, vc, tables, ldt, ctx, cu, out, num_seqs, heads, kv_heads, block_size, head_dim,
                      scale_log2);
}
__global__ void attention_decode_v1_f32(const float* q, int ldq, const float* kc, const float* vc, const int* tables,
                                        int ldt, const i64* ctx, const i64* cu, float* out, int num_seqs,
                                        int heads, int kv_heads, int block_size, int head_dim, float scale_log2) {
    decode_v1<float>(q, ldq, kc, vc, tables, ldt, ctx, cu, out, num_seqs, heads, kv_heads, block_size, head_dim,
                     scale_log2);
}
DECODE_V2(64, 1) DECODE_V2(64, 2) DECODE_V2(64, 4) DECODE_V2(64, 8)
DECODE_V2(128, 1) DECODE_V2(128, 2) DECODE_V2(128, 4) DECODE_V2(128, 8)
DECODE_V2(256, 1) DECODE_V2(256, 2) DECODE_V2(256, 4) DECODE_V2(256, 8)
}

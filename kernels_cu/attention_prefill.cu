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
//         Tiles past the last query's position are never loaded (causal skip). Same shape: 3.48 ms
//         (9.9 TFLOP/s, 1.3% of cuBLAS GEMM: CUDA-core FMAs).
//     v3  flash-attention 2 on the tensor cores (mma.sync m16n8k16, float16 in, float32 accumulate; sm_80+):
//         4 warps own BM = 64 query rows of one (sequence, head), 16 rows a warp; key tiles of BN = 64 are
//         gathered from the paged cache by cp.async (double-buffered: tile j + 1 loads while tile j is
//         computed), S = Q·Kᵀ and O += P·V on the tensor cores, online softmax in registers (exp2 of
//         scores·scale·log2 e), P reused as the A operand without leaving registers. Key tiles after the
//         last row's position are never loaded; the diagonal tile is masked. float16, D in {64, 128}.
//         Same shape: 180 µs (190 TFLOP/s, 27% of cuBLAS GEMM); T=4096: 635 µs (216 TFLOP/s, 31%).
//         ncu at T=4096: tensor pipe 34% active, L2 32%, issue slots 43%; 3 blocks (12 warps) an SM (registers
//         and shared memory both allow 3) and the stalls are fixed-latency waits on the MMA / MUFU chains:
//         latency-bound. Without the 3-block register cap (175 registers, 2 blocks an SM): 168 TFLOP/s.
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
//     v3  grid (H, ceil(T / 64) + B), block 128, dynamic shared memory 4·64·D·2 bytes (64 KB for D = 128: the
//         host raises the kernel's limit). Block y is the y-th 64-row tile, counted from each sequence's LAST
//         (longest-context) tile, and x = head varies fastest: the longest tiles of all heads start first,
//         so the grid does not end on a few long blocks. Lane roles and the shared-memory layout: at v3 below.
#include "attention_common.cuh"
#include "mma_linear.cuh"

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


// ---------------------------------------------------------------- v3: tensor cores (flash-attention 2)
//
// Block: 4 warps, BM = 64 query rows of one (sequence, head); warp w owns rows [16w, 16w + 16). Key tiles of
// BN = 64. Per tile and warp (lane = 4g + t, rows g and g + 8 of the warp's 16):
//     S[16 × 64] = Q · Kᵀ        8 n-tiles of 8 keys × D/16 k-steps of mma m16n8k16; Q (the A operand) stays in
//                                registers for the whole block, K comes from shared memory by ldmatrix (non-trans:
//                                K is stored [key][d], which is the "col" B layout the MMA wants)
//     online softmax             lane's S[j] = {row g: keys 8j+2t, 8j+2t+1 | row g+8: same keys}; the row max is
//                                a max over the lane's 16 values and 2 shuffles across the quad t = 0..3
//     O[16 × D] += P · V         the S accumulator layout IS the A-operand layout of the next MMA (keys 16kk..
//                                16kk+15 of rows g, g+8 are S[2kk], S[2kk+1]): P is packed to float16 pairs in
//                                registers, never stored; V [key][d] is read with ldmatrix.trans
// Shared memory (dynamic): K and V tiles, two stages each, [BN][D] float16 rows, 16-byte chunk c of row r stored
// at chunk c ^ (r % 8) (XOR swizzle: the 8 rows one ldmatrix phase reads, or the 8 chunks one cp.async phase
// writes, fall in 8 different bank groups). 64 KB for D = 128, 32 KB for D = 64. The Q tile is staged once in
// stage 1's K buffer before the loop.
// Pipeline: tile j + 1 is gathered (cp.async, 16 bytes a thread, straight from the paged cache through the
// block table: any block size) while tile j is computed; the block-table entries of tile j + 2 are read in the
// same iteration, so the copy issue never waits on a table read. One barrier per tile.
#define V3_BM 64
#define V3_BN 64

extern __shared__ __align__(128) unsigned char v3_smem[];

// four 8×8 float16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, register i receives it
__device__ __forceinline__ void ldsm_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
#if __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
#endif
}
__device__ __forceinline__ void ldsm_x4_trans(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
#if __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
#endif
}
__device__ __forceinline__ float fast_exp2(float x) {             // ex2.approx(-inf) = +0
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ u32 pack_f16x2(float lo, float hi) {   // lo -> the lower 16 bits
    u32 d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}

// Byte offset of (row, 16-byte chunk c) in a swizzled [rows][D] float16 tile.
template <int D>
__device__ __forceinline__ u32 swz(int row, int c) {
    return (u32)(row * D * 2 + ((c ^ (row & 7)) << 4));
}

// Thread tid copies 16-byte chunk c = tid % (D/8) of rows r0 + KPP·i (KPP = 128 / (D/8) rows per pass).
template <int D> struct TileCopy {
    static constexpr int CPR = D / 8, KPP = 128 / CPR, PER = V3_BN / KPP;
};

// slots (block · block_size + offset) of this thread's keys in the tile starting at key kt; -1: no key
template <int D>
__device__ __forceinline__ void tile_slots(int (&slot)[TileCopy<D>::PER], const int* __restrict__ table_row,
                                           int kt, int num_keys, int block_size, int r0) {
#pragma unroll
    for (int i = 0; i < TileCopy<D>::PER; ++i) {
        const int p = kt + r0 + TileCopy<D>::KPP * i;               // p in [kt, kt + BN)
        const int bi = p / block_size;
        slot[i] = p < num_keys ? table_row[bi] * block_size + (p - bi * block_size) : -1;
    }
}

template <int D>
__device__ __forceinline__ void issue_kv_tile(u32 sk, u32 sv, const half_t* __restrict__ k_cache,
                                              const half_t* __restrict__ v_cache, const int (&slot)[TileCopy<D>::PER],
                                              int kv_heads, int kvh, int r0, int c) {
#pragma unroll
    for (int i = 0; i < TileCopy<D>::PER; ++i) {
        const int r = r0 + TileCopy<D>::KPP * i;
        const int slot_i = slot[i];
        const i64 off = slot_i >= 0 ? ((i64)slot_i * kv_heads + kvh) * D + c * 8 : 0;
        const int bytes = slot_i >= 0 ? 16 : 0;
        cp_async16(sk + swz<D>(r, c), k_cache + off, bytes);
        cp_async16(sv + swz<D>(r, c), v_cache + off, bytes);
    }
}

// S = Q · Kᵀ for this warp's 16 rows and the 64 keys of the tile at sk
template <int D>
__device__ __forceinline__ void qk_tile(float (&s)[V3_BN / 8][4], const u32 (&qf)[D / 16][4], u32 sk, int lane) {
    const int kr = (lane & 7) + ((lane >> 4) << 3), kc = (lane >> 3) & 1;   // this lane's ldmatrix row / chunk
#pragma unroll
    for (int j = 0; j < V3_BN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks)                              // d in [16ks, 16ks + 16)
#pragma unroll
        for (int jj = 0; jj < V3_BN / 16; ++jj) {                    // keys [16jj, 16jj + 16): n-tiles 2jj, 2jj+1
            u32 b0, b1, b2, b3;
            ldsm_x4(sk + swz<D>(16 * jj + kr, 2 * ks + kc), b0, b1, b2, b3);
            mma_16816(s[2 * jj], qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3], b0, b1);
            mma_16816(s[2 * jj + 1], qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3], b2, b3);
        }
}

// O += P · V, P = the softmax numerators in s (float32, packed here to float16 A fragments)
template <int D>
__device__ __forceinline__ void pv_tile(float (&o)[D / 8][4], const float (&s)[V3_BN / 8][4], u32 sv, int lane) {
    const int vr = (lane & 7) + (((lane >> 3) & 1) << 3), vc = lane >> 4;
#pragma unroll
    for (int kk = 0; kk < V3_BN / 16; ++kk) {                        // keys [16kk, 16kk + 16)
        const u32 a0 = pack_f16x2(s[2 * kk][0], s[2 * kk][1]), a1 = pack_f16x2(s[2 * kk][2], s[2 * kk][3]);
        const u32 a2 = pack_f16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        const u32 a3 = pack_f16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int dd = 0; dd < D / 16; ++dd) {                        // d in [16dd, 16dd + 16): n-tiles 2dd, 2dd+1
            u32 b0, b1, b2, b3;
            ldsm_x4_trans(sv + swz<D>(16 * kk + vr, 2 * dd + vc), b0, b1, b2, b3);
            mma_16816(o[2 * dd], a0, a1, a2, a3, b0, b1);
            mma_16816(o[2 * dd + 1], a0, a1, a2, a3, b2, b3);
        }
    }
}

// Online softmax over one score tile: mask (keys after a row's position), new row max, rescale O and the
// running sum, s <- exp2(s·scale_log2 − max). Row i in {0, 1} of the lane is warp row g + 8i at position
// row_pos0 + g + 8i; m is in the scaled (log2) domain, l is this lane's partial row sum (the quad adds up
// its four partials at the end: they share the rescaling factors).
template <int D>
__device__ __forceinline__ void softmax_tile(float (&s)[V3_BN / 8][4], float (&o)[D / 8][4], float (&m)[2],
                                             float (&l)[2], bool mask, int kt, int row_pos0, int lane,
                                             float scale_log2) {
    const int g = lane >> 2, t = lane & 3;
    if (mask) {
#pragma unroll
        for (int j = 0; j < V3_BN / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = kt + 8 * j + 2 * t + (e & 1), pos = row_pos0 + g + 8 * (e >> 1);
                if (key > pos) s[j][e] = NEG_INF;
            }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        float mx = NEG_INF;
#pragma unroll
        for (int j = 0; j < V3_BN / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * i], s[j][2 * i + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[i], mx * scale_log2);
        const float m_use = m_new == NEG_INF ? 0.f : m_new;           // a row with no key yet: keep zeros
        const float corr = fast_exp2(m[i] - m_use);
        m[i] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < V3_BN / 8; ++j) {
            s[j][2 * i] = fast_exp2(fmaf(s[j][2 * i], scale_log2, -m_use));
            s[j][2 * i + 1] = fast_exp2(fmaf(s[j][2 * i + 1], scale_log2, -m_use));
            sum += s[j][2 * i] + s[j][2 * i + 1];
        }
        l[i] = l[i] * corr + sum;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            o[n][2 * i] *= corr;
            o[n][2 * i + 1] *= corr;
        }
    }
}

template <int D>
__device__ void prefill_v3(const half_t* __restrict__ q, int ldq, const half_t* __restrict__ k_cache,
                           const half_t* __restrict__ v_cache, const int* __restrict__ tables, int ldt,
                           const i64* __restrict__ ctx_lens, const i64* __restrict__ cu, int num_seqs,
                           half_t* __restrict__ out, int heads, int kv_heads, int block_size, float scale_log2) {
    constexpr int TILE = V3_BN * D * 2;                               // bytes of one K or V tile
    __shared__ int tile_b, tile_q0;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    if (tid == 0) {                  // which (sequence, first row) is tile y: a sequence's last (longest) tile first
        int x = blockIdx.y, sb = -1, sq = 0;
        for (int bb = 0; bb < num_seqs; ++bb) {
            const int tiles = (int)((cu[bb + 1] - cu[bb] + V3_BM - 1) / V3_BM);
            if (x < tiles) { sb = bb; sq = (tiles - 1 - x) * V3_BM; break; }
            x -= tiles;
        }
        tile_b = sb;
        tile_q0 = sq;
    }
    __syncthreads();
    if (tile_b < 0) return;                                           // past the last tile
    const int b = tile_b, q0 = tile_q0, h = blockIdx.x, kvh = h / (heads / kv_heads);
    const i64 row0 = cu[b] + q0;                                      // packed row of the tile's row 0
    const int n = (int)(cu[b + 1] - cu[b]), ctx = (int)ctx_lens[b];
    const int rows = min(V3_BM, n - q0);                              // valid query rows in this tile
    const int first_pos = ctx - n + q0;                               // position of the tile's row 0
    const int num_keys = first_pos + rows;                            // keys the last valid row sees
    const int num_tiles = num_keys > 0 ? (num_keys + V3_BN - 1) / V3_BN : 0;
    const int* table_row = tables + (i64)b * ldt;
    const u32 sk0 = smem_addr(v3_smem), sv0 = sk0 + 2 * TILE;         // [K stage 0][K stage 1][V 0][V 1]
    const int c = tid % TileCopy<D>::CPR, r0 = tid / TileCopy<D>::CPR;  // this thread's copy chunk and first row

    // Q tile -> stage 1's K buffer, tile 0 -> stage 0
#pragma unroll
    for (int i = 0; i < TileCopy<D>::PER; ++i) {
        const int r = r0 + TileCopy<D>::KPP * i;                      // r in [0, BM)
        cp_async16(sk0 + TILE + swz<D>(r, c), r < rows ? q + (row0 + r) * ldq + h * D + c * 8 : q, r < rows ? 16 : 0);
    }
    int slot[TileCopy<D>::PER];
    tile_slots<D>(slot, table_row, 0, num_keys, block_size, r0);
    if (num_tiles > 0) issue_kv_tile<D>(sk0, sv0, k_cache, v_cache, slot, kv_heads, kvh, r0, c);
    cp_async_commit();
    if (num_tiles > 1) tile_slots<D>(slot, table_row, V3_BN, num_keys, block_size, r0);
    cp_async_wait<0>();
    __syncthreads();

    u32 qf[D / 16][4];                                                // A fragments of this warp's 16 query rows
    {
        const int qr = 16 * warp + (lane & 7) + (((lane >> 3) & 1) << 3), qc = lane >> 4;
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks)
            ldsm_x4(sk0 + TILE + swz<D>(qr, 2 * ks + qc), qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3]);
    }
    float o[D / 8][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < D / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[i][e] = 0.f;
    const int row_pos0 = first_pos + 16 * warp;                       // position of the warp's row 0

    for (int j = 0; j < num_tiles; ++j) {                             // key tile [kt, kt + BN)
        const int kt = j * V3_BN;
        const u32 cur = (j & 1) * TILE, next = TILE - cur;             // stage offsets
        __syncthreads();             // tile j visible to all; every warp is done with stage `next` (and Q)
        if (j + 1 < num_tiles) issue_kv_tile<D>(sk0 + next, sv0 + next, k_cache, v_cache, slot, kv_heads, kvh, r0, c);
        cp_async_commit();
        if (j + 2 < num_tiles) tile_slots<D>(slot, table_row, kt + 2 * V3_BN, num_keys, block_size, r0);
        if (kt <= row_pos0 + 15) {                                    // else: every key is after every row of the warp
            float s[V3_BN / 8][4];
            qk_tile<D>(s, qf, sk0 + cur, lane);
            softmax_tile<D>(s, o, m, l, kt + V3_BN - 1 > row_pos0, kt, row_pos0, lane, scale_log2);
            pv_tile<D>(o, s, sv0 + cur, lane);
        }
        cp_async_wait<0>();                                          // this thread's part of tile j + 1 landed
    }

    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        float sum = l[i];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        const int r = 16 * warp + g + 8 * i;                          // r in [0, BM)
        if (r < rows) {
            half_t* orow = out + ((row0 + r) * heads + h) * D;
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt)
                *reinterpret_cast<u32*>(orow + 8 * nt + 2 * t) = pack_f16x2(o[nt][2 * i] * inv, o[nt][2 * i + 1] * inv);
        }
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
__global__ void __launch_bounds__(128, 4) attention_prefill_v3_d64(PREFILL_PARAMS(half_t), int num_seqs, half_t* out,
                                                                int heads, int kv_heads, int block_size,
                                                                float scale_log2) {
    prefill_v3<64>(q, ldq, kc, vc, tables, ldt, ctx, cu, num_seqs, out, heads, kv_heads, block_size, scale_log2);
}
__global__ void __launch_bounds__(128, 3) attention_prefill_v3_d128(PREFILL_PARAMS(half_t), int num_seqs, half_t* out,
                                                                 int heads, int kv_heads, int block_size,
                                                                 float scale_log2) {
    prefill_v3<128>(q, ldq, kc, vc, tables, ldt, ctx, cu, num_seqs, out, heads, kv_heads, block_size, scale_log2);
}
}

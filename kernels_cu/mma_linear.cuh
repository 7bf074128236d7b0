// mma_linear.cuh — y = x @ W.T (+ bias) on the tensor cores (mma.sync m16n8k16, float16 in, float32
// accumulate) for a float16 W or a packed int4 W dequantized in registers. Used by linear_f16.cu (v3) and
// w4a16_gemm.cu (v2); the decode-time GEMV is the MT = 1 case.
//
//     x     [M, K]    float16   rows ldx elements apart, 16-byte aligned
//           (ACT: x = silu(gate)·up of gate_up [M, 2K], computed on load — the MLP's down projection)
//     W     [N, K]    float16                       (DENSE)
//           [N, K/8]  uint32    int4 codes, lowest nibble = lowest k    (INT4; W = (q − zero)·scale)
//     scales, zeros [N, K/g] float16                (INT4 only; g in {32, 64, 128})
//     bias  [N]       float16   optional
//     y     [M, N]    OutT      float16, or float32 for the logits
//     K % 32 == 0 (the wrapper checks; other K go to the CUDA-core versions)
//
// "Swap AB": the weight is the MMA's A operand (16 output features × 16 k) and x is B (16 k × 8 batch
// rows), so one decode row wastes only the B side: a warp computes a 16 (n) × 8·MT (m) tile of y.
//
// Lane roles in m16n8k16 (g = lane / 4, t = lane % 4):
//     A regs {a0a1: row g, k 2t..2t+1 | a2a3: row g+8, same k | a4a5: row g, k 2t+8.. | a6a7: row g+8, k 2t+8..}
//     B regs {b0b1: k 2t..2t+1, col g | b2b3: k 2t+8..2t+9, col g}
//     D      {d0 d1: row g, cols 2t, 2t+1 | d2 d3: row g+8, cols 2t, 2t+1}
// A dot product does not care in which order it visits k, so we choose the order that makes the loads
// wide: per 128-k chunk, lane t owns the 32 physical k [kb, kb + 32), kb = chunk·128 + 32t, for both W and x,
// and feeds them to 8 MMAs (2 pairs of values per MMA). "Pair p" of those 32 values is
//     DENSE: halves (2p, 2p+1)                        — 4 × 16-byte loads per row
//     INT4:  nibbles (8j + i, 8j + i + 4), p = 4j + i  — 1 × 16-byte load per row; the pair is what one
//            LOP3 extracts into a half2: ((word >> 4i) & 0x000F000F) | 0x64006400 = 1024 + (q_lo, q_hi),
//            then (· − (1024 + zero)) · scale in f16x2 — the subtraction is exact, one rounding in the multiply.
//            x is permuted to match with one PRMT per pair.
// The 32 k of a lane lie in one quantization group (g >= 32, kb % 32 == 0): one scale and zero per row.
//
// Block: WARPS warps split the chunks of K (warp w takes a contiguous run of them), then add their tiles in
// shared memory. Grid: (ceil(N / 16), ceil(M / (8·MT))). Each warp keeps a ring of DEPTH weight chunks in
// registers: while it computes one, the next DEPTH − 1 are in flight (a GEMV is a race to have enough
// bytes in flight: ~40-60 KB per multiprocessor to cover HBM latency at full bandwidth).
#pragma once
#include "common.cuh"

__device__ __forceinline__ void mma_16816(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    __trap();                                  // the registry never picks the MMA versions below sm_80
#endif
}


// this lane's raw weights for one chunk: rows g and g+8 of the tile
template <bool INT4> struct RawA;
template <> struct RawA<false> { uint4 v[2][4]; };
template <> struct RawA<true> { uint4 v[2]; half_t s[2], z[2]; };

__device__ __forceinline__ void load_raw(RawA<false>& r, const void* w, const half_t*, const half_t*, int,
                                         int row0, int N, int K, int kb) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int row = row0 + 8 * rr;
        const bool ok = row < N && kb < K;
        const half_t* p = reinterpret_cast<const half_t*>(w) + (i64)row * K + kb;
#pragma unroll
        for (int j = 0; j < 4; ++j) r.v[rr][j] = ok ? ldg16(p + 8 * j) : make_uint4(0, 0, 0, 0);
    }
}
__device__ __forceinline__ void load_raw(RawA<true>& r, const void* w, const half_t* scales, const half_t* zeros,
                                         int group, int row0, int N, int K, int kb) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int row = row0 + 8 * rr;
        const bool ok = row < N && kb < K;
        const u32* p = reinterpret_cast<const u32*>(w) + (i64)row * (K / 8) + kb / 8;
        const i64 gi = (i64)row * (K / group) + kb / group;
        r.v[rr] = ok ? ldg16(p) : make_uint4(0, 0, 0, 0);
        r.s[rr] = ok ? __ldg(scales + gi) : (half_t)0;
        r.z[rr] = ok ? __ldg(zeros + gi) : (half_t)0;
    }
}

// raw -> 16 half2 "pairs" per row (see the header for the pair order)
__device__ __forceinline__ void to_pairs(const RawA<false>& r, u32 (&a)[2][16]) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            a[rr][4 * j + 0] = r.v[rr][j].x; a[rr][4 * j + 1] = r.v[rr][j].y;
            a[rr][4 * j + 2] = r.v[rr][j].z; a[rr][4 * j + 3] = r.v[rr][j].w;
        }
}
__device__ __forceinline__ void to_pairs(const RawA<true>& r, u32 (&a)[2][16]) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const u32 z1024 = pack_half2(1024.f + to_float(r.z[rr]), 1024.f + to_float(r.z[rr]));
        const u32 s2 = (u32)r.s[rr] | ((u32)r.s[rr] << 16);
        const u32 words[4] = {r.v[rr].x, r.v[rr].y, r.v[rr].z, r.v[rr].w};
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const u32 q = ((words[j] >> (4 * i)) & 0x000F000Fu) | 0x64006400u;   // 1024 + (q_lo, q_hi)
                a[rr][4 * j + i] = hmul2(hsub2(q, z1024), s2);
            }
    }
}

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.f + expf(-g)) * u; }

// this lane's 32 values of x row m, in the same pair order as the weights. ACT: x is the gated MLP's
// silu(gate)·up, computed here from gate_up rows (gate at [0, K), up at [K, 2K)) and rounded to float16 — the
// same value the separate silu_and_mul kernel would have stored.
template <bool INT4, bool ACT>
__device__ __forceinline__ void load_x_pairs(const half_t* __restrict__ x, int ldx, int m, int M, int K, int kb,
                                             u32 (&b)[16]) {
    const bool ok = m < M && kb < K;
    const half_t* p = x + (i64)m * ldx + kb;
    uint4 raw[4], up[4];                                  // all loads issued before any is used
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        raw[j] = ok ? ldg16(p + 8 * j) : make_uint4(0, 0, 0, 0);
        if (ACT) up[j] = ok ? ldg16(p + K + 8 * j) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        uint4 u = raw[j];
        if (ACT && ok) {
            float gf[8], uf[8];
            unpack8(u, gf);
            unpack8(up[j], uf);
#pragma unroll
            for (int i = 0; i < 8; ++i) gf[i] = silu_mul(gf[i], uf[i]);
            u = pack8(gf);
        }
        if (INT4) {
            b[4 * j + 0] = __byte_perm(u.x, u.z, 0x5410);   // (x0, x4)
            b[4 * j + 1] = __byte_perm(u.x, u.z, 0x7632);   // (x1, x5)
            b[4 * j + 2] = __byte_perm(u.y, u.w, 0x5410);   // (x2, x6)
            b[4 * j + 3] = __byte_perm(u.y, u.w, 0x7632);   // (x3, x7)
        } else {
            b[4 * j + 0] = u.x; b[4 * j + 1] = u.y; b[4 * j + 2] = u.z; b[4 * j + 3] = u.w;
        }
    }
}

template <bool INT4, int MT, typename OutT, int WARPS = 4, int DEPTH = 2, bool ACT = false>
__device__ void mma_linear(const half_t* __restrict__ x, int ldx, const void* __restrict__ w,
                           const half_t* __restrict__ scales, const half_t* __restrict__ zeros, int group,
                           const half_t* __restrict__ bias, OutT* __restrict__ y, int M, int N, int K) {
    __shared__ float red[WARPS][MT * 4][32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.x * 16, m0 = blockIdx.y * 8 * MT;
    const int nchunks = (K + 127) / 128;
    float acc[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[mt][j] = 0.f;

    // warp w owns the contiguous chunks [c_begin, c_end), so the chunks it has in flight are adjacent in each
    // weight row (long DRAM bursts), and keeps a ring of DEPTH of them in registers: chunk c is computed
    // while c + 1 … c + DEPTH − 1 load
    const int per_warp = (nchunks + WARPS - 1) / WARPS;
    const int c_begin = warp * per_warp, c_end = min(c_begin + per_warp, nchunks);
    RawA<INT4> buf[DEPTH];
#pragma unroll
    for (int d = 0; d < DEPTH; ++d) {
        const int c = c_begin + d;
        if (c < c_end) load_raw(buf[d], w, scales, zeros, group, n0 + g, N, K, c * 128 + 32 * t);
    }
    for (int c0 = c_begin; c0 < c_end; c0 += DEPTH) {
#pragma unroll
        for (int d = 0; d < DEPTH; ++d) {
            const int c = c0 + d;                                     // chunk [c·128, c·128 + 128)
            if (c >= c_end) break;
            const int kb = c * 128 + 32 * t;                          // this lane's k in [kb, kb + 32)
            u32 a[2][16];
            to_pairs(buf[d], a);
            const int next = c + DEPTH;                               // refill the slot just consumed
            if (next < c_end) load_raw(buf[d], w, scales, zeros, group, n0 + g, N, K, next * 128 + 32 * t);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                u32 b[16];
                load_x_pairs<INT4, ACT>(x, ldx, m0 + mt * 8 + g, M, K, kb, b);
#pragma unroll
                for (int s = 0; s < 8; ++s)
                    mma_16816(acc[mt], a[0][2 * s], a[1][2 * s], a[0][2 * s + 1], a[1][2 * s + 1], b[2 * s],
                              b[2 * s + 1]);
            }
        }
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < 4; ++j) red[warp][mt * 4 + j][lane] = acc[mt][j];
    __syncthreads();
    for (int e = threadIdx.x; e < MT * 4 * 32; e += blockDim.x) {     // e = (mt, j, lane)
        const int ln = e % 32, j = (e / 32) % 4, mt = e / 128;
        float v = 0.f;
#pragma unroll
        for (int ww = 0; ww < WARPS; ++ww) v += red[ww][mt * 4 + j][ln];
        const int n = n0 + (ln >> 2) + (j >= 2 ? 8 : 0);
        const int m = m0 + mt * 8 + 2 * (ln & 3) + (j & 1);
        if (m < M && n < N) {
            if (bias) v += to_float(bias[n]);
            y[(i64)m * N + n] = from_float<OutT>(v);
        }
    }
}

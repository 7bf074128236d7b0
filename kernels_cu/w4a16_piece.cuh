// w4a16_piece.cuh — the float16-pair math of one int4 "piece" (32 consecutive k of one weight row, 16 bytes of
// qweight), shared by the CUDA-core GEMVs: linear_w4a16 v8 (w4a16_gemv.cu: weights in a register ring, x read
// from global memory) and v9 (w4a16_gemv_bulk.cu: weights in shared memory, x too or through L1). Both compute
// each lane's pieces with the same instructions in the same order, so they give the same bits.
//
//     W4Piece<R>        one lane's piece of R rows: the 4 qweight words of each, with the piece's scale and zero
//     piece_math_h2     v8: acc[r][m] += scale · Σ (q − zero) · x[m, k], x loaded from global memory
//                       ("the same piece" in its comment is w4a16_gemv.cu's piece_math, v7's float32 version)
//     piece_math_h2_x   v9: the same for one row of x (MB = 1, PW = 1), its 32 values handed in
#pragma once
#include "common.cuh"

// one ring slot: this lane's 16-byte piece of each of the R rows, with the piece's scale and zero
template <int R> struct W4Piece {
    uint4 q[R];
    half_t s[R], z[R];
};

// v8: the same piece, with the multiply-adds on float16 pairs (HFMA2), ~1.6 instructions per weight instead of ~4.4.
// The same LOP3s give (1024 + q) and (1024 + 16·q) pairs; HSUB2 of (1024 + zero), or HFMA2 by 1/16 minus
// (64 + zero), turns both into (q − zero) exactly — no float32 conversion per weight. x is regrouped to match:
//
//     x word pairs    (x0 x1) (x2 x3) (x4 x5) (x6 x7)        one uint4 of x: k = 32c + 8j + [0, 8)
//     PRMT       ->   (x0 x4) (x1 x5) (x2 x6) (x3 x7)        the k of the weight pairs d0, d1, d2, d3
//
// so that each HFMA2 adds two (q − zero)·x products, one per half. A word's four HFMA2s start from zero and
// are added to the float32 partial after each word: a float16 partial holds at most 4 products (|q − zero|
// <= 15, so it cannot overflow below |x| ~ 1000), rounded as float16 (relative 2^-11 of the word's partial);
// the scale is applied in float32 once per piece. 4 PRMTs per 8 x are shared by the R rows.
// (1024 + zero) and −(64 + zero) as float16 pairs: what word_diffs subtracts from the LOP3 results
__device__ __forceinline__ void zero_pairs(half_t z, u32& z1, u32& z64) {
    const u32 zz = prmt(z, z, 0x1010u);                // (zero, zero)
    z1 = hadd2(zz, 0x64006400u);
    z64 = hfma2(zz, 0xBC00BC00u, 0xD400D400u);         // zero·(−1) − 64
}

// the (q − zero) float16 pairs of one word: d[i] holds k = 8j + (i, i + 4) of the word's 8 weights
__device__ __forceinline__ void word_diffs(u32 word, u32 z1, u32 z64, u32 (&d)[4]) {
    const u32 magic = 0x64006400u, sixteenth = 0x2C002C00u;   // float16 pairs (1024, 1024), (1/16, 1/16)
    const u32 t = word >> 8;
    d[0] = hsub2(lop3_and_or(word, 0x000F000Fu, magic), z1);
    d[1] = hfma2(lop3_and_or(word, 0x00F000F0u, magic), sixteenth, z64);
    d[2] = hsub2(lop3_and_or(t, 0x000F000Fu, magic), z1);
    d[3] = hfma2(lop3_and_or(t, 0x00F000F0u, magic), sixteenth, z64);
}

// x word pairs (x0 x1) (x2 x3) (x4 x5) (x6 x7) -> (x0 x4) (x1 x5) (x2 x6) (x3 x7), the k of word_diffs' pairs
__device__ __forceinline__ void regroup_x(const uint4& v, u32 (&xp)[4]) {
    xp[0] = prmt(v.x, v.z, 0x5410u);
    xp[1] = prmt(v.x, v.z, 0x7632u);
    xp[2] = prmt(v.y, v.w, 0x5410u);
    xp[3] = prmt(v.y, v.w, 0x7632u);
}

template <int MB, int R, int PW>
__device__ __forceinline__ void piece_math_h2(const W4Piece<R>& p, const half_t* __restrict__ x, int ldx, int M,
                                              int K, int c, float (&acc)[R][MB]) {
    if (c >= K / 32) return;
    u32 z1[R], z64[R];                                 // (1024 + zero) and −(64 + zero), float16 pairs
#pragma unroll
    for (int r = 0; r < R; ++r) zero_pairs(p.z[r], z1[r], z64[r]);
    float part[R][MB];
    u32 h[R][MB];                                      // the float16 partials of the current PW words
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MB; ++m) part[r][m] = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        u32 d[R][4];                                   // d[r][i]: (q − zero) of k = 32c + 8j + (i, i + 4)
#pragma unroll
        for (int r = 0; r < R; ++r)
            word_diffs(j == 0 ? p.q[r].x : j == 1 ? p.q[r].y : j == 2 ? p.q[r].z : p.q[r].w, z1[r], z64[r], d[r]);
#pragma unroll
        for (int m = 0; m < MB; ++m) {                 // rows m >= M repeat row M − 1 (branch-free; never written)
            u32 xp[4];
            regroup_x(ldg16(x + (i64)min(m, M - 1) * ldx + 32 * c + 8 * j), xp);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                u32 a = j % PW == 0 ? hmul2(d[r][0], xp[0]) : hfma2(d[r][0], xp[0], h[r][m]);
                a = hfma2(d[r][1], xp[1], a);
                a = hfma2(d[r][2], xp[2], a);
                h[r][m] = hfma2(d[r][3], xp[3], a);
                if (j % PW == PW - 1) part[r][m] += lo_half(h[r][m]) + hi_half(h[r][m]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float s = to_float(p.s[r]);
#pragma unroll
        for (int m = 0; m < MB; ++m) acc[r][m] = fmaf(s, part[r][m], acc[r][m]);
    }
}

// v9: piece_math_h2<1, R, 1> with the piece's 32 x handed in (xv[j]: k = 32c + 8j + [0, 8), 8 float16)
// instead of loaded, so that the caller may keep x in shared memory. Instruction for instruction the same
// arithmetic as piece_math_h2 with MB = 1 and PW = 1 — the same float16 partial per 8-weight word, added
// in float32, scaled in float32 once per piece — so the same bits and the same error bound.
template <int R>
__device__ __forceinline__ void piece_math_h2_x(const W4Piece<R>& p, const uint4 (&xv)[4], float (&acc)[R]) {
    u32 z1[R], z64[R];                                 // (1024 + zero) and −(64 + zero), float16 pairs
#pragma unroll
    for (int r = 0; r < R; ++r) zero_pairs(p.z[r], z1[r], z64[r]);
    float part[R];
#pragma unroll
    for (int r = 0; r < R; ++r) part[r] = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        u32 xp[4];
        regroup_x(xv[j], xp);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            u32 d[4];
            word_diffs(j == 0 ? p.q[r].x : j == 1 ? p.q[r].y : j == 2 ? p.q[r].z : p.q[r].w, z1[r], z64[r], d);
            u32 h = hmul2(d[0], xp[0]);                // one float16 partial per word: at most 4 products
            h = hfma2(d[1], xp[1], h);
            h = hfma2(d[2], xp[2], h);
            h = hfma2(d[3], xp[3], h);
            part[r] += lo_half(h) + hi_half(h);
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = fmaf(to_float(p.s[r]), part[r], acc[r]);
}

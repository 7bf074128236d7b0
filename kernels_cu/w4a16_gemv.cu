// w4a16_gemv.cu — the decode-time W4A16 GEMV on CUDA cores (linear_w4a16 v7, M <= 8 rows of x; v8, M <= 4):
//     y = x @ W.T (+ bias),  W[n, k] = (q[n, k] − zero[n, k/g]) · scale[n, k/g],  float32 accumulation.
// Twin: refengine.ops.reference.linear_w4a16 (and reference.silu_and_mul_linear_w4a16 for the ACT variant).
//
//     x        [M, K]     float16   rows ldx elements apart, 16-byte aligned (ldx % 8 == 0)
//              (ACT: gate_up [M, 2K], x = silu(gate)·up computed on load, rounded to float16 as
//              silu_and_mul would store it)
//     qweight  [N, K/8]   uint32    int4 codes, 8 per word, lowest nibble = lowest k (refengine/quant/primitives.py)
//     scales   [N, K/g]   float16
//     zeros    [N, K/g]   float16   integer zero points 0..15
//     bias     [N]        float16   optional
//     y        [M, N]     float16
//     K % 32 == 0, g in {32, 64, 128}
//
// Why: a GEMV moves each weight byte once and does 2·M flops with it, so the goal is to keep HBM busy.
// v3 (tensor cores, w4a16_gemm.cu) loads a whole 16-row tile per block in one burst, then computes, then
// syncs the block, in about two waves of blocks. Here nothing ever waits for anything but its own loads:
//
//     warp  owns R consecutive output rows at a time ("a row group") and all of K for them, so it writes
//           its outputs itself (a warp-shuffle sum; no shared memory, no block barrier);
//     lane  walks K in 16-byte pieces: one uint4 of qweight = 32 consecutive k of one row, so each load
//           instruction of a warp reads 512 contiguous bytes of a row. Step (rg, it): lane l loads piece
//           c = 32·it + l of each of the R rows (plus that group's scale and zero), it in [0, ceil(K/1024));
//     ring  each warp keeps its next D steps in flight in registers, across row-group boundaries: the
//           slot just consumed is refilled with step s + D before step s is computed;
//     grid  persistent and balanced: G = ceil(N / R) row groups split into contiguous runs over W warps
//           (warp w: [w·G/W, (w+1)·G/W)), W chosen by the host as the fewest warps that still give every
//           warp its resident share, so that all warps run the same number of row groups (±1) and the
//           loads stay in flight until the very end instead of trailing off in a last partial wave.
//
// Math per piece (32 k of one row, all in one quantization group since g >= 32 and pieces are 32-aligned):
//     LOP3  nibble pairs into float16 mantissas: 1024 + q (or 1024 + 16·q, see piece_math), 2 weights each,
//     HSUB2 − (1024 + zero) → (q − zero) exactly (small integers), then two conversions to float32,
//     FFMA  with x (float32, converted once per piece and shared by the R rows) into a float32 partial,
//     and once per piece: acc += scale · partial. Every product is exact before it is summed in float32,
//     so the result does not depend on the launch shape (R, D, grid): all configurations give the same bits.
// x (a few KB) is read through L1 with ordinary read-only loads; the weights bypass L1 (no_allocate) so
// that they never evict it. For MB rows of x (the kernel handles M <= MB; MB in {1, 2, 4, 8}) each loaded
// weight stays in registers while it is multiplied by all M rows: the weights are read once.
//
// Versions: this file holds linear_w4a16 v7 and v8 (v1 … v6, the rest of the ladder, are in w4a16_gemm.cu).
//     v8  v7's walk with the math on float16 pairs (piece_math_h2 in w4a16_piece.cuh: ~2.7 instructions per
//         weight instead of ~4.4), the default for M = 1. H100, g128, graphs with programmatic dependent launch
//         (PDL, common.cuh),
//         R = 2, D = 3: 4096²: 5.4 µs (55% of copy BW), 11008 × 4096: 11.3 µs (71%), 4096 × 11008: 10.7 µs (75%);
//         without PDL 6.8 / 13.4 / 12.9 µs. R = 2, D = 2: 6.6 / 12.2 / 15.8 (PDL staggers its balanced grid);
//         M = 2 equals v3 (8.3 vs 8.1 µs at 4096²), M = 4 loses (13.0 vs 8.0): v3 keeps M >= 2.
//         The weights of the first D steps are loaded before pdl_wait(): they overlap the kernel before.
// Measured on an H100 (g128, CUDA-graph replays, bytes = N·K/2 + scales/zeros + x + y against the 3.0 TB/s copy rate; tools/bench_kernels.py):
//     v7  M = 1, R = 2, D = 2: 4096²: 7.45 µs (40% of copy BW; v3 8.0), 11008 × 4096: 15.7 µs (51%; R = 4:
//         15.0, 53%; v3 18.5), 4096 × 11008: 14.9 µs (54%; v3 17.2) — the default for M = 1, short of the 70%
//         aimed at. The same kernel with the math replaced by an XOR of the loaded words streams at 57 / 82 / 80%
//         (5.2 / 9.7 / 9.9 µs): the memory side reaches the target on the large shapes, the math does not hide
//         behind it. SASS: the two LDG.E.NA.128 of a step issue back to back with their four 2-byte scale/zero
//         loads; the step's math is ~280 instructions for 64 weights a lane (LOP3 + HSUB2 per pair, one
//         conversion and one FFMA per weight, x converted once per R rows), ~4.4 per weight: ~7 µs of issue
//         for the whole GPU at 11008 × 4096 (estimate), which overlaps the 9.7 µs of loads only in part.
//         M = 4 (R = 4): 11.3 / 27.6 / 24.5 µs against v3's 8.2 / 19.3 / 17.3; M = 8 (R = 2): 23.0 / 63.2 /
//         55.0 against 8.4 / 20.5 / 17.6: M FFMAs per weight make CUDA cores lose to the tensor cores from a
//         few rows on, so v3 keeps M >= 2 (M = 2 not measured).
//         w4a16_silu v7 (x = silu(gate)·up on load): 64.8 µs at 4096 × 11008 (12%) against 19.2 for silu_and_mul
//         + v3: each silu is shared by only R rows — not used.
//
// Launch: grid (w4a16_v7_blocks(kernel, N, R) in refengine/ops/cuda.py), block 128 (4 warps); no shared memory.
// Both versions may be launched with programmatic dependence (refengine/ops/pdl.py): x and y are touched only
// after pdl_wait().
#include "common.cuh"
#include "w4a16_piece.cuh"

// 16-byte streaming load: read-only path, not allocated in L1 (each weight byte is used exactly once)
__device__ __forceinline__ uint4 ldg_stream16(const void* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

__device__ __forceinline__ float silu_mul_f(float g, float u) { return g / (1.f + expf(-g)) * u; }

// where a lane's pieces come from: gpr = K / g groups per row, gsh = log2(g / 32) (piece c is in group c >> gsh)
struct W4Rows {
    const u32* qw;
    const half_t *scales, *zeros;
    int N, K, gpr, gsh;
};

template <int R>
__device__ __forceinline__ void load_piece(W4Piece<R>& p, const W4Rows& a, int n0, int c) {
    if (c >= a.K / 32) return;                         // past the row's end (last step of a row, K % 1024 != 0)
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int n = min(n0 + r, a.N - 1);            // rows past N re-read the last row; never written
        p.q[r] = ldg_stream16(a.qw + (i64)n * (a.K / 8) + 4 * c);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int n = min(n0 + r, a.N - 1);
        const int gi = n * a.gpr + (c >> a.gsh);       // < N·K/32 < 2^31 (the wrapper checks)
        p.s[r] = __ldg(a.scales + gi);
        p.z[r] = __ldg(a.zeros + gi);
    }
}

// 8 consecutive values of x row m from k (ACT: silu(gate)·up, rounded to float16 like silu_and_mul)
template <bool ACT>
__device__ __forceinline__ void load_x8(const half_t* __restrict__ x, int ldx, int m, int K, int k, float (&f)[8]) {
    const half_t* p = x + (i64)m * ldx + k;
    unpack8(ldg16(p), f);
    if (ACT) {
        float u[8];
        unpack8(ldg16(p + K), u);
#pragma unroll
        for (int e = 0; e < 8; ++e) f[e] = to_float(from_float<half_t>(silu_mul_f(f[e], u[e])));
    }
}

// acc[r][m] += scale · Σ_{32 k of the piece} (q − zero) · x[m, k]
// Word j holds k = 32c + 8j + [0, 8). Without per-nibble shifts: with t = word >> 8, the four LOP3s
//     word & 0x000F000F -> (q0, q4)      word & 0x00F000F0 -> 16·(q1, q5)
//     t    & 0x000F000F -> (q2, q6)      t    & 0x00F000F0 -> 16·(q3, q7)
// OR-ed into 0x6400 (1024) give 1024 + q or 1024 + 16·q, exact in float16; HSUB2 of 1024 + zero (or
// 1024 + 16·zero) leaves (q − zero) or 16·(q − zero), exact. The 16× products go to their own partial
// sum, scaled by scale / 16 at the end of the piece.
template <int MB, int R, bool ACT>
__device__ __forceinline__ void piece_math(const W4Piece<R>& p, const half_t* __restrict__ x, int ldx, int M, int K,
                                           int c, float (&acc)[R][MB]) {
    if (c >= K / 32) return;
    const u32 magic = 0x64006400u;
    u32 z1[R], z16[R];                                 // (1024 + zero) and (1024 + 16·zero), float16 pairs
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float z = to_float(p.z[r]);
        const u32 h1 = from_float<half_t>(1024.f + z), h16 = from_float<half_t>(1024.f + 16.f * z);
        z1[r] = h1 | (h1 << 16);
        z16[r] = h16 | (h16 << 16);
    }
    float part[R][MB][2];                              // [.][.][0]: q − zero terms, [1]: 16·(q − zero) terms
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MB; ++m) part[r][m][0] = part[r][m][1] = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        float w[R][8];                                 // w[r][e]: weight of k = 32c + 8j + e (×16 for odd e)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const u32 word = j == 0 ? p.q[r].x : j == 1 ? p.q[r].y : j == 2 ? p.q[r].z : p.q[r].w;
            const u32 t = word >> 8;
            const u32 d0 = hsub2(lop3_and_or(word, 0x000F000Fu, magic), z1[r]);
            const u32 d1 = hsub2(lop3_and_or(word, 0x00F000F0u, magic), z16[r]);
            const u32 d2 = hsub2(lop3_and_or(t, 0x000F000Fu, magic), z1[r]);
            const u32 d3 = hsub2(lop3_and_or(t, 0x00F000F0u, magic), z16[r]);
            w[r][0] = lo_half(d0); w[r][4] = hi_half(d0);
            w[r][1] = lo_half(d1); w[r][5] = hi_half(d1);
            w[r][2] = lo_half(d2); w[r][6] = hi_half(d2);
            w[r][3] = lo_half(d3); w[r][7] = hi_half(d3);
        }
#pragma unroll
        for (int m = 0; m < MB; ++m) {                 // rows m >= M repeat row M − 1 (branch-free; never written)
            float xf[8];
            load_x8<ACT>(x, ldx, min(m, M - 1), K, 32 * c + 8 * j, xf);
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int e = 0; e < 8; ++e) part[r][m][e & 1] = fmaf(w[r][e], xf[e], part[r][m][e & 1]);
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float s = to_float(p.s[r]);
#pragma unroll
        for (int m = 0; m < MB; ++m) acc[r][m] = fmaf(s * 0.0625f, part[r][m][1], fmaf(s, part[r][m][0], acc[r][m]));
    }
}

// the warp's sums for row group rg -> y (lane r·MB + m writes y[m, rg·R + r]); clears acc
template <int MB, int R>
__device__ __forceinline__ void finish_group(float (&acc)[R][MB], int rg, const half_t* __restrict__ bias,
                                             half_t* __restrict__ y, int M, int N) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MB; ++m) {
            const float v = warp_sum(acc[r][m]);
            acc[r][m] = 0.f;
            const int n = rg * R + r;
            if (lane == r * MB + m && m < M && n < N)
                y[(i64)m * N + n] = from_float<half_t>(bias ? v + to_float(bias[n]) : v);
        }
}

template <int MB, int R, int D, bool ACT, int PW = 0>
__device__ void w4a16_gemv(const half_t* __restrict__ x, int ldx, const u32* __restrict__ qw,
                           const half_t* __restrict__ scales, const half_t* __restrict__ zeros, int group,
                           const half_t* __restrict__ bias, half_t* __restrict__ y, int M, int N, int K) {
    const int lane = threadIdx.x & 31, warps = gridDim.x * (blockDim.x >> 5);
    const int w = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);        // w in [0, warps)
    const int groups = (N + R - 1) / R, iters = (K / 32 + 31) / 32;          // row groups; steps per group
    const int rg0 = (int)((i64)w * groups / warps), rg1 = (int)((i64)(w + 1) * groups / warps);
    const int steps = (rg1 - rg0) * iters;                                   // step s = (rg0 + s / iters, s % iters)

    const int gsh = 26 - __clz(group);                 // log2(group) − 5
    const W4Rows rows{qw, scales, zeros, N, K, K >> (gsh + 5), gsh};
    W4Piece<R> ring[D];
    int l_rg = rg0, l_it = 0;                          // the next step to load
#pragma unroll
    for (int d = 0; d < D; ++d) {
        if (d < steps) load_piece(ring[d], rows, l_rg * R, 32 * l_it + lane);
        if (++l_it == iters) { l_it = 0; ++l_rg; }
    }
    pdl_wait();                                        // the weights above are constant; x and y are not
    pdl_launch_dependents();                           // (after the last load instead: measured equal or slower)
    float acc[R][MB];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MB; ++m) acc[r][m] = 0.f;
    int c_rg = rg0, c_it = 0;                          // the step being computed
    for (int s0 = 0; s0 < steps; s0 += D) {
#pragma unroll
        for (int d = 0; d < D; ++d) {
            if (s0 + d >= steps) break;
            const W4Piece<R> cur = ring[d];
            if (s0 + d + D < steps) {                  // refill the slot before computing: D steps stay in flight
                load_piece(ring[d], rows, l_rg * R, 32 * l_it + lane);
                if (++l_it == iters) { l_it = 0; ++l_rg; }
            }
            if (PW)
                piece_math_h2<MB, R, PW ? PW : 1>(cur, x, ldx, M, K, 32 * c_it + lane, acc);
            else
                piece_math<MB, R, ACT>(cur, x, ldx, M, K, 32 * c_it + lane, acc);
            if (++c_it == iters) {
                finish_group<MB, R>(acc, c_rg, bias, y, M, N);
                c_it = 0;
                ++c_rg;
            }
        }
    }
}

// Exported as w4a16_v7_m{MB}_r{R}_d{D}_f16 and w4a16_silu_v7_m{MB}_r{R}_d{D}_f16 (gate_up in, ldx = 2K).
// refengine/ops/cuda.py W4A16_V7 / W4A16_SILU_V7 pick (R, D) per MB; the other instantiations are tuning
// points for tools/bench_kernels.py.
#define W4A16_V7(MB, R, D)                                                                                           \
    __global__ void __launch_bounds__(128) w4a16_v7_m##MB##_r##R##_d##D##_f16(                                       \
        const half_t* x, int ldx, const u32* qw, const half_t* scales, const half_t* zeros, int group,                \
        const half_t* bias, half_t* y, int M, int N, int K) {                                                        \
        w4a16_gemv<MB, R, D, false>(x, ldx, qw, scales, zeros, group, bias, y, M, N, K);                             \
    }
#define W4A16_V8(MB, R, D, PW)                                                                                       \
    __global__ void __launch_bounds__(128) w4a16_v8_m##MB##_r##R##_d##D##_p##PW##_f16(                               \
        const half_t* x, int ldx, const u32* qw, const half_t* scales, const half_t* zeros, int group,                \
        const half_t* bias, half_t* y, int M, int N, int K) {                                                        \
        w4a16_gemv<MB, R, D, false, PW>(x, ldx, qw, scales, zeros, group, bias, y, M, N, K);                         \
    }
#define W4A16_SILU_V7(MB, R, D)                                                                                      \
    __global__ void __launch_bounds__(128) w4a16_silu_v7_m##MB##_r##R##_d##D##_f16(                                  \
        const half_t* x, int ldx, const u32* qw, const half_t* scales, const half_t* zeros, int group,                \
        const half_t* bias, half_t* y, int M, int N, int K) {                                                        \
        w4a16_gemv<MB, R, D, true>(x, ldx, qw, scales, zeros, group, bias, y, M, N, K);                              \
    }

extern "C" {
W4A16_V7(1, 2, 2)      // the defaults (refengine/ops/cuda.py W4A16_V7)
W4A16_V7(2, 2, 4)
W4A16_V7(4, 4, 2)
W4A16_V7(8, 2, 2)
W4A16_V7(1, 2, 4)      // tuning points (W4A16_V7_TUNE)
W4A16_V7(1, 1, 8)
W4A16_V7(1, 4, 2)
W4A16_V7(4, 2, 4)
W4A16_V8(1, 2, 3, 1)   // v8 (refengine/ops/cuda.py W4A16_V8)
W4A16_V8(2, 2, 2, 1)
W4A16_V8(4, 2, 2, 1)
W4A16_V8(1, 2, 2, 1)   // tuning points (W4A16_V8_TUNE)
W4A16_V8(1, 2, 2, 2)
W4A16_V8(1, 2, 2, 4)
W4A16_V8(1, 2, 4, 1)
W4A16_V8(1, 2, 4, 2)
W4A16_V8(1, 4, 2, 1)
W4A16_V8(1, 4, 2, 2)
W4A16_V8(1, 1, 4, 1)
W4A16_SILU_V7(1, 2, 4) // W4A16_SILU_V7
W4A16_SILU_V7(2, 2, 4)
W4A16_SILU_V7(4, 2, 4)
W4A16_SILU_V7(8, 2, 2)
}

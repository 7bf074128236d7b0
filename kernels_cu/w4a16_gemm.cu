// w4a16_gemm.cu — linear layer with 4-bit weights and float16 activations (AWQ W4A16):
//     y = x @ W.T (+ bias),  W[n, k] = (q[n, k] − zero[n, k/g]) · scale[n, k/g],  float32 accumulation.
// Twin: refengine.ops.reference.linear_w4a16
//
//     x        [M, K]     float16   rows ldx elements apart
//     qweight  [N, K/8]   uint32    int4 codes, 8 per word, lowest nibble = lowest k (refengine/quant/primitives.py)
//     scales   [N, K/g]   float16
//     zeros    [N, K/g]   float16   integer zero points 0..15
//     bias     [N]        float16   optional
//     y        [M, N]     float16
//     g in {32, 64, 128}; K % g == 0
//
// Versions:
//     v1  one thread per output (m, n): unpack, dequantize and multiply one weight at a time in float32.
//         M=1, 4096 × 4096, g128: 577 µs (1% of copy BW).
//     v2  tensor cores with in-register dequantization (mma_linear.cuh): per 16-byte load a lane gets 32
//         weights of one group; LOP3 + HSUB2 + HMUL2 turn 2 of them into a half2 MMA operand. 4 warps per
//         block, one weight chunk in flight per warp. MT = 1 (M <= 8, the decode GEMV) or 4 (the GEMM path for
//         a decode batch or a short prefill). K % 32 == 0. M=1, 4096², g128: 10.4 µs (29%); 11008 × 4096: 39%.
//     v3  v2's GEMV with 8 warps per block and 4 chunks in flight per warp (DEPTH = 4): 4× the bytes in
//         flight. M <= 8. 4096²: 8.0 µs (37%); 11008 × 4096: 18.5 µs (43%); 4096 × 11008: 47% — short of
//         the 70% aimed at: the deeper pipeline bought less than predicted (docs/kernels.md).
//         w4a16_silu v3: the same with x = silu(gate)·up computed from gate_up on load (the MLP's down
//         projection with silu_and_mul fused in; twin reference.silu_and_mul_linear_w4a16).
//     v4  for long prefills (many rows, eager only): dequantize W once into a float16 scratch
//         (w4a16_dequant, one thread per packed word) and let cuBLAS do the GEMM (refengine/ops/cuda.py).
//         M=256, 4096²: 37.8 µs (227 TFLOP/s) against v2's MT=4 tiles at 104 µs; 11008 × 4096: 86.8 µs.
//     v5  the streaming GEMV (w4a16_stream.cuh; M <= 8): a persistent grid whose blocks stream contiguous
//         runs of 16-row × 2048-k slabs through a 4-stage cp.async ring; ldmatrix hands each lane every 4th
//         word so that every MMA lies in one quantization group, the MMA runs on the raw codes (1024 + q) and
//         scale and zero are applied per group in float32 (2 instructions per weight pair instead of 4).
//         Measured (H100): 4096²: 10.7 µs (28% of copy BW); 11008 × 4096: 22.0 µs (36%); 4096 × 11008: 22.7 µs
//         (35%) — slower than v3 (8.1 / 18.4 / 17.2 µs): each block syncs once per slab and the per-slab
//         work (producer address math, the group folds, the barrier) is not hidden behind the stream;
//         see docs/kernels.md. w4a16_silu v5: the same with x = silu(gate)·up made in shared memory once per
//         block (26.4 µs at 4096 × 11008 vs 24.9 for silu_and_mul + v3).
//     v6  the streaming GEMM (w4a16_stream.cuh; any M, chosen for 9..64 rows): 128-feature × 16/32/64-row
//         tiles, 128-k slabs of W and x through a cp.async ring, LOP3 + HSUB2 + HMUL2 dequantization shared
//         by the MB row tiles, split-K across blocks with a deterministic last-block reduction.
//         M=16: 19.9 µs (4096²; cuBLAS fp16 17.6, v2 15.4), 29.2 µs (11008 × 4096; cuBLAS 36.6, v2 31.7);
//         M=32: 21.1 / 36.5 µs (cuBLAS 15.6 / 37.4); M=64: 28.6 / 49.0 µs (v4 30.1 / 82.4, cuBLAS 16.0 / 36.1);
//         M=256: 60.4 / 139 µs (142 / 166 TFLOP/s; v4 37.8 / 86.8, cuBLAS 20.0 / 40.9).
//     v7  the CUDA-core GEMV (w4a16_gemv.cu; M <= 8, the default for M = 1): warps own 2 rows and all of K,
//         a ring of 16-byte loads in flight per warp, a balanced persistent grid, no barrier. M = 1: 7.45 /
//         15.7 / 14.9 µs (40 / 51 / 54%) at 4096², 11008 × 4096, 4096 × 11008 against v3's 8.0 / 18.5 / 17.2;
//         slower than v3 from M = 4 (an FFMA per weight and row). Details and the loads-only ceiling there.
//
// Launch:
//     v1  grid (ceil(N / 128), M), block 128
//     v2  grid (ceil(N / 16), ceil(M / (8·MT))), block 128 (see mma_linear.cuh)
//     v3  grid (ceil(N / 16)), block 256
//     v5  grid (min(block slots, granules)), block 256 (8 warps); v6 the same, block 128 (4 warps); dynamic
//         shared memory as refengine/ops/cuda.py W4Stream.smem computes (w4a16_stream.cuh has the layout)
//     w4a16_dequant  grid (ceil(N·K/8 / 256)), block 256: thread owns word (n, j) -> W[n, 8j .. 8j + 8)
#include "w4a16_stream.cuh"

__device__ __forceinline__ float dequant(const u32* __restrict__ qw, const half_t* __restrict__ scales,
                                         const half_t* __restrict__ zeros, int n, int k, int K, int group) {
    const u32 q = (qw[(i64)n * (K / 8) + k / 8] >> (4 * (k % 8))) & 0xFu;
    const i64 gi = (i64)n * (K / group) + k / group;
    return ((float)q - to_float(zeros[gi])) * to_float(scales[gi]);
}

__device__ void w4a16_v1(const half_t* __restrict__ x, int ldx, const u32* __restrict__ qw,
                         const half_t* __restrict__ scales, const half_t* __restrict__ zeros, int group,
                         const half_t* __restrict__ bias, half_t* __restrict__ y, int M, int N, int K) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y;   // n in [0, N), m in [0, M)
    if (n >= N) return;
    float acc = 0.f;
    for (int k = 0; k < K; ++k) acc += to_float(x[(i64)m * ldx + k]) * dequant(qw, scales, zeros, n, k, K, group);
    if (bias) acc += to_float(bias[n]);
    y[(i64)m * N + n] = from_float<half_t>(acc);
}

extern "C" {
__global__ void w4a16_v1_f16(const half_t* x, int ldx, const u32* qw, const half_t* scales, const half_t* zeros,
                             int group, const half_t* bias, half_t* y, int M, int N, int K) {
    w4a16_v1(x, ldx, qw, scales, zeros, group, bias, y, M, N, K);
}
__global__ void __launch_bounds__(128) w4a16_v2_mt1_f16(const half_t* x, int ldx, const u32* qw,
                                                        const half_t* scales, const half_t* zeros, int group,
                                                        const half_t* bias, half_t* y, int M, int N, int K) {
    mma_linear<true, 1, half_t>(x, ldx, qw, scales, zeros, group, bias, y, M, N, K);
}
__global__ void __launch_bounds__(128) w4a16_v2_mt4_f16(const half_t* x, int ldx, const u32* qw,
                                                        const half_t* scales, const half_t* zeros, int group,
                                                        const half_t* bias, half_t* y, int M, int N, int K) {
    mma_linear<true, 4, half_t>(x, ldx, qw, scales, zeros, group, bias, y, M, N, K);
}

__global__ void __launch_bounds__(256) w4a16_v3_f16(const half_t* x, int ldx, const u32* qw, const half_t* scales,
                                                    const half_t* zeros, int group, const half_t* bias, half_t* y,
                                                    int M, int N, int K) {
    pdl_enter();
    mma_linear<true, 1, half_t, 8, 4>(x, ldx, qw, scales, zeros, group, bias, y, M, N, K);
}

// silu_and_mul fused into the down projection (twin: reference.silu_and_mul_linear_w4a16)
__global__ void __launch_bounds__(256) w4a16_silu_v3_f16(const half_t* gate_up, int ldx, const u32* qw,
                                                         const half_t* scales, const half_t* zeros, int group,
                                                         const half_t* bias, half_t* y, int M, int N, int K) {
    mma_linear<true, 1, half_t, 8, 4, true>(gate_up, ldx, qw, scales, zeros, group, bias, y, M, N, K);
}

// W [N, K] float16 from the packed form (v4's first step)
__global__ void w4a16_dequant(const u32* __restrict__ qw, const half_t* __restrict__ scales,
                              const half_t* __restrict__ zeros, int group, half_t* __restrict__ w, int N, int K) {
    const i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x;        // e = (n, j) in [0, N·K/8)
    if (e >= (i64)N * (K / 8)) return;
    const int n = (int)(e / (K / 8)), j = (int)(e % (K / 8));
    const u32 word = qw[e];
    const i64 gi = (i64)n * (K / group) + (8 * j) / group;
    const float s = to_float(scales[gi]), z = to_float(zeros[gi]);
    float f[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = ((float)((word >> (4 * i)) & 0xFu) - z) * s;
    *reinterpret_cast<uint4*>(w + (i64)n * K + 8 * j) = pack8(f);
}
}

// ---------------------------------------------------------------- v5, v6: the streaming kernels (w4a16_stream.cuh)
//     W4Stream<NA, MB, WN, WK, CPW, STAGES, XFULL, ACT>; the trailing arguments: float32 partial slots, per-tile
//     counters (zero between launches), tile_mode (0: granule = one slab, 1: one whole tile)

#define W4_ARGS const half_t *x, int ldx, const u32 *qw, const half_t *scales, const half_t *zeros, int group, \
                const half_t *bias, half_t *y, int M, int N, int K, float *ws, int *counters, int tile_mode
#define W4_PASS x, ldx, qw, scales, zeros, group, bias, y, M, N, K, ws, counters, tile_mode

typedef W4Stream<1, 1, 1, 8, 2, 4, true, false> W4V5;        // GEMV: 8 warps × 2 chunks of a 16 × 2048 slab
typedef W4Stream<1, 1, 1, 8, 2, 3, true, false> W4V5S3;      // the same with 3 stages (a tuning point)
typedef W4Stream<1, 1, 1, 8, 2, 4, true, true> W4V5Silu;     // x = silu(gate)·up of gate_up [M, 2K]
typedef W4Stream<2, 2, 4, 1, 1, 4, false, false> W4V6M16;    // GEMM: 128 features × 16 rows per tile
typedef W4Stream<2, 4, 4, 1, 1, 4, false, false> W4V6M32;    //        128 × 32
typedef W4Stream<2, 8, 4, 1, 1, 3, false, false> W4V6M64;    //        128 × 64

extern "C" {
__global__ void __launch_bounds__(256, 2) w4a16_v5_f16(W4_ARGS) { w4a16_stream<W4V5>(W4_PASS); }
__global__ void __launch_bounds__(256, 2) w4a16_v5s3_f16(W4_ARGS) { w4a16_stream<W4V5S3>(W4_PASS); }
__global__ void __launch_bounds__(256, 2) w4a16_silu_v5_f16(W4_ARGS) { w4a16_stream<W4V5Silu>(W4_PASS); }
__global__ void __launch_bounds__(128, 2) w4a16_v6_m16_f16(W4_ARGS) { w4a16_stream<W4V6M16>(W4_PASS); }
__global__ void __launch_bounds__(128, 2) w4a16_v6_m32_f16(W4_ARGS) { w4a16_stream<W4V6M32>(W4_PASS); }
__global__ void __launch_bounds__(128, 2) w4a16_v6_m64_f16(W4_ARGS) { w4a16_stream<W4V6M64>(W4_PASS); }
}

// linear_f16.cu — dense linear layer y = x @ W.T (+ bias), float32 accumulation, for the captured decode step
// (CuPy refuses cuBLAS inside stream capture) and for the few-row case where a GEMV beats cuBLAS.
// Eager calls with many rows use cuBLAS through cupy.matmul instead (refengine/ops/cuda.py).
//
// Twin: refengine.ops.reference.linear (and reference.logits, the same product with a float32 output)
//
//     x     [M, K]  T       rows ldx elements apart (a view into a larger buffer is fine)
//     W     [N, K]  T       Hugging Face layout, contiguous
//     bias  [N]     T       optional (null pointer)
//     y     [M, N]  OutT    contiguous; OutT = T, or float32 for the logits
//
// Versions:
//     v1  one thread per output (m, n), a plain loop over k. Any shape, float16 or float32.
//         M=1, 4096 × 4096: 303 µs (4% of copy BW).
//     v2  CUDA-core GEMV: one warp per output feature n; lanes stride the weight row in 16-byte vectors
//         (4 loads in flight per lane) and apply each to all M <= 8 rows of x; warp-shuffle sum.
//         float16, K % 8 == 0. M=1: 4096²: 14.8 µs (76%); 22016 × 4096: 94%; the LM head 49152 × 576: 88%;
//         the default model's small decode GEMVs: 2.3-3.6 µs (the default there). Its first weight loads are
//         issued before pdl_wait (common.cuh): they overlap the kernel before in a captured decode step.
//         Long rows lose: 4096 × 11008 69% (44.1 µs) against v3's 84% (35.8), so linear_order picks v3
//         when K >= 2N.
//     v3  tensor cores (mma_linear.cuh): a warp computes a 16 (n) × 8·MT (m) tile, 4 warps split K.
//         MT = 1 for M <= 8 (decode GEMV), MT = 4 above. float16, K % 32 == 0. M=1, 4096²: 15.0 µs (75%);
//         22016 × 4096: 92%; slower than v2 on the small decode shapes (3.6-4.8 µs).
//     linear_silu v3: v3's GEMV whose x is silu(gate)·up computed from gate_up while loading — the MLP's
//         down projection with silu_and_mul fused in (twin: reference.silu_and_mul_linear). M <= 8.
//         Measured slower than the two launches it replaces (11.6 vs 5.5 µs at 576 × 1536): the activation
//         is computed by the 4 lanes that own the row, on every chunk's critical path. Kept, tested, not default.
//
// Launch:
//     v1  grid (ceil(N / 128), M), block 128: thread owns y[blockIdx.y, n]
//     v2  grid (ceil(N / 4)), block 128: warp w owns output feature n = 4·blockIdx.x + w for every row
//     v3  grid (ceil(N / 16), ceil(M / (8·MT))), block 128
#include "mma_linear.cuh"

template <typename T, typename OutT>
__device__ void linear_v1(const T* __restrict__ x, int ldx, const T* __restrict__ w, const T* __restrict__ bias,
                          OutT* __restrict__ y, int M, int N, int K) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y;   // n in [0, N), m in [0, M)
    if (n >= N) return;
    float acc = 0.f;
    for (int k = 0; k < K; ++k) acc += to_float(x[(i64)m * ldx + k]) * to_float(w[(i64)n * K + k]);
    if (bias) acc += to_float(bias[n]);
    y[(i64)m * N + n] = from_float<OutT>(acc);
}

template <typename OutT>
__device__ void linear_v2(const half_t* __restrict__ x, int ldx, const half_t* __restrict__ w,
                          const half_t* __restrict__ bias, OutT* __restrict__ y, int M, int N, int K) {
    constexpr int MAXM = 8, UNROLL = 4;
    const int lane = threadIdx.x % 32;
    const int n = min(blockIdx.x * 4 + threadIdx.x / 32, N - 1);      // n in [0, N); warps past N redo row N − 1
    const half_t* wr = w + (i64)n * K;
    const int vecs = K / 8;                                           // 16-byte vectors per row
    uint4 wv[UNROLL];
    auto load_weights = [&](int v0) {                                 // loads first, then arithmetic
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int v = v0 + 32 * u;
            wv[u] = v < vecs ? ldg16(wr + 8 * v) : make_uint4(0, 0, 0, 0);
        }
    };
    load_weights(lane);                                               // constant: before the wait
    pdl_enter();
    if (blockIdx.x * 4 + threadIdx.x / 32 >= N) return;               // whole warp leaves together
    float acc[MAXM];
#pragma unroll
    for (int m = 0; m < MAXM; ++m) acc[m] = 0.f;
    for (int v0 = lane; v0 < vecs; v0 += 32 * UNROLL) {
        if (v0 != lane) load_weights(v0);
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int v = v0 + 32 * u;
            if (v >= vecs) break;
            float wf[8];
            unpack8(wv[u], wf);
#pragma unroll
            for (int m = 0; m < MAXM; ++m) {
                if (m >= M) break;
                float xf[8];
                unpack8(ldg16(x + (i64)m * ldx + 8 * v), xf);
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[m] += wf[i] * xf[i];
            }
        }
    }
    const float b = bias ? to_float(bias[n]) : 0.f;
#pragma unroll
    for (int m = 0; m < MAXM; ++m) {
        if (m >= M) break;
        const float s = warp_sum(acc[m]);
        if (lane == 0) y[(i64)m * N + n] = from_float<OutT>(s + b);
    }
}

#define V3(MT, OUT, SUFFIX)                                                                                   \
    __global__ void __launch_bounds__(128) linear_v3_mt##MT##_##SUFFIX(                                      \
        const half_t* x, int ldx, const half_t* w, const half_t* bias, OUT* y, int M, int N, int K) {        \
        pdl_enter();                                                                                          \
        mma_linear<false, MT, OUT>(x, ldx, w, nullptr, nullptr, 32, bias, y, M, N, K);                       \
    }

extern "C" {
__global__ void linear_v1_f16(const half_t* x, int ldx, const half_t* w, const half_t* b, half_t* y, int M, int N,
                              int K) {
    linear_v1<half_t, half_t>(x, ldx, w, b, y, M, N, K);
}
__global__ void linear_v1_f32(const float* x, int ldx, const float* w, const float* b, float* y, int M, int N,
                              int K) {
    linear_v1<float, float>(x, ldx, w, b, y, M, N, K);
}
__global__ void linear_v1_f16_out32(const half_t* x, int ldx, const half_t* w, const half_t* b, float* y, int M,
                                    int N, int K) {
    linear_v1<half_t, float>(x, ldx, w, b, y, M, N, K);
}
__global__ void linear_v2_f16(const half_t* x, int ldx, const half_t* w, const half_t* b, half_t* y, int M, int N,
                              int K) {
    linear_v2<half_t>(x, ldx, w, b, y, M, N, K);
}
__global__ void linear_v2_f16_out32(const half_t* x, int ldx, const half_t* w, const half_t* b, float* y, int M,
                                    int N, int K) {
    linear_v2<float>(x, ldx, w, b, y, M, N, K);
}
// silu_and_mul fused into the down projection's GEMV: x = silu(gate_up[:, :K])·gate_up[:, K:]
__global__ void __launch_bounds__(128) linear_silu_v3_f16(const half_t* gate_up, int ldx, const half_t* w,
                                                          const half_t* bias, half_t* y, int M, int N, int K) {
    mma_linear<false, 1, half_t, 4, 2, true>(gate_up, ldx, w, nullptr, nullptr, 32, bias, y, M, N, K);
}
V3(1, half_t, f16)
V3(4, half_t, f16)
V3(1, float, f16_out32)
V3(4, float, f16_out32)
}

// activation.cu — SiLU-and-multiply, the gated MLP's activation (SwiGLU).
//
// Op (float32 arithmetic):  out[t, i] = silu(g) · u = g / (1 + exp(−g)) · u,
//                           g = gate_up[t, i], u = gate_up[t, I + i]      (gate | up halves of one row)
// Twin: refengine.ops.reference.silu_and_mul
//
// Inputs / outputs (row-major, contiguous):
//     gate_up [T, 2I]  T        the fused gate_up matmul output
//     out     [T, I]   T
//
// Versions:
//     v1  one thread per output element                                 — T=4096 I=11008: 178 µs (51%)
//     v2  one thread per 8 outputs: two 16-byte loads, one store (fp16, I % 8 == 0) — 90.8 µs (100%)
//
// Launch: grid (ceil(T·I / 256)) (v1) or (ceil(T·I/8 / 256)) (v2), block 256.
#include "common.cuh"

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.f + expf(-g)) * u; }

template <typename T>
__device__ void silu_and_mul_v1(const T* __restrict__ gate_up, T* __restrict__ out, int num_tokens, int inter) {
    const i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x;        // e in [0, T·I)
    if (e >= (i64)num_tokens * inter) return;
    const i64 t = e / inter, i = e % inter;
    const T* row = gate_up + t * 2 * inter;
    out[e] = from_float<T>(silu_mul(to_float(row[i]), to_float(row[inter + i])));
}

__device__ void silu_and_mul_v2(const half_t* __restrict__ gate_up, half_t* __restrict__ out, int num_tokens,
                                int inter) {
    pdl_enter();
    const int vecs = inter / 8;                                       // 8-wide vectors per output row
    const i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x;        // e in [0, T·I/8)
    if (e >= (i64)num_tokens * vecs) return;
    const i64 t = e / vecs, j = e % vecs;
    const half_t* row = gate_up + t * 2 * inter;
    float g[8], u[8];
    unpack8(ldg16(row + j * 8), g);
    unpack8(ldg16(row + inter + j * 8), u);
#pragma unroll
    for (int i = 0; i < 8; ++i) g[i] = silu_mul(g[i], u[i]);
    *reinterpret_cast<uint4*>(out + t * inter + j * 8) = pack8(g);
}

extern "C" {
__global__ void silu_and_mul_v1_f16(const half_t* gu, half_t* out, int n, int inter) {
    silu_and_mul_v1<half_t>(gu, out, n, inter);
}
__global__ void silu_and_mul_v1_f32(const float* gu, float* out, int n, int inter) {
    silu_and_mul_v1<float>(gu, out, n, inter);
}
__global__ void silu_and_mul_v2_f16(const half_t* gu, half_t* out, int n, int inter) {
    silu_and_mul_v2(gu, out, n, inter);
}
}

// rms_norm.cu — RMSNorm, alone or fused with the residual add that precedes it.
//
// Op (per row, float32 arithmetic):
//     rms_norm:      out = w · x / sqrt(mean(x²) + eps)
//     add_rms_norm:  r'  = x + r    (stored in r's dtype; the norm reads the stored, rounded value, as
//                                    transformers does in float16)
//                    out = w · r' / sqrt(mean(r'²) + eps)
// Twins: refengine.ops.reference.rms_norm, refengine.ops.reference.add_rms_norm
//
// Inputs / outputs (row-major; rows may be strided, the hidden dimension is contiguous):
//     x        [T, hidden]  T   row stride ldx elements
//     residual [T, hidden]  T   contiguous (add_rms_norm only)
//     weight   [hidden]     T
//     out      [T, hidden]  T   contiguous;   res_out [T, hidden] T contiguous (add_rms_norm only)
//
// Versions:
//     v1  one block (256 threads) per row; two passes over the row in global memory, 2-byte accesses
//         — add_rms_norm 4096 × 4096 fp16: 67.0 µs (84% of copy BW); one 576-wide decode row: 2.4 µs
//     v2  one block per row, each thread keeps one 16-byte vector (8 values) in registers between the
//         sum of squares and the scaling: one read and one write of the row. float16 only,
//         hidden % 8 == 0 and hidden <= 8192 (block = hidden/8 threads rounded up to a warp)
//         — 47.3 µs (the 32 MB rows partly stay in L2); decode row: 1.8 µs (a graph node's floor)
//
// Launch: grid (T), block 256 (v1) or ceil(hidden/8 / 32)·32 (v2); thread j owns columns j, j+blockDim, ...
// (v1) or columns [8j, 8j+8) (v2). 33 floats of shared memory for the block reduction.
#include "common.cuh"

template <typename T, bool ADD>
__device__ void rms_norm_v1(const T* __restrict__ x, int ldx, const T* __restrict__ residual,
                            const T* __restrict__ weight, T* __restrict__ out, T* __restrict__ res_out,
                            int hidden, float eps) {
    __shared__ float scratch[33];
    const int row = blockIdx.x;                                       // row in [0, T)
    const T* xr = x + (i64)row * ldx;
    float sumsq = 0.f;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {          // c in [0, hidden)
        float v = to_float(xr[c]);
        if (ADD) {
            const T stored = from_float<T>(v + to_float(residual[(i64)row * hidden + c]));
            res_out[(i64)row * hidden + c] = stored;
            v = to_float(stored);
        }
        sumsq += v * v;
    }
    const float inv = rsqrtf(block_sum(sumsq, scratch) / hidden + eps);
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        // each thread re-reads only the elements it wrote itself: no barrier needed
        const float v = ADD ? to_float(res_out[(i64)row * hidden + c]) : to_float(xr[c]);
        out[(i64)row * hidden + c] = from_float<T>(to_float(weight[c]) * (v * inv));
    }
}

template <bool ADD>
__device__ void rms_norm_v2(const half_t* __restrict__ x, int ldx, const half_t* __restrict__ residual,
                            const half_t* __restrict__ weight, half_t* __restrict__ out,
                            half_t* __restrict__ res_out, int hidden, float eps) {
    pdl_enter();
    __shared__ float scratch[33];
    const int row = blockIdx.x;                                       // row in [0, T)
    const int c0 = threadIdx.x * 8;                                   // this thread's columns [c0, c0 + 8)
    const bool mine = c0 < hidden;
    float v[8];
    float sumsq = 0.f;
    if (mine) {
        unpack8(ldg16(x + (i64)row * ldx + c0), v);
        if (ADD) {
            float r[8];
            unpack8(ldg16(residual + (i64)row * hidden + c0), r);
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] += r[i];
            const uint4 stored = pack8(v);
            *reinterpret_cast<uint4*>(res_out + (i64)row * hidden + c0) = stored;
            unpack8(stored, v);                                       // normalise the rounded sum
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) sumsq += v[i] * v[i];
    }
    const float inv = rsqrtf(block_sum(sumsq, scratch) / hidden + eps);
    if (mine) {
        float w[8];
        unpack8(ldg16(weight + c0), w);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = w[i] * (v[i] * inv);
        *reinterpret_cast<uint4*>(out + (i64)row * hidden + c0) = pack8(v);
    }
}

extern "C" {
__global__ void rms_norm_v1_f16(const half_t* x, int ldx, const half_t* w, half_t* out, int hidden, float eps) {
    rms_norm_v1<half_t, false>(x, ldx, nullptr, w, out, nullptr, hidden, eps);
}
__global__ void rms_norm_v1_f32(const float* x, int ldx, const float* w, float* out, int hidden, float eps) {
    rms_norm_v1<float, false>(x, ldx, nullptr, w, out, nullptr, hidden, eps);
}
__global__ void add_rms_norm_v1_f16(const half_t* x, int ldx, const half_t* r, const half_t* w, half_t* out,
                                    half_t* r_out, int hidden, float eps) {
    rms_norm_v1<half_t, true>(x, ldx, r, w, out, r_out, hidden, eps);
}
__global__ void add_rms_norm_v1_f32(const float* x, int ldx, const float* r, const float* w, float* out,
                                    float* r_out, int hidden, float eps) {
    rms_norm_v1<float, true>(x, ldx, r, w, out, r_out, hidden, eps);
}
__global__ void rms_norm_v2_f16(const half_t* x, int ldx, const half_t* w, half_t* out, int hidden, float eps) {
    rms_norm_v2<false>(x, ldx, nullptr, w, out, nullptr, hidden, eps);
}
__global__ void add_rms_norm_v2_f16(const half_t* x, int ldx, const half_t* r, const half_t* w, half_t* out,
                                    half_t* r_out, int hidden, float eps) {
    rms_norm_v2<true>(x, ldx, r, w, out, r_out, hidden, eps);
}
}

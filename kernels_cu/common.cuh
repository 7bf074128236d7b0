// common.cuh — small helpers every kernel file shares.
//
// Included textually by refengine/ops/loader.py (so NVRTC needs no include path) and through
// `nvcc -Ikernels_cu` by tools/compile_kernels.sh. No standard headers: NVRTC compiles this as is.
//
// Storage types. Kernels are templates over the storage type T of their activations:
//     half_t  IEEE float16, kept as its 16 raw bits (unsigned short); converted with one PTX cvt
//     float   float32
// Arithmetic is always float32: load -> to_float, compute, from_float<T> -> store (round to nearest).
#pragma once

typedef unsigned short half_t;     // float16 bits
typedef unsigned int u32;
typedef long long i64;

// ---------------------------------------------------------------- conversions

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(half_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ half_t from_float<half_t>(float v) {
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}

// the two float16 halves of a 32-bit word: low half = the element at the lower address
__device__ __forceinline__ float lo_half(u32 w) { return to_float((half_t)(w & 0xFFFFu)); }
__device__ __forceinline__ float hi_half(u32 w) { return to_float((half_t)(w >> 16)); }
__device__ __forceinline__ u32 pack_half2(float lo, float hi) {
    return (u32)from_float<half_t>(lo) | ((u32)from_float<half_t>(hi) << 16);
}

// 8 float16 values <-> one 16-byte vector
__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]) {
    f[0] = lo_half(v.x); f[1] = hi_half(v.x); f[2] = lo_half(v.y); f[3] = hi_half(v.y);
    f[4] = lo_half(v.z); f[5] = hi_half(v.z); f[6] = lo_half(v.w); f[7] = hi_half(v.w);
}
__device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
    uint4 v;
    v.x = pack_half2(f[0], f[1]); v.y = pack_half2(f[2], f[3]);
    v.z = pack_half2(f[4], f[5]); v.w = pack_half2(f[6], f[7]);
    return v;
}

// ---------------------------------------------------------------- float16 pairs in 32-bit words (f16x2)
// The low half is the element at the lower address. Used by the int4 dequantizations (w4a16_gemv.cu,
// mma_linear.cuh), which build float16 pairs from nibbles with LOP3 and PRMT.
__device__ __forceinline__ u32 hadd2(u32 a, u32 b) {
    u32 d;
    asm("add.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 d;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
// bytes of (a, b) picked by the 4 nibbles of sel (0-3: a's bytes, 4-7: b's)
__device__ __forceinline__ u32 prmt(u32 a, u32 b, u32 sel) {
    u32 d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}
// (a & mask) | magic in one LOP3 (plain C gives an AND and an OR: ptxas will not fold two immediates)
__device__ __forceinline__ u32 lop3_and_or(u32 a, u32 mask, u32 magic) {
    u32 d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(mask), "r"(magic));
    return d;
}

// ---------------------------------------------------------------- cp.async: global -> shared without registers (sm_80+)
// The registry never picks a kernel that uses these below sm_80; there they compile to nothing.
__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
// 16 bytes, bypassing L1; bytes < 16 zero-fills the rest (0: nothing is read)
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, int bytes) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void cp_async4(u32 dst, const void* src) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// wait until at most N of this thread's committed groups are still in flight
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// read-only 16-byte load through the non-coherent (texture) path
__device__ __forceinline__ uint4 ldg16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// ---------------------------------------------------------------- programmatic dependent launch (sm_90+)
//
// Inside captured decode graphs, refengine/ops/pdl.py may launch a kernel while the one before it in the
// stream is still running (its launch site says pdl_ready). Such a kernel must call pdl_wait() before it
// reads or writes any memory another kernel writes (activations, the KV cache, its own outputs); only
// constant weights may be read before. pdl_launch_dependents() lets the next kernel's blocks launch.
// Without the launch attribute, and below sm_90, both are no-ops.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// the first statement of a kernel that prefetches nothing
__device__ __forceinline__ void pdl_enter() {
    pdl_wait();
    pdl_launch_dependents();
}

// ---------------------------------------------------------------- reductions

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// A reduction over the whole block (blockDim.x a multiple of 32, at most 1024): Warp(v) reduces one warp,
// `empty` is what a missing warp contributes. Every thread gets the result. `scratch` holds 33 floats of
// shared memory; the call ends with a barrier, so it may be reused at once.
template <float (*Warp)(float)>
__device__ __forceinline__ float block_reduce(float v, float* scratch, float empty) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = Warp(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < nwarps ? scratch[lane] : empty;
        w = Warp(w);
        if (lane == 0) scratch[32] = w;
    }
    __syncthreads();
    const float total = scratch[32];
    __syncthreads();
    return total;
}

__device__ __forceinline__ float block_sum(float v, float* scratch) { return block_reduce<warp_sum>(v, scratch, 0.f); }
__device__ __forceinline__ float block_max(float v, float* scratch) {
    return block_reduce<warp_max>(v, scratch, -__int_as_float(0x7f800000));
}

#define NEG_INF (-__int_as_float(0x7f800000))
#define LOG2E 1.4426950408889634f

// ---------------------------------------------------------------- naming convention
//
// Kernels are written once as templates and exported under plain extern "C" names, one per storage
// type: name_f16 (T = half_t) and name_f32 (T = float), so that refengine/ops/cuda.py looks them up as
// f"{name}_{suffix}" without C++ name mangling.

// kv_cache.cu — paged KV cache management: store this step's keys/values, copy whole blocks.
//
// The paged cache (refengine/engine/kv_cache.py), per layer:
//     k_cache, v_cache [NB, BS, KVH, D]  T   slot s = block · BS + offset; a slot's [KVH, D] is contiguous
//
// write_kv_cache:  k_cache.flat_slot[slot_mapping[t]] = k[t]   (and v), for every new token t
//     k, v          [T, KVH, D]  T      token rows strided (ldk, ldv elements: views into qkv), [KVH, D]
//                                       contiguous
//     slot_mapping  [T]          int64  a negative slot skips the token (padding rows of a CUDA-graph bucket)
//   Twin: refengine.ops.reference.write_kv_cache
//
// copy_blocks:  for every layer's k and v cache, block dst[j] = block src[j]   (copy-on-write of a shared
//               block; pairs applied in one launch, so a dst must not also be a src of the same call)
//     caches  [2L]  uint64   device addresses of the 2L cache arrays (all the same shape)
//     src,dst [n]   int64
//   Twin: refengine.ops.reference.copy_blocks
//
// Versions:
//     write_kv_cache v1  one thread per element (T·KVH·D threads) — T=4096 KVH=8 D=128 fp16: 15.6 µs (72%)
//     write_kv_cache v2  one thread per 16-byte vector of a token row; needs KVH·D·sizeof(T) % 16 == 0 and
//                        16-byte aligned row strides (any dtype: the copy moves bytes) — 6.6 µs (L2-resident)
//     copy_blocks    v1  grid (n, 2L): block (j, c) copies pair j of cache c in 16-byte vectors (not timed)
//
// Launch: write v1 grid (ceil(T·KVH·D / 256)), v2 grid (ceil(T·vecs / 256)), block 256;
//         copy_blocks grid (n, 2L), block 256, thread i owns vectors i, i + 256, ...
#include "common.cuh"

template <typename T>
__device__ void write_kv_v1(const T* __restrict__ k, int ldk, const T* __restrict__ v, int ldv,
                            T* __restrict__ k_cache, T* __restrict__ v_cache, const i64* __restrict__ slots,
                            int num_tokens, int row) {              // row = KVH·D
    const i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x;        // e in [0, T·row)
    if (e >= (i64)num_tokens * row) return;
    const int t = (int)(e / row), c = (int)(e % row);
    const i64 slot = slots[t];
    if (slot < 0) return;
    k_cache[slot * row + c] = k[(i64)t * ldk + c];
    v_cache[slot * row + c] = v[(i64)t * ldv + c];
}

// strides in 16-byte vectors
__device__ void write_kv_v2(const uint4* __restrict__ k, int ldk, const uint4* __restrict__ v, int ldv,
                            uint4* __restrict__ k_cache, uint4* __restrict__ v_cache,
                            const i64* __restrict__ slots, int num_tokens, int vecs) {
    pdl_enter();
    const i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x;        // e in [0, T·vecs)
    if (e >= (i64)num_tokens * vecs) return;
    const int t = (int)(e / vecs), j = (int)(e % vecs);
    const i64 slot = slots[t];
    if (slot < 0) return;
    k_cache[slot * vecs + j] = k[(i64)t * ldk + j];
    v_cache[slot * vecs + j] = v[(i64)t * ldv + j];
}

extern "C" {
__global__ void write_kv_cache_v1_f16(const half_t* k, int ldk, const half_t* v, int ldv, half_t* kc, half_t* vc,
                                      const i64* slots, int n, int row) {
    write_kv_v1<half_t>(k, ldk, v, ldv, kc, vc, slots, n, row);
}
__global__ void write_kv_cache_v1_f32(const float* k, int ldk, const float* v, int ldv, float* kc, float* vc,
                                      const i64* slots, int n, int row) {
    write_kv_v1<float>(k, ldk, v, ldv, kc, vc, slots, n, row);
}
__global__ void write_kv_cache_v2_any(const uint4* k, int ldk, const uint4* v, int ldv, uint4* kc, uint4* vc,
                                      const i64* slots, int n, int vecs) {
    write_kv_v2(k, ldk, v, ldv, kc, vc, slots, n, vecs);
}

// block_vecs = BS·KVH·D·sizeof(T) / 16
__global__ void copy_blocks_v1_any(const unsigned long long* __restrict__ caches, const i64* __restrict__ src,
                                   const i64* __restrict__ dst, i64 block_vecs) {
    const int j = blockIdx.x;                                         // j in [0, n): the pair
    uint4* cache = reinterpret_cast<uint4*>(caches[blockIdx.y]);      // blockIdx.y in [0, 2L)
    const uint4* from = cache + src[j] * block_vecs;
    uint4* to = cache + dst[j] * block_vecs;
    for (i64 i = threadIdx.x; i < block_vecs; i += blockDim.x) to[i] = from[i];
}
}

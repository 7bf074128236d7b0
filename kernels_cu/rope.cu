// rope.cu — rotary position embedding, Hugging Face "rotate half" layout, every scaling type.
//
// Op (float32 arithmetic, i in [0, D/2)):
//     angle = float(pos[t]) · inv_freq[i]                 (one float32 product, as the reference)
//     out[t, h, i]       = x[t, h, i]·cos(angle) − x[t, h, i + D/2]·sin(angle)
//     out[t, h, i + D/2] = x[t, h, i + D/2]·cos(angle) + x[t, h, i]·sin(angle)
// The scaling type (default / linear / dynamic NTK / llama3) only changes inv_freq, which the host
// computes with refengine.ops.reference.rope_inv_freq; the kernel takes the vector as it is.
// Twins: refengine.ops.reference.rotary_embedding, and rotary_embedding_write_kv for the fused variant below
//        (rope over the q|k heads + the paged-cache store of the rotated k and of v; see kv_cache.cu)
//
// Inputs / outputs:
//     x          [T, heads, D]  T        token rows may be strided (ldx elements apart: q and k are views
//                                        into the fused qkv matmul output); heads and D contiguous
//     positions  [T]            int64
//     inv_freq   [D/2]          float32
//     out        [T, heads, D]  T        contiguous
//
// Versions:
//     v1  one thread per rotated pair (t, h, i): reads two values, writes two. cos/sin by the accurate
//         sincosf (angles reach thousands of radians; the fast __sincosf would be off by far more than
//         a float16 ulp there). T=4096, 32 heads × 128: 62.8 µs (36% of copy BW: sincosf-bound).
//
//     rope_write_kv v1: rope v1 over the H + KVH heads of q|k; the threads of k heads also store their pair of
//         rotated k and the same pair of v into the cache slot (one launch instead of two per layer).
//         Default-model decode step (12 heads × 64): 2.1 µs per layer.
//
// Launch: grid (ceil(T·heads·D/2 / 256)), block 256; thread p owns pair p = (t·heads + h)·(D/2) + i
//         (rope_write_kv: heads = H + KVH).
#include "common.cuh"

template <typename T>
__device__ void rope_v1(const T* __restrict__ x, int ldx, const i64* __restrict__ positions,
                        const float* __restrict__ inv_freq, T* __restrict__ out, int num_tokens, int heads,
                        int head_dim) {
    pdl_enter();
    const int half = head_dim / 2;
    const i64 p = (i64)blockIdx.x * blockDim.x + threadIdx.x;        // p in [0, T·heads·D/2)
    if (p >= (i64)num_tokens * heads * half) return;
    const int i = (int)(p % half);                                    // i in [0, D/2)
    const int h = (int)((p / half) % heads);                          // h in [0, heads)
    const int t = (int)(p / ((i64)half * heads));                     // t in [0, T)
    const float angle = (float)positions[t] * inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    const T* xr = x + (i64)t * ldx + h * head_dim;
    const float x1 = to_float(xr[i]), x2 = to_float(xr[i + half]);
    T* o = out + ((i64)t * heads + h) * head_dim;
    o[i] = from_float<T>(x1 * c - x2 * s);
    o[i + half] = from_float<T>(x2 * c + x1 * s);
}

// rope_write_kv: rope over the q|k heads of qkv (x = [T, H + KVH, D], rows ldx apart), and for the k heads
// (h >= H) also the paged-cache store: k_cache[slot[t], h − H] = rotated k, v_cache[slot[t], h − H] = v[t, h − H]
// (v rows ldv apart; a negative slot skips the store). One launch instead of rope + write_kv_cache.
template <typename T>
__device__ void rope_write_kv_v1(const T* __restrict__ x, int ldx, const T* __restrict__ v, int ldv,
                                 const i64* __restrict__ positions, const float* __restrict__ inv_freq,
                                 T* __restrict__ out, T* __restrict__ k_cache, T* __restrict__ v_cache,
                                 const i64* __restrict__ slots, int num_tokens, int heads, int kv_heads,
                                 int head_dim) {
    pdl_enter();
    const int half = head_dim / 2, all_heads = heads + kv_heads;
    const i64 p = (i64)blockIdx.x * blockDim.x + threadIdx.x;        // p in [0, T·(H + KVH)·D/2)
    if (p >= (i64)num_tokens * all_heads * half) return;
    const int i = (int)(p % half);                                    // i in [0, D/2)
    const int h = (int)((p / half) % all_heads);                      // h in [0, H + KVH)
    const int t = (int)(p / ((i64)half * all_heads));                 // t in [0, T)
    const float angle = (float)positions[t] * inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    const T* xr = x + (i64)t * ldx + h * head_dim;
    const float x1 = to_float(xr[i]), x2 = to_float(xr[i + half]);
    const T o1 = from_float<T>(x1 * c - x2 * s), o2 = from_float<T>(x2 * c + x1 * s);
    T* o = out + ((i64)t * all_heads + h) * head_dim;
    o[i] = o1;
    o[i + half] = o2;
    const i64 slot = slots[t];
    if (h >= heads && slot >= 0) {                                    // a k head: store k and v
        const i64 base = (slot * kv_heads + (h - heads)) * head_dim;
        const T* vr = v + (i64)t * ldv + (h - heads) * head_dim;
        k_cache[base + i] = o1;
        k_cache[base + i + half] = o2;
        v_cache[base + i] = vr[i];
        v_cache[base + i + half] = vr[i + half];
    }
}

extern "C" {
__global__ void rope_write_kv_v1_f16(const half_t* x, int ldx, const half_t* v, int ldv, const i64* pos,
                                     const float* inv_freq, half_t* out, half_t* kc, half_t* vc, const i64* slots,
                                     int n, int heads, int kv_heads, int d) {
    rope_write_kv_v1<half_t>(x, ldx, v, ldv, pos, inv_freq, out, kc, vc, slots, n, heads, kv_heads, d);
}
__global__ void rope_write_kv_v1_f32(const float* x, int ldx, const float* v, int ldv, const i64* pos,
                                     const float* inv_freq, float* out, float* kc, float* vc, const i64* slots,
                                     int n, int heads, int kv_heads, int d) {
    rope_write_kv_v1<float>(x, ldx, v, ldv, pos, inv_freq, out, kc, vc, slots, n, heads, kv_heads, d);
}
__global__ void rope_v1_f16(const half_t* x, int ldx, const i64* pos, const float* inv_freq, half_t* out,
                            int n, int heads, int d) {
    rope_v1<half_t>(x, ldx, pos, inv_freq, out, n, heads, d);
}
__global__ void rope_v1_f32(const float* x, int ldx, const i64* pos, const float* inv_freq, float* out,
                            int n, int heads, int d) {
    rope_v1<float>(x, ldx, pos, inv_freq, out, n, heads, d);
}
}

// embedding.cu — token embedding gather.
//
// Op:   out[t, :] = table[ids[t], :]                       (a copy: no arithmetic, bit-exact)
// Twin: refengine.ops.reference.embedding (which widens to float32; here the table's dtype is kept)
//
// Inputs / outputs (row-major, contiguous):
//     ids    [T]          int64   token ids; an id outside [0, V) gives a row of zeros (the wrapper cannot
//                                 check device values without a sync; the engine validates ids on arrival)
//     table  [V, hidden]  T       float16 or float32
//     out    [T, hidden]  T
//
// Versions: (H100, tools/bench_kernels.py; all numbers in docs/benchmarks.md, "Kernels (H100)")
//     v1  one thread per output element, 2-byte accesses        — 76.5 µs, 4096 × 4096 fp16 (29% of copy BW)
//     v2  one block per token, 16-byte vectors (hidden·sizeof(T) % 16 == 0) — 25.5 µs (88%)
//
// Launch:
//     v1  grid (ceil(T·hidden / 256)), block 256: thread i owns out element i
//     v2  grid (T), block min(256, vecs rounded up to 32): thread j owns 16-byte vectors j, j+blockDim, ...
#include "common.cuh"

template <typename T>
__device__ void embedding_v1(const i64* __restrict__ ids, const T* __restrict__ table, T* __restrict__ out,
                             int num_tokens, int hidden, int vocab) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;        // i in [0, T·hidden)
    if (i >= (i64)num_tokens * hidden) return;
    const int t = (int)(i / hidden), c = (int)(i % hidden);          // t in [0, T), c in [0, hidden)
    const i64 id = ids[t];
    out[i] = (id >= 0 && id < vocab) ? table[id * hidden + c] : from_float<T>(0.f);
}

// vecs = hidden·sizeof(T) / 16 sixteen-byte vectors per row
__device__ void embedding_v2(const i64* __restrict__ ids, const uint4* __restrict__ table, uint4* __restrict__ out,
                             int vecs, int vocab) {
    pdl_enter();
    const int t = blockIdx.x;                                         // t in [0, T)
    const i64 id = ids[t];
    const bool ok = id >= 0 && id < vocab;
    for (int j = threadIdx.x; j < vecs; j += blockDim.x) {            // j in [0, vecs)
        out[(i64)t * vecs + j] = ok ? table[id * vecs + j] : make_uint4(0, 0, 0, 0);
    }
}

extern "C" {
__global__ void embedding_v1_f16(const i64* ids, const half_t* table, half_t* out, int n, int h, int v) {
    embedding_v1<half_t>(ids, table, out, n, h, v);
}
__global__ void embedding_v1_f32(const i64* ids, const float* table, float* out, int n, int h, int v) {
    embedding_v1<float>(ids, table, out, n, h, v);
}
__global__ void embedding_v2_any(const i64* ids, const uint4* table, uint4* out, int vecs, int vocab) {
    embedding_v2(ids, table, out, vecs, vocab);
}
}

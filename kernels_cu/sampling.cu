// sampling.cu — choosing the next token on the GPU, one block per row of logits.
//
// Twins (refengine/ops/reference.py, built on refengine/engine/sampler.py, whose order and semantics
// these follow — Hugging Face / vLLM order):
//     apply_penalties_rows   repetition penalty on every token seen (prompt + output): positive logits
//                            divided by it, negative multiplied; then presence + frequency·count subtracted
//                            for tokens of the output
//     sample_rows            temperature -> top-k -> top-p -> min-p -> inverse-CDF draw with the row's
//                            uniform number u (drawn on the host from the request's seeded generator:
//                            numpy's Generator.choice draws the same single u); greedy rows (temperature 0
//                            or top-k 1): the first index of the maximum
//     argmax_rows            the first index of each row's maximum (greedy rows, nothing else asked for)
//     logprobs_rows          log_softmax of the raw logits: the chosen token's value and the top n (ties:
//                            lower token id first)
//
//     logits     [R, V]  float32   sample_rows works in place: cut tokens become −inf, kept ones x/T
//     ids, counts, offsets          penalties, CSR by row: row r's distinct seen tokens are
//                                   ids[offsets[r] : offsets[r+1]] (int32), counts = times in the output
//     per-row parameters [R]: repetition, presence, frequency, temperature, top_p, min_p, u (float32),
//                             top_k (int32)
//     tokens     [R]     int64     chosen ids
//
// How the cuts are found without sorting the vocabulary (radix select, 4 passes of 8 bits over the
// float's bit pattern, mapped so that unsigned order = float order):
//     top-k: the k-th largest value kth = the largest key with count(key ≥ kth) ≥ k; cut x < kth (ties kept,
//            as the reference's np.partition threshold does)
//     top-p: with p = softmax(x), the cut value v = the largest p with mass(p ≥ v) ≥ top_p; keep p > v and,
//            among p == v, the first ties by index until the mass reaches top_p (the reference sorts stably)
// Per pass the block builds a 256-bin histogram (count or probability mass) of the candidates' next byte
// in shared memory, then one thread walks the bins from the top.
// Float atomics make the mass histogram's rounding order-dependent: rows whose cut sits within ~1e-7 of
// a boundary may cut differently from the float64 reference (the tests keep clear of such ties).
//
// Versions:
//     v1  everything above, block 1024 threads, the row re-read from global memory (L2) on each pass.
//         R=32 rows, V=49152: greedy 30 µs, top-p 0.9 338 µs, top-k 50 + top-p 0.9 652 µs (the mass
//         histograms' shared-memory float atomics collide: most logits share their top byte); argmax_rows 15 µs.
//     v2  v1 with one histogram per warp (32 KB of shared memory), summed per bin in warp order, and the bins
//         walked by one warp (a scan over lanes) instead of one thread: the atomics of a pass spread over 32
//         addresses instead of one or two. The default. R=32, V=49152: top-p 0.9 208 µs (v1 336), top-k 50 +
//         top-p 0.9 316 µs (v1 648); one row alone: 203 / 306 µs (a row is one block: ~12 passes over it).
//
// Launch: grid (R), block 1024 (sample_rows, argmax_rows, logprobs_rows) or 256 (apply_penalties_rows).
// Thread j visits elements j, j + 1024, ... (coalesced) for reductions and histograms, and the contiguous
// range [j·C, (j+1)·C), C = ceil(V / 1024), for the scans that need index order.
#include "common.cuh"

#define SAMPLE_THREADS 1024

__device__ __forceinline__ u32 order_key(float f) {             // monotone: a < b  <=>  key(a) < key(b)
    const u32 b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_value(u32 k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// probability of logit x in a row with maximum mx and 1 / sum(exp(x - mx)) = inv_z; every pass uses this one
// expression, so the same element always gets bit-identical values
__device__ __forceinline__ float prob(float x, float mx, float inv_z) { return expf(x - mx) * inv_z; }

// exclusive prefix sum over the block of one value per thread; scratch: 33 floats; returns the total in *total
__device__ float block_exclusive_scan(float v, float* scratch, float* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    float incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float n = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += n;
    }
    if (lane == 31) scratch[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        float w = lane < nwarps ? scratch[lane] : 0.f;
        float wi = w;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const float n = __shfl_up_sync(0xffffffffu, wi, o);
            if (lane >= o) wi += n;
        }
        if (lane < nwarps) scratch[lane] = wi - w;                    // exclusive warp offsets
        if (lane == 31) scratch[32] = wi;
    }
    __syncthreads();
    const float result = scratch[warp] + incl - v;
    *total = scratch[32];
    __syncthreads();
    return result;
}

// (value, index) argmax with ties to the lower index, over elements strictly "below" (pv, pi) in the order
// (value descending, index ascending) — pass pv = +inf, pi = -1 for a plain argmax
__device__ void block_argmax(const float* __restrict__ row, int V, float pv, int pi, float* sv, int* si,
                             float* out_v, int* out_i) {
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float v = row[i];
        const bool below = v < pv || (v == pv && i > pi);
        if (below && (v > bv || (v == bv && i < bi))) { bv = v; bi = i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sv[warp] = bv; si[warp] = bi; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
            if (sv[w] > bv || (sv[w] == bv && si[w] < bi)) { bv = sv[w]; bi = si[w]; }
        sv[32] = bv; si[32] = bi;
    }
    __syncthreads();
    *out_v = sv[32];
    *out_i = si[32];
    __syncthreads();
}

// v2's walk of the 256 bins from the top, one warp: lane l holds bins 255 − 8l − j (j < 8), a warp scan gives
// each lane the total above its bins, and the first lane whose bins reach `target` picks the bin (as v1's
// thread 0 does, up to the order of the float additions). None reaches it (rounding): the lowest non-empty
// bin, with everything above it.
__device__ void walk_bins_warp(const float* hist, int lane, float* above, float target, u32* prefix, u32* mask,
                               int shift, int* chosen) {
    float v[8], local = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) { v[j] = hist[255 - 8 * lane - j]; local += v[j]; }
    float incl = local;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float n = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += n;
    }
    const float start = *above + (incl - local);                      // the keys in the bins above this lane's
    float run = start;
    int found = -1, lowest = -1;
    float above_found = start;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        if (found < 0 && v[j] > 0.f && run + v[j] >= target) { found = j; above_found = run; }
        if (v[j] > 0.f && found < 0) lowest = j;
        run += v[j];
    }
    const unsigned hit = __ballot_sync(0xffffffffu, found >= 0);
    int src, j;
    float total_above;
    if (hit) {
        src = __ffs(hit) - 1;                                         // the highest bins come first
        j = __shfl_sync(0xffffffffu, found, src);
        total_above = __shfl_sync(0xffffffffu, above_found, src);
    } else {
        float above_lowest = start;                                   // lowest non-empty bin of this lane
        for (int i = 0; i < lowest; ++i) above_lowest += v[i];
        const unsigned any = __ballot_sync(0xffffffffu, lowest >= 0);
        src = any ? 31 - __clz(any) : 0;                              // the lowest bins are the last lane's;
        j = any ? __shfl_sync(0xffffffffu, lowest, src) : 0;          // all empty: bin 255, as v1
        total_above = __shfl_sync(0xffffffffu, above_lowest, src);
    }
    if (lane == 0) {
        const int bin = 255 - 8 * src - j;
        *chosen = bin;
        *above = total_above;
        *prefix |= (u32)bin << shift;
        *mask |= 0xFFu << shift;
    }
}

// one 8-bit radix pass: among elements whose key matches `prefix` on `mask`, histogram the byte at `shift`
// (weight = 1 for counts, or the element's probability), then find from the top the bin where the running
// total (starting at *above) first reaches `target`. Updates prefix/mask/*above. Counts are kept in float
// (exact up to 2^24 elements).
//     v1 (PRIVATE = false): one 256-bin histogram for the block (`hist`: 256 floats), walked by thread 0;
//     v2 (PRIVATE = true):  one histogram per warp (`hist`: 32·256 floats), summed per bin, walked by warp 0 —
//         most keys share their top byte, so v1's shared-memory atomics all hit one or two addresses.
template <bool MASS, bool PRIVATE>
__device__ void radix_pass(const float* __restrict__ row, int V, float mx, float inv_z, int shift, u32* prefix,
                           u32* mask, float* above, float target, float* hist, int* chosen) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int copies = PRIVATE ? (int)(blockDim.x >> 5) : 1;
    for (int i = threadIdx.x; i < 256 * copies; i += blockDim.x) hist[i] = 0.f;
    __syncthreads();
    float* const mine = PRIVATE ? hist + 256 * warp : hist;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float x = row[i];
        const float val = MASS ? (x == NEG_INF ? 0.f : prob(x, mx, inv_z)) : x;
        const u32 key = MASS ? __float_as_uint(val) : order_key(val);
        if ((key & *mask) == *prefix) atomicAdd(&mine[(key >> shift) & 0xFFu], MASS ? val : 1.f);
    }
    __syncthreads();
    if (PRIVATE) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) {           // warp order: the same sum every run
            float t = hist[b];
            for (int w = 1; w < copies; ++w) t += hist[256 * w + b];
            hist[b] = t;
        }
        __syncthreads();
        if (warp == 0) walk_bins_warp(hist, lane, above, target, prefix, mask, shift, chosen);
    } else if (threadIdx.x == 0) {
        float run = *above;
        int bin = -1;
        for (int b = 255; b >= 0; --b) {
            if (hist[b] > 0.f && run + hist[b] >= target) { bin = b; break; }
            run += hist[b];
        }
        if (bin < 0) {                                                // rounding left us short: keep them all
            run = *above;
            for (bin = 0; bin < 255 && hist[bin] == 0.f; ++bin) {}
            for (int b = 255; b > bin; --b) run += hist[b];
        }
        *chosen = bin;
        *above = run;                                                 // total of the keys above the chosen bin
        *prefix |= (u32)bin << shift;
        *mask |= 0xFFu << shift;
    }
    __syncthreads();
}

template <bool PRIVATE>
__device__ void sample_row(float* __restrict__ logits, int V, const float* __restrict__ temperature,
                           const int* __restrict__ top_k, const float* __restrict__ top_p,
                           const float* __restrict__ min_p, const float* __restrict__ uniforms,
                           i64* __restrict__ tokens) {
    __shared__ float hist[PRIVATE ? 256 * SAMPLE_THREADS / 32 : 256];
    __shared__ float sv[33];
    __shared__ int si[33];
    __shared__ u32 prefix, mask;
    __shared__ float above;
    __shared__ int chosen;
    const int r = blockIdx.x, tid = threadIdx.x;
    float* row = logits + (i64)r * V;
    const float temp = temperature[r];
    const int k = top_k[r];

    if (temp == 0.f || k == 1) {                                      // greedy
        float bv;
        int bi;
        block_argmax(row, V, __int_as_float(0x7f800000), -1, sv, si, &bv, &bi);
        if (tid == 0) tokens[r] = bi;
        return;
    }
    for (int i = tid; i < V; i += blockDim.x) row[i] = row[i] / temp;
    __syncthreads();

    if (k > 0 && k < V) {                                             // top-k: radix-select the k-th largest
        if (tid == 0) { prefix = 0; mask = 0; above = 0.f; }
        __syncthreads();
        for (int shift = 24; shift >= 0; shift -= 8)
            radix_pass<false, PRIVATE>(row, V, 0.f, 0.f, shift, &prefix, &mask, &above, (float)k, hist, &chosen);
        const float kth = key_value(prefix);
        for (int i = tid; i < V; i += blockDim.x)
            if (row[i] < kth) row[i] = NEG_INF;
        __syncthreads();
    }

    float mx = NEG_INF;
    for (int i = tid; i < V; i += blockDim.x) mx = fmaxf(mx, row[i]);
    mx = block_max(mx, sv);
    float z = 0.f;
    for (int i = tid; i < V; i += blockDim.x) z += row[i] == NEG_INF ? 0.f : expf(row[i] - mx);
    z = block_sum(z, sv);
    const float inv_z = 1.f / z;
    const float tp = top_p[r], mp = min_p[r];

    const int chunk = (V + SAMPLE_THREADS - 1) / SAMPLE_THREADS;      // contiguous range per thread
    const int c0 = min(tid * chunk, V), c1 = min(c0 + chunk, V);
    if (tp < 1.f) {                                                   // top-p
        if (tid == 0) { prefix = 0; mask = 0; above = 0.f; }
        __syncthreads();
        for (int shift = 24; shift >= 0; shift -= 8)
            radix_pass<true, PRIVATE>(row, V, mx, inv_z, shift, &prefix, &mask, &above, tp, hist, &chosen);
        const float v = __uint_as_float(prefix);                      // the cut probability
        const float need = v > 0.f ? ceilf((tp - above) / v) : 1.f;   // ties at v to keep, in index order
        float ties = 0.f;
        for (int i = c0; i < c1; ++i)
            if (row[i] != NEG_INF && prob(row[i], mx, inv_z) == v) ties += 1.f;
        float total;
        float rank = block_exclusive_scan(ties, sv, &total);
        for (int i = c0; i < c1; ++i) {
            if (row[i] == NEG_INF) continue;
            const float p = prob(row[i], mx, inv_z);
            if (p < v) row[i] = NEG_INF;
            else if (p == v) { if (rank >= fmaxf(need, 1.f)) row[i] = NEG_INF; rank += 1.f; }
        }
        __syncthreads();
    }
    if (mp > 0.f) {                                                   // min-p, on the same probabilities
        for (int i = tid; i < V; i += blockDim.x)
            if (row[i] != NEG_INF && prob(row[i], mx, inv_z) < mp * inv_z) row[i] = NEG_INF;
        __syncthreads();
    }

    // inverse CDF in index order: the first i whose inclusive prefix of weights exceeds u · total
    float mine = 0.f;
    for (int i = c0; i < c1; ++i) mine += row[i] == NEG_INF ? 0.f : expf(row[i] - mx);
    float total;
    const float before = block_exclusive_scan(mine, sv, &total);
    const float target = uniforms[r] * total;
    if (tid == 0) si[32] = -1;
    __syncthreads();
    if (before <= target && target < before + mine) {
        float run = before;
        int pick = -1;
        for (int i = c0; i < c1; ++i) {
            if (row[i] == NEG_INF) continue;
            run += expf(row[i] - mx);
            pick = i;
            if (run > target) break;
        }
        atomicMax(&si[32], pick);
    }
    __syncthreads();
    if (tid == 0) {
        int pick = si[32];
        if (pick < 0)                                                 // rounding put u·total past the end
            for (int i = V - 1; i >= 0; --i) if (row[i] != NEG_INF) { pick = i; break; }
        tokens[r] = pick;
    }
}

extern "C" {
__global__ void apply_penalties_rows_v1(float* __restrict__ logits, int V, const int* __restrict__ ids,
                                        const int* __restrict__ counts, const int* __restrict__ offsets,
                                        const float* __restrict__ repetition, const float* __restrict__ presence,
                                        const float* __restrict__ frequency) {
    const int r = blockIdx.x;                                         // r in [0, R)
    const float rep = repetition[r], pres = presence[r], freq = frequency[r];
    for (int i = offsets[r] + threadIdx.x; i < offsets[r + 1]; i += blockDim.x) {
        float* l = logits + (i64)r * V + ids[i];                      // ids are distinct within a row
        float v = *l;
        if (rep != 1.f) v = v > 0.f ? v / rep : v * rep;
        if (counts[i] > 0) v -= pres + freq * (float)counts[i];
        *l = v;
    }
}

__global__ void __launch_bounds__(SAMPLE_THREADS) sample_rows_v1(
    float* __restrict__ logits, int V, const float* __restrict__ temperature, const int* __restrict__ top_k,
    const float* __restrict__ top_p, const float* __restrict__ min_p, const float* __restrict__ uniforms,
    i64* __restrict__ tokens) {
    sample_row<false>(logits, V, temperature, top_k, top_p, min_p, uniforms, tokens);
}

__global__ void __launch_bounds__(SAMPLE_THREADS) sample_rows_v2(
    float* __restrict__ logits, int V, const float* __restrict__ temperature, const int* __restrict__ top_k,
    const float* __restrict__ top_p, const float* __restrict__ min_p, const float* __restrict__ uniforms,
    i64* __restrict__ tokens) {
    sample_row<true>(logits, V, temperature, top_k, top_p, min_p, uniforms, tokens);
}

// greedy decoding's whole sampler: the first index of each row's maximum (no parameters to upload)
__global__ void __launch_bounds__(SAMPLE_THREADS) argmax_rows_v1(const float* __restrict__ logits, int V,
                                                                 i64* __restrict__ tokens) {
    __shared__ float sv[33];
    __shared__ int si[33];
    float bv;
    int bi;
    block_argmax(logits + (i64)blockIdx.x * V, V, __int_as_float(0x7f800000), -1, sv, si, &bv, &bi);
    if (threadIdx.x == 0) tokens[blockIdx.x] = bi;
}

__global__ void __launch_bounds__(SAMPLE_THREADS) logprobs_rows_v1(
    const float* __restrict__ logits, int V, const i64* __restrict__ tokens, int num_top,
    float* __restrict__ chosen, i64* __restrict__ top_ids, float* __restrict__ top_logprobs) {
    __shared__ float sv[33];
    __shared__ int si[33];
    const int r = blockIdx.x, tid = threadIdx.x;
    const float* row = logits + (i64)r * V;
    float mx = NEG_INF;
    for (int i = tid; i < V; i += blockDim.x) mx = fmaxf(mx, row[i]);
    mx = block_max(mx, sv);
    float z = 0.f;
    for (int i = tid; i < V; i += blockDim.x) z += expf(row[i] - mx);
    z = block_sum(z, sv);
    const float lse = mx + logf(z);
    if (tid == 0) chosen[r] = row[tokens[r]] - lse;
    float pv = __int_as_float(0x7f800000);
    int pi = -1;
    for (int j = 0; j < num_top; ++j) {                               // next best below the previous pick
        block_argmax(row, V, pv, pi, sv, si, &pv, &pi);
        if (tid == 0) { top_ids[(i64)r * num_top + j] = pi; top_logprobs[(i64)r * num_top + j] = pv - lse; }
    }
}
}

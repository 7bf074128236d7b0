// w4a16_gemv_bulk.cu — the decode-time W4A16 GEMV with its weights brought into shared memory by bulk copies
// (linear_w4a16 v9, sm_90+, one row of x):
//     y = x @ W.T (+ bias),  W[n, k] = (q[n, k] − zero[n, k/g]) · scale[n, k/g],  float32 accumulation.
// Twin: refengine.ops.reference.linear_w4a16.
//
//     x        [1, K]     float16   16-byte aligned
//     qweight  [N, K/8]   uint32    int4 codes, 8 per word, lowest nibble = lowest k (refengine/quant/primitives.py)
//     scales   [N, K/g]   float16   16-byte aligned
//     zeros    [N, K/g]   float16   integer zero points 0..15, 16-byte aligned
//     bias     [N]        float16   optional
//     y        [1, N]     float16
//     K % 32 == 0, g in {32, 64, 128}, N % RB == 0 (RB = rows per block: 8, 16 or 32)
//
// Why: v8 (w4a16_gemv.cu) keeps each warp's next loads in a ring of registers. At 4096 × 4096 that is too few
// bytes in flight (55% of copy bandwidth), and its register-heavy persistent blocks leave no room for the next
// kernel's blocks, which programmatic dependent launch (PDL, common.cuh) would start early to load their own
// weights. Here a block asks for all of its weights at once, with a handful of TMA bulk copies
// (cp.async.bulk … mbarrier::complete_tx) issued by one thread: no registers hold loads in flight, the copy
// engine keeps every byte of every resident block in flight, and the blocks are small, so that the whole
// 4096² GEMV (256 blocks of 16 rows) and the next kernel's early blocks are resident together.
//
//     block  W warps (4 or 8), RB consecutive output rows n0 = blockIdx.x · RB + [0, RB); grid N / RB,
//            non-persistent: a block streams its rows once and exits
//     warp   w owns R = RB / W consecutive rows n0 + w·R + [0, R) and all of K: it waits only for its own copy
//     lane   takes the 16-byte pieces c = l, l + 32, … of each of its R rows (one piece = 32 consecutive k,
//            inside one quantization group since g >= 32); it reads the piece's 32 x once and uses them for
//            all R rows; a warp-shuffle sum per row, lane r writes y[n0 + w·R + r]
//
// Shared memory (dynamic; refengine/ops/cuda.py w4a16_v9_smem computes the same size, the kernel traps if given less):
//
//     [0, 128)       W + 1 mbarriers: bar[w] (w < W) completes when warp w's rows have landed, bar[W] with the
//                    scales and zeros of the block
//     qs  RB·K/2     the block's qweight rows, as in global memory (warp w's R rows are one contiguous copy)
//     ss  RB·K/g·2   the block's scales rows                  (one copy; RB·K/g·2 is a multiple of 16)
//     zs  RB·K/g·2   the block's zeros rows                   (one copy)
//     xs  K·2        x (v9 with x staged, the default), written by the whole block after pdl_wait()
//
// x is staged XOR-swizzled: 16-byte chunk j (k = 32c + 8j + [0, 8)) of piece c sits at chunk 4c + (j ^ ((c >> 1) & 3)).
// When the 8 lanes of a quarter warp read chunk j of their pieces c0 … c0 + 7 (64 bytes apart), the swizzle puts
// them in 8 different 16-byte bank groups: one wavefront per quarter warp, as for the qweight pieces (16 bytes
// apart, consecutive). Unswizzled, lanes c and c + 2 would hit the same banks (a 4-way conflict). The _xg kernels
// read x from global memory through L1 instead (v8's way): K·2 bytes less shared memory per block.
//
// Order of events in a block:
//     thread 0: init the barriers, fence them for the async proxy, arm each with its byte count (expect_tx) and
//               issue the bulk copies (L2 evict_first: each weight byte is read once per decode step)
//     all:      __syncthreads (the barriers exist before anyone waits); pdl_wait() — everything above touches
//               only constant weights, so it overlaps the kernel before; pdl_launch_dependents(); stage x
//     warp w:   wait for bar[W] and bar[w] (parity 0: each barrier completes once), then compute its rows,
//               two pieces per lane unrolled (loads of the second issue before the math of the first)
// A warp starts computing only when all of its rows have landed, so the math of the warps whose copies land
// last is a tail after the memory traffic; with PDL the next kernel's early blocks stream their weights under it.
// Resources (nvcc 13, sm_90, no spills): registers RB 16 W 4: 72, RB 8 W 4: 56, RB 32 W 8: 64; shared memory at
// 4096 × 4096, g128: 43 KB (RB 16; 35 KB x through L1), at K = 11008: 67 KB (RB 8; 46 KB).
//
// Math per piece: piece_math_h2_x (w4a16_piece.cuh), v8's float16-pair arithmetic instruction for instruction —
// LOP3 nibble pairs into 1024 + q, HSUB2/HFMA2 to the exact (q − zero), HFMA2 with PRMT-regrouped x into one
// float16 partial per 8-weight word (at most 4 products), added in float32, times the scale in float32 once
// per piece. Each lane sees the same pieces in the same order as v8's lane does (c = l, l + 32, …), and the
// warp sums are the same shuffles: v9 gives v8's bits, with v8's bound |error| <= 2^-9 · Σ|x·w| plus the
// output's rounding.
//
// Versions: this file holds linear_w4a16 v9 (v1 … v6 are in w4a16_gemm.cu, v7 and v8 in w4a16_gemv.cu).
//     v9  weights by TMA bulk copies into shared memory, RB rows per block over W warps (w4a16_v9_r{RB}_w{W}_f16:
//         x staged in shared memory; _xg: x through L1). Bulk copies need sm_90: below it the kernels trap and
//         the registry never launches them.
// Measured on an H100 (g128, M = 1, graphs of 20 launches with PDL, inputs rotated past L2; tools/bench_kernels.py):
//     4096²: 4.4 µs, 68% of copy BW (v8 5.4, 55%) at RB 16 W 4 or RB 32 W 8; RB 8: 5.2; RB 16 W 8: 5.0; x through
//     L1: 6.0; without the unrolled pair of pieces 4.9; without evict_first 4.55; next kernel triggered before
//     pdl_wait (instead of after): 6.9. 11008 × 4096: 12.1 (RB 32 W 8) or 11.4 (RB 16, x through L1) against v8's
//     11.3; 4096 × 11008: 12.0 against v8's 10.7. Inside the decode graphs it loses: its 43 KB blocks cannot start
//     beside the kernel before them as v8's can (llama2-7b W4A16 replay 2.355 vs 2.319 ms; default-model shape
//     1160 vs 1343 tok/s), so refengine/ops/cuda.py w4a16_order keeps v8; v9 stays a tested rung of the ladder.
//
// Launch: grid (N / RB), block 32·W, dynamic shared memory w4a16_v9_smem(RB, K, g, x staged) bytes (above 48 KB
// the kernel opts in); refengine/ops/cuda.py W4A16_V9 picks (RB, W). May be launched with programmatic dependence
// (refengine/ops/pdl.py): x and y are touched only after pdl_wait().
#include "common.cuh"
#include "w4a16_piece.cuh"

// ---------------------------------------------------------------- mbarriers and bulk copies (sm_90+)
// Addresses are 32-bit shared-memory addresses (smem_addr). Below sm_90 these compile to nothing: the kernels
// trap before reaching them.

__device__ __forceinline__ void mbar_init(u32 bar, u32 arrivals) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(arrivals) : "memory");
#endif
}
// the barrier inits (generic proxy writes) become visible to the copy engine (the async proxy), which
// completes transactions on them
__device__ __forceinline__ void mbar_fence_init() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;\n\tfence.proxy.async.shared::cta;" ::: "memory");
#endif
}
// one arrival that also announces `bytes` of copies to come: the phase completes when they have all landed
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
// spin until the barrier's phase `parity` has completed (its copies' bytes are then visible to this thread)
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    u32 done = 0;
    while (!done)
        asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
                     "selp.u32 %0, 1, 0, p;\n\t}"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
#endif
}
// an L2 policy for data read once: evicted first
__device__ __forceinline__ unsigned long long l2_evict_first() {
    unsigned long long policy = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
#endif
    return policy;
}
// global -> shared, `bytes` (a multiple of 16; both addresses 16-byte aligned), completing on `bar`
__device__ __forceinline__ void bulk_copy_g2s(u32 dst, const void* src, u32 bytes, u32 bar,
                                              unsigned long long policy) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;"
        ::"r"(dst), "l"(src), "r"(bytes), "r"(bar), "l"(policy)
        : "memory");
#endif
}

__device__ __forceinline__ u32 dynamic_smem_bytes() {
    u32 n;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(n));
    return n;
}

// ---------------------------------------------------------------- the kernel

constexpr int V9_HEAD = 128;                           // bytes before qs: the W + 1 mbarriers (W <= 15), padded

// x staged in shared memory (XS) holds chunk i = 4c + j (k = 8i + [0, 8)) at 4c + (j ^ ((c >> 1) & 3))
__device__ __forceinline__ int x_slot(int c, int j) { return 4 * c + (j ^ ((c >> 1) & 3)); }

template <int RB, int W, bool XS>
__device__ void w4a16_gemv_bulk(const half_t* __restrict__ x, const u32* __restrict__ qw,
                                const half_t* __restrict__ scales, const half_t* __restrict__ zeros, int group,
                                const half_t* __restrict__ bias, half_t* __restrict__ y, int N, int K) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    __trap();                                          // bulk copies need sm_90 (the wrapper never launches below)
#endif
    static_assert(W <= 15 && RB % W == 0, "W + 1 barriers fit V9_HEAD; whole rows per warp");
    constexpr int R = RB / W;                          // rows per warp (W warps)
    extern __shared__ __align__(128) unsigned char smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n0 = blockIdx.x * RB;                    // the block's rows [n0, n0 + RB), N % RB == 0
    const int gpr = K / group, gsh = 26 - __clz(group);   // groups per row; log2(group / 32): piece c in group c >> gsh
    const u32 row_bytes = K / 2, sz_bytes = RB * gpr * 2;
    unsigned char* const qs = smem + V9_HEAD;
    half_t* const ss = reinterpret_cast<half_t*>(qs + RB * row_bytes);
    half_t* const zs = ss + RB * gpr;
    uint4* const xs = reinterpret_cast<uint4*>(zs + RB * gpr);
    const u32 bars = smem_addr(smem);                  // bar b at bars + 8b: b < W warp b's rows, b = W scales/zeros

    if (threadIdx.x == 0) {
        if (dynamic_smem_bytes() < V9_HEAD + RB * row_bytes + 2 * sz_bytes + (XS ? 2 * K : 0)) __trap();
        for (int b = 0; b <= W; ++b) mbar_init(bars + 8 * b, 1);
        mbar_fence_init();
        const unsigned long long policy = l2_evict_first();    // (without: 4.55 instead of 4.4 µs at 4096²)
        mbar_arrive_expect_tx(bars + 8 * W, 2 * sz_bytes);
        bulk_copy_g2s(smem_addr(ss), scales + (i64)n0 * gpr, sz_bytes, bars + 8 * W, policy);
        bulk_copy_g2s(smem_addr(zs), zeros + (i64)n0 * gpr, sz_bytes, bars + 8 * W, policy);
        for (int w = 0; w < W; ++w) {                  // warp w's R rows: R·K/2 contiguous bytes
            mbar_arrive_expect_tx(bars + 8 * w, R * row_bytes);
            bulk_copy_g2s(smem_addr(qs + w * R * row_bytes), qw + (i64)(n0 + w * R) * (K / 8), R * row_bytes,
                          bars + 8 * w, policy);
        }
    }
    __syncthreads();                                   // the barriers are initialised before anyone waits on them
    pdl_wait();                                        // the copies above read constant weights; x and y are not
    pdl_launch_dependents();                           // (before pdl_wait: 6.9 instead of 4.4 µs at 4096², H100)
    if (XS) {                                          // stage x, swizzled: chunk i in [0, K/8), all in flight at once
        for (int i = threadIdx.x; i < K / 8; i += blockDim.x)
            cp_async16(smem_addr(xs + x_slot(i >> 2, i & 3)), x + 8 * i, 16);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
    }
    mbar_wait(bars + 8 * W, 0);
    mbar_wait(bars + 8 * warp, 0);

    const uint4* q = reinterpret_cast<const uint4*>(qs + warp * R * row_bytes);   // row r: q + r·K/32, piece c
    const int row0 = warp * R;                         // the warp's first row within the block
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
#pragma unroll 2                                       // (2 or 4: equal; none: 4.9 instead of 4.4 µs at 4096²)
    for (int c = lane; c < K / 32; c += 32) {          // c: this lane's pieces, as v8's lane walks them
        uint4 xv[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) xv[j] = XS ? xs[x_slot(c, j)] : ldg16(x + 32 * c + 8 * j);
        W4Piece<R> p;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            p.q[r] = q[r * (K / 32) + c];
            p.s[r] = ss[(row0 + r) * gpr + (c >> gsh)];
            p.z[r] = zs[(row0 + r) * gpr + (c >> gsh)];
        }
        piece_math_h2_x<R>(p, xv, acc);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float v = warp_sum(acc[r]);
        const int n = n0 + row0 + r;
        if (lane == r) y[n] = from_float<half_t>(bias ? v + to_float(bias[n]) : v);
    }
}

// Exported as w4a16_v9_r{RB}_w{W}_f16 (x staged in shared memory) and w4a16_v9_r{RB}_w{W}_xg_f16 (x through L1).
// refengine/ops/cuda.py W4A16_V9_RB picks (RB, W); the other instantiations are tuning points (W4A16_V9_TUNE).
#define W4A16_V9(RB, W, XS, SUFFIX)                                                                                  \
    __global__ void __launch_bounds__(32 * W) w4a16_v9_r##RB##_w##W##SUFFIX##_f16(                                   \
        const half_t* x, const u32* qw, const half_t* scales, const half_t* zeros, int group, const half_t* bias,    \
        half_t* y, int N, int K) {                                                                                   \
        w4a16_gemv_bulk<RB, W, XS>(x, qw, scales, zeros, group, bias, y, N, K);                                      \
    }

extern "C" {
W4A16_V9(16, 4, true, )
W4A16_V9(8, 4, true, )
W4A16_V9(32, 8, true, )
W4A16_V9(16, 4, false, _xg)
}

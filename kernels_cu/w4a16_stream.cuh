// w4a16_stream.cuh — the streaming W4A16 kernels of w4a16_gemm.cu (v5 the GEMV, v6 the GEMM): every
// multiprocessor streams its share of the packed weights through a cp.async ring in shared memory, so the
// bytes in flight never drain between output tiles, and the math runs on the tensor cores (mma.sync
// m16n8k16, "swap AB" as in mma_linear.cuh: W is the A operand, 16 output features; x is B, 8 rows).
//
//     y [M, N] = x [M, K] @ W.T (+ bias),   W[n, k] = (q[n, k] − zero[n, k/g]) · scale[n, k/g]
//     (layouts: w4a16_gemm.cu's header; K % 32 == 0, g in {32, 64, 128})
//
// Work decomposition (a function of the shapes only, so a captured graph replays the same launch):
//
//     tile   BN output features × BM rows of x:  BN = 16·NA·WN, BM = 8·MB;  t = nb·Tm + mb (m fastest: the
//            tiles after one another reuse the same weights from L2)
//     chunk  128 consecutive k;  C = ceil(K / 128) per row
//     slab   KC = WK·CPW chunks of one tile: one pipeline stage;  SC = ceil(C / KC) slabs per tile
//
//     The S = T·SC slabs, tile-major, are cut into gridDim.x contiguous ranges of whole granules — a granule
//     is one slab ("split mode": every block streams the same bytes) or one tile ("tile mode": no tile is
//     shared) — one range per block. A block walks its range slab by slab: cp.async keeps STAGES − 1 slabs
//     in flight while it computes one, across tile boundaries, so the loads never drain.
//
// Block: WN × WK warps; warp (wn, wk) owns A tiles [wn·NA, +NA) of the tile and chunks wk, wk + WK, .. (CPW
// of them) of each slab, for all MB B tiles: NA·MB·8 MMAs per chunk into NA·MB float32 fragments.
//
//   v5 (GEMV, M <= 8; NA = MB = WN = 1, WK = 8, CPW = 2, XFULL): a slab is 16 rows × 2048 k = 16 KB of weights
//     (each row's 1 KB contiguous). The weight math is cut to 2 instructions per pair of weights:
//       - lane t owns the words t, t + 4, t + 8, t + 12 of its row's 16-word chunk (one ldmatrix.x4 per 8 rows
//         hands them out), so the 4 lanes of MMA 2j and 2j + 1 hold words 4j .. 4j + 3 = 32 consecutive k:
//         every MMA lies inside one quantization group;
//       - so the MMA runs on the raw codes, LOP3 (1024 + q) as float16 (exact), and the group's scale and zero
//         are applied once per group to the float32 result:
//             Σ (q − z)·s·x = s·(Σ (1024 + q)·x − (1024 + z)·X_g),   X_g = Σ_{k in group} x_k
//         (the product (1024 + q)·x is exact in float32; the tensor core adds 16 of them at a time; the 8 MMAs
//         of a chunk go to 4 accumulators, so no chain is longer than 2);
//       - x is held whole in shared memory, each 16-byte piece stored as (x0,x4, x1,x5, x2,x6, x3,x7) — the
//         pairs the LOP3 makes — with its group sums X [G][8] beside it; the silu variant (ACT) computes
//         x = silu(gate)·up there from gate_up.
//     Measured slower than v3 (w4a16_gemm.cu): at 11008 × 4096 the loads alone take 12.8 µs (the empty loop
//     4.0), but the per-slab work (barrier, producer, MMAs, folds) adds ~9 µs instead of hiding behind them.
//   v6 (GEMM; NA = 2, MB = 2/4/8, WN = 4, WK = CPW = 1): a slab is 128 rows × 128 k plus the BM × 128 slice of
//     x (cp.async, natural order). Lane t owns the 32 consecutive k [32t, +32) of each chunk (one LDS.128 per
//     row), dequantizes pairs with LOP3 + HSUB2 + HMUL2 (mma_linear.cuh) — the cost is shared by MB B tiles —
//     and permutes x with PRMT.
//
// Shared memory (dynamic; refengine/ops/cuda.py W4Stream.smem computes the same bytes; the kernel traps if
// given fewer):
//     STAGES × { W [KC][BN][64 B]         v5: piece i of row r at slot i ^ (r/2 % 4) (ldmatrix without
//                                          bank conflicts); v6: natural order (lane t reads piece t)
//                S [2][BN][2·KC + 1] u32   the 4-byte words that hold each row's scales (then zeros) of the slab
//                X [BM][KC·256 + 32 B]     (v6) x rows; piece s of a chunk at s ^ (s/8 % 2), rows 32 bytes apart }
//     RED [WK][WN][NA·MB·4][32] float      (WK > 1) the warps' fragments, summed in warp order
//     XF  [M][C·256 + 64 B], XG [G][8] float   (v5) x, permuted as above, and its group sums (0 for rows >= M)
//
// Tiles shared by several blocks (split mode) are summed deterministically: each block writes its piece to
// its own float32 slot ws[block][its first or last piece], then bumps the tile's counter; the block that
// bumps it last adds all slots of the tile in block order (the result never depends on who finished first:
// graph replays and eager runs are bit-identical), adds the bias, writes y and resets the counter.
#pragma once
#include "mma_linear.cuh"

// ---------------------------------------------------------------- ldmatrix and mma (sm_80+; cp.async: common.cuh)

// four 8×8 b16 matrices: lane l gives the address of row l % 8 of matrix l / 8; register i of lane (g, t)
// receives 32-bit word t of row g of matrix i
__device__ __forceinline__ void w4_ldmatrix4(u32 (&r)[4], u32 addr) {
#if __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
#endif
}
// mma.sync m16n8k16 (f32 += f16 · f16) without `volatile`, so the compiler may interleave independent MMAs with
// the loads and LOP3s around them (mma_linear.cuh's mma_16816 keeps program order)
__device__ __forceinline__ void w4_mma(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}
__device__ __forceinline__ uint4 w4_lds128(const unsigned char* p) { return *reinterpret_cast<const uint4*>(p); }

// v6: byte offset of x's 16-byte piece s (k = 8s .. 8s + 7 of its chunk) inside a 256-byte chunk row
__device__ __forceinline__ int w4_xpiece(int s) { return (s ^ ((s >> 3) & 1)) * 16; }
// v5: byte offset of weight piece i (k = 32i .. 32i + 31 of the chunk) of tile row r inside its 64 bytes
__device__ __forceinline__ int w4_wpiece(int r, int i) { return (i ^ ((r >> 1) & 3)) * 16; }
// the 16-byte piece x0..x7 as the pairs (x0,x4) (x1,x5) (x2,x6) (x3,x7) of nibbles (i, i + 4) of a word
__device__ __forceinline__ uint4 w4_pair_order(uint4 v) {
    return make_uint4(__byte_perm(v.x, v.z, 0x5410), __byte_perm(v.x, v.z, 0x7632), __byte_perm(v.y, v.w, 0x5410),
                      __byte_perm(v.y, v.w, 0x7632));
}
// (1024 + q_i, 1024 + q_{i+4}) as a half2, q the nibbles of w: exact
__device__ __forceinline__ u32 w4_codes(u32 w, int i) { return ((w >> (4 * i)) & 0x000F000Fu) | 0x64006400u; }

template <int NA_, int MB_, int WN_, int WK_, int CPW_, int STAGES_, bool XFULL_, bool ACT_> struct W4Stream {
    static constexpr int NA = NA_, MB = MB_, WN = WN_, WK = WK_, CPW = CPW_, STAGES = STAGES_;
    static constexpr bool XFULL = XFULL_, ACT = ACT_;           // XFULL: the v5 layout and math (see above)
    static constexpr int BN = 16 * NA * WN, BM = 8 * MB, KC = WK * CPW, THREADS = 32 * WN * WK;
    static constexpr int TPR = THREADS > 2 * BN ? THREADS / (2 * BN) : 1;   // threads per scale row (producer)
    static constexpr int NWS = 2 * KC + 1;                     // words per row holding a slab's <= 4·KC scales
    static constexpr int W_BYTES = KC * BN * 64;
    static constexpr int S_BYTES = 2 * BN * NWS * 4;
    static constexpr int XROW = KC * 256 + 32;
    static constexpr int X_BYTES = XFULL ? 0 : BM * XROW;
    static constexpr int STAGE = (W_BYTES + S_BYTES + X_BYTES + 15) / 16 * 16;
    static constexpr int FRAG = NA * MB * 4;                   // accumulator floats per lane
    static constexpr int RED_BYTES = WK > 1 ? WK * WN * FRAG * 32 * 4 : 0;
    static constexpr int TILE = BN * BM;                       // floats of one partial-tile slot
};

// the problem, as every function of one launch sees it
struct W4Problem {
    const half_t* x; int ldx;
    const u32* qw; const half_t* scales; const half_t* zeros; int group;
    const half_t* bias; half_t* y;
    int M, N, K;
    float* ws; int* counters;
    int C, G, Tm, SC, gran, Sg;                                // chunks, groups/row, m tiles, slabs/tile, granules
    int gshift;                                                // log2(group)
    int xs;                                                    // XF row bytes (v5)
};

// the block that streams slab s: the largest b with start(b) <= s, start(b) = gran · floor(b·Sg / B)
__device__ __forceinline__ int w4_block_of(const W4Problem& p, int s) {
    return (int)(((long long)(s / p.gran + 1) * gridDim.x - 1) / p.Sg);
}
__device__ __forceinline__ int w4_start(const W4Problem& p, int b) {
    return p.gran * (int)((long long)b * p.Sg / gridDim.x);
}

// body(i) for i in [0, TOTAL), the block's THREADS threads taking i = threadIdx.x + it·THREADS (fully unrolled):
// the tile copies below, one 16-byte cp.async per i
template <int TOTAL, int THREADS, class Body>
__device__ __forceinline__ void block_strided(Body&& body) {
#pragma unroll
    for (int it = 0; it < (TOTAL + THREADS - 1) / THREADS; ++it) {
        const int i = threadIdx.x + it * THREADS;
        if (TOTAL % THREADS != 0 && i >= TOTAL) break;
        body(i);
    }
}

// ---------------------------------------------------------------- producer: slab j of tile t into a stage

template <class Cfg>
__device__ __forceinline__ void w4_load_slab(const W4Problem& p, unsigned char* stage, int t, int j) {
    const int nb = Cfg::XFULL ? t : t / p.Tm;                 // v5: one m tile
    const int n0 = nb * Cfg::BN, m0 = (t - nb * p.Tm) * Cfg::BM, c0 = j * Cfg::KC;
    unsigned char* wsm = stage;
    unsigned char* ssm = stage + Cfg::W_BYTES;
    // weights: i = (row, chunk, piece), piece fastest: a warp's 32 copies are 512 contiguous bytes of a row
    // when KC >= 8 (int32 offsets: the wrapper keeps N·K / 8 below 2^31)
    block_strided<Cfg::BN * Cfg::KC * 4, Cfg::THREADS>([&](int i) {
        const int r = i / (Cfg::KC * 4), cc = (i / 4) % Cfg::KC, s = i % 4;
        const int n = n0 + r, k = (c0 + cc) * 128 + 32 * s;
        const bool ok = n < p.N && k < p.K;
        const u32* src = p.qw + (ok ? n * (p.K >> 3) + (k >> 3) : 0);
        const int slot = Cfg::XFULL ? w4_wpiece(r, s) : 16 * s;
        cp_async16(smem_addr(wsm + (cc * Cfg::BN + r) * 64 + slot), src, ok ? 16 : 0);
    });
    // scales (ra < BN) and zeros (ra >= BN) of row ra % BN: the halves [n·G + q0, n·G + q1) as the aligned
    // words that hold them, word wi of the row's span at S[ra][wi]; TPR threads share a row
    const int q0 = (c0 * 128) >> p.gshift, q1 = min((c0 + Cfg::KC) * 128, p.K) >> p.gshift;
    const int NG = p.N * p.G;
    for (int ra = threadIdx.x / Cfg::TPR; ra < 2 * Cfg::BN; ra += Cfg::THREADS / Cfg::TPR) {
        const int r = ra % Cfg::BN, n = n0 + r;
        if (n >= p.N) continue;
        const int h0 = n * p.G + q0, w0 = h0 >> 1, wend = (h0 + q1 - q0 + 1) >> 1;   // words [w0, wend)
        const half_t* base = ra < Cfg::BN ? p.scales : p.zeros;
        for (int w = w0 + threadIdx.x % Cfg::TPR; w < wend; w += Cfg::TPR) {
            unsigned char* dst = ssm + (ra * Cfg::NWS + w - w0) * 4;
            if (2 * w + 1 < NG) cp_async4(smem_addr(dst), base + 2 * w);
            else *reinterpret_cast<half_t*>(dst) = base[2 * w];   // the array's last half sits alone in its word
        }
    }
    if (!Cfg::XFULL) {
        unsigned char* xsm = stage + Cfg::W_BYTES + Cfg::S_BYTES;
        block_strided<Cfg::BM * Cfg::KC * 16, Cfg::THREADS>([&](int i) {
            const int r = i / (Cfg::KC * 16), cc = (i / 16) % Cfg::KC, s = i % 16;
            const int m = m0 + r, k = (c0 + cc) * 128 + 8 * s;
            const bool ok = m < p.M && k < p.K;
            const half_t* src = p.x + (ok ? (i64)m * p.ldx + k : 0);
            cp_async16(smem_addr(xsm + r * Cfg::XROW + cc * 256 + w4_xpiece(s)), src, ok ? 16 : 0);
        });
    }
}

// v5: all of x (or silu(gate)·up) into XF in pair order, zero beyond K, and the group sums XG[q][m] (0 for
// rows m >= M). Piece i = (m, c, s) is thread i's: the group / 8 pieces of a group sit in adjacent lanes and
// are added by a fixed shuffle tree (the same bits every launch).
template <bool ACT>
__device__ __forceinline__ void w4_load_x_full(const W4Problem& p, unsigned char* xf, float* xg, int threads) {
    for (int i = threadIdx.x; i < p.G * 8; i += threads)
        if (i % 8 >= p.M) xg[i] = 0.f;
    const int total = p.M * p.C * 16, width = p.group >> 3;
    for (int i0 = 0; i0 < total; i0 += threads) {             // every lane of a warp takes part in the shuffles
        const int i = i0 + threadIdx.x;
        const int m = i / (p.C * 16), c = (i / 16) % p.C, s = i % 16;
        const int k = c * 128 + 8 * s;
        const bool ok = i < total && k < p.K;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (ok) {
            const half_t* src = p.x + (i64)m * p.ldx + k;
            v = ldg16(src);
            if (ACT) {
                float gf[8], uf[8];
                unpack8(v, gf);
                unpack8(ldg16(src + p.K), uf);
#pragma unroll
                for (int e = 0; e < 8; ++e) gf[e] = silu_mul(gf[e], uf[e]);
                v = pack8(gf);
            }
        }
        float f[8];
        unpack8(v, f);
        float sum = ((f[0] + f[1]) + (f[2] + f[3])) + ((f[4] + f[5]) + (f[6] + f[7]));
        for (int o = 1; o < width; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (i < total) *reinterpret_cast<uint4*>(xf + m * p.xs + c * 256 + 16 * s) = w4_pair_order(v);
        if (ok && (s & (width - 1)) == 0) xg[(k >> p.gshift) * 8 + m] = sum;
    }
}

// ---------------------------------------------------------------- consumer: one slab on the tensor cores

// v5: the warp's CPW chunks of slab j (chunk slots wk + WK·u), tile rows n0 .., folded into acc. Straight-line
// code: every load first, then 8 MMAs per chunk into 4 independent accumulators (a chain of 2, not 8), each
// group folded where it ends (GROUP is a template argument, so the folds sit at fixed places); a chunk past
// K computes zeros (codes 1024, x 0) and folds nothing.
template <class Cfg, int GROUP>
__device__ __forceinline__ void w4_compute_v5(const W4Problem& p, const unsigned char* stage,
                                              const unsigned char* xf, const float* xg, int n0, int j, int wk,
                                              float (&acc)[4]) {
    const int lane = threadIdx.x % 32, g = lane >> 2, tl = lane & 3;
    const half_t* ssm = reinterpret_cast<const half_t*>(stage + Cfg::W_BYTES);
    const int q0 = j * Cfg::KC * (128 / GROUP);                // the slab's first group (its scales in S)
    const int plo = ((n0 + g) * p.G + q0) & 1, phi = ((n0 + g + 8) * p.G + q0) & 1;
    u32 wlo[Cfg::CPW][4], whi[Cfg::CPW][4];                   // words tl, tl + 4, tl + 8, tl + 12 of rows g, g + 8
    uint4 xb[Cfg::CPW][4];                                     // x pairs of words 4jj + tl
#pragma unroll
    for (int u = 0; u < Cfg::CPW; ++u) {
        const int cc = wk + Cfg::WK * u, c = j * Cfg::KC + cc;
        const int r = lane % 8, i = lane / 8;
        const unsigned char* wsm = stage + cc * Cfg::BN * 64;
        w4_ldmatrix4(wlo[u], smem_addr(wsm + r * 64 + w4_wpiece(r, i)));
        w4_ldmatrix4(whi[u], smem_addr(wsm + (r + 8) * 64 + w4_wpiece(r + 8, i)));
        const bool ok = g < p.M && c < p.C;
        const unsigned char* xp = xf + g * p.xs + c * 256 + 16 * tl;
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) xb[u][jj] = ok ? w4_lds128(xp + 64 * jj) : make_uint4(0, 0, 0, 0);
        if (c >= p.C)
#pragma unroll
            for (int jj = 0; jj < 4; ++jj) wlo[u][jj] = whi[u][jj] = 0;
    }
#pragma unroll
    for (int u = 0; u < Cfg::CPW; ++u) {
        const int c = j * Cfg::KC + wk + Cfg::WK * u;
        float t[2][2][4] = {};                                 // [jj % 2][first or second MMA of jj][fragment]
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {                       // k [128c + 32jj, +32): words 4jj .. 4jj + 3
            const u32 lo = wlo[u][jj], hi = whi[u][jj];
            const uint4 b = xb[u][jj];
            w4_mma(t[jj & 1][0], w4_codes(lo, 0), w4_codes(hi, 0), w4_codes(lo, 1), w4_codes(hi, 1), b.x, b.y);
            w4_mma(t[jj & 1][1], w4_codes(lo, 2), w4_codes(hi, 2), w4_codes(lo, 3), w4_codes(hi, 3), b.z, b.w);
            if ((32 * (jj + 1)) % GROUP == 0) {                // a group ends here: fold it into acc
                const int kend = c * 128 + 32 * (jj + 1), q = kend / GROUP - 1;
                if (kend <= p.K) {
                    const float slo = to_float(ssm[g * 2 * Cfg::NWS + q - q0 + plo]);
                    const float zlo = to_float(ssm[(Cfg::BN + g) * 2 * Cfg::NWS + q - q0 + plo]);
                    const float shi = to_float(ssm[(g + 8) * 2 * Cfg::NWS + q - q0 + phi]);
                    const float zhi = to_float(ssm[(Cfg::BN + g + 8) * 2 * Cfg::NWS + q - q0 + phi]);
                    const float2 X = *reinterpret_cast<const float2*>(xg + q * 8 + 2 * tl);
                    float s4[4];
#pragma unroll
                    for (int e = 0; e < 4; ++e) s4[e] = (t[0][0][e] + t[0][1][e]) + (t[1][0][e] + t[1][1][e]);
                    acc[0] += slo * (s4[0] - (1024.f + zlo) * X.x);
                    acc[1] += slo * (s4[1] - (1024.f + zlo) * X.y);
                    acc[2] += shi * (s4[2] - (1024.f + zhi) * X.x);
                    acc[3] += shi * (s4[3] - (1024.f + zhi) * X.y);
                }
#pragma unroll
                for (int e = 0; e < 4; ++e) t[0][0][e] = t[0][1][e] = t[1][0][e] = t[1][1][e] = 0.f;
            }
        }
    }
}

// v6: chunk c of slab slot `stage` (tile rows n0 ..): all NA × MB fragments
template <class Cfg>
__device__ __forceinline__ void w4_compute_v6(const W4Problem& p, const unsigned char* stage, int n0, int c,
                                              int wn, float (&acc)[Cfg::NA][Cfg::MB][4]) {
    const int lane = threadIdx.x % 32, g = lane >> 2, tl = lane & 3;
    const int kb = c * 128 + 32 * tl;                          // this lane's k in [kb, kb + 32)
    const bool kok = kb < p.K;
    const unsigned char* wsm = stage;
    const half_t* ssm = reinterpret_cast<const half_t*>(stage + Cfg::W_BYTES);
    const int q0 = (c * 128) >> p.gshift, q = kok ? kb >> p.gshift : q0;    // (KC = 1: the slab's first group is q0)

    uint4 raw[Cfg::NA][2];                                     // A tile a, rows g (h = 0) and g + 8 (h = 1)
    u32 z1024[Cfg::NA][2], s2[Cfg::NA][2];
#pragma unroll
    for (int a = 0; a < Cfg::NA; ++a)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = (wn * Cfg::NA + a) * 16 + g + 8 * h;    // row in the tile
            const int idx = (q - q0) + ((n0 + r) * p.G + q0) % 2;
            half_t s = ssm[r * 2 * Cfg::NWS + idx], z = ssm[(Cfg::BN + r) * 2 * Cfg::NWS + idx];
            raw[a][h] = w4_lds128(wsm + r * 64 + 16 * tl);
            if (!kok) { raw[a][h] = make_uint4(0, 0, 0, 0); s = 0; z = 0; }
            z1024[a][h] = pack_half2(1024.f + to_float(z), 1024.f + to_float(z));
            s2[a][h] = (u32)s | ((u32)s << 16);
        }
    const unsigned char* xrow = stage + Cfg::W_BYTES + Cfg::S_BYTES + g * Cfg::XROW;
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {                           // 16-byte piece jj of the lane's 64 bytes of x
        u32 A[Cfg::NA][2][4];
#pragma unroll
        for (int a = 0; a < Cfg::NA; ++a)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const u32 w = jj == 0 ? raw[a][h].x : jj == 1 ? raw[a][h].y : jj == 2 ? raw[a][h].z : raw[a][h].w;
#pragma unroll
                for (int i = 0; i < 4; ++i) A[a][h][i] = hmul2(hsub2(w4_codes(w, i), z1024[a][h]), s2[a][h]);
            }
#pragma unroll
        for (int b = 0; b < Cfg::MB; ++b) {
            const uint4 u = w4_pair_order(w4_lds128(xrow + b * 8 * Cfg::XROW + w4_xpiece(4 * tl + jj)));
#pragma unroll
            for (int a = 0; a < Cfg::NA; ++a) {
                w4_mma(acc[a][b], A[a][0][0], A[a][1][0], A[a][0][1], A[a][1][1], u.x, u.y);
                w4_mma(acc[a][b], A[a][0][2], A[a][1][2], A[a][0][3], A[a][1][3], u.z, u.w);
            }
        }
    }
}

// ---------------------------------------------------------------- a finished piece of a tile -> y

// fragment value (a, b, r) of this lane: y[m, n]
template <class Cfg>
__device__ __forceinline__ void w4_store(const W4Problem& p, int t, int wn, int a, int b, int r, float v) {
    const int lane = threadIdx.x % 32, g = lane >> 2, tl = lane & 3;
    const int nb = t / p.Tm;
    const int n = nb * Cfg::BN + (wn * Cfg::NA + a) * 16 + g + (r >= 2 ? 8 : 0);
    const int m = (t - nb * p.Tm) * Cfg::BM + 8 * b + 2 * tl + (r & 1);
    if (m < p.M && n < p.N) {
        if (p.bias) v += to_float(p.bias[n]);
        p.y[(i64)m * p.N + n] = from_float<half_t>(v);
    }
}

// atomicAdd(counter, 1) with acquire-release order at GPU scope: it publishes everything the block wrote before
// the barrier that precedes it (release is cumulative), and the last block sees every other block's slot
__device__ __forceinline__ int w4_count(int* counter) {
    int old;
    asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;" : "=r"(old) : "l"(counter) : "memory");
    return old;
}

__device__ __forceinline__ int w4_slot(const W4Problem& p, int b, int t) {    // block b's first or last piece
    return w4_start(p, b) / p.SC == t ? 0 : 1;
}

// The slabs [piece_begin, slab] of tile t are done: reduce over the WK warps, then write y (the block did the
// whole tile) or the partial slot, and let the last of the tile's blocks add the slots in block order.
// body(a, b, r) for every accumulator a warp holds — acc[a][b][r]: A tile a, B tile b, register r — unrolled
template <class Cfg, class Body>
__device__ __forceinline__ void for_each_acc(Body&& body) {
#pragma unroll
    for (int a = 0; a < Cfg::NA; ++a)
#pragma unroll
        for (int b = 0; b < Cfg::MB; ++b)
#pragma unroll
            for (int r = 0; r < 4; ++r) body(a, b, r);
}

template <class Cfg>
__device__ void w4_flush(const W4Problem& p, int t, int piece_begin, int slab, float (&acc)[Cfg::NA][Cfg::MB][4],
                         float* red, int* flag) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wn = warp % Cfg::WN, wk = warp / Cfg::WN;
    if (Cfg::WK > 1) {
        for_each_acc<Cfg>([&](int a, int b, int r) {
            red[((wk * Cfg::WN + wn) * Cfg::FRAG + (a * Cfg::MB + b) * 4 + r) * 32 + lane] = acc[a][b][r];
        });
        __syncthreads();
        if (wk == 0)
            for_each_acc<Cfg>([&](int a, int b, int r) {
                float v = 0.f;
                for (int w = 0; w < Cfg::WK; ++w)
                    v += red[((w * Cfg::WN + wn) * Cfg::FRAG + (a * Cfg::MB + b) * 4 + r) * 32 + lane];
                acc[a][b][r] = v;
            });
    }
    const int first = t * p.SC, last = first + p.SC - 1;
    if (piece_begin == first && slab == last) {                // the whole tile was ours
        if (wk == 0)
            for_each_acc<Cfg>([&](int a, int b, int r) { w4_store<Cfg>(p, t, wn, a, b, r, acc[a][b][r]); });
    } else {
        const int bf = w4_block_of(p, first), bl = w4_block_of(p, last);
        if (wk == 0) {
            float* dst = p.ws + ((i64)blockIdx.x * 2 + w4_slot(p, blockIdx.x, t)) * Cfg::TILE + wn * Cfg::FRAG * 32
                         + lane;
            for_each_acc<Cfg>([&](int a, int b, int r) {
                __stcg(dst + ((a * Cfg::MB + b) * 4 + r) * 32, acc[a][b][r]);
            });
        }
        __syncthreads();                                       // the block's slot is written ...
        if (threadIdx.x == 0) *flag = w4_count(p.counters + t) == bl - bf;   // ... then released with the count
        __syncthreads();
        if (*flag) {                                           // every other piece of the tile is in ws
            if (wk == 0) {
                float v[Cfg::NA][Cfg::MB][4] = {};
                for (int bb = bf; bb <= bl; ++bb) {
                    const float* src = p.ws + ((i64)bb * 2 + w4_slot(p, bb, t)) * Cfg::TILE
                                       + wn * Cfg::FRAG * 32 + lane;
                    for_each_acc<Cfg>([&](int a, int b, int r) {
                        v[a][b][r] += __ldcg(src + ((a * Cfg::MB + b) * 4 + r) * 32);
                    });
                }
                for_each_acc<Cfg>([&](int a, int b, int r) { w4_store<Cfg>(p, t, wn, a, b, r, v[a][b][r]); });
            }
            if (threadIdx.x == 0) p.counters[t] = 0;           // ready for the next launch
        }
    }
    for_each_acc<Cfg>([&](int a, int b, int r) { acc[a][b][r] = 0.f; });
}

// ---------------------------------------------------------------- the kernel body

template <class Cfg>
__device__ void w4a16_stream(const half_t* x, int ldx, const u32* qw, const half_t* scales, const half_t* zeros,
                             int group, const half_t* bias, half_t* y, int M, int N, int K, float* ws, int* counters,
                             int tile_mode) {
    extern __shared__ __align__(16) unsigned char w4_smem[];
    __shared__ int flag;
    W4Problem p;
    p.x = x; p.ldx = ldx; p.qw = qw; p.scales = scales; p.zeros = zeros; p.group = group; p.bias = bias; p.y = y;
    p.M = M; p.N = N; p.K = K; p.ws = ws; p.counters = counters;
    p.C = (K + 127) / 128;
    p.G = K / group;
    p.gshift = __ffs(group) - 1;
    p.Tm = (M + Cfg::BM - 1) / Cfg::BM;
    p.SC = (p.C + Cfg::KC - 1) / Cfg::KC;
    p.gran = tile_mode ? p.SC : 1;
    p.Sg = (N + Cfg::BN - 1) / Cfg::BN * p.Tm * p.SC / p.gran;
    p.xs = p.C * 256 + 64;

    unsigned char* red = w4_smem + Cfg::STAGES * Cfg::STAGE;
    unsigned char* xf = red + Cfg::RED_BYTES;
    float* xg = reinterpret_cast<float*>(xf + M * p.xs);
    u32 dyn;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
    if (dyn < (u32)(Cfg::STAGES * Cfg::STAGE + Cfg::RED_BYTES + (Cfg::XFULL ? M * p.xs + p.G * 32 : 0))) __trap();

    const int s_begin = w4_start(p, blockIdx.x), s_end = w4_start(p, blockIdx.x + 1);   // this block's slabs
    const int nst = s_end - s_begin;
    int tp = s_begin / p.SC, jp = s_begin - tp * p.SC;         // the producer's next slab (tile, slab in tile)
#pragma unroll
    for (int i = 0; i < Cfg::STAGES - 1; ++i) {
        if (i < nst) {
            w4_load_slab<Cfg>(p, w4_smem + i * Cfg::STAGE, tp, jp);
            if (++jp == p.SC) { jp = 0; ++tp; }
        }
        cp_async_commit();
    }
    if (Cfg::XFULL) w4_load_x_full<Cfg::ACT>(p, xf, xg, Cfg::THREADS);   // while the first slabs load
    float acc[Cfg::NA][Cfg::MB][4];
    for_each_acc<Cfg>([&](int a, int b, int r) { acc[a][b][r] = 0.f; });

    const int warp = threadIdx.x / 32, wn = warp % Cfg::WN, wk = warp / Cfg::WN;
    int t = s_begin / p.SC, j = s_begin - t * p.SC, piece_begin = s_begin;   // the consumer's slab
    int n0 = (t / p.Tm) * Cfg::BN;
    for (int i = 0; i < nst; ++i) {
        cp_async_wait<Cfg::STAGES - 2>();                           // slab i has landed (this thread's copies) ...
        __syncthreads();                                       // ... and everyone's; slot (i - 1) is free again
        if (i + Cfg::STAGES - 1 < nst) {
            w4_load_slab<Cfg>(p, w4_smem + ((i + Cfg::STAGES - 1) % Cfg::STAGES) * Cfg::STAGE, tp, jp);
            if (++jp == p.SC) { jp = 0; ++tp; }
        }
        cp_async_commit();
        const unsigned char* stage = w4_smem + (i % Cfg::STAGES) * Cfg::STAGE;
        if (Cfg::XFULL) {
            if (j * Cfg::KC + wk < p.C) {                      // the warp has a chunk in this slab
                if (p.group == 128) w4_compute_v5<Cfg, 128>(p, stage, xf, xg, n0, j, wk, acc[0][0]);
                else if (p.group == 64) w4_compute_v5<Cfg, 64>(p, stage, xf, xg, n0, j, wk, acc[0][0]);
                else w4_compute_v5<Cfg, 32>(p, stage, xf, xg, n0, j, wk, acc[0][0]);
            }
        } else {
#pragma unroll
            for (int u = 0; u < Cfg::CPW; ++u) {
                const int c = j * Cfg::KC + wk + Cfg::WK * u;   // chunk: k in [128c, +128)
                if (c < p.C) w4_compute_v6<Cfg>(p, stage, n0, c, wn, acc);
            }
        }
        const int slab = s_begin + i;
        if (j + 1 == p.SC || slab + 1 == s_end) {              // the end of a piece (tile or range)
            w4_flush<Cfg>(p, t, piece_begin, slab, acc, reinterpret_cast<float*>(red), &flag);
            piece_begin = slab + 1;
        }
        if (++j == p.SC) { j = 0; ++t; n0 = (t / p.Tm) * Cfg::BN; }
    }
    cp_async_wait<0>();
}

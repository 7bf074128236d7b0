"""Time every CUDA kernel version on this GPU next to the two ceilings measured in the same run — device
copy bandwidth and cuBLAS float16 GEMM — then the decode speed of a default-model-shaped model.

    python tools/bench_kernels.py [--quick] [--json results.json]

Method (see the device notes): our kernels are timed as CUDA-graph replays of 20 back-to-back launches
(the way a decode step runs them), with CUDA events, median of several replays; inputs rotate over enough
copies that the working set exceeds L2, so HBM is what is measured. cuBLAS (not capturable) is timed
eagerly. Bytes are the fewest a kernel must move (each input read once, each output written once);
"% copy" is that rate over the measured device-to-device copy rate (bytes read + written).
Prints a Markdown table last (for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from contextlib import nullcontext
from datetime import date

import cupy as cp
import numpy as np

from refengine.config import ModelConfig
from refengine.engine.graphs import DecodeGraphs
from refengine.engine.kv_cache import KVCache
from refengine.model.llama import ForwardBatch, LlamaModel
from refengine.ops import cuda, pdl
from refengine.quant.primitives import quantize_int4

L2_FLUSH_BYTES = 160 << 20          # rotate inputs until the working set is this large (H100 L2: 50 MB)
ROWS: list[dict] = []
PDL = True                          # captured graphs use programmatic dependent launch (--no-pdl: off)


def events_ms(fn, reps: int, stream) -> float:
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(reps):
        start.record(stream)
        fn()
        stop.record(stream)
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def time_graph(calls, launches: int = 20, replays: int = 7, programmatic: bool | None = None) -> float:
    """Median µs per call of `calls` (a list of thunks, rotated) replayed as one captured graph. Kernels that
    allow it overlap the one before (programmatic dependent launch, as in the decode graphs) unless
    programmatic=False or --no-pdl."""
    stream, pool = cp.cuda.Stream(non_blocking=False), cp.cuda.MemoryPool()
    with cp.cuda.using_allocator(pool.malloc), stream:
        for c in calls:
            c()                                        # compile + warm up outside the capture
        stream.synchronize()
        stream.begin_capture()
        with pdl.programmatic_launches() if (PDL if programmatic is None else programmatic) else nullcontext():
            for j in range(launches):
                calls[j % len(calls)]()
        graph = stream.end_capture()
        graph.launch(stream)
        ms = events_ms(lambda: graph.launch(stream), replays, stream)
    return ms * 1000 / launches


def time_eager(call, launches: int = 20, replays: int = 5) -> float:
    stream = cp.cuda.Stream(non_blocking=False)
    with stream:
        call()
        stream.synchronize()
        ms = events_ms(lambda: [call() for _ in range(launches)], replays, stream)
    return ms * 1000 / launches


def copies(make, bytes_each: int):
    n = max(1, min(64, math.ceil(L2_FLUSH_BYTES / max(bytes_each, 1))))
    return [make() for _ in range(n)]


def record(kernel: str, version: str, shape: str, us: float, nbytes: float = 0.0, flops: float = 0.0,
           ceilings: dict | None = None) -> None:
    row = dict(kernel=kernel, version=version, shape=shape, us=us)
    if nbytes:
        row["GB/s"] = nbytes / us / 1e3
        row["frac_copy"] = row["GB/s"] / ceilings["copy_GBps"]
    if flops:
        row["TFLOP/s"] = flops / us / 1e6
        row["frac_gemm"] = row["TFLOP/s"] / ceilings["gemm_TFLOPs"]
    ROWS.append(row)
    rate = (f"{row['GB/s']:8.0f} GB/s {100 * row['frac_copy']:5.1f}% copy" if nbytes else "") + \
           (f"  {row['TFLOP/s']:7.1f} TFLOP/s {100 * row['frac_gemm']:5.1f}% gemm" if flops else "")
    print(f"{kernel:18s} {version:7s} {shape:34s} {us:10.2f} us  {rate}", flush=True)


# ---------------------------------------------------------------- ceilings

def ceilings() -> dict:
    n = 1 << 30
    src, dst = cp.empty(n, cp.uint8), cp.empty(n, cp.uint8)
    src.fill(1)
    stream = cp.cuda.Stream(non_blocking=False)
    copy = lambda: cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, n, cp.cuda.runtime.memcpyDeviceToDevice,
                                               stream.ptr)
    ms = events_ms(lambda: [copy() for _ in range(5)], 5, stream) / 5
    copy_gbps = 2 * n / ms / 1e6
    del src, dst
    m = 8192
    a = cp.random.standard_normal((m, m), dtype=cp.float32).astype(cp.float16)
    b = cp.random.standard_normal((m, m), dtype=cp.float32).astype(cp.float16)
    with stream:
        cp.matmul(a, b)
        ms = events_ms(lambda: cp.matmul(a, b), 10, stream)
    gemm = 2 * m ** 3 / ms / 1e9
    dev = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    out = dict(device=dev["name"].decode(), sms=dev["multiProcessorCount"], copy_GBps=copy_gbps, gemm_TFLOPs=gemm)
    print(f"device {out['device']}: copy {copy_gbps:.0f} GB/s (read + write), "
          f"cuBLAS fp16 GEMM {m}^3 {gemm:.0f} TFLOP/s")
    return out


# ---------------------------------------------------------------- kernels

_SPIN = None


def time_eager_gpu(call, launches: int = 20, replays: int = 5) -> float:
    """Median µs per call of device time alone, for what cannot be captured (cuBLAS): a ~3 ms spin kernel goes
    first, so the host has queued every launch before the first runs and its per-call overhead stays out."""
    global _SPIN
    if _SPIN is None:
        _SPIN = cp.RawKernel('extern "C" __global__ void spin(long long n) '
                             '{ long long t = clock64(); while (clock64() - t < n) {} }', "spin")
    stream = cp.cuda.Stream(non_blocking=False)
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    times = []
    with stream:
        call()
        stream.synchronize()
        for _ in range(replays):
            _SPIN((1,), (1,), (np.int64(6_000_000),))
            start.record(stream)
            for _ in range(launches):
                call()
            stop.record(stream)
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop))
    return statistics.median(times) * 1000 / launches


def v8_tune(M: int) -> list:
    """(label, kwargs) of the compiled v8 tuning points for M rows."""
    return [(f"v8 R{r} D{d} PW{pw}", dict(config=(r, d, pw))) for mb, r, d, pw in cuda.W4A16_V8_TUNE
            if mb == cuda.w4a16_v7_mb(M)]


def v9_tune() -> list:
    """(label, kwargs) of the compiled v9 tuning points (M = 1, sm_90+): RB rows per block, x staged in shared
    memory or read through L1 ("x L1")."""
    return [(f"v9 RB{c[0]} W{c[1]}" + ("" if c[2] else " x L1"), dict(config=c))
            for c in cuda.W4A16_V9_TUNE] if cuda._cc() >= 90 else []


def bench_w4a16(c, quick, gemm=True):
    gemv = [("v2", {}), ("v3", {}), ("v5", {}), ("v7", {}), ("v8", {})] + ([("v9", {})] if cuda._cc() >= 90 else []) \
        + ([("v1", {})] if not quick else [])
    tune = [] if quick else [("v5 3 stages", dict(variant="v5s3")), ("v5 other mode", None)] + [
        (f"v7 R{r} D{d}", dict(config=(r, d))) for mb, r, d in cuda.W4A16_V7_TUNE if mb == 1] + v8_tune(1) + v9_tune()
    for N, K in ((4096, 4096), (11008, 4096), (4096, 11008)):
        g = 128
        rng = np.random.default_rng(0)
        w = quantize_int4((rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32), g)
        nbytes = N * K // 2 + 2 * N * (K // g) * 2 + 2 * K + 2 * N
        x = cp.asarray(rng.standard_normal((1, K)).astype(np.float16))
        sets = copies(lambda: [cp.asarray(a) for a in (w.qweight, w.scales, w.zeros)], nbytes)
        for v, kw in gemv + tune:
            if kw is None:                                   # the partition mode the plan did not pick
                cfg = cuda.W4A16_STREAM["v5"]
                mode = not cuda.w4a16_stream_plan(cfg, 1, N, K, g)[1]
                fn = lambda x, q, s, z, g, cfg=cfg, mode=mode: cuda._w4a16_stream(cfg, x, K, q, s, z, g, None, 1, K,
                                                                                   tile_mode=mode)
            else:
                fn = functools.partial(cuda.VERSIONS["linear_w4a16"][v.split()[0]], **kw)
            us = time_graph([lambda s=s: fn(x, *s, g) for s in sets], launches=20 if v != "v1" else 4)
            record("w4a16 GEMV", v, f"M=1 N={N} K={K} g{g}", us, nbytes, ceilings=c)
            if v in ("v7", "v8", "v9") and PDL:               # what the overlap of consecutive launches gives
                us = time_graph([lambda s=s: fn(x, *s, g) for s in sets], programmatic=False)
                record("w4a16 GEMV", f"{v} no PDL", f"M=1 N={N} K={K} g{g}", us, nbytes, ceilings=c)
        if K == 11008:                                       # the MLP's down projection with silu_and_mul
            gu = cp.asarray(rng.standard_normal((1, 2 * K)).astype(np.float16))
            for v in ("v5", "unfused", "v3", "v7"):
                fn = cuda.VERSIONS["silu_and_mul_linear_w4a16"][v]
                us = time_graph([lambda s=s: fn(gu, *s, g) for s in sets])
                record("w4a16 silu+GEMV", v, f"M=1 N={N} K={K} g{g}", us, nbytes + 4 * K, ceilings=c)
        if not quick:                                        # small decode batches (the GEMV kernels up to M = 8)
            for M in (2, 4, 8):
                xm = cp.asarray(rng.standard_normal((M, K)).astype(np.float16))
                v7_tune = [(f"v7 R{r} D{d}", dict(config=(r, d))) for mb, r, d in cuda.W4A16_V7_TUNE
                           if mb == cuda.w4a16_v7_mb(M)]
                for v, kw in [("v3", {}), ("v5", {}), ("v6", {}), ("v7", {}), ("v8", {})] + v7_tune + v8_tune(M):
                    if v.startswith("v8") and M > cuda.W4A16_V8_MAX_MB:
                        continue
                    if N != K and v in ("v5", "v6"):
                        continue
                    fn = functools.partial(cuda.VERSIONS["linear_w4a16"][v.split()[0]], **kw)
                    us = time_graph([lambda s=s: fn(xm, *s, g) for s in sets])
                    record("w4a16 GEMV", v, f"M={M} N={N} K={K} g{g}", us, nbytes + 2 * (M - 1) * (K + N),
                           ceilings=c)
        del sets
    # the GEMM path: decode batches and prefills, against cuBLAS on the float16 weight (device time alone)
    for N, K in ((4096, 4096), (11008, 4096)) if gemm else ():
        g = 128
        rng = np.random.default_rng(1)
        w = quantize_int4((rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32), g)
        sets = copies(lambda: [cp.asarray(a) for a in (w.qweight, w.scales, w.zeros)], N * K // 2)
        dense = copies(lambda: cuda.dequantize_w4a16(*sets[0], g), N * K * 2)
        for M in (16, 32, 64, 128, 256) if not quick else (16, 256):
            x = cp.asarray(rng.standard_normal((M, K)).astype(np.float16))
            shape, flops = f"M={M} N={N} K={K} g{g}", 2 * M * N * K
            fn = cuda.VERSIONS["linear_w4a16"]["v6"]
            record("w4a16 GEMM", "v6", shape, time_graph([lambda s=s: fn(x, *s, g) for s in sets]), flops=flops,
                   ceilings=c)
            if (M <= 32 or (M == 256 and N == 4096)) and not quick:
                fn = cuda.VERSIONS["linear_w4a16"]["v2"]
                record("w4a16 GEMM", "v2", shape, time_graph([lambda s=s: fn(x, *s, g) for s in sets]), flops=flops,
                       ceilings=c)
            if M >= cuda.W4A16_CUBLAS_M:
                it = iter(range(10 ** 9))
                fn = cuda.VERSIONS["linear_w4a16"]["v4"]
                us = time_eager_gpu(lambda: fn(x, *sets[next(it) % len(sets)], g))
                record("w4a16 GEMM", "v4", shape, us, flops=flops, ceilings=c)
            it = iter(range(10 ** 9))
            us = time_eager_gpu(lambda: cp.matmul(x, dense[next(it) % len(dense)].T))
            record("w4a16 GEMM", "cuBLAS fp16", shape, us, flops=flops, ceilings=c)
        del sets, dense


def bench_linear(c, quick):
    shapes = ((1, 4096, 4096), (1, 12288, 4096), (1, 22016, 4096), (1, 4096, 11008), (1, 32000, 4096),
              (1, 49152, 576), (16, 4096, 4096))                # the llama2-7b decode GEMVs, the default LM head
    for M, N, K in shapes if not quick else shapes[:1] + shapes[2:3] + shapes[5:]:
        rng = np.random.default_rng(0)
        nbytes = 2 * (N * K + M * K + M * N)
        x = cp.asarray(rng.standard_normal((M, K)).astype(np.float16))
        sets = copies(lambda: cp.asarray((rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float16)), nbytes)
        for v in ("v2", "v3") + (("v1",) if not quick and N * K <= 4096 * 4096 else ()):
            fn = cuda.VERSIONS["linear"][v]
            try:
                us = time_graph([lambda w=w: fn(x, w, None) for w in sets], launches=20 if v != "v1" else 4)
            except cuda.Unsupported:
                continue
            record("fp16 linear", v, f"M={M} N={N} K={K}", us, nbytes, ceilings=c)
        it = iter(range(10 ** 9))
        us = time_eager(lambda: cp.matmul(x, sets[next(it) % len(sets)].T))
        record("fp16 linear", "cuBLAS", f"M={M} N={N} K={K}", us, nbytes, ceilings=c)
        del sets


def attention_inputs(B, ctx, H, KVH, D, BS=64, new=1, table_ctx=None):
    """table_ctx: block tables as wide as this context (a decode graph's are as wide as the longest session)."""
    rng = np.random.default_rng(0)
    nblk = -(-(table_ctx or ctx) // BS)
    tables = rng.permutation(B * nblk).reshape(B, nblk).astype(np.int32)
    shape = (B * nblk, BS, KVH, D)
    kc = cp.random.standard_normal(shape, dtype=cp.float32).astype(cp.float16)
    vc = cp.random.standard_normal(shape, dtype=cp.float32).astype(cp.float16)
    q = cp.random.standard_normal((B * new, H, D), dtype=cp.float32).astype(cp.float16)
    ctxs = cp.full(B, ctx, cp.int64)
    cu = cp.arange(0, B * new + 1, new, dtype=cp.int64)
    return q, kc, vc, cp.asarray(tables), ctxs, cu


def bench_attention(c, quick):
    # the last case: one llama2-7b batch-1 decode step's attention (context 192, tables as wide as 4096 tokens)
    for B, ctx, H, KVH, D, wide in ((32, 4096, 32, 32, 128, None), (1, 4096, 9, 3, 64, None),
                                    (32, 1024, 9, 3, 64, None), (1, 192, 32, 32, 128, 4096)):
        args = attention_inputs(B, ctx, H, KVH, D, table_ctx=wide)
        nbytes = 2 * B * ctx * KVH * D * 2
        for v in ("v1", "v2") if not quick else ("v2",):
            fn = cuda.VERSIONS["attention_decode"][v]
            us = time_graph([lambda: fn(*args, 1 / math.sqrt(D))], launches=10 if v == "v2" else 2, replays=5)
            record("decode attention", v, f"B={B} ctx={ctx} H={H} KVH={KVH} D={D}" + (f" tables {wide}" if wide
                                                                                    else ""), us, nbytes, ceilings=c)
        del args


def bench_prefill(c, quick):
    """One causal prompt of T tokens; FLOPs = 2 matmuls · 2·T²·H·D / 2 (causal: half the score matrix)."""
    H, KVH, D = 32, 8, 128
    for T in (2048, 4096):
        args = attention_inputs(1, T, H, KVH, D, new=T)
        flops = 4 * (T * T / 2) * H * D
        versions = ("v3",) if quick else ("v1", "v2", "v3") if T == 2048 else ("v2", "v3")
        for v in versions:
            fn = cuda.VERSIONS["attention_prefill"][v]
            us = time_graph([lambda: fn(*args, 1 / math.sqrt(D))], launches=2 if v != "v3" else 10, replays=3)
            record("prefill attention", v, f"T={T} causal H={H} KVH={KVH} D={D}", us, flops=flops, ceilings=c)
        del args


def bench_elementwise(c, quick):
    rng = np.random.default_rng(0)
    T, H = 4096, 4096
    x = cp.asarray(rng.standard_normal((T, H)).astype(np.float16))
    r = cp.asarray(rng.standard_normal((T, H)).astype(np.float16))
    w = cp.asarray((1 + 0.1 * rng.standard_normal(H)).astype(np.float16))
    for v in ("v1", "v2"):
        us = time_graph([lambda: cuda.VERSIONS["add_rms_norm"][v](x, r, w, 1e-5)])
        record("add_rms_norm", v, f"T={T} hidden={H}", us, 5 * T * H * 2, ceilings=c)
        us = time_graph([lambda: cuda.VERSIONS["add_rms_norm"][v](x[:1, :576], r[:1, :576], w[:576], 1e-5)])
        record("add_rms_norm", v, "T=1 hidden=576 (decode)", us, ceilings=c)
    I = 11008
    gu = cp.asarray(rng.standard_normal((T, 2 * I)).astype(np.float16))
    for v in ("v1", "v2"):
        us = time_graph([lambda: cuda.VERSIONS["silu_and_mul"][v](gu)])
        record("silu_and_mul", v, f"T={T} I={I}", us, 3 * T * I * 2, ceilings=c)
    q = cp.asarray(rng.standard_normal((T, 32, 128)).astype(np.float16))
    pos = cp.arange(T, dtype=cp.int64)
    inv = cp.asarray((1.0 / 10000 ** (np.arange(0, 128, 2) / 128)).astype(np.float32))
    us = time_graph([lambda: cuda.VERSIONS["rotary_embedding"]["v1"](q, pos, inv)])
    record("rotary_embedding", "v1", f"T={T} heads=32 D=128", us, 2 * q.nbytes, ceilings=c)
    table = cp.asarray(rng.standard_normal((32000, H)).astype(np.float16))
    ids = cp.asarray(rng.integers(0, 32000, T))
    for v in ("v1", "v2"):
        us = time_graph([lambda: cuda.VERSIONS["embedding"][v](ids, table)])
        record("embedding", v, f"T={T} hidden={H}", us, 2 * T * H * 2, ceilings=c)
    kc = cp.zeros((T // 16 + 1, 16, 8, 128), cp.float16)
    vc = cp.zeros_like(kc)
    k = cp.asarray(rng.standard_normal((T, 8, 128)).astype(np.float16))
    slots = cp.asarray(rng.permutation(T).astype(np.int64))
    for v in ("v1", "v2"):
        us = time_graph([lambda: cuda.VERSIONS["write_kv_cache"][v](k, k, kc, vc, slots)])
        record("write_kv_cache", v, f"T={T} KVH=8 D=128", us, 4 * k.nbytes, ceilings=c)
    logits = cp.asarray(rng.standard_normal((32, 49152)).astype(np.float32) * 3)
    R = 32
    for name, t, k, p in (("greedy", 0.0, 0, 1.0), ("top-k 50 top-p 0.9", 0.8, 50, 0.9), ("top-p 0.9", 0.8, 0, 0.9)):
        params = [cp.full(R, v, dt) for v, dt in ((t, cp.float32), (k, cp.int32), (p, cp.float32), (0.0, cp.float32),
                                                  (0.5, cp.float32))]
        for v in cuda.SAMPLE_ROWS_VERSIONS:
            us = time_graph([lambda: cuda.sample_rows(logits, *params, version=v)], launches=5)
            record("sample_rows", v, f"R={R} V=49152 {name}", us, logits.nbytes, ceilings=c)
        us = time_graph([lambda: cuda.sample_rows(logits[:1], *(a[:1] for a in params))], launches=5)
        record("sample_rows", cuda.SAMPLE_ROWS_VERSIONS[0], f"R=1 V=49152 {name}", us, logits.nbytes // R,
               ceilings=c)
    us = time_graph([lambda: cuda.argmax_rows(logits)], launches=5)
    record("argmax_rows", "v1", f"R={R} V=49152", us, logits.nbytes, ceilings=c)


# ---------------------------------------------------------------- the model

def default_model(group_size):
    from tests.kernels.model_cases import DEFAULT_SHAPE, random_weights
    cfg = ModelConfig(**DEFAULT_SHAPE)
    return cfg, LlamaModel(cfg, random_weights(cfg, 0, group_size), cuda)


def decode_speed(group_size, steps: int, graphs: bool, profile: bool = False, programmatic: bool = True) -> dict:
    """Batch-1 greedy decode of the default-model-shaped model: tokens/s of the whole step (fill, replay,
    argmax, read the id) and, with graphs, the GPU time of one replay alone."""
    cfg, model = default_model(group_size)
    BS, prompt = 64, list(range(1, 33))
    nblk = -(-(len(prompt) + steps + 20) // BS)                    # + the profiled steps
    kv = KVCache.allocate(cfg, nblk, BS, dtype=np.float16, xp=cp)
    table = np.arange(nblk, dtype=np.int32)
    logits = model.forward(ForwardBatch.single(prompt, 0, table, BS), kv)
    token = int(cp.argmax(logits[0]))
    runner = DecodeGraphs(model, kv, nblk, programmatic=programmatic and PDL) if graphs else None
    greedy = lambda lg: int(cuda.argmax_rows(lg).get()[0])
    pos, t0 = len(prompt), None

    def step(token, pos):
        batch = ForwardBatch.single([token], pos, table, BS)
        return greedy(runner.run(batch) if graphs else model.forward(batch, kv))

    for i in range(steps + 5):
        if i == 5:
            cp.cuda.Device().synchronize()
            t0 = time.perf_counter()
        token = step(token, pos)
        pos += 1
    out = dict(tokens_per_s=steps / (time.perf_counter() - t0))
    if profile:
        import cProfile
        import io
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(10):
            token = step(token, pos)
            pos += 1
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
        print(f"profile of 10 {'graph' if graphs else 'eager'} decode steps:")
        print(buf.getvalue()[-3000:])
    if graphs:
        g = next(iter(runner.graphs.values()))
        out["replay_us"] = events_ms(lambda: [g.graph.launch(runner.stream) for _ in range(20)], 5,
                                     runner.stream) * 1000 / 20
    return out


def decode_breakdown(c, group_size):
    """Each op of one decode step at the default model's shapes (batch 1, context 256), as graph nodes, with
    30 layers' worth of weights rotated (a step never finds a layer's weights in L2)."""
    cfg, model = default_model(group_size)
    L = model.weights.layers
    BS = 64
    kv = KVCache.allocate(cfg, 8, BS, dtype=np.float16, xp=cp)
    x = cp.asarray(np.random.default_rng(0).standard_normal((1, cfg.hidden_size)).astype(np.float16))
    r = x.copy()
    qkv = model.linear(x, L[0].qkv)
    T, H, KVH, D = 1, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    qk = qkv[:, :(H + KVH) * D].reshape(1, H + KVH, D)
    v = qkv[:, (H + KVH) * D:].reshape(1, KVH, D)
    pos, slots = cp.asarray([255]), cp.asarray([255])
    inv = cuda.rope_inv_freq(D, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings)
    tables, ctx, cu = cp.arange(8, dtype=cp.int32)[None], cp.asarray([256]), cp.asarray([0, 1])
    q = qk[:, :H]
    gate_up = model.linear(x, L[0].gate_up)
    attn = cp.ones((1, H * D), cp.float16)
    ops = [("add_rms_norm", lambda l: cuda.add_rms_norm(x, r, l.attn_norm, 1e-5)),
           ("qkv linear", lambda l: model.linear(x, l.qkv)),
           ("rope + write_kv", lambda l: cuda.rotary_embedding_write_kv(qk, v, pos, inv, kv.k_caches[0],
                                                                          kv.v_caches[0], slots)),
           ("attention (ctx 256)", lambda l: cuda.paged_attention(q, kv.k_caches[0], kv.v_caches[0], tables, ctx, cu,
                                                                  0.125)),
           ("o linear", lambda l: model.linear(attn, l.o)),
           ("gate_up linear", lambda l: model.linear(x, l.gate_up)),
           ("silu + down linear", lambda l: (
               cuda.silu_and_mul_linear_w4a16(gate_up, l.down.qweight, l.down.scales, l.down.zeros,
                                              l.down.group_size) if group_size else
               cuda.silu_and_mul_linear(gate_up, l.down)))]
    total = 0.0
    name = "W4A16 g%d" % group_size if group_size else "fp16"
    for op, fn in ops:
        us = time_graph([lambda l=l: fn(l) for l in L], launches=30, replays=5)
        total += us * (2 if op == "add_rms_norm" else 1)
        record("decode op", name, f"{op}", us, ceilings=c)
    # the alternatives the registry could pick at these shapes
    lin = "linear_w4a16" if group_size else "linear"
    for v in ("v2", "v3"):
        for op, x_, attr in (("qkv", x, "qkv"), ("o", attn, "o"), ("gate_up", x, "gate_up")):
            def call(l, v=v, x_=x_, attr=attr):
                w = getattr(l, attr)
                return cuda.VERSIONS[lin][v](x_, w.qweight, w.scales, w.zeros, w.group_size) if group_size \
                    else cuda.VERSIONS[lin][v](x_, w, None)
            record("decode op alt", f"{name} {v}", f"{op} linear", time_graph([lambda l=l: call(l) for l in L],
                                                                           launches=30, replays=5), ceilings=c)
    silu = "silu_and_mul_linear_w4a16" if group_size else "silu_and_mul_linear"
    for v in ("v3", "unfused"):
        def call(l, v=v):
            d = l.down
            return cuda.VERSIONS[silu][v](gate_up, d.qweight, d.scales, d.zeros, d.group_size) if group_size \
                else cuda.VERSIONS[silu][v](gate_up, d, None)
        record("decode op alt", f"{name} {v}", "silu + down", time_graph([lambda l=l: call(l) for l in L],
                                                                       launches=30, replays=5), ceilings=c)
    us = time_graph([lambda: cuda.logits(x, model.weights.lm_head)], launches=10)
    record("decode op", name, "logits (49152 x 576)", us, ceilings=c)
    print(f"  sum over one step: {total * cfg.num_layers + us:.0f} us for {cfg.num_layers} layers + logits")


def engine_speed(steps: int) -> dict:
    """The same model through the whole engine (scheduler, model runner with CUDA graphs, GPU sampler):
    one greedy request, then 8 at once."""
    from refengine.config import EngineConfig
    from refengine.engine.engine import Engine
    from refengine.sampling_params import GenerationConfig
    _, model = default_model(None)
    engine = Engine(model, None, EngineConfig(cache_max_entry_count=256, max_batch_size=32))
    cfg = GenerationConfig(temperature=0, max_new_tokens=steps, ignore_eos=True)
    out = {}
    try:
        engine.infer(input_ids=list(range(1, 33)), gen_config=GenerationConfig(temperature=0, max_new_tokens=8))
        for n in (1, 8):
            t0 = time.perf_counter()
            outs = [engine.stream(input_ids=list(range(1 + i, 33 + i)), gen_config=cfg) for i in range(n)]
            total = sum(len(o.token_ids) for s in outs for o in s)
            tps = total / (time.perf_counter() - t0)
            key = f"fp16, engine end to end, {n} request{'s' if n > 1 else ''} (incl. prefill)"
            out[key] = tps
            print(f"default-model-shaped decode, {key}: {tps:.0f} tokens/s", flush=True)
    finally:
        engine.close()
    return out


def bench_model(c, quick):
    steps = 100 if quick else 300
    out = {}
    for name, g in (("fp16", None), ("W4A16 g64", 64)):
        decode_breakdown(c, g)
        for graphs in (True, False):
            r = decode_speed(g, steps if graphs else 20, graphs, profile=name == "fp16")
            key = f"{name}, {'CUDA graphs' if graphs else 'eager'}"
            out[key] = r["tokens_per_s"]
            extra = f" (one replay alone: {r['replay_us']:.0f} us)" if "replay_us" in r else ""
            print(f"default-model-shaped decode, batch 1, {key}: {r['tokens_per_s']:.0f} tokens/s{extra}", flush=True)
    for name, g in (("fp16", None), ("W4A16 g64", 64)):                  # what programmatic launch gives
        key = f"{name}, CUDA graphs, no PDL"
        out[key] = decode_speed(g, steps, True, programmatic=False)["tokens_per_s"]
        print(f"default-model-shaped decode, batch 1, {key}: {out[key]:.0f} tokens/s", flush=True)
    out.update(engine_speed(steps))
    if not quick:
        return out
    for op in ("silu_and_mul_linear", "silu_and_mul_linear_w4a16"):          # the other choice, for the record
        cuda.DEFAULTS[op] = tuple(reversed(cuda.DEFAULTS[op]))
    for name, g in (("fp16", None), ("W4A16 g64", 64)):
        r = decode_speed(g, steps, True)
        key = f"{name}, CUDA graphs, silu+down {cuda.DEFAULTS['silu_and_mul_linear'][0]}"
        out[key] = r["tokens_per_s"]
        print(f"default-model-shaped decode, batch 1, {key}: {r['tokens_per_s']:.0f} tokens/s "
              f"(one replay alone: {r['replay_us']:.0f} us)", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="default versions only, fewer repetitions")
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None,
                    help="comma list of: w4a16,w4a16gemv (its M <= 8 part),linear,attention,prefill,elementwise,model")
    ap.add_argument("--no-pdl", action="store_true",
                    help="capture without programmatic dependent launch (each kernel waits for the one before)")
    args = ap.parse_args()
    global PDL
    PDL = not args.no_pdl
    only = set(args.only.split(",")) if args.only else None
    c = ceilings()
    for name, fn in (("w4a16", bench_w4a16), ("w4a16gemv", functools.partial(bench_w4a16, gemm=False)),
                     ("linear", bench_linear), ("attention", bench_attention),
                     ("prefill", bench_prefill), ("elementwise", bench_elementwise)):
        if only is None or name in only:
            fn(c, args.quick)
            cp.get_default_memory_pool().free_all_blocks()
    model = bench_model(c, args.quick) if only is None or "model" in only else {}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(date=str(date.today()), ceilings=c, kernels=ROWS, decode_tokens_per_s=model), f, indent=1)
    print()
    print(f"Kernels on {c['device']} ({date.today()}): copy {c['copy_GBps']:.0f} GB/s, cuBLAS fp16 GEMM "
          f"{c['gemm_TFLOPs']:.0f} TFLOP/s")
    print()
    print("| kernel | version | shape | µs | GB/s | % copy BW | TFLOP/s | % cuBLAS GEMM |")
    print("|---|---|---|---|---|---|---|---|")
    for r in ROWS:
        gb = f"{r['GB/s']:.0f} | {100 * r['frac_copy']:.0f}%" if "GB/s" in r else " | "
        tf = f"{r['TFLOP/s']:.1f} | {100 * r['frac_gemm']:.1f}%" if "TFLOP/s" in r else " | "
        print(f"| {r['kernel']} | {r['version']} | {r['shape']} | {r['us']:.1f} | {gb} | {tf} |")
    if model:
        print()
        print("| default-model-shaped decode (batch 1, greedy) | tokens/s |")
        print("|---|---|")
        for k, v in model.items():
            print(f"| {k} | {v:.0f} |")


if __name__ == "__main__":
    sys.exit(main())

"""The CUDA backend: the ops of refengine/ops/reference.py — same names, same signatures — on CuPy arrays,
computed by the kernels in kernels_cu/ (float16 storage, float32 arithmetic).

    ops = refengine.ops.get_backend("cupy")
    y = ops.linear(x, w)                          # x, w: cupy float16 arrays

Every public op checks its arguments (shapes, dtypes, layout) before anything is launched and raises
KernelInputError naming the argument. Index arguments (token ids, positions, slots, block tables, lengths)
may be NumPy arrays: they are uploaded. Data arguments must already be on the device.

Each op has versions, the ladder of its .cu file (v1 naive ... vN fast), registered side by side:

    VERSIONS[op][name]   the implementation, with the op's own signature (tests run every one of them)
    DEFAULTS[op]         the order the op tries them in; a version that cannot take the arguments (a shape
                         or alignment it was not written for) raises Unsupported before launching, and the
                         next one is tried. The last in each list takes every valid input.

CUDA graphs (refengine/engine/graphs.py) capture whole decode steps through these same functions, so the
ops avoid anything a capture forbids when it is active: no host<->device copies of results, no
synchronisation, and no cuBLAS (CuPy refuses it during capture) — `_capturing()` switches matmuls to our
own kernels. Launch shapes depend on array shapes only, never on values held on the device.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import cupy as cp
import numpy as np

from refengine.errors import RefengineError
from refengine.ops import loader, pdl
from refengine.ops import reference as _ref
from refengine.quant.primitives import GROUP_SIZES, Int4Weight

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)
SUFFIX = {F16: "f16", F32: "f32"}
NULL = np.uint64(0)                      # a null pointer kernel argument (optional bias)
SMALL_M = 8                              # rows up to which a GEMV kernel beats cuBLAS (and MT = 1 tiles suffice)
W4A16_CUBLAS_M = 64                      # rows from which W4A16 dequantizes once and calls cuBLAS (eager only)


class KernelInputError(RefengineError, ValueError):
    """An op was given an argument its kernels cannot take (shape, dtype, layout, device)."""


class Unsupported(Exception):
    """This version cannot take these (valid) arguments; the registry tries the next version."""


VERSIONS: dict[str, dict[str, Callable]] = {}
DEFAULTS: dict[str, tuple[str, ...]] = {}


def _version(op: str, name: str):
    def register(fn):
        VERSIONS.setdefault(op, {})[name] = fn
        return fn
    return register


def _dispatch(op: str, *args, order: tuple[str, ...] | None = None):
    """The first version in `order` (default: DEFAULTS[op]) that takes the arguments."""
    for name in order or DEFAULTS[op]:
        try:
            return VERSIONS[op][name](*args)
        except Unsupported:
            continue
    raise KernelInputError(f"{op}: no kernel version takes these arguments")  # unreachable: v1 takes all


# ---------------------------------------------------------------- helpers

xp = cp
DEFAULT_DTYPE = np.float16


@functools.lru_cache(maxsize=None)
def _device_info(device_id: int) -> tuple[int, int]:
    """(compute capability as an int like 90, multiprocessor count)."""
    dev = cp.cuda.Device(device_id)
    return int(dev.compute_capability), int(dev.attributes["MultiProcessorCount"])


def _cc() -> int:
    return _device_info(cp.cuda.Device().id)[0]


def _sms() -> int:
    return _device_info(cp.cuda.Device().id)[1]


def _capturing() -> bool:
    try:
        return bool(cp.cuda.get_current_stream().is_capturing())
    except (AttributeError, cp.cuda.runtime.CUDARuntimeError):
        return False


def _fn(file: str, kernel: str):
    return loader.function(file, kernel)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _i32(v) -> np.int32:
    return np.int32(v)


def _fail(op: str, arg: str, msg: str):
    """Refuse an argument (checks are written `if not ok: _fail(...)` so that the message — which may format
    dtypes, slow in NumPy — is only built on failure: these checks run on every eager launch)."""
    raise KernelInputError(f"{op}: argument {arg!r} {msg}")


def _device_array(a, op: str, arg: str, ndim: int | None = None, dtypes=(F16, F32)):
    if not (isinstance(a, cp.ndarray)):
        _fail(op, arg, f"must be a CuPy device array, got {type(a).__name__}")
    if ndim is not None:
        if not (a.ndim == ndim):
            _fail(op, arg, f"must have {ndim} dimensions, got shape {tuple(a.shape)}")
    if dtypes is not None:
        if not (a.dtype in dtypes):
            _fail(op, arg, f"has dtype {a.dtype}; supported: {', '.join(str(d) for d in dtypes)}")
    return a


def _index(a, dtype, op: str, arg: str, ndim: int = 1):
    """An index array on the device in `dtype` (uploaded if it is host memory)."""
    if isinstance(a, cp.ndarray):
        out = a if a.dtype == dtype else a.astype(dtype)
    else:
        host = np.asarray(a)
        if not (host.dtype.kind in "iu" or host.size == 0):
            _fail(op, arg, f"must hold integers, got dtype {host.dtype}")
        out = cp.asarray(host.astype(dtype, copy=False))
    if not (out.ndim == ndim):
        _fail(op, arg, f"must have {ndim} dimension(s), got shape {tuple(out.shape)}")
    return out if out.flags.c_contiguous else cp.ascontiguousarray(out)


def _row_stride(a, op: str, arg: str) -> int:
    """Elements between rows of a 2-D (or [rows, ...] with contiguous trailing dims) array."""
    inner = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
    expect = a.itemsize
    for dim in range(a.ndim - 1, 0, -1):        # trailing dims must be packed
        if not (a.strides[dim] == expect or a.shape[dim] == 1):
            _fail(op, arg, f"must be contiguous after its first dimension (strides {a.strides})")
        expect *= a.shape[dim]
    stride = a.strides[0] // a.itemsize if a.shape[0] > 1 else inner
    if not (a.strides[0] % a.itemsize == 0 and stride >= inner):
        _fail(op, arg, f"has an unusable row stride {a.strides}")
    return stride


def _aligned16(*arrays_and_strides) -> bool:
    """Every array's base address and every given element stride (in bytes) is a multiple of 16."""
    for item in arrays_and_strides:
        if isinstance(item, cp.ndarray):
            if item.data.ptr % 16:
                return False
        elif item % 16:
            return False
    return True


def _launch(file: str, kernel: str, grid, block, args, shared_mem: int = 0, pdl_ready: bool = False) -> None:
    """Launch on the current stream. pdl_ready: the kernel calls pdl_wait() before touching memory other
    kernels write, so inside pdl.programmatic_launches() (graph captures) it may overlap the kernel before it."""
    fn, grid, block = _fn(file, kernel), tuple(int(g) for g in grid), tuple(int(b) for b in block)
    if pdl_ready and pdl.active():
        pdl.launch(fn, grid, block, args, shared_mem)
    else:
        fn(grid, block, args, shared_mem=shared_mem)


# ---------------------------------------------------------------- embedding

def embedding(ids, table):
    """ids [T] int -> table rows [T, hidden] in the table's dtype."""
    table = _device_array(table, "embedding", "table", 2)
    if not (table.flags.c_contiguous):
        _fail("embedding", "table", "must be contiguous")
    ids = _index(ids, np.int64, "embedding", "ids")
    return _dispatch("embedding", ids, table)


@_version("embedding", "v1")
def _embedding_v1(ids, table):
    ids = _index(ids, np.int64, "embedding", "ids")
    T, (V, H) = ids.shape[0], table.shape
    out = cp.empty((T, H), table.dtype)
    if T:
        _launch("embedding.cu", f"embedding_v1_{SUFFIX[table.dtype]}", (_cdiv(T * H, 256),), (256,),
                (ids, table, out, _i32(T), _i32(H), _i32(V)))
    return out


@_version("embedding", "v2")
def _embedding_v2(ids, table):
    ids = _index(ids, np.int64, "embedding", "ids")
    T, (V, H) = ids.shape[0], table.shape
    row_bytes = H * table.itemsize
    if row_bytes % 16 or not _aligned16(table):
        raise Unsupported
    vecs = row_bytes // 16
    out = cp.empty((T, H), table.dtype)
    if T:
        _launch("embedding.cu", "embedding_v2_any", (T,), (min(256, _cdiv(vecs, 32) * 32),),
                (ids, table, out, _i32(vecs), _i32(V)), pdl_ready=True)
    return out


DEFAULTS["embedding"] = ("v2", "v1")


# ---------------------------------------------------------------- RMSNorm (+ residual)

def _norm_args(op, x, weight, residual=None):
    x = _device_array(x, op, "x", 2)
    weight = _device_array(weight, op, "weight", 1)
    if not (weight.dtype == x.dtype):
        _fail(op, "weight", f"must have x's dtype {x.dtype}, got {weight.dtype}")
    if not (weight.shape[0] == x.shape[1]):
        _fail(op, "weight", f"has {weight.shape[0]} elements for rows of {x.shape[1]}")
    if not (weight.flags.c_contiguous):
        _fail(op, "weight", "must be contiguous")
    _row_stride(x, op, "x")
    if residual is not None:
        residual = _device_array(residual, op, "residual", 2)
        if not (residual.shape == x.shape):
            _fail(op, "residual", f"has shape {residual.shape}, x has {x.shape}")
        if not (residual.dtype == x.dtype):
            _fail(op, "residual", f"must have x's dtype {x.dtype}, got {residual.dtype}")
        if not (residual.flags.c_contiguous):
            _fail(op, "residual", "must be contiguous")


def rms_norm(x, weight, eps: float):
    """x [T, hidden] -> x / sqrt(mean(x²) + eps) · weight, in x's dtype."""
    _norm_args("rms_norm", x, weight)
    return _dispatch("rms_norm", x, weight, eps)


def add_rms_norm(x, residual, weight, eps: float):
    """(rms_norm(x + residual), x + residual), both in x's dtype."""
    _norm_args("add_rms_norm", x, weight, residual)
    return _dispatch("add_rms_norm", x, residual, weight, eps)


def _norm_v1(x, weight, eps, residual=None):
    T, H = x.shape
    ldx = _row_stride(x, "rms_norm", "x")
    out = cp.empty((T, H), x.dtype)
    if not T:
        return out if residual is None else (out, cp.empty_like(out))
    sfx = SUFFIX[x.dtype]
    if residual is None:
        _launch("rms_norm.cu", f"rms_norm_v1_{sfx}", (T,), (256,),
                (x, _i32(ldx), weight, out, _i32(H), np.float32(eps)))
        return out
    res_out = cp.empty((T, H), x.dtype)
    _launch("rms_norm.cu", f"add_rms_norm_v1_{sfx}", (T,), (256,),
            (x, _i32(ldx), residual, weight, out, res_out, _i32(H), np.float32(eps)))
    return out, res_out


def _norm_v2(x, weight, eps, residual=None):
    T, H = x.shape
    ldx = _row_stride(x, "rms_norm", "x")
    if x.dtype != F16 or H % 8 or H > 8192 or not _aligned16(x, weight, ldx * 2) or (
            residual is not None and not _aligned16(residual)):
        raise Unsupported
    out = cp.empty((T, H), x.dtype)
    block = (_cdiv(H // 8, 32) * 32,)
    if residual is None:
        if T:
            _launch("rms_norm.cu", "rms_norm_v2_f16", (T,), block,
                    (x, _i32(ldx), weight, out, _i32(H), np.float32(eps)), pdl_ready=True)
        return out
    res_out = cp.empty((T, H), x.dtype)
    if T:
        _launch("rms_norm.cu", "add_rms_norm_v2_f16", (T,), block,
                (x, _i32(ldx), residual, weight, out, res_out, _i32(H), np.float32(eps)), pdl_ready=True)
    return out, res_out


VERSIONS["rms_norm"] = {"v1": lambda x, w, eps: _norm_v1(x, w, eps), "v2": lambda x, w, eps: _norm_v2(x, w, eps)}
VERSIONS["add_rms_norm"] = {"v1": lambda x, r, w, eps: _norm_v1(x, w, eps, r),
                            "v2": lambda x, r, w, eps: _norm_v2(x, w, eps, r)}
DEFAULTS["rms_norm"] = DEFAULTS["add_rms_norm"] = ("v2", "v1")


# ---------------------------------------------------------------- SiLU-and-mul

def silu_and_mul(gate_up):
    """gate_up [T, 2I] (gate | up) -> silu(gate) · up [T, I]."""
    gate_up = _device_array(gate_up, "silu_and_mul", "gate_up", 2)
    if not (gate_up.shape[1] % 2 == 0):
        _fail("silu_and_mul", "gate_up", f"needs an even last dimension, got {gate_up.shape}")
    if not (gate_up.flags.c_contiguous):
        _fail("silu_and_mul", "gate_up", "must be contiguous")
    return _dispatch("silu_and_mul", gate_up)


@_version("silu_and_mul", "v1")
def _silu_v1(gate_up):
    T, I = gate_up.shape[0], gate_up.shape[1] // 2
    out = cp.empty((T, I), gate_up.dtype)
    if T * I:
        _launch("activation.cu", f"silu_and_mul_v1_{SUFFIX[gate_up.dtype]}", (_cdiv(T * I, 256),), (256,),
                (gate_up, out, _i32(T), _i32(I)))
    return out


@_version("silu_and_mul", "v2")
def _silu_v2(gate_up):
    T, I = gate_up.shape[0], gate_up.shape[1] // 2
    if gate_up.dtype != F16 or I % 8 or not _aligned16(gate_up):
        raise Unsupported
    out = cp.empty((T, I), gate_up.dtype)
    if T * I:
        _launch("activation.cu", "silu_and_mul_v2_f16", (_cdiv(T * I // 8, 256),), (256,),
                (gate_up, out, _i32(T), _i32(I)), pdl_ready=True)
    return out


DEFAULTS["silu_and_mul"] = ("v2", "v1")


# ---------------------------------------------------------------- dense linear (+ the float32 logits)

def _linear_args(op, x, weight, bias):
    x = _device_array(x, op, "x", 2, (F16, F32))
    weight = _device_array(weight, op, "weight", 2)
    if not (weight.dtype == x.dtype):
        _fail(op, "weight", f"must have x's dtype {x.dtype}, got {weight.dtype}")
    if not (weight.shape[1] == x.shape[1]):
        _fail(op, "weight", f"has shape {tuple(weight.shape)}: its second dimension must equal x's "
                            f"{x.shape[1]} (W is [out, in])")
    if not (weight.flags.c_contiguous):
        _fail(op, "weight", "must be contiguous")
    _row_stride(x, op, "x")
    if bias is not None:
        bias = _device_array(bias, op, "bias", 1)
        if not (bias.shape[0] == weight.shape[0]):
            _fail(op, "bias", f"has {bias.shape[0]} elements for {weight.shape[0]} outputs")
        if not (bias.dtype == x.dtype and bias.flags.c_contiguous):
            _fail(op, "bias", f"must be contiguous {x.dtype}")


def linear(x, weight, bias=None):
    """x [M, K] @ weight[N, K].T (+ bias [N]) -> [M, N] in x's dtype, float32 accumulation."""
    _linear_args("linear", x, weight, bias)
    return _dispatch("linear", x, weight, bias, order=linear_order(x.shape[0], weight.shape[0], x.shape[1]))


def logits(x, weight):
    """The vocabulary projection x [R, hidden] @ weight[V, hidden].T -> float32 [R, V]."""
    _linear_args("logits", x, weight, None)
    return _dispatch("logits", x, weight)


def _linear_kernel(version: str, x, weight, bias, out_dtype):
    M, K = x.shape
    N = weight.shape[0]
    ldx = _row_stride(x, "linear", "x")
    f16 = x.dtype == F16
    sfx = SUFFIX[x.dtype] + ("_out32" if out_dtype == F32 and f16 else "")
    if version == "v2" and not (f16 and K % 8 == 0 and M <= SMALL_M and _aligned16(x, weight, ldx * 2)):
        raise Unsupported
    if version == "v3" and not (f16 and _cc() >= 80 and K % 32 == 0 and _aligned16(x, weight, ldx * 2)):
        raise Unsupported
    if version == "v1" and out_dtype != x.dtype and not f16:
        raise Unsupported
    y = cp.empty((M, N), out_dtype)
    if not (M and N):
        return y
    b = NULL if bias is None else bias
    args = (x, _i32(ldx), weight, b, y, _i32(M), _i32(N), _i32(K))
    if version == "v1":
        _launch("linear_f16.cu", f"linear_v1_{sfx}", (_cdiv(N, 128), M), (128,), args)
    elif version == "v2":
        _launch("linear_f16.cu", f"linear_v2_{sfx}", (_cdiv(N, 4),), (128,), args, pdl_ready=True)
    else:
        mt = 1 if M <= SMALL_M else 4
        _launch("linear_f16.cu", f"linear_v3_mt{mt}_{sfx}", (_cdiv(N, 16), _cdiv(M, 8 * mt)), (128,), args,
                pdl_ready=True)
    return y


def _linear_cublas(x, weight, bias):
    if x.shape[0] <= SMALL_M or _capturing():
        raise Unsupported
    y = cp.matmul(x, weight.T)
    return y if bias is None else y + bias


for _v in ("v1", "v2", "v3"):
    VERSIONS.setdefault("linear", {})[_v] = functools.partial(
        lambda v, x, w, b=None: _linear_kernel(v, x, w, b, x.dtype), _v)
    VERSIONS.setdefault("logits", {})[_v] = functools.partial(lambda v, x, w: _linear_kernel(v, x, w, None, F32), _v)
VERSIONS["linear"]["cublas"] = _linear_cublas
DEFAULTS["linear"] = ("cublas", "v2", "v3", "v1")   # linear_order picks the order per call
DEFAULTS["logits"] = ("v2", "v3", "v1")      # v2 streams the tall, thin LM head better (docs/benchmarks.md)


def linear_order(M: int, N: int, K: int) -> tuple[str, ...]:
    """The order linear tries its versions in — measured on an H100 at M = 1 (docs/benchmarks.md): v2 (a warp
    per output) streams 79–101% of the copy rate where N >= K (4096², 12288 × 4096, 22016 × 4096, the LM
    heads), but 69% at 4096 × 11008, where its 4096 warps each walk a long row; v3's tensor-core tiles split K
    over 4 warps and reach 84% there. cuBLAS refuses (Unsupported) at M <= 8 and while a graph is captured."""
    if M <= SMALL_M and K >= 2 * N:
        return ("cublas", "v3", "v2", "v1")
    return DEFAULTS["linear"]


# ---------------------------------------------------------------- W4A16 linear

def linear_w4a16(x, qweight, scales, zeros, group_size: int, bias=None):
    """x [M, K] float16 @ dequant(W).T (+ bias) -> [M, N] float16; W [N, K] packed as qweight [N, K/8] uint32,
    scales / zeros [N, K/g] float16 (refengine/quant/primitives.py). The versions are tried in the order
    w4a16_order(M, N) gives (the measured rule)."""
    _w4a16_args("linear_w4a16", x, qweight, scales, zeros, group_size, bias)
    return _dispatch("linear_w4a16", x, qweight, scales, zeros, group_size, bias,
                     order=w4a16_order(x.shape[0], qweight.shape[0]))


def _w4a16_args(op, x, qweight, scales, zeros, group_size, bias):
    x = _device_array(x, op, "x", 2, (F16,))
    qweight = _device_array(qweight, op, "qweight", 2, (np.dtype(np.uint32),))
    N, K = qweight.shape[0], qweight.shape[1] * 8
    if not (x.shape[1] == K):
        _fail(op, "qweight", f"packs {K} input features (shape {tuple(qweight.shape)}), x has {x.shape[1]}")
    if not (group_size in GROUP_SIZES):
        _fail(op, "group_size", f"must be one of {GROUP_SIZES}, got {group_size}")
    if not (K % group_size == 0):
        _fail(op, "group_size", f"{group_size} does not divide the input dimension {K}")
    for name, a in (("scales", scales), ("zeros", zeros)):
        _device_array(a, op, name, 2, (F16,))
        if not (tuple(a.shape) == (N, K // group_size)):
            _fail(op, name, f"has shape {tuple(a.shape)}, expected {(N, K // group_size)}")
        if not (a.flags.c_contiguous):
            _fail(op, name, "must be contiguous")
    if not (qweight.flags.c_contiguous):
        _fail(op, "qweight", "must be contiguous")
    _row_stride(x, op, "x")
    if bias is not None:
        _device_array(bias, op, "bias", 1, (F16,))
        if not (bias.shape[0] == N and bias.flags.c_contiguous):
            _fail(op, "bias", f"must be a contiguous [{N}] array")


@_version("linear_w4a16", "v1")
def _w4a16_v1(x, qweight, scales, zeros, group_size, bias=None):
    M, K = x.shape
    N = qweight.shape[0]
    y = cp.empty((M, N), F16)
    if M and N:
        _launch("w4a16_gemm.cu", "w4a16_v1_f16", (_cdiv(N, 128), M), (128,),
                (x, _i32(_row_stride(x, "linear_w4a16", "x")), qweight, scales, zeros, _i32(group_size),
                 NULL if bias is None else bias, y, _i32(M), _i32(N), _i32(K)))
    return y


@_version("linear_w4a16", "v2")
def _w4a16_v2(x, qweight, scales, zeros, group_size, bias=None):
    M, K = x.shape
    N = qweight.shape[0]
    ldx = _row_stride(x, "linear_w4a16", "x")
    if _cc() < 80 or K % 32 or not _aligned16(x, qweight, ldx * 2):
        raise Unsupported
    y = cp.empty((M, N), F16)
    if M and N:
        mt = 1 if M <= SMALL_M else 4
        _launch("w4a16_gemm.cu", f"w4a16_v2_mt{mt}_f16", (_cdiv(N, 16), _cdiv(M, 8 * mt)), (128,),
                (x, _i32(ldx), qweight, scales, zeros, _i32(group_size), NULL if bias is None else bias, y,
                 _i32(M), _i32(N), _i32(K)))
    return y


def dequantize_w4a16(qweight, scales, zeros, group_size: int):
    """The float16 weight [N, K] of a packed int4 one (v4's first step; also handy for tests)."""
    N, K = qweight.shape[0], qweight.shape[1] * 8
    w = cp.empty((N, K), F16)
    if N * K:
        _launch("w4a16_gemm.cu", "w4a16_dequant", (_cdiv(N * K // 8, 256),), (256,),
                (qweight, scales, zeros, _i32(group_size), w, _i32(N), _i32(K)))
    return w


@_version("linear_w4a16", "v3")
def _w4a16_v3(x, qweight, scales, zeros, group_size, bias=None):
    M, K = x.shape
    N = qweight.shape[0]
    ldx = _row_stride(x, "linear_w4a16", "x")
    if _cc() < 80 or K % 32 or M > SMALL_M or not _aligned16(x, qweight, ldx * 2):
        raise Unsupported
    y = cp.empty((M, N), F16)
    if M and N:
        _launch("w4a16_gemm.cu", "w4a16_v3_f16", (_cdiv(N, 16),), (256,),
                (x, _i32(ldx), qweight, scales, zeros, _i32(group_size), NULL if bias is None else bias, y,
                 _i32(M), _i32(N), _i32(K)), pdl_ready=True)
    return y


@_version("linear_w4a16", "v4")
def _w4a16_v4(x, qweight, scales, zeros, group_size, bias=None):
    if x.shape[0] < W4A16_CUBLAS_M or _capturing():
        raise Unsupported
    y = cp.matmul(x, dequantize_w4a16(qweight, scales, zeros, group_size).T)
    return y if bias is None else y + bias


# ---- v5 (GEMV) and v6 (GEMM): the streaming kernels of kernels_cu/w4a16_stream.cuh

W4A16_TC_MAX_M = 64             # rows up to which v6 beats v4 (dequantize + cuBLAS) eagerly (docs/benchmarks.md)


@dataclasses.dataclass(frozen=True)
class W4Stream:
    """One instantiation of w4a16_stream.cuh's W4Stream<NA, MB, WN, WK, CPW, STAGES, XFULL, ACT> (same numbers)."""
    kernel: str
    na: int                      # 16-row A tiles (output features) per warp
    mb: int                      # 8-row B tiles (rows of x) per tile
    wn: int                      # warps along N
    wk: int                      # warps along K
    cpw: int                     # chunks (128 k) per warp and slab
    stages: int
    xfull: bool                  # all of x in shared memory (else a slice per stage)

    bn = property(lambda self: 16 * self.na * self.wn)
    bm = property(lambda self: 8 * self.mb)
    threads = property(lambda self: 32 * self.wn * self.wk)

    def smem(self, M: int, K: int, group_size: int) -> int:
        """Dynamic shared memory bytes: the kernel's layout (it traps if given less)."""
        kc, bn = self.wk * self.cpw, self.bn
        stage = _cdiv(kc * bn * 64 + 2 * bn * (2 * kc + 1) * 4 + (0 if self.xfull else self.bm * (kc * 256 + 32)),
                      16) * 16
        red = self.wk * self.wn * self.na * self.mb * 4 * 32 * 4 if self.wk > 1 else 0
        xfull = M * (_cdiv(K, 128) * 256 + 64) + K // group_size * 32 if self.xfull else 0
        return self.stages * stage + red + xfull


W4A16_STREAM = {
    "v5": W4Stream("w4a16_v5_f16", 1, 1, 1, 8, 2, 4, True),
    "v5s3": W4Stream("w4a16_v5s3_f16", 1, 1, 1, 8, 2, 3, True),
    "silu_v5": W4Stream("w4a16_silu_v5_f16", 1, 1, 1, 8, 2, 4, True),
    "v6_m16": W4Stream("w4a16_v6_m16_f16", 2, 2, 4, 1, 1, 4, False),
    "v6_m32": W4Stream("w4a16_v6_m32_f16", 2, 4, 4, 1, 1, 4, False),
    "v6_m64": W4Stream("w4a16_v6_m64_f16", 2, 8, 4, 1, 1, 3, False),
}
_w4_work: dict[int, list] = {}   # device id -> [(float32 slots, int32 tile counters), ...older kept for graphs]
_smem_optin: dict[tuple, int] = {}


@functools.lru_cache(maxsize=None)
def _smem_limits(device_id: int) -> tuple[int, int]:
    """(shared memory per multiprocessor, the most one block may opt in to), bytes."""
    attrs = cp.cuda.Device(device_id).attributes
    return int(attrs["MaxSharedMemoryPerMultiprocessor"]), int(attrs["MaxSharedMemoryPerBlockOptin"])


def _own_array(n: int, dtype, zero: bool = False):
    """A 1-D array on its own cudaMalloc allocation, outside every memory pool: kept for the process, it must
    outlive whatever private pool (a graph capture's, a benchmark's) happened to be current when it was made."""
    a = cp.ndarray((n,), dtype, cp.cuda.MemoryPointer(cp.cuda.Memory(n * np.dtype(dtype).itemsize), 0))
    if zero:
        cp.cuda.runtime.memset(a.data.ptr, 0, a.nbytes)
    return a


def _w4a16_workspace(floats: int, tiles: int):
    """Partial-tile slots (no initial value needed) and per-tile counters (zero; each launch leaves them zero).
    Made by an eager call (the warm-up before a capture); a capture that would need a larger one refuses."""
    pairs = _w4_work.setdefault(cp.cuda.Device().id, [])
    if not pairs or pairs[-1][0].size < floats or pairs[-1][1].size < tiles:
        if _capturing():
            raise Unsupported
        pairs.append((_own_array(max(floats, 1 << 20), F32), _own_array(max(tiles, 4096), np.int32, zero=True)))
    return pairs[-1]


def _stream_ok(x, ldx, qweight, scales, zeros, K) -> bool:
    return (_cc() >= 80 and K % 32 == 0 and _aligned16(x, qweight, ldx * 2) and qweight.size < 2 ** 31
            and scales.data.ptr % 4 == 0 and zeros.data.ptr % 4 == 0)


def _stream_kernel(cfg: W4Stream, smem: int):
    """The compiled kernel, allowed `smem` bytes of dynamic shared memory and the largest shared-memory
    carveout (without it the driver may size L1 / shared memory for one block per multiprocessor)."""
    return _kernel_smem_optin("w4a16_gemm.cu", cfg.kernel, smem)


def _kernel_smem_optin(file: str, kernel: str, smem: int):
    """`kernel` of `file` with the largest shared-memory carveout, allowed `smem` bytes of dynamic shared
    memory: attributes raised once per kernel and device, not per launch (an attribute is not a stream op)."""
    fn = _fn(file, kernel)
    key = (kernel, cp.cuda.Device().id)
    if key not in _smem_optin:
        fn.preferred_shared_memory_carveout = 100
        _smem_optin[key] = 48 << 10
    if smem > _smem_optin[key]:
        fn.max_dynamic_shared_size_bytes = smem
        _smem_optin[key] = smem
    return fn


@functools.lru_cache(maxsize=1024)
def _blocks_per_sm(kernel: str, device_id: int, threads: int, smem: int) -> int:
    fn = _fn("w4a16_gemm.cu", kernel)
    try:
        return max(1, cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.kernel.ptr, threads, smem))
    except (AttributeError, cp.cuda.driver.CUDADriverError):
        return max(1, min(2, _smem_limits(device_id)[0] // (smem + 1024)))


def w4a16_stream_plan(cfg: W4Stream, M: int, N: int, K: int, group_size: int, blocks=None, tile_mode=None):
    """(blocks, tile_mode, shared bytes) of a launch, or None if its shared memory does not fit one block.
    Tile mode (no tile shared between blocks) when whole tiles fill the multiprocessors' block slots to at
    least 85% (a shared tile costs a counter and a second pass); otherwise the granule is one slab and a
    shared tile is summed by the last of its blocks."""
    smem = cfg.smem(M, K, group_size)
    device = cp.cuda.Device().id
    if smem > _smem_limits(device)[1]:
        return None
    _stream_kernel(cfg, smem)
    slots = _sms() * min(4, _blocks_per_sm(cfg.kernel, device, cfg.threads, smem))
    tiles = _cdiv(N, cfg.bn) * _cdiv(M, cfg.bm)
    slabs = tiles * _cdiv(_cdiv(K, 128), cfg.wk * cfg.cpw)
    if tile_mode is None:
        tile_mode = tiles >= 0.85 * slots * _cdiv(tiles, slots)
    granules = tiles if tile_mode else slabs
    return min(blocks or slots, granules), bool(tile_mode), smem


def _w4a16_stream(cfg: W4Stream, x, ldx, qweight, scales, zeros, group_size, bias, M, K, blocks=None,
                  tile_mode=None):
    """Launch a streaming kernel (x may be gate_up for the silu variant: then ldx = 2K, K its half)."""
    N = qweight.shape[0]
    plan = w4a16_stream_plan(cfg, M, N, K, group_size, blocks, tile_mode)
    if plan is None:
        raise Unsupported
    B, tile_mode, smem = plan
    if not (M and N):
        return cp.empty((M, N), F16)
    ws, counters = _w4a16_workspace(B * 2 * cfg.bn * cfg.bm, _cdiv(N, cfg.bn) * _cdiv(M, cfg.bm))
    y = cp.empty((M, N), F16)
    fn = _stream_kernel(cfg, smem)
    fn((B,), (cfg.threads,), (x, _i32(ldx), qweight, scales, zeros, _i32(group_size), NULL if bias is None else bias,
                              y, _i32(M), _i32(N), _i32(K), ws, counters, _i32(tile_mode)), shared_mem=smem)
    return y


@_version("linear_w4a16", "v5")
def _w4a16_v5(x, qweight, scales, zeros, group_size, bias=None, variant="v5"):
    M, K = x.shape
    ldx = _row_stride(x, "linear_w4a16", "x")
    if M > SMALL_M or not _stream_ok(x, ldx, qweight, scales, zeros, K):
        raise Unsupported
    return _w4a16_stream(W4A16_STREAM[variant], x, ldx, qweight, scales, zeros, group_size, bias, M, K)


def w4a16_v6_config(M: int) -> str:
    """The v6 tile height for M rows: 16, 32 or 64 rows of x per tile (the smallest that holds them)."""
    return "v6_m16" if M <= 16 else "v6_m32" if M <= 32 else "v6_m64"


@_version("linear_w4a16", "v6")
def _w4a16_v6(x, qweight, scales, zeros, group_size, bias=None):
    M, K = x.shape
    ldx = _row_stride(x, "linear_w4a16", "x")
    if not _stream_ok(x, ldx, qweight, scales, zeros, K):
        raise Unsupported
    return _w4a16_stream(W4A16_STREAM[w4a16_v6_config(M)], x, ldx, qweight, scales, zeros, group_size, bias, M, K)


# ---- v7: the CUDA-core GEMV of kernels_cu/w4a16_gemv.cu (M <= 8; no tensor cores, no shared memory)

# rows of x held (MB) -> (rows per warp R, ring depth D); measured on an H100 (g128, M = 1: 4096², 11008 × 4096,
# 4096 × 11008): R2 D2 7.45 / 15.7 / 14.9 µs, R4 D2 7.9 / 15.0 / 15.6, R2 D4 8.3 / 17.1 / 16.1, R1 D8 10.2 / 23.3 /
# 21.3; M = 4: R4 D2 11.3 / 27.6 / 24.5, R2 D4 14.8 / 37.9 / 34.2. MB = 2 is not measured yet.
W4A16_V7 = {1: (2, 2), 2: (2, 4), 4: (4, 2), 8: (2, 2)}
W4A16_V7_TUNE = ((1, 2, 4), (1, 1, 8), (1, 4, 2), (4, 2, 4))  # further (MB, R, D) compiled, for tools/bench_kernels.py
W4A16_SILU_V7 = {1: (2, 4), 2: (2, 4), 4: (2, 4), 8: (2, 2)}  # the fused-silu instantiations (not tuned: it loses)
W4A16_V7_MAX_M = 1              # rows up to which v8 / v7 beat v3 (v8 ties v3 at M = 2, v7 and v8 lose at M = 4)


def w4a16_v7_mb(M: int) -> int:
    """The kernel's row capacity MB for M rows of x: 1, 2, 4 or 8 (the smallest that holds them)."""
    return 1 if M <= 1 else 2 if M <= 2 else 4 if M <= 4 else 8


@functools.lru_cache(maxsize=None)
def _v7_warp_slots(kernel: str, device_id: int) -> int:
    """Warps of `kernel` (128-thread blocks) resident on the whole GPU at once."""
    fn = _fn("w4a16_gemv.cu", kernel)
    try:
        per_sm = cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.kernel.ptr, 128, 0)
    except (AttributeError, cp.cuda.driver.CUDADriverError):
        per_sm = 4
    return max(1, per_sm) * 4 * _device_info(device_id)[1]


def w4a16_v7_blocks(kernel: str, N: int, R: int) -> int:
    """Blocks of a v7 launch. Each warp takes ceil(G / slots) of the G = ceil(N / R) row groups (G / slots
    rounded up: its share when every resident warp works); then as few warps as that share allows, so that all
    of them run the same number of row groups (±1) and none is left streaming alone at the end. (Filling only
    part of the slots, to leave room for the next kernel's early blocks, measured slower at every fraction.)"""
    groups = _cdiv(N, R)
    share = _cdiv(groups, _v7_warp_slots(kernel, cp.cuda.Device().id))
    return _cdiv(_cdiv(groups, share), 4)


def _v7_ok(x, ldx, qweight, M: int, K: int) -> bool:
    return (_cc() >= 70 and M <= SMALL_M and K % 32 == 0 and _aligned16(x, qweight, ldx * 2)
            and qweight.size < 2 ** 31)


# ---- v8: v7 with its multiply-adds on float16 pairs (HFMA2; M <= 4). (R, D, PW): PW = words of 8 weights whose
# products share one float16 partial before it is added in float32 (1: at most 4 products per partial).
W4A16_V8 = {1: (2, 3, 1), 2: (2, 2, 1), 4: (2, 2, 1)}
W4A16_V8_MAX_MB = 4
W4A16_V8_TUNE = ((1, 2, 2, 1), (1, 2, 2, 2), (1, 2, 2, 4), (1, 2, 4, 1), (1, 2, 4, 2), (1, 4, 2, 1), (1, 4, 2, 2),
                 (1, 1, 4, 1))
_W4A16_GEMV_TABLES = {"w4a16_v7": W4A16_V7, "w4a16_silu_v7": W4A16_SILU_V7, "w4a16_v8": W4A16_V8}


def _w4a16_v7_launch(prefix, x, ldx, qweight, scales, zeros, group_size, bias, M, K, config=None):
    """Launch w4a16_gemv.cu's `prefix`_m{MB}_r{R}_d{D}[_p{PW}]_f16; config = (R, D[, PW]) overrides the table
    (tuning)."""
    N, mb = qweight.shape[0], w4a16_v7_mb(M)
    R, D, *pw = config or _W4A16_GEMV_TABLES[prefix][mb]
    kernel = f"{prefix}_m{mb}_r{R}_d{D}" + "".join(f"_p{p}" for p in pw) + "_f16"
    y = cp.empty((M, N), F16)
    if M and N:
        _launch("w4a16_gemv.cu", kernel, (w4a16_v7_blocks(kernel, N, R),), (128,),
                (x, _i32(ldx), qweight, scales, zeros, _i32(group_size), NULL if bias is None else bias, y,
                 _i32(M), _i32(N), _i32(K)), pdl_ready=True)
    return y


@_version("linear_w4a16", "v7")
def _w4a16_v7(x, qweight, scales, zeros, group_size, bias=None, config=None):
    M, K = x.shape
    ldx = _row_stride(x, "linear_w4a16", "x")
    if not _v7_ok(x, ldx, qweight, M, K):
        raise Unsupported
    return _w4a16_v7_launch("w4a16_v7", x, ldx, qweight, scales, zeros, group_size, bias, M, K, config)


@_version("linear_w4a16", "v8")
def _w4a16_v8(x, qweight, scales, zeros, group_size, bias=None, config=None):
    M, K = x.shape
    ldx = _row_stride(x, "linear_w4a16", "x")
    if M > W4A16_V8_MAX_MB or not _v7_ok(x, ldx, qweight, M, K):
        raise Unsupported
    return _w4a16_v7_launch("w4a16_v8", x, ldx, qweight, scales, zeros, group_size, bias, M, K, config)


# ---- v9: the GEMV of kernels_cu/w4a16_gemv_bulk.cu (M = 1, sm_90+): each block's weights arrive in shared memory by
# TMA bulk copies issued before pdl_wait(); RB rows per block over W warps (RB / W rows each), grid N / RB. Faster
# than v8 in a chain of itself at 4096² (4.4 vs 5.4 µs), slower in the decode graphs: not in w4a16_order.
W4A16_V9 = ((16, 4), (8, 4))             # (RB, W) in order of preference (x staged in shared memory)
W4A16_V9_SMEM = 48 << 10                 # shared memory per block the choice stays within where it can
W4A16_V9_TUNE = ((16, 4, True), (8, 4, True), (32, 8, True), (16, 4, False))   # compiled (RB, W, x staged)
_V9_HEAD = 128                           # bytes of mbarriers before the weights (V9_HEAD in the kernel)


def w4a16_v9_smem(rb: int, K: int, group_size: int, x_staged: bool = True) -> int:
    """Dynamic shared memory bytes of a v9 block, the kernel's layout: the barriers, then the block's
    qweight [RB, K/8], scales and zeros [RB, K/g] and (x staged) x [K]."""
    return _V9_HEAD + rb * K // 2 + 4 * rb * (K // group_size) + (2 * K if x_staged else 0)


def w4a16_v9_config(N: int, K: int, group_size: int) -> tuple[int, int, bool] | None:
    """(RB, W, x staged) for N outputs: the first of W4A16_V9 whose RB divides N in at most W4A16_V9_SMEM bytes of
    shared memory, else the one with the smallest RB that divides N (more shared memory); None if none does."""
    fits = [(rb, w) for rb, w in W4A16_V9 if N % rb == 0]
    modest = [c for c in fits if w4a16_v9_smem(c[0], K, group_size) <= W4A16_V9_SMEM]
    pick = modest[0] if modest else min(fits) if fits else None
    return None if pick is None else (*pick, True)


def _v9_ok(x, qweight, scales, zeros, M: int, K: int, group_size: int, rb: int) -> bool:
    """Bulk copies need sm_90, 16-byte aligned sources and sizes: each block's scales / zeros span RB·K/g·2 bytes."""
    return (M == 1 and _cc() >= 90 and K % 32 == 0 and group_size in (32, 64, 128) and qweight.shape[0] % rb == 0
            and rb * (K // group_size) * 2 % 16 == 0 and _aligned16(x, qweight, scales, zeros))


@_version("linear_w4a16", "v9")
def _w4a16_v9(x, qweight, scales, zeros, group_size, bias=None, config=None):
    """config = (RB, W, x staged in shared memory) overrides the choice (tuning; W4A16_V9_TUNE lists what is
    compiled)."""
    M, K = x.shape
    N = qweight.shape[0]
    rb, warps, staged = config or w4a16_v9_config(N, K, group_size) or (None,) * 3
    if rb is None or not _v9_ok(x, qweight, scales, zeros, M, K, group_size, rb):
        raise Unsupported
    smem = w4a16_v9_smem(rb, K, group_size, staged)
    if smem > _smem_limits(cp.cuda.Device().id)[1]:
        raise Unsupported
    kernel = f"w4a16_v9_r{rb}_w{warps}" + ("" if staged else "_xg") + "_f16"
    y = cp.empty((M, N), F16)
    if N:
        _kernel_smem_optin("w4a16_gemv_bulk.cu", kernel, smem)
        _launch("w4a16_gemv_bulk.cu", kernel, (N // rb,), (32 * warps,),
                (x, qweight, scales, zeros, _i32(group_size), NULL if bias is None else bias, y, _i32(N), _i32(K)),
                shared_mem=smem, pdl_ready=True)
    return y


def w4a16_order(M: int, N: int) -> tuple[str, ...]:
    """The order linear_w4a16 tries its versions in for M rows and N outputs — the rule measured on an H100
    (docs/benchmarks.md, 4096 × 4096 and 11008 × 4096, g128):
        M <= W4A16_V7_MAX_M             v8   (5.4 / 11.3 vs v7 7.1 / 13.9 and v3 7.6 / 18.1 µs at M = 1, graphs
                                              with PDL; at M = 2 v8 ties v3, at M = 4 it loses: 13.0 vs 8.0.
                                              v9 wins a chain of itself at 4096², 4.4 µs, but loses inside the
                                              decode graphs: 7B W4A16 replay 2.355 vs 2.319 ms, default-model shape
                                              1160 vs 1343 tok/s; and alone from 11008 × 4096 on: 12.1 vs 11.3)
        M <= 8                          v3   (v5 streams, but its per-slab work costs more than it saves)
        M <= 32, ceil(N / 16) <= 2·SMs  v2   (its grid is one wave: 15.4 vs v6 19.9 µs at M = 16, N = 4096)
        M <= W4A16_TC_MAX_M             v6   (29.2 vs v2 31.7 µs at M = 16, N = 11008; 28.6 vs v4 30.1 at M = 64)
        more rows                       v4   (dequantize once + cuBLAS; refuses while a graph is captured: v6)
    Each list ends with versions that take whatever the first refuses (K % 32, alignment, sm < 80; v7 runs
    from sm 7.0)."""
    if M <= W4A16_V7_MAX_M:
        return ("v8", "v7", "v3", "v2", "v1")
    if M <= SMALL_M:
        return ("v3", "v7", "v2", "v1")
    if M <= 32 and _cdiv(N, 16) <= 2 * _sms():
        return ("v2", "v6", "v1")
    if M <= W4A16_TC_MAX_M:
        return ("v6", "v2", "v1")
    return ("v4", "v6", "v2", "v1")


# w4a16_order picks the order per call; v9 (sm_90) is tested and benchmarked, not chosen (see w4a16_order)
DEFAULTS["linear_w4a16"] = ("v8", "v7", "v3", "v6", "v4", "v2", "v5", "v1", "v9")


# ---------------------------------------------------------------- the MLP's down projection with silu fused in

def silu_and_mul_linear(gate_up, weight, bias=None):
    """linear(silu_and_mul(gate_up), weight, bias): gate_up [M, 2K] -> [M, N]; one kernel for M <= 8."""
    op = "silu_and_mul_linear"
    gate_up = _device_array(gate_up, op, "gate_up", 2)
    if not (gate_up.shape[1] % 2 == 0 and gate_up.flags.c_contiguous):
        _fail(op, "gate_up", f"must be contiguous with an even last dimension, got {tuple(gate_up.shape)}")
    _linear_args(op, gate_up[:, :gate_up.shape[1] // 2], weight, bias)
    return _dispatch(op, gate_up, weight, bias)


def silu_and_mul_linear_w4a16(gate_up, qweight, scales, zeros, group_size: int, bias=None):
    """linear_w4a16(silu_and_mul(gate_up), ...): gate_up [M, 2K] float16 -> [M, N]; one kernel for M <= 8."""
    op = "silu_and_mul_linear_w4a16"
    gate_up = _device_array(gate_up, op, "gate_up", 2, (F16,))
    if not (gate_up.shape[1] % 2 == 0 and gate_up.flags.c_contiguous):
        _fail(op, "gate_up", f"must be contiguous with an even last dimension, got {tuple(gate_up.shape)}")
    _w4a16_args(op, gate_up[:, :gate_up.shape[1] // 2], qweight, scales, zeros, group_size, bias)
    return _dispatch(op, gate_up, qweight, scales, zeros, group_size, bias)


def _fused_silu_ok(gate_up, weight_ptr_array) -> bool:
    M, K = gate_up.shape[0], gate_up.shape[1] // 2
    return (gate_up.dtype == F16 and M <= SMALL_M and K % 32 == 0 and _cc() >= 80
            and _aligned16(gate_up, weight_ptr_array, gate_up.shape[1] * 2))


@_version("silu_and_mul_linear", "v3")
def _silu_linear_v3(gate_up, weight, bias=None):
    if not _fused_silu_ok(gate_up, weight):
        raise Unsupported
    M, K, N = gate_up.shape[0], gate_up.shape[1] // 2, weight.shape[0]
    y = cp.empty((M, N), F16)
    if M and N:
        _launch("linear_f16.cu", "linear_silu_v3_f16", (_cdiv(N, 16), 1), (128,),
                (gate_up, _i32(2 * K), weight, NULL if bias is None else bias, y, _i32(M), _i32(N), _i32(K)))
    return y


@_version("silu_and_mul_linear", "unfused")
def _silu_linear_unfused(gate_up, weight, bias=None):
    return linear(silu_and_mul(gate_up), weight, bias)


@_version("silu_and_mul_linear_w4a16", "v3")
def _silu_w4a16_v3(gate_up, qweight, scales, zeros, group_size, bias=None):
    if not _fused_silu_ok(gate_up, qweight):
        raise Unsupported
    M, K, N = gate_up.shape[0], gate_up.shape[1] // 2, qweight.shape[0]
    y = cp.empty((M, N), F16)
    if M and N:
        _launch("w4a16_gemm.cu", "w4a16_silu_v3_f16", (_cdiv(N, 16),), (256,),
                (gate_up, _i32(2 * K), qweight, scales, zeros, _i32(group_size), NULL if bias is None else bias, y,
                 _i32(M), _i32(N), _i32(K)))
    return y


@_version("silu_and_mul_linear_w4a16", "v5")
def _silu_w4a16_v5(gate_up, qweight, scales, zeros, group_size, bias=None):
    M, K = gate_up.shape[0], gate_up.shape[1] // 2
    if M > SMALL_M or not _stream_ok(gate_up, 2 * K, qweight, scales, zeros, K):
        raise Unsupported
    return _w4a16_stream(W4A16_STREAM["silu_v5"], gate_up, 2 * K, qweight, scales, zeros, group_size, bias, M, K)


@_version("silu_and_mul_linear_w4a16", "v7")
def _silu_w4a16_v7(gate_up, qweight, scales, zeros, group_size, bias=None, config=None):
    M, K = gate_up.shape[0], gate_up.shape[1] // 2
    if not _v7_ok(gate_up, 2 * K, qweight, M, K):
        raise Unsupported
    return _w4a16_v7_launch("w4a16_silu_v7", gate_up, 2 * K, qweight, scales, zeros, group_size, bias, M, K, config)


@_version("silu_and_mul_linear_w4a16", "unfused")
def _silu_w4a16_unfused(gate_up, qweight, scales, zeros, group_size, bias=None):
    return linear_w4a16(silu_and_mul(gate_up), qweight, scales, zeros, group_size, bias)


# measured (docs/benchmarks.md): the fused kernel loses — its activation work sits on the critical path of
# every chunk for the few lanes that own the rows, which costs more than the separate launch it saves
DEFAULTS["silu_and_mul_linear"] = ("unfused", "v3")
# unfused 24.9, v5 26.4, v3 77.6 µs (4096 × 11008); a later run: unfused 19.2 (silu_and_mul + v3, before v7 took
# M = 1), v7 64.8 (silu on load, shared by only 2 rows a warp)
DEFAULTS["silu_and_mul_linear_w4a16"] = ("unfused", "v5", "v3")


# ---------------------------------------------------------------- rotary embedding

@functools.lru_cache(maxsize=256)
def _inv_freq_cached(device_id: int, head_dim, theta, scaling, max_position, seq_len):
    return cp.asarray(_ref.rope_inv_freq(head_dim, theta, scaling, max_position, seq_len))


def rope_inv_freq(head_dim: int, theta: float, scaling, max_position: int, seq_len: int = 0):
    """reference.rope_inv_freq computed on the host once per argument set, kept on the device (so that a
    captured decode step finds it there instead of copying it in)."""
    return _inv_freq_cached(cp.cuda.Device().id, head_dim, theta, scaling, max_position, seq_len)


def rotary_embedding(x, positions, inv_freq):
    """x [T, heads, D] rotated by position -> [T, heads, D] in x's dtype (token rows of x may be strided)."""
    op = "rotary_embedding"
    x = _device_array(x, op, "x", 3)
    if not (x.shape[2] % 2 == 0):
        _fail(op, "x", f"needs an even head_dim, got {x.shape[2]}")
    _row_stride(x, op, "x")
    positions = _index(positions, np.int64, op, "positions")
    if not (positions.shape[0] == x.shape[0]):
        _fail(op, "positions", f"has {positions.shape[0]} entries for {x.shape[0]} tokens")
    inv = inv_freq if isinstance(inv_freq, cp.ndarray) else cp.asarray(np.asarray(inv_freq, np.float32))
    if not (inv.dtype == F32 and inv.shape == (x.shape[2] // 2,)):
        _fail(op, "inv_freq", f"must be float32 [{x.shape[2] // 2}], got {inv.dtype} {tuple(inv.shape)}")
    return _dispatch(op, x, positions, inv)


@_version("rotary_embedding", "v1")
def _rope_v1(x, positions, inv_freq):
    T, heads, D = x.shape
    positions = _index(positions, np.int64, "rotary_embedding", "positions")
    out = cp.empty((T, heads, D), x.dtype)
    n = T * heads * D // 2
    if n:
        _launch("rope.cu", f"rope_v1_{SUFFIX[x.dtype]}", (_cdiv(n, 256),), (256,),
                (x, _i32(_row_stride(x, "rotary_embedding", "x")), positions, inv_freq, out, _i32(T), _i32(heads),
                 _i32(D)), pdl_ready=True)
    return out


DEFAULTS["rotary_embedding"] = ("v1",)


def rotary_embedding_write_kv(qk, v, positions, inv_freq, k_cache, v_cache, slot_mapping):
    """Rotate the q|k heads qk [T, H + KVH, D] and store the rotated k heads (the last KVH) and v [T, KVH, D]
    at slot_mapping in the paged caches; returns the rotated qk [T, H + KVH, D]."""
    op = "rotary_embedding_write_kv"
    qk = _device_array(qk, op, "qk", 3)
    _row_stride(qk, op, "qk")
    if not (qk.shape[2] % 2 == 0):
        _fail(op, "qk", f"needs an even head_dim, got {qk.shape[2]}")
    v = _device_array(v, op, "v", 3)
    _row_stride(v, op, "v")
    _cache_args(op, k_cache, v_cache)
    if not (v.shape[0] == qk.shape[0] and v.shape[2] == qk.shape[2] and v.shape[1] < qk.shape[1]):
        _fail(op, "v", f"has shape {tuple(v.shape)}: must be [T, KVH, D] with fewer heads than qk {tuple(qk.shape)}")
    if not (tuple(k_cache.shape[2:]) == tuple(v.shape[1:])):
        _fail(op, "k_cache", f"holds [KVH, D] = {tuple(k_cache.shape[2:])}, v has {tuple(v.shape[1:])}")
    for name, a in (("v", v), ("k_cache", k_cache)):
        if not (a.dtype == qk.dtype):
            _fail(op, name, f"must have qk's dtype {qk.dtype}, got {a.dtype}")
    positions = _index(positions, np.int64, op, "positions")
    slots = _index(slot_mapping, np.int64, op, "slot_mapping")
    for name, a in (("positions", positions), ("slot_mapping", slots)):
        if not (a.shape[0] == qk.shape[0]):
            _fail(op, name, f"has {a.shape[0]} entries for {qk.shape[0]} tokens")
    inv = inv_freq if isinstance(inv_freq, cp.ndarray) else cp.asarray(np.asarray(inv_freq, np.float32))
    if not (inv.dtype == F32 and inv.shape == (qk.shape[2] // 2,)):
        _fail(op, "inv_freq", f"must be float32 [{qk.shape[2] // 2}], got {inv.dtype} {tuple(inv.shape)}")
    return _dispatch(op, qk, v, positions, inv, k_cache, v_cache, slots)


@_version("rotary_embedding_write_kv", "v1")
def _rope_write_kv_v1(qk, v, positions, inv_freq, k_cache, v_cache, slot_mapping):
    T, all_heads, D = qk.shape
    KVH = v.shape[1]
    positions = _index(positions, np.int64, "rotary_embedding_write_kv", "positions")
    slots = _index(slot_mapping, np.int64, "rotary_embedding_write_kv", "slot_mapping")
    out = cp.empty((T, all_heads, D), qk.dtype)
    n = T * all_heads * D // 2
    if n:
        _launch("rope.cu", f"rope_write_kv_v1_{SUFFIX[qk.dtype]}", (_cdiv(n, 256),), (256,),
                (qk, _i32(_row_stride(qk, "rotary_embedding_write_kv", "qk")), v,
                 _i32(_row_stride(v, "rotary_embedding_write_kv", "v")), positions, inv_freq, out, k_cache, v_cache,
                 slots, _i32(T), _i32(all_heads - KVH), _i32(KVH), _i32(D)), pdl_ready=True)
    return out


@_version("rotary_embedding_write_kv", "unfused")
def _rope_write_kv_unfused(qk, v, positions, inv_freq, k_cache, v_cache, slot_mapping):
    out = rotary_embedding(qk, positions, inv_freq)
    write_kv_cache(out[:, qk.shape[1] - v.shape[1]:], v, k_cache, v_cache, slot_mapping)
    return out


DEFAULTS["rotary_embedding_write_kv"] = ("v1", "unfused")


# ---------------------------------------------------------------- paged KV cache

def _cache_args(op, k_cache, v_cache):
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        _device_array(c, op, name, 4)
        if not (c.flags.c_contiguous):
            _fail(op, name, "must be contiguous")
    if not (k_cache.shape == v_cache.shape and k_cache.dtype == v_cache.dtype):
        _fail(op, "v_cache", f"must match k_cache ({k_cache.dtype} {tuple(k_cache.shape)}), "
                             f"got {v_cache.dtype} {tuple(v_cache.shape)}")


def write_kv_cache(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Store k, v [T, KVH, D] at slot_mapping[t] of the paged caches [NB, BS, KVH, D] (negative slot: skip)."""
    op = "write_kv_cache"
    _cache_args(op, k_cache, v_cache)
    for name, a in (("k", k), ("v", v)):
        _device_array(a, op, name, 3)
        if not (tuple(a.shape[1:]) == tuple(k_cache.shape[2:])):
            _fail(op, name, f"has shape {tuple(a.shape)}: [T, KVH, D] must match the cache's "
                            f"{tuple(k_cache.shape[2:])}")
        if not (a.dtype == k_cache.dtype):
            _fail(op, name, f"must have the cache's dtype {k_cache.dtype}, got {a.dtype}")
        _row_stride(a, op, name)
    if not (k.shape == v.shape):
        _fail(op, "v", f"has shape {tuple(v.shape)}, k has {tuple(k.shape)}")
    slots = _index(slot_mapping, np.int64, op, "slot_mapping")
    if not (slots.shape[0] == k.shape[0]):
        _fail(op, "slot_mapping", f"has {slots.shape[0]} entries for {k.shape[0]} tokens")
    _dispatch(op, k, v, k_cache, v_cache, slots)


@_version("write_kv_cache", "v1")
def _write_kv_v1(k, v, k_cache, v_cache, slot_mapping):
    slots = _index(slot_mapping, np.int64, "write_kv_cache", "slot_mapping")
    T, row = k.shape[0], k.shape[1] * k.shape[2]
    if T:
        _launch("kv_cache.cu", f"write_kv_cache_v1_{SUFFIX[k.dtype]}", (_cdiv(T * row, 256),), (256,),
                (k, _i32(_row_stride(k, "write_kv_cache", "k")), v, _i32(_row_stride(v, "write_kv_cache", "v")),
                 k_cache, v_cache, slots, _i32(T), _i32(row)))


@_version("write_kv_cache", "v2")
def _write_kv_v2(k, v, k_cache, v_cache, slot_mapping):
    slots = _index(slot_mapping, np.int64, "write_kv_cache", "slot_mapping")
    T, row_bytes = k.shape[0], k.shape[1] * k.shape[2] * k.itemsize
    ldk, ldv = _row_stride(k, "write_kv_cache", "k") * k.itemsize, _row_stride(v, "write_kv_cache", "v") * v.itemsize
    if row_bytes % 16 or not _aligned16(k, v, k_cache, v_cache, ldk, ldv):
        raise Unsupported
    vecs = row_bytes // 16
    if T:
        _launch("kv_cache.cu", "write_kv_cache_v2_any", (_cdiv(T * vecs, 256),), (256,),
                (k, _i32(ldk // 16), v, _i32(ldv // 16), k_cache, v_cache, slots, _i32(T), _i32(vecs)), pdl_ready=True)


DEFAULTS["write_kv_cache"] = ("v2", "v1")


def copy_blocks(k_caches: list, v_caches: list, src, dst) -> None:
    """Copy block src[j] -> dst[j] in every layer's caches, in place (one launch for all layers and pairs)."""
    op = "copy_blocks"
    src_h, dst_h = np.asarray(src, dtype=np.int64).reshape(-1), np.asarray(dst, dtype=np.int64).reshape(-1)
    if not (src_h.shape == dst_h.shape):
        _fail(op, "dst", f"has {dst_h.size} entries, src has {src_h.size}")
    caches = list(k_caches) + list(v_caches)
    if not (len(caches) > 0):
        _fail(op, "k_caches", "is empty")
    for i, c in enumerate(caches):
        _cache_args(op, c, caches[0])
    nb = caches[0].shape[0]
    if not (bool(((src_h >= 0) & (src_h < nb)).all())):
        _fail(op, "src", f"has a block id outside [0, {nb})")
    if not (bool(((dst_h >= 0) & (dst_h < nb)).all())):
        _fail(op, "dst", f"has a block id outside [0, {nb})")
    if src_h.size:
        _dispatch(op, caches, src_h, dst_h)


@_version("copy_blocks", "v1")
def _copy_blocks_v1(caches, src, dst):
    block_bytes = caches[0][0].nbytes
    if block_bytes % 16 or not _aligned16(*caches):
        raise Unsupported
    if set(src.tolist()) & set(dst.tolist()):                 # chained copies: keep their order
        for s, d in zip(src.tolist(), dst.tolist()):
            _copy_blocks_v1(caches, np.array([s]), np.array([d]))
        return
    ptrs = cp.asarray(np.array([c.data.ptr for c in caches], dtype=np.uint64))
    _launch("kv_cache.cu", "copy_blocks_v1_any", (src.size, len(caches)), (256,),
            (ptrs, cp.asarray(src), cp.asarray(dst), np.int64(block_bytes // 16)))


@_version("copy_blocks", "cupy")
def _copy_blocks_cupy(caches, src, dst):
    for s, d in zip(src.tolist(), dst.tolist()):
        for c in caches:
            c[d] = c[s]


DEFAULTS["copy_blocks"] = ("v1", "cupy")


# ---------------------------------------------------------------- attention

_counters: dict[int, list] = {}        # device id -> [zeroed int32 array, ...older ones kept alive for graphs]


def _split_counters(n: int):
    """A zeroed int32 array of at least n counters, reused across launches (each last block resets its own)."""
    arrays = _counters.setdefault(cp.cuda.Device().id, [])
    if not arrays or arrays[-1].size < n:
        arrays.append(cp.zeros(max(n, 1024), dtype=np.int32))
    return arrays[-1]


def paged_attention(q, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q, scale: float):
    """Causal GQA attention of packed query rows q [T, H, D] over the paged caches -> [T, H, D] in q's dtype.
    One query row per sequence (T == B) takes the decode kernels, anything else the prefill kernels."""
    op = "paged_attention"
    q = _device_array(q, op, "q", 3)
    _row_stride(q, op, "q")                                   # token rows may be strided (q of a q|k view)
    _cache_args(op, k_cache, v_cache)
    if not (k_cache.dtype == q.dtype):
        _fail(op, "k_cache", f"must have q's dtype {q.dtype}, got {k_cache.dtype}")
    T, H, D = q.shape
    KVH = k_cache.shape[2]
    if not (k_cache.shape[3] == D):
        _fail(op, "k_cache", f"has head_dim {k_cache.shape[3]}, q has {D}")
    if not (H % KVH == 0):
        _fail(op, "q", f"has {H} heads, not a multiple of the cache's {KVH} KV heads")
    if not (D <= 256):
        _fail(op, "q", f"head_dim {D} is above the kernels' limit of 256")
    tables = _index(block_tables, np.int32, op, "block_tables", ndim=2)
    ctx = _index(context_lens, np.int64, op, "context_lens")
    cu = _index(cu_seqlens_q, np.int64, op, "cu_seqlens_q")
    B = ctx.shape[0]
    if not (tables.shape[0] == B):
        _fail(op, "block_tables", f"has {tables.shape[0]} rows for {B} sequences")
    if not (cu.shape[0] == B + 1):
        _fail(op, "cu_seqlens_q", f"must have B + 1 = {B + 1} entries, got {cu.shape[0]}")
    which = "attention_decode" if T == B else "attention_prefill"
    return _dispatch(which, q, k_cache, v_cache, tables, ctx, cu, scale)


def _attention_args(q, k_cache, block_tables, context_lens, cu_seqlens_q):
    tables = _index(block_tables, np.int32, "paged_attention", "block_tables", ndim=2)
    ctx = _index(context_lens, np.int64, "paged_attention", "context_lens")
    cu = _index(cu_seqlens_q, np.int64, "paged_attention", "cu_seqlens_q")
    return tables, ctx, cu


def _attention_v1(file, kernel, q, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q, scale, per_row):
    tables, ctx, cu = _attention_args(q, k_cache, block_tables, context_lens, cu_seqlens_q)
    T, H, D = q.shape
    B = ctx.shape[0]
    out = cp.empty((T, H, D), q.dtype)
    if T:
        _launch(file, f"{kernel}_{SUFFIX[q.dtype]}", (T if per_row else B, H), (32,),
                (q, _i32(_row_stride(q, "paged_attention", "q")), k_cache, v_cache, tables, _i32(tables.shape[1]),
                 ctx, cu, out, _i32(B), _i32(H), _i32(k_cache.shape[2]), _i32(k_cache.shape[1]), _i32(D),
                 np.float32(scale * math.log2(math.e))))
    return out


VERSIONS["attention_prefill"] = {"v1": functools.partial(_attention_v1, "attention_prefill.cu",
                                                         "attention_prefill_v1", per_row=True)}
VERSIONS["attention_decode"] = {"v1": functools.partial(_attention_v1, "attention_decode.cu",
                                                        "attention_decode_v1", per_row=False)}


@_version("attention_prefill", "v2")
def _prefill_v2(q, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q, scale):
    T, H, D = q.shape
    if q.dtype != F16 or D not in (64, 128):
        raise Unsupported
    tables, ctx, cu = _attention_args(q, k_cache, block_tables, context_lens, cu_seqlens_q)
    B = ctx.shape[0]
    out = cp.empty((T, H, D), q.dtype)
    if T:
        _launch("attention_prefill.cu", f"attention_prefill_v2_d{D}", (_cdiv(T, 16) + B, H), (128,),
                (q, _i32(_row_stride(q, "paged_attention", "q")), k_cache, v_cache, tables, _i32(tables.shape[1]),
                 ctx, cu, _i32(B), out, _i32(H), _i32(k_cache.shape[2]), _i32(k_cache.shape[1]),
                 np.float32(scale * math.log2(math.e))))
    return out


PREFILL_V3_ROWS = 64            # kernels_cu/attention_prefill.cu: V3_BM (query rows per block)


@functools.lru_cache(maxsize=None)
def _kernel_with_smem(file: str, kernel: str, smem: int, device_id: int):
    """The kernel, allowed `smem` bytes of dynamic shared memory (above 48 KB a kernel must opt in; once per
    kernel and device, before any launch or capture)."""
    fn = _fn(file, kernel)
    if smem > 48 * 1024:
        fn.max_dynamic_shared_size_bytes = smem
    return fn


@_version("attention_prefill", "v3")
def _prefill_v3(q, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q, scale):
    """Tensor cores (mma.sync): sm_80+, float16, head_dim 64 or 128, 16-byte aligned q rows and caches."""
    T, H, D = q.shape
    ldq = _row_stride(q, "paged_attention", "q")
    if q.dtype != F16 or D not in (64, 128) or _cc() < 80 or not _aligned16(q, k_cache, v_cache, ldq * 2):
        raise Unsupported
    tables, ctx, cu = _attention_args(q, k_cache, block_tables, context_lens, cu_seqlens_q)
    B = ctx.shape[0]
    tiles = _cdiv(T, PREFILL_V3_ROWS) + B                    # >= sum over b of ceil(n_b / 64); grid y <= 65535
    if tiles > 65535:
        raise Unsupported
    out = cp.empty((T, H, D), q.dtype)
    if T:
        smem = 4 * 64 * D * 2                                # K and V tiles, two stages each
        fn = _kernel_with_smem("attention_prefill.cu", f"attention_prefill_v3_d{D}", smem, cp.cuda.Device().id)
        fn((H, tiles), (128,), (q, _i32(ldq), k_cache, v_cache, tables, _i32(tables.shape[1]), ctx, cu, _i32(B), out,
                                _i32(H), _i32(k_cache.shape[2]), _i32(k_cache.shape[1]),
                                np.float32(scale * math.log2(math.e))), shared_mem=smem)
    return out


DECODE_MAX_SPLITS = 64          # kernels_cu/attention_decode.cu: MAX_SPLITS


def decode_splits(batch: int, kv_heads: int, max_context: int) -> int:
    """Chunks of the context per (sequence, KV head): enough blocks to fill the GPU many times over (a small
    tail when blocks finish unevenly), at most 64, and at least 256 keys per chunk of the longest context
    the launch may see (the kernel sizes chunks from the real context, never below 64 keys)."""
    return max(1, min(DECODE_MAX_SPLITS, _cdiv(64 * _sms(), batch * kv_heads), _cdiv(max_context, 256)))


def decode_min_split(batch: int, kv_heads: int) -> int:
    """The fewest keys a chunk holds: 256 once the batch's (sequence, KV head) pairs fill the GPU, where
    more chunks only add merges; 32 below that, so that a short context still spreads over many blocks
    (llama2-7b batch 1, ctx 192: 7.4 instead of 9.3 µs; the larger batches measured slower with 32)."""
    return 256 if batch * kv_heads >= _sms() else 32


@_version("attention_decode", "v2")
def _decode_v2(q, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q, scale):
    T, H, D = q.shape
    KVH, BS = k_cache.shape[2], k_cache.shape[1]
    G = H // KVH
    ldq = _row_stride(q, "paged_attention", "q")
    if q.dtype != F16 or D not in (64, 128, 256) or G > 8 or not _aligned16(q, ldq * 2):
        raise Unsupported
    tables, ctx, cu = _attention_args(q, k_cache, block_tables, context_lens, cu_seqlens_q)
    B = ctx.shape[0]
    maxg = next(g for g in (1, 2, 4, 8) if g >= G)
    S = decode_splits(B, KVH, tables.shape[1] * BS)
    out = cp.empty((T, H, D), q.dtype)
    if not B:
        return out
    if S > 1:
        part_ml = cp.empty((B, H, S, 2), F32)
        part_acc = cp.empty((B, H, S, D), F32)
        counters = _split_counters(B * KVH)
    else:
        part_ml = part_acc = counters = NULL
    _launch("attention_decode.cu", f"attention_decode_v2_d{D}_g{maxg}", (S, KVH, B), (128,),
            (q, _i32(ldq), k_cache, v_cache, tables, _i32(tables.shape[1]), ctx, cu, out, part_ml, part_acc, counters,
             _i32(H), _i32(KVH), _i32(BS), np.float32(scale * math.log2(math.e)), _i32(decode_min_split(B, KVH))),
            pdl_ready=True)
    return out


DEFAULTS["attention_prefill"] = ("v3", "v2", "v1")    # v3: sm_80+, fp16, head_dim 64/128 (docs/kernels.md)
DEFAULTS["attention_decode"] = ("v2", "v1")


# ---------------------------------------------------------------- sampling (batched rows; see sampling.cu)

def _row_params(op, R, **params):
    """Per-row parameter arrays on the device; host values travel in one packed copy (one H2D per call)."""
    host, out = [], {}
    for name, (values, dtype) in params.items():
        if isinstance(values, cp.ndarray):
            out[name] = values.astype(dtype)
            if not (out[name].shape == (R,)):
                _fail(op, name, f"must have one value per row ({R}), got {values.shape}")
        else:
            a = np.asarray(values, dtype=dtype).reshape(-1)
            if not (a.shape == (R,)):
                _fail(op, name, f"must have one value per row ({R}), got shape {a.shape}")
            host.append((name, a))
    if host:                                      # every dtype here is 4 bytes: pack as raw 32-bit words
        packed = cp.asarray(np.concatenate([a.view(np.uint32) for _, a in host]))
        for i, (name, a) in enumerate(host):
            out[name] = packed[i * R:(i + 1) * R].view(a.dtype)
    return [out[name] for name in params]


def _logits_arg(op, logits):
    logits = _device_array(logits, op, "logits", 2, (F32, F16))
    return cp.ascontiguousarray(logits, dtype=F32)


def apply_penalties_rows(logits, ids, counts, offsets, repetition, presence, frequency):
    """Penalised float32 copy of logits [R, V] (reference.apply_penalties_rows)."""
    op = "apply_penalties_rows"
    out = _logits_arg(op, logits).copy()
    R, V = out.shape
    offsets_h = np.asarray(offsets.get() if isinstance(offsets, cp.ndarray) else offsets, dtype=np.int64)
    if not (offsets_h.shape == (R + 1,)):
        _fail(op, "offsets", f"must have R + 1 = {R + 1} entries")
    ids_d = _index(ids, np.int32, op, "ids")
    counts_d = _index(counts, np.int32, op, "counts")
    if not (ids_d.shape == counts_d.shape and ids_d.shape[0] >= int(offsets_h[-1])):
        _fail(op, "counts", "must have one entry per id")
    rep, pres, freq = _row_params(op, R, repetition=(repetition, np.float32), presence=(presence, np.float32),
                                  frequency=(frequency, np.float32))
    if R and ids_d.size:
        _launch("sampling.cu", "apply_penalties_rows_v1", (R,), (256,),
                (out, _i32(V), ids_d, counts_d, cp.asarray(offsets_h.astype(np.int32)), rep, pres, freq))
    return out


SAMPLE_ROWS_VERSIONS = ("v2", "v1")      # sampling.cu's sample_rows_{v}; the first is the default


def sample_rows(logits, temperature, top_k, top_p, min_p, uniforms, version: str = SAMPLE_ROWS_VERSIONS[0]):
    """Token ids [R] int64 (device) — reference.sample_rows."""
    return _sample_rows(logits, temperature, top_k, top_p, min_p, uniforms, version)[0]


def _sample_rows_filtered(logits, temperature, top_k, top_p, min_p, version: str = SAMPLE_ROWS_VERSIONS[0]):
    """The rows after temperature and the cuts (cut tokens −inf), as the kernel leaves them (for tests)."""
    R = logits.shape[0]
    return _sample_rows(logits, temperature, top_k, top_p, min_p, np.zeros(R, np.float32), version)[1]


def _sample_rows(logits, temperature, top_k, top_p, min_p, uniforms, version: str):
    op = "sample_rows"
    if version not in SAMPLE_ROWS_VERSIONS:
        _fail(op, "version", f"must be one of {SAMPLE_ROWS_VERSIONS}, got {version!r}")
    work = _logits_arg(op, logits).copy()                     # the kernel filters in place
    R, V = work.shape
    temp, tk, tp, mp, u = _row_params(op, R, temperature=(temperature, np.float32), top_k=(top_k, np.int32),
                                      top_p=(top_p, np.float32), min_p=(min_p, np.float32),
                                      uniforms=(uniforms, np.float32))
    tokens = cp.empty(R, np.int64)
    if R:
        _launch("sampling.cu", f"sample_rows_{version}", (R,), (1024,), (work, _i32(V), temp, tk, tp, mp, u, tokens))
    return tokens, work


def argmax_rows(logits):
    """The first index of each row's maximum, int64 [R] (device) — reference.argmax_rows."""
    work = _logits_arg("argmax_rows", logits)
    R, V = work.shape
    tokens = cp.empty(R, np.int64)
    if R:
        _launch("sampling.cu", "argmax_rows_v1", (R,), (1024,), (work, _i32(V), tokens))
    return tokens


def logprobs_rows(logits, tokens, num_top: int):
    """(chosen [R], top_ids [R, n], top_logprobs [R, n]) on the device — reference.logprobs_rows."""
    op = "logprobs_rows"
    work = _logits_arg(op, logits)
    R, V = work.shape
    tokens = _index(tokens, np.int64, op, "tokens")
    if not (tokens.shape == (R,)):
        _fail(op, "tokens", f"must have one id per row ({R})")
    if not (0 <= num_top <= min(V, 1024)):
        _fail(op, "num_top", f"must be in [0, {min(V, 1024)}], got {num_top}")
    chosen = cp.empty(R, F32)
    top_ids = cp.empty((R, num_top), np.int64)
    top_lp = cp.empty((R, num_top), F32)
    if R:
        _launch("sampling.cu", "logprobs_rows_v1", (R,), (1024,), (work, _i32(V), tokens, _i32(num_top), chosen,
                                                                      top_ids, top_lp))
    return chosen, top_ids, top_lp


# ---------------------------------------------------------------- backend hooks (see reference.py)

def _upload(a):
    if a is None:
        return None
    if isinstance(a, Int4Weight):
        return Int4Weight(cp.asarray(a.qweight), cp.asarray(a.scales), cp.asarray(a.zeros), a.group_size)
    return cp.asarray(a)


def prepare_weights(weights, dtype):
    """The weights cast to `dtype` on the host, then copied to the GPU (the embedding / LM-head tie kept)."""
    from refengine.model.weights import LayerWeights, ModelWeights
    host = weights.astype(dtype)
    embed = _upload(host.embed)
    lm_head = embed if host.lm_head is host.embed else _upload(host.lm_head)
    layers = [LayerWeights(**{k: _upload(v) for k, v in vars(layer).items()}) for layer in host.layers]
    return ModelWeights(embed, _upload(host.final_norm), lm_head, layers)


def prepare_batch(batch):
    """The batch with its index arrays on the device: uploaded once per step instead of once per layer."""
    kinds = dict(input_ids=np.int64, positions=np.int64, cu_seqlens_q=np.int64, context_lens=np.int64,
                 block_tables=np.int32, slot_mapping=np.int64, logits_rows=np.int64)
    changes = {}
    for name, dtype in kinds.items():
        a = getattr(batch, name)
        changes[name] = _index(a, dtype, "forward", name, ndim=np.ndim(a) if not isinstance(a, cp.ndarray) else a.ndim)
    return dataclasses.replace(batch, **changes)

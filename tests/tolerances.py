"""The one table of numerical tolerances every comparison test uses, and `assert_close`.

    pass  iff  |got − ref| ≤ atol + rtol·|ref|      elementwise (NaN never passes; equal infinities do)

Keys are (op, dtype) where `dtype` is the precision the implementation under test computes and stores
its result in. The NumPy reference computes in float32 whatever its input dtype, so the reference tests
(NumPy vs PyTorch, both in float32 on the same exactly-upcast inputs) use the "float32" rows even for
float16 inputs; the "float16"/"bfloat16" rows are for kernels that store a half-precision result and are
compared with the float32 reference. float32 has a 2^-24 ≈ 6e-8 unit roundoff, float16 2^-11 ≈ 4.9e-4,
bfloat16 2^-8 ≈ 3.9e-3.

Bounds are set well above (≥ 5×) the worst difference measured on the test inputs (magnitudes O(1)..O(10))
and far below what a real bug (a wrong index, position, head, scale or mask) produces, which is O(0.1..1).
"""

from __future__ import annotations

import numpy as np

TOLERANCES: dict[tuple[str, str], tuple[float, float]] = {
    # --- exact ops: a gather or a store moves bits; any difference is a bug.
    ("embedding", "float32"): (0.0, 0.0),
    ("embedding", "float16"): (0.0, 0.0),
    ("embedding", "bfloat16"): (0.0, 0.0),
    ("write_kv_cache", "float32"): (0.0, 0.0),
    ("write_kv_cache", "float16"): (0.0, 0.0),       # the cast to the cache dtype is the same rounding
    ("write_kv_cache", "bfloat16"): (0.0, 0.0),

    # --- rms_norm / add_rms_norm: a mean of squares over `hidden` (summation order differs between
    # NumPy's pairwise sum and torch's vectorised sum: a few ulps of the mean), then rsqrt and two
    # multiplies (1-2 ulps each). Outputs are O(1): 1e-5 relative is ~100 ulps of headroom.
    ("rms_norm", "float32"): (1e-6, 1e-5),
    ("rms_norm", "float16"): (1e-3, 2e-3),            # one float16 rounding of the output (4.9e-4) + slack
    ("rms_norm", "bfloat16"): (8e-3, 1.6e-2),         # one bfloat16 rounding of the output (3.9e-3) + slack
    ("add_rms_norm", "float32"): (1e-6, 1e-5),        # the residual add is one exact-same float32 add
    ("add_rms_norm", "float16"): (1e-3, 2e-3),
    ("add_rms_norm", "bfloat16"): (8e-3, 1.6e-2),

    # --- silu(gate)·up: exp and a divide, libm vs torch's vectorised exp differ by ~1-2 ulps.
    ("silu_and_mul", "float32"): (1e-6, 1e-5),
    ("silu_and_mul", "float16"): (1e-3, 2e-3),
    ("silu_and_mul", "bfloat16"): (8e-3, 1.6e-2),

    # --- linear: a K-term float32 dot product; the error bound scales with K·u·Σ|x·w|, not with |result|,
    # so results near zero need an absolute floor. For K ≤ ~300 and O(1) inputs (results O(1..3)) the
    # measured worst case is ~5e-7 (BLAS blocking differs between NumPy and torch); 2e-5 is 40× that.
    ("linear", "float32"): (2e-5, 1e-5),
    ("linear", "float16"): (2e-2, 2e-3),              # output rounding 4.9e-4·|y| plus fp16 accumulation order
    ("linear", "bfloat16"): (1e-1, 1.6e-2),

    # --- rope_inv_freq: theta^(-2i/D) by float32 pow; NumPy's and torch's float32 pow may differ by an ulp
    # or two (1.2e-7 each); the llama3 blend adds a few float32 ops. No absolute slack: all values > 0.
    ("rope_inv_freq", "float32"): (0.0, 1e-6),

    # --- rotary_embedding: the angle pos·inv_freq is the same single float32 product in both; cos/sin
    # differ by ~1 ulp of the result, times |x| = O(1..4), plus one multiply-add.
    ("rotary_embedding", "float32"): (1e-5, 1e-5),
    ("rotary_embedding", "float16"): (2e-3, 2e-3),
    ("rotary_embedding", "bfloat16"): (1.6e-2, 1.6e-2),

    # --- paged_attention: scores by a D-term dot, softmax (exp, max-shift, sum over ≤ a few hundred keys),
    # then a weighted sum of values. Measured worst ~1e-6 on O(1) outputs (contexts up to 153 keys); 2e-5
    # absolute leaves headroom while a one-off mask or a wrong KV head moves outputs by O(0.1).
    ("paged_attention", "float32"): (2e-5, 1e-4),
    ("paged_attention", "float16"): (2e-3, 4e-3),     # fp16 output rounding + fp16 P·V inputs in a kernel
    ("paged_attention", "bfloat16"): (1.6e-2, 3e-2),

    # --- GPU kernels (tests/kernels/) whose result dtype or op has no row above.
    # W4A16: the kernel rounds each dequantized weight (q − z)·s to float16 before the float32-accumulated
    # product (one 4.9e-4 relative rounding per weight, independent, so ~√K·|x||w|·2.4e-4 on the sum),
    # then rounds the output to float16. Inputs keep |y| = O(1); a wrong nibble, group or zero moves y by
    # O(0.1).
    ("linear_w4a16", "float16"): (2e-2, 4e-3),
    # float16 inputs, float32 output (the logits): fp16·fp16 products are exact in float32, so only the
    # order of the float32 sum differs (tensor-core tiles vs BLAS): ~√K·6e-8 relative to Σ|x·w|.
    ("linear_out32", "float32"): (1e-4, 1e-4),
    ("copy_blocks", "float16"): (0.0, 0.0),           # moves bits
    ("copy_blocks", "float32"): (0.0, 0.0),
    # penalties: one float32 divide or multiply (the same rounding), and presence + frequency·count
    # subtracted in float32 on the GPU, in float64 then rounded by NumPy: at most 1 ulp of |logit| <= ~30.
    ("apply_penalties", "float32"): (1e-5, 1e-6),
    # log_softmax in float32 (GPU: max, then a float32 sum of V exps, logf) vs float64 (reference):
    # the sum over V ~ 5e4 terms carries ~1e-6 relative error, i.e. ~1e-6 absolute on every log-prob.
    ("logprobs", "float32"): (2e-5, 1e-5),

    # --- whole model: refengine (NumPy, float32) logits vs transformers float32 logits on the same weights
    # (half-precision checkpoints are compared on the same rounded weights, both computing in float32).
    # Tiny 2-3 layer models (logit std ~2-4, |logit| up to ~15): measured worst difference 2e-5 (tied
    # embeddings, the largest logits), ~1e-5 elsewhere, ≤ 7% of this bound. The 30-layer default model
    # (|logit| up to ~40, tests/model/test_default_model.py) measured 1e-4 absolute, ~75% of 1e-4 + 5e-5·|ref|:
    # hence atol 2e-4. A bug (one position off, a mask off by one, swapped heads, a missing bias) moves
    # logits by ≥ 2e-2 (tests/model/test_families.py checks that it does), 100× this bound.
    ("logits", "float32"): (2e-4, 5e-5),
    # float16 on the GPU (weights, activations and the residual stream stored in float16, float32 accumulation)
    # vs transformers float16 on the same GPU, 4-layer llama-shaped model (hidden 512, logit std 2, |logit| up
    # to ~8): measured worst 0.048 (H100, 200 positions × 3000 logits) — each side rounds ~10 intermediate
    # tensors per layer to float16 (2^-11 relative), in different places; transformers float16 is itself
    # 0.037 away from float32, refengine float16 0.031. Bound 0.25 + 0.02·|ref| (≥ 5× the worst). The same row
    # serves refengine float16 against itself (chunked vs one prefill, graph replay vs eager), whose kernels
    # differ (tiles, cuBLAS vs tensor-core GEMV) but not the float16 rounding points.
    ("logits", "float16"): (0.25, 0.02),
    # Same engine, same weights, one sequence alone vs packed in a batch / run in chunks: only BLAS
    # blocking over a different number of rows differs, so the bound is tighter than against torch.
    ("logits_self", "float32"): (5e-5, 5e-5),
}


def tolerance(op: str, dtype) -> tuple[float, float]:
    """(atol, rtol) for `op` computed in `dtype` (a name or anything np.dtype/torch accepts by name)."""
    name = str(dtype).replace("torch.", "")
    name = str(np.dtype(name)) if name not in ("bfloat16",) else name
    try:
        return TOLERANCES[(op, name)]
    except KeyError:
        raise KeyError(f"no tolerance for ({op!r}, {name!r}) in tests/tolerances.py — add one with a reason"
                       ) from None


def _to_numpy(a) -> np.ndarray:
    """NumPy view of a NumPy / CuPy / torch array, widened to float64 for the comparison."""
    if hasattr(a, "detach"):                       # torch.Tensor
        a = a.detach().cpu().double().numpy()
    elif hasattr(a, "get") and not isinstance(a, np.ndarray):   # cupy.ndarray
        a = a.get()
    return np.asarray(a, dtype=np.float64)


def assert_close(got, ref, op: str, dtype="float32", msg: str = "", max_report: int = 5) -> None:
    """Assert |got − ref| ≤ atol + rtol·|ref| with (atol, rtol) = TOLERANCES[(op, dtype)].

    On failure the message gives the number of mismatches, the max abs and max rel difference, and the
    first mismatching indices with both values."""
    atol, rtol = tolerance(op, dtype)
    g, r = _to_numpy(got), _to_numpy(ref)
    where = f"{op} [{dtype}]" + (f" {msg}" if msg else "")
    if g.shape != r.shape:
        raise AssertionError(f"{where}: shape {g.shape} != reference shape {r.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(g - r)
        ok = (diff <= atol + rtol * np.abs(r)) | ((g == r) & np.isinf(r))
    if ok.all():
        return
    bad = np.argwhere(~ok)
    finite = np.isfinite(diff)
    max_abs = float(diff[finite].max()) if finite.any() else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(r != 0, diff / np.abs(r), np.inf)
    max_rel = float(rel[np.isfinite(rel)].max()) if np.isfinite(rel).any() else float("nan")
    first = ", ".join(f"{tuple(int(i) for i in idx)}: got {g[tuple(idx)]:.7g} ref {r[tuple(idx)]:.7g}"
                      for idx in bad[:max_report])
    raise AssertionError(
        f"{where}: {len(bad)}/{g.size} elements outside atol={atol:g} rtol={rtol:g}; "
        f"max abs diff {max_abs:.3g}, max rel diff {max_rel:.3g}; first mismatches: {first}")


def max_abs_diff(got, ref) -> float:
    """The largest |got − ref|, for reporting how close a comparison came."""
    return float(np.max(np.abs(_to_numpy(got) - _to_numpy(ref))))

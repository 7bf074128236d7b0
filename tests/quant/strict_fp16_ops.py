"""A stand-in for the CUDA backend on the CPU: the NumPy reference ops with float16 activations and the
CUDA wrappers' dtype rules (refengine/ops/cuda.py refuses a float32 x against a float16 weight, and every
op but `logits` returns float16). Calibration code that runs here does not trip over dtypes on a GPU."""

from __future__ import annotations

import numpy as np

from refengine.ops import reference

F16 = np.float16
_SAME_DTYPE = {"linear": (0, 1), "silu_and_mul_linear": (0, 1), "logits": (0, 1)}
_FLOAT32_OUT = {"logits", "sample_rows", "argmax_rows", "logprobs_rows", "apply_penalties_rows"}


class StrictFloat16Ops:
    xp = np
    DEFAULT_DTYPE = F16

    def __getattr__(self, name):
        fn = getattr(reference, name)
        if not callable(fn) or name.startswith("_") or name in ("prepare_weights", "prepare_batch"):
            return fn

        def strict(*args, **kwargs):
            for i in _SAME_DTYPE.get(name, ()):
                if args[i].dtype != F16:
                    raise AssertionError(f"{name}: argument {i} is {args[i].dtype}, the GPU backend wants float16")
            out = fn(*args, **kwargs)
            return out if name in _FLOAT32_OUT else _to16(out)
        return strict


def _to16(out):
    if isinstance(out, tuple):
        return tuple(_to16(o) for o in out)
    if isinstance(out, np.ndarray) and out.dtype == np.float32:
        return out.astype(F16)
    return out

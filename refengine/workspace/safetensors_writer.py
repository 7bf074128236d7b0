"""Write safetensors files from NumPy (or CuPy) arrays, bfloat16 included, without torch.

    [u64 little-endian N][N bytes of JSON header, space-padded to a multiple of 8][tensor bytes, in order]

The `safetensors` package's NumPy writer cannot produce BF16 (NumPy has no bfloat16), so we write the
format ourselves: tensors are written one after another straight to the file (no second copy of the
data in memory). bfloat16 is stored as raw bf16 bits: the upper 16 bits of the float32, rounded to
nearest-even — what torch's `.to(torch.bfloat16)` does — so any safetensors reader sees a BF16 tensor.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

# safetensors dtype name for each NumPy dtype we store (bfloat16 is handled separately: uint16 bits)
DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.uint32): "U32",
               np.dtype(np.int32): "I32", np.dtype(np.int64): "I64", np.dtype(np.uint8): "U8"}


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 bits, round to nearest, ties to even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return ((bits + rounding) >> np.uint32(16)).astype(np.uint16)


def to_numpy(a) -> np.ndarray:
    """A host NumPy array from a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def encode(a, dtype: str | None) -> tuple[np.ndarray, str]:
    """(contiguous array to write, safetensors dtype name). `dtype` None keeps the array's own dtype;
    "float16" / "bfloat16" / "float32" cast floating arrays."""
    a = to_numpy(a)
    if dtype == "bfloat16":
        return float32_to_bf16_bits(a), "BF16"
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    a = np.ascontiguousarray(a)
    if a.dtype not in DTYPE_NAMES:
        raise TypeError(f"cannot store dtype {a.dtype} in a workspace")
    return a, DTYPE_NAMES[a.dtype]


def write_safetensors(path, tensors: dict[str, tuple[object, str | None]], metadata: dict | None = None) -> None:
    """tensors: name -> (array, storage dtype or None). Written in the order given."""
    encoded = {name: encode(a, dtype) for name, (a, dtype) in tensors.items()}
    header, offset = {}, 0
    for name, (arr, st_dtype) in encoded.items():
        header[name] = {"dtype": st_dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)          # the data starts 8-byte aligned (what safetensors writes)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr, _ in encoded.values():
            f.write(arr.data)          # a C-contiguous buffer: no copy
        f.flush()
        os.fsync(f.fileno())           # on disk before the workspace is renamed into place

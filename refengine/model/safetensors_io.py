"""Read safetensors files into NumPy without torch, bfloat16 included.

The `safetensors` package's NumPy front end cannot express bfloat16 (NumPy has no such dtype), so
reading goes through the format itself, which is small and stable:

    [8 bytes little-endian u64: N][N bytes JSON header][raw tensor bytes]
    header = {name: {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}

Tensors are memory-mapped, so opening a 15 GB checkpoint costs nothing until a tensor is read;
bfloat16 is widened to float32 on read (the upper 16 bits of a float32 are a bfloat16).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from refengine.errors import ModelLoadError

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


class SafetensorsFile:
    """One .safetensors file: `keys()`, `shape(name)`, `dtype_name(name)`, `get(name)` -> np.ndarray."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > 100_000_000:
                    raise ValueError("header length implausible")
                self.header = json.loads(f.read(n))
        except (OSError, ValueError, struct.error) as e:
            raise ModelLoadError(f"{self.path}: not a readable safetensors file ({e})") from None
        self.header.pop("__metadata__", None)
        self.data_start = 8 + n
        self._map = None

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype_name(self, name: str) -> str:
        return self.header[name]["dtype"]

    def get(self, name: str) -> np.ndarray:
        """The tensor as a NumPy array (float32 for bfloat16, a read-only memory map otherwise)."""
        info = self.header.get(name)
        if info is None:  # e.g. an index file that maps the tensor to the wrong shard
            raise ModelLoadError(f"{self.path}: no tensor named {name}")
        if info["dtype"] not in DTYPES:
            raise ModelLoadError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        begin, end = (self.data_start + o for o in info["data_offsets"])
        dtype = np.dtype(DTYPES[info["dtype"]])
        count = int(np.prod(info["shape"], dtype=np.int64))
        if end > len(self._map) or end - begin != count * dtype.itemsize:
            raise ModelLoadError(f"{self.path}: tensor {name} is truncated or its offsets are corrupt")
        arr = self._map[begin:end].view(dtype).reshape(info["shape"])
        return bf16_bits_to_float32(arr) if info["dtype"] == "BF16" else arr

"""Importing AWQ checkpoints in the AutoAWQ / LMDeploy Hugging Face format (quant_method = "awq", GEMM).

Such a checkpoint stores each quantized linear (logical W [out, in], y = x @ W.T) transposed and packed
along the OUTPUT dimension, with AutoAWQ's interleaved nibble order:

    <name>.qweight  int32   [in, out/8]     nibble i of word (r, j) = code of W[8j + ORDER[i], r]
    <name>.qzeros   int32   [in/g, out/8]   integer zero points, packed the same way
    <name>.scales   float16 [in/g, out]
    W[o, r] = (code[o, r] − zero[o, r // g]) · scale[o, r // g]           ORDER = 0 2 4 6 1 3 5 7

refengine's layout (refengine/quant/primitives.py) packs along the INPUT dimension in natural order, row
major by output feature. Repacking is exact: unpack the codes, transpose, pack again; scales and zeros
are transposed (zeros stored as float16, which holds 0..15 exactly).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refengine.errors import UnsupportedModelError
from refengine.quant.primitives import BITS, PACK, QMAX, GROUP_SIZES, Int4Weight, pack_int4

AWQ_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])     # AutoAWQ's AWQ_ORDER: nibble i holds column 8j + ORDER[i]
LINEAR_ROLES = ("q", "k", "v", "o", "gate", "up", "down", "qkv")


def unpack_awq(packed: np.ndarray) -> np.ndarray:
    """int32 [rows, cols/8] in AutoAWQ's order -> codes uint8 [rows, cols] in natural column order."""
    words = np.ascontiguousarray(packed).view(np.uint32)
    nibbles = (words[..., None] >> (np.arange(PACK, dtype=np.uint32) * BITS)) & QMAX     # [rows, cols/8, 8]
    codes = np.empty_like(nibbles)
    codes[..., AWQ_ORDER] = nibbles
    return codes.reshape(words.shape[0], -1).astype(np.uint8)


def pack_awq(codes: np.ndarray) -> np.ndarray:
    """The inverse of unpack_awq: codes [rows, cols] (0..15) -> int32 [rows, cols/8] in AutoAWQ's order."""
    rows, cols = codes.shape
    nibbles = codes.reshape(rows, cols // PACK, PACK)[..., AWQ_ORDER].astype(np.uint32)
    words = (nibbles << (np.arange(PACK, dtype=np.uint32) * BITS)).sum(axis=-1, dtype=np.uint32)
    return words.view(np.int32)


def awq_to_int4(qweight, qzeros, scales, group_size: int, what: str = "linear") -> Int4Weight:
    """One AutoAWQ GEMM linear -> refengine's Int4Weight (exactly the same dequantized weight)."""
    qweight, qzeros, scales = np.asarray(qweight), np.asarray(qzeros), np.asarray(scales)
    in_f, out_f = qweight.shape[0], qweight.shape[1] * PACK
    expected = {"qzeros": (in_f // group_size, out_f // PACK), "scales": (in_f // group_size, out_f)}
    for name, arr in (("qzeros", qzeros), ("scales", scales)):
        if in_f % group_size or tuple(arr.shape) != expected[name]:
            raise UnsupportedModelError(f"{what}: {name} has shape {tuple(arr.shape)}, expected {expected[name]} "
                                        f"for qweight {tuple(qweight.shape)} and group size {group_size}")
    codes = unpack_awq(qweight).T                                    # [out, in]
    zeros = unpack_awq(qzeros).T.astype(np.float16)                  # [out, in/g]
    return Int4Weight(pack_int4(np.ascontiguousarray(codes)), np.ascontiguousarray(scales.T, dtype=np.float16),
                      np.ascontiguousarray(zeros), group_size)


def awq_group_size(hf_config: dict, source: str = "config.json") -> int | None:
    """The group size of an AWQ checkpoint's config.json, None when the checkpoint is not AWQ; one-line
    errors for AWQ variants we cannot read."""
    q = hf_config.get("quantization_config") or {}
    if q.get("quant_method") != "awq":
        if q.get("quant_method"):
            raise UnsupportedModelError(f"{source}: quantization_config.quant_method {q['quant_method']!r} is "
                                        "not supported (only awq, or unquantized checkpoints)")
        return None
    bits = q.get("bits", q.get("w_bit"))
    version = str(q.get("version", "gemm")).lower()
    group_size = int(q.get("group_size", q.get("q_group_size", 128)))
    if bits != 4:
        raise UnsupportedModelError(f"{source}: AWQ with {bits} bits is not supported (only 4)")
    if version != "gemm":
        raise UnsupportedModelError(f"{source}: AWQ version {version!r} is not supported (only the GEMM layout)")
    if q.get("zero_point", True) is False:
        raise UnsupportedModelError(f"{source}: AWQ without zero points is not supported")
    if group_size not in GROUP_SIZES:
        raise UnsupportedModelError(f"{source}: AWQ group size {group_size} is not supported (one of {GROUP_SIZES})")
    return group_size


def awq_fetcher(plain_fetch, tensors: dict, family, group_size: int):
    """fetch(role, layer) for assemble_layer: Int4Weight for the linears stored as qweight/qzeros/scales,
    the plain fetch (arrays) for everything else."""
    def fetch(role, layer):
        if layer is None or role not in LINEAR_ROLES:
            return plain_fetch(role, layer)
        name = family.layer_prefix.format(i=layer) + family.layer_names[role]
        base = name[:-len("weight")]
        if base + "qweight" not in tensors:
            return plain_fetch(role, layer)               # a linear left in float (modules_to_not_convert)
        get = lambda part: tensors[base + part].get(base + part) if base + part in tensors else _missing(base + part)
        return awq_to_int4(get("qweight"), get("qzeros"), get("scales"), group_size, base + "qweight")
    return fetch


def _missing(name):
    raise UnsupportedModelError(f"missing tensor {name} (an AWQ checkpoint stores qweight, qzeros and scales)")


def int4_aware_split(split):
    """A family's fused-qkv splitter (InternLM2's wqkv) applied to each part of an Int4Weight."""
    if split is None:
        return None

    def split_any(w, cfg):
        if not isinstance(w, Int4Weight):
            return split(w, cfg)
        parts = [split(getattr(w, f), cfg) for f in ("qweight", "scales", "zeros")]
        return tuple(Int4Weight(q, s, z, w.group_size) for q, s, z in zip(*parts))
    return split_any


def load_checkpoint_weights(model_dir: Path, cfg, family, progress=None):
    """A Hugging Face directory's weights: AWQ checkpoints repacked to Int4Weights, others as hf.py reads them."""
    from refengine.errors import ModelLoadError
    from refengine.model import hf
    from refengine.model.weights import assemble_weights
    group_size = awq_group_size(hf.read_config(model_dir), str(model_dir / "config.json"))
    if group_size is None:
        return hf.load_hf_weights(model_dir, cfg, family, progress=progress)
    tensors = hf.safetensors_files(model_dir)
    fetch = awq_fetcher(hf.hf_fetcher(family, tensors), tensors, family, group_size)
    try:
        return assemble_weights(cfg, fetch, int4_aware_split(family.split_qkv), progress)
    except ModelLoadError as e:
        raise ModelLoadError(f"{model_dir}: {e}") from None

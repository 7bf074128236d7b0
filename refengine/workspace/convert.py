"""model → workspace: open the source for streaming, quantize block by block if asked, write atomically.

    open_source(spec)            config + tokenizer now, weights one block at a time (source.py)
    validate                     every user mistake is refused here, before anything is written
    atomic_directory(dst)        tokenizer/, weights/model.safetensors, weights/layer_NNN.safetensors ...
        none: blocks as they are    rtn: quantize_int4 per linear    awq: quantize.awq_layers
    refengine.json last          sizes and sha256 of every file; then the rename makes it a workspace
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from refengine.errors import RefengineError
from refengine.quant.primitives import GROUP_SIZES, group_size_fit
from refengine.quant.progress import Progress
from refengine.workspace.atomic import atomic_directory, check_destination
from refengine.workspace.format import DTYPES
from refengine.workspace.writer import WorkspaceWriter, manifest_fields

QUANT_METHODS = ("none", "rtn", "awq")


class ConvertError(RefengineError):
    """Options that cannot produce a workspace for this model."""


@dataclass(frozen=True)
class ConvertOptions:
    dst: Path = Path("./workspace")
    dtype: str = "float16"              # storage of everything that is not int4
    chat_template: str | None = None
    force: bool = False
    quant: str = "none"                 # none | rtn | awq
    w_bits: int = 4
    group_size: int = 128
    calib_data: str = "stdlib"
    calib_samples: int = 128
    calib_seqlen: int = 512
    batch_size: int = 8
    search_scale: bool = True
    clip: bool = True
    calib_inputs: str = "float"         # float | quantized: which activations feed block i's calibration
    backend: str = "auto"


@dataclass
class ConvertSummary:
    dst: Path
    seconds: float
    weight_type: str
    group_size: int | None
    bytes_on_disk: int
    bits_per_weight: float              # all stored parameters (embedding included)
    linear_bits_per_weight: float       # the four linears of every block
    quant: dict | None = field(default=None)


def validate(opts: ConvertOptions) -> None:
    if opts.dtype not in DTYPES:
        raise ConvertError(f"--dtype {opts.dtype!r} is not supported (choose from {', '.join(DTYPES)})")
    if opts.quant not in QUANT_METHODS:
        raise ConvertError(f"--quant {opts.quant!r} is not supported (choose from {', '.join(QUANT_METHODS)})")
    if opts.w_bits != 4:
        raise ConvertError(f"--w-bits {opts.w_bits} is not supported (only 4-bit weights)")
    if opts.group_size not in GROUP_SIZES:
        raise ConvertError(f"--group-size {opts.group_size} is not supported (choose from {GROUP_SIZES})")
    for name in ("calib_samples", "calib_seqlen", "batch_size"):
        if getattr(opts, name) < 1:
            raise ConvertError(f"--{name.replace('_', '-')} must be at least 1")
    if opts.calib_inputs not in ("float", "quantized"):
        raise ConvertError(f"--calib-inputs {opts.calib_inputs!r} is not supported (choose float or quantized)")


def check_model(source, opts: ConvertOptions) -> None:
    """Group size against every linear's input dimension; int4 sources against the requested method."""
    cfg = source.config
    if source.group_size is not None and opts.quant != "none":
        raise ConvertError(f"{source.description} is already 4-bit (AWQ, group size {source.group_size}): "
                           f"convert it without --quant")
    if opts.quant == "none":
        return
    fit = group_size_fit(cfg, opts.group_size)
    if fit.misfit is not None:
        what, width = fit.misfit
        raise ConvertError(f"--group-size {opts.group_size} does not divide the model's {what} {width} "
                           f"(group sizes that fit this model: {', '.join(map(str, fit.fitting)) or 'none'})")


def convert(spec: str, opts: ConvertOptions, progress: Progress = Progress()) -> ConvertSummary:
    """Convert the model `spec` into a workspace at opts.dst (see the module docstring)."""
    from refengine.workspace.source import open_source
    start = time.perf_counter()
    validate(opts)
    check_destination(Path(opts.dst), opts.force)
    source = open_source(spec)
    check_model(source, opts)
    if opts.chat_template is not None:
        source.tokenizer.set_chat_template(opts.chat_template)
    calib = _calibration(source, opts, progress) if opts.quant == "awq" else None
    with atomic_directory(Path(opts.dst), opts.force) as tmp:
        writer = WorkspaceWriter(tmp, opts.dtype)
        writer.write_tokenizer(source.tokenizer, source.generation_config, source.config.max_position_embeddings)
        writer.write_globals(source.global_weight("embed"), source.global_weight("final_norm"),
                             source.global_weight("lm_head"))
        report = _write_layers(writer, source, opts, calib, progress)
        weight_type = "int4" if opts.quant != "none" or source.group_size is not None else opts.dtype
        group_size = source.group_size or (opts.group_size if opts.quant != "none" else None)
        quant = _quant_record(opts, calib, report, source) if weight_type == "int4" else None
        manifest = writer.finish(manifest_fields(source.config, source.tokenizer, weight_type, opts.dtype,
                                                 group_size, quant, source.description))
    return _summary(Path(opts.dst), manifest, time.perf_counter() - start, source.config)


def _calibration(source, opts: ConvertOptions, progress: Progress):
    from refengine.quant.calib import calibration_ids
    ids, description = calibration_ids(source.tokenizer, opts.calib_data, opts.calib_samples, opts.calib_seqlen)
    if len(ids) < opts.calib_samples:
        progress.message(f"calibration data {description} holds only {len(ids)} sequences of "
                         f"{opts.calib_seqlen} tokens: using those")
    return ids, description


def _write_layers(writer: WorkspaceWriter, source, opts: ConvertOptions, calib, progress: Progress) -> list:
    """Stream the blocks into the workspace: one block in memory at a time. Returns AWQ's per-block report."""
    from refengine.quant.quantize import rtn_layer
    n = source.config.num_layers
    report = []
    if opts.quant == "awq":
        from refengine.ops import get_backend
        from refengine.quant.awq import AwqOptions
        from refengine.quant.quantize import awq_layers
        awq_opts = AwqOptions(opts.group_size, opts.search_scale, opts.clip, opts.calib_inputs == "quantized")
        for i, layer, block_report in awq_layers(source, calib[0], awq_opts, get_backend(opts.backend),
                                                 opts.batch_size, progress):
            writer.write_layer(i, layer)
            report.append(block_report)
        return report
    progress.stage("blocks", n)
    for i in range(n):
        layer = source.layer(i)
        writer.write_layer(i, rtn_layer(layer, opts.group_size) if opts.quant == "rtn" else layer)
        progress.step(i + 1)
    return report


def _quant_record(opts: ConvertOptions, calib, report: list, source) -> dict:
    if opts.quant == "none":     # an AWQ checkpoint, repacked
        return {"method": "awq (imported)", "w_bits": 4, "group_size": source.group_size,
                "source": source.description, "date": _now()}
    record = {"method": opts.quant, "w_bits": opts.w_bits, "group_size": opts.group_size, "date": _now()}
    if opts.quant == "awq":
        record.update(calib_data=calib[1], calib_samples=int(calib[0].shape[0]),
                      calib_seqlen=int(calib[0].shape[1]),
                      options={"search_scale": opts.search_scale, "clip": opts.clip, "batch_size": opts.batch_size,
                               "calib_inputs": opts.calib_inputs, "grid": 20, "max_shrink": 0.5},
                      blocks=report)
    return record


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _summary(dst: Path, manifest: dict, seconds: float, cfg) -> ConvertSummary:
    weight_bytes = sum(f["bytes"] for rel, f in manifest["files"].items() if rel.startswith("weights/"))
    g = manifest["group_size"]
    int4 = manifest["weight_type"] == "int4"
    linear_bits = 4 + 2 * 16 / g if int4 else 16.0           # codes + a float16 scale and zero per group
    return ConvertSummary(dst, seconds, manifest["weight_type"], g,
                          sum(f["bytes"] for f in manifest["files"].values()) + (dst / "refengine.json").stat().st_size,
                          8 * weight_bytes / parameter_count(cfg), linear_bits, manifest.get("quant"))


def parameter_count(cfg) -> int:
    """Parameters of the model as stored (a tied LM head counted once)."""
    linears = cfg.qkv_size * cfg.hidden_size + cfg.hidden_size * cfg.q_size + 3 * cfg.intermediate_size * cfg.hidden_size
    biases = cfg.qkv_size * cfg.qkv_bias + cfg.hidden_size * cfg.o_bias + (2 * cfg.intermediate_size + cfg.hidden_size) * cfg.mlp_bias
    per_layer = linears + biases + 2 * cfg.hidden_size
    heads = 1 if cfg.tie_word_embeddings else 2
    return cfg.num_layers * per_layer + heads * cfg.vocab_size * cfg.hidden_size + cfg.hidden_size

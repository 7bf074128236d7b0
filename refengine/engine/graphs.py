"""CUDA graphs for the decode step: capture one whole forward pass per batch-size bucket, replay it.

A Python launch of a CuPy RawKernel costs ~10 µs of host time, a node of a replayed graph ~1 µs, and a
decode step of a small model is a few hundred tiny kernels — so for small batches the launches, not the
GPU, set the speed (docs/benchmarks.md). A step of B sequences, one new token each, runs the graph of the
smallest bucket >= B:

    host                                       device (self.stream)
    ────                                       ────────────────────
    pack ids, positions, lengths, slots,  ──►  one async copy into the bucket's static input buffer
      block tables into pinned memory          graph replay: embedding … 30 layers … logits [bucket, V]
    sampler reads the chosen ids          ◄──  (the only wait of the step)

With lookahead decode (core.py) the next step's replay is queued before the host has the ids: run(sampled=...)
gathers them on the device (ids[sources], into the static input_ids) between the input copy and the replay.

Rows B..bucket-1 are padding: token 0 at position 0 with an empty context (attention gives 0) and slot −1
(the KV write skips it); their logits are never read.

What makes a forward pass capturable (refengine/ops/cuda.py keeps to it): launch shapes from array
shapes only; no host<->device copies or synchronisation inside; no cuBLAS (CuPy refuses it during capture:
the ops switch to our own GEMV/GEMM kernels); every device constant (rope frequencies, split-K counters)
created before capture, by a warm-up pass. Intermediate arrays come from a private memory pool that only
captures use, so nothing outside a graph is ever handed memory a graph writes to. Dynamic-NTK rope is not
captured: its frequencies depend on the sequence length, which only the host knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refengine.model.llama import ForwardBatch

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
# Batches above this run eagerly. A graph cannot hold cuBLAS, so its linears are our own kernels; eagerly,
# each op costs ~50 µs of Python and launch on the host. Measured on llama2-7b shapes (H100, decode tok/s,
# docs/benchmarks.md): at 16-64 rows graphs win by 1.5-3x (the host cost dominates an eager step), at 256
# rows eager cuBLAS wins by 2.2x for float16 (our captured GEMM runs at ~100 TFLOP/s, cuBLAS at ~600).
GRAPH_MAX_BATCH = 64


@dataclass
class _Captured:
    bucket: int
    width: int              # block-table columns
    layout: dict            # _layout(bucket, width): where each input sits in the packed buffers
    host: np.ndarray        # pinned int64 staging buffer (all inputs, packed)
    device: object          # the device twin of `host`
    batch: ForwardBatch     # views into `device`: the graph's static inputs
    sources: object         # view into `device`: run(sampled=...)'s rows of the sampled ids
    logits: object          # [bucket, V] float32, written by every replay
    graph: object
    copied: object          # event recorded after the last input copy (host buffer reusable once done)


def _layout(bucket: int, width: int) -> dict[str, tuple[int, int]]:
    """Offsets (in int64 words) of each input in the packed buffer; block tables are int32 pairs."""
    sizes = dict(input_ids=bucket, positions=bucket, cu_seqlens_q=bucket + 1, context_lens=bucket,
                 slot_mapping=bucket, logits_rows=bucket, sources=bucket, block_tables=-(-bucket * width // 2))
    layout, offset = {}, 0
    for name, n in sizes.items():
        layout[name] = (offset, n)
        offset += n
    return layout


class DecodeGraphs:
    """Captured decode steps of `model` over the KV cache `kv`, one per bucket, made on first use."""

    def __init__(self, model, kv, max_blocks_per_seq: int, max_batch: int = 256, programmatic: bool = True):
        import cupy as cp
        self.cp = cp
        self.programmatic = programmatic        # programmatic dependent launch inside the graphs (ops/pdl.py)
        self.model, self.kv = model, kv
        self.width = max(1, max_blocks_per_seq)
        self.buckets = [b for b in BUCKETS if b <= max_batch] or [1]
        if self.buckets[-1] < max_batch <= BUCKETS[-1]:
            self.buckets.append(next(b for b in BUCKETS if b >= max_batch))
        self.stream = cp.cuda.Stream(non_blocking=False)
        self.pool = cp.cuda.MemoryPool()
        self.graphs: dict[int, _Captured] = {}

    @classmethod
    def for_model(cls, model, kv, max_blocks_per_seq: int, max_batch: int | None = None
                  ) -> "DecodeGraphs | None":
        """Graphs for a model on the CUDA backend (None on NumPy, or with dynamic-NTK rope)."""
        if model.ops.xp is np or model.cfg.rope_scaling.type == "dynamic":
            return None
        return cls(model, kv, max_blocks_per_seq, GRAPH_MAX_BATCH if max_batch is None else max_batch)

    def fits(self, batch: ForwardBatch) -> bool:
        """A pure decode step (one new token per sequence, all sampling) that a bucket can hold."""
        B = len(batch.context_lens)
        return (len(batch.input_ids) == B and len(batch.logits_rows) == B and 0 < B <= self.buckets[-1]
                and batch.block_tables.shape[1] <= self.width and isinstance(batch.input_ids, np.ndarray))

    def run(self, batch: ForwardBatch, sampled: tuple | None = None):
        """Logits [B, V] float32 (a view of the bucket's output: valid until the next replay).
        sampled = (ids, sources): the input ids are ids[sources] — the previous step's sampler output on the
        device, gathered on the stream between the input copy and the replay (batch.input_ids is ignored)."""
        B = len(batch.context_lens)
        bucket = next(b for b in self.buckets if b >= B)
        g = self.graphs.get(bucket) or self._capture(bucket)
        self._fill(g, batch, sampled[1] if sampled is not None else ())
        if sampled is not None:
            with self.stream:
                self.cp.take(sampled[0], g.sources[:B], out=g.batch.input_ids[:B])
        g.graph.launch(self.stream)
        return g.logits[:B]

    # ---------------------------------------------------------------- internals

    def _fill(self, g: _Captured, batch: ForwardBatch, sources=()) -> None:
        B, lay = len(batch.context_lens), g.layout
        g.copied.synchronize()                      # the previous copy has left the pinned buffer
        host = g.host
        for name in ("input_ids", "positions", "context_lens"):          # padding rows: 0
            off, n = lay[name]
            host[off:off + n] = 0
            host[off:off + B] = getattr(batch, name)
        off, n = lay["slot_mapping"]                                      # padding rows: -1, not written
        host[off:off + n] = -1
        host[off:off + B] = batch.slot_mapping
        off, n = lay["sources"]                                           # run(sampled=...): rows of the ids
        host[off:off + len(sources)] = sources
        for name in ("cu_seqlens_q", "logits_rows"):                      # one row per sequence, all sample
            off, n = lay[name]
            host[off:off + n] = np.arange(n)
        off, n = lay["block_tables"]
        tables = host[off:off + n].view(np.int32)[:g.bucket * g.width].reshape(g.bucket, g.width)
        tables[:] = 0
        tables[:B, :batch.block_tables.shape[1]] = batch.block_tables
        g.device.set(host, stream=self.stream)
        g.copied.record(self.stream)

    @staticmethod
    def _static_batch(device, lay: dict, bucket: int, width: int) -> ForwardBatch:
        view = lambda name: device[lay[name][0]:lay[name][0] + lay[name][1]]
        off, n = lay["block_tables"]
        tables = device[off:off + n].view(np.int32)[:bucket * width].reshape(bucket, width)
        return ForwardBatch(view("input_ids"), view("positions"), view("cu_seqlens_q"), view("context_lens"),
                            tables, view("slot_mapping"), view("logits_rows"))

    def _capture(self, bucket: int) -> _Captured:
        import cupyx

        from refengine.ops import pdl
        cp = self.cp
        lay = _layout(bucket, self.width)
        total = sum(n for _, n in lay.values())
        host = cupyx.empty_pinned((total,), dtype=np.int64)
        with cp.cuda.using_allocator(self.pool.malloc), self.stream:
            device = cp.zeros(total, dtype=np.int64)
            batch = self._static_batch(device, lay, bucket, self.width)
            batch.cu_seqlens_q[:] = cp.arange(bucket + 1)
            batch.logits_rows[:] = cp.arange(bucket)
            batch.slot_mapping[:] = -1              # the warm-up pass writes nothing to the cache
            self.model.forward(batch, self.kv)      # compiles, creates device constants, sizes the pool
            self.stream.synchronize()
            self.stream.begin_capture()
            try:
                with pdl.programmatic_launches(self.programmatic):   # kernels may overlap the one before
                    logits = self.model.forward(batch, self.kv)
            finally:
                graph = self.stream.end_capture()
        copied = cp.cuda.Event(disable_timing=True)
        copied.record(self.stream)
        off, n = lay["sources"]
        g = _Captured(bucket, self.width, lay, host, device, batch, device[off:off + n], logits, graph, copied)
        self.graphs[bucket] = g
        return g

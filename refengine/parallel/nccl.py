"""The collectives between GPU ranks, through NCCL (CuPy's cupy.cuda.nccl binding).

A rank's LlamaModel calls two things of its `comm` (see refengine/model/llama.py):

    all_reduce(x)          x [T, hidden] (o's or down's partial sum on this rank) -> the sum over all ranks,
                           in place, on the current stream (ordered with the kernels around it)
    gather_vocab(logits)   logits [R, V/tp] float32 (this rank's vocabulary block) -> [R, V] on every rank:

        all_gather   rank0 [R, Vb] | rank1 [R, Vb] | …  ->  buf [tp, R, Vb]  ->  transpose [R, tp, Vb]
                     -> reshape [R, tp·Vb] -> first V columns (the last block's zero padding dropped)

The communicator is created collectively: NcclCommunicator(tp, unique_id, rank) returns only once every
rank has called it with the same unique id (rank 0 makes the id and hands it to the workers at spawn).
"""

from __future__ import annotations

from refengine.parallel.plan import TensorParallelError

# NVLink multicast (NVLS) stays off in every rank, rank 0 included: on shared multi-GPU hosts a program that
# uses it can put the host's GPUs out of service. NCCL reads this once per process, before its first call.
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0"}

NCCL_TYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32"}


def nccl_library():
    """cupy.cuda.nccl, or a TensorParallelError saying why it cannot be used."""
    try:
        from cupy.cuda import nccl
    except ImportError as e:
        raise TensorParallelError(f"--tp on GPUs needs CuPy with NCCL ({e})") from None
    if not getattr(nccl, "available", False):
        raise TensorParallelError("--tp on GPUs needs NCCL, which CuPy cannot load here "
                                  "(pip install nvidia-nccl-cu13, or nvidia-nccl-cu12 for CUDA 12)")
    return nccl


def new_unique_id():
    """The id every rank's communicator is created with (made once, by rank 0)."""
    return nccl_library().get_unique_id()


class NcclComm:
    """One GPU rank's end of the tensor-parallel communicator. The current CUDA device must be the rank's."""

    def __init__(self, tp: int, unique_id, rank: int, vocab_size: int):
        import cupy
        self.cp = cupy
        self.nccl = nccl_library()
        self.size, self.rank, self.vocab_size = tp, rank, vocab_size
        self.comm = self.nccl.NcclCommunicator(tp, unique_id, rank)   # returns once all tp ranks have joined

    def _type(self, dtype) -> int:
        name = NCCL_TYPES.get(str(dtype))
        if name is None:
            raise TypeError(f"tensor-parallel collectives support {', '.join(NCCL_TYPES)}, got {dtype}")
        return getattr(self.nccl, name)

    def _stream(self) -> int:
        return self.cp.cuda.get_current_stream().ptr

    def all_reduce(self, x):
        x = self.cp.ascontiguousarray(x)        # a fresh linear output: summed in place
        self.comm.allReduce(x.data.ptr, x.data.ptr, x.size, self._type(x.dtype), self.nccl.NCCL_SUM, self._stream())
        return x

    def gather_vocab(self, logits):
        part = self.cp.ascontiguousarray(logits)
        R, Vb = part.shape
        out = self.cp.empty((self.size, R, Vb), dtype=part.dtype)
        if part.size:                            # R = 0 (a step where nothing samples) on every rank alike
            self.comm.allGather(part.data.ptr, out.data.ptr, part.size, self._type(part.dtype), self._stream())
        full = out.transpose(1, 0, 2).reshape(R, self.size * Vb)
        return self.cp.ascontiguousarray(full[:, :self.vocab_size])

    def close(self) -> None:
        self.comm.destroy()

"""Tensor parallelism (`--tp N`): one model split over N ranks (docs/tensor_parallel.md).

    plan.py       which heads / channels / vocabulary rows each rank holds; check_tp (bad --tp refused)
    shard.py      cut a loaded model's weights (float or int4) into one rank's
    simulated.py  all ranks in one process, collectives as NumPy sums: proves the split on a CPU
    runtime.py    rank 0 in the engine process, driving worker.py processes (messages.py over pipes)
    nccl.py       the GPU collectives (CuPy NCCL); host_comm.py the CPU-process ones
    build.py      build_model: what a front end calls for --tp
"""

from refengine.parallel.build import build_model, visible_gpu_count
from refengine.parallel.plan import RankShard, TensorParallelError, TPPlan, check_tp, make_plan
from refengine.parallel.shard import group_size_of, shard_weights
from refengine.parallel.simulated import SimulatedTPModel

__all__ = ["build_model", "visible_gpu_count", "check_tp", "make_plan", "TPPlan", "RankShard",
           "TensorParallelError", "shard_weights", "group_size_of", "SimulatedTPModel"]

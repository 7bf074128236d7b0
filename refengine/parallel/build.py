"""The one call a front end makes for `--tp N`: the model object an Engine runs.

    loaded = load_model(spec)
    model = build_model(loaded, backend, tp)             # checks --tp first: nothing starts on a bad one
    engine = Engine(model, loaded.tokenizer, engine_config)

tp = 1 gives the plain LlamaModel, exactly as before. tp > 1 gives a TensorParallelModel whose rank 0 is
this process: on GPUs (--backend auto / cupy) one process per GPU talking NCCL; with --backend numpy,
tp CPU processes talking through pipes (for learning and testing; no GPU needed). The workers load the
model themselves, from `spec` (default: where `loaded` came from, loaded.source).
"""

from __future__ import annotations

from refengine.model.llama import LlamaModel
from refengine.ops import cuda_status, get_backend
from refengine.parallel.plan import check_tp
from refengine.parallel.shard import group_size_of


def visible_gpu_count() -> int:
    """CUDA devices this process can use (0 without CuPy or a driver)."""
    present, _ = cuda_status()
    if not present:
        return 0
    import cupy
    return int(cupy.cuda.runtime.getDeviceCount())


def build_model(loaded, backend: str = "auto", tp: int = 1, dtype=None, spec: str | None = None):
    """The Engine's model for `loaded` (a LoadedModel) split over `tp` ranks."""
    cpu_ranks = backend == "numpy"
    gpus = None if cpu_ranks or tp == 1 else visible_gpu_count()
    plan = check_tp(tp, loaded.config, group_size_of(loaded.weights), gpus)
    if tp == 1:
        return LlamaModel(loaded.config, loaded.weights, get_backend(backend), dtype)
    from refengine.parallel.runtime import TensorParallelModel
    ops = get_backend("numpy" if cpu_ranks else "cupy")
    return TensorParallelModel(spec or loaded.source, plan, loaded.weights, ops, dtype)

"""The real multi-process runtime with CPU ranks (--backend numpy --tp 2): rank 0 in this process, rank 1
a spawned worker that loads the checkpoint itself, step messages over a pipe, the collectives over pipes.
Everything but NCCL is the path GPU ranks take; its logits and generations equal tp = 1."""

import pytest

from refengine.model.loader import load_model
from refengine.ops import reference
from refengine.parallel import TensorParallelError, build_model, make_plan
from refengine.parallel.runtime import TensorParallelModel
from tests.hf_models import make_tiny_model
from tests.parallel.tp_cases import BLOCK, generations, run_steps, tp1_logits
from tests.tolerances import assert_close


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path, _ = make_tiny_model("llama-bias", tmp_path_factory.mktemp("tp-proc"))
    return str(path), load_model(str(path))


def test_cpu_ranks_in_processes_equal_tp1(checkpoint):
    spec, loaded = checkpoint
    assert loaded.source == spec                                      # what the worker will load
    cfg = loaded.config
    want_logits = tp1_logits(cfg, loaded.weights)
    want_tokens = generations(build_model(loaded, "numpy", tp=1), loaded.tokenizer)
    model = build_model(loaded, "numpy", tp=2)
    try:
        assert isinstance(model, TensorParallelModel) and model.workers[0].process.is_alive()
        assert_close(run_steps(model, model.allocate_kv(8, BLOCK), cfg), want_logits, "logits_self", "float32")
        assert generations(model, loaded.tokenizer) == want_tokens      # ALLOCATE, COPY, FORWARD in an Engine
    finally:
        model.close()
    assert not model.workers[0].process.is_alive() and model.workers[0].process.exitcode == 0


def test_a_worker_that_cannot_load_is_one_line(checkpoint):
    _, loaded = checkpoint
    with pytest.raises(TensorParallelError) as info:
        TensorParallelModel("no/such/dir/anywhere", make_plan(loaded.config, 2), loaded.weights, reference)
    message = str(info.value)
    assert message.startswith("--tp 2: rank 1 could not load the model") and "\n" not in message, message


def test_bad_tp_is_refused_before_any_process_starts(checkpoint, monkeypatch):
    _, loaded = checkpoint
    import multiprocessing
    monkeypatch.setattr(multiprocessing, "get_context", lambda *a: pytest.fail("a process was started"))
    monkeypatch.setattr("refengine.parallel.build.visible_gpu_count", lambda: 1)
    with pytest.raises(TensorParallelError, match="--tp 2 needs 2 GPUs"):
        build_model(loaded, "auto", tp=2)
    with pytest.raises(TensorParallelError, match="power of two"):
        build_model(loaded, "numpy", tp=3)
    with pytest.raises(TensorParallelError, match="attention heads"):
        build_model(loaded, "numpy", tp=8)            # 4 heads

"""GPU only: tp = 1 through the NCCL runtime — a one-rank communicator, so the all-reduce after o and down
and the vocabulary all-gather really run through NCCL — gives the plain CUDA model's logits, float16 and
int4 weights, and the same greedy tokens through the Engine (eager steps vs the plain model's graphs).

    python -m pytest -q tests/parallel/test_nccl_tp1.py
"""

import pytest

from tests.parallel.gpu_cases import agreeing_prefixes, config, greedy_tokens, prompts, require_gpu_nccl

cp = require_gpu_nccl()

from refengine.engine.kv_cache import KVCache  # noqa: E402
from refengine.model.llama import LlamaModel  # noqa: E402
from refengine.ops import cuda  # noqa: E402
from refengine.parallel.nccl import NcclComm  # noqa: E402
from refengine.parallel.plan import make_plan  # noqa: E402
from refengine.parallel.runtime import TensorParallelModel  # noqa: E402
from tests.kernels.model_cases import random_weights  # noqa: E402
from tests.parallel.tp_cases import BLOCK, steps  # noqa: E402
from tests.tolerances import assert_close, max_abs_diff  # noqa: E402


@pytest.mark.parametrize("group_size", [None, 128])
def test_tp1_through_nccl_equals_the_plain_model(group_size):
    cfg = config()
    weights = random_weights(cfg, seed=0, group_size=group_size)
    plain = LlamaModel(cfg, weights, cuda)
    tp1 = TensorParallelModel("(no worker is started at tp 1)", make_plan(cfg, 1), weights, cuda)
    try:
        assert isinstance(tp1.local.comm, NcclComm) and tp1.local.comm.comm.size() == 1 and not tp1.workers
        kv_plain = KVCache.allocate(cfg, 8, BLOCK, dtype=plain.dtype, xp=cp)
        kv_tp = tp1.allocate_kv(8, BLOCK)
        for i, batch in enumerate(steps(cfg)):
            want = plain.forward(batch, kv_plain).get()
            got = tp1.forward(batch, kv_tp).get()
            print(f"step {i}: max |tp1 - plain| = {max_abs_diff(got, want):.3g}")
            assert got.shape == (len(batch.logits_rows), cfg.vocab_size)
            assert_close(got, want, "logits", "float16", f"step {i}, group size {group_size}")
            assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.95
    finally:
        tp1.close()


def test_tp1_through_nccl_generates_like_the_plain_model():
    cfg = config()
    weights = random_weights(cfg, seed=1)
    ps = prompts(cfg.vocab_size)
    want = greedy_tokens(LlamaModel(cfg, weights, cuda), ps)
    tp1 = TensorParallelModel("(no worker is started at tp 1)", make_plan(cfg, 1), weights, cuda)
    try:
        got = greedy_tokens(tp1, ps)
    finally:
        tp1.close()
    prefix = agreeing_prefixes(got, want)
    print(f"agreeing greedy prefixes (of {len(want[0])}): {prefix}")
    assert min(prefix) >= 8, prefix

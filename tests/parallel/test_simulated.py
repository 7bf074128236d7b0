"""Simulated tensor parallelism (all ranks in one process, NumPy) gives the tp = 1 logits: tiny random
checkpoints of several families in float32 and an int4 workspace, GQA with fewer KV heads than ranks
(replicated), packed multi-sequence batches over a paged cache, and whole greedy generations through the
Engine (continuous batching, prefix sharing, copy-on-write)."""

import dataclasses

import numpy as np
import pytest

from refengine.model.loader import load_model
from refengine.parallel import SimulatedTPModel, TensorParallelError
from refengine.parallel.simulated import ShardedKV
from refengine.workspace.convert import ConvertOptions, convert
from tests.engine.tiny_engine import tiny_model
from tests.hf_models import make_tiny_model
from tests.parallel.tp_cases import BLOCK, generations, run_steps, steps, tp1_logits
from tests.tolerances import assert_close


def sim_logits(cfg, weights, tp) -> np.ndarray:
    model = SimulatedTPModel(cfg, weights, tp)
    return run_steps(model, model.allocate_kv(8, BLOCK), cfg)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> LoadedModel. llama-bias: every bias (o / down biases must be added once), GQA 4 heads / 2 KV
    heads (replicated at tp 4); llama-tied: the LM head is the embedding; internlm2: fused wqkv checkpoint,
    dynamic NTK rope. Vocabulary 131: no tp divides it (padded blocks)."""
    root = tmp_path_factory.mktemp("tp")
    return {family: load_model(str(make_tiny_model(family, root)[0]))
            for family in ("llama-bias", "llama-tied", "internlm2")}


@pytest.mark.parametrize("family", ["llama-bias", "llama-tied", "internlm2"])
def test_tp_logits_equal_tp1(checkpoints, family):
    loaded = checkpoints[family]
    cfg, weights = loaded.config, loaded.weights.astype(np.float32)
    ref = tp1_logits(cfg, weights)
    for tp in (2, 4):
        assert_close(sim_logits(cfg, weights, tp), ref, "logits_self", "float32", f"{family} tp={tp}")


def test_a_wrong_split_is_caught(checkpoints):
    """The comparison above can fail: two ranks that swap their query heads give different logits."""
    loaded = checkpoints["llama-bias"]
    cfg, weights = loaded.config, loaded.weights.astype(np.float32)
    model = SimulatedTPModel(cfg, weights, 2)
    la, lb = model.ranks[0].weights.layers[0], model.ranks[1].weights.layers[0]
    q = cfg.head_dim * cfg.num_heads // 2                     # each rank's q rows come first in its qkv
    la.qkv, lb.qkv = np.concatenate([lb.qkv[:q], la.qkv[q:]]), np.concatenate([la.qkv[:q], lb.qkv[q:]])
    got = run_steps(model, model.allocate_kv(8, BLOCK), cfg)
    assert np.abs(got - tp1_logits(cfg, weights)).max() > 1e-2


@pytest.fixture(scope="module")
def int4_workspace(tmp_path_factory):
    """An int4 (RTN, group 32) workspace of a GQA llama: 8 heads, 2 KV heads (replicated at tp 4), o's input
    128 and down's 128 split into shares of 64 / 32 that group 32 divides."""
    root = tmp_path_factory.mktemp("tp-int4")
    path, _ = make_tiny_model("llama-bias", root, num_attention_heads=8, num_key_value_heads=2,
                              intermediate_size=128)
    convert(str(path), ConvertOptions(dst=root / "ws", quant="rtn", group_size=32))
    return load_model(str(root / "ws"))


def test_int4_workspace_tp_logits_equal_tp1(int4_workspace):
    cfg, weights = int4_workspace.config, int4_workspace.weights
    ref = tp1_logits(cfg, weights)
    for tp in (2, 4):
        assert_close(sim_logits(cfg, weights, tp), ref, "logits_self", "float32", f"int4 tp={tp}")


def test_int4_group_that_does_not_divide_a_share_is_refused(int4_workspace):
    with pytest.raises(TensorParallelError, match="group size 32"):
        SimulatedTPModel(int4_workspace.config, int4_workspace.weights, 8)     # o share 16, down share 16


def test_mha_with_kv_heads_split(checkpoints):
    """No replication: 4 KV heads over 2 and 4 ranks (each rank its own KV heads), from a GQA checkpoint
    turned multi-head by repeating its KV heads — the same function, so the logits must not move."""
    loaded = checkpoints["llama-tied"]
    cfg, weights = loaded.config, loaded.weights.astype(np.float32)
    D, H, KVH = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    mha = dataclasses.replace(cfg, num_kv_heads=H)

    def widen(qkv):
        q, k, v = np.split(qkv, [H * D, (H + KVH) * D])
        rep = lambda a: np.repeat(a.reshape(KVH, D, -1), H // KVH, axis=0).reshape(H * D, -1)
        return np.concatenate([q, rep(k), rep(v)])
    wide = dataclasses.replace(weights, layers=[dataclasses.replace(l, qkv=widen(l.qkv)) for l in weights.layers])
    ref = tp1_logits(cfg, weights)
    for tp in (2, 4):
        assert_close(sim_logits(mha, wide, tp), ref, "logits_self", "float32", f"mha tp={tp}")


# ---------------------------------------------------------------- whole generations through the Engine

class CountingCopies(SimulatedTPModel):
    copies = 0

    def copy_kv_blocks(self, kv: ShardedKV, copies) -> None:
        type(self).copies += len(copies)
        super().copy_kv_blocks(kv, copies)


@pytest.mark.parametrize("tp", [2, 4])
def test_engine_greedy_generation_equals_tp1(tp):
    base = tiny_model(seed=5)             # 4 heads, 2 KV heads: replicated at tp 4; vocabulary 71
    want = generations(base)
    assert [[len(c) for c in w] for w in want] == [[12], [12, 12], [12], [12]]
    sim = CountingCopies(base.cfg, base.weights, tp)
    CountingCopies.copies = 0
    assert generations(sim) == want
    assert CountingCopies.copies > 0      # n = 2 forks a half-full block: copy-on-write ran in every rank


def test_a_failing_rank_raises_instead_of_hanging():
    base = tiny_model(seed=5)
    sim = SimulatedTPModel(base.cfg, base.weights, 4)
    kv, [first, *_] = sim.allocate_kv(8, BLOCK), steps(base.cfg)
    good = sim.forward(first, kv)
    broken = sim.ranks[2].weights.layers[1]
    saved, broken.o = broken.o, broken.o[:, :-1]                 # rank 2 fails in layer 1, mid-forward
    with pytest.raises(ValueError):
        sim.forward(first, kv)
    broken.o = saved
    assert_close(sim.forward(first, sim.allocate_kv(8, BLOCK)), good, "logits_self", "float32")   # usable again


def test_replicated_kv_heads_are_counted_in_every_rank():
    base = tiny_model(seed=5)                                    # 2 KV heads
    one = SimulatedTPModel(base.cfg, base.weights, 1).kv_bytes_per_block(4)
    assert SimulatedTPModel(base.cfg, base.weights, 2).kv_bytes_per_block(4) == one       # split
    assert SimulatedTPModel(base.cfg, base.weights, 4).kv_bytes_per_block(4) == 2 * one   # each head twice

"""check_tp refuses a --tp that cannot run with one line naming --tp; the plan covers every head, channel
and vocabulary row exactly once (KV heads: once per replica)."""

import pytest

from refengine.config import ModelConfig
from refengine.errors import RefengineError
from refengine.parallel import TensorParallelError, check_tp, make_plan


def config(**kw) -> ModelConfig:
    base = dict(family="llama", hidden_size=64, num_layers=1, num_heads=8, num_kv_heads=2, head_dim=16,
                intermediate_size=256, vocab_size=131)
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("tp, cfg, group, gpus, words", [
    (3, config(num_heads=6, num_kv_heads=6), None, 8, ["--tp 3", "power of two"]),
    (0, config(), None, 8, ["--tp", "positive integer"]),
    (4, config(), None, 2, ["--tp 4", "4 GPUs", "only 2 are visible"]),
    (2, config(), None, 1, ["--tp 2", "2 GPUs", "only 1 is visible"]),
    (2, config(), None, 0, ["--tp 2", "none is visible"]),
    (4, config(num_heads=6, num_kv_heads=6), None, 8, ["--tp 4", "6 attention heads"]),
    (4, config(num_heads=24, num_kv_heads=6), None, 8, ["--tp 4", "6 key-value heads"]),
    (4, config(intermediate_size=250), None, 8, ["--tp 4", "intermediate size 250"]),
    (4, config(), 64, 8, ["--tp 4", "o_proj", "group size 64", "32"]),          # o share: 2 heads × 16 = 32
    (2, config(intermediate_size=96), 32, 8, ["--tp 2", "down_proj", "group size 32", "48"]),
])
def test_bad_tp_gives_one_clear_line(tp, cfg, group, gpus, words):
    with pytest.raises(TensorParallelError) as info:
        check_tp(tp, cfg, group, gpus)
    message = str(info.value)
    assert isinstance(info.value, RefengineError)        # the CLI prints it as one line, exit code 2
    assert "\n" not in message and message.startswith("--tp"), message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("tp, cfg, group, gpus", [
    (1, config(), None, 0),                   # one rank needs no GPU count
    (2, config(), 32, None),                  # CPU ranks: no GPU limit
    (4, config(), 32, 4),                     # kv heads 2 < tp 4: replicated
    (8, config(num_kv_heads=8), None, 8),
])
def test_good_tp_passes(tp, cfg, group, gpus):
    check_tp(tp, cfg, group, gpus)


@pytest.mark.parametrize("heads, kv_heads, tp", [(8, 2, 2), (8, 2, 4), (8, 2, 8), (8, 8, 4), (8, 1, 4), (4, 4, 1)])
def test_every_head_channel_and_row_is_held_once(heads, kv_heads, tp):
    cfg = config(num_heads=heads, num_kv_heads=kv_heads, intermediate_size=64, vocab_size=131)
    plan = make_plan(cfg, tp)
    shards = [plan.shard(r) for r in range(tp)]
    assert [h for s in shards for h in s.q_heads] == list(range(heads))
    assert [c for s in shards for c in s.inter] == list(range(64))
    assert [v for s in shards for v in s.vocab] == list(range(131))
    assert all(len(s.vocab) <= plan.vocab_per_rank for s in shards)
    kv = [h for s in shards for h in s.kv_heads]
    assert sorted(set(kv)) == list(range(kv_heads)) and len(kv) == max(tp, kv_heads)
    group = heads // kv_heads
    for s in shards:                           # each rank's query heads read only its own KV heads, uniformly
        per_kv = len(s.q_heads) // len(s.kv_heads)
        assert [h // group for h in s.q_heads] == [kvh for kvh in s.kv_heads for _ in range(per_kv)]
    local = plan.local_config()
    assert (local.num_heads, local.num_kv_heads, local.intermediate_size) == (heads // tp, len(shards[0].kv_heads),
                                                                             64 // tp)

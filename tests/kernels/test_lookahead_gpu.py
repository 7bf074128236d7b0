"""Lookahead decode on the GPU (refengine/engine/core.py): step n+1's graph is launched with its input ids
gathered on the device from sampler n's output, before those ids reach the host. The scripted workload of
tests/engine (mixed sampling settings, n > 1, sessions, cancels, arrivals mid-decode, preemption) must give the
outputs of the engine without lookahead, on float16 and W4A16 models, and leave every block free."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from refengine.config import EngineConfig, ModelConfig
from refengine.engine.core import EngineCore
from refengine.model.llama import LlamaModel
from refengine.sampling_params import GenerationConfig
from tests.engine.workloads import assert_same_outputs, lookahead_workload
from tests.kernels.helpers import require_gpu
from tests.kernels.model_cases import random_weights

cp = require_gpu()
from refengine.ops import cuda  # noqa: E402


@pytest.mark.parametrize("group_size,num_blocks,batch", [(None, 256, 8), (128, 256, 8), (None, 10, 8),
                                                         (None, 256, 2)])
def test_lookahead_gives_the_outputs_of_the_plain_engine_on_the_gpu(group_size, num_blocks, batch):
    """(10 blocks of 4: sequences are preempted; batch 2: some are always waiting.)"""
    cfg = ModelConfig(family="llama", hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64,
                      intermediate_size=512, vocab_size=512, max_position_embeddings=256)
    model = LlamaModel(cfg, random_weights(cfg, 1, group_size), cuda)
    config = EngineConfig(cache_max_entry_count=num_blocks, cache_block_seq_len=4, max_batch_size=batch)
    plain = EngineCore.build(model, replace(config, lookahead=False))
    ahead = EngineCore.build(model, config)
    assert ahead.lookahead and not plain.lookahead           # graphs exist: lookahead is on by default
    got_plain, got_ahead = lookahead_workload(plain), lookahead_workload(ahead)
    assert_same_outputs(got_plain, got_ahead)
    assert ahead.stats["ahead"] > 0
    for core in (plain, ahead):
        assert core.block_manager.num_free_blocks == num_blocks and not core.scheduler.running


def test_lookahead_input_ids_come_from_the_device():
    """A step launched ahead replays its graph with ids gathered from the sampler's device output: its logits
    equal those of the same step run with the ids known on the host."""
    cfg = ModelConfig(family="llama", hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64,
                      intermediate_size=512, vocab_size=512, max_position_embeddings=256)
    model = LlamaModel(cfg, random_weights(cfg, 2), cuda)
    logits = {}
    for lookahead in (False, True):
        core = EngineCore.build(model, EngineConfig(cache_max_entry_count=64, cache_block_seq_len=4,
                                                    lookahead=lookahead))
        seen = []
        run, run_ahead = core.runner.run, core.runner.run_ahead
        core.runner.run = lambda out: seen.append(run(out).get()) or cp.asarray(seen[-1])
        core.runner.run_ahead = lambda out, ids, src: seen.append(run_ahead(out, ids, src).get()) or \
            cp.asarray(seen[-1])
        for i in range(3):
            core.add_request(i, [5 + i, 9, 14 + 2 * i], GenerationConfig(temperature=0.0, max_new_tokens=6,
                                                                          ignore_eos=True))
        while core.has_work():
            core.step()
        logits[lookahead] = seen
    assert len(logits[True]) == len(logits[False]) == 6
    for step, (a, b) in enumerate(zip(logits[False], logits[True])):
        np.testing.assert_array_equal(a, b, err_msg=f"step {step}")

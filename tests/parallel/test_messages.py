"""The step messages rank 0 sends its workers carry every field of a step exactly."""

import numpy as np
import pytest

from refengine.parallel import messages
from tests.engine.tiny_engine import tiny_config
from tests.parallel.tp_cases import steps


@pytest.mark.parametrize("index", [0, 1, 2])
def test_forward_message_round_trip(index):
    batch = steps(tiny_config())[index]
    msg = messages.unpack(messages.pack_forward(batch))
    assert msg.kind == messages.FORWARD
    for name in ("input_ids", "positions", "cu_seqlens_q", "context_lens", "block_tables", "slot_mapping",
                 "logits_rows"):
        got, want = getattr(msg.batch, name), np.asarray(getattr(batch, name))
        assert got.shape == want.shape and np.array_equal(got, want), name
    assert msg.batch.block_tables.dtype == np.int32 and msg.batch.input_ids.dtype == np.int64


def test_a_step_without_sampling_rows_round_trips():
    batch = steps(tiny_config())[1]
    batch.logits_rows = np.zeros(0, dtype=np.int64)           # a middle prefill chunk: nothing samples
    assert len(messages.unpack(messages.pack_forward(batch)).batch.logits_rows) == 0


def test_other_messages_round_trip():
    assert messages.unpack(messages.pack_copy([(3, 9), (4, 1)])).copies == [(3, 9), (4, 1)]
    alloc = messages.unpack(messages.pack_allocate(123, 16))
    assert (alloc.kind, alloc.num_blocks, alloc.block_size) == (messages.ALLOCATE, 123, 16)
    assert messages.unpack(messages.pack_stop()).kind == messages.STOP
    with pytest.raises(ValueError, match="expected"):
        messages.unpack(messages.pack_forward(steps(tiny_config())[0])[:-8])

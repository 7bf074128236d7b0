"""kernels_cu/sampling.cu: penalties, sampling and log-probabilities vs the reference twins (which run
refengine/engine/sampler.py's own functions), plus the engine hook: a seeded request samples the same
tokens on the GPU as on NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from refengine.engine import sampler
from refengine.sampling_params import GenerationConfig
from tests.kernels.helpers import fresh_rng, require_gpu
from tests.tolerances import assert_close

cp = require_gpu()
from refengine.ops import cuda, reference as ref  # noqa: E402
from refengine.ops.cuda_sampling import _penalty_csr, sample_batch  # noqa: E402

V = 5003


def logits_rows(rng, R, spread=3.0):
    return (rng.standard_normal((R, V)) * spread).astype(np.float32)


def test_apply_penalties_rows():
    rng, seed = fresh_rng()
    R = 4
    x = logits_rows(rng, R)
    configs = [GenerationConfig(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25),
               GenerationConfig(),
               GenerationConfig(repetition_penalty=0.8),
               GenerationConfig(presence_penalty=-1.0, frequency_penalty=1.5)]
    contexts = [(rng.integers(0, V, 50), rng.integers(0, V, 30)) for _ in range(R)]
    ids, counts, offsets = _penalty_csr(contexts, configs)
    args = (ids, counts, offsets, [c.repetition_penalty for c in configs], [c.presence_penalty for c in configs],
            [c.frequency_penalty for c in configs])
    got = cuda.apply_penalties_rows(cp.asarray(x), *args)
    assert_close(got, ref.apply_penalties_rows(x, *args), "apply_penalties", "float32", f"seed {seed}")
    for r in range(R):                  # and the twin agrees with the engine's own sampler
        want = sampler.apply_penalties(x[r], configs[r], *contexts[r])
        assert_close(got[r], want, "apply_penalties", "float32", f"row {r} vs sampler, seed {seed}")


SETTINGS = [dict(temperature=0.0), dict(temperature=0.7, top_k=1), dict(temperature=1.0),
            dict(temperature=0.8, top_k=40), dict(temperature=1.2, top_p=0.9), dict(temperature=0.6, min_p=0.05),
            dict(temperature=1.0, top_k=200, top_p=0.5, min_p=0.01), dict(temperature=2.0, top_p=0.3)]


@pytest.mark.parametrize("version", cuda.SAMPLE_ROWS_VERSIONS)
def test_sample_rows_matches_reference(version):
    rng, seed = fresh_rng()
    R = 64
    x = logits_rows(rng, R)
    cfgs = [SETTINGS[r % len(SETTINGS)] for r in range(R)]
    params = [np.array([c.get(k, d) for c in cfgs]) for k, d in
              (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0), ("min_p", 0.0))]
    u = rng.random(R)
    got = cuda.sample_rows(cp.asarray(x), *params, u, version=version).get()
    want = ref.sample_rows(x, *params, u)
    # the same token unless u lands within float32 rounding of a CDF step (then either neighbour is right)
    mismatched = []
    for r in np.nonzero(got != want)[0]:
        cfg = GenerationConfig(**cfgs[r])
        probs = np.exp(sampler.log_softmax(sampler.filter_logits(x[r], cfg)))
        cdf = np.cumsum(probs / probs.sum())
        if not min(abs(cdf[got[r]] - u[r]), abs(cdf[max(got[r] - 1, 0)] - u[r])) < 1e-5:
            mismatched.append((r, int(got[r]), int(want[r])))
    assert not mismatched, f"{version}: rows (row, gpu, reference) {mismatched}, seed {seed}"


@pytest.mark.parametrize("version", cuda.SAMPLE_ROWS_VERSIONS)
@pytest.mark.parametrize("setting", SETTINGS[2:])
def test_filter_keeps_the_reference_set(setting, version):
    """The kept tokens (finite after the cuts) are exactly the reference filter's, on many random rows."""
    rng, seed = fresh_rng()
    R = 16
    x = logits_rows(rng, R)
    cfg = GenerationConfig(**setting)
    work = cp.asarray(x)
    cuda.sample_rows(work, [cfg.temperature] * R, [cfg.top_k] * R, [cfg.top_p] * R, [cfg.min_p] * R,
                     rng.random(R), version=version)      # works on a copy: the input is unchanged
    assert cp.array_equal(work, cp.asarray(x))
    filtered = cuda._sample_rows_filtered(cp.asarray(x), [cfg.temperature] * R, [cfg.top_k] * R, [cfg.top_p] * R,
                                          [cfg.min_p] * R, version=version).get()
    for r in range(R):
        want = np.isfinite(sampler.filter_logits(x[r], cfg))
        assert np.array_equal(np.isfinite(filtered[r]), want), f"{version} row {r}, seed {seed}"


def test_logprobs_rows():
    rng, seed = fresh_rng()
    R = 5
    x = logits_rows(rng, R)
    tokens = rng.integers(0, V, R)
    chosen, top_ids, top_lp = cuda.logprobs_rows(cp.asarray(x), tokens, 20)
    c_ref, ids_ref, lp_ref = ref.logprobs_rows(x, tokens, 20)
    assert np.array_equal(top_ids.get(), ids_ref), f"seed {seed}"
    assert_close(chosen, c_ref, "logprobs", "float32", f"seed {seed}")
    assert_close(top_lp, lp_ref, "logprobs", "float32", f"seed {seed}")


def test_engine_hook_seeded_requests_match_numpy():
    """sampler.sample on a device row: same token and log-probs as on the host row, same generator state."""
    rng, seed = fresh_rng()
    agree = total = 0
    for step in range(40):
        x = logits_rows(rng, 1)[0]
        cfg = GenerationConfig(**SETTINGS[step % len(SETTINGS)], repetition_penalty=1.1, logprobs=3,
                               seed=step)
        ctx = (list(rng.integers(0, V, 10)), list(rng.integers(0, V, 5)))
        host_rng, dev_rng = np.random.default_rng(step), np.random.default_rng(step)
        a = sampler.sample(x, cfg, host_rng, *ctx)
        b = sampler.sample(cp.asarray(x), cfg, dev_rng, *ctx)
        total += 1
        agree += a.token_id == b.token_id
        assert host_rng.random() == dev_rng.random(), "the device path must draw exactly what numpy draws"
        assert [t for t, _ in a.top_logprobs] == [t for t, _ in b.top_logprobs]
        assert abs(a.logprob - b.logprob) < 1e-4 if a.token_id == b.token_id else True
    assert agree >= total - 1, f"{agree}/{total} tokens agree, seed {seed}"


def test_sample_batch_mixed_rows():
    rng, seed = fresh_rng()
    x = logits_rows(rng, 3)
    cfgs = [GenerationConfig(temperature=0), GenerationConfig(temperature=0.9, top_p=0.8, logprobs=2),
            GenerationConfig(temperature=0, frequency_penalty=1.0)]
    out = sample_batch(cp.asarray(x), cfgs, [np.random.default_rng(i) for i in range(3)],
                       [((), ()), ((), ()), ([1, 2], [int(np.argmax(x[2]))] * 3)])
    assert out[0].token_id == int(np.argmax(x[0])) and out[0].logprob is None
    assert len(out[1].top_logprobs) == 2
    assert out[2].token_id != int(np.argmax(x[2]))          # the repeated argmax was penalised away

"""The sampler's logit processors against transformers' own (the same settings must give the same
distribution), plus the properties of sampling itself."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
lp = pytest.importorskip("transformers.generation.logits_process")

from refengine.engine.sampler import apply_penalties, filter_logits, log_softmax, sample  # noqa: E402
from refengine.errors import GenerationConfigError  # noqa: E402
from refengine.sampling_params import GenerationConfig  # noqa: E402

V = 257


def random_logits(seed, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(V) * scale).astype(np.float32)


def hf_process(logits, ids, cfg):
    scores = torch.tensor(logits)[None]
    input_ids = torch.tensor(ids, dtype=torch.long)[None]
    procs = []
    if cfg.repetition_penalty != 1.0:
        procs.append(lp.RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    procs.append(lp.TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k:
        procs.append(lp.TopKLogitsWarper(cfg.top_k))
    if cfg.top_p < 1:
        procs.append(lp.TopPLogitsWarper(cfg.top_p))
    if cfg.min_p:
        procs.append(lp.MinPLogitsWarper(cfg.min_p))
    for p in procs:
        scores = p(input_ids, scores)
    return scores[0].numpy()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("settings", [
    dict(temperature=0.7), dict(temperature=1.3, top_k=17), dict(temperature=0.9, top_p=0.8),
    dict(temperature=1.0, min_p=0.05), dict(temperature=0.6, top_k=40, top_p=0.9, min_p=0.02),
    dict(temperature=1.1, repetition_penalty=1.3), dict(temperature=0.5, repetition_penalty=0.7, top_p=0.5),
])
def test_processors_match_transformers(seed, settings):
    cfg = GenerationConfig(**settings)
    logits = random_logits(seed)
    prompt, output = [3, 5, 5, 200, 17], [17, 99, 3]
    ours = filter_logits(apply_penalties(logits, cfg, prompt, output), cfg)
    ref = hf_process(logits, prompt + output, cfg)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
    kept = np.isfinite(ref)
    np.testing.assert_allclose(ours[kept], ref[kept], rtol=1e-6, atol=1e-6)


def test_presence_and_frequency_penalties_follow_openai():
    cfg = GenerationConfig(presence_penalty=0.5, frequency_penalty=0.25)
    logits = random_logits(7)
    output = [4, 4, 4, 9]
    got = apply_penalties(logits, cfg, [1, 2], output)
    want = logits.copy()
    want[4] -= 0.5 + 3 * 0.25
    want[9] -= 0.5 + 1 * 0.25
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_greedy_is_argmax_after_penalties():
    logits = random_logits(1)
    top = int(np.argmax(logits))
    assert sample(logits, GenerationConfig(temperature=0), np.random.default_rng()).token_id == top
    penalised = sample(logits, GenerationConfig(temperature=0, repetition_penalty=100.0), np.random.default_rng(),
                       prompt_ids=[top])
    assert penalised.token_id != top


def test_sampling_follows_the_distribution():
    logits = random_logits(2, scale=1.0)[:8]
    cfg = GenerationConfig(temperature=1.0)
    rng = np.random.default_rng(0)
    draws = np.bincount([sample(logits, cfg, rng).token_id for _ in range(4000)], minlength=8) / 4000
    np.testing.assert_allclose(draws, np.exp(log_softmax(logits)), atol=0.03)


def test_seed_makes_sampling_repeatable():
    logits = random_logits(3, scale=0.5)
    cfg = GenerationConfig(temperature=1.0)

    def draws(seed):
        rng = np.random.default_rng(seed)
        return [sample(logits, cfg, rng).token_id for _ in range(20)]
    assert draws(1234) == draws(1234)
    assert draws(1234) != draws(4321)
    assert len(set(draws(1234))) > 1


def test_logprobs_are_the_models_distribution():
    logits = random_logits(4)
    choice = sample(logits, GenerationConfig(temperature=0.3, top_k=5, logprobs=3), np.random.default_rng(0))
    ref = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), -1).numpy()
    assert choice.logprob == pytest.approx(ref[choice.token_id], abs=1e-9)
    assert [t for t, _ in choice.top_logprobs] == list(np.argsort(-ref)[:3])


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", 2.5), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1),
    ("min_p", 1.5), ("repetition_penalty", 0.0), ("max_new_tokens", -1), ("presence_penalty", 3.0),
    ("seed", -5), ("logprobs", 21), ("stop", ("",)),
])
def test_bad_generation_config_names_the_field(field, value):
    with pytest.raises(GenerationConfigError) as e:
        GenerationConfig(**{field: value})
    assert e.value.field == field and field in str(e.value)

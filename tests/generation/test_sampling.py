"""The vectorized sampling functions, on hand-made logits."""

from __future__ import annotations

import numpy as np

from lmfast.generation.params import GenerationParams
from lmfast.generation.sampling import SamplerRows, apply_banned, apply_repetition_penalty, make_rng, sample

LOGITS = np.log(np.array([[0.5, 0.25, 0.15, 0.1]], dtype=np.float32))


def _draw(logits, n=4000, temperature=1.0, top_k=0, top_p=1.0, seed=0) -> np.ndarray:
    """Token frequencies over n identical rows sampled in one vectorized call."""
    batch = np.repeat(logits, n, axis=0)
    tokens = sample(
        batch,
        np.full(n, temperature, dtype=np.float32),
        np.full(n, top_k, dtype=np.int64),
        np.full(n, top_p, dtype=np.float32),
        np.random.default_rng(seed).random(n),
    )
    return np.bincount(tokens, minlength=logits.shape[1]) / n


def test_sampling_follows_the_softmax():
    np.testing.assert_allclose(_draw(LOGITS), [0.5, 0.25, 0.15, 0.1], atol=0.03)


def test_top_k_keeps_only_the_k_best():
    freq = _draw(LOGITS, top_k=2)
    assert freq[2] == freq[3] == 0
    np.testing.assert_allclose(freq[:2], [2 / 3, 1 / 3], atol=0.03)


def test_top_p_keeps_the_smallest_set_reaching_p():
    freq = _draw(LOGITS, top_p=0.7)  # 0.5 < 0.7 <= 0.75: tokens 0 and 1
    assert freq[2] == freq[3] == 0 and freq[1] > 0


def test_temperature_sharpens_and_flattens():
    cold, hot = _draw(LOGITS, temperature=0.2), _draw(LOGITS, temperature=5.0)
    assert cold[0] > 0.95
    assert hot[3] > 0.18


def test_rows_keep_their_own_parameters_in_one_call():
    logits = np.repeat(LOGITS, 3, axis=0)
    tokens = sample(
        logits,
        np.array([1.0, 1.0, 1.0], dtype=np.float32),
        np.array([1, 0, 0]),
        np.array([1.0, 1.0, 1.0], dtype=np.float32),
        np.array([0.99, 0.99, 0.0]),
    )
    assert tokens.tolist() == [0, 3, 0]  # top_k=1 forces token 0; u=0.99 picks the tail otherwise


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = np.array([[2.0, -2.0, 2.0]], dtype=np.float32)
    seen = np.array([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, np.array([2.0], dtype=np.float32))
    np.testing.assert_allclose(out, [[1.0, -4.0, 2.0]])


def test_banned_tokens_cannot_be_chosen():
    out = apply_banned(LOGITS.copy(), np.array([[True, False, False, False]]))
    assert np.argmax(out) == 1 and np.isneginf(out[0, 0])


def test_sampler_rows_select_concat_and_greedy_rows():
    params = [
        GenerationParams(temperature=0.0, repetition_penalty=1.2),
        GenerationParams(temperature=1.0, top_k=0, seed=1),
    ]
    rows = SamplerRows.build(
        params, [make_rng(p.seed, 0) for p in params], [[0], [1]], [np.array([0]), np.array([], int)], 4
    )
    tokens = rows.next_tokens(np.repeat(LOGITS, 2, axis=0))
    assert tokens[0] == 1  # greedy row: token 0 banned, so the runner-up
    assert rows.seen[0, 1] and rows.seen[1, tokens[1]]  # tracked: a row uses a penalty
    both = rows.concat(rows.select(np.array([1])))
    assert len(both) == 3 and both.temperature.tolist() == [0.0, 1.0, 1.0]


def test_seeded_rngs_reproduce_and_differ_by_sequence_index():
    assert make_rng(7, 0).random() == make_rng(7, 0).random()
    assert make_rng(7, 0).random() != make_rng(7, 1).random()


def test_ids_past_the_tokenizer_vocabulary_are_never_drawn():
    params = [GenerationParams(temperature=0.0), GenerationParams(temperature=1.0, seed=0)]
    rows = SamplerRows.build(params, [make_rng(0, 0)] * 2, [[0], [0]], [np.array([], int)] * 2, 4)
    padded = np.array([[0.0, 1.0, 0.0, 0.0, 0.0, 50.0]] * 2, dtype=np.float32)  # a padded vocab of 6
    for _ in range(5):
        tokens = rows.next_tokens(padded)
        assert tokens[0] == 1 and tokens[1] < 4


def test_top_p_alone_matches_the_full_sort_exactly():
    """Top-p without top-k sorts only a bound on the nucleus; the draw must equal a full sort's."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        batch, vocab = 4, 1000
        logits = (rng.normal(size=(batch, vocab)) * rng.uniform(0.5, 8)).astype(np.float32)
        top_p = rng.uniform(0.05, 0.99, batch).astype(np.float32)
        uniforms, temperature = rng.random(batch), np.full(batch, 0.8, dtype=np.float32)
        bounded = sample(logits, temperature, np.zeros(batch, dtype=np.int64), top_p, uniforms)
        full_sort = sample(logits, temperature, np.full(batch, vocab, dtype=np.int64), top_p, uniforms)
        np.testing.assert_array_equal(bounded, full_sort)


def test_rows_with_different_filters_draw_as_they_would_alone():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 500)).astype(np.float32)
    temperature = np.full(3, 0.9, dtype=np.float32)
    top_k, top_p, uniforms = np.array([0, 0, 20]), np.array([1.0, 0.8, 0.9], dtype=np.float32), rng.random(3)
    together = sample(logits, temperature, top_k, top_p, uniforms)
    alone = [
        sample(
            logits[i : i + 1], temperature[i : i + 1], top_k[i : i + 1], top_p[i : i + 1], uniforms[i : i + 1]
        )[0]
        for i in range(3)
    ]
    assert together.tolist() == alone


def test_denormal_temperature_and_penalty_stay_finite(recwarn):
    logits = np.array([[1.0, 3.0, -2.0, 0.5]], dtype=np.float32)
    tokens = sample(
        logits,
        np.array([5e-324], dtype=np.float32),
        np.array([0]),
        np.array([1.0], dtype=np.float32),
        np.array([0.5]),
    )
    assert tokens.tolist() == [1]  # a vanishing temperature is greedy, not NaN
    penalized = apply_repetition_penalty(
        logits, np.ones_like(logits, dtype=bool), np.array([5e-324], dtype=np.float32)
    )
    assert np.all(np.isfinite(penalized))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]

"""The synthetic teacher: calibration to the paper's curve, LM-like shape, exact sampling, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from sparselabels.errors import InputError
from sparselabels.synthetic import (
    PAPER_DISTINCT_CURVE,
    TeacherModel,
    dense_probs,
    mean_distinct,
    sample_labels,
    sample_logits,
    split_sequences,
    topk_labels,
)


@pytest.mark.parametrize("rounds", sorted(PAPER_DISTINCT_CURVE))
def test_mean_distinct_ids_follow_the_paper_within_10_percent(rounds):
    _, _, indptr, _ = sample_labels(16, 2048, rounds, model=TeacherModel(seed=1))
    target = PAPER_DISTINCT_CURVE[rounds]
    assert abs(mean_distinct(indptr) / target - 1) < 0.10


def test_labels_are_valid_csr():
    ids, counts, indptr, lengths = sample_labels(5, 300, 50, model=TeacherModel(seed=3))
    assert ids.dtype == np.uint32 and counts.dtype == np.uint8 and indptr.dtype == np.int64
    assert indptr[0] == 0 and indptr[-1] == ids.size == counts.size and indptr.size == 1501
    assert lengths.tolist() == [300] * 5
    sums = np.add.reduceat(counts.astype(np.int64), indptr[:-1])
    assert np.all(sums == 50)
    assert np.all(ids < 128_256) and np.all(counts >= 1)
    within = np.ones(ids.size, bool)
    within[indptr[:-1]] = False  # first label of each position
    assert np.all(np.diff(ids.astype(np.int64))[within[1:]] > 0)
    parts = split_sequences(ids, counts, indptr, lengths)
    assert len(parts) == 5 and all(p[2][0] == 0 and p[2].size == 301 for p in parts)


def test_deterministic_and_position_addressed():
    a = sample_labels(6, 100, 50, model=TeacherModel(seed=9))
    b = sample_labels(6, 100, 50, model=TeacherModel(seed=9))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = sample_labels(6, 100, 50, model=TeacherModel(seed=10))
    assert not np.array_equal(a[0], c[0])
    # sequences 3..5 alone equal the tail of 0..5, also when generated in several blocks
    tail = sample_labels(3, 100, 50, model=TeacherModel(seed=9), first_sequence=3, block_positions=150)
    start = int(a[2][300])
    assert np.array_equal(tail[0], a[0][start:]) and np.array_equal(tail[1], a[1][start:])
    assert np.array_equal(tail[2], a[2][300:] - start)


def test_variable_lengths_and_tiny_vocabulary():
    model = TeacherModel(vocab_size=2, seed=4)
    ids, counts, indptr, lengths = sample_labels(3, [0, 5, 2], 13, model=model)
    assert lengths.tolist() == [0, 5, 2] and indptr.size == 8
    assert set(np.unique(ids).tolist()) <= {0, 1}
    assert np.all(np.add.reduceat(counts.astype(np.int64), indptr[:-1]) == 13)


def test_global_frequency_is_heavy_tailed_and_loosely_tied_to_id_order():
    ids, _, _, _ = sample_labels(8, 2048, 50, model=TeacherModel(seed=2))
    freq = np.bincount(ids, minlength=128_256)
    ordered = np.sort(freq)[::-1]
    share_top_1pct = ordered[: 1283].sum() / ordered.sum()
    assert share_top_1pct > 0.4  # heavy head
    assert (freq > 0).sum() > 30_000  # long tail: many distinct ids occur
    # loose relation to id order: frequent tokens sit at low ids on average, but with heavy scatter
    seen = np.flatnonzero(freq)
    rank_of = np.argsort(np.argsort(-freq[seen], kind="stable"))
    corr = np.corrcoef(seen, rank_of)[0, 1]
    assert 0.1 < corr < 0.8


def test_mix_of_near_deterministic_and_high_entropy_positions():
    _, _, indptr, _ = sample_labels(8, 2048, 50, model=TeacherModel(seed=6))
    per_position = np.diff(indptr)
    assert (per_position == 1).mean() > 0.05
    assert (per_position >= 20).mean() > 0.1
    probs = dense_probs(24, model=TeacherModel(seed=6))
    entropy = -(probs * np.log(probs)).sum(axis=1)
    assert entropy.min() < 0.2 and entropy.max() > 3.0
    assert 1.0 < entropy.mean() < 3.5  # nats, as for LM teachers on web text


def test_dense_distribution_is_normalised_and_matches_logits():
    model = TeacherModel(vocab_size=5000, seed=8)
    probs = dense_probs(20, model=model, sequence=3, start=10)
    assert probs.shape == (20, 5000)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-9) and np.all(probs > 0)
    logits = sample_logits(20, model=model, sequence=3, start=10)
    assert logits.dtype == np.float32
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    assert np.allclose(soft, probs, atol=1e-6)


def test_sampling_is_exact_draws_from_the_dense_distribution():
    """E[count_i / N] = p_i: averaged over many positions, the sampled mass on each position's top token and
    on its tail tokens matches the dense distribution within the Monte-Carlo error, and so does the mean
    number of distinct ids (sum over tokens of 1 - (1 - p_i)^N)."""
    model = TeacherModel(vocab_size=3000, seed=12)
    n_pos, rounds = 3000, 50
    ids, counts, indptr, _ = sample_labels(1, n_pos, rounds, model=model)
    probs = dense_probs(n_pos, model=model)
    top = probs.argmax(axis=1)
    tail = probs < 1e-3
    pos = np.repeat(np.arange(n_pos), np.diff(indptr))
    share = counts / rounds
    got_top = np.bincount(pos, weights=share * (ids == top[pos]), minlength=n_pos)
    got_tail = np.bincount(pos, weights=share * tail[pos, ids], minlength=n_pos)
    for got, expected in ((got_top, probs[np.arange(n_pos), top]), (got_tail, (probs * tail).sum(axis=1))):
        diff = got - expected
        assert abs(diff.mean()) < 5 * diff.std() / np.sqrt(n_pos) + 1e-12
    expected_distinct = (1 - (1 - probs) ** rounds).sum(axis=1)
    diff = np.diff(indptr) - expected_distinct
    assert abs(diff.mean()) < 5 * diff.std() / np.sqrt(n_pos)


def test_topk_labels_are_the_top_of_the_dense_distribution():
    model = TeacherModel(vocab_size=4000, seed=5)
    ids, probs, indptr = topk_labels(30, 8, model=model)
    assert ids.dtype == np.uint32 and probs.dtype == np.float16 and indptr.tolist() == list(range(0, 241, 8))
    dense = dense_probs(30, model=model)
    for p in range(30):
        row_ids = ids[indptr[p] : indptr[p + 1]]
        assert np.all(np.diff(row_ids.astype(np.int64)) > 0)
        assert set(row_ids.tolist()) == set(np.argsort(-dense[p], kind="stable")[:8].tolist())
        assert np.allclose(probs[indptr[p] : indptr[p + 1]], dense[p, row_ids], rtol=1e-3)


def test_bad_parameters_are_refused():
    with pytest.raises(InputError):
        TeacherModel(vocab_size=1)
    with pytest.raises(InputError):
        sample_labels(1, 10, 256)
    with pytest.raises(InputError):
        sample_labels(2, [1, 2, 3], 50)
    with pytest.raises(InputError):
        topk_labels(3, 0)


@pytest.mark.parametrize("kwargs", [dict(seq_len=3.7), dict(seq_len=3, rounds=5.5), dict(seq_len=[1.5, 2]),
                                    dict(seq_len=3, rounds=True)])
def test_non_integer_sizes_are_refused_not_truncated(kwargs):
    with pytest.raises(InputError, match=r"seq_len|rounds"):
        sample_labels(2, **kwargs)

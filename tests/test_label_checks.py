"""The flat count-label check agrees with the per-position kernel on every input, valid or broken.

``check_labels`` trusts ``_counts_hold`` to say "nothing wrong" and asks ``_check_csr`` for the first violation
otherwise, so the two must agree exactly: a case where the flat check passes labels that the per-position kernel
rejects would let a broken record through. Each case mutates a valid sequence in one way the rules forbid (or
in a way they allow) and compares the two verdicts, then the message ``check_labels`` gives.
"""

from __future__ import annotations

import numpy as np
import pytest

from sparselabels.format.checks import _check_csr, _counts_hold, check_labels

VOCAB, ROUNDS = 1000, 7


def valid_sequence(rng: np.random.Generator, num_pos: int, empty_share: float = 0.2):
    """Count labels keeping every rule: ascending ids per position, counts >= 1 summing to ROUNDS."""
    ids, counts, indptr = [], [], [0]
    for _ in range(num_pos):
        n = 0 if rng.random() < empty_share else int(rng.integers(1, ROUNDS + 1))
        ids.extend(np.sort(rng.choice(VOCAB, size=n, replace=False)).tolist())
        if n:
            cuts = np.sort(rng.choice(np.arange(1, ROUNDS), size=n - 1, replace=False))
            counts.extend(np.diff(np.concatenate([[0], cuts, [ROUNDS]])).tolist())
        indptr.append(len(ids))
    return np.array(ids, np.uint32), np.array(counts, np.uint8), np.array(indptr, np.int64)


def mutate(rng: np.random.Generator, ids: np.ndarray, counts: np.ndarray, indptr: np.ndarray, how: str):
    ids, counts, indptr = ids.copy(), counts.copy(), indptr.copy()
    L = ids.shape[0]
    k = int(rng.integers(0, L)) if L else 0
    p = int(rng.integers(0, indptr.shape[0] - 1)) if indptr.shape[0] > 1 else 0
    if how == "id_out_of_vocab" and L:
        ids[k] = VOCAB + int(rng.integers(0, 3))
    elif how == "id_repeated" and L > 1:
        ids[max(k, 1)] = ids[max(k, 1) - 1]
    elif how == "ids_swapped" and L > 1:  # within a position breaks the rules; across a boundary it may not
        k = max(k, 1)
        ids[k], ids[k - 1] = ids[k - 1], ids[k]
    elif how == "count_zero" and L:
        counts[k] = 0
    elif how == "count_over_rounds" and L:
        counts[k] = ROUNDS + 1
    elif how == "sums_compensate" and L > 1:  # one position one short, another one over: the total is unchanged
        j = (k + int(rng.integers(1, L))) % L
        if counts[k] > 1:
            counts[k] -= 1
            counts[j] += 1
    elif how == "indptr_decreases" and indptr.shape[0] > 2:
        indptr[max(p, 1)] = indptr[max(p, 1) - 1] - 1
    elif how == "indptr_start" and indptr.shape[0] > 1:
        indptr[0] = 1
    elif how == "indptr_end":
        indptr[-1] += 1
    elif how == "position_too_wide" and indptr.shape[0] > 2:  # merge two positions' labels into one
        indptr = np.delete(indptr, max(p, 1))
    return ids, counts, indptr


MUTATIONS = ("none", "id_out_of_vocab", "id_repeated", "ids_swapped", "count_zero", "count_over_rounds",
             "sums_compensate", "indptr_decreases", "indptr_start", "indptr_end", "position_too_wide")


def exact_ok(ids, counts, indptr) -> bool:
    return _check_csr(ids, counts, indptr, VOCAB, ROUNDS, False, ROUNDS)[0] == 0


@pytest.mark.parametrize("how", MUTATIONS)
def test_flat_check_agrees_with_per_position_kernel(how):
    rng = np.random.default_rng(sum(map(ord, how)))
    verdicts = set()
    for trial in range(150):
        seq = valid_sequence(rng, int(rng.integers(0, 12)), empty_share=(0.0, 0.3, 0.9)[trial % 3])
        ids, counts, indptr = mutate(rng, *seq, how)
        want = exact_ok(ids, counts, indptr)
        assert _counts_hold(ids, counts, indptr, VOCAB, ROUNDS, ROUNDS) == want, (how, ids, counts, indptr)
        problem = check_labels(ids, counts, indptr, vocab_size=VOCAB, value_kind="count", rounds=ROUNDS)
        assert (problem is None) == want
        verdicts.add(want)
    if how == "none":
        assert verdicts == {True}
    else:
        assert False in verdicts, f"mutation {how} never broke a rule: the test does not test it"


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_ids_beyond_int32_are_refused_by_both(dtype):
    ids = np.array([3, 5], dtype)
    ids[1] = -1 if dtype == np.int64 else np.iinfo(np.uint64).max
    counts, indptr = np.array([3, 4], np.uint8), np.array([0, 2], np.int64)
    assert not _counts_hold(ids, counts, indptr, VOCAB, ROUNDS, ROUNDS)
    problem = check_labels(ids, counts, indptr, vocab_size=VOCAB, value_kind="count", rounds=ROUNDS)
    assert problem is not None and problem.code == 4 and problem.label == 1


def test_first_violation_is_reported_when_the_flat_check_fails():
    """The message names the first problem in the order the per-position kernel checks, not the flat passes'."""
    ids = np.array([1, 2, 5, 4], np.uint32)  # position 1 descends; position 0 sums to 6
    counts = np.array([3, 3, 3, 4], np.uint8)
    indptr = np.array([0, 2, 4], np.int64)
    problem = check_labels(ids, counts, indptr, vocab_size=VOCAB, value_kind="count", rounds=ROUNDS)
    assert problem is not None
    assert problem.describe() == "position 0, field 'counts': counts sum to 6, expected rounds = 7"

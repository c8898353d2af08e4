"""Random valid sequences of labels for tests (small and obviously correct, not LM-like)."""

from __future__ import annotations

import numpy as np


def random_sequence(rng: np.random.Generator, num_positions: int, *, vocab_size: int = 1000, rounds: int = 50,
                    value_kind: str = "count", max_labels: int = 12, empty_prob: float = 0.1):
    """(ids uint32, values, indptr int64) of one sequence obeying every label rule."""
    ids, values, indptr = [np.zeros(0, np.uint32)], [np.zeros(0)], [0]
    cap = min(max_labels, vocab_size, rounds if value_kind == "count" else max_labels)
    for _ in range(num_positions):
        k = 0 if rng.random() < empty_prob else int(rng.integers(1, cap + 1))
        chosen = np.sort(rng.choice(vocab_size, size=k, replace=False)).astype(np.uint32)
        if value_kind == "count":
            v = np.ones(k, dtype=np.int64)
            if k:
                np.add.at(v, rng.integers(0, k, size=rounds - k), 1)
        else:
            v = np.maximum(rng.dirichlet(np.ones(k + 1))[:k], 1e-3) if k else np.zeros(0)
            v *= 0.99 / max(v.sum(), 0.99)  # keeps the sum below 1 after float16 rounding
        ids.append(chosen)
        values.append(v)
        indptr.append(indptr[-1] + k)
    dtype = np.uint8 if value_kind == "count" else np.float16
    return np.concatenate(ids), np.concatenate(values).astype(dtype), np.array(indptr, dtype=np.int64)


def random_sequences(seed: int, num_sequences: int, *, max_positions: int = 40, **kwargs):
    rng = np.random.default_rng(seed)
    return [random_sequence(rng, int(rng.integers(0, max_positions + 1)), **kwargs) for _ in range(num_sequences)]


def assert_same(sequence, expected) -> None:
    ids, values, indptr = expected
    assert np.array_equal(sequence.ids, ids)
    assert sequence.counts.dtype == values.dtype
    assert np.array_equal(sequence.counts, values)
    assert np.array_equal(sequence.indptr, indptr)

"""Synthetic LM-like teacher distributions and the RS-KD labels drawn from them.

Tests, benchmarks and the demo need teacher labels at scale without a teacher. This module defines a family
of next-token distributions that resembles a real LM teacher where it matters for storing and training on
sparse labels, and draws from it *exactly*:

* **Vocabulary** of ``vocab_size`` tokens (128,256, Llama 3's, by default).
* **Global frequency** is Zipf-Mandelbrot over frequency ranks, ``p(r) ∝ (r + offset)^-s``. Ranks map to ids
  only loosely, as in BPE vocabularies (merge order follows frequency, with much scatter): the id order is the
  order of ``log(r + 1) + id_scatter · N(0, 1)``. ``id_scatter=0`` gives ids in exact frequency order;
  a large value gives a random assignment.
* **Each position** has its own distribution over *candidate ranks* ``J = 1, 2, ...``: ``J = 1`` (the
  top-1 token) with probability ``p1``, else a discrete Pareto tail ``P(J ≥ 2 + m) = (1 + m/scale)^-a``.
  Positions are a mix of near-deterministic ones (``1 - p1`` log-uniform in ``[1e-3, 0.1]``) and open ones
  (``p1 = 0.02 + 0.96 · U^top1_power``, tail exponent ``a`` uniform in ``[tail_exponent_min, max]``). The
  candidate ``J`` of a position is a token drawn by a hash of ``(seed, sequence, position, J)`` from the
  global unigram or, with probability ``topic_rate``, from the sequence's *topic* (``topic_size``
  mid-frequency tokens drawn per sequence: documents reuse their own words, which correlates neighbouring
  positions the way real text does). Candidates beyond ``max_rank`` are replaced by the global unigram, so
  every token has a small non-zero probability, as under a real softmax.

The resulting distribution of a position is a finite mixture that can be written out densely
(:func:`dense_probs`, :func:`sample_logits`), and drawing N tokens with replacement from it is exact: draw
the candidate rank by inverse CDF, then map it to its token. With the default parameters the mean number of
distinct ids per position at N = 4, 13, 50, 150 is within a few percent of the curve read off the RS-KD paper
(2.4, 5.0, 12.1, 24.5); ``tests/test_synthetic.py`` checks 10%.

Everything is a pure function of ``(model, sequence index, position)``: generating sequences 100..199 alone
gives the same labels as generating 0..199 and keeping the second half.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numba as nb
import numpy as np

from sparselabels.errors import InputError, check_int
from sparselabels.io.sequence import split_csr
from sparselabels.options import check_rounds

PAPER_DISTINCT_CURVE = {4: 2.4, 13: 5.0, 50: 12.1, 150: 24.5}
"""Mean distinct ids per position against draws N, read off the RS-KD paper's plot (see shared notes)."""

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class TeacherModel:
    """Parameters of the synthetic teacher. The defaults are calibrated to the paper's distinct-ids curve."""

    vocab_size: int = 128_256
    seed: int = 0
    zipf_exponent: float = 1.0
    zipf_offset: float = 2.7
    id_scatter: float = 1.5
    deterministic_fraction: float = 0.2
    top1_power: float = 1.14
    tail_exponent_min: float = 0.2
    tail_exponent_max: float = 1.18
    tail_scale: float = 1.9
    topic_rate: float = 0.15
    topic_size: int = 256
    max_rank: int = 4096

    def __post_init__(self) -> None:
        if not 2 <= self.vocab_size <= 2**32 - 1:
            raise InputError(f"vocab_size must be in [2, 2^32-1], got {self.vocab_size}")
        if self.seed < 0 or self.seed >= 2**63:
            raise InputError(f"seed must be in [0, 2^63), got {self.seed}")
        if not 0.0 <= self.deterministic_fraction <= 1.0 or not 0.0 <= self.topic_rate <= 1.0:
            raise InputError("deterministic_fraction and topic_rate must lie in [0, 1]")
        if not 0 < self.tail_exponent_min <= self.tail_exponent_max or self.tail_scale <= 0:
            raise InputError("tail exponents must satisfy 0 < min <= max, and tail_scale > 0")
        if self.topic_size < 1 or self.max_rank < 2 or self.id_scatter < 0 or self.zipf_exponent <= 0:
            raise InputError("topic_size >= 1, max_rank >= 2, id_scatter >= 0 and zipf_exponent > 0 are required")

    @property
    def tables(self) -> _Tables:
        """The global tables (unigram CDF over ranks, rank → id), built once per parameter set."""
        return _build_tables(self.vocab_size, self.seed, self.zipf_exponent, self.zipf_offset, self.id_scatter)

    def scalar_params(self) -> np.ndarray:
        """The per-position parameters as one float64 vector, in the order the kernels expect."""
        return np.array(
            [
                self.deterministic_fraction,
                self.top1_power,
                self.tail_exponent_min,
                self.tail_exponent_max,
                self.tail_scale,
                self.topic_rate,
                float(self.topic_size),
                float(self.max_rank),
            ],
            dtype=np.float64,
        )


@dataclass(frozen=True)
class _Tables:
    unigram_cdf: np.ndarray  # float64[V], cumulative probability over frequency ranks (last entry 1.0)
    unigram_by_id: np.ndarray  # float64[V], p(token) under the global unigram
    rank_to_id: np.ndarray  # uint32[V]


@functools.lru_cache(maxsize=8)
def _build_tables(vocab_size: int, seed: int, exponent: float, offset: float, scatter: float) -> _Tables:
    ranks = np.arange(vocab_size, dtype=np.float64)
    weights = (ranks + 1.0 + offset) ** -exponent
    probs = weights / weights.sum()
    cdf = np.cumsum(probs)
    cdf /= cdf[-1]
    rng = np.random.default_rng([seed, 0x5EED])
    key = np.log1p(ranks) + scatter * rng.standard_normal(vocab_size)
    order = np.argsort(key, kind="stable")  # order[i] = the rank that receives id i
    rank_to_id = np.empty(vocab_size, dtype=np.uint32)
    rank_to_id[order] = np.arange(vocab_size, dtype=np.uint32)
    unigram_by_id = np.empty(vocab_size, dtype=np.float64)
    unigram_by_id[rank_to_id] = probs
    return _Tables(cdf, unigram_by_id, rank_to_id)


# ---------------------------------------------------------------------------------------------- kernels


@nb.njit(cache=True, inline="always")
def _mix(x):
    """splitmix64 finaliser: a bijective 64-bit hash."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@nb.njit(cache=True, inline="always")
def _key(seed, a, b, c):
    h = _mix(np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15))
    h = _mix(h ^ np.uint64(a))
    h = _mix(h ^ np.uint64(b))
    return _mix(h ^ np.uint64(c))


@nb.njit(cache=True, inline="always")
def _unit(h):
    """A uniform double in (0, 1) from the top 53 bits of ``h``."""
    return ((h >> np.uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)


@nb.njit(cache=True)
def _unigram_token(u, cdf, rank_to_id):
    rank = np.searchsorted(cdf, u, side="right")
    if rank >= cdf.shape[0]:
        rank = cdf.shape[0] - 1
    return rank_to_id[rank]


@nb.njit(cache=True)
def _topic_token(seed, sequence, member, topic_size, cdf, rank_to_id):
    """Member ``member`` of the sequence's topic: a rank log-uniform over the mid/rare part of the vocabulary."""
    vocab = cdf.shape[0]
    lo = min(50.0, vocab / 4.0)
    u = _unit(_key(seed, 0x70F1C, sequence, member % topic_size))
    rank = int(np.exp(np.log(lo) + u * (np.log(float(vocab)) - np.log(lo)))) - 1
    rank = min(max(rank, 0), vocab - 1)
    return rank_to_id[rank]


@nb.njit(cache=True)
def _position_params(seed, sequence, position, params):
    """(p1, a): top-1 probability and tail exponent of one position."""
    h = _key(seed, 0xA11, sequence, position)
    u0 = _unit(h)
    u1 = _unit(_mix(h + np.uint64(1)))
    u2 = _unit(_mix(h + np.uint64(2)))
    near_deterministic = u0 < params[0]
    p1 = 1.0 - 10.0 ** (-1.0 - 2.0 * u1) if near_deterministic else 0.02 + 0.96 * u1 ** params[1]
    a = params[2] + (params[3] - params[2]) * u2
    return p1, a


@nb.njit(cache=True)
def _candidate(seed, sequence, position, rank, params, cdf, rank_to_id):
    """The token at candidate rank ``rank`` (1-based, <= max_rank) of a position."""
    h = _key(seed, sequence, position, np.uint64(rank) | np.uint64(1 << 40))
    if _unit(h) < params[5]:
        member = _mix(h + np.uint64(7)) % np.uint64(int(params[6]))
        return _topic_token(seed, sequence, member, int(params[6]), cdf, rank_to_id)
    return _unigram_token(_unit(_mix(h + np.uint64(3))), cdf, rank_to_id)


@nb.njit(cache=True, inline="always")
def _tail_survival(m, a, scale):
    """P(J >= 2 + m | J >= 2)."""
    return (1.0 + m / scale) ** (-a)


@nb.njit(cache=True)
def _sample_block(seed, first_sequence, lengths, rounds, params, cdf, rank_to_id):
    """Draw ``rounds`` tokens with replacement at every position; return CSR (ids, counts, labels per position)."""
    total = 0
    for s in range(lengths.shape[0]):
        total += lengths[s]
    max_rank = int(params[7])
    scale = params[4]
    ids = np.empty(total * rounds, dtype=np.uint32)
    counts = np.empty(total * rounds, dtype=np.uint8)
    per_position = np.empty(total, dtype=np.int64)
    draws = np.empty(rounds, dtype=np.int64)
    tokens = np.empty(rounds, dtype=np.int64)
    out = 0
    p = 0
    for s in range(lengths.shape[0]):
        sequence = first_sequence + s
        for t in range(lengths[s]):
            p1, a = _position_params(seed, sequence, t, params)
            state = _key(seed, 0xD4A3, sequence, t)
            for r in range(rounds):
                state = _mix(state + np.uint64(0x9E3779B97F4A7C15))
                u = _unit(state)
                if u < p1:
                    draws[r] = 1
                else:
                    v = (u - p1) / (1.0 - p1)  # uniform in (0, 1) given J >= 2
                    m = scale * (v ** (-1.0 / a) - 1.0)
                    draws[r] = 2 + int(m) if m < max_rank else max_rank + 1
            draws.sort()
            # map each distinct candidate rank once; ranks past max_rank are independent unigram draws
            n = 0
            r = 0
            while r < rounds:
                j = draws[r]
                if j > max_rank:
                    state = _mix(state + np.uint64(0x9E3779B97F4A7C15))
                    tokens[n] = _unigram_token(_unit(state), cdf, rank_to_id)
                    n += 1
                    r += 1
                    continue
                tok = _candidate(seed, sequence, t, j, params, cdf, rank_to_id)
                while r < rounds and draws[r] == j:
                    tokens[n] = tok
                    n += 1
                    r += 1
            tokens.sort()
            start = out
            r = 0
            while r < rounds:
                tok = tokens[r]
                c = 0
                while r < rounds and tokens[r] == tok:
                    c += 1
                    r += 1
                ids[out] = tok
                counts[out] = c
                out += 1
            per_position[p] = out - start
            p += 1
    return ids[:out].copy(), counts[:out].copy(), per_position


@nb.njit(cache=True)
def _dense_block(seed, sequence, start, count, params, cdf, unigram_by_id, rank_to_id):
    """The exact distributions of positions ``start .. start+count-1`` of a sequence, as float64[count, V]."""
    vocab = cdf.shape[0]
    max_rank = int(params[7])
    scale = params[4]
    out = np.empty((count, vocab), dtype=np.float64)
    for i in range(count):
        t = start + i
        p1, a = _position_params(seed, sequence, t, params)
        rest = 1.0 - p1
        tail = rest * _tail_survival(max_rank - 1.0, a, scale)
        for v in range(vocab):
            out[i, v] = tail * unigram_by_id[v]
        out[i, _candidate(seed, sequence, t, 1, params, cdf, rank_to_id)] += p1
        for j in range(2, max_rank + 1):
            m = j - 2.0
            pj = rest * (_tail_survival(m, a, scale) - _tail_survival(m + 1.0, a, scale))
            out[i, _candidate(seed, sequence, t, j, params, cdf, rank_to_id)] += pj
    return out


# ---------------------------------------------------------------------------------------------- public API


def _lengths(num_sequences: int, seq_len: int | Sequence[int]) -> np.ndarray:
    num_sequences = check_int("num_sequences", num_sequences, 0)
    if np.ndim(seq_len) == 0:
        return np.full(num_sequences, check_int("seq_len", seq_len, 0), dtype=np.int64)
    lengths = np.asarray(seq_len)
    if lengths.size and lengths.dtype.kind not in "iu":
        raise InputError(f"seq_len must be an int or {num_sequences} non-negative integer lengths, got {lengths.dtype}")
    lengths = lengths.astype(np.int64)
    if lengths.ndim != 1 or lengths.shape[0] != num_sequences or (lengths < 0).any():
        raise InputError(f"seq_len must be an int or {num_sequences} non-negative lengths")
    return lengths


def sample_labels(
    num_sequences: int,
    seq_len: int | Sequence[int],
    rounds: int = 50,
    *,
    model: TeacherModel | None = None,
    first_sequence: int = 0,
    block_positions: int = 1 << 18,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """RS-KD labels: ``rounds`` draws with replacement at every position, kept as distinct ids with counts.

    Returns CSR arrays over all positions of all sequences: ``ids`` uint32[M] (ascending within a position),
    ``counts`` uint8[M] (each position's counts sum to ``rounds``), ``indptr`` int64[P+1], and
    ``seq_lengths`` int64[num_sequences]. Sequence k covers positions ``sum(seq_lengths[:k])`` onward;
    :func:`split_sequences` cuts the arrays into per-sequence CSR triples for ``LabelWriter.write``.
    Sequence indices start at ``first_sequence`` (labels depend only on the model, sequence and position).
    """
    model = model or TeacherModel()
    check_rounds(rounds)
    lengths = _lengths(num_sequences, seq_len)
    tables = model.tables
    params = model.scalar_params()
    ids_parts, counts_parts, lpp_parts = [], [], []
    s = 0
    while s < num_sequences:
        e, acc = s, 0
        while e < num_sequences and (e == s or acc + lengths[e] <= block_positions):
            acc += lengths[e]
            e += 1
        ids, counts, lpp = _sample_block(
            model.seed, first_sequence + s, lengths[s:e], rounds, params, tables.unigram_cdf, tables.rank_to_id
        )
        ids_parts.append(ids)
        counts_parts.append(counts)
        lpp_parts.append(lpp)
        s = e
    if not ids_parts:
        return np.empty(0, np.uint32), np.empty(0, np.uint8), np.zeros(1, np.int64), lengths
    lpp = np.concatenate(lpp_parts)
    indptr = np.zeros(lpp.shape[0] + 1, dtype=np.int64)
    np.cumsum(lpp, out=indptr[1:])
    return np.concatenate(ids_parts), np.concatenate(counts_parts), indptr, lengths


def split_sequences(
    ids: np.ndarray, values: np.ndarray, indptr: np.ndarray, seq_lengths: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Cut concatenated CSR arrays into one ``(ids, values, indptr)`` triple per sequence (views where possible)."""
    return split_csr((ids, values, indptr), np.asarray(seq_lengths, dtype=np.int64).tolist())


def dense_probs(
    num_positions: int, *, model: TeacherModel | None = None, sequence: int = 0, start: int = 0
) -> np.ndarray:
    """The exact teacher distributions of positions ``start ..`` of ``sequence``: float64[num_positions, V].

    Dense, so for small sizes only (tests of samplers and losses). Rows sum to 1 up to rounding.
    """
    model = model or TeacherModel()
    if num_positions < 0 or start < 0 or sequence < 0:
        raise InputError("num_positions, start and sequence must be >= 0")
    if num_positions * model.vocab_size > 1 << 31:
        raise InputError(f"{num_positions} dense rows of {model.vocab_size} is too large for dense_probs")
    t = model.tables
    return _dense_block(
        model.seed, sequence, start, num_positions, model.scalar_params(), t.unigram_cdf, t.unigram_by_id,
        t.rank_to_id,
    )


def sample_logits(
    num_rows: int,
    *,
    model: TeacherModel | None = None,
    sequence: int = 0,
    start: int = 0,
    dtype: np.dtype | str = np.float32,
) -> np.ndarray:
    """Dense teacher logits ``log p`` (natural log) for ``num_rows`` positions: softmax of a row is exactly the
    distribution :func:`sample_labels` draws from at that position. numpy array of ``dtype``[num_rows, V]."""
    probs = dense_probs(num_rows, model=model, sequence=sequence, start=start)
    return np.log(probs).astype(dtype)


def topk_labels(
    num_positions: int, k: int, *, model: TeacherModel | None = None, sequence: int = 0, start: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` labels of the same distributions, for ``value_kind="prob"``: ``(ids uint32, probs float16,
    indptr int64)``, ids ascending within a position. Exact top-k of :func:`dense_probs` (ties by lower id).

    Raises InputError if a kept probability rounds to zero in float16 (choose a smaller ``k``)."""
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    model = model or TeacherModel()
    k = min(k, model.vocab_size)
    ids_out, probs_out = [], []
    block = max(1, (1 << 24) // model.vocab_size)
    for lo in range(0, num_positions, block):
        rows = dense_probs(min(block, num_positions - lo), model=model, sequence=sequence, start=start + lo)
        order = np.argsort(-rows, axis=1, kind="stable")[:, :k]
        top_ids = np.sort(order, axis=1)
        top_p = np.take_along_axis(rows, top_ids, axis=1)
        ids_out.append(top_ids.astype(np.uint32))
        probs_out.append(top_p)
    ids = np.concatenate(ids_out).reshape(-1) if ids_out else np.empty(0, np.uint32)
    probs64 = np.concatenate(probs_out).reshape(-1) if probs_out else np.empty(0)
    probs = probs64.astype(np.float16)
    if (probs == 0).any():
        raise InputError(f"top-{k} probabilities below float16 range; choose a smaller k")
    indptr = np.arange(num_positions + 1, dtype=np.int64) * k
    return ids, probs, indptr


def mean_distinct(indptr: np.ndarray) -> float:
    """Mean number of labels (distinct ids) per position of CSR labels."""
    n = indptr.shape[0] - 1
    return float(indptr[-1] - indptr[0]) / n if n else 0.0

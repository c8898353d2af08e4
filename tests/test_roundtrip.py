"""Round trips through every codec, value kind and access mode, including property tests (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from labelgen import assert_same, random_sequence, random_sequences

import sparselabels as sl
from sparselabels.codecs import available

CODECS = available()


def write(path, sequences, *, codec="raw", value_kind="count", vocab_size=1000, rounds=50, fingerprints=None,
          **kwargs):
    with sl.LabelWriter(path, vocab_size=vocab_size, rounds=rounds if value_kind == "count" else None,
                        value_kind=value_kind, codec=codec, **kwargs) as w:
        for i, (ids, values, indptr) in enumerate(sequences):
            w.write(ids, values, indptr, fingerprint=None if fingerprints is None else fingerprints[i])
    return path


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("value_kind", ["count", "prob"])
@pytest.mark.parametrize("mmap", [True, False])
def test_roundtrip_many_chunks(tmp_path, codec, value_kind, mmap):
    seqs = random_sequences(1, 60, value_kind=value_kind)
    fps = [int(x) for x in np.random.default_rng(2).integers(0, 2**63, size=60)]
    path = write(tmp_path / "a.slbl", seqs, codec=codec, value_kind=value_kind, fingerprints=fps, chunk_bytes=2000)
    with sl.open_labels(path, mmap=mmap) as f:
        assert f.num_chunks > 5
        assert len(f) == 60
        assert f.num_positions == sum(len(s[2]) - 1 for s in seqs)
        assert f.num_labels == sum(len(s[0]) for s in seqs)
        assert np.array_equal(f.sequence_lengths, [len(s[2]) - 1 for s in seqs])
        assert f.fingerprints.tolist() == fps
        for i in np.random.default_rng(3).permutation(60):
            s = f[int(i)]
            assert_same(s, seqs[i])
            assert s.fingerprint == fps[i] and s.index == i
        assert_same(f[-1], seqs[-1])
        with pytest.raises(IndexError):
            f[60]
    assert sl.validate(path).ok


def test_raw_reads_are_zero_copy_views(tmp_path):
    path = write(tmp_path / "a.slbl", random_sequences(4, 3))
    with sl.LabelFile(path) as f:
        s = f[1]
        assert not s.ids.flags.owndata and not s.ids.flags.writeable
        assert s.ids.dtype == np.dtype("<u4") and s.counts.dtype == np.uint8


def test_empty_file_and_empty_sequences(tmp_path):
    path = write(tmp_path / "empty.slbl", [])
    with sl.open_labels(path) as f:
        assert len(f) == 0 and f.num_positions == 0 and f.num_chunks == 0
    path = write(tmp_path / "zeros.slbl", [(np.zeros(0, np.uint32), np.zeros(0, np.uint8), np.zeros(1, np.int64))] * 3)
    with sl.open_labels(path) as f:
        assert len(f) == 3 and f[2].num_positions == 0


def test_positions_across_sequence_boundaries(tmp_path):
    seqs = random_sequences(5, 12, max_positions=9)
    path = write(tmp_path / "a.slbl", seqs, chunk_bytes=300)
    all_lpp = np.concatenate([np.diff(s[2]) for s in seqs])
    all_ids = np.concatenate([s[0] for s in seqs])
    all_counts = np.concatenate([s[1] for s in seqs])
    starts = np.concatenate([[0], np.cumsum(all_lpp)])
    with sl.open_labels(path) as f:
        total = f.num_positions
        rng = np.random.default_rng(0)
        for _ in range(50):
            a = int(rng.integers(0, total + 1))
            b = int(rng.integers(a, total + 1))
            block = f.positions(a, b)
            assert block.num_positions == b - a
            assert np.array_equal(block.ids, all_ids[starts[a] : starts[b]])
            assert np.array_equal(block.counts, all_counts[starts[a] : starts[b]])
            assert np.array_equal(block.indptr, starts[a : b + 1] - starts[a])
        with pytest.raises(IndexError):
            f.positions(0, total + 1)


@st.composite
def label_files(draw):
    value_kind = draw(st.sampled_from(["count", "prob"]))
    vocab_size = draw(st.sampled_from([1, 2, 300, 128256, 2**32]))
    rounds = draw(st.integers(1, 255)) if value_kind == "count" else 0
    seed = draw(st.integers(0, 2**32 - 1))
    num = draw(st.integers(0, 12))
    lengths = draw(st.lists(st.integers(0, 30), min_size=num, max_size=num))
    max_labels = draw(st.integers(1, 255 if value_kind == "count" else 300))
    empty_prob = draw(st.sampled_from([0.0, 0.2, 1.0]))
    chunk_bytes = draw(st.sampled_from([1, 500, 1 << 20]))
    codec = draw(st.sampled_from(CODECS))
    fingerprints = draw(st.booleans())
    return value_kind, vocab_size, rounds, seed, lengths, max_labels, empty_prob, chunk_bytes, codec, fingerprints


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(label_files())
def test_roundtrip_property(tmp_path_factory, case):
    value_kind, vocab_size, rounds, seed, lengths, max_labels, empty_prob, chunk_bytes, codec, with_fp = case
    rng = np.random.default_rng(seed)
    kwargs = {"vocab_size": vocab_size, "value_kind": value_kind, "max_labels": max_labels, "empty_prob": empty_prob}
    if value_kind == "count":
        kwargs["rounds"] = rounds
    seqs = [random_sequence(rng, n, **kwargs) for n in lengths]
    if vocab_size == 2**32:  # the top of the id range, as last label and as only label of positions
        seqs = [_with_top_ids(rng, s) for s in seqs]
        beyond = [codec == "rans" and _first_id_is_top(s) for s in seqs]
        for s in (s for s, b in zip(seqs, beyond, strict=True) if b):
            with sl.LabelWriter(tmp_path_factory.mktemp("top") / "t.slbl", vocab_size=vocab_size, codec=codec,
                                value_kind=value_kind, rounds=rounds or None) as w, \
                    pytest.raises(sl.InputError, match="beyond codec 'rans'"):
                w.write(*s)
        seqs = [s for s, b in zip(seqs, beyond, strict=True) if not b]
    fps = [int(x) for x in rng.integers(0, 2**63, size=len(seqs))] if with_fp else None
    path = tmp_path_factory.mktemp("prop") / "p.slbl"
    write(path, seqs, codec=codec, value_kind=value_kind, vocab_size=vocab_size, rounds=rounds or None,
          fingerprints=fps, chunk_bytes=chunk_bytes)
    for mmap in (True, False):
        with sl.open_labels(path, mmap=mmap, verify="full") as f:
            assert len(f) == len(seqs)
            for i, expected in enumerate(seqs):
                assert_same(f[i], expected)
                assert f[i].fingerprint == (fps[i] if fps else None)


def _with_top_ids(rng, seq):
    """``seq`` with the last id of about a third of its non-empty positions set to 2**32 - 1."""
    ids, values, indptr = seq
    ids = ids.copy()
    for p in range(len(indptr) - 1):
        if indptr[p + 1] > indptr[p] and rng.random() < 0.35:
            ids[indptr[p + 1] - 1] = 2**32 - 1
    return ids, values, indptr


def _first_id_is_top(seq) -> bool:
    ids, _, indptr = seq
    return bool(np.any(ids[indptr[:-1][np.diff(indptr) > 0]].astype(np.int64) == 2**32 - 1))

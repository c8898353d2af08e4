"""Labels.positions(start, stop): global position ranges across sequence (and shard) boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from labelgen import random_sequences

import sparselabels as sl
from sparselabels.codecs import available


def write(path, seqs, *, codec="raw", value_kind="count"):
    with sl.LabelWriter(path, vocab_size=1000, rounds=50 if value_kind == "count" else None, value_kind=value_kind,
                        codec=codec, chunk_bytes=500) as w:
        for ids, values, indptr in seqs:
            w.write(ids, values, indptr)
    return path


def concatenated(seqs):
    lpp = np.concatenate([np.diff(s[2]) for s in seqs]) if seqs else np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.cumsum(lpp)]).astype(np.int64)
    return np.concatenate([s[0] for s in seqs]), np.concatenate([s[1] for s in seqs]), starts


def check_ranges(labels, seqs, ranges):
    all_ids, all_values, starts = concatenated(seqs)
    for a, b in ranges:
        block = labels.positions(a, b)
        assert block.num_positions == b - a
        assert block.indptr.dtype == np.int64 and block.indptr[0] == 0
        assert block.ids.dtype == np.uint32 and block.counts.dtype == all_values.dtype
        assert np.array_equal(block.ids, all_ids[starts[a] : starts[b]])
        assert np.array_equal(block.counts, all_values[starts[a] : starts[b]])
        assert np.array_equal(block.indptr, starts[a : b + 1] - starts[a])


def every_boundary_range(seqs, total):
    bounds = np.cumsum([0] + [len(s[2]) - 1 for s in seqs]).tolist()
    out = [(0, total), (0, 0), (total, total)]
    for x in bounds:
        for dx in (-1, 0, 1):
            a = min(max(x + dx, 0), total)
            for length in (0, 1, 2, 5, 13):
                out.append((a, min(a + length, total)))
    return out


@pytest.mark.parametrize("codec", available())
@pytest.mark.parametrize("value_kind", ["count", "prob"])
@pytest.mark.parametrize("mmap", [True, False])
def test_positions_in_a_file(tmp_path, codec, value_kind, mmap):
    seqs = random_sequences(3, 25, value_kind=value_kind, max_positions=7, empty_prob=0.3)
    seqs[4] = (np.zeros(0, np.uint32), seqs[4][1][:0], np.zeros(1, np.int64))  # empty sequences in the middle
    seqs[5] = seqs[4]
    path = write(tmp_path / "a.slbl", seqs, codec=codec, value_kind=value_kind)
    with sl.open_labels(path, mmap=mmap) as f:
        total = f.num_positions
        rng = np.random.default_rng(1)
        random = [tuple(sorted(rng.integers(0, total + 1, size=2).tolist())) for _ in range(60)]
        check_ranges(f, seqs, every_boundary_range(seqs, total) + random)


@pytest.mark.parametrize("codec", available())
def test_positions_across_shards(tmp_path, codec):
    seqs = random_sequences(4, 30, max_positions=6, empty_prob=0.2)
    seqs[0] = (np.zeros(0, np.uint32), np.zeros(0, np.uint8), np.zeros(1, np.int64))
    bounds = [0, 8, 8, 9, 21, 30]  # an empty shard and a one-sequence shard
    for k in range(len(bounds) - 1):
        write(tmp_path / f"s{k}.slbl", seqs[bounds[k] : bounds[k + 1]], codec=codec)
    shards = sorted(tmp_path.glob("*.slbl"))
    sl.write_manifest(tmp_path / "manifest.json", shards)
    for source in (tmp_path / "manifest.json", tmp_path):
        with sl.open_labels(source) as labels:
            total = labels.num_positions
            assert total == sum(len(s[2]) - 1 for s in seqs)
            rng = np.random.default_rng(2)
            random = [tuple(sorted(rng.integers(0, total + 1, size=2).tolist())) for _ in range(60)]
            check_ranges(labels, seqs, every_boundary_range(seqs, total) + random)


def test_positions_bounds(tmp_path):
    seqs = random_sequences(5, 4, max_positions=5)
    with sl.open_labels(write(tmp_path / "a.slbl", seqs)) as f:
        total = f.num_positions
        for a, b in ((-1, 2), (3, 2), (0, total + 1), (total + 1, total + 1)):
            with pytest.raises(IndexError):
                f.positions(a, b)
        with pytest.raises(TypeError):
            f.positions(0.5, 2)
    empty = write(tmp_path / "e.slbl", [])
    with sl.open_labels(empty) as f:
        block = f.positions(0, 0)
        assert block.num_positions == 0 and block.indptr.tolist() == [0]


def test_positions_feed_collate_as_fixed_windows(tmp_path):
    """Packing: cut the global stream into windows of W positions and pad them like sequences."""
    seqs = random_sequences(6, 20, max_positions=9)
    path = write(tmp_path / "a.slbl", seqs)
    window = 16
    with sl.open_labels(path) as f:
        blocks = [f.positions(a, min(a + window, f.num_positions)) for a in range(0, f.num_positions, window)]
        out = sl.data.collate(blocks, vocab_size=f.vocab_size, rounds=f.rounds)
        ref = sl.data.collate_reference(blocks, vocab_size=f.vocab_size, rounds=f.rounds)
        for key, value in ref.items():
            assert np.array_equal(out[key].numpy(), value), key
        assert out["attention_mask"].sum().item() == f.num_positions

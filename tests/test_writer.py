"""LabelWriter: input checks that name sequence/position/field, atomic finalisation, flush, resume, locking."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from labelgen import assert_same, random_sequences

import sparselabels as sl
from sparselabels.errors import CompatibilityError, InputError, SparseLabelsError
from sparselabels.io.writer import partial_path

GOOD = (np.array([3, 7], np.uint32), np.array([20, 30], np.uint8), np.array([0, 2, 2]))


def writer(path, **kwargs):
    kwargs = {"vocab_size": 100, "rounds": 50, **kwargs}
    return sl.LabelWriter(path, **kwargs)


@pytest.mark.parametrize(
    ("ids", "counts", "indptr", "message"),
    [
        ([3, 100], [20, 30], [0, 2], r"sequence 1, position 0, label 1, field 'ids': id 100 is outside the vocabulary"),
        ([-1, 3], [20, 30], [0, 2], r"position 0, label 0, field 'ids': id -1 is outside"),
        ([7, 3], [20, 30], [0, 2], r"position 0, label 1, field 'ids': ids are not strictly ascending"),
        ([3, 3], [20, 30], [0, 2], r"field 'ids': ids are not strictly ascending"),
        ([3, 7], [20, 31], [0, 2], r"position 0, field 'counts': counts sum to 51, expected rounds = 50"),
        ([3, 7], [0, 50], [0, 2], r"label 0, field 'counts': count is 0"),
        ([3, 7], [306, -256], [0, 2], r"field 'counts': count 306 is larger than rounds = 50"),
        ([3, 7], [20, 30], [1, 2], r"field 'indptr': indptr\[0\] is 1"),
        ([3, 7], [20, 30], [0, 2, 1], r"position 1, field 'indptr': indptr decreases"),
        ([3, 7], [20, 30], [0, 1], r"field 'indptr': indptr\[-1\] is 1, but there are 2 labels"),
        ([3, 7], [20, 30], [0, 3], r"position 0, field 'indptr': indptr\[-1\] is 3, but there are 2 labels"),
        ([3, 7], [20], [0, 2], r"counts has 1 entries but ids has 2"),
        ([3.0, 7.0], [20, 30], [0, 2], r"ids must be integers"),
        ([3, 7], [20.0, 30.0], [0, 2], r"counts must be integers"),
        ([3, 7], [20, 30], [], r"indptr must be a non-empty integer array"),
    ],
)
def test_bad_sequence_is_rejected_and_nothing_is_harmed(tmp_path, ids, counts, indptr, message):
    path = tmp_path / "a.slbl"
    with writer(path) as w:
        w.write(*GOOD)
        with pytest.raises(InputError, match=message):
            w.write(np.array(ids), np.array(counts), np.array(indptr))
        assert w.num_sequences == 1
        w.write(*GOOD)
    with sl.open_labels(path) as f:
        assert len(f) == 2
        assert_same(f[0], GOOD) and assert_same(f[1], GOOD)


def test_prob_values_are_checked_after_float16_rounding(tmp_path):
    with writer(tmp_path / "p.slbl", value_kind="prob", rounds=None) as w:
        w.write([1, 2], np.array([0.5, 0.25], np.float32), [0, 2])
        with pytest.raises(InputError, match=r"field 'counts': probability 0.0 is not in \(0, 1\]"):
            w.write([1, 2], np.array([0.5, 1e-9]), [0, 2])
        with pytest.raises(InputError, match=r"probability nan"):
            w.write([1], np.array([np.nan]), [0, 1])
        with pytest.raises(InputError, match=r"probabilities sum to 1.5"):
            w.write([1, 2], np.array([0.75, 0.75]), [0, 2])
        with pytest.raises(InputError, match=r"probabilities must be floating point"):
            w.write([1, 2], np.array([1, 0]), [0, 2])


def test_accepts_torch_tensors_and_wide_dtypes(tmp_path):
    path = tmp_path / "t.slbl"
    with writer(path) as w:
        w.write(torch.tensor([3, 7], dtype=torch.int32), torch.tensor([20, 30], dtype=torch.uint8),
                torch.tensor([0, 2, 2]))
        w.write(np.array([3, 7], np.int64), np.array([20, 30], np.int64), np.array([0, 2, 2], np.uint64))
    with sl.open_labels(path) as f:
        assert_same(f[0], GOOD) and assert_same(f[1], GOOD)


def test_settings_are_checked(tmp_path):
    with pytest.raises(InputError, match="rounds"):
        sl.LabelWriter(tmp_path / "a.slbl", vocab_size=10)
    with pytest.raises(InputError, match="rounds 256"):
        sl.LabelWriter(tmp_path / "a.slbl", vocab_size=10, rounds=256)
    with pytest.raises(InputError, match="value_kind"):
        sl.LabelWriter(tmp_path / "a.slbl", vocab_size=10, rounds=5, value_kind="logit")
    with pytest.raises(InputError, match="vocab_size"):
        sl.LabelWriter(tmp_path / "a.slbl", vocab_size=2**32 + 1, rounds=5)
    with pytest.raises(InputError, match="codec 'zip'"):
        sl.LabelWriter(tmp_path / "a.slbl", vocab_size=10, rounds=5, codec="zip")
    with pytest.raises(InputError, match="set by the library"):
        sl.LabelWriter(tmp_path / "a.slbl", vocab_size=10, rounds=5, metadata={"vocab_size": 3})
    with pytest.raises(InputError, match="temperature"):
        sl.LabelWriter(tmp_path / "a.slbl", vocab_size=10, rounds=5, metadata={"temperature": -1.0})
    with pytest.raises(InputError, match="value of type object is not allowed"):
        sl.LabelWriter(tmp_path / "a.slbl", vocab_size=10, rounds=5, metadata={"x": object()})


def test_a_url_is_refused_not_written_as_a_local_path(tmp_path, monkeypatch):
    """LabelWriter("s3://bucket/x.slbl") made a local folder "s3:" and wrote there without a word; it writes
    local files only (generate and merge(copy=True) write to URLs), and so does convert, which writes through it."""
    from sparselabels.pipeline.convert import convert

    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "logits.npy", np.zeros((2, 3, 10), dtype=np.float32))
    with pytest.raises(InputError, match="URL"):
        sl.LabelWriter("s3://bucket/x.slbl", vocab_size=10, rounds=5)
    with pytest.raises(InputError, match="URL"):
        convert(tmp_path / "logits.npy", "gs://bucket/x.slbl", rounds=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logits.npy"]


def test_final_path_appears_only_at_close(tmp_path):
    path = tmp_path / "a.slbl"
    w = writer(path, chunk_bytes=1)
    for s in random_sequences(0, 5, vocab_size=100):
        w.write(*s)
    w.flush()
    assert not path.exists() and partial_path(path).exists()
    with pytest.raises(SparseLabelsError, match=r"incomplete|footer"):
        sl.LabelFile(partial_path(path))
    w.close()
    assert path.exists() and not partial_path(path).exists()
    w.close()  # idempotent
    with pytest.raises(SparseLabelsError, match="closed"):
        w.write(*GOOD)


def test_error_in_with_block_keeps_partial_for_resume(tmp_path):
    path = tmp_path / "a.slbl"
    seqs = random_sequences(1, 8, vocab_size=100)
    with pytest.raises(RuntimeError), writer(path) as w:
        for s in seqs[:5]:
            w.write(*s)
        raise RuntimeError("boom")
    assert not path.exists()
    with writer(path, resume=True) as w:
        assert w.num_sequences == 5
        for s in seqs[5:]:
            w.write(*s)
    with sl.open_labels(path) as f:
        for i, s in enumerate(seqs):
            assert_same(f[i], s)


def test_resume_after_abandoned_writer_keeps_flushed_and_drops_unflushed(tmp_path):
    path = tmp_path / "a.slbl"
    seqs = random_sequences(2, 10, vocab_size=100)
    w = writer(path)
    for s in seqs[:4]:
        w.write(*s)
    w.flush()
    for s in seqs[4:6]:
        w.write(*s)  # buffered, never flushed
    w._release()  # the process "dies": no flush, no close
    with writer(path, resume=True) as w2:
        assert w2.num_sequences == 4
        for s in seqs[4:]:
            w2.write(*s)
    with sl.open_labels(path) as f:
        assert len(f) == 10
        for i, s in enumerate(seqs):
            assert_same(f[i], s)


def test_resume_cuts_a_torn_chunk(tmp_path):
    path = tmp_path / "a.slbl"
    seqs = random_sequences(3, 6, vocab_size=100)
    w = writer(path, chunk_bytes=1)
    for s in seqs:
        w.write(*s)
    w._release()
    size = os.path.getsize(partial_path(path))
    os.truncate(partial_path(path), size - 5)  # the last chunk was torn
    with writer(path, resume=True, chunk_bytes=1) as w2:
        assert w2.num_sequences == 5
        w2.write(*seqs[5])
    with sl.open_labels(path, verify="full") as f:
        for i, s in enumerate(seqs):
            assert_same(f[i], s)


def test_resume_refuses_other_settings(tmp_path):
    path = tmp_path / "a.slbl"
    w = writer(path, metadata={"teacher": "a"})
    w.write(*GOOD)
    w.flush()
    w._release()
    with pytest.raises(CompatibilityError, match="teacher is 'a' in the partial file but 'b' was requested"):
        writer(path, resume=True, metadata={"teacher": "b"})
    with pytest.raises(CompatibilityError, match="rounds"):
        writer(path, resume=True, rounds=49, metadata={"teacher": "a"})


def test_existing_files_are_not_clobbered(tmp_path):
    path = tmp_path / "a.slbl"
    with writer(path) as w:
        w.write(*GOOD)
    with pytest.raises(SparseLabelsError, match="exists; pass overwrite=True"):
        writer(path)
    with pytest.raises(SparseLabelsError, match="already complete"):
        writer(path, resume=True)
    w = writer(tmp_path / "b.slbl")
    w.write(*GOOD)
    w.flush()
    w._release()
    with pytest.raises(SparseLabelsError, match="unfinished file; pass resume=True"):
        writer(tmp_path / "b.slbl")
    with writer(path, overwrite=True) as w:
        pass
    with sl.open_labels(path) as f:
        assert len(f) == 0


def test_two_writers_cannot_share_a_path(tmp_path):
    path = tmp_path / "a.slbl"
    w = writer(path)
    with pytest.raises(SparseLabelsError, match="being written by another LabelWriter"):
        writer(path, resume=True)
    w.close()


def test_fingerprints_are_all_or_nothing(tmp_path):
    with writer(tmp_path / "a.slbl") as w:
        w.write(*GOOD, fingerprint=5)
        with pytest.raises(InputError, match="fingerprint is missing, but earlier sequences have"):
            w.write(*GOOD)
        with pytest.raises(InputError, match="fingerprint must be an integer"):
            w.write(*GOOD, fingerprint=2**64)
        w.write(*GOOD, fingerprint=2**64 - 1)
    with sl.open_labels(tmp_path / "a.slbl") as f:
        assert f.fingerprints.tolist() == [5, 2**64 - 1]


def test_memory_stays_bounded_while_streaming(tmp_path):
    """The writer's buffer never exceeds about one chunk, however many sequences pass through it."""
    seqs = random_sequences(9, 50, vocab_size=100, max_positions=200)
    with writer(tmp_path / "a.slbl", chunk_bytes=20_000) as w:
        peak = 0
        for _ in range(4):
            for s in seqs:
                w.write(*s)
                peak = max(peak, w._buffer.nbytes)
    one_sequence = max(len(s[0]) * 5 + (len(s[2]) - 1) * 4 + 32 for s in seqs)
    assert peak < 20_000 + one_sequence


def test_inputs_in_any_byte_order_and_torch_bfloat16(tmp_path):
    """Big-endian arrays (HDF5, np.load) hold valid values; bfloat16 tensors have no numpy type; timedelta64 is
    numpy's 'integer' but not a count. Each used to end in a numba or torch error."""
    with sl.LabelWriter(tmp_path / "c.slbl", vocab_size=10, rounds=50) as w:
        w.write(np.array([1, 2], ">u4"), np.array([25, 25], ">i8"), np.array([0, 2], ">i8"))
        with pytest.raises(InputError, match="counts must be integers"):
            w.write(np.array([1], np.uint32), np.array([50], "m8[s]"), [0, 1])
    with sl.LabelWriter(tmp_path / "p.slbl", vocab_size=10, value_kind="prob") as w:
        w.write(torch.tensor([1, 2]), torch.tensor([0.5, 0.25], dtype=torch.bfloat16), torch.tensor([0, 2]))
    with sl.open_labels(tmp_path / "c.slbl") as f, sl.open_labels(tmp_path / "p.slbl") as g:
        assert f[0].ids.tolist() == [1, 2] and f[0].counts.tolist() == [25, 25]
        assert g[0].counts.tolist() == [0.5, 0.25]


def test_sequences_readers_would_refuse_are_not_written(tmp_path):
    from sparselabels.format.layout import DEFAULT_MAX_SEQUENCE_POSITIONS as limit

    empty = (np.zeros(0, np.uint32), np.zeros(0, np.uint8))
    with sl.LabelWriter(tmp_path / "a.slbl", vocab_size=10, rounds=1, durable=False) as w:
        with pytest.raises(InputError, match="more than max_sequence_positions = 16777216"):
            w.write(*empty, np.zeros(limit + 2, np.int64))
        w.write(*empty, np.zeros(limit + 1, np.int64))  # at the limit: written, and read back
    with sl.open_labels(tmp_path / "a.slbl") as f:
        assert len(f) == 1 and f[0].num_positions == limit
    # longer sequences: the limit raised on both sides
    with sl.LabelWriter(tmp_path / "b.slbl", vocab_size=10, rounds=1, durable=False,
                        max_sequence_positions=limit + 1) as w:
        w.write(*empty, np.zeros(limit + 2, np.int64))
    with sl.open_labels(tmp_path / "b.slbl", max_sequence_positions=limit + 1) as f:
        assert f[0].num_positions == limit + 1
    with sl.open_labels(tmp_path / "b.slbl") as f, pytest.raises(sl.FormatError, match="max_sequence_positions"):
        f[0]


@pytest.mark.parametrize("meta, again", [
    ({"user": {"dims": (1, 2)}}, None), ({"tags": ("a",)}, None), ({"x": float("nan")}, None),
    ({"user": {"lr": 0.1, "run": "a"}}, {"user": {"run": "a", "lr": 0.1}}), ({"t": 1.0}, {"t": 1}),
])
def test_resume_with_the_same_metadata_as_started(tmp_path, meta, again):
    """Metadata is compared as stored, by value: a tuple comes back as a list, NaN != NaN, and a map written in
    another key order packs to other bytes, each of which used to make a job unresumable with its own arguments."""
    w = sl.LabelWriter(tmp_path / "a.slbl", vocab_size=10, rounds=1, metadata=meta)
    w.write([1], [1], [0, 1])
    w.flush()
    w.abort()
    with sl.LabelWriter(tmp_path / "a.slbl", vocab_size=10, rounds=1, metadata=again or meta, resume=True) as w:
        assert w.num_sequences == 1
    with pytest.raises(CompatibilityError, match="cannot resume"):
        w = sl.LabelWriter(tmp_path / "b.slbl", vocab_size=10, rounds=1, metadata={"x": 1.0})
        w.write([1], [1], [0, 1])
        w.flush()
        w.abort()
        sl.LabelWriter(tmp_path / "b.slbl", vocab_size=10, rounds=1, metadata={"x": float("nan")}, resume=True)


def test_a_writer_that_cannot_resume_leaves_no_partial_file(tmp_path, monkeypatch):
    """resumable=False (merge): an error in the block, or in close() (a full disk while writing the index),
    deletes the partial file, which would otherwise block the next attempt."""
    with pytest.raises(RuntimeError), sl.LabelWriter(tmp_path / "a.slbl", vocab_size=10, rounds=1,
                                                     resumable=False) as w:
        w.write([1], [1], [0, 1])
        w.flush()
        raise RuntimeError("stop")
    assert not (tmp_path / "a.slbl.partial").exists()

    def full_disk(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sl.LabelWriter, "_finalize", full_disk)
    for resumable in (False, True):
        w = sl.LabelWriter(tmp_path / "b.slbl", vocab_size=10, rounds=1, resumable=resumable, overwrite=True)
        w.write([1], [1], [0, 1])
        with pytest.raises(OSError, match="No space"):
            w.close()
        assert (tmp_path / "b.slbl.partial").exists() == resumable

"""LabelWriter under adversity: racing writers, failed writes (a full disk), planted links, names the file system
refuses, directories in the way, stale partial files of writers that cannot resume."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from labelgen import assert_same, random_sequences

import sparselabels as sl
from sparselabels.errors import InputError, SparseLabelsError
from sparselabels.io import writer as writer_module

SEQS = random_sequences(5, 12, vocab_size=300, rounds=20)


def make(path, **kwargs):
    return sl.LabelWriter(path, **{"vocab_size": 300, "rounds": 20, **kwargs})


def finished(path, seqs):
    with make(path, overwrite=True) as w:
        for s in seqs:
            w.write(*s)


def assert_reads(path, seqs):
    with sl.LabelFile(path) as f:
        assert len(f) == len(seqs)
        for got, want in zip(f, seqs, strict=True):
            assert_same(got, want)


@pytest.mark.parametrize("mode", ["overwrite", "resume"])
def test_a_writer_whose_lock_comes_late_never_writes_the_finished_file(tmp_path, monkeypatch, mode):
    """Writer B opens ``<path>.partial``; before B's lock call, writer A finishes (renames that file into place and
    unlocks). B must notice that the file it locked is no longer the partial file, and leave A's file alone."""
    path = tmp_path / "a.slbl"
    first = make(path)
    for s in SEQS[:6]:
        first.write(*s)
    first.flush()
    real_lock = writer_module._lock
    calls = []

    def late_lock(fd):
        if not calls:
            first.close()  # A finishes between B's open and B's lock
        calls.append(fd)
        real_lock(fd)

    monkeypatch.setattr(writer_module, "_lock", late_lock)
    if mode == "resume":
        with pytest.raises(SparseLabelsError, match="already complete"):
            make(path, resume=True)
        assert_reads(path, SEQS[:6])
        return
    second = make(path, overwrite=True)
    assert len(calls) == 2  # the first lock was on A's finished file: refused, tried again on a new partial file
    assert_reads(path, SEQS[:6])  # A's file is intact while B writes
    for s in SEQS[6:]:
        second.write(*s)
    second.close()  # and B finishes normally (no FileNotFoundError at its rename)
    assert_reads(path, SEQS[6:])


def test_a_symlink_planted_at_the_partial_path_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_bytes(b"keep me")
    path = tmp_path / "a.slbl"
    os.symlink(target, tmp_path / "a.slbl.partial")
    for kwargs in ({"overwrite": True}, {"resume": True}, {}):
        with pytest.raises(SparseLabelsError, match="symbolic link"):
            make(path, **kwargs)
    assert target.read_bytes() == b"keep me"
    os.unlink(tmp_path / "a.slbl.partial")
    os.symlink(tmp_path / "nowhere", tmp_path / "a.slbl.partial")  # dangling: O_CREAT would create its target
    with pytest.raises(SparseLabelsError, match="symbolic link"):
        make(path, overwrite=True)
    assert not (tmp_path / "nowhere").exists()


def test_a_hard_link_at_the_partial_path_is_refused(tmp_path):
    target = tmp_path / "precious.bin"
    target.write_bytes(b"keep me")
    os.link(target, tmp_path / "a.slbl.partial")
    with pytest.raises(SparseLabelsError, match="hard links"):
        make(tmp_path / "a.slbl", overwrite=True)
    assert target.read_bytes() == b"keep me"


def _fail_once(monkeypatch, err=errno.ENOSPC):
    real = os.pwrite
    state = {"armed": True}

    def pwrite(fd, data, offset):
        if state["armed"]:
            state["armed"] = False
            raise OSError(err, os.strerror(err))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return state


def test_a_write_that_fails_with_enospc_changes_nothing_and_can_be_retried(tmp_path, monkeypatch):
    path = tmp_path / "a.slbl"
    w = make(path, chunk_bytes=1)  # every write emits a chunk
    for s in SEQS[:4]:
        w.write(*s)
    _fail_once(monkeypatch)
    with pytest.raises(OSError, match=r"No space left on device: '.*a\.slbl\.partial'") as info:
        w.write(*SEQS[4])
    assert info.value.errno == errno.ENOSPC
    assert (w.num_sequences, w.num_positions) == (4, sum(len(s[2]) - 1 for s in SEQS[:4]))
    for s in SEQS[4:]:  # space freed: the same call again, then the rest
        w.write(*s)
    w.close()
    assert_reads(path, SEQS)  # each sequence once, none shifted


def test_a_flush_or_close_that_fails_changes_nothing_counted(tmp_path, monkeypatch):
    path = tmp_path / "a.slbl"
    w = make(path)
    for s in SEQS[:5]:
        w.write(*s)
    _fail_once(monkeypatch)
    with pytest.raises(OSError, match=r"a\.slbl\.partial"):
        w.flush()
    assert w.num_sequences == 5
    w.flush()
    for s in SEQS[5:]:
        w.write(*s)
    _fail_once(monkeypatch, errno.EIO)
    with pytest.raises(OSError, match=r"Input/output error: '.*a\.slbl\.partial'"):
        w.close()
    w2 = make(path, resume=True)  # the failed close left the partial file: the flushed sequences are kept
    assert w2.num_sequences == 5
    for s in SEQS[5:]:
        w2.write(*s)
    w2.close()
    assert_reads(path, SEQS)


def test_a_writer_whose_fsync_failed_refuses_to_go_on(tmp_path, monkeypatch):
    path = tmp_path / "a.slbl"
    w = make(path)
    w.write(*SEQS[0])

    def bad_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", bad_fsync)
    with pytest.raises(OSError, match=r"a\.slbl\.partial"):
        w.flush()
    monkeypatch.undo()
    with pytest.raises(SparseLabelsError, match=r"stopped: fsync failed.*resume=True"):
        w.write(*SEQS[1])
    w.abort()
    assert make(path, resume=True).num_sequences <= 1


def test_a_directory_at_the_path_is_refused_at_construction(tmp_path):
    (tmp_path / "a.slbl").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        make(tmp_path / "a.slbl", overwrite=True)
    assert not (tmp_path / "a.slbl.partial").exists()


def test_a_name_too_long_once_partial_is_appended_is_refused_up_front(tmp_path):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    name = "x" * (name_max - 8) + ".slbl"  # fits; with ".partial" it does not
    with pytest.raises(InputError, match=r"longer than the \d+ bytes a file name may have"):
        make(tmp_path / name)
    make(tmp_path / ("x" * (name_max - len(".partial") - 5) + ".slbl")).close()


def test_a_stale_partial_of_a_writer_that_cannot_resume_is_replaced(tmp_path):
    """A killed merge leaves its partial file unlocked; the next non-resumable writer takes it over (it holds the
    lock, so no live writer uses it), while a resumable writer still refuses to touch it without a choice."""
    path = tmp_path / "m.slbl"
    stale = make(path, resumable=False)
    stale.write(*SEQS[0])
    stale.flush()
    os.close(stale._fd)  # the process died: the lock is gone, the file stays
    stale._fd = -1
    with pytest.raises(SparseLabelsError, match="holds an unfinished file"):
        make(path)
    w = make(path, resumable=False)
    for s in SEQS[:3]:
        w.write(*s)
    w.close()
    assert_reads(path, SEQS[:3])


def test_write_failure_keeps_empty_fingerprint_choice_open(tmp_path, monkeypatch):
    """The first write failing must not fix the file's fingerprint choice."""
    w = make(tmp_path / "a.slbl", chunk_bytes=1)
    _fail_once(monkeypatch)
    with pytest.raises(OSError):
        w.write(*SEQS[0], fingerprint=7)
    w.write(*SEQS[0])  # without a fingerprint: allowed, nothing was stored
    w.close()
    with sl.LabelFile(tmp_path / "a.slbl") as f:
        assert f.fingerprints is None and len(f) == 1
        assert np.array_equal(f.sequence_lengths, [len(SEQS[0][2]) - 1])


TOP = 2**32 - 1


def test_rans_refuses_a_position_it_cannot_store_and_raw_stores_it(tmp_path):
    """vocab_size 2**32: a position whose first id is 2**32 - 1 has a gap of 2**32 from -1, beyond the rans gap
    buckets; the writer refuses it up front (nothing else changes) and raw stores it."""
    only_top = (np.array([TOP], np.uint32), np.array([3], np.uint8), np.array([0, 0, 1]))
    fine = (np.array([0, TOP - 1, TOP], np.uint32), np.array([1, 1, 1], np.uint8), np.array([0, 3]))
    w = make(tmp_path / "r.slbl", vocab_size=2**32, rounds=3, chunk_bytes=1)
    w.write(*fine)
    with pytest.raises(InputError, match=r"sequence 1, position 1, label 0, field 'ids': id 4294967295 as a "
                                         r"position's first id is beyond codec 'rans'.*codec 'raw'"):
        w.write(*only_top)
    assert w.num_sequences == 1
    w.close()
    assert_reads(tmp_path / "r.slbl", [fine])
    with make(tmp_path / "w.slbl", vocab_size=2**32, rounds=3, codec="raw") as w:
        w.write(*only_top)
        w.write(*fine)
    assert_reads(tmp_path / "w.slbl", [only_top, fine])


def test_merge_copy_refuses_a_chunk_that_does_not_decode(tmp_path, monkeypatch):
    """A file whose CRCs all match but whose record does not decode (written by a writer without the check
    above) is not copied into a merged file."""
    from sparselabels.codecs.rans import RansCodec

    monkeypatch.setattr(RansCodec, "unencodable", lambda self, ids, indptr: None, raising=False)
    bad = tmp_path / "bad.slbl"
    with make(bad, vocab_size=2**32, rounds=3) as w:
        w.write(np.array([TOP], np.uint32), np.array([3], np.uint8), np.array([0, 1]))
    monkeypatch.undo()
    with sl.LabelFile(bad) as f, pytest.raises(sl.FormatError, match="rans record"):
        f[0]
    with pytest.raises(sl.FormatError, match="not copying a chunk that does not decode"):
        sl.merge(tmp_path / "m.slbl", [bad], copy=True)
    assert not (tmp_path / "m.slbl").exists() and not (tmp_path / "m.slbl.partial").exists()


def test_merge_copy_takes_over_the_partial_file_a_killed_merge_left(tmp_path):
    finished(tmp_path / "a.slbl", SEQS[:4])
    stale = make(tmp_path / "m.slbl", resumable=False)  # a merge killed mid-way: its partial file, unlocked
    stale.write(*SEQS[5])
    stale.flush()
    os.close(stale._fd)
    stale._fd = -1
    sl.merge(tmp_path / "m.slbl", [tmp_path / "a.slbl"], copy=True)
    assert_reads(tmp_path / "m.slbl", SEQS[:4])

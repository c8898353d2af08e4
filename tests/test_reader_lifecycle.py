"""A LabelFile's life: indexing rules, use after close, pickling by path, and files changed while open."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from labelgen import assert_same, random_sequences

import sparselabels as sl
from sparselabels.errors import FormatError, InputError


def write(path, seed, count, *, rounds=50):
    seqs = random_sequences(seed, count, vocab_size=500, rounds=rounds)
    with sl.LabelWriter(path, vocab_size=500, rounds=rounds, chunk_bytes=4096, overwrite=True) as w:
        for s in seqs:
            w.write(*s)
    return seqs


def test_indexing_refuses_booleans_and_closed_files(tmp_path):
    seqs = write(tmp_path / "a.slbl", 1, 4)
    f = sl.LabelFile(tmp_path / "a.slbl")
    assert_same(f[-1], seqs[-1])
    with pytest.raises(TypeError, match="bool"):
        f[True]
    with pytest.raises(IndexError, match="out of range"):
        f[4]
    f.close()
    for use in (lambda: f[0], lambda: f.file_size, lambda: pickle.dumps(f)):
        with pytest.raises(ValueError, match="closed"):
            use()
    with pytest.raises(InputError, match="max_sequence_positions"):
        sl.LabelFile(tmp_path / "a.slbl", max_sequence_positions=2.5)


@pytest.mark.parametrize("mmap", [True, False])
def test_pickled_file_refuses_a_different_file_at_its_path(tmp_path, mmap):
    """A worker reopening by path must not read another file's labels with the sender's rounds and counts."""
    path = tmp_path / "a.slbl"
    seqs = write(path, 1, 6)
    with sl.LabelFile(path, mmap=mmap) as f:
        state = pickle.dumps(f)
        assert_same(pickle.loads(state)[2], seqs[2])  # unchanged: reopens
        write(path, 2, 6, rounds=20)  # regenerated at the same path (a new inode)
        with pytest.raises(FormatError, match="changed after it was opened"):
            pickle.loads(state)


@pytest.mark.parametrize("access", ["f[len(f) - 1]", "f.positions(f.num_positions - 1, f.num_positions)",
                                    "f.index_column('record_offset')", "f.fingerprints", "sl.validate(f.path)"])
def test_file_overwritten_in_place_while_mapped_is_an_error_not_a_crash(tmp_path, access):
    """``cp small big`` over an open, mapped file: touching the map past the new end would kill the process
    (SIGBUS), so every access to the index or records is refused first. Run in a child so that a regression fails
    here rather than killing the whole run."""
    write(tmp_path / "big.slbl", 1, 400)
    write(tmp_path / "small.slbl", 2, 2)
    script = textwrap.dedent(f"""
        import shutil, sparselabels as sl
        f = sl.LabelFile({str(tmp_path / "big.slbl")!r})
        f[0]
        shutil.copyfile({str(tmp_path / "small.slbl")!r}, {str(tmp_path / "big.slbl")!r})
        try:
            result = {access}
        except sl.FormatError as exc:
            print("refused:", exc)
        else:
            print("report:", getattr(result, "ok", None), getattr(result, "problems", None))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    if access.startswith("sl.validate"):  # validate opens the path anew: it checks the small file it finds
        assert "report: True" in done.stdout, done.stdout
    else:
        assert "refused:" in done.stdout and "truncated or overwritten while open" in done.stdout, done.stdout
    shutil.copyfile(tmp_path / "small.slbl", tmp_path / "copy.slbl")  # the copy itself is a valid file
    with sl.LabelFile(tmp_path / "copy.slbl") as g:
        assert len(g) == 2


def test_file_grown_or_rewritten_in_place_is_refused(tmp_path):
    """A larger file, or one of the same size, copied over a mapped file shows its bytes through the old map:
    the changed size or footer is caught before they are read as the old index."""
    big = tmp_path / "big.slbl"
    write(tmp_path / "small.slbl", 2, 2)
    write(big, 1, 400)
    with sl.LabelFile(tmp_path / "small.slbl") as f:
        shutil.copyfile(big, tmp_path / "small.slbl")
        with pytest.raises(FormatError, match="truncated or overwritten while open"):
            f[0]
    a, b = tmp_path / "a.slbl", tmp_path / "b.slbl"
    write(a, 3, 5)
    data = bytearray(a.read_bytes())
    data[-8] ^= 0xFF  # same size, other footer bytes
    b.write_bytes(bytes(data))
    with sl.LabelFile(a) as f:
        f[0]
        shutil.copyfile(b, a)  # at once: within any file system's timestamp granularity
        with pytest.raises(FormatError, match="other footer bytes: truncated or overwritten while open"):
            f[1]


def test_touch_or_a_copy_of_the_same_bytes_keeps_a_mapped_file_readable(tmp_path):
    """Scratch file systems are kept from purging files by ``touch``; ``rsync -t`` and ``cp -p`` of identical
    bytes change the mtime too. None changes a byte, so reads go on."""
    a = tmp_path / "a.slbl"
    write(a, 3, 5)
    same = tmp_path / "same.slbl"
    shutil.copyfile(a, same)
    with sl.LabelFile(a) as f:
        want = f[1]
        os.utime(a, ns=(1, 1))
        assert np.array_equal(f[1].ids, want.ids)
        shutil.copyfile(same, a)
        os.utime(a)
        assert np.array_equal(f[2].ids, sl.LabelFile(same)[2].ids) and np.array_equal(f[1].ids, want.ids)


def test_a_mapped_file_holds_one_descriptor(tmp_path):
    """The map keeps its own descriptor; a second one per file would halve how many files a process can keep
    open (shard sets, DataLoader workers)."""
    write(tmp_path / "a.slbl", 3, 5)
    fd_dir = Path("/proc/self/fd")
    before = len(list(fd_dir.iterdir()))
    files = [sl.LabelFile(tmp_path / "a.slbl") for _ in range(20)]
    assert len(list(fd_dir.iterdir())) - before == 20
    files += [sl.LabelFile(tmp_path / "a.slbl", mmap=False) for _ in range(5)]
    assert len(list(fd_dir.iterdir())) - before == 25
    for f in files:
        f.close()
    assert len(list(fd_dir.iterdir())) == before


def test_a_file_whose_writer_stopped_after_starting_reads_as_incomplete(tmp_path):
    """Only the header and metadata were written (killed right after opening): the same error as any file
    without a footer, so the user is told the writer did not finish."""
    w = sl.LabelWriter(tmp_path / "a.slbl", vocab_size=10, rounds=50)
    w.flush()
    w.abort()
    with pytest.raises(sl.IncompleteFileError, match="writer did not finish"):
        sl.LabelFile(tmp_path / "a.slbl.partial")


def test_full_verification_raises_a_checksum_error_for_a_checksum_problem(tmp_path):
    path = tmp_path / "a.slbl"
    with sl.LabelWriter(path, vocab_size=100, rounds=50, codec="raw", chunk_bytes=64) as w:
        for k in range(4):
            w.write([3, 7 + k], [49, 1], [0, 2])
    with sl.LabelFile(path) as f:
        offset = int(f.index_column("record_offset")[1])
    data = bytearray(path.read_bytes())
    data[offset + 5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(sl.ChecksumError, match="payload CRC-32 mismatch") as info:
        sl.open_labels(path, verify="full")
    assert str(info.value).count(str(path)) == 1  # named once


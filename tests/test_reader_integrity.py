"""Readers against a changing world: close() while other threads read, manifests whose metadata is incomplete,
shard directories with dangling links."""

from __future__ import annotations

import json
import os
import sys
import threading

import numpy as np
import pytest
from labelgen import assert_same, random_sequences

import sparselabels as sl
from sparselabels.errors import FormatError

SEQS = random_sequences(9, 40, vocab_size=400, rounds=30)


def write(path, seqs=SEQS, codec="rans"):
    with sl.LabelWriter(path, vocab_size=400, rounds=30, codec=codec, chunk_bytes=2000, overwrite=True) as w:
        for i, s in enumerate(seqs):
            w.write(*s, fingerprint=1000 + i)
    return path


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("codec", ["rans", "raw"])
def test_close_while_other_threads_read_finishes_reads_or_says_closed(tmp_path, mmap, codec):
    """Every read racing with close() either returns the right sequence or raises ``ValueError: ... closed`` —
    never KeyError, EBADF, or a FormatError claiming the file was overwritten."""
    path = write(tmp_path / "a.slbl", codec=codec)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the races show up within a few rounds
    try:
        for attempt in range(15):
            f = sl.LabelFile(path, mmap=mmap)
            wrong: list[BaseException] = []
            reads = [0]
            start = threading.Barrier(5)

            def reader(seed, f=f, wrong=wrong, reads=reads, start=start):
                rng = np.random.default_rng(seed)
                start.wait()
                while True:
                    i = int(rng.integers(len(SEQS)))
                    try:
                        got = f[i]
                        fps = f.fingerprints
                        f.index_column("record_offset")
                    except ValueError as exc:
                        if "closed" in str(exc) and not isinstance(exc, FormatError):
                            return
                        wrong.append(exc)
                        return
                    except BaseException as exc:  # any other type is the failure under test
                        wrong.append(exc)
                        return
                    assert_same(got, SEQS[i])
                    assert got.fingerprint == 1000 + i and int(fps[i]) == 1000 + i
                    reads[0] += 1

            threads = [threading.Thread(target=reader, args=(attempt * 10 + k,)) for k in range(4)]
            for t in threads:
                t.start()
            start.wait()
            while reads[0] < 20 * (attempt % 3 + 1) and not wrong:
                pass
            f.close()
            for t in threads:
                t.join(30)
            assert not wrong, [f"{type(e).__name__}: {e}" for e in wrong]
    finally:
        sys.setswitchinterval(old)


def test_a_manifest_without_label_settings_is_refused_at_open(tmp_path):
    write(tmp_path / "s" / "a.slbl")
    manifest = sl.merge(tmp_path / "s" / "m.json", [tmp_path / "s" / "a.slbl"])
    body = json.loads(manifest.read_text())
    body["metadata"] = {}
    manifest.write_text(json.dumps(body))
    with pytest.raises(FormatError, match=r"m\.json.*metadata: required keys missing: \['vocab_size'"):
        sl.open_labels(manifest)
    body["metadata"] = {"vocab_size": "many", "value_kind": "count", "rounds": 30}
    manifest.write_text(json.dumps(body))
    with pytest.raises(FormatError, match="vocab_size 'many' must be an integer"):
        sl.open_labels(manifest)


def test_a_dangling_symlink_shard_is_refused_not_skipped(tmp_path):
    d = tmp_path / "shards"
    write(d / "a.slbl", SEQS[:5])
    write(d / "b.slbl", SEQS[5:9])
    os.symlink(tmp_path / "gone.slbl", d / "c.slbl")
    with pytest.raises(FormatError, match=r"holds c\.slbl, a link to a missing file"):
        sl.open_labels(d)
    os.unlink(d / "c.slbl")
    (d / "c.slbl").mkdir()
    with pytest.raises(FormatError, match=r"holds c\.slbl, not a regular file"):
        sl.open_labels(d)
    os.rmdir(d / "c.slbl")
    os.symlink(d / "a.slbl", d / "c.slbl")  # a link to a file is a file
    with sl.open_labels(d) as shards:
        assert len(shards) == 14

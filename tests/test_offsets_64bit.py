"""64-bit correctness: files whose offsets pass 4 GiB, 2**32 positions and 2**32 labels, without writing gigabytes.

The big parts of these files are holes in sparse files: a sequence of 2**32 + 5 empty positions is, in the raw
codec, 2**32 + 8 zero bytes, so it is valid and costs no disk. Its chunk CRC is computed without reading
zeros (the CRC of appended zero bytes is a linear map, raised to the n-th power by squaring). A second file
carries a *constructed index*: one sequence claiming 2**32 + 7 labels (in the 2**32 / 50 positions the label
rules need for them) in a 2**32 + 8-byte record of zeros;
it is never decoded successfully (reading it is a clean FormatError) but it puts every later label offset
past 2**32. Small real sequences after the holes are read back exactly, one by one, across sequence and
shard boundaries, from the files, from a manifest over them and from a copy-merge of them.

The index and chunk layout here are computed by this test, not by the writer, so the test also checks that
the reader accepts a file laid out by the spec by someone else.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import sparselabels as sl
from sparselabels.codecs import ChunkInput, get_codec
from sparselabels.format import metadata as meta_format
from sparselabels.format.layout import (
    CHUNK_HEADER_SIZE,
    FLAG_FINGERPRINTS,
    ChunkHeader,
    Footer,
    Header,
    crc32,
    entry_size,
)
from sparselabels.io import writer as writer_module

VOCAB = 128_256
ROUNDS = 50
BIG_POSITIONS = (1 << 32) + 5
BIG_LABELS = (1 << 32) + 7
CLAIM_POSITIONS = -(-BIG_LABELS // ROUNDS)  # the fewest positions that may hold them (<= rounds labels each)
GiB = 1 << 30


# -- CRC-32 of zero runs, without reading zeros -------------------------------------------------------------
def _gf2_times(matrix: list[int], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, column) for column in matrix]


def crc32_zeros(crc: int, n: int) -> int:
    """CRC-32 of ``data + bytes(n)`` from ``crc = crc32(data)``: the register update for a zero byte is linear,
    so n zero bytes are one matrix power (zlib's crc32_combine does the same)."""
    if n == 0:
        return crc
    register = crc ^ 0xFFFFFFFF
    odd = [0xEDB88320] + [1 << i for i in range(31)]  # one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)
        if n & 1:
            register = _gf2_times(even, register)
        n >>= 1
        if not n:
            break
        odd = _gf2_square(even)
        if n & 1:
            register = _gf2_times(odd, register)
        n >>= 1
        if not n:
            break
    return register ^ 0xFFFFFFFF


def test_crc32_of_zero_runs_matches_zlib() -> None:
    rng = np.random.default_rng(0)
    for n in [0, 1, 2, 3, 7, 8, 63, 64, 1000, 4096, 65_537, 1 << 20]:
        data = rng.integers(0, 256, size=int(rng.integers(0, 50)), dtype=np.uint8).tobytes()
        assert crc32_zeros(zlib.crc32(data), n) == zlib.crc32(data + bytes(n))


# -- a spec-level builder of sparse label files -------------------------------------------------------------
@dataclass
class Seq:
    num_positions: int
    num_labels: int
    record: bytes | int  # the record bytes, or the size of an all-zero record (a hole)
    fingerprint: int
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # what reading it must return


def _real_sequences(rng: np.random.Generator, n: int) -> list[Seq]:
    """Small sequences encoded by the raw codec (the codec API, not the writer)."""
    arrays = []
    for _ in range(n):
        lpp = rng.integers(0, 13, size=int(rng.integers(1, 30)))
        ids, counts = [], []
        for k in lpp:
            ids.extend(np.sort(rng.choice(VOCAB, size=int(k), replace=False)).tolist())
            counts.extend((1 + rng.multinomial(ROUNDS - int(k), np.ones(int(k)) / max(int(k), 1))).tolist()
                          if k else [])
        indptr = np.concatenate(([0], np.cumsum(lpp))).astype(np.int64)
        arrays.append((np.array(ids, np.uint32), np.array(counts, np.uint8), indptr))
    encoded = get_codec("raw").encode_chunk(ChunkInput(
        ids=np.concatenate([a[0] for a in arrays]), values=np.concatenate([a[1] for a in arrays]),
        labels_per_position=np.concatenate([np.diff(a[2]) for a in arrays]).astype(np.uint32),
        seq_positions=np.array([a[2].size - 1 for a in arrays], np.int64),
        seq_labels=np.array([a[0].size for a in arrays], np.int64), value_kind="count", vocab_size=VOCAB))
    out, at = [], 0
    for a, size in zip(arrays, encoded.record_sizes.tolist(), strict=True):
        out.append(Seq(a[2].size - 1, a[0].size, encoded.records[at:at + size].tobytes(),
                       int(rng.integers(0, 1 << 63)), a))
        at += size
    return out


def _record_crc(s: Seq) -> int:
    """The record checksum (the raw codec has no table): of the record bytes, or of a hole of zeros."""
    return crc32_zeros(0, s.record) if isinstance(s.record, int) else crc32(s.record)


def write_sparse_file(path: Path, chunks: list[list[Seq]]) -> None:
    """Lay out a raw-codec file with fingerprints by the spec; all-zero records become holes."""
    meta = meta_format.encode(meta_format.build(vocab_size=VOCAB, value_kind="count", rounds=ROUNDS, codec="raw",
                                                extra={"teacher": "sparse-64bit"}))
    header = Header(metadata_size=len(meta), metadata_crc32=crc32(meta))
    cols: dict[str, list[int]] = {k: [] for k in ("position_start", "label_start", "record_offset", "record_size",
                                                  "record_crc32", "fingerprint", "chunk_offset",
                                                  "chunk_first_sequence", "chunk_table_offset", "chunk_table_size")}
    pos = lab = seq = 0
    with open(path, "wb") as f:
        f.write(header.pack() + meta)
        f.write(bytes(header.data_offset - f.tell()))
        for c, seqs in enumerate(chunks):
            entries = np.array([[s.num_positions, s.num_labels, s.record if isinstance(s.record, int)
                                 else len(s.record), _record_crc(s), s.fingerprint] for s in seqs], dtype="<u8")
            crc = crc32(entries.tobytes())
            for s in seqs:
                crc = crc32_zeros(crc, s.record) if isinstance(s.record, int) else crc32(s.record, crc)
            start = f.tell()
            table_at = start + CHUNK_HEADER_SIZE + len(seqs) * entry_size(FLAG_FINGERPRINTS)
            records_size = int(entries[:, 2].sum())
            f.write(ChunkHeader(c, seq, len(seqs), 0, records_size, FLAG_FINGERPRINTS, crc).pack())
            f.write(entries.tobytes())
            cols["chunk_offset"].append(start)
            cols["chunk_first_sequence"].append(seq)
            cols["chunk_table_offset"].append(table_at)
            cols["chunk_table_size"].append(0)
            for s, row in zip(seqs, entries.tolist(), strict=True):
                cols["position_start"].append(pos)
                cols["label_start"].append(lab)
                cols["record_offset"].append(f.tell())
                cols["record_size"].append(row[2])
                cols["record_crc32"].append(row[3])
                cols["fingerprint"].append(s.fingerprint)
                if isinstance(s.record, int):
                    f.seek(s.record, os.SEEK_CUR)  # a hole
                else:
                    f.write(s.record)
                pos, lab, seq = pos + s.num_positions, lab + s.num_labels, seq + 1
        index_offset = f.tell()
        cols["position_start"].append(pos)
        cols["label_start"].append(lab)
        cols["chunk_offset"].append(index_offset)
        cols["chunk_first_sequence"].append(seq)
        index = b"".join(np.array(v, dtype="<u8").tobytes() for v in cols.values())
        f.write(index)
        f.write(Footer(index_offset, seq, len(chunks), pos, lab, FLAG_FINGERPRINTS, crc32(index)).pack())


def _empty_positions(n: int) -> Seq:
    """A valid sequence of ``n`` empty positions: in the raw codec its record is all zeros."""
    size = (n + 7) // 8 * 8
    return Seq(n, 0, size, 12345)


def _advise(path: Path, advice: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, advice)
    finally:
        os.close(fd)


def _assert_same(s: sl.LabelSpan, expected: Seq) -> None:
    assert expected.arrays is not None
    np.testing.assert_array_equal(s.ids, expected.arrays[0])
    np.testing.assert_array_equal(s.counts, expected.arrays[1])
    np.testing.assert_array_equal(s.indptr, expected.arrays[2])
    assert s.fingerprint == expected.fingerprint


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sparse64")
    probe = directory / "probe"
    with open(probe, "wb") as f:
        f.truncate(10 * GiB)
    blocks = os.stat(probe).st_blocks
    probe.unlink()
    assert blocks * 512 < 1 << 20, "this file system has no sparse files; the 64-bit tests would write 10 GiB"
    rng = np.random.default_rng(1)
    head, tail, small = _real_sequences(rng, 2), _real_sequences(rng, 4), _real_sequences(rng, 3)
    # positions: 2 small sequences, 2**32+5 empty positions (a 4 GiB hole), 4 small sequences after it
    write_sparse_file(directory / "positions.slbl", [head, [_empty_positions(BIG_POSITIONS)], tail])
    # labels: a constructed sequence claiming 2**32+7 labels (in as few positions as the label rules allow) in a
    # 2**32+8-byte record, then small ones
    claim = Seq(CLAIM_POSITIONS, BIG_LABELS, (1 << 32) + 8, 777)
    labels_tail = _real_sequences(rng, 3)
    write_sparse_file(directory / "labels.slbl", [[claim], labels_tail])
    write_sparse_file(directory / "small.slbl", [small])
    for name in ("positions.slbl", "labels.slbl"):
        assert os.stat(directory / name).st_blocks * 512 < 16 << 20  # really sparse
    yield {"dir": directory, "head": head, "tail": tail, "small": small, "labels_tail": labels_tail}
    for path in directory.glob("*.slbl"):  # hand the page cache the holes filled back to the machine
        _advise(path, os.POSIX_FADV_DONTNEED)
        path.unlink()


@pytest.mark.parametrize("mmap", [True, False])
def test_positions_and_offsets_past_4gib(big_files: dict, mmap: bool) -> None:
    path = big_files["dir"] / "positions.slbl"
    head, tail = big_files["head"], big_files["tail"]
    with sl.open_labels(path, mmap=mmap) as f:
        small_positions = sum(s.num_positions for s in head + tail)
        assert len(f) == 7
        assert f.num_positions == BIG_POSITIONS + small_positions
        assert f.num_labels == sum(s.num_labels for s in head + tail)
        assert f.file_size > 4 * GiB
        assert int(f.sequence_lengths[2]) == BIG_POSITIONS
        offsets = f.index_column("record_offset")
        assert offsets.dtype == np.uint64 and int(offsets[3]) > 4 * GiB
        starts = f.index_column("position_start")
        assert int(starts[3]) == sum(s.num_positions for s in head) + BIG_POSITIONS > 1 << 32
        for i, expected in enumerate(head):
            _assert_same(f[i], expected)
        for i, expected in enumerate(tail, start=3):
            _assert_same(f[i], expected)
            assert f[i].fingerprint == expected.fingerprint
        assert f[-1].index == 6
        # A window of global positions past 2**32 that crosses from sequence 3 into sequence 4.
        p3 = int(starts[3])
        n3 = tail[0].num_positions
        block = f.positions(p3 + n3 - 1, p3 + n3 + 2)
        expected_ids = np.concatenate([tail[0].arrays[0][tail[0].arrays[2][-2]:],
                                       tail[1].arrays[0][: tail[1].arrays[2][2]]])
        np.testing.assert_array_equal(block.ids, expected_ids)
        assert block.num_positions == 3


@pytest.mark.parametrize("mmap", [True, False])
def test_label_offsets_past_2_32(big_files: dict, mmap: bool) -> None:
    path = big_files["dir"] / "labels.slbl"
    labels_tail = big_files["labels_tail"]
    with sl.open_labels(path, mmap=mmap) as f:
        assert f.num_labels == BIG_LABELS + sum(s.num_labels for s in labels_tail)
        assert int(f.index_column("label_start")[1]) == BIG_LABELS
        for i, expected in enumerate(labels_tail, start=1):
            _assert_same(f[i], expected)
        if mmap:  # decoding the constructed record is a clean error that prints the 64-bit counts exactly
            # lpp bytes padded to 4, ids, counts, padded to 8
            needed = ((CLAIM_POSITIONS + 3) // 4 * 4 + 5 * BIG_LABELS + 7) // 8 * 8
            with pytest.raises(sl.FormatError, match=rf"sequence 0: raw record is {(1 << 32) + 8} bytes; "
                                                     rf"{CLAIM_POSITIONS} positions and {BIG_LABELS} labels need "
                                                     rf"exactly {needed}$"), sl.open_labels(
                    path, max_sequence_positions=CLAIM_POSITIONS) as g:
                g[0]  # (the record's size is checked before anything is allocated)


def test_manifest_over_big_shards(big_files: dict) -> None:
    d = big_files["dir"]
    manifest = sl.merge(d / "manifest.json", [d / "positions.slbl", d / "labels.slbl", d / "small.slbl"])
    with sl.open_labels(manifest) as shards:
        assert len(shards) == 7 + 4 + 3
        assert shards.num_positions > 1 << 32 and shards.num_labels > 1 << 32
        for k, expected in enumerate(big_files["small"]):
            s = shards[11 + k]
            _assert_same(s, expected)
            assert s.index == 11 + k
        _assert_same(shards[6], big_files["tail"][-1])
        _assert_same(shards[8], big_files["labels_tail"][0])
        # global positions past 2**32 + 2**32 labels: the last shard's positions
        first = shards.num_positions - sum(s.num_positions for s in big_files["small"])
        block = shards.positions(first, first + big_files["small"][0].num_positions)
        np.testing.assert_array_equal(block.ids, big_files["small"][0].arrays[0])
    report = sl.validate(manifest.parent / "small.slbl")
    assert report.ok, report.problems


def test_copy_merge_past_4gib(big_files: dict, monkeypatch) -> None:
    """merge --copy of [small, positions, small]: the output's offsets pass 4 GiB and its positions 2**32.

    The writer's pwrite is wrapped to leave holes for all-zero blocks (the output stays sparse); every
    non-zero byte is still written by the writer at the offset it chose."""
    d = big_files["dir"]
    real_pwrite = writer_module._pwrite_all
    block = 64 << 20

    def sparse_pwrite(fd: int, data, offset: int) -> None:
        view = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        for start in range(0, view.size, block):
            part = view[start:start + block]
            if part.any():
                real_pwrite(fd, part, offset + start)

    monkeypatch.setattr(writer_module, "_pwrite_all", sparse_pwrite)
    # merge reads its inputs through a memory map; faulting in 4 GiB of holes page by page took up to 30 s on a
    # small VM, a readahead hint first a few seconds. This changes timing only, not what merge reads.
    _advise(d / "positions.slbl", os.POSIX_FADV_WILLNEED)
    out = d / "merged.slbl"
    sl.merge(out, [d / "small.slbl", d / "positions.slbl", d / "small.slbl"], copy=True)
    assert os.stat(out).st_blocks * 512 < 16 << 20
    small, head, tail = big_files["small"], big_files["head"], big_files["tail"]
    with sl.open_labels(out) as f:
        assert len(f) == 3 + 7 + 3
        assert f.num_positions == 2 * sum(s.num_positions for s in small) + BIG_POSITIONS + sum(
            s.num_positions for s in head + tail)
        assert int(f.index_column("record_offset")[-1]) > 4 * GiB
        assert int(f.index_column("position_start")[-1]) > 1 << 32
        for k, expected in enumerate(small):
            _assert_same(f[k], expected)
            _assert_same(f[10 + k], expected)
        for k, expected in enumerate(tail):
            _assert_same(f[6 + k], expected)
        assert int(f.sequence_lengths[5]) == BIG_POSITIONS

"""Corrupt files: every section damaged in turn. Opening raises FormatError, validate reports the problem
with its location, and nothing crashes. (tools/fuzz_format.py does the same at scale, in subprocesses.)"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from labelgen import random_sequences

import sparselabels as sl
from sparselabels.errors import FormatError, IncompleteFileError
from sparselabels.format.layout import CHUNK_HEADER_SIZE, FOOTER_SIZE, HEADER_SIZE


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.slbl"
    seqs = random_sequences(7, 20, vocab_size=500)
    with sl.LabelWriter(path, vocab_size=500, rounds=50, chunk_bytes=1500, metadata={"teacher": "t"}) as w:
        for i, s in enumerate(seqs):
            w.write(*s, fingerprint=i)
    with sl.LabelFile(path) as f:
        layout = {
            "metadata": HEADER_SIZE + 2,
            "chunk_header": int(f.index_column("chunk_offset")[1]) + 20,
            "chunk_entries": int(f.index_column("chunk_offset")[1]) + CHUNK_HEADER_SIZE + 3,
            "record": int(f.index_column("record_offset")[3]) + 1,
            "index": f.footer.index_offset + 8 * 3 + 1,
            "footer": f.file_size - FOOTER_SIZE + 17,
            "header": 20,
        }
    return path, layout


def damaged(path, tmp_path, offset: int, name="bad.slbl"):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    out = tmp_path / name
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("section", ["header", "metadata", "chunk_header", "chunk_entries", "record", "index",
                                     "footer"])
@pytest.mark.parametrize("mmap", [True, False])
def test_flipped_byte_in_each_section(good, tmp_path, section, mmap):
    path, layout = good
    bad = damaged(path, tmp_path, layout[section])
    report = sl.validate(bad)
    assert not report.ok
    assert "bad.slbl" in str(report.problems[0])
    with pytest.raises(FormatError), sl.open_labels(bad, mmap=mmap, verify="full") as f:
        list(f)
    if section in ("header", "metadata", "index", "footer"):  # caught at open, whatever the verify level
        with pytest.raises(FormatError):
            sl.open_labels(bad, mmap=mmap, verify="index")
    if section in ("chunk_header", "chunk_entries", "record"):
        assert "chunk" in str(report.problems[0]) and "CRC-32" in str(report.problems[0])


@pytest.mark.parametrize("cut", [0, 1, 63, 64, 100, -65, -64, -1])
def test_truncated_files(good, tmp_path, cut):
    path, _ = good
    data = path.read_bytes()
    bad = tmp_path / "cut.slbl"
    bad.write_bytes(data[:cut] if cut > 0 else data[: len(data) + cut] if cut < 0 else b"")
    with pytest.raises(FormatError):
        sl.open_labels(bad)
    assert not sl.validate(bad).ok


def test_truncation_to_a_chunk_boundary_is_incomplete(good, tmp_path):
    path, _ = good
    with sl.LabelFile(path) as f:
        end_of_chunks = f.footer.index_offset
    bad = tmp_path / "cut.slbl"
    bad.write_bytes(path.read_bytes()[:end_of_chunks])
    with pytest.raises(IncompleteFileError, match="writer did not finish"):
        sl.open_labels(bad)


def _refresh_crc(data: bytearray, start: int) -> None:
    data[start + 60 : start + 64] = struct.pack("<I", zlib.crc32(bytes(data[start : start + 60])))


def test_lying_header_and_footer_with_valid_crcs(good, tmp_path):
    path, _ = good
    original = path.read_bytes()
    cases = {
        "metadata_size": (0, 16, struct.pack("<Q", 10**12)),
        "data_offset": (0, 24, struct.pack("<Q", 8)),
        "version": (0, 8, struct.pack("<H", 2)),
        "num_sequences": (len(original) - FOOTER_SIZE, 16, struct.pack("<Q", 2**62)),
        "num_positions": (len(original) - FOOTER_SIZE, 32, struct.pack("<Q", 12345)),
        "index_offset": (len(original) - FOOTER_SIZE, 8, struct.pack("<Q", 2**63 + 8)),
    }
    for name, (base, at, value) in cases.items():
        data = bytearray(original)
        data[base + at : base + at + len(value)] = value
        _refresh_crc(data, base)
        bad = tmp_path / f"{name}.slbl"
        bad.write_bytes(bytes(data))
        with pytest.raises(FormatError) as info:
            sl.open_labels(bad)
        assert str(bad) in str(info.value)
        assert not sl.validate(bad).ok


def test_lying_index_with_valid_crc_is_caught_before_use(good, tmp_path):
    """Point a record outside its chunk and fix the index CRC: the structural checks refuse it at open."""
    path, _ = good
    data = bytearray(path.read_bytes())
    with sl.LabelFile(path) as f:
        index_offset = f.footer.index_offset
        num_seq = len(f)
    record_offset_col = index_offset + 8 * 2 * (num_seq + 1)
    data[record_offset_col + 8 : record_offset_col + 16] = struct.pack("<Q", 2**40)
    index_end = len(data) - FOOTER_SIZE
    crc = zlib.crc32(bytes(data[index_offset:index_end]))
    data[index_end + 52 : index_end + 56] = struct.pack("<I", crc)
    _refresh_crc(data, index_end)
    bad = tmp_path / "lying_index.slbl"
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="record of sequence 1 is not where its chunk layout puts it"):
        sl.open_labels(bad)


def test_not_a_label_file(tmp_path):
    bad = tmp_path / "x.slbl"
    bad.write_bytes(b"PK\x03\x04" + bytes(300))
    with pytest.raises(FormatError, match="bad magic"):
        sl.open_labels(bad)
    np.save(tmp_path / "y.npy", np.zeros(100))
    with pytest.raises(FormatError, match="not a sparse-label file"):
        sl.open_labels(tmp_path / "y.npy")


def test_a_raw_file_with_a_chunk_table_is_refused(tmp_path, monkeypatch):
    """spec/FORMAT.md section 9: raw chunks have no table. A file whose raw chunks carry one (written here by a
    raw codec patched to emit 8 bytes of table; the record CRCs cover it, so every read would pass) is refused
    when its index is checked."""
    from dataclasses import replace

    from sparselabels.codecs.raw import RawCodec

    encode = RawCodec.encode_chunk
    monkeypatch.setattr(RawCodec, "encode_chunk",
                        lambda self, chunk: replace(encode(self, chunk), table=np.zeros(8, np.uint8)))
    path = tmp_path / "a.slbl"
    with sl.LabelWriter(path, vocab_size=100, rounds=50, codec="raw") as w:
        w.write([3, 7], [49, 1], [0, 2])
    monkeypatch.setattr(RawCodec, "encode_chunk", encode)
    with pytest.raises(sl.FormatError, match="chunk 0 has a 8-byte table, but codec 'raw' has none"):
        sl.open_labels(path)
    assert not sl.validate(path).ok

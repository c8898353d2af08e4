"""An independent reader of spec/FORMAT.md, written from the spec alone (numpy, struct, zlib, msgpack).

It deliberately imports nothing from sparselabels: if the library and the spec drift apart, the golden
vector tests that compare the two fail. Other codecs plug in through ``CODEC_DECODERS``.
"""

from __future__ import annotations

import struct
import zlib

import msgpack
import numpy as np

MAGIC = b"\x89SLB\r\n\x1a\n"


class SpecError(Exception):
    pass


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _u32(buf: bytes, at: int) -> int:
    return struct.unpack_from("<I", buf, at)[0]


def _u64(buf: bytes, at: int) -> int:
    return struct.unpack_from("<Q", buf, at)[0]


def decode_raw(record: bytes, table: bytes, num_positions: int, num_labels: int, value_kind: str):
    w = 1 if value_kind == "count" else 2
    ids_at = (num_positions * w + 3) // 4 * 4
    values_at = ids_at + 4 * num_labels
    size = (values_at + w * num_labels + 7) // 8 * 8
    if len(record) != size:
        raise SpecError("raw record size")
    lpp = np.frombuffer(record, dtype="<u1" if w == 1 else "<u2", count=num_positions)
    ids = np.frombuffer(record, dtype="<u4", count=num_labels, offset=ids_at)
    values = np.frombuffer(record, dtype="<u1" if w == 1 else "<f2", count=num_labels, offset=values_at)
    indptr = np.concatenate([[0], np.cumsum(lpp, dtype=np.int64)])
    if indptr[-1] != num_labels:
        raise SpecError("raw lpp sum")
    return ids, values, indptr


CODEC_DECODERS = {"raw": decode_raw}


def _codec(name: str):
    if name not in CODEC_DECODERS:
        try:  # the compact codec's independent decoder, when it exists
            import spec_compact_decoder

            CODEC_DECODERS.update(spec_compact_decoder.DECODERS)
        except ImportError:
            pass
    if name not in CODEC_DECODERS:
        raise SpecError(f"no independent decoder for codec {name!r}")
    return CODEC_DECODERS[name]


def read(path) -> dict:
    """Decode a whole file into {"metadata", "sequences": [{"fingerprint", "positions": [[(id, value)...]]}]}."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 128 or data[:8] != MAGIC:
        raise SpecError("magic")
    if _crc(data[:60]) != _u32(data, 60):
        raise SpecError("header crc")
    major = struct.unpack_from("<H", data, 8)[0]
    if major != 1 or _u32(data, 12) != 64:
        raise SpecError("version/header size")
    meta_size, data_offset, meta_crc = _u64(data, 16), _u64(data, 24), _u32(data, 32)
    if data_offset != (64 + meta_size + 7) // 8 * 8:
        raise SpecError("data offset")
    meta_bytes = data[64 : 64 + meta_size]
    if _crc(meta_bytes) != meta_crc:
        raise SpecError("metadata crc")
    meta = msgpack.unpackb(meta_bytes, raw=False)
    footer = data[-64:]
    if footer[:8] != b"SLBINDEX" or _crc(footer[:60]) != _u32(footer, 60):
        raise SpecError("footer")
    index_offset, num_seq, num_chunks, num_pos, num_lab = (_u64(footer, 8 + 8 * k) for k in range(5))
    flags, index_crc = _u32(footer, 48), _u32(footer, 52)
    fp = bool(flags & 1)
    lengths = [num_seq + 1, num_seq + 1, num_seq, num_seq, num_seq] + ([num_seq] if fp else []) + [
        num_chunks + 1, num_chunks + 1, num_chunks, num_chunks]
    index = data[index_offset : len(data) - 64]
    if len(index) != 8 * sum(lengths) or _crc(index) != index_crc:
        raise SpecError("index")
    cols, at = [], 0
    for n in lengths:
        cols.append(np.frombuffer(index, dtype="<u8", count=n, offset=at).astype(np.int64))
        at += 8 * n
    pos_start, lab_start, rec_off, rec_size, rec_crc = cols[:5]
    fps = cols[5] if fp else None
    chunk_offset, chunk_first, table_off, table_size = cols[-4:]
    if pos_start[-1] != num_pos or lab_start[-1] != num_lab:
        raise SpecError("totals")
    decode = _codec(meta["codec"])
    kind = meta["value_kind"]
    sequences = []
    for c in range(num_chunks):
        head = data[chunk_offset[c] : chunk_offset[c] + 64]
        if head[:8] != b"SLBCHUNK" or _crc(head[:60]) != _u32(head, 60):
            raise SpecError(f"chunk {c} header")
        n, tsize, rsize = _u64(head, 24), _u64(head, 32), _u64(head, 40)
        esize = 40 if _u32(head, 48) & 1 else 32
        payload = data[chunk_offset[c] + 64 : chunk_offset[c] + 64 + n * esize + tsize + rsize]
        if _crc(payload) != _u32(head, 52):
            raise SpecError(f"chunk {c} payload crc")
        table = payload[n * esize : n * esize + tsize]
        assert table_off[c] == chunk_offset[c] + 64 + n * esize and table_size[c] == tsize
        for i in range(chunk_first[c], chunk_first[c + 1]):
            record = data[rec_off[i] : rec_off[i] + rec_size[i]]
            if zlib.crc32(record, zlib.crc32(table)) != rec_crc[i]:
                raise SpecError(f"record crc of sequence {i}")
            t, m = int(pos_start[i + 1] - pos_start[i]), int(lab_start[i + 1] - lab_start[i])
            ids, values, indptr = decode(record, table, t, m, kind)
            positions = []
            for p in range(t):
                lo, hi = int(indptr[p]), int(indptr[p + 1])
                vals = [float(v) if kind == "prob" else int(v) for v in values[lo:hi]]
                positions.append([[int(x), v] for x, v in zip(ids[lo:hi], vals, strict=True)])
            sequences.append({"fingerprint": None if fps is None else int(np.uint64(fps[i])),
                              "positions": positions})
    return {"metadata": meta, "sequences": sequences}

"""An independent reader of spec/FORMAT.md, written from the spec alone (numpy, struct, zlib, msgpack).

It deliberately imports nothing from sparselabels: if the library and the spec drift apart, the golden
vector tests that compare the two fail. It decodes every valid vector and refuses every invalid one
(spec/vectors/invalid/), checking what section 12 says a reader checks, in that order, then what a full
validation adds (chunk headers and entries). Other codecs plug in through ``CODECS``.
"""

from __future__ import annotations

import math
import re
import struct
import zlib

import msgpack
import numpy as np

MAGIC = b"\x89SLB\r\n\x1a\n"
MAX_METADATA = 16 << 20
INT63 = 1 << 63
REQUIRED_KEYS = ("format_version", "vocab_size", "value_kind", "rounds", "codec", "library_version")
OPTIONAL_TYPES = {"teacher": str, "teacher_fingerprint": str, "tokenizer_fingerprint": str, "temperature": (int, float),
                  "seed": int, "source_fingerprint": str, "topk": int, "codec_options": dict, "user": dict,
                  "generation": dict, "shard": dict, "converted_from": dict}  # section 5


class SpecError(Exception):
    pass


def _need(ok, reason: str) -> None:
    if not ok:
        raise SpecError(reason)


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _u32(buf: bytes, at: int) -> int:
    return struct.unpack_from("<I", buf, at)[0]


def _u64(buf: bytes, at: int) -> int:
    return struct.unpack_from("<Q", buf, at)[0]


def _align(n: int, to: int = 8) -> int:
    return (n + to - 1) // to * to


def decode_raw(record: bytes, table: bytes, num_positions: int, num_labels: int, value_kind: str):
    """Section 9."""
    w = 1 if value_kind == "count" else 2
    ids_at = _align(num_positions * w, 4)
    values_at = ids_at + 4 * num_labels
    _need(len(record) == _align(values_at + w * num_labels), "raw record size")
    _need(not any(record[num_positions * w : ids_at]) and not any(record[values_at + w * num_labels :]),
          "raw record padding is not zero")
    lpp = np.frombuffer(record, dtype="<u1" if w == 1 else "<u2", count=num_positions)
    ids = np.frombuffer(record, dtype="<u4", count=num_labels, offset=ids_at)
    values = np.frombuffer(record, dtype="<u1" if w == 1 else "<f2", count=num_labels, offset=values_at)
    indptr = np.concatenate([[0], np.cumsum(lpp, dtype=np.int64)])
    _need(indptr[-1] == num_labels, "raw lpp sum is not M")
    return ids, values, indptr


# codec name -> (decoder, most positions and labels one record byte holds (section 12), whether chunks have tables)
CODECS = {"raw": (decode_raw, 1, False)}


def _codec(name: str):
    if name not in CODECS:
        try:  # the rans codec's independent decoder, when it exists
            import spec_rans_decoder

            CODECS.update(spec_rans_decoder.CODECS)
        except ImportError:
            pass
    _need(name in CODECS, f"metadata: codec {name!r} is not known")
    return CODECS[name]


def _no_ext(code: int, data: bytes):
    raise SpecError(f"metadata: extension type {code}")


def _map(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    _need(all(isinstance(k, str) for k in keys), "metadata: a map key is not a str")
    _need(len(set(keys)) == len(keys), f"metadata: a key appears twice in a map ({keys})")
    return dict(pairs)


def _tree(value, level: int) -> int:
    """Types of section 5, and maps and arrays at most 32 levels deep (the top-level map is level 1); returns
    how many maps and arrays ``value`` holds, itself included."""
    if isinstance(value, dict | list):
        _need(level <= 32, "metadata: nested deeper than 32 levels")
        return 1 + sum(_tree(item, level + 1) for item in (value.values() if isinstance(value, dict) else value))
    _need(value is None or isinstance(value, bool | int | float | str | bytes), "metadata: type not allowed")
    return 0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _metadata(raw: bytes) -> dict:
    """Section 5: a msgpack map filling ``raw`` exactly, with the required keys and valid known keys."""
    try:
        meta = msgpack.unpackb(raw, raw=False, strict_map_key=False, ext_hook=_no_ext, object_pairs_hook=_map)
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(f"metadata: not one msgpack value ({type(exc).__name__})") from None
    _need(isinstance(meta, dict), "metadata: not a map")
    _need(_tree(meta, 1) <= 65536, "metadata: more than 65536 maps and arrays")
    for key in REQUIRED_KEYS:
        _need(key in meta, f"metadata: required key {key!r} is missing")
    _need(isinstance(meta["format_version"], str) and re.fullmatch(r"1\.(0|[1-9][0-9]*)", meta["format_version"]),
          "metadata: format_version")
    _need(_is_int(meta["vocab_size"]) and 1 <= meta["vocab_size"] <= 1 << 32, "metadata: vocab_size")
    _need(meta["value_kind"] in ("count", "prob"), "metadata: value_kind")
    rounds = meta["rounds"]
    _need((_is_int(rounds) and 1 <= rounds <= 255) if meta["value_kind"] == "count" else rounds is None,
          "metadata: rounds")
    _need(isinstance(meta["codec"], str) and isinstance(meta["library_version"], str), "metadata: codec or version")
    for key, types in OPTIONAL_TYPES.items():
        value = meta.get(key)
        _need(value is None or (isinstance(value, types) and not isinstance(value, bool)), f"metadata: {key} type")
    temperature = meta.get("temperature")
    _need(temperature is None or (math.isfinite(temperature) and temperature > 0), "metadata: temperature")
    return meta


def _check_labels(ids, values, indptr, meta: dict, where: str) -> None:
    """Section 1, per position."""
    for p in range(len(indptr) - 1):
        at = f"{where}, position {p}"
        pid, pv = ids[indptr[p] : indptr[p + 1]].astype(np.int64), values[indptr[p] : indptr[p + 1]]
        _need(np.all(pid < meta["vocab_size"]), f"{at}: an id is not below vocab_size")
        _need(np.all(np.diff(pid) > 0), f"{at}: ids are not strictly ascending")
        if meta["value_kind"] == "count":
            _need(np.all(pv >= 1), f"{at}: a count is 0")
            _need(pv.size == 0 or int(pv.sum(dtype=np.int64)) == meta["rounds"], f"{at}: counts do not sum to rounds")
        else:
            x = pv.astype(np.float64)
            _need(np.all((x > 0) & (x <= 1)), f"{at}: a probability is not in (0, 1]")
            _need(x.sum() <= 1 + 0.001, f"{at}: probabilities sum to more than 1 + 0.001")
            _need(x.size <= 65535, f"{at}: more than 65,535 labels")


def read(path) -> dict:
    """Decode a whole file into {"metadata", "sequences": [{"fingerprint", "positions": [[(id, value)...]]}]}.

    Raises SpecError on the first rule the file breaks."""
    with open(path, "rb") as f:
        data = f.read()
    n = len(data)
    # 1. header (section 4)
    _need(data[:8] == MAGIC[: min(n, 8)], "header: magic")
    _need(n >= 64, "incomplete file: shorter than a header")
    major, _minor, header_size, meta_size, data_offset, meta_crc, required = struct.unpack_from("<HHIQQII", data, 8)
    _need(major == 1, f"header: major version {major}, this reader reads 1")
    _need(_crc(data[:60]) == _u32(data, 60), "header: CRC")
    _need(header_size == 64, "header: header_size")
    _need(required == 0, "header: unknown required feature bits")
    _need(not any(data[44:60]), "header: reserved bytes are not zero")
    _need(meta_size <= MAX_METADATA, "header: metadata_size")
    _need(data_offset == _align(64 + meta_size), "header: data_offset")
    # 2. metadata (section 5)
    _need(n >= data_offset + 64, "incomplete file: shorter than data_offset + 64")
    _need(_crc(data[64 : 64 + meta_size]) == meta_crc, "metadata: CRC")
    _need(not any(data[64 + meta_size : data_offset]), "metadata: padding is not zero")
    meta = _metadata(data[64 : 64 + meta_size])
    decode, per_byte, has_tables = _codec(meta["codec"])
    # 3. footer (section 7, 11)
    footer = data[-64:]
    _need(footer[:8] == b"SLBINDEX", "incomplete file: no footer magic")
    _need(_crc(footer[:60]) == _u32(footer, 60), "footer: CRC")
    index_offset, num_seq, num_chunks, num_pos, num_lab = (_u64(footer, 8 + 8 * k) for k in range(5))
    flags, index_crc, reserved = _u32(footer, 48), _u32(footer, 52), _u32(footer, 56)
    _need(reserved == 0 and flags & ~1 == 0, "footer: reserved field or unknown flags")
    _need(max(index_offset, num_seq, num_chunks, num_pos, num_lab) < INT63, "footer: a count is >= 2^63")
    _need(index_offset % 8 == 0 and index_offset >= data_offset, "footer: index_offset")
    fp = bool(flags & 1)
    names = ["position_start", "label_start", "record_offset", "record_size", "record_crc32"] + ["fingerprint"] * fp
    names += ["chunk_offset", "chunk_first_sequence", "chunk_table_offset", "chunk_table_size"]
    lengths = [num_seq + 1, num_seq + 1, num_seq, num_seq, num_seq] + [num_seq] * fp
    lengths += [num_chunks + 1, num_chunks + 1, num_chunks, num_chunks]
    _need(index_offset + 8 * sum(lengths) + 64 == n, "footer: the index does not end where the footer starts")
    # 4. index CRC
    index = data[index_offset : n - 64]
    _need(_crc(index) == index_crc, "index: CRC")
    # 5. index invariants (section 12)
    raw_cols, at = {}, 0
    for name, length in zip(names, lengths, strict=True):
        raw_cols[name] = np.frombuffer(index, dtype="<u8", count=length, offset=at)
        at += 8 * length
    for name, col in raw_cols.items():
        _need(name == "fingerprint" or not col.size or col.max() < INT63, f"index: {name} holds a value >= 2^63")
    _need(not num_seq or raw_cols["record_crc32"].max() < 1 << 32, "index: record_crc32 >= 2^32")
    col = {name: c.astype(np.int64) for name, c in raw_cols.items()}
    for name, total in (("position_start", num_pos), ("label_start", num_lab)):
        a = col[name]
        _need(a[0] == 0 and a[-1] == total and np.all(np.diff(a) >= 0), f"index: {name} is not 0 .. {total} ascending")
    seq_pos, seq_lab = np.diff(col["position_start"]), np.diff(col["label_start"])
    chunk_offset, chunk_first = col["chunk_offset"], col["chunk_first_sequence"]
    _need(chunk_offset[0] == data_offset and chunk_offset[-1] == index_offset and np.all(np.diff(chunk_offset) > 0),
          "index: chunk_offset does not increase from data_offset to index_offset")
    _need(chunk_first[0] == 0 and chunk_first[-1] == num_seq and np.all(np.diff(chunk_first) > 0),
          "index: chunk_first_sequence does not increase from 0 to S")
    entry_size = 40 if fp else 32
    rec_off, rec_size = col["record_offset"], col["record_size"]
    for c in range(num_chunks):
        first, end = chunk_first[c], chunk_first[c + 1]
        table_at, table_size = col["chunk_table_offset"][c], col["chunk_table_size"][c]
        _need(table_at == chunk_offset[c] + 64 + (end - first) * entry_size and table_size % 8 == 0
              and table_at + table_size <= chunk_offset[c + 1] and (has_tables or table_size == 0),
              f"index: table of chunk {c}")
        at = table_at + table_size
        for i in range(first, end):
            _need(rec_off[i] == at and rec_size[i] % 8 == 0, f"index: record of sequence {i} is out of place")
            at += rec_size[i]
        _need(at == chunk_offset[c + 1], f"index: records of chunk {c} do not end where the next chunk starts")
    kind = meta["value_kind"]
    per_position = meta["rounds"] if kind == "count" else 65535
    many = np.flatnonzero((seq_lab + per_position - 1) // per_position > seq_pos)  # M > per_position * T
    _need(not many.size, f"index: sequence {many[0] if many.size else 0} claims more labels than its positions hold")
    over = (seq_pos > per_byte * rec_size) | (seq_lab > per_byte * rec_size)
    if meta["codec"] == "rans":  # rans.md section 5: positions and labels together, T + M <= 20·B
        over |= seq_pos > per_byte * rec_size - np.minimum(seq_lab, per_byte * rec_size)
    over = np.flatnonzero(over)
    _need(not over.size, f"index: sequence {over[0] if over.size else 0} claims more than its record can hold")
    # full validation: chunk headers and entries (section 6); then 6. every record and its labels
    sequences = []
    for c in range(num_chunks):
        start, stop, first, end = chunk_offset[c], chunk_offset[c + 1], chunk_first[c], chunk_first[c + 1]
        head = data[start : start + 64]
        _need(head[:8] == b"SLBCHUNK" and _crc(head[:60]) == _u32(head, 60), f"chunk {c}: header magic or CRC")
        number, first_seq, count, table_size, records_size = (_u64(head, 8 + 8 * k) for k in range(5))
        _need(_u32(head, 56) == 0, f"chunk {c}: reserved field is not zero")
        size = 64 + count * entry_size + table_size + records_size
        _need((number, first_seq, count, table_size, _u32(head, 48), size)
              == (c, first, end - first, col["chunk_table_size"][c], flags, stop - start),
              f"chunk {c}: header disagrees with the index")
        payload = data[start + 64 : stop]
        _need(_crc(payload) == _u32(head, 52), f"chunk {c}: payload CRC")
        entries = np.frombuffer(payload, dtype="<u8", count=count * entry_size // 8).reshape(count, -1)
        expected = [seq_pos[first:end], seq_lab[first:end], raw_cols["record_size"][first:end],
                    raw_cols["record_crc32"][first:end]] + ([raw_cols["fingerprint"][first:end]] if fp else [])
        _need(np.array_equal(entries, np.stack([e.astype(np.uint64) for e in expected], axis=1)),
              f"chunk {c}: entries disagree with the index")
        table = payload[count * entry_size : count * entry_size + table_size]
        for i in range(first, end):
            record = data[rec_off[i] : rec_off[i] + rec_size[i]]
            _need(zlib.crc32(record, zlib.crc32(table)) == col["record_crc32"][i], f"sequence {i}: record CRC")
            try:
                ids, values, indptr = decode(record, table, int(seq_pos[i]), int(seq_lab[i]), kind)
            except SpecError as exc:
                raise SpecError(f"sequence {i}: {exc}") from None
            _check_labels(ids, values, indptr, meta, f"sequence {i}")
            positions = []
            for p in range(int(seq_pos[i])):
                lo, hi = int(indptr[p]), int(indptr[p + 1])
                vals = [float(v) if kind == "prob" else int(v) for v in values[lo:hi]]
                positions.append([[int(x), v] for x, v in zip(ids[lo:hi], vals, strict=True)])
            sequences.append({"fingerprint": int(raw_cols["fingerprint"][i]) if fp else None, "positions": positions})
    return {"metadata": meta, "sequences": sequences}

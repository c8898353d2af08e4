"""Write the golden test vectors in spec/vectors/<codec>/: small label files and the JSON of their content.

Vectors are written once per codec and format version and then never changed: readers must keep decoding
them. This script refuses to overwrite an existing vector unless --force is given (use it only while a
codec is unreleased).

It also writes the *invalid* vectors in spec/vectors/invalid/<codec>/: each is a valid vector with one
targeted violation of a rule of spec/FORMAT.md or spec/codecs/<codec>.md, every CRC the rule does not concern
recomputed, and a JSON that names the rule, the library's exception and the stage that must refuse it.

    python tools/make_vectors.py                 # every vector (valid, then invalid) not written yet
    python tools/make_vectors.py --codec raw --force
    python tools/make_vectors.py --invalid       # only the invalid vectors
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import zlib
from pathlib import Path

import msgpack
import numpy as np

import sparselabels as sl
from sparselabels.codecs import available

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
INVALID = VECTORS / "invalid"


def _counts_sequence(rng: np.random.Generator, num_positions: int, vocab: int, rounds: int, max_k: int,
                     empty_every: int = 5):
    ids, counts, indptr = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [0]
    for t in range(num_positions):
        k = 0 if t % empty_every == empty_every - 1 else int(rng.integers(1, max_k + 1))
        chosen = np.sort(rng.choice(vocab, size=k, replace=False))
        c = np.ones(k, dtype=np.int64)
        if k:
            np.add.at(c, rng.integers(0, k, size=rounds - k), 1)
        ids.append(chosen)
        counts.append(c)
        indptr.append(indptr[-1] + k)
    return np.concatenate(ids).astype(np.uint32), np.concatenate(counts).astype(np.uint8), np.array(indptr)


def _prob_sequence(rng: np.random.Generator, num_positions: int, vocab: int, k_max: int):
    ids, probs, indptr = [np.zeros(0, np.int64)], [np.zeros(0, np.float16)], [0]
    for t in range(num_positions):
        k = 0 if t == 1 else int(rng.integers(1, k_max + 1))
        chosen = np.sort(rng.choice(vocab, size=k, replace=False))
        p = rng.dirichlet(np.ones(k + 1))[:k] if k else np.zeros(0)
        ids.append(chosen)
        probs.append(np.maximum(p, 1e-3).astype(np.float16))
        indptr.append(indptr[-1] + k)
    return np.concatenate(ids).astype(np.uint32), np.concatenate(probs), np.array(indptr)


def cases() -> dict[str, dict]:
    """Every vector: writer arguments and the sequences (ids, values, indptr, fingerprint)."""
    rng = np.random.default_rng(20261127)
    out: dict[str, dict] = {}
    out["empty_file"] = {"args": {"vocab_size": 32000, "rounds": 50}, "sequences": []}
    seqs = []
    for length in (7, 0, 12, 1, 9):
        ids, counts, indptr = _counts_sequence(rng, length, 1000, 50, 12)
        tokens = rng.integers(0, 1000, size=length)
        seqs.append((ids, counts, indptr, sl.input_fingerprint(tokens)))
    out["counts_fingerprints_chunks"] = {
        "args": {"vocab_size": 1000, "rounds": 50, "chunk_bytes": 256,
                 "metadata": {"teacher": "vector-teacher", "seed": 7, "temperature": 1.0, "user": {"note": "v"}}},
        "sequences": seqs,
    }
    # One position with 255 labels (rounds = 255, every count 1), the largest id, an empty position.
    full = np.sort(rng.choice(128255, size=254, replace=False)).astype(np.uint32)
    ids = np.concatenate([full, [128255], [0, 128255]]).astype(np.uint32)
    counts = np.concatenate([np.ones(255), [100, 155]]).astype(np.uint8)
    out["counts_255_labels_max_id"] = {
        "args": {"vocab_size": 128256, "rounds": 255},
        "sequences": [(ids, counts, np.array([0, 255, 255, 257]), None)],
    }
    big = [
        (np.array([0, 2**32 - 2, 2**32 - 1], dtype=np.uint32), np.array([2, 1, 1], dtype=np.uint8),
         np.array([0, 1, 3]), None),
    ]
    out["counts_vocab_2pow32"] = {"args": {"vocab_size": 2**32, "rounds": 2}, "sequences": big}
    prob = [(*_prob_sequence(rng, n, 50000, 12), None) for n in (5, 3)]
    out["prob_topk"] = {"args": {"vocab_size": 50000, "value_kind": "prob", "metadata": {"topk": 12}},
                        "sequences": prob}
    # Odd M (the probabilities need padding to 8 bytes in a rans record) and a position of 300 labels (the
    # labels-per-position escape past 255).
    wide = np.sort(rng.choice(50000, size=300, replace=False)).astype(np.uint32)
    wide_ids = np.concatenate([wide, [7]]).astype(np.uint32)
    wide_probs = np.concatenate([np.full(300, 1 / 400), [0.5]]).astype(np.float16)
    out["prob_odd_labels_wide_position"] = {"args": {"vocab_size": 50000, "value_kind": "prob"},
                                            "sequences": [(wide_ids, wide_probs, np.array([0, 300, 300, 301]), None)]}
    # A newer minor version with an optional feature bit set: a reader of this major version reads it as usual
    # (spec/FORMAT.md section 10).
    ids, counts, indptr = _counts_sequence(rng, 6, 1000, 50, 8)
    out["future_minor_optional_feature"] = {"args": {"vocab_size": 1000, "rounds": 50}, "header": {"minor": 3,
                                            "optional_features": 1 << 31}, "sequences": [(ids, counts, indptr, None)]}
    return out


def _patch_header(path: Path, *, minor: int, optional_features: int) -> None:
    """Set the header's minor version and optional feature bits, and its CRC (spec/FORMAT.md section 4)."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 10, minor)
    struct.pack_into("<I", data, 40, optional_features)
    struct.pack_into("<I", data, 60, zlib.crc32(bytes(data[:60])))
    path.write_bytes(bytes(data))


def expected_json(args: dict, sequences: list) -> dict:
    kind = args.get("value_kind", "count")
    body = {"vocab_size": args["vocab_size"], "value_kind": kind, "rounds": args.get("rounds"),
            "metadata": args.get("metadata", {}), "sequences": []}
    for ids, values, indptr, fp in sequences:
        positions = []
        for t in range(len(indptr) - 1):
            lo, hi = int(indptr[t]), int(indptr[t + 1])
            vals = [float(v) if kind == "prob" else int(v) for v in values[lo:hi]]
            positions.append([[int(i), v] for i, v in zip(ids[lo:hi], vals, strict=True)])
        body["sequences"].append({"fingerprint": fp, "positions": positions})
    return body


def _dump(body: dict) -> str:
    """JSON with one line per sequence: readable, and diffs stay local."""
    head = {k: v for k, v in body.items() if k != "sequences"}
    lines = [json.dumps(head)[:-1] + ', "sequences": [']
    lines += [" " + json.dumps(s) + ("," if i < len(body["sequences"]) - 1 else "")
              for i, s in enumerate(body["sequences"])]
    return "\n".join(lines) + "\n]}\n"


def write_vectors(codec: str, *, force: bool) -> list[Path]:
    directory = VECTORS / codec
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, case in cases().items():
        path = directory / f"{name}.slbl"
        if path.exists() and not force:
            print(f"keep {path} (exists)")
            continue
        args = {"value_kind": "count", **case["args"]}
        with sl.LabelWriter(path, codec=codec, overwrite=True, **args) as w:
            for ids, values, indptr, fp in case["sequences"]:
                w.write(ids, values, indptr, fingerprint=fp)
        if "header" in case:
            _patch_header(path, **case["header"])
        (directory / f"{name}.json").write_text(_dump(expected_json(args, case["sequences"])))
        written.append(path)
        print(f"wrote {path}")
    return written

# ------------------------------------------------------------------------------------------------ invalid vectors


def _crc(data) -> int:
    return zlib.crc32(bytes(data)) & 0xFFFFFFFF


_WIDTHS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


class _Edit:
    """A valid vector's bytes and layout (read from its own header, footer and index), edited in place.

    The ``seal_*`` methods recompute CRCs after an edit, innermost first, so that an invalid vector breaks the one
    rule it is about and not, in passing, a checksum that a reader checks before it (and would report instead)."""

    def __init__(self, data: bytes, content: dict | None = None) -> None:
        self.data = bytearray(data)
        self.content = content  # the base vector's JSON
        self.where: dict = {}  # location facts an edit works out (merged into the vector's JSON)
        self.data_offset = self.u(24, 8)
        self.footer = len(data) - 64
        self.index_offset, num_seq, num_chunks = (self.u(self.footer + at, 8) for at in (8, 16, 24))
        self.entry_size = 40 if self.u(self.footer + 48, 4) & 1 else 32
        lengths = [("position_start", num_seq + 1), ("label_start", num_seq + 1), ("record_offset", num_seq),
                   ("record_size", num_seq), ("record_crc32", num_seq)]
        lengths += [("fingerprint", num_seq)] * (self.entry_size == 40)
        lengths += [("chunk_offset", num_chunks + 1), ("chunk_first_sequence", num_chunks + 1),
                    ("chunk_table_offset", num_chunks), ("chunk_table_size", num_chunks)]
        self.lengths, self.columns, at = dict(lengths), {}, self.index_offset
        for name, n in lengths:
            self.columns[name] = at
            at += 8 * n

    def u(self, at: int, width: int) -> int:
        return struct.unpack_from(_WIDTHS[width], self.data, at)[0]

    def put(self, at: int, width: int, value: int) -> None:
        struct.pack_into(_WIDTHS[width], self.data, at, value)

    def col(self, name: str, i: int) -> int:
        return self.u(self.columns[name] + 8 * i, 8)

    def set_col(self, name: str, i: int, value: int) -> None:
        self.put(self.columns[name] + 8 * i, 8, value)

    def entry(self, c: int, i: int, field: int) -> int:
        """Offset of an entry field of sequence ``i`` in chunk ``c``: 0 positions, 1 labels, 2 record_size,
        3 record_crc32, 4 fingerprint (spec/FORMAT.md section 6)."""
        j = i - self.col("chunk_first_sequence", c)
        return self.col("chunk_offset", c) + 64 + j * self.entry_size + 8 * field

    def chunk_of(self, i: int) -> int:
        return next(c for c in range(self.lengths["chunk_table_size"]) if self.col("chunk_first_sequence", c + 1) > i)

    def raw_record(self, i: int, value_width: int) -> tuple[int, int]:
        """(offset of ids, offset of values) of sequence ``i``'s raw record (section 9)."""
        num_pos = self.col("position_start", i + 1) - self.col("position_start", i)
        num_labels = self.col("label_start", i + 1) - self.col("label_start", i)
        ids_at = self.col("record_offset", i) + (num_pos * value_width + 3) // 4 * 4
        return ids_at, ids_at + 4 * num_labels

    def seal_header(self) -> None:
        self.put(60, 4, _crc(self.data[:60]))

    def seal_metadata(self) -> None:
        self.put(32, 4, _crc(self.data[64 : 64 + self.u(16, 8)]))
        self.seal_header()

    def seal_footer(self) -> None:
        self.put(self.footer + 60, 4, _crc(self.data[self.footer : self.footer + 60]))

    def seal_index(self) -> None:
        self.put(self.footer + 52, 4, _crc(self.data[self.index_offset : self.footer]))
        self.seal_footer()

    def seal_chunk_header(self, c: int) -> None:
        at = self.col("chunk_offset", c)
        self.put(at + 60, 4, _crc(self.data[at : at + 60]))

    def seal_chunk(self, c: int, *, records: bool = True) -> None:
        """Chunk ``c``'s record CRCs (``records``: in its entries and in the index), payload and header CRCs, and
        the index and footer CRCs."""
        start, end = self.col("chunk_offset", c), self.col("chunk_offset", c + 1)
        table_at = self.col("chunk_table_offset", c)
        table = bytes(self.data[table_at : table_at + self.col("chunk_table_size", c)])
        sequences = range(self.col("chunk_first_sequence", c), self.col("chunk_first_sequence", c + 1))
        for i in sequences if records else ():
            at = self.col("record_offset", i)
            crc = zlib.crc32(bytes(self.data[at : at + self.col("record_size", i)]), zlib.crc32(table))
            self.set_col("record_crc32", i, crc)
            self.put(self.entry(c, i, 3), 8, crc)
        self.put(start + 52, 4, _crc(self.data[start + 64 : end]))
        self.seal_chunk_header(c)
        self.seal_index()

    def metadata(self) -> list[tuple[str, object]]:
        return list(msgpack.unpackb(bytes(self.data[64 : 64 + self.u(16, 8)])).items())

    def with_metadata(self, pairs: list[tuple[str, object]]) -> _Edit:
        """The file with the metadata map ``pairs`` (a list: a key may repeat) and the data moved to the new
        data_offset. Chunks hold no absolute offsets, so only the index and the footer change; every CRC is
        recomputed."""
        packer = msgpack.Packer(use_bin_type=True)
        meta = packer.pack_map_header(len(pairs)) + b"".join(packer.pack(k) + packer.pack(v) for k, v in pairs)
        data_offset = (64 + len(meta) + 7) // 8 * 8
        shift = data_offset - self.data_offset
        for name in ("record_offset", "chunk_offset", "chunk_table_offset"):
            for i in range(self.lengths[name]):
                self.set_col(name, i, self.col(name, i) + shift)
        self.put(self.footer + 8, 8, self.index_offset + shift)
        self.put(16, 8, len(meta))
        self.put(24, 8, data_offset)
        padding = bytes(data_offset - 64 - len(meta))
        edit = _Edit(bytes(self.data[:64]) + meta + padding + bytes(self.data[self.data_offset :]), self.content)
        edit.where = self.where
        edit.seal_metadata()
        edit.seal_index()
        return edit


INVALID_CASES: dict[str, dict] = {}


def _invalid(codec: str, base: str, error: str, stage: str, rule: str, name: str | None = None, **where):
    """Register an invalid vector spec/vectors/invalid/<codec>/<name>: ``edit(f)`` breaks ``rule`` in ``f``, an
    _Edit of spec/vectors/<codec>/<base>.slbl, and returns nothing or a new _Edit. ``error`` and ``stage``: the
    library's exception class and when it must raise (open, read of every sequence, or validate only);
    ``where``: what the error must name (section, field, chunk, sequence, position)."""

    def register(edit):
        json_body = {"rule": rule, "error": error, "stage": stage, "base": f"{codec}/{base}", "where": where}
        INVALID_CASES[f"{codec}/{name or edit.__name__}"] = {"codec": codec, "base": base, "edit": edit,
                                                              "json": json_body}
        return edit

    return register


def _raw(rule: str, error: str, stage: str, base: str = "counts_fingerprints_chunks", **where):
    return _invalid("raw", base, error, stage, rule, **where)


# -- header, metadata (spec/FORMAT.md sections 4, 5, 10), refused at open

@_raw("FORMAT.md 4: magic is 89 53 4C 42 0D 0A 1A 0A (here its first byte lost bit 7, as in a 7-bit transfer)",
      "FormatError", "open", section="header")
def bad_magic(f):
    f.data[0] = 0x09
    f.seal_header()


@_raw("FORMAT.md 10: a reader refuses a major version it does not know, naming both (version_major 2)",
      "FormatError", "open", section="header", field="version")
def major_version_2(f):
    f.put(8, 2, 2)
    f.seal_header()


@_raw("FORMAT.md 10: a reader refuses a file with a required_features bit it does not know (bit 0)",
      "FormatError", "open", section="header", field="required feature")
def unknown_required_feature(f):
    f.put(36, 4, 1)
    f.seal_header()


@_raw("FORMAT.md 4: header_crc32 is the CRC-32 of bytes 0..59 (stored value with one bit flipped)",
      "ChecksumError", "open", section="header")
def header_crc(f):
    f.put(60, 4, f.u(60, 4) ^ 1)


@_raw("FORMAT.md 4: the 16 reserved header bytes are zero (the last is 1)", "FormatError", "open", section="header",
      field="reserved")
def header_reserved_nonzero(f):
    f.data[59] = 1
    f.seal_header()


@_raw("FORMAT.md 4: metadata_crc32 is the CRC-32 of the metadata bytes (stored value with one bit flipped)",
      "ChecksumError", "open", section="metadata")
def metadata_crc(f):
    f.put(32, 4, f.u(32, 4) ^ 1)
    f.seal_header()


@_raw("FORMAT.md 2, 12: all padding bytes are zero, the metadata padding included (its first byte is 1)",
      "FormatError", "open", section="metadata", field="padding")
def metadata_padding_nonzero(f):
    f.data[64 + f.u(16, 8)] = 1


@_raw("FORMAT.md 5: required key library_version (absent)", "FormatError", "open", section="metadata",
      field="library_version")
def metadata_missing_key(f):
    return f.with_metadata([(k, v) for k, v in f.metadata() if k != "library_version"])


@_raw("FORMAT.md 5: vocab_size is an int (here the str \"1000\")", "FormatError", "open", section="metadata",
      field="vocab_size")
def metadata_wrong_type(f):
    return f.with_metadata([(k, str(v) if k == "vocab_size" else v) for k, v in f.metadata()])


@_raw("FORMAT.md 5: map keys appear at most once per map (teacher twice, with the same value)", "FormatError",
      "open", section="metadata", field="teacher")
def metadata_duplicate_key(f):
    pairs = f.metadata()
    return f.with_metadata([*pairs, *(p for p in pairs if p[0] == "teacher")])


@_raw("FORMAT.md 5, 12: the codec is known; a reader refuses an unknown one by name (codec \"zstd\")",
      "FormatError", "open", field="codec")
def unknown_codec(f):
    return f.with_metadata([(k, "zstd" if k == "codec" else v) for k, v in f.metadata()])


# -- footer and index (sections 7, 11, 12), refused at open

@_raw("FORMAT.md 11: a file without a footer magic in its last 64 bytes was interrupted and is refused as "
      "incomplete (cut where the index starts)", "IncompleteFileError", "open", section="footer")
def interrupted_no_footer(f):
    del f.data[f.index_offset :]


@_raw("FORMAT.md 7, 11: footer_crc32 is the CRC-32 of bytes 0..59; a footer whose CRC does not check is corrupt "
      "(stored value with one bit flipped)", "ChecksumError", "open", section="footer")
def footer_crc(f):
    f.put(f.footer + 60, 4, f.u(f.footer + 60, 4) ^ 1)


@_raw("FORMAT.md 12: index_offset + index_size + 64 = file_size, index_size = 8 * (5S + 4C + 4) [+ 8S] "
      "(footer num_chunks one too many)", "FormatError", "open", section="footer")
def footer_index_size_mismatch(f):
    f.put(f.footer + 24, 8, f.u(f.footer + 24, 8) + 1)
    f.seal_footer()


@_raw("FORMAT.md 7: index_crc32 is the CRC-32 of the whole index (stored value with one bit flipped)",
      "ChecksumError", "open", section="index")
def index_crc(f):
    f.put(f.footer + 52, 4, f.u(f.footer + 52, 4) ^ 1)
    f.seal_footer()


@_raw("FORMAT.md 12: position_start never decreases (position_start[1] = 8 > position_start[2] = 7)",
      "FormatError", "open", section="index", field="position_start")
def position_start_decreasing(f):
    f.set_col("position_start", 1, 8)
    f.seal_index()


@_raw("FORMAT.md 12: label_start ends at the footer's num_labels (the footer says one more)", "FormatError",
      "open", section="index", field="label_start")
def label_start_not_total(f):
    f.put(f.footer + 40, 8, f.u(f.footer + 40, 8) + 1)
    f.seal_footer()


@_raw("FORMAT.md 12: chunk offsets strictly increase from data_offset to index_offset "
      "(chunk_offset[2] = chunk_offset[1])", "FormatError", "open", section="index")
def chunk_offset_not_increasing(f):
    f.set_col("chunk_offset", 2, f.col("chunk_offset", 1))
    f.seal_index()


@_raw("FORMAT.md 12: a chunk's records follow each other without gaps (or overlaps): record 4 starts 8 bytes "
      "inside record 3", "FormatError", "open", section="index", sequence=4)
def record_offset_overlap(f):
    f.set_col("record_offset", 4, f.col("record_offset", 4) - 8)
    f.seal_index()


@_raw("FORMAT.md 12: no sequence claims more positions than its codec can store in its record (raw: 1 per byte): "
      "sequence 1 claims a position in its 0-byte record (position_start[2:] and the footer's num_positions one "
      "more, the chunk entry to match)", "FormatError", "open", section="index", sequence=1)
def sequence_over_capacity(f):
    for i in range(2, f.lengths["position_start"]):
        f.set_col("position_start", i, f.col("position_start", i) + 1)
    f.put(f.footer + 32, 8, f.u(f.footer + 32, 8) + 1)
    f.put(f.entry(1, 1, 0), 8, 1)
    f.seal_chunk(1, records=False)


# -- chunks (section 6), refused by a full validation only

@_raw("FORMAT.md 6: a chunk's header_crc32 is the CRC-32 of its bytes 0..59 (stored value with one bit flipped)",
      "ChecksumError", "validate", chunk=1)
def chunk_header_crc(f):
    at = f.col("chunk_offset", 1) + 60
    f.put(at, 4, f.u(at, 4) ^ 1)


@_raw("FORMAT.md 6: payload_crc32 is the CRC-32 of the whole chunk payload (stored value with one bit flipped)",
      "ChecksumError", "validate", chunk=1)
def chunk_payload_crc(f):
    at = f.col("chunk_offset", 1) + 52
    f.put(at, 4, f.u(at, 4) ^ 1)
    f.seal_chunk_header(1)


@_raw("FORMAT.md 6, 12: chunk_index is c for the c-th chunk, and a full validation checks every chunk header "
      "against the index (chunk 2 says 1)", "FormatError", "validate", chunk=2)
def chunk_header_disagrees(f):
    f.put(f.col("chunk_offset", 2) + 8, 8, 1)
    f.seal_chunk_header(2)


@_raw("FORMAT.md 12: a full validation checks that the chunk entries agree with the index columns (the entry "
      "fingerprint of sequence 4 differs in one bit)", "FormatError", "validate", chunk=2)
def chunk_entry_disagrees(f):
    at = f.entry(2, 4, 4)
    f.put(at, 8, f.u(at, 8) ^ 1)
    f.seal_chunk(2, records=False)


# -- records (sections 6, 9) and label rules (section 1), refused when the sequence is read

@_raw("FORMAT.md 6, 12: the record checksum is checked before decoding (sequence 2's first id 122 -> 123, still a "
      "valid label; payload CRC updated, record CRC not)", "ChecksumError", "read", sequence=2)
def record_crc(f):
    ids_at, _ = f.raw_record(2, 1)
    f.put(ids_at, 4, 123)
    f.seal_chunk(1, records=False)


@_raw("FORMAT.md 9, 12: a raw record is exactly align8(align4(T*w) + 4*M + v*M) bytes: sequence 3 claims 5 "
      "labels in its 24-byte record (label_start[4:] and the footer's num_labels one more, the chunk entry to match)",
      "FormatError", "read", sequence=3)
def raw_record_size(f):
    for i in range(4, f.lengths["label_start"]):
        f.set_col("label_start", i, f.col("label_start", i) + 1)
    f.put(f.footer + 40, 8, f.u(f.footer + 40, 8) + 1)
    f.put(f.entry(2, 3, 1), 8, f.u(f.entry(2, 3, 1), 8) + 1)
    f.seal_chunk(2, records=False)


@_raw("FORMAT.md 9: padding bytes are zero (the last byte of sequence 0's record is 1)", "FormatError", "read",
      sequence=0)
def raw_padding_nonzero(f):
    f.data[f.col("record_offset", 0) + f.col("record_size", 0) - 1] = 1
    f.seal_chunk(0)


@_raw("FORMAT.md 9: the labels per position sum to M (empty position 4 of sequence 0 claims 1 label)",
      "FormatError", "read", sequence=0)
def raw_lpp_sum(f):
    f.data[f.col("record_offset", 0) + 4] = 1
    f.seal_chunk(0)


@_raw("FORMAT.md 1: ids are strictly ascending within a position (the first two labels of sequence 2, "
      "position 0, swapped with their counts)", "FormatError", "read", sequence=2, position=0)
def ids_not_ascending(f):
    ids_at, values_at = f.raw_record(2, 1)
    f.data[ids_at : ids_at + 8] = f.data[ids_at + 4 : ids_at + 8] + f.data[ids_at : ids_at + 4]
    f.data[values_at], f.data[values_at + 1] = f.data[values_at + 1], f.data[values_at]
    f.seal_chunk(1)


@_raw("FORMAT.md 1: ids are below vocab_size (the last id of sequence 2, position 0, set to vocab_size = 1000)",
      "FormatError", "read", sequence=2, position=0)
def id_out_of_vocab(f):
    ids_at, _ = f.raw_record(2, 1)
    f.put(ids_at + 4 * 8, 4, 1000)
    f.seal_chunk(1)


@_raw("FORMAT.md 1: every count is >= 1 (sequence 2, position 0: a count set to 0, its draws added to the next "
      "label, so the sum is still rounds)", "FormatError", "read", sequence=2, position=0)
def count_zero(f):
    _, values_at = f.raw_record(2, 1)
    f.data[values_at + 1] += f.data[values_at]
    f.data[values_at] = 0
    f.seal_chunk(1)


@_raw("FORMAT.md 1: the counts of a non-empty position sum to exactly rounds (sequence 2, position 0: one more)",
      "FormatError", "read", sequence=2, position=0)
def counts_not_rounds(f):
    _, values_at = f.raw_record(2, 1)
    f.data[values_at] += 1
    f.seal_chunk(1)


@_raw("FORMAT.md 1: probabilities are in (0, 1] (sequence 0, position 0: the first is 0)", "FormatError", "read",
      base="prob_topk", sequence=0, position=0)
def prob_zero(f):
    _, values_at = f.raw_record(0, 2)
    f.put(values_at, 2, 0)
    f.seal_chunk(0)


@_raw("FORMAT.md 1: a position's probabilities sum to at most 1 + 0.001 (sequence 0, position 0: the first two "
      "are 0.75)", "FormatError", "read", base="prob_topk", sequence=0, position=0)
def prob_sum_above_one(f):
    _, values_at = f.raw_record(0, 2)
    f.data[values_at : values_at + 4] = np.array([0.75, 0.75], dtype="<f2").tobytes()
    f.seal_chunk(0)


# -- the rans codec (spec/codecs/rans.md), refused when a sequence is read

def _rans(rule: str, error: str = "FormatError", stage: str = "read", base: str = "counts_fingerprints_chunks",
          **where):
    return _invalid("rans", base, error, stage, rule, **where)


def _rans_frequencies(table: bytes) -> tuple[list[int], int]:
    """Offsets of the one-byte LEB128 frequencies of a rans chunk table (rans.md section 2), and where its padding
    starts."""
    at, ones = 9 + table[6] * table[7] + table[7], []  # past the fixed fields, gap_map and count_map
    for _ in range(table[3]):
        count = struct.unpack_from("<H", table, at + 1)[0]
        at += 3
        for _ in range(count):
            if table[at] & 0x80:
                at += 2
            else:
                ones.append(at)
                at += 1
    return ones, at


def _rans_records(f: _Edit):
    """(sequence, record offset, record size, raw_words, end of stream 1) of every sequence (kind count)."""
    for i in range(f.lengths["record_size"]):
        at, size = f.col("record_offset", i), f.col("record_size", i)
        raw_words, words0, words1 = (f.u(at + 4 * k, 4) for k in range(3))
        yield i, at, size, raw_words, 16 + 8 * raw_words + 2 * words0 + 2 * words1


@_rans("rans.md 2, 7: prob_bits is 8 (chunk 0's table says 10, the pre-release precision)", sequence=0)
def rans_table_prob_bits_10(f):
    f.data[f.col("chunk_table_offset", 0) + 1] = 10
    f.seal_chunk(0)


@_rans("rans.md 2: a model's frequencies sum to exactly SCALE = 256 (chunk 0: one frequency one less)", sequence=0)
def rans_table_frequency_sum(f):
    at = f.col("chunk_table_offset", 0)
    ones, _ = _rans_frequencies(bytes(f.data[at : at + f.col("chunk_table_size", 0)]))
    first = next(j for j in ones if f.data[at + j] >= 2)
    f.data[at + first] -= 1
    f.seal_chunk(0)


@_rans("rans.md 2: a two-byte LEB128 frequency's second byte is not zero (canonical form): a one-byte frequency "
       "written as two bytes, in place of a byte of the table's zero padding")
def rans_table_leb128_non_canonical(f):
    for c in range(f.lengths["chunk_table_size"]):
        at, size = f.col("chunk_table_offset", c), f.col("chunk_table_size", c)
        table = bytes(f.data[at : at + size])
        ones, padding = _rans_frequencies(table)
        if padding < size:
            j = ones[0]
            f.data[at : at + size] = table[:j] + bytes([table[j] | 0x80, 0]) + table[j + 1 : -1]
            f.where["sequence"] = f.col("chunk_first_sequence", c)
            f.seal_chunk(c)
            return
    raise AssertionError("no chunk table with padding")


@_rans("rans.md 3: the record header's reserved u32 is 0 (sequence 0's is 1)", sequence=0)
def rans_record_reserved_nonzero(f):
    f.put(f.col("record_offset", 0) + 12, 4, 1)
    f.seal_chunk(0)


@_rans("rans.md 4: at the end both rANS streams have every word read (words1 one more: a padding word of the "
       "record joins stream 1 and is never read; the record size is unchanged)")
def rans_stream_word_unread(f):
    i, at, _, _, _ = next(r for r in _rans_records(f) if r[2] - r[4] >= 2)
    f.put(at + 8, 4, f.u(at + 8, 4) + 1)
    f.where["sequence"] = i
    f.seal_chunk(f.chunk_of(i))


@_rans("rans.md 4: the bits of the last raw word at and above bit rp mod 64 are zero (bit 63 of the last raw word "
       "set, a bit the decoder never reads)")
def rans_raw_bits_nonzero(f):
    i, at, _, raw_words, _ = next(r for r in _rans_records(f) if r[3] >= 1)
    last = at + 16 + 8 * (raw_words - 1)
    f.put(last, 8, f.u(last, 8) | 1 << 63)
    f.where["sequence"] = i
    f.seal_chunk(f.chunk_of(i))


@_rans("rans.md 4: an escaped labels-per-position L (symbol 255, then 16 raw bits) is >= 255 (position 0's 300 "
       "written as 254)", base="prob_odd_labels_wide_position", sequence=0)
def rans_escape_non_canonical(f):
    num_labels = f.col("label_start", 1)
    raw_at = f.col("record_offset", 0) + 16 + (2 * num_labels + 7) // 8 * 8
    assert f.u(raw_at, 2) == 300
    f.put(raw_at, 2, 254)
    f.seal_chunk(0)


@_rans("FORMAT.md 1 (rans.md 4: checked on the decoded labels): ids are below vocab_size (metadata vocab_size set "
       "to the file's largest id)")
def vocab_size_equals_an_id(f):
    positions = [(i, t, label[0]) for i, s in enumerate(f.content["sequences"]) for t, p in enumerate(s["positions"])
                 for label in p]
    largest = max(x for _, _, x in positions)
    f.where["sequence"], f.where["position"] = next((i, t) for i, t, x in positions if x == largest)
    return f.with_metadata([(k, largest if k == "vocab_size" else v) for k, v in f.metadata()])


@_rans("FORMAT.md 1: the counts of a non-empty position sum to exactly rounds (metadata rounds 49, the chunks' "
       "count_sum 50)", sequence=0, position=0)
def rounds_below_count_sum(f):
    return f.with_metadata([(k, 49 if k == "rounds" else v) for k, v in f.metadata()])


@_invalid("rans", "prob_topk", "FormatError", "read", "FORMAT.md 1: probabilities are in (0, 1] (sequence 0, "
          "position 0: the first is 0; rans stores them verbatim)", name="prob_zero", sequence=0, position=0)
def rans_prob_zero(f):
    f.put(f.col("record_offset", 0) + 16, 2, 0)
    f.seal_chunk(0)


def write_invalid(codec: str, *, force: bool) -> list[Path]:
    written = []
    for name, case in INVALID_CASES.items():
        if case["codec"] != codec:
            continue
        path = INVALID / f"{name}.slbl"
        if path.exists() and not force:
            print(f"keep {path} (exists)")
            continue
        base = VECTORS / codec / f"{case['base']}.slbl"
        edit = _Edit(base.read_bytes(), json.loads(base.with_suffix(".json").read_text()))
        edit = case["edit"](edit) or edit
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(edit.data))
        body = {**case["json"], "where": {**case["json"]["where"], **edit.where}}
        path.with_suffix(".json").write_text(json.dumps(body, indent=1) + "\n")
        written.append(path)
        print(f"wrote {path}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", action="append", help="codec(s) to write (default: all available)")
    parser.add_argument("--force", action="store_true", help="overwrite existing vectors")
    parser.add_argument("--invalid", action="store_true", help="write only the invalid vectors")
    args = parser.parse_args(argv)
    for codec in args.codec or available():
        if not args.invalid:
            write_vectors(codec, force=args.force)
        write_invalid(codec, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build valid label files and edit them byte by byte, fixing every CRC that covers an edit.

Shared by the tests that corrupt files on purpose (bad input, security, codecs, fuzzing) and by
``tools/fuzz_format.py``: where each structure of a file lies (``parse_layout``), the field tables of the fixed
structures, CRC repairs, and rebuilding a whole file from its chunks with an index computed here, independently
of the writer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from pathlib import Path
from typing import Any

import numpy as np

import sparselabels.codecs
from sparselabels.errors import InputError, SparseLabelsError
from sparselabels.format.layout import (
    CHUNK_HEADER_SIZE,
    FLAG_FINGERPRINTS,
    FOOTER_SIZE,
    HEADER_SIZE,
    ChunkHeader,
    Footer,
    Header,
    column_lengths,
    crc32,
    entry_size,
)
from sparselabels.io.writer import LabelWriter

VOCAB = 151_936
WIDE_VOCAB = 1 << 32  # every u32 id is a valid label: the bases that cover the full id range
ROUNDS = 50

# Field tables of the fixed structures: name -> (byte offset, struct format). spec/FORMAT.md has the same.
HEADER_FIELDS = {
    "magic": (0, "8s"), "version_major": (8, "<H"), "version_minor": (10, "<H"), "header_size": (12, "<I"),
    "metadata_size": (16, "<Q"), "data_offset": (24, "<Q"), "metadata_crc32": (32, "<I"),
    "required_features": (36, "<I"), "optional_features": (40, "<I"), "reserved": (44, "16s"),
}
CHUNK_FIELDS = {
    "magic": (0, "8s"), "chunk_index": (8, "<Q"), "first_sequence": (16, "<Q"), "num_sequences": (24, "<Q"),
    "table_size": (32, "<Q"), "records_size": (40, "<Q"), "flags": (48, "<I"), "payload_crc32": (52, "<I"),
    "reserved": (56, "<I"),
}
FOOTER_FIELDS = {
    "magic": (0, "8s"), "index_offset": (8, "<Q"), "num_sequences": (16, "<Q"), "num_chunks": (24, "<Q"),
    "num_positions": (32, "<Q"), "num_labels": (40, "<Q"), "flags": (48, "<I"), "index_crc32": (52, "<I"),
    "reserved": (56, "<I"),
}


# ---------------------------------------------------------------------------------------------------------
# Base files
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Span:
    start: int
    end: int


@dataclasses.dataclass
class ChunkSpan:
    start: int
    entries: Span
    table: Span
    records: Span
    num_sequences: int
    entry_size: int

    @property
    def end(self) -> int:
        return self.records.end


@dataclasses.dataclass
class FileLayout:
    """Where each structure of a valid file lies (parsed from the file, which the writer made)."""

    metadata: Span
    data_offset: int
    chunks: list[ChunkSpan]
    index: Span
    columns: dict[str, Span]
    footer: int
    records: list[Span]
    flags: int


@dataclasses.dataclass
class BaseFile:
    name: str
    codec: str
    value_kind: str
    fingerprints: bool
    data: bytes
    content: tuple[str, ...]  # digest of every sequence, from the writer's inputs
    layout: FileLayout
    vocab: int = VOCAB  # WIDE_VOCAB for the bases that cover the whole id range


def sequence_digest(ids, values, indptr, fingerprint) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(ids, dtype="<u4").tobytes())
    h.update(b"|" + np.ascontiguousarray(values).tobytes())
    h.update(b"|" + np.ascontiguousarray(indptr, dtype="<i8").tobytes())
    h.update(b"|" + (b"none" if fingerprint is None else int(fingerprint).to_bytes(8, "little")))
    return h.hexdigest()


def random_sequence(rng: np.random.Generator, value_kind: str,
                     vocab: int = VOCAB) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    num_positions = int(rng.choice([0, 1, 2, 3, 5, 9, 14]))
    ids, values, indptr = [], [], [0]
    for _ in range(num_positions):
        r = rng.random()
        k = 0 if r < 0.15 else ROUNDS if r < 0.2 else int(rng.integers(1, 14))
        if vocab == WIDE_VOCAB and rng.random() < 0.1:
            k = 1  # a lone label, sometimes the top id (rans refuses it as a position's first id)
        if k:
            chosen = rng.choice(vocab - 2, size=k, replace=False) + 1  # distinct ids in 1..vocab-2
            if rng.random() < 0.1:
                chosen[0] = 0
            if rng.random() < 0.1:
                chosen[-1] = vocab - 1
            counts = 1 + rng.multinomial(ROUNDS - k, np.ones(k) / k)  # k distinct draws summing to ROUNDS
            ids.extend(np.sort(chosen).tolist())
            values.extend(counts.tolist())
        indptr.append(len(ids))
    ids_a = np.array(ids, dtype=np.uint32)
    counts_a = np.array(values, dtype=np.int64)
    vals = (counts_a / ROUNDS).astype(np.float16) if value_kind == "prob" else counts_a.astype(np.uint8)
    return ids_a, vals, np.array(indptr, dtype=np.int64)


def writer_settings(codec: str, value_kind: str, vocab: int = VOCAB) -> dict[str, Any]:
    """The LabelWriter arguments of a base file (a resumed writer must pass the same)."""
    return {"vocab_size": vocab, "rounds": ROUNDS if value_kind == "count" else None, "value_kind": value_kind,
            "codec": codec, "chunk_bytes": 400, "durable": False,
            "metadata": {"teacher": "fuzz-teacher", "temperature": 1.0,
                         "user": {"purpose": "fuzz", "list": [1, 2.5, None]}}}


def first_id_is_top(ids: np.ndarray, indptr: np.ndarray) -> bool:
    return bool(np.any(ids[indptr[:-1][np.diff(indptr) > 0]].astype(np.int64) == WIDE_VOCAB - 1))


def edge_sequences(value_kind: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The extremes of the full id range: 2**32 - 1 as a lone label, then beside 0 and 2**32 - 2."""
    top = WIDE_VOCAB - 1
    out = []
    for ids, counts, indptr in (([top], [ROUNDS], [0, 0, 1]), ([0, top - 1, top, top - 1], [1, 1, ROUNDS - 2, ROUNDS],
                                                                [0, 3, 4])):
        counts_a = np.array(counts, dtype=np.int64)
        vals = (counts_a / ROUNDS).astype(np.float16) if value_kind == "prob" else counts_a.astype(np.uint8)
        out.append((np.array(ids, dtype=np.uint32), vals, np.array(indptr, dtype=np.int64)))
    return out


def write_base(path: Path, *, codec: str, value_kind: str, fingerprints: bool, num_sequences: int,
               seed: int, vocab: int = VOCAB) -> tuple[bytes, tuple[str, ...]]:
    """Write one valid file; return its bytes and the digest of every sequence as it was handed to the writer.
    A sequence the codec refuses (rans: a position whose first id is 2**32 - 1) must be refused with InputError
    before anything is written, and is left out."""
    rng = np.random.default_rng(seed)
    content = []
    with LabelWriter(path, overwrite=True, **writer_settings(codec, value_kind, vocab)) as writer:
        edges = edge_sequences(value_kind) if vocab == WIDE_VOCAB and num_sequences else []
        while len(content) < num_sequences:
            ids, vals, indptr = edges.pop(0) if edges else random_sequence(rng, value_kind, vocab)
            fp = int(rng.integers(0, 1 << 63, dtype=np.uint64)) * 2 + int(rng.integers(0, 2)) if fingerprints else None
            before = writer.num_sequences
            try:
                writer.write(ids, vals, indptr, fingerprint=fp)
            except InputError as exc:
                if not (codec == "rans" and first_id_is_top(ids, indptr) and "beyond codec" in str(exc)):
                    raise
                assert writer.num_sequences == before
                continue
            content.append(sequence_digest(ids, vals, indptr, fp))
            if rng.random() < 0.15:
                writer.flush()
    return path.read_bytes(), tuple(content)


def parse_layout(data: bytes) -> FileLayout:
    """Locate every structure of a valid file."""
    header = Header.unpack(data[:HEADER_SIZE])
    footer = Footer.unpack(data[-FOOTER_SIZE:])
    columns, at = {}, footer.index_offset
    for name, n in column_lengths(footer.num_sequences, footer.num_chunks, footer.flags):
        columns[name] = Span(at, at + 8 * n)
        at += 8 * n
    chunks, records = [], []
    offset = header.data_offset
    record_offsets = np.frombuffer(data[columns["record_offset"].start:columns["record_offset"].end], "<u8")
    record_sizes = np.frombuffer(data[columns["record_size"].start:columns["record_size"].end], "<u8")
    for _ in range(footer.num_chunks):
        ch = ChunkHeader.unpack(data[offset:offset + CHUNK_HEADER_SIZE], "parse")
        e0 = offset + CHUNK_HEADER_SIZE
        t0 = e0 + ch.entries_size
        r0 = t0 + ch.table_size
        chunks.append(ChunkSpan(offset, Span(e0, t0), Span(t0, r0), Span(r0, r0 + ch.records_size),
                                ch.num_sequences, ch.entry_size))
        offset += ch.total_size
    for off, size in zip(record_offsets.tolist(), record_sizes.tolist(), strict=True):
        records.append(Span(off, off + size))
    assert offset == footer.index_offset
    return FileLayout(Span(HEADER_SIZE, HEADER_SIZE + header.metadata_size), header.data_offset, chunks,
                      Span(footer.index_offset, len(data) - FOOTER_SIZE), columns, len(data) - FOOTER_SIZE,
                      records, footer.flags)


def build_bases(directory: Path, seed: int, codecs: list[str] | None = None) -> list[BaseFile]:
    """Valid base files: every codec x value kind x fingerprints, plus an empty file per codec."""
    bases = []
    for codec in codecs or sparselabels.codecs.available():
        variants = [(kind, fp, 9, VOCAB) for kind in ("count", "prob") for fp in (False, True)] + [
            ("count", False, 0, VOCAB), ("count", True, 9, WIDE_VOCAB), ("prob", False, 9, WIDE_VOCAB)]
        for k, (kind, fp, n, vocab) in enumerate(variants):
            name = f"{codec}-{kind}-{'fp' if fp else 'nofp'}-{n}seq{'-wide' if vocab != VOCAB else ''}"
            path = directory / f"{name}.slbl"
            try:
                data, content = write_base(path, codec=codec, value_kind=kind, fingerprints=fp, num_sequences=n,
                                           seed=seed * 1000 + k, vocab=vocab)
                layout = parse_layout(data)
            except SparseLabelsError as exc:
                raise RuntimeError(f"codec {codec!r} cannot write the valid base file {name}: {exc}") from exc
            bases.append(BaseFile(name, codec, kind, fp, data, content, layout, vocab))
    return bases


# ---------------------------------------------------------------------------------------------------------
# CRC fix-ups and an independent rebuild of the container
# ---------------------------------------------------------------------------------------------------------
def put_value(buf: bytearray, at: int, fmt: str, value: Any) -> None:
    if fmt.endswith("s"):
        width = struct.calcsize(fmt)
        buf[at:at + width] = bytes(value)[:width].ljust(width, b"\0")
    else:
        struct.pack_into(fmt, buf, at, value & ((1 << (8 * struct.calcsize(fmt))) - 1))


def get_value(buf: bytes, at: int, fmt: str) -> Any:
    return struct.unpack_from(fmt, buf, at)[0]


def fix_struct_crc(buf: bytearray, start: int) -> None:
    """Recompute the CRC-32 in the last 4 bytes of a 64-byte structure at ``start``."""
    struct.pack_into("<I", buf, start + 60, crc32(bytes(buf[start:start + 60])))


def fix_metadata_crc(buf: bytearray, lay: FileLayout) -> None:
    struct.pack_into("<I", buf, 32, crc32(bytes(buf[lay.metadata.start:lay.metadata.end])))
    fix_struct_crc(buf, 0)


def fix_chunk_crcs(buf: bytearray, ch: ChunkSpan) -> None:
    struct.pack_into("<I", buf, ch.start + 52, crc32(bytes(buf[ch.entries.start:ch.end])))
    fix_struct_crc(buf, ch.start)


def fix_record_crcs(buf: bytearray, lay: FileLayout, ch: ChunkSpan, first: int) -> None:
    """Recompute the record CRC-32s of a chunk's sequences (first sequence ``first``) in its entries and the index."""
    table_crc = crc32(bytes(buf[ch.table.start:ch.table.end]))
    column = lay.columns["record_crc32"].start
    for k in range(ch.num_sequences):
        span = lay.records[first + k]
        crc = crc32(bytes(buf[span.start:span.end]), table_crc)
        struct.pack_into("<Q", buf, ch.entries.start + k * ch.entry_size + 24, crc)
        struct.pack_into("<Q", buf, column + 8 * (first + k), crc)


def fix_index_crc(buf: bytearray, lay: FileLayout) -> None:
    struct.pack_into("<I", buf, lay.footer + 52, crc32(bytes(buf[lay.index.start:lay.index.end])))
    fix_struct_crc(buf, lay.footer)


def reseal_records_at(buf: bytearray, lay: FileLayout, at: int) -> None:
    """Recompute every CRC that covers byte ``at`` of a chunk's entries, table or records (the chunk's record CRCs,
    which start from its table's, the chunk's CRCs and the index CRC), so that the checks behind the CRCs are
    what see an edit there."""
    first = 0
    for chunk in lay.chunks:
        if chunk.entries.start <= at < chunk.end:
            fix_record_crcs(buf, lay, chunk, first)
            fix_chunk_crcs(buf, chunk)
            fix_index_crc(buf, lay)
        first += chunk.num_sequences


@dataclasses.dataclass
class ChunkBlob:
    entries: np.ndarray  # [n, k] uint64
    table: bytes
    records: bytes


def split_chunks(data: bytes, lay: FileLayout) -> list[ChunkBlob]:
    out = []
    for ch in lay.chunks:
        entries = np.frombuffer(data[ch.entries.start:ch.entries.end], "<u8").reshape(ch.num_sequences, -1).copy()
        out.append(ChunkBlob(entries, data[ch.table.start:ch.table.end], data[ch.records.start:ch.records.end]))
    return out


def rebuild(meta: bytes, chunks: list[ChunkBlob], flags: int) -> bytes:
    """A complete, consistent file from metadata bytes and chunk contents; the index is computed here, not by
    the writer, so ``rebuild(split(valid file)) == valid file`` checks the writer's index too."""
    header = Header(metadata_size=len(meta), metadata_crc32=crc32(meta))
    out = bytearray(header.pack() + meta)
    out += bytes(header.data_offset - len(out))
    cols: dict[str, list[int]] = {name: [] for name, _ in column_lengths(1, 1, flags)}
    seq = pos = lab = 0
    for c, blob in enumerate(chunks):
        n = blob.entries.shape[0]
        payload = blob.entries.astype("<u8").tobytes() + blob.table + blob.records
        chunk_header = ChunkHeader(c, seq, n, len(blob.table), len(blob.records), flags, crc32(payload))
        start = len(out)
        table_at = start + CHUNK_HEADER_SIZE + n * entry_size(flags)
        record_at = table_at + len(blob.table)
        cols["chunk_offset"].append(start)
        cols["chunk_first_sequence"].append(seq)
        cols["chunk_table_offset"].append(table_at)
        cols["chunk_table_size"].append(len(blob.table))
        for row in blob.entries.tolist():
            cols["position_start"].append(pos)
            cols["label_start"].append(lab)
            cols["record_offset"].append(record_at)
            cols["record_size"].append(row[2])
            cols["record_crc32"].append(row[3])
            if flags & FLAG_FINGERPRINTS:
                cols["fingerprint"].append(row[4])
            pos, lab, record_at = pos + row[0], lab + row[1], record_at + row[2]
        seq += n
        out += chunk_header.pack() + payload
    index_offset = len(out)
    cols["position_start"].append(pos)
    cols["label_start"].append(lab)
    cols["chunk_offset"].append(index_offset)
    cols["chunk_first_sequence"].append(seq)
    index = b"".join(np.array(cols[name], dtype="<u8").tobytes() for name in cols)
    out += index
    out += Footer(index_offset, seq, len(chunks), pos, lab, flags, crc32(index)).pack()
    return bytes(out)


def relayout_with_metadata(data: bytes, lay: FileLayout, meta: bytes) -> bytes:
    """Replace the metadata block, shifting every absolute offset so the rest stays consistent."""
    return rebuild(meta, split_chunks(data, lay), lay.flags)


def vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0

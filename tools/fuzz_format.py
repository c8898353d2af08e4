"""Fuzz the sparse-label file format: mutate valid files, open/read/validate/merge every mutant in a worker.

Valid base files are written for every codec in ``sparselabels.codecs.available()`` (new codecs are picked up
automatically), both value kinds, with and without input fingerprints, with empty sequences, empty positions and
several chunks. Each case applies one mutation and runs the whole read side on the result in a forked worker
process (workers are reused across cases): ``LabelFile`` at every verify level in mmap and pread mode, every
sequence read, ``positions()``, ``validate``, the ``validate`` and ``info`` commands, a ``merge --copy``, and
``LabelWriter(resume=True)`` on the mutant taken as an interrupted file.

Two families of mutations:

* blind ones (bit flips, byte runs, truncation, extension, swapped sections) that the CRCs mostly reject early;
* structure-aware ones that edit one field of the header, metadata, a chunk header, chunk entries, a record,
  the index or the footer and then *fix every CRC that covers it*, so the checks behind the CRCs run; and
  "coherent" rewrites (chunks dropped, duplicated, reordered; metadata values changed) that rebuild the whole
  file consistently with an index built here, independently of the writer.

Every case ends in one of these outcomes (bugs in capitals in the table's spirit, lower-case here):

=====================  ==============================================================================
identical              validates, and every read equals the original content
valid-different        validates, content differs (only a CRC-fixed or coherent mutation may do this)
rejected-open          ``FormatError`` (or a subclass) when the file is opened
rejected-read          opens; at least one read raises ``FormatError``
rejected-validate      opens and reads at the default verify level; ``validate`` reports the corruption
crash                  the worker died by a signal (SIGSEGV, SIGBUS, ...)                     -- bug
hang                   the case ran past the timeout                                          -- bug
memory                 MemoryError under the worker's address-space limit                      -- bug
wrong-exception        anything but ``FormatError`` from open/read; anything raised by ``validate``  -- bug
inconsistent           mmap and pread disagree, validate disagrees with ``verify="full"``, a CLI exit
                       code is wrong, a blind mutation produced a valid file with other content, or
                       resume finished a file that does not open (or an invalid one from a valid input) -- bug
spread                 ``merge --copy`` turned an invalid input into a file that validates         -- bug
=====================  ==============================================================================

Run ``python tools/fuzz_format.py --cases-per-codec 10000`` for the long run (its JSON goes to
``tools/results/fuzz_format.json``); ``--quick`` runs a few hundred cases.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import hashlib
import io
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, Pipe, wait
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

import sparselabels.codecs
from sparselabels.errors import FormatError, SparseLabelsError
from sparselabels.format.layout import (
    CHUNK_HEADER_SIZE,
    ENTRY_COLUMNS,
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
from sparselabels.io.reader import LabelFile
from sparselabels.io.writer import LabelWriter

OUTCOMES_OK = ("identical", "valid-different", "rejected-open", "rejected-read", "rejected-validate")
OUTCOMES_BUG = ("crash", "hang", "memory", "wrong-exception", "inconsistent", "spread")
OUTCOMES = OUTCOMES_OK + OUTCOMES_BUG

VOCAB = 151_936
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


def sequence_digest(ids, values, indptr, fingerprint) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(ids, dtype="<u4").tobytes())
    h.update(b"|" + np.ascontiguousarray(values).tobytes())
    h.update(b"|" + np.ascontiguousarray(indptr, dtype="<i8").tobytes())
    h.update(b"|" + (b"none" if fingerprint is None else int(fingerprint).to_bytes(8, "little")))
    return h.hexdigest()


def _random_sequence(rng: np.random.Generator, value_kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    num_positions = int(rng.choice([0, 1, 2, 3, 5, 9, 14]))
    ids, values, indptr = [], [], [0]
    for _ in range(num_positions):
        r = rng.random()
        k = 0 if r < 0.15 else ROUNDS if r < 0.2 else int(rng.integers(1, 14))
        if k:
            chosen = rng.choice(VOCAB - 2, size=k, replace=False) + 1  # distinct ids in 1..VOCAB-2
            if rng.random() < 0.1:
                chosen[0] = 0
            if rng.random() < 0.1:
                chosen[-1] = VOCAB - 1
            counts = 1 + rng.multinomial(ROUNDS - k, np.ones(k) / k)  # k distinct draws summing to ROUNDS
            ids.extend(np.sort(chosen).tolist())
            values.extend(counts.tolist())
        indptr.append(len(ids))
    ids_a = np.array(ids, dtype=np.uint32)
    counts_a = np.array(values, dtype=np.int64)
    vals = (counts_a / ROUNDS).astype(np.float16) if value_kind == "prob" else counts_a.astype(np.uint8)
    return ids_a, vals, np.array(indptr, dtype=np.int64)


def writer_settings(codec: str, value_kind: str) -> dict[str, Any]:
    """The LabelWriter arguments of a base file (a resumed writer must pass the same)."""
    return {"vocab_size": VOCAB, "rounds": ROUNDS if value_kind == "count" else None, "value_kind": value_kind,
            "codec": codec, "chunk_bytes": 400, "durable": False,
            "metadata": {"teacher": "fuzz-teacher", "temperature": 1.0,
                         "user": {"purpose": "fuzz", "list": [1, 2.5, None]}}}


def write_base(path: Path, *, codec: str, value_kind: str, fingerprints: bool, num_sequences: int,
               seed: int) -> tuple[bytes, tuple[str, ...]]:
    """Write one valid file; return its bytes and the digest of every sequence as it was handed to the writer."""
    rng = np.random.default_rng(seed)
    content = []
    with LabelWriter(path, overwrite=True, **writer_settings(codec, value_kind)) as writer:
        for _ in range(num_sequences):
            ids, vals, indptr = _random_sequence(rng, value_kind)
            fp = int(rng.integers(0, 1 << 63, dtype=np.uint64)) * 2 + int(rng.integers(0, 2)) if fingerprints else None
            writer.write(ids, vals, indptr, fingerprint=fp)
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
        variants = [(kind, fp, 9) for kind in ("count", "prob") for fp in (False, True)] + [("count", False, 0)]
        for k, (kind, fp, n) in enumerate(variants):
            name = f"{codec}-{kind}-{'fp' if fp else 'nofp'}-{n}seq"
            path = directory / f"{name}.slbl"
            try:
                data, content = write_base(path, codec=codec, value_kind=kind, fingerprints=fp, num_sequences=n,
                                           seed=seed * 1000 + k)
                layout = parse_layout(data)
            except SparseLabelsError as exc:
                raise RuntimeError(f"codec {codec!r} cannot write the valid base file {name}: {exc}") from exc
            bases.append(BaseFile(name, codec, kind, fp, data, content, layout))
    return bases


# ---------------------------------------------------------------------------------------------------------
# CRC fix-ups and an independent rebuild of the container
# ---------------------------------------------------------------------------------------------------------
def _put(buf: bytearray, at: int, fmt: str, value: Any) -> None:
    if fmt.endswith("s"):
        width = struct.calcsize(fmt)
        buf[at:at + width] = bytes(value)[:width].ljust(width, b"\0")
    else:
        struct.pack_into(fmt, buf, at, value & ((1 << (8 * struct.calcsize(fmt))) - 1))


def _get(buf: bytes, at: int, fmt: str) -> Any:
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


# ---------------------------------------------------------------------------------------------------------
# Mutations: each takes (rng, base) and returns (mutated bytes, description)
# ---------------------------------------------------------------------------------------------------------
def edge_values(old: int, bits: int, rng: random.Random, file_size: int) -> int:
    top = (1 << bits) - 1
    choices = [0, 1, old - 1, old + 1, old - 8, old + 8, old * 2, old + 64, old - 64, (1 << 31) - 1, 1 << 31,
               (1 << 32) - 1, 1 << 32, (1 << 32) + old, (1 << 63) - 1, 1 << 63, top, top - old,
               file_size, file_size - 64, file_size + 8, rng.getrandbits(bits), old ^ (1 << rng.randrange(bits))]
    return rng.choice(choices) & top


def _edit_field(buf: bytearray, start: int, fields: dict, rng: random.Random, file_size: int,
                skip: tuple[str, ...] = ()) -> str:
    name = rng.choice([k for k in fields if k not in skip])
    at, fmt = fields[name]
    if fmt.endswith("s"):
        raw = bytearray(buf[start + at:start + at + struct.calcsize(fmt)])
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        _put(buf, start + at, fmt, bytes(raw))
        return f"{name} bit flipped"
    old = _get(buf, start + at, fmt)
    new = edge_values(old, 8 * struct.calcsize(fmt), rng, file_size)
    _put(buf, start + at, fmt, new)
    return f"{name} {old} -> {new}"


def m_none(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    return base.data, "unchanged (control)"


def m_bitflip(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    buf = bytearray(base.data)
    flips = []
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        bit = rng.randrange(8 * len(buf))
        buf[bit // 8] ^= 1 << (bit % 8)
        flips.append(bit)
    return bytes(buf), f"bits {flips} flipped"


def m_byte_run(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    buf = bytearray(base.data)
    n = rng.choice([1, 2, 4, 8, 16, 64, 256])
    at = rng.randrange(len(buf))
    fill = rng.choice(["zero", "ff", "random"])
    run = {"zero": bytes(n), "ff": b"\xff" * n, "random": rng.randbytes(n)}[fill]
    buf[at:at + n] = run[: len(buf) - at]
    return bytes(buf), f"{n} {fill} bytes at {at}"


def _boundaries(base: BaseFile) -> list[int]:
    lay = base.layout
    marks = [0, HEADER_SIZE, lay.metadata.end, lay.data_offset, lay.index.start, lay.footer, len(base.data)]
    for ch in lay.chunks:
        marks += [ch.start, ch.entries.start, ch.table.start, ch.records.start, ch.end]
    marks += [s.end for s in lay.records]
    return marks


def m_truncate(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    size = len(base.data)
    if rng.random() < 0.5:
        cut = min(size - 1, max(0, rng.choice(_boundaries(base)) + rng.choice([-8, -1, 0, 1, 8])))
    else:
        cut = rng.randrange(size)
    return base.data[:cut], f"truncated to {cut} of {size} bytes"


def m_extend(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    n = rng.choice([1, 7, 8, 64, 4096])
    kind = rng.choice(["zero", "random", "footer-copy"])
    tail = {"zero": bytes(n), "random": rng.randbytes(n), "footer-copy": base.data[-FOOTER_SIZE:]}[kind]
    return base.data + tail, f"extended by {len(tail)} {kind} bytes"


def _sections(base: BaseFile) -> list[Span]:
    lay = base.layout
    return [Span(0, HEADER_SIZE), lay.metadata, *[Span(c.start, c.end) for c in lay.chunks], lay.index,
            Span(lay.footer, len(base.data))]


def m_swap_sections(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    """Swap two chunks (reordering the bytes), or copy one section over another of the same size."""
    lay = base.layout
    data = base.data
    if len(lay.chunks) >= 2 and rng.random() < 0.6:
        i, j = sorted(rng.sample(range(len(lay.chunks)), 2))
        a, b = lay.chunks[i], lay.chunks[j]
        out = data[:a.start] + data[b.start:b.end] + data[a.end:b.start] + data[a.start:a.end] + data[b.end:]
        return out, f"chunks {i} and {j} swapped"
    sections = _sections(base)
    src, dst = rng.choice(sections), rng.choice(sections)
    n = min(src.end - src.start, dst.end - dst.start)
    buf = bytearray(data)
    buf[dst.start:dst.start + n] = data[src.start:src.start + n]
    return bytes(buf), f"{n} bytes of section at {src.start} copied over section at {dst.start}"


def m_header_crc(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    buf = bytearray(base.data)
    what = _edit_field(buf, 0, HEADER_FIELDS, rng, len(buf))
    fix_struct_crc(buf, 0)
    return bytes(buf), f"header {what}, CRC fixed"


def _meta_edits(meta: dict, rng: random.Random) -> tuple[dict | bytes, str]:
    """A hostile or inconsistent metadata value (a dict to encode, or raw bytes)."""
    key_values = {
        "vocab_size": [0, 1, 10, VOCAB - 1, VOCAB + 1, 1 << 32, (1 << 32) + 1, -1, (1 << 64) - 1, 1.5, "x", True,
                       None],
        "rounds": [0, 1, ROUNDS - 1, ROUNDS + 1, 255, 256, -1, None, 2.0, "50"],
        "value_kind": ["count", "prob", "bogus", 5, None],
        "codec": ["bogus", "", 7, None, *sparselabels.codecs.available()],
        "format_version": ["2.0", "1.99", "0.9", 1, "", "1", None],
        "library_version": [5, None, ""],
        "temperature": [float("nan"), float("inf"), -1.0, 0.0, "hot", True, 1e308],
        "teacher": [5, b"bytes", None, "x" * 100_000],
        "seed": [1.5, "s", -1],
        "user": [[[]] * 3, {"deep": _nested(33)}, {"deep": _nested(31)}, {"k": msgpack.ExtType(5, b"x")}],
    }
    r = rng.random()
    if r < 0.65:
        key = rng.choice(list(key_values))
        value = rng.choice(key_values[key])
        return {**meta, key: value}, f"metadata {key} = {value!r:.60}"
    if r < 0.75:
        key = rng.choice(list(meta))
        return {k: v for k, v in meta.items() if k != key}, f"metadata key {key!r} removed"
    raw = msgpack.packb(meta, use_bin_type=True)
    hostile = {
        "trailing garbage": raw + b"\xc0",
        "truncated": raw[: rng.randrange(len(raw))],
        "array at top": msgpack.packb([1, 2, 3]),
        "int at top": msgpack.packb(7),
        "ext at top": msgpack.packb(msgpack.ExtType(1, b"abc")),
        "int map key": msgpack.packb({**meta, 1: "x"}, use_bin_type=True, strict_types=False),
        "bytes map key": msgpack.packb({**meta, b"k": "x"}, use_bin_type=True),
        "invalid utf-8 str": raw.replace(b"fuzz-teacher", b"fuzz-teach\xff\xfe"),
        "map32 claiming 2**32-1 entries": b"\xdf\xff\xff\xff\xff" + raw[1:],
        "str32 claiming 2**32-1 bytes": b"\x81\xdb\xff\xff\xff\xff" + b"k" * 8,
        "array nested 100000 deep": b"\x91" * 100_000 + b"\xc0",
        "map nested 3000 deep": b"\x81\xa1k" * 3000 + b"\xc0",
        "reserved byte 0xc1": b"\xc1",
        "empty": b"",
    }
    name = rng.choice(list(hostile))
    return hostile[name], f"metadata bytes: {name}"


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def m_metadata_crc(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    lay = base.layout
    meta = msgpack.unpackb(base.data[lay.metadata.start:lay.metadata.end], raw=False)
    edited, what = _meta_edits(meta, rng)
    if isinstance(edited, bytes):
        raw = edited
    else:
        try:
            raw = msgpack.packb(edited, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):  # e.g. -1 as a huge unsigned: store a string instead
            raw = msgpack.packb({**edited, "vocab_size": "unencodable"}, use_bin_type=True)
    if rng.random() < 0.1 and len(raw) == lay.metadata.end - lay.metadata.start:
        buf = bytearray(base.data)
        buf[lay.metadata.start:lay.metadata.end] = raw
        fix_metadata_crc(buf, lay)
        return bytes(buf), f"{what} (in place), CRCs fixed"
    return relayout_with_metadata(base.data, lay, raw), f"{what}, file rebuilt around it"


def m_chunk_header_crc(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    buf = bytearray(base.data)
    if not base.layout.chunks:
        return m_header_crc(rng, base)
    c = rng.randrange(len(base.layout.chunks))
    ch = base.layout.chunks[c]
    what = _edit_field(buf, ch.start, CHUNK_FIELDS, rng, len(buf))
    fix_struct_crc(buf, ch.start)
    return bytes(buf), f"chunk {c} header {what}, CRC fixed"


def m_chunk_entries_crc(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    buf = bytearray(base.data)
    if not base.layout.chunks:
        return m_footer_crc(rng, base)
    c = rng.randrange(len(base.layout.chunks))
    ch = base.layout.chunks[c]
    row = rng.randrange(ch.num_sequences)
    col = rng.randrange(ch.entry_size // 8)
    at = ch.entries.start + row * ch.entry_size + 8 * col
    old = _get(buf, at, "<Q")
    new = edge_values(old, 64, rng, len(buf))
    _put(buf, at, "<Q", new)
    fix_chunk_crcs(buf, ch)
    return bytes(buf), f"chunk {c} entry {row} {ENTRY_COLUMNS[col]} {old} -> {new}, CRCs fixed"


def m_record_crc(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    """Edit bytes of a record (or a codec table) and fix every CRC over them (the records' own, in the chunk
    entries and the index, and the payload's): the codec's checks and the label rules must catch it."""
    lay = base.layout
    candidates = [(i, s) for i, s in enumerate(lay.records) if s.end > s.start]
    tables = [(c, ch.table) for c, ch in enumerate(lay.chunks) if ch.table.end > ch.table.start]
    if not candidates:
        return m_index_crc(rng, base)
    buf = bytearray(base.data)
    if tables and rng.random() < 0.3:
        c, span = rng.choice(tables)
        target, what = span, f"table of chunk {c}"
    else:
        i, span = rng.choice(candidates)
        target, what = span, f"record of sequence {i}"
    style = rng.choice(["byte", "byte", "bit", "swap-u8", "swap-u16", "swap-u32", "zero-u32", "ff-u32"])
    n = target.end - target.start
    if style == "byte":
        at = target.start + rng.randrange(n)
        buf[at] = rng.randrange(256)
    elif style == "bit":
        at = target.start + rng.randrange(n)
        buf[at] ^= 1 << rng.randrange(8)
    elif style.startswith("swap"):
        w = int(style[6:]) // 8
        if n >= 2 * w:
            a = target.start + rng.randrange(n // w) * w
            b = target.start + rng.randrange(n // w) * w
            buf[a:a + w], buf[b:b + w] = bytes(buf[b:b + w]), bytes(buf[a:a + w])
    else:
        at = target.start + rng.randrange(max(1, n - 3))
        buf[at:at + 4] = (b"\0" if style == "zero-u32" else b"\xff") * 4
    first = 0
    for ch in lay.chunks:
        if ch.entries.start <= target.start < ch.end:
            fix_record_crcs(buf, lay, ch, first)
            fix_chunk_crcs(buf, ch)
            fix_index_crc(buf, lay)
        first += ch.num_sequences
    return bytes(buf), f"{what}: {style} edit, record, payload and index CRCs fixed"


def m_index_crc(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    lay = base.layout
    buf = bytearray(base.data)
    name = rng.choice([n for n, sp in lay.columns.items() if sp.end > sp.start])
    span = lay.columns[name]
    k = rng.randrange((span.end - span.start) // 8)
    at = span.start + 8 * k
    old = _get(buf, at, "<Q")
    new = edge_values(old, 64, rng, len(buf))
    _put(buf, at, "<Q", new)
    fix_index_crc(buf, lay)
    return bytes(buf), f"index {name}[{k}] {old} -> {new}, CRCs fixed"


def m_footer_crc(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    buf = bytearray(base.data)
    what = _edit_field(buf, base.layout.footer, FOOTER_FIELDS, rng, len(buf))
    fix_struct_crc(buf, base.layout.footer)
    return bytes(buf), f"footer {what}, CRC fixed"


def m_coherent(rng: random.Random, base: BaseFile) -> tuple[bytes, str]:
    """Rewrite the file consistently (every CRC, the index and the footer rebuilt) around one change."""
    lay = base.layout
    meta = base.data[lay.metadata.start:lay.metadata.end]
    chunks = split_chunks(base.data, lay)
    choice = rng.choice(["drop", "duplicate", "reorder", "entry", "entry", "identity"])
    if not chunks:
        choice = "identity"
    if choice == "drop":
        c = rng.randrange(len(chunks))
        del chunks[c]
        what = f"chunk {c} dropped"
    elif choice == "duplicate":
        c = rng.randrange(len(chunks))
        chunks.insert(rng.randrange(len(chunks) + 1), chunks[c])
        what = f"chunk {c} duplicated"
    elif choice == "reorder":
        rng.shuffle(chunks)
        what = "chunks reordered"
    elif choice == "entry":
        c = rng.randrange(len(chunks))
        blob = chunks[c]
        row, col = rng.randrange(blob.entries.shape[0]), rng.randrange(2)
        old = int(blob.entries[row, col])
        new = max(0, old + rng.choice([-2, -1, 1, 2, 8]))
        blob.entries = blob.entries.copy()
        blob.entries[row, col] = new
        what = f"chunk {c} entry {row} {ENTRY_COLUMNS[col]} {old} -> {new}, index rebuilt to agree"
    else:
        what = "rebuilt unchanged"
    return rebuild(meta, chunks, lay.flags), what


MUTATIONS: dict[str, Callable[[random.Random, BaseFile], tuple[bytes, str]]] = {
    "control": m_none,
    "bitflip": m_bitflip,
    "byte-run": m_byte_run,
    "truncate": m_truncate,
    "extend": m_extend,
    "swap-sections": m_swap_sections,
    "header+crc": m_header_crc,
    "metadata+crc": m_metadata_crc,
    "chunk-header+crc": m_chunk_header_crc,
    "chunk-entries+crc": m_chunk_entries_crc,
    "record+crc": m_record_crc,
    "index+crc": m_index_crc,
    "footer+crc": m_footer_crc,
    "coherent-rewrite": m_coherent,
}
# Mutations that leave every CRC as the mutation left it: a valid file with other content would mean bytes that
# no check covers.
BLIND = frozenset({"bitflip", "byte-run", "truncate", "extend", "swap-sections"})


# ---------------------------------------------------------------------------------------------------------
# Evaluating one mutant (runs in a worker)
# ---------------------------------------------------------------------------------------------------------
class Inconsistent(Exception):
    """Two views of the same file disagree."""


@dataclasses.dataclass
class Case:
    number: int
    codec: str
    base: str
    mutation: str
    description: str
    data: bytes


def _inspect(path: str, *, mmap: bool, verify: str) -> tuple[str, tuple[str | None, ...], str]:
    """Open and read everything; returns (status, per-sequence digests or None for a failed read, first error).

    Only FormatError is caught: anything else propagates and is a wrong exception.
    """
    try:
        f = LabelFile(path, mmap=mmap, verify=verify)
    except FormatError as exc:
        return "rejected-open", (), f"{type(exc).__name__}: {exc}"
    digests: list[str | None] = []
    first_error = ""
    with f:
        for i in range(len(f)):
            try:
                s = f[i]
                digests.append(sequence_digest(s.ids, s.counts, s.indptr, s.fingerprint))
            except FormatError as exc:
                digests.append(None)
                first_error = first_error or f"{type(exc).__name__}: {exc}"
        if not first_error and f.num_positions:
            try:
                block = f.positions(0, f.num_positions)
            except FormatError as exc:
                first_error = f"positions(): {type(exc).__name__}: {exc}"
            else:
                if block.num_labels != f.num_labels:
                    raise Inconsistent(f"positions() returned {block.num_labels} labels, file has {f.num_labels}")
    return ("rejected-read" if first_error else "opened"), tuple(digests), first_error


def _cli(argv: list[str]) -> int:
    from sparselabels.cli.main import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def _check_resume(case: Case, workdir: Path, settings: dict[str, Any], input_ok: bool) -> None:
    """The mutant as an interrupted file: resume refuses (SparseLabelsError) or keeps a prefix of its chunks.

    Resume keeps chunks whose CRCs and entries check, without decoding records (spec section 11). So the
    file it finishes always opens (the index it builds is consistent); it may still hold a bad record, but
    only one the input already had: a valid input must give a valid file.
    """
    from sparselabels.io.validate import validate

    final = workdir / "resumed.slbl"
    final.unlink(missing_ok=True)
    (workdir / "resumed.slbl.partial").write_bytes(case.data)
    try:
        LabelWriter(final, resume=True, **settings).close()
    except SparseLabelsError:
        return
    report = validate(final)
    if report.ok:
        return
    if input_ok:
        raise Inconsistent(f"resume turned a valid file into an invalid one: {report.problems[0]}")
    try:
        LabelFile(str(final)).close()
    except FormatError as exc:
        raise Inconsistent(f"resume wrote a file that does not open: {exc}") from None


def evaluate(case: Case, workdir: Path, expected: dict[str, tuple[str, ...]],
             settings: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run the whole read side (and resume, when ``settings`` has the base's writer settings) on one mutant."""
    from sparselabels.io.merge import merge
    from sparselabels.io.validate import validate

    path = workdir / "case.slbl"
    path.write_bytes(case.data)
    p = str(path)
    result: dict[str, Any] = {"outcome": None, "detail": ""}
    try:
        views = {}
        for verify in ("structure", "index", "full"):
            for mmap in (True, False):
                views[verify, mmap] = _inspect(p, mmap=mmap, verify=verify)
            if views[verify, True] != views[verify, False]:
                raise Inconsistent(f"verify={verify}: mmap gives {views[verify, True][0]}/{views[verify, True][2]}"
                                   f", pread gives {views[verify, False][0]}/{views[verify, False][2]}")
        report = validate(p)
        full_status, full_content, _ = views["full", True]
        index_status, index_content, index_error = views["index", True]
        if report.ok != (full_status == "opened"):
            first = str(report.problems[0]) if report.problems else None
            raise Inconsistent(f"validate ok={report.ok} but verify='full' gives {full_status}: {first}")
        if report.ok and (index_status != "opened" or index_content != full_content):
            raise Inconsistent("validate passes but the default verify level reads something else")
        rc = _cli(["validate", p])
        if rc != (0 if report.ok else 1):
            raise Inconsistent(f"'sparselabels validate' exit code {rc}, report ok={report.ok}")
        rc = _cli(["info", p])
        if rc != (0 if index_status != "rejected-open" else 2):
            raise Inconsistent(f"'sparselabels info' exit code {rc} for a file that is {index_status}")
        # merge --copy must never turn an invalid input into a file that validates (corruption spread).
        out = workdir / "merged.slbl"
        merged_ok = False
        try:
            merge(out, [p], copy=True, overwrite=True)
            merged = validate(out)
            merged_ok = merged.ok
        except SparseLabelsError:
            pass
        if merged_ok and not report.ok:
            result.update(outcome="spread", detail="merge --copy of an invalid file produced a valid file")
            return result
        if merged_ok:
            merged_content = _inspect(str(out), mmap=True, verify="full")[1]
            if merged_content != full_content:
                result.update(outcome="spread", detail="merge --copy changed the content of a valid file")
                return result
        elif report.ok:
            raise Inconsistent("merge --copy failed on a valid file")
        if settings is not None:
            _check_resume(case, workdir, settings[case.base], report.ok)
        if report.ok:
            same = full_content == expected[case.base]
            if not same and case.mutation in BLIND:
                raise Inconsistent("a blind mutation produced a valid file with other content (unchecked bytes?)")
            result["outcome"] = "identical" if same else "valid-different"
        elif index_status == "rejected-open":
            result.update(outcome="rejected-open", detail=index_error)
        elif index_status == "rejected-read":
            result.update(outcome="rejected-read", detail=index_error)
        else:
            result.update(outcome="rejected-validate", detail=str(report.problems[0]),
                          silent_at_default_verify=index_content != expected[case.base])
    except Inconsistent as exc:
        result.update(outcome="inconsistent", detail=str(exc))
    except MemoryError:
        result.update(outcome="memory", detail=traceback.format_exc(limit=-4))
    except Exception as exc:
        result.update(outcome="wrong-exception", detail=f"{type(exc).__name__}: {exc}\n"
                      + traceback.format_exc(limit=-4))
    return result


# ---------------------------------------------------------------------------------------------------------
# A pool of forked workers, reused across cases; deaths are crashes, overruns are hangs
# ---------------------------------------------------------------------------------------------------------
def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclasses.dataclass
class _Worker:
    pid: int
    conn: Connection
    workdir: Path
    case: Any = None
    deadline: float = 0.0


class ForkPool:
    """Run ``evaluate(case, workdir)`` for many cases in forked workers.

    Each worker runs under an address-space limit of its starting size plus ``memory_headroom`` bytes, so an
    allocation sized by a hostile value fails with MemoryError (classified ``memory``) instead of swapping.
    A worker that dies (a signal, or any exit) is recorded as ``crash`` for its case and replaced; a case that
    runs past ``timeout`` seconds is killed and recorded as ``hang``.
    """

    def __init__(self, evaluate_fn: Callable[[Any, Path], dict], *, workers: int, timeout: float,
                 scratch: Path, memory_headroom: int = 2 << 30) -> None:
        self._evaluate = evaluate_fn
        self._count = max(1, workers)
        self._timeout = timeout
        self._scratch = scratch
        self._headroom = memory_headroom
        self._workers: list[_Worker] = []
        self._spawned = 0

    def _spawn(self) -> _Worker:
        workdir = self._scratch / f"worker{self._spawned}"
        self._spawned += 1
        workdir.mkdir(parents=True, exist_ok=True)
        parent_end, child_end = Pipe()
        pid = os.fork()
        if pid == 0:  # worker
            code = 0
            try:
                parent_end.close()
                faulthandler.disable()  # a crash is a result here, not something to dump a traceback for
                limit = _vm_size() + self._headroom
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                while True:
                    case = child_end.recv()
                    if case is None:
                        break
                    try:
                        result = self._evaluate(case, workdir)
                    except MemoryError:
                        result = {"outcome": "memory", "detail": "MemoryError escaped the evaluation"}
                    child_end.send(result)
            except BaseException:
                code = 3
            finally:
                os._exit(code)
        child_end.close()
        return _Worker(pid, parent_end, workdir)

    def _retire(self, w: _Worker, *, kill: bool) -> str:
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)
        _, status = os.waitpid(w.pid, 0)
        w.conn.close()
        shutil.rmtree(w.workdir, ignore_errors=True)
        if os.WIFSIGNALED(status):
            return f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
        return f"exited with status {os.WEXITSTATUS(status)}"

    def run(self, cases: Iterable[Any]) -> Iterator[tuple[Any, dict]]:
        """Yield (case, result) as cases finish (not in order)."""
        pending = iter(cases)
        idle = [self._spawn() for _ in range(self._count)]
        busy: dict[Connection, _Worker] = {}
        exhausted = False
        try:
            while True:
                while idle and not exhausted:
                    case = next(pending, None)
                    if case is None:
                        exhausted = True
                        break
                    w = idle.pop()
                    w.case, w.deadline = case, time.monotonic() + self._timeout
                    w.conn.send(case)
                    busy[w.conn] = w
                if not busy:
                    break
                now = time.monotonic()
                ready = wait(list(busy), timeout=max(0.0, min(w.deadline for w in busy.values()) - now))
                for conn in ready:
                    w = busy.pop(conn)  # type: ignore[arg-type]
                    try:
                        result = conn.recv()  # type: ignore[union-attr]
                    except (EOFError, OSError):
                        how = self._retire(w, kill=False)
                        yield w.case, {"outcome": "crash", "detail": f"worker {how}"}
                        idle.append(self._spawn())
                        continue
                    yield w.case, result
                    idle.append(w)
                now = time.monotonic()
                for conn, w in list(busy.items()):
                    if now >= w.deadline:
                        del busy[conn]
                        self._retire(w, kill=True)
                        yield w.case, {"outcome": "hang", "detail": f"no result after {self._timeout:.0f} s"}
                        idle.append(self._spawn())
        finally:
            for w in idle:
                with contextlib.suppress(OSError):
                    w.conn.send(None)
                self._retire(w, kill=False)
            for w in busy.values():
                self._retire(w, kill=True)


# ---------------------------------------------------------------------------------------------------------
# Driving a run
# ---------------------------------------------------------------------------------------------------------
def generate_cases(bases: list[BaseFile], per_codec: int, seed: int) -> Iterator[Case]:
    """``per_codec`` cases for each codec, cycling through mutation kinds and that codec's base files."""
    by_codec: dict[str, list[BaseFile]] = defaultdict(list)
    for b in bases:
        by_codec[b.codec].append(b)
    kinds = list(MUTATIONS)
    number = 0
    for codec, codec_bases in by_codec.items():
        for k in range(per_codec):
            kind = kinds[k % len(kinds)]
            base = codec_bases[(k // len(kinds)) % len(codec_bases)]
            rng = random.Random(f"{seed}-{codec}-{k}")
            data, description = MUTATIONS[kind](rng, base)
            yield Case(number, codec, base.name, kind, description, data)
            number += 1


def default_scratch() -> Path:
    shm = Path("/dev/shm")
    root = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix="slfuzz-", dir=root))


def run_fuzz(*, cases_per_codec: int, seed: int = 0, workers: int | None = None, timeout: float = 30.0,
             codecs: list[str] | None = None, scratch: Path | None = None, failures_dir: Path | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Build the base files, run every case, and return the counts and the failures."""
    own_scratch = scratch is None
    scratch = scratch or default_scratch()
    started = time.perf_counter()
    try:
        bases = build_bases(scratch, seed, codecs)
        expected = {b.name: b.content for b in bases}
        settings = {b.name: writer_settings(b.codec, b.value_kind) for b in bases}
        for b in bases:  # warm up numba and every code path before forking, and check the rebuild twin
            assert rebuild(b.data[b.layout.metadata.start:b.layout.metadata.end], split_chunks(b.data, b.layout),
                           b.layout.flags) == b.data, f"independent rebuild of {b.name} differs from the writer's"
            warm = evaluate(Case(-1, b.codec, b.name, "control", "warm-up", b.data), scratch, expected, settings)
            assert warm["outcome"] == "identical", f"base file {b.name}: {warm}"
        pool = ForkPool(lambda case, wd: evaluate(case, wd, expected, settings), workers=workers or os.cpu_count() or 1,
                        timeout=timeout, scratch=scratch / "pool")
        table: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        silent: dict[str, Counter] = defaultdict(Counter)
        failures: list[dict[str, Any]] = []
        total = cases_per_codec * len({b.codec for b in bases})
        for done, (case, result) in enumerate(pool.run(generate_cases(bases, cases_per_codec, seed)), start=1):
            outcome = result["outcome"]
            table[case.codec][case.mutation][outcome] += 1
            if outcome == "rejected-validate" and result.get("silent_at_default_verify"):
                silent[case.codec][case.mutation] += 1
            if outcome in OUTCOMES_BUG:
                failure = {"case": case.number, "codec": case.codec, "base": case.base, "mutation": case.mutation,
                           "description": case.description, "outcome": outcome, "detail": result["detail"]}
                if failures_dir is not None:
                    failures_dir.mkdir(parents=True, exist_ok=True)
                    repro = failures_dir / f"case{case.number}-{outcome}.slbl"
                    repro.write_bytes(case.data)
                    failure["file"] = str(repro)
                failures.append(failure)
            if progress and done % 1000 == 0:
                print(f"  {done}/{total} cases, {len(failures)} failures, {time.perf_counter() - started:.0f} s",
                      flush=True)
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return {
        "seed": seed,
        "cases_per_codec": cases_per_codec,
        "codecs": sorted(table),
        "bases": [b.name for b in bases],
        "timeout_s": timeout,
        "seconds": time.perf_counter() - started,
        "table": {codec: {m: dict(c) for m, c in rows.items()} for codec, rows in table.items()},
        "silent_at_default_verify": {codec: dict(c) for codec, c in silent.items()},
        "bugs": len(failures),
        "failures": failures[:200],
    }


def print_tables(results: dict[str, Any]) -> None:
    for codec, rows in results["table"].items():
        out = []
        for mutation in MUTATIONS:
            counts = rows.get(mutation, {})
            out.append({"mutation": mutation, **{o: counts.get(o, 0) for o in OUTCOMES},
                        "total": sum(counts.values())})
        totals = {o: sum(r[o] for r in out) for o in [*OUTCOMES, "total"]}
        out.append({"mutation": "TOTAL", **totals})
        benchlib.print_table(out, ["mutation", *OUTCOMES, "total"], title=f"codec {codec!r}: outcomes per mutation")
        silent = results["silent_at_default_verify"].get(codec, {})
        if silent:
            print(f"  rejected only by validate whose reads at verify='index' returned other content: "
                  f"{sum(silent.values())} ({', '.join(f'{k} {v}' for k, v in silent.items())})")
    print(f"\n{results['bugs']} bug outcome(s) in {results['seconds']:.0f} s")
    for failure in results["failures"][:20]:
        print(f"  case {failure['case']} [{failure['codec']}/{failure['base']}] {failure['mutation']}: "
              f"{failure['description']} -> {failure['outcome']}: {failure['detail'].splitlines()[0][:200]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_common_args(parser, "fuzz_format")
    parser.add_argument("--cases-per-codec", type=int, default=10_000, help="mutants per codec (default 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per case before it counts as a hang")
    parser.add_argument("--codec", action="append", help="fuzz only this codec (repeatable; default: all)")
    parser.add_argument("--failures-dir", type=Path, help="save every failing mutant here")
    args = parser.parse_args(argv)
    per_codec = 15 * len(MUTATIONS) if args.quick else args.cases_per_codec
    results = run_fuzz(cases_per_codec=per_codec, seed=args.seed, workers=args.workers, timeout=args.timeout,
                       codecs=args.codec, failures_dir=args.failures_dir, progress=not args.quick)
    print_tables(results)
    benchlib.write_json(args.out, {"benchmark": "fuzz_format", "quick": args.quick, **results})
    return 1 if results["bugs"] else 0


if __name__ == "__main__":
    sys.exit(main())

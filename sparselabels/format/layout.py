"""Byte layout of a sparse-label file, version 1.0 (spec/FORMAT.md is the normative text).

    header (64 B) | metadata (msgpack) | pad to 8 | chunk* | index | footer (64 B)

All integers are little-endian. Every structure carries a CRC-32 (zlib/ISO-HDLC polynomial) so that
corruption is caught before a value is trusted. This module only packs and unpacks the fixed-size
structures and checks what can be checked from their own bytes; cross-structure checks live in the reader.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sparselabels.errors import ChecksumError, FormatError, IncompleteFileError

MAGIC = b"\x89SLB\r\n\x1a\n"
CHUNK_MAGIC = b"SLBCHUNK"
FOOTER_MAGIC = b"SLBINDEX"
VERSION_MAJOR = 1
VERSION_MINOR = 0

HEADER_SIZE = 64
CHUNK_HEADER_SIZE = 64
FOOTER_SIZE = 64
ALIGNMENT = 8
MAX_METADATA_BYTES = 16 << 20
# Not a format limit but the library's: a read allocates per position, so readers refuse longer sequences by
# default (LabelFile(max_sequence_positions=...) raises it) and the writer refuses to write them.
DEFAULT_MAX_SEQUENCE_POSITIONS = 1 << 24

# Chunk and footer flags. Bit 0: every sequence carries a 64-bit input fingerprint.
FLAG_FINGERPRINTS = 1
KNOWN_FLAGS = FLAG_FINGERPRINTS

_HEADER = struct.Struct("<8sHHIQQIII16s")  # 60 bytes, then the CRC
_CHUNK_HEADER = struct.Struct("<8sQQQQQII")  # 56 bytes, then reserved u32 and the CRC
_FOOTER = struct.Struct("<8sQQQQQII")  # 56 bytes, then reserved u32 and the CRC
_U32 = struct.Struct("<I")

try:  # the same CRC-32 (checked against zlib in tests/test_crc.py), with carry-less multiplication
    from isal.isal_zlib import crc32 as _crc32  # ~4x zlib's speed on cold records, ~15x on cached ones

    CRC32_IMPLEMENTATION = "isal"
except ImportError:  # a platform without isal's wheels
    from zlib import crc32 as _crc32

    CRC32_IMPLEMENTATION = "zlib"


def crc32(data, value: int = 0) -> int:
    """CRC-32 as in zlib (ISO-HDLC), continuing from ``value``."""
    return _crc32(data, value) & 0xFFFFFFFF


def align(n: int, alignment: int = ALIGNMENT) -> int:
    return (n + alignment - 1) // alignment * alignment


def _checked_crc(buf: bytes, what: str, field: str) -> None:
    stored = _U32.unpack_from(buf, len(buf) - 4)[0]
    actual = crc32(buf[:-4])
    if stored != actual:
        raise ChecksumError(f"{what}: CRC-32 mismatch (stored {stored:#010x}, computed {actual:#010x})", field=field)


@dataclass(frozen=True)
class Header:
    """The first 64 bytes: identity, version and where the metadata and data start."""

    metadata_size: int
    metadata_crc32: int
    version_major: int = VERSION_MAJOR
    version_minor: int = VERSION_MINOR
    required_features: int = 0
    optional_features: int = 0

    @property
    def data_offset(self) -> int:
        return align(HEADER_SIZE + self.metadata_size)

    def pack(self) -> bytes:
        body = _HEADER.pack(
            MAGIC,
            self.version_major,
            self.version_minor,
            HEADER_SIZE,
            self.metadata_size,
            self.data_offset,
            self.metadata_crc32,
            self.required_features,
            self.optional_features,
            bytes(16),
        )
        return body + _U32.pack(crc32(body))

    @classmethod
    def unpack(cls, buf: bytes) -> Header:
        if len(buf) < HEADER_SIZE:
            head = bytes(buf[:8])
            if head != MAGIC[: len(head)]:
                raise FormatError(f"header: bad magic {head!r} (not a sparse-label file)", field="magic")
            # a prefix of a header: a file cut short (section 11), not another kind of file
            raise IncompleteFileError(f"header: file is {len(buf)} bytes, shorter than the {HEADER_SIZE}-byte "
                                      "header (the writer did not finish, or the file was truncated)")
        buf = bytes(buf[:HEADER_SIZE])
        if buf[:8] != MAGIC:
            raise FormatError(f"header: bad magic {buf[:8]!r} (not a sparse-label file)", field="magic")
        (_, major, minor, header_size, meta_size, data_offset, meta_crc, required, optional, reserved) = (
            _HEADER.unpack_from(buf)
        )
        if major != VERSION_MAJOR:
            raise FormatError(
                f"header: format version {major}.{minor} is not readable by this library "
                f"(reads major version {VERSION_MAJOR}); upgrade sparselabels", field="version_major"
            )
        _checked_crc(buf, "header", "header_crc32")
        if header_size != HEADER_SIZE:
            raise FormatError(f"header: header_size is {header_size}, expected {HEADER_SIZE}", field="header_size")
        if required != 0:
            raise FormatError(f"header: required feature bits {required:#x} are unknown to this library",
                              field="required_features")
        if reserved != bytes(16):
            raise FormatError("header: reserved bytes are not zero", field="reserved")
        if meta_size > MAX_METADATA_BYTES:
            raise FormatError(f"header: metadata_size {meta_size} exceeds the limit of {MAX_METADATA_BYTES} bytes",
                              field="metadata_size")
        header = cls(meta_size, meta_crc, major, minor, required, optional)
        if data_offset != header.data_offset:
            raise FormatError(f"header: data_offset {data_offset} != align8(64 + metadata_size) = {header.data_offset}",
                              field="data_offset")
        return header


@dataclass(frozen=True)
class ChunkHeader:
    """64 bytes in front of every chunk. The payload after it is entries | table | records."""

    chunk_index: int
    first_sequence: int
    num_sequences: int
    table_size: int
    records_size: int
    flags: int
    payload_crc32: int

    @property
    def entry_size(self) -> int:
        return entry_size(self.flags)

    @property
    def entries_size(self) -> int:
        return self.num_sequences * self.entry_size

    @property
    def payload_size(self) -> int:
        return self.entries_size + self.table_size + self.records_size

    @property
    def total_size(self) -> int:
        return CHUNK_HEADER_SIZE + self.payload_size

    def pack(self) -> bytes:
        body = _CHUNK_HEADER.pack(
            CHUNK_MAGIC,
            self.chunk_index,
            self.first_sequence,
            self.num_sequences,
            self.table_size,
            self.records_size,
            self.flags,
            self.payload_crc32,
        )
        body += _U32.pack(0)
        return body + _U32.pack(crc32(body))

    @classmethod
    def unpack(cls, buf: bytes, where: str) -> ChunkHeader:
        buf = bytes(buf[:CHUNK_HEADER_SIZE])
        if len(buf) < CHUNK_HEADER_SIZE:
            raise FormatError(f"{where}: chunk header is truncated ({len(buf)} of {CHUNK_HEADER_SIZE} bytes)")
        if buf[:8] != CHUNK_MAGIC:
            raise FormatError(f"{where}: bad chunk magic {buf[:8]!r}", field="magic")
        _checked_crc(buf, f"{where}: chunk header", "header_crc32")
        (_, index, first, count, table_size, records_size, flags, payload_crc) = _CHUNK_HEADER.unpack_from(buf)
        reserved = _U32.unpack_from(buf, 56)[0]
        if reserved != 0:
            raise FormatError(f"{where}: reserved chunk header field is not zero", field="reserved")
        if flags & ~KNOWN_FLAGS:
            raise FormatError(f"{where}: unknown chunk flags {flags:#x}", field="flags")
        if count == 0:
            raise FormatError(f"{where}: chunk holds no sequences", field="num_sequences")
        if table_size % ALIGNMENT or records_size % ALIGNMENT:
            raise FormatError(f"{where}: table_size {table_size} or records_size {records_size} not a multiple of 8")
        return cls(index, first, count, table_size, records_size, flags, payload_crc)


ENTRY_COLUMNS = ("positions", "labels", "record_size", "record_crc32", "fingerprint")


def entry_size(flags: int) -> int:
    """Bytes per sequence entry in a chunk: positions, labels, record size, record CRC (u64 each)
    [+ fingerprint u64]."""
    return 40 if flags & FLAG_FINGERPRINTS else 32


@dataclass(frozen=True)
class Footer:
    """The last 64 bytes of a complete file: where the index is and what it holds."""

    index_offset: int
    num_sequences: int
    num_chunks: int
    num_positions: int
    num_labels: int
    flags: int
    index_crc32: int

    @property
    def index_size(self) -> int:
        return index_size(self.num_sequences, self.num_chunks, self.flags)

    def pack(self) -> bytes:
        body = _FOOTER.pack(
            FOOTER_MAGIC,
            self.index_offset,
            self.num_sequences,
            self.num_chunks,
            self.num_positions,
            self.num_labels,
            self.flags,
            self.index_crc32,
        )
        body += _U32.pack(0)
        return body + _U32.pack(crc32(body))

    @classmethod
    def unpack(cls, buf: bytes) -> Footer:
        buf = bytes(buf)
        if len(buf) != FOOTER_SIZE:
            raise FormatError(f"footer: expected {FOOTER_SIZE} bytes, got {len(buf)}")
        if buf[:8] != FOOTER_MAGIC:
            raise IncompleteFileError(
                "footer: no footer at the end of the file (the writer did not finish, or the file was truncated)"
            )
        _checked_crc(buf, "footer", "footer_crc32")
        (_, index_offset, num_seq, num_chunks, num_pos, num_labels, flags, index_crc) = _FOOTER.unpack_from(buf)
        if _U32.unpack_from(buf, 56)[0] != 0:
            raise FormatError("footer: reserved field is not zero", field="reserved")
        if flags & ~KNOWN_FLAGS:
            raise FormatError(f"footer: unknown flags {flags:#x}", field="flags")
        if index_offset % ALIGNMENT:
            raise FormatError(f"footer: index_offset {index_offset} is not a multiple of 8", field="index_offset")
        return cls(index_offset, num_seq, num_chunks, num_pos, num_labels, flags, index_crc)


# The index: u64 arrays, in this order.
INDEX_COLUMNS = (
    # name, length as (per-sequence, per-chunk, extra)
    ("position_start", "S+1"),
    ("label_start", "S+1"),
    ("record_offset", "S"),
    ("record_size", "S"),
    ("record_crc32", "S"),
    ("fingerprint", "S?"),
    ("chunk_offset", "C+1"),
    ("chunk_first_sequence", "C+1"),
    ("chunk_table_offset", "C"),
    ("chunk_table_size", "C"),
)


def column_lengths(num_sequences: int, num_chunks: int, flags: int) -> list[tuple[str, int]]:
    """The index columns present in a file and their lengths in elements."""
    out = []
    for name, rule in INDEX_COLUMNS:
        if rule == "S?" and not flags & FLAG_FINGERPRINTS:
            continue
        n = {"S+1": num_sequences + 1, "S": num_sequences, "S?": num_sequences, "C+1": num_chunks + 1, "C": num_chunks}
        out.append((name, n[rule]))
    return out


def index_size(num_sequences: int, num_chunks: int, flags: int) -> int:
    return 8 * sum(n for _, n in column_lengths(num_sequences, num_chunks, flags))

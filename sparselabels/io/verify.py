"""Full verification of one opened label file: every chunk checked against the index, every checksum, every
sequence decoded under the label rules.

``LabelFile(verify="full")`` calls it at open; ``validate`` reports what it finds; merge copies only chunks it
has checked. It works on an opened file and imports nothing from the modules that open files.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sparselabels.errors import ChecksumError, FormatError
from sparselabels.format.layout import CHUNK_HEADER_SIZE, ChunkHeader, crc32

if TYPE_CHECKING:
    from sparselabels.io.reader import LabelFile

_CRC_BLOCK = 16 << 20


def _crc_of(view: np.ndarray) -> int:
    crc = 0
    for start in range(0, view.shape[0], _CRC_BLOCK):
        crc = crc32(view[start : start + _CRC_BLOCK], crc)
    return crc


def chunk_disagreement(f: LabelFile, c: int, header: ChunkHeader, entries: np.ndarray | None = None) -> str | None:
    """How chunk ``c``'s own header (and ``entries``, if given) disagree with ``f``'s checked index, or None.

    Readers find sequences through the index; the chunk header and entries repeat what the index says. A
    chunk that disagrees must be neither reported valid nor copied by merge, which builds its index from
    the chunk entries and would silently turn one version of the truth into the other.
    """
    col = f._col
    start, end = int(col["chunk_offset"][c]), int(col["chunk_offset"][c + 1])
    first, last = int(col["chunk_first_sequence"][c]), int(col["chunk_first_sequence"][c + 1])
    expected = {
        "chunk_index": c,
        "first_sequence": first,
        "num_sequences": last - first,
        "flags": f.footer.flags,
        "table_size": int(col["chunk_table_size"][c]),
        "total_size": end - start,
    }
    wrong = [k for k, v in expected.items() if getattr(header, k) != v]
    if wrong:
        return f"header field(s) {wrong} disagree with the index"
    if entries is None:
        return None
    rows = entries.view("<u8").reshape(header.num_sequences, -1).astype(np.int64)
    checks = {
        "positions": np.diff(col["position_start"][first : last + 1]),
        "labels": np.diff(col["label_start"][first : last + 1]),
        "record sizes": col["record_size"][first:last],
        "record CRC-32s": col["record_crc32"][first:last],
    }
    fps = f.fingerprints
    if fps is not None:
        checks["fingerprints"] = fps[first:last].astype(np.int64)
    for column, (name, values) in enumerate(checks.items()):
        if not np.array_equal(rows[:, column], values):
            return f"chunk entries ({name}) disagree with the index"
    return None


@dataclass(frozen=True)
class CheckedChunk:
    """A chunk's parts as uint8 views, after ``checked_chunk``'s checks."""

    header: ChunkHeader
    entries: np.ndarray
    table: np.ndarray
    records: np.ndarray
    payload_crc32: int


def checked_chunk(f: LabelFile, c: int) -> CheckedChunk:
    """Chunk ``c`` of ``f``, checked as validate reports it and merge copies it: the header parses and agrees
    with the index, the payload CRC-32 matches (ChecksumError otherwise), the entries agree with the index.
    Raises FormatError naming the file and chunk."""
    col = f._index()
    source = f._opened()
    where = f"file {f.path!r}, chunk {c}"
    start = int(col["chunk_offset"][c])
    first, last = int(col["chunk_first_sequence"][c]), int(col["chunk_first_sequence"][c + 1])
    try:
        header = ChunkHeader.unpack(source.view(start, CHUNK_HEADER_SIZE, "chunk header"), where)
    except FormatError as exc:
        exc.at(path=f.path, chunk=c)
        raise
    problem = chunk_disagreement(f, c, header)
    if problem is not None:
        raise FormatError(f"{where}: {problem}", path=f.path, chunk=c)
    payload = source.view(start + CHUNK_HEADER_SIZE, header.payload_size, "chunk payload")
    crc = _crc_of(payload)
    if crc != header.payload_crc32:
        raise ChecksumError(f"{where}: payload CRC-32 mismatch (sequences {first}..{last - 1})", path=f.path, chunk=c,
                            field="payload_crc32")
    e, t = header.entries_size, header.table_size
    problem = chunk_disagreement(f, c, header, payload[:e])
    if problem is not None:
        raise FormatError(f"{where}: {problem}", path=f.path, chunk=c)
    return CheckedChunk(header, payload[:e], payload[e : e + t], payload[e + t :], crc)


def problems(f: LabelFile) -> Iterator[FormatError]:
    """Every problem of ``f``, in file order, as the exception it is raised as: first the chunks (header,
    payload CRC-32, entries); only when they are all sound, the sequences (record CRC-32, decoding, label
    rules). Stop iterating to stop checking."""
    chunk_problem = False
    for c in range(f.num_chunks):
        try:
            checked_chunk(f, c)
        except FormatError as exc:
            chunk_problem = True
            yield exc
    if chunk_problem:
        return
    for i in range(len(f)):
        try:
            f.read(i)  # the record's CRC-32, the codec's own checks and the label rules
        except FormatError as exc:
            yield exc
        except MemoryError:  # an index claiming more than this machine can decode (or a hostile one)
            yield FormatError(f"file {f.path!r}, sequence {i}: decoding its {f.sequence_lengths[i]} positions "
                              "as the index claims them ran out of memory", path=f.path, sequence=i)


def verify_full(f: LabelFile) -> None:
    """Raise the first problem ``problems(f)`` finds (it names the file and the place), if any."""
    for exc in problems(f):
        raise exc

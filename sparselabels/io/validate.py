"""Full verification of label files: every checksum, every structure, every label rule.

``open_labels`` checks structure (and the index checksum) at open; ``validate`` additionally reads every
chunk and decodes every sequence, so it costs one pass over the file. It reports problems with their
location instead of raising, for the ``sparselabels validate`` command and for pipelines that must know.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparselabels.errors import ChecksumError, FormatError, InputError, SparseLabelsError
from sparselabels.format.layout import CHUNK_HEADER_SIZE, ChunkHeader, crc32
from sparselabels.io.reader import LabelFile
from sparselabels.io.remote import is_url

_CRC_BLOCK = 16 << 20


@dataclass
class ValidationReport:
    """What ``validate`` found: ``ok`` is True only when ``problems`` is empty."""

    path: str
    problems: list[str] = field(default_factory=list)
    num_sequences: int = 0
    num_positions: int = 0
    num_labels: int = 0
    files: int = 0
    #: the exception behind the first problem of a file, when one was caught (``verify="full"`` raises it)
    first_error: FormatError | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, exc: FormatError) -> None:
        """Record a problem raised as ``exc`` (its message, and the exception itself if it is the first)."""
        if self.first_error is None and not self.problems:
            self.first_error = exc
        self.problems.append(str(exc))

    def __bool__(self) -> bool:
        return self.ok


def _crc_of(view: np.ndarray) -> int:
    crc = 0
    for start in range(0, view.shape[0], _CRC_BLOCK):
        crc = crc32(view[start : start + _CRC_BLOCK], crc)
    return crc


def validate_file(path: str | os.PathLike, *, labels: LabelFile | None = None,
                  max_problems: int = 20) -> ValidationReport:
    """Check one file completely; stop collecting after ``max_problems`` (at least 1)."""
    _check_max_problems(max_problems)
    report = ValidationReport(os.fspath(path), files=1)
    own = labels is None
    if own:
        try:
            labels = LabelFile(path, verify="index")
        except FormatError as exc:
            report.add(exc)
            return report
        except OSError as exc:
            report.problems.append(f"file {os.fspath(path)!r}: cannot open ({exc})")
            return report
    try:
        report.num_sequences, report.num_positions, report.num_labels = (
            len(labels), labels.num_positions, labels.num_labels)
        _check_chunks(labels, report, max_problems)
        if report.ok:
            _check_sequences(labels, report, max_problems)
    finally:
        if own:
            labels.close()
    return report


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
    header = ChunkHeader.unpack(source.view(start, CHUNK_HEADER_SIZE, "chunk header"), where)
    problem = chunk_disagreement(f, c, header)
    if problem is not None:
        raise FormatError(f"{where}: {problem}")
    payload = source.view(start + CHUNK_HEADER_SIZE, header.payload_size, "chunk payload")
    crc = _crc_of(payload)
    if crc != header.payload_crc32:
        raise ChecksumError(f"{where}: payload CRC-32 mismatch (sequences {first}..{last - 1})")
    e, t = header.entries_size, header.table_size
    problem = chunk_disagreement(f, c, header, payload[:e])
    if problem is not None:
        raise FormatError(f"{where}: {problem}")
    return CheckedChunk(header, payload[:e], payload[e : e + t], payload[e + t :], crc)


def _check_chunks(f: LabelFile, report: ValidationReport, max_problems: int) -> None:
    for c in range(f.num_chunks):
        if len(report.problems) >= max_problems:
            return
        try:
            checked_chunk(f, c)
        except FormatError as exc:
            report.add(exc)


def _check_max_problems(max_problems: int) -> None:
    # 0 would stop before the first check and report a corrupt file as valid.
    if isinstance(max_problems, bool) or not isinstance(max_problems, int) or max_problems < 1:
        raise InputError(f"max_problems must be an integer >= 1, got {max_problems!r}")


def _check_sequences(f: LabelFile, report: ValidationReport, max_problems: int) -> None:
    for i in range(len(f)):
        if len(report.problems) >= max_problems:
            return
        try:
            f.read(i)  # the record's CRC-32, the codec's own checks and the label rules
        except FormatError as exc:
            report.add(exc)
        except MemoryError:  # an index claiming more than this machine can decode (or a hostile one)
            report.add(FormatError(f"file {f.path!r}, sequence {i}: decoding its {f.sequence_lengths[i]} positions "
                                   "as the index claims them ran out of memory"))


def validate(path: str | os.PathLike, *, max_problems: int = 20, **open_options) -> ValidationReport:
    """Validate a file, a manifest or a shard directory; every shard is checked completely. A URL is read as
    :func:`~sparselabels.open_labels` reads it (``open_options``: ``storage_options``, ``cache_dir``, ...)."""
    from sparselabels.io.shards import LabelShards, open_labels

    _check_max_problems(max_problems)
    if is_url(path):
        return _validate_url(path, max_problems, open_options)
    path = Path(path)
    if path.is_file() and path.suffix != ".json":
        return validate_file(path, max_problems=max_problems)
    report = ValidationReport(os.fspath(path))
    try:
        shards = open_labels(path, verify="structure")
    except (SparseLabelsError, OSError) as exc:
        report.problems.append(str(exc))
        return report
    assert isinstance(shards, LabelShards)
    with shards:
        for k in range(shards.num_shards):
            if len(report.problems) >= max_problems:
                break
            try:
                shard = shards.shard(k)
            except (SparseLabelsError, OSError) as exc:
                report.problems.append(str(exc))
                continue
            sub = validate_file(shard.path, max_problems=max_problems - len(report.problems))
            report.problems.extend(sub.problems)
            report.files += 1
            report.num_sequences += sub.num_sequences
            report.num_positions += sub.num_positions
            report.num_labels += sub.num_labels
            if len(report.problems) >= max_problems:
                break
    return report


def _validate_url(url: str, max_problems: int, open_options: dict) -> ValidationReport:
    """``validate`` of a remote store: every shard opened with its index CRC checked, then checked completely."""
    from sparselabels.io.shards import LabelShards, open_labels

    report = ValidationReport(url)
    try:
        labels = open_labels(url, verify="index", **open_options)
    except (SparseLabelsError, OSError) as exc:
        report.problems.append(str(exc))
        return report
    with labels:
        if not isinstance(labels, LabelShards):
            return validate_file(url, labels=labels, max_problems=max_problems)
        for k in range(labels.num_shards):
            if len(report.problems) >= max_problems:
                break
            try:
                shard = labels.shard(k)
            except (SparseLabelsError, OSError) as exc:
                report.problems.append(str(exc))
                continue
            sub = validate_file(shard.path, labels=shard, max_problems=max_problems - len(report.problems))
            report.problems.extend(sub.problems)
            report.first_error = report.first_error or sub.first_error
            report.files += 1
            report.num_sequences += sub.num_sequences
            report.num_positions += sub.num_positions
            report.num_labels += sub.num_labels
    return report

"""Bad input and what you get: one test per row of the table in docs/errors.md.

Each row names a class of bad input to the writer, the reader, validate/merge, the command line, the sampler or
the loss; the exception type; and the message, written with ``…`` where it varies (file names, lists). The
table in docs/errors.md is generated from ``ROWS`` (``python tests/test_bad_input.py`` prints it,
``--write`` rewrites it in place), and a test checks that the document and the rows agree.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import file_surgery as fs
import msgpack
import numpy as np
import pytest

import sparselabels as sl
from sparselabels.errors import (
    AlignmentError,
    ChecksumError,
    ClosedError,
    CompatibilityError,
    FormatError,
    IncompleteFileError,
    InputError,
    OutputExistsError,
    SparseLabelsError,
)

REPO = Path(__file__).resolve().parents[1]

DOC = REPO / "docs" / "errors.md"
TABLE_START, TABLE_END = "<!-- table: bad-input -->\n", "<!-- /table -->"


@dataclass(frozen=True)
class Row:
    id: str
    where: str
    bad_input: str
    error: type[BaseException] | None  # None: the row's function checks an exit code or a report itself
    message: str  # "…" stands for a varying part
    run: Callable[[Path], object]

    def pattern(self) -> str:
        return ".*?".join(re.escape(part) for part in self.message.split("…"))


ROWS: dict[str, Row] = {}


def row(id: str, where: str, bad_input: str, error: type[BaseException] | None, message: str):
    def register(fn: Callable[[Path], object]) -> Callable[[Path], object]:
        assert id not in ROWS, id
        ROWS[id] = Row(id, where, bad_input, error, message, fn)
        return fn

    return register


# -- helpers ---------------------------------------------------------------------------------------------------
def _writer(tmp_path: Path, name: str = "w.slbl", **kw) -> sl.LabelWriter:
    return sl.LabelWriter(tmp_path / name, **{"vocab_size": 100, "rounds": 50, **kw})


def _write(tmp_path: Path, *sequence, name: str = "w.slbl", **kw) -> None:
    w = _writer(tmp_path, name, **kw)
    try:
        w.write(*sequence)
    finally:
        w.abort()


def _valid_file(tmp_path: Path, name: str = "f.slbl", *, fingerprints: bool = False, rounds: int = 50,
                vocab_size: int = 100) -> Path:
    path = tmp_path / name  # the raw codec: the rows below edit its bytes by their documented layout
    with sl.LabelWriter(path, vocab_size=vocab_size, rounds=rounds, overwrite=True, chunk_bytes=64,
                        codec="raw") as w:
        for k in range(4):
            ids = np.array([3, 7 + k, 50 + k])
            w.write(ids, [rounds - 2, 1, 1], [0, 0, 3], fingerprint=k if fingerprints else None)
    return path


def _edit(path: Path, edit: Callable[[bytearray, fs.FileLayout], None]) -> Path:
    buf = bytearray(path.read_bytes())
    edit(buf, fs.parse_layout(bytes(buf)))
    path.write_bytes(bytes(buf))
    return path


def _record_edit(offset_in_record: int, value: bytes, *, fix_crc: bool):
    """Overwrite bytes of sequence 2's record (optionally fixing every CRC over it, so deeper checks run)."""
    def edit(buf: bytearray, lay: fs.FileLayout) -> None:
        at = lay.records[2].start + offset_in_record
        buf[at:at + len(value)] = value
        if fix_crc:
            fs.reseal_records_at(buf, lay, at)

    return edit


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparselabels.cli.main", *argv], capture_output=True, text=True,
                          timeout=120)


# -- the writer: LabelWriter(...) ---------------------------------------------------------------------------
@row("writer-value-kind", "LabelWriter", "unknown `value_kind`", InputError,
     "value_kind must be one of ['count', 'prob'], got 'logits'")
def _(tmp_path):
    _writer(tmp_path, value_kind="logits")


@row("writer-rounds-missing", "LabelWriter", "`value_kind=\"count\"` without `rounds`", InputError,
     "rounds (draws per position, 1..255) is required for value_kind 'count'")
def _(tmp_path):
    _writer(tmp_path, rounds=None)


@row("writer-rounds-range", "LabelWriter", "`rounds` outside 1..255 (or not an integer)", InputError,
     "metadata argument: rounds 256 must be an integer in 1..255 for value_kind 'count'")
def _(tmp_path):
    _writer(tmp_path, rounds=256)


@row("writer-rounds-prob", "LabelWriter", "`rounds` given for `value_kind=\"prob\"`", InputError,
     "metadata argument: rounds must be nil for value_kind 'prob', got 50")
def _(tmp_path):
    _writer(tmp_path, value_kind="prob")


@row("writer-vocab-size", "LabelWriter", "`vocab_size` not an integer in 1..2**32", InputError,
     "metadata argument: vocab_size 'abc' must be an integer in 1..2**32")
def _(tmp_path):
    _writer(tmp_path, vocab_size="abc")


@row("writer-codec", "LabelWriter", "unknown codec", InputError,
     "codec 'zstd' is not known to this sparselabels (available: […])")
def _(tmp_path):
    _writer(tmp_path, codec="zstd")


@row("writer-metadata-reserved", "LabelWriter", "`metadata` sets a key the library sets", InputError,
     "metadata: keys ['vocab_size'] are set by the library; pass them as LabelWriter arguments")
def _(tmp_path):
    _writer(tmp_path, metadata={"vocab_size": 5})


@row("writer-metadata-type", "LabelWriter", "`metadata` value msgpack cannot store (set, array, object)",
     InputError, "metadata argument: value of type set is not allowed")
def _(tmp_path):
    _writer(tmp_path, metadata={"tags": {1, 2}})


@row("writer-metadata-known-key", "LabelWriter", "a known metadata key with a wrong value", InputError,
     "metadata argument: temperature 0 must be finite and > 0")
def _(tmp_path):
    _writer(tmp_path, metadata={"temperature": 0})


@row("writer-metadata-size", "LabelWriter", "`metadata` over 16 MiB encoded", InputError,
     "metadata: … bytes encoded, more than the limit of 16777216")
def _(tmp_path):
    _writer(tmp_path, metadata={"blob": b"x" * (16 << 20)})


@row("writer-chunk-bytes", "LabelWriter", "`chunk_bytes` not a positive integer", InputError,
     "chunk_bytes must be a positive integer, got 0")
def _(tmp_path):
    _writer(tmp_path, chunk_bytes=0)


@row("writer-path-exists", "LabelWriter", "the file exists", OutputExistsError,
     "w.slbl exists; pass overwrite=True to replace it")
def _(tmp_path):
    _valid_file(tmp_path, "w.slbl")
    _writer(tmp_path)


@row("writer-partial-exists", "LabelWriter", "an interrupted `<path>.partial` exists", SparseLabelsError,
     "w.slbl.partial holds an unfinished file; pass resume=True to continue it or overwrite=True to start again")
def _(tmp_path):
    w = _writer(tmp_path)
    w.write([1], [50], [0, 1])
    w.abort()
    _writer(tmp_path)


@row("writer-locked", "LabelWriter", "a second writer for a path being written", SparseLabelsError,
     "w.slbl.partial is being written by another LabelWriter")
def _(tmp_path):
    first = _writer(tmp_path)
    try:
        _writer(tmp_path, overwrite=True)
    finally:
        first.abort()


@row("writer-partial-link", "LabelWriter", "a symbolic link (or a hard-linked file) planted at `<path>.partial`: "
     "the writer only writes a file it created", SparseLabelsError,
     "w.slbl.partial is a symbolic link; the writer only writes a partial file it created: remove the link")
def _(tmp_path):
    (tmp_path / "target").write_bytes(b"not yours")
    os.symlink(tmp_path / "target", tmp_path / "w.slbl.partial")
    _writer(tmp_path, overwrite=True)


@row("writer-path-directory", "LabelWriter", "a directory at the path (refused at construction, not at `close()`)",
     InputError, "w.slbl is a directory; a label file needs a file name")
def _(tmp_path):
    (tmp_path / "w.slbl").mkdir()
    _writer(tmp_path, overwrite=True)


@row("writer-name-too-long", "LabelWriter", "a file name that fits the file system but not with `.partial` appended",
     InputError, "the writer keeps the unfinished file as '…', longer than the … bytes a file name may have here; "
     "choose a shorter name")
def _(tmp_path):
    _writer(tmp_path, "x" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 5) + ".slbl")


@row("writer-disk-full", "LabelWriter.write/flush/close", "the disk fills up (ENOSPC, or any OSError): the sequence "
     "is not counted and the same call can be retried; after a failed fsync the writer refuses to go on (abort, "
     "then resume)", OSError, "[Errno 28] No space left on device: '…w.slbl.partial'")
def _(tmp_path):
    w = _writer(tmp_path, chunk_bytes=1)
    real = os.pwrite

    def full(fd, data, offset):
        raise OSError(28, "No space left on device")

    os.pwrite = full
    try:
        w.write([1], [50], [0, 1])
    finally:
        os.pwrite = real
        assert w.num_sequences == 0
        w.abort()


@row("writer-resume-settings", "LabelWriter", "`resume=True` with other settings than the partial file",
     CompatibilityError, "cannot resume: rounds is 50 in the partial file but 40 was requested")
def _(tmp_path):
    w = _writer(tmp_path)
    w.write([1], [50], [0, 1])
    w.flush()
    w.abort()
    _writer(tmp_path, rounds=40, resume=True)


@row("writer-resume-complete", "LabelWriter", "`resume=True` for a finished file", SparseLabelsError,
     "w.slbl is already complete; nothing to resume")
def _(tmp_path):
    _valid_file(tmp_path, "w.slbl")
    _writer(tmp_path, resume=True)


@row("writer-closed", "LabelWriter.write", "writing after `close()`/`abort()`", ClosedError,
     "LabelWriter for … is closed")
def _(tmp_path):
    w = _writer(tmp_path)
    w.close()
    w.write([1], [50], [0, 1])


# -- the writer: write(ids, counts, indptr, fingerprint) ----------------------------------------------------
@row("write-shape", "LabelWriter.write", "an array that is not 1-D", InputError,
     "w.slbl: sequence 0: ids must be 1-D, got shape (1, 2)")
def _(tmp_path):
    _write(tmp_path, [[1, 2]], [25, 25], [0, 2])


@row("write-ids-dtype", "LabelWriter.write", "ids that are not integers", InputError,
     "sequence 0: ids must be integers, got dtype float64")
def _(tmp_path):
    _write(tmp_path, [1.0, 2.0], [25, 25], [0, 2])


@row("write-counts-dtype", "LabelWriter.write", "counts that are not integers (value kind count)", InputError,
     "sequence 0: counts must be integers for value_kind 'count', got float64")
def _(tmp_path):
    _write(tmp_path, [1, 2], [25.0, 25.0], [0, 2])


@row("write-prob-dtype", "LabelWriter.write", "probabilities that are not floating point", InputError,
     "sequence 0: probabilities must be floating point, got int64")
def _(tmp_path):
    _write(tmp_path, [1, 2], np.array([0, 1]), [0, 2], rounds=None, value_kind="prob")


@row("write-lengths", "LabelWriter.write", "counts and ids of different lengths", InputError,
     "sequence 0: counts has 1 entries but ids has 2")
def _(tmp_path):
    _write(tmp_path, [1, 2], [50], [0, 2])


@row("write-indptr-empty", "LabelWriter.write", "an empty or non-integer indptr", InputError,
     "sequence 0: indptr must be a non-empty integer array (num_positions + 1 entries)")
def _(tmp_path):
    _write(tmp_path, [], [], [])


@row("write-indptr-start", "LabelWriter.write", "indptr[0] != 0", InputError,
     "sequence 0, field 'indptr': indptr[0] is 1, expected 0")
def _(tmp_path):
    _write(tmp_path, [1, 2], [25, 25], [1, 2])


@row("write-indptr-decreasing", "LabelWriter.write", "indptr decreasing", InputError,
     "sequence 0, position 1, field 'indptr': indptr decreases (1 after 2)")
def _(tmp_path):
    _write(tmp_path, [1, 2], [25, 25], [0, 2, 1, 2])


@row("write-indptr-end", "LabelWriter.write", "indptr[-1] != len(ids)", InputError,
     "sequence 0, field 'indptr': indptr[-1] is 1, but there are 2 labels")
def _(tmp_path):
    _write(tmp_path, [1, 2], [25, 25], [0, 1])


@row("write-indptr-huge", "LabelWriter.write", "a uint64 indptr with values >= 2**63", InputError,
     "sequence 0: indptr holds values >= 2**63")
def _(tmp_path):
    _write(tmp_path, [1], [50], np.array([0, 1 << 63], dtype=np.uint64))


@row("write-id-range", "LabelWriter.write", "an id outside 0..vocab_size-1 (negative, or too large)", InputError,
     "sequence 0, position 0, label 1, field 'ids': id 100 is outside the vocabulary (vocab_size 100)")
def _(tmp_path):
    _write(tmp_path, [3, 100], [25, 25], [0, 2])


@row("write-id-beyond-codec", "LabelWriter.write", "a label the codec cannot store: with `rans` and "
     "`vocab_size=2**32`, a position whose first id is 2**32 - 1", InputError,
     "sequence 0, position 0, label 0, field 'ids': id 4294967295 as a position's first id is beyond codec 'rans' "
     "(…); write this vocabulary with codec 'raw'")
def _(tmp_path):
    _write(tmp_path, [2**32 - 1], [50], [0, 1], vocab_size=2**32)


@row("write-id-order", "LabelWriter.write", "ids of a position not strictly ascending (or repeated)",
     InputError, "sequence 0, position 0, label 1, field 'ids': ids are not strictly ascending (3 after 7)")
def _(tmp_path):
    _write(tmp_path, [7, 3], [25, 25], [0, 2])


@row("write-count-zero", "LabelWriter.write", "a count below 1 (zero or negative)", InputError,
     "sequence 0, position 0, label 0, field 'counts': count is 0; every stored label has count >= 1")
def _(tmp_path):
    _write(tmp_path, [3, 7], [0, 50], [0, 2])


@row("write-count-sum", "LabelWriter.write", "counts of a position not summing to rounds", InputError,
     "sequence 0, position 0, field 'counts': counts sum to 49, expected rounds = 50")
def _(tmp_path):
    _write(tmp_path, [3, 7], [24, 25], [0, 2])


@row("write-count-over-rounds", "LabelWriter.write", "a count above rounds (checked before the uint8 cast: 306 "
     "never wraps to 50)", InputError, "sequence 0, position 0, label 0, field 'counts': count 306 is larger "
     "than rounds = 50")
def _(tmp_path):
    _write(tmp_path, [3, 7], [306, -256], [0, 2])


@row("write-too-many-labels", "LabelWriter.write", "more labels in one position than rounds (count) or 65,535 "
     "(prob)", InputError, "sequence 0, position 0, field 'indptr': 51 labels in one position, more than the "
     "limit of 50")
def _(tmp_path):
    _write(tmp_path, np.arange(51), np.ones(51, np.int64), [0, 51])


@row("write-prob-range", "LabelWriter.write", "a probability outside (0, 1] as stored in float16 (NaN, 0, "
     "1e-9 that rounds to 0, 1.5)", InputError, "sequence 0, position 0, label 0, field 'counts': probability "
     "0.0 is not in (0, 1]")
def _(tmp_path):
    _write(tmp_path, [3, 7], np.array([1e-9, 0.5]), [0, 2], rounds=None, value_kind="prob")


@row("write-prob-sum", "LabelWriter.write", "probabilities of a position summing to more than 1 + 0.001",
     InputError, "sequence 0, position 0, field 'counts': probabilities sum to 1.25, more than 1")
def _(tmp_path):
    _write(tmp_path, [3, 7], np.array([0.75, 0.5]), [0, 2], rounds=None, value_kind="prob")


@row("write-fingerprint-value", "LabelWriter.write", "a fingerprint that is not an integer in 0..2**64-1 "
     "(float, string, negative)", InputError,
     "sequence 0: fingerprint must be an integer in 0..2**64-1, got 1.5")
def _(tmp_path):
    _write(tmp_path, [1], [50], [0, 1], 1.5)


@row("write-fingerprint-mixed", "LabelWriter.write", "fingerprints for some sequences only", InputError,
     "sequence 1: fingerprint is missing, but earlier sequences have fingerprint; a file stores one for every "
     "sequence or for none")
def _(tmp_path):
    w = _writer(tmp_path)
    try:
        w.write([1], [50], [0, 1], fingerprint=7)
        w.write([1], [50], [0, 1])
    finally:
        w.abort()


# -- the reader: open_labels / LabelFile ---------------------------------------------------------------------
@row("read-missing", "open_labels", "a path that does not exist", FileNotFoundError, "No such file or directory")
def _(tmp_path):
    sl.open_labels(tmp_path / "nothing.slbl")


@row("read-not-regular", "open_labels", "a directory, FIFO or device given as a file", FormatError,
     "not a regular file")
def _(tmp_path):
    os.mkfifo(tmp_path / "fifo.slbl")
    sl.LabelFile(tmp_path / "fifo.slbl")


@row("read-not-label-file", "open_labels", "a file of another kind", FormatError,
     "header: bad magic b'hello wo' (not a sparse-label file)")
def _(tmp_path):
    (tmp_path / "x.slbl").write_text("hello world, this is not a label file" * 3)
    sl.open_labels(tmp_path / "x.slbl")


@row("read-short", "open_labels", "a file cut inside its 64-byte header", IncompleteFileError,
     "header: file is 10 bytes, shorter than the 64-byte header (the writer did not finish, or the file was "
     "truncated)")
def _(tmp_path):
    (tmp_path / "x.slbl").write_bytes(b"\x89SLB\r\n\x1a\n\x01\x00")
    sl.open_labels(tmp_path / "x.slbl")


@row("read-future-version", "open_labels", "a file of a newer major format version", FormatError,
     "header: format version 2.0 is not readable by this library (reads major version 1); upgrade sparselabels")
def _(tmp_path):
    def edit(buf, lay):
        struct.pack_into("<H", buf, 8, 2)
        fs.fix_struct_crc(buf, 0)

    sl.open_labels(_edit(_valid_file(tmp_path), edit))


@row("read-required-feature", "open_labels", "a required feature bit this library does not know", FormatError,
     "header: required feature bits 0x4 are unknown to this library")
def _(tmp_path):
    def edit(buf, lay):
        struct.pack_into("<I", buf, 36, 4)
        fs.fix_struct_crc(buf, 0)

    sl.open_labels(_edit(_valid_file(tmp_path), edit))


@row("read-incomplete", "open_labels", "an unfinished file (the writer was interrupted; truncated)",
     IncompleteFileError, "footer: no footer at the end of the file (the writer did not finish, or the file "
     "was truncated)")
def _(tmp_path):
    w = _writer(tmp_path)
    w.write([1], [50], [0, 1])
    w.flush()
    w.abort()
    sl.open_labels(tmp_path / "w.slbl.partial")


@row("read-checksum", "open_labels", "a flipped bit in the header, metadata, index or footer", ChecksumError,
     "index: CRC-32 mismatch")
def _(tmp_path):
    def edit(buf, lay):
        buf[lay.index.start + 3] ^= 0x10

    sl.open_labels(_edit(_valid_file(tmp_path), edit))


@row("read-metadata", "open_labels", "metadata with a missing key, a wrong value or a forbidden type",
     FormatError, "metadata: rounds 0 must be an integer in 1..255 for value_kind 'count'")
def _(tmp_path):
    path = _valid_file(tmp_path)
    data = path.read_bytes()
    lay = fs.parse_layout(data)
    meta = msgpack.unpackb(data[lay.metadata.start:lay.metadata.end])
    path.write_bytes(fs.relayout_with_metadata(data, lay, msgpack.packb({**meta, "rounds": 0})))
    sl.open_labels(path)


@row("read-unknown-codec", "open_labels", "a codec this installation does not have", FormatError,
     "codec 'zstd' is not known to this sparselabels (available: […])")
def _(tmp_path):
    path = _valid_file(tmp_path)
    data = path.read_bytes()
    lay = fs.parse_layout(data)
    meta = msgpack.unpackb(data[lay.metadata.start:lay.metadata.end])
    path.write_bytes(fs.relayout_with_metadata(data, lay, msgpack.packb({**meta, "codec": "zstd"})))
    sl.open_labels(path)


@row("read-index", "open_labels", "an index that contradicts itself or the file (checked before use, even "
     "with a valid CRC)", FormatError, "index: record of sequence 2 is not where its chunk layout puts it")
def _(tmp_path):
    def edit(buf, lay):
        at = lay.columns["record_offset"].start + 2 * 8
        struct.pack_into("<Q", buf, at, struct.unpack_from("<Q", buf, at)[0] + 8)
        fs.fix_index_crc(buf, lay)

    sl.open_labels(_edit(_valid_file(tmp_path), edit))


@row("read-record-rules", "LabelFile[i]", "a record whose labels break the rules (e.g. an id outside the "
     "vocabulary)", FormatError, "sequence 2, position 1, label 0, field 'ids': id 4294967295 is outside the "
     "vocabulary (vocab_size 100)")
def _(tmp_path):
    path = _edit(_valid_file(tmp_path), _record_edit(4, b"\xff\xff\xff\xff", fix_crc=True))
    with sl.open_labels(path) as f:
        f[2]


@row("read-record-codec", "LabelFile[i]", "a record the codec cannot decode (e.g. labels per position not "
     "adding up)", FormatError, "sequence 2: raw record: labels per position sum to 4, the index says 3 labels")
def _(tmp_path):
    path = _edit(_valid_file(tmp_path), _record_edit(1, b"\x04", fix_crc=True))  # lpp of position 1: 3 -> 4
    with sl.open_labels(path) as f:
        f[2]


@row("read-record-checksum", "LabelFile[i]", "a changed record byte, even one that still obeys the label rules "
     "(every read verifies its record's CRC-32 before decoding)", ChecksumError, "sequence 2: record CRC-32 mismatch")
def _(tmp_path):
    path = _edit(_valid_file(tmp_path), _record_edit(8, b"\x08", fix_crc=False))  # id 7+2=9 -> 8: still valid
    with sl.open_labels(path) as f:
        f[2]


@row("read-index-range", "LabelFile[i]", "a sequence index out of range", IndexError,
     "sequence 4 out of range for 4 sequences in …")
def _(tmp_path):
    with sl.open_labels(_valid_file(tmp_path)) as f:
        f[4]


@row("read-positions-range", "Labels.positions", "a position range outside 0..num_positions", IndexError,
     "positions(0, 9) out of range for 8 positions")
def _(tmp_path):
    with sl.open_labels(_valid_file(tmp_path)) as f:
        f.positions(0, 9)


@row("read-verify-level", "open_labels", "an unknown `verify` level", InputError,
     "verify must be one of ('structure', 'index', 'full'), got 'fast'")
def _(tmp_path):
    sl.open_labels(_valid_file(tmp_path), verify="fast")


@row("read-closed", "LabelFile[i]", "reading after `close()`, or while another thread closes the file (reads in "
     "flight finish; later ones get this error)", ClosedError, "is closed")
def _(tmp_path):
    f = sl.open_labels(_valid_file(tmp_path))
    f.close()
    f[0]


# -- shard sets, validate, merge --------------------------------------------------------------------------------
@row("shards-missing", "open_labels(manifest)", "a shard listed in the manifest is gone", FormatError,
     "shard 1 (…): file is missing")
def _(tmp_path):
    a, b = _valid_file(tmp_path, "a.slbl"), _valid_file(tmp_path, "b.slbl")
    manifest = sl.merge(tmp_path / "m.json", [a, b])
    b.unlink()
    with sl.open_labels(manifest) as shards:
        shards[5]


@row("shards-changed", "open_labels(manifest)", "a shard replaced after the manifest was written", FormatError,
     "the manifest says …; the shard changed")
def _(tmp_path):
    a, b = _valid_file(tmp_path, "a.slbl"), _valid_file(tmp_path, "b.slbl")
    manifest = sl.merge(tmp_path / "m.json", [a, b])
    with sl.LabelWriter(b, vocab_size=100, rounds=50, overwrite=True) as w:
        w.write([5], [50], [0, 1])
    with sl.open_labels(manifest) as shards:
        shards[5]


@row("shards-incompatible", "open_labels(directory)", "shards that disagree on vocabulary, rounds, value kind, "
     "teacher, tokenizer or temperature", CompatibilityError, "rounds is 40, but … has 50")
def _(tmp_path):
    _valid_file(tmp_path, "a.slbl")
    _valid_file(tmp_path, "b.slbl", rounds=40)
    sl.open_labels(tmp_path)


@row("shards-escape", "open_labels(manifest)", "a manifest entry that is absolute or leaves the manifest's "
     "directory (`..`)", FormatError, "shard path '../a.slbl' leaves the manifest's directory")
def _(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    manifest = sl.write_manifest(tmp_path / "m.json", [_valid_file(tmp_path, "a.slbl")])
    body = json.loads(manifest.read_text())
    body["shards"][0]["path"] = "../a.slbl"
    (sub / "m.json").write_text(json.dumps(body))
    sl.open_labels(sub / "m.json")


@row("shards-empty-directory", "open_labels(directory)", "a directory with no manifest.json and no shards",
     FormatError, "holds no manifest.json and no *.slbl files")
def _(tmp_path):
    sl.open_labels(tmp_path)


@row("shards-unfinished-directory", "open_labels(directory)", "a directory (no manifest.json) with an unfinished "
     "`.partial` file, or only some shards of a labeling run (`shard-R-of-W`): it would read as a smaller dataset",
     FormatError, "holds the shards of a 2-rank labeling run but not as one complete run (shard 1 is missing)")
def _(tmp_path):
    _valid_file(tmp_path, "shard-00000-of-00002.slbl")
    sl.open_labels(tmp_path)


@row("shards-dangling-link", "open_labels(directory)", "a `*.slbl` entry that is a dangling symbolic link or not a "
     "regular file (skipping it would read as a smaller dataset)", FormatError,
     "holds b.slbl, a link to a missing file: restore or remove it before reading the directory")
def _(tmp_path):
    _valid_file(tmp_path, "a.slbl")
    os.symlink(tmp_path / "gone.slbl", tmp_path / "b.slbl")
    sl.open_labels(tmp_path)


@row("shards-manifest-metadata", "open_labels(manifest)", "a manifest whose metadata lacks the label settings "
     "(`vocab_size`, `value_kind`, `rounds`) or holds invalid values", FormatError,
     "metadata: required keys missing: ['vocab_size', 'value_kind', 'rounds']")
def _(tmp_path):
    _valid_file(tmp_path, "a.slbl")
    manifest = sl.merge(tmp_path / "m.json", [tmp_path / "a.slbl"])
    body = json.loads(manifest.read_text())
    body["metadata"] = {}
    manifest.write_text(json.dumps(body))
    sl.open_labels(manifest)


@row("validate-report", "validate", "any bad file: `validate` reports, it does not raise", None,
     "report.ok is False; report.problems lists each problem with file, chunk, sequence, position, field")
def _(tmp_path):
    path = _edit(_valid_file(tmp_path), _record_edit(4, b"\xff\xff\xff\xff", fix_crc=True))
    report = sl.validate(path)
    assert not report.ok
    assert re.search(r"sequence 2, position 1, label 0, field 'ids': id 4294967295 is outside", str(report.problems[0]))
    missing = sl.validate(tmp_path / "nothing.slbl")
    assert not missing.ok and "No such file or directory" in str(missing.problems[0])


@row("read-overwritten", "LabelFile[i]", "a mapped file truncated or overwritten in place (`cp`) while open "
     "(touching the map past a new end would kill the process; new bytes would be read as the old index)",
     FormatError, "truncated or overwritten while open; reopen it")
def _(tmp_path):
    small = tmp_path / "small.slbl"  # grown here (a shrunk file is tested in a child: tests/test_reader_lifecycle)
    with sl.LabelWriter(small, vocab_size=100, rounds=50) as w:
        w.write([5], [50], [0, 1])
    big = _valid_file(tmp_path, "big.slbl")
    with sl.open_labels(small) as f:
        small.write_bytes(big.read_bytes())
        f[0]


@row("read-pickle-changed", "pickle.loads(LabelFile)", "another file at the pickled file's path (a DataLoader "
     "worker reopening it)", FormatError, "changed after it was opened")
def _(tmp_path):
    import pickle

    path = _valid_file(tmp_path)
    with sl.open_labels(path) as f:
        state = pickle.dumps(f)
    _valid_file(tmp_path, rounds=40)
    pickle.loads(state)


@row("validate-max-problems", "validate", "`max_problems` below 1 (0 would report a bad file as valid)",
     InputError, "max_problems must be an integer >= 1, got 0")
def _(tmp_path):
    sl.validate(_valid_file(tmp_path), max_problems=0)


@row("merge-incompatible", "merge", "inputs that cannot be read as one dataset", CompatibilityError,
     "rounds is 40, but … has 50")
def _(tmp_path):
    sl.merge(tmp_path / "out.slbl", [_valid_file(tmp_path, "a.slbl"), _valid_file(tmp_path, "b.slbl", rounds=40)],
             copy=True)


@row("merge-fingerprints", "merge", "inputs with and without input fingerprints", CompatibilityError,
     "some inputs store input fingerprints and others do not; they cannot be read as one dataset")
def _(tmp_path):
    inputs = [_valid_file(tmp_path, "a.slbl"), _valid_file(tmp_path, "b.slbl", fingerprints=True)]
    with pytest.raises(CompatibilityError, match="fingerprints"):
        sl.merge(tmp_path / "m.json", inputs)  # a manifest would read back without any fingerprints
    sl.merge(tmp_path / "out.slbl", inputs, copy=True)


@row("merge-manifest-name", "merge (manifest)", "an output not named `*.json` (a manifest under a label file's "
     "name breaks the directory)", InputError, "a manifest is JSON; name it *.json, or pass copy=True")
def _(tmp_path):
    sl.merge(tmp_path / "out.slbl", [_valid_file(tmp_path)])


@row("merge-corrupt-chunk", "merge(copy=True)", "an input chunk whose checksum fails", ChecksumError,
     "payload CRC-32 mismatch (sequences …); not copying a corrupt chunk")
def _(tmp_path):
    path = _edit(_valid_file(tmp_path), _record_edit(8, b"\x08", fix_crc=False))
    sl.merge(tmp_path / "out.slbl", [path], copy=True)


@row("merge-inconsistent-chunk", "merge(copy=True)", "an input chunk whose header or entries disagree with its "
     "index (CRCs intact)", FormatError, "chunk entries (labels) disagree with the index; not copying an "
     "inconsistent chunk")
def _(tmp_path):
    def edit(buf, lay):
        chunk = lay.chunks[0]
        struct.pack_into("<Q", buf, chunk.entries.start + 8, 99)  # entry 0: labels
        fs.fix_chunk_crcs(buf, chunk)

    sl.merge(tmp_path / "out.slbl", [_edit(_valid_file(tmp_path), edit)], copy=True)


@row("merge-undecodable-chunk", "merge(copy=True)", "an input chunk whose CRCs match but whose records do not "
     "decode (a faulty writer)", FormatError, "not copying a chunk that does not decode")
def _(tmp_path):
    path = _edit(_valid_file(tmp_path), _record_edit(4, b"\xff\xff\xff\xff", fix_crc=True))
    sl.merge(tmp_path / "out.slbl", [path], copy=True)


@row("merge-out-exists", "merge", "the output exists", OutputExistsError, "exists; pass overwrite=True to "
     "replace it")
def _(tmp_path):
    a = _valid_file(tmp_path, "a.slbl")
    (tmp_path / "m.json").write_text("{}")
    sl.merge(tmp_path / "m.json", [a])


@row("merge-manifest-outside", "merge (manifest)", "a manifest over shards outside its directory",
     CompatibilityError, "is outside the manifest's directory …; a manifest may only list files beside or below "
     "it (or merge with copy=True)")
def _(tmp_path):
    (tmp_path / "sub").mkdir()
    sl.merge(tmp_path / "sub" / "m.json", [_valid_file(tmp_path, "a.slbl")])


# -- the command line -------------------------------------------------------------------------------------------
@row("cli-invalid-file", "sparselabels validate", "a corrupt file", None,
     "exit status 1; stderr: `PATH: INVALID` and one line per problem")
def _(tmp_path):
    path = _edit(_valid_file(tmp_path), _record_edit(8, b"\x08", fix_crc=False))
    proc = _cli("validate", str(path))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"{path}: INVALID\n") and "payload CRC-32 mismatch" in proc.stderr


@row("cli-error", "sparselabels info/stats/merge", "a file that cannot be opened (corrupt, missing, "
     "incompatible)", None, "exit status 2; stderr: `sparselabels COMMAND: error: MESSAGE`, no traceback")
def _(tmp_path):
    path = _edit(_valid_file(tmp_path), lambda buf, lay: buf.__setitem__(slice(0, 8), b"NOTLABEL"))
    for argv, message in ((["info", str(path)], "sparselabels info: error: file"),
                          (["stats", str(tmp_path / "nothing.slbl")], "No such file or directory"),
                          (["merge", str(tmp_path / "m.json"), str(path)], "bad magic")):
        proc = _cli(*argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@row("cli-validate-missing", "sparselabels validate", "a path that does not exist", None,
     "exit status 2; stderr: `sparselabels validate: error: PATH: not found` (not `INVALID`)")
def _(tmp_path):
    proc = _cli("validate", str(tmp_path / "nothing.slbl"))
    missing = tmp_path / "nothing.slbl"
    assert proc.returncode == 2 and proc.stderr == f"sparselabels validate: error: {missing}: not found\n"


@row("cli-usage", "sparselabels", "a bad option value", None,
     "exit status 2; stderr: usage and `argument --max-problems: must be a positive integer, got '0'`")
def _(tmp_path):
    proc = _cli("validate", str(_valid_file(tmp_path)), "--max-problems", "0")
    assert proc.returncode == 2
    assert "argument --max-problems: must be a positive integer, got '0'" in proc.stderr
    proc = _cli("stats", str(_valid_file(tmp_path)), "--max-sequences", "-3")
    assert proc.returncode == 2 and "must be a positive integer, got '-3'" in proc.stderr


# -- convert and token files ------------------------------------------------------------------------------------
@row("convert-resume-other-input", "convert(resume=True)", "an input replaced between a crash and the resume (same "
     "name, shape and dtype, other values)", CompatibilityError,
     "cannot resume: the rows of sequence 0 differ from those the partial file's labels were converted from")
def _(tmp_path):
    import importlib

    module = importlib.import_module("sparselabels.pipeline.convert")
    logits = np.random.default_rng(0).standard_normal((3, 4, 20)).astype(np.float32)
    np.save(tmp_path / "in.npy", logits)
    real_open, reads = module.open_dense, []

    class Crashing:  # the process dies while reading the third sequence's rows (after the 3 rows keying the stream)
        def __init__(self, src):
            self.src = src

        def __getattr__(self, name):
            return getattr(self.src, name)

        def read(self, index):
            reads.append(index)
            if len(reads) == 3 + 3:
                raise RuntimeError("killed")
            return self.src.read(index)

    module.open_dense = lambda path, key=None: Crashing(real_open(path, key=key))
    try:
        with pytest.raises(RuntimeError):
            module.convert(tmp_path / "in.npy", tmp_path / "o.slbl", chunk_rows=4, chunk_bytes=1)
    finally:
        module.open_dense = real_open
    logits[0, :-1] += 1.0  # (a changed last row changes the stream's key: refused as other converted_from)
    np.save(tmp_path / "in.npy", logits)
    module.convert(tmp_path / "in.npy", tmp_path / "o.slbl", chunk_rows=4, chunk_bytes=1, resume=True)


@row("convert-huge-rows", "convert", "rows wider than 256 MiB (e.g. an HDF5 file declaring shape (2, 2**28) with "
     "no data): refused before anything is read", InputError,
     "rows of 268435456 values are more than the 256 MiB per row convert holds at a time")
def _(tmp_path):
    import h5py

    from sparselabels.pipeline.convert import convert

    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("logits", shape=(2, 2**28), dtype="<f4")
    convert(tmp_path / "in.h5", tmp_path / "o.slbl")


@row("convert-hdf5-outside", "convert", "an HDF5 dataset whose data lies outside the file (external storage, a "
     "virtual dataset, an external link)", InputError, "its data is stored in external files […]; convert reads only "
     "the HDF5 file given")
def _(tmp_path):
    import h5py

    from sparselabels.pipeline.convert import convert

    (tmp_path / "other.bin").write_bytes(bytes(64))
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("logits", shape=(4, 4), dtype="<f4", external=[(str(tmp_path / "other.bin"), 0, 64)])
    convert(tmp_path / "in.h5", tmp_path / "o.slbl")


@row("tokens-changed", "pickle.loads(token source)", "a token file (`.npy`, Megatron `.bin`/`.idx`, saved dataset) "
     "replaced or rewritten after it was opened (a DataLoader worker reopening it)", FormatError,
     "changed after it was opened")
def _(tmp_path):
    import pickle

    from sparselabels.data.tokens import open_tokens

    np.save(tmp_path / "t.npy", np.zeros((2, 3), np.int32))
    state = pickle.dumps(open_tokens(tmp_path / "t.npy"))
    np.save(tmp_path / "new.npy", np.ones((2, 3), np.int32))
    os.replace(tmp_path / "new.npy", tmp_path / "t.npy")
    len(pickle.loads(state))


@row("tokens-dtype", "open_tokens", "a token file of a non-integer dtype (float, timedelta64, ...)", FormatError,
     "token ids must be integers, got dtype timedelta64[s]")
def _(tmp_path):
    from sparselabels.data.tokens import open_tokens

    np.save(tmp_path / "t.npy", np.zeros((2, 3), "m8[s]"))
    open_tokens(tmp_path / "t.npy")


# -- the dataset ------------------------------------------------------------------------------------------------
@row("dataset-sequences", "SparseLabelDataset", "tokens with another number of sequences than the labels",
     AlignmentError, "label sequences but 3 token sequences")
def _(tmp_path):
    sl.data.SparseLabelDataset(_valid_file(tmp_path), tokens=np.zeros((3, 2), dtype=np.int32))


@row("dataset-lengths", "SparseLabelDataset", "a token sequence of another length than its labels",
     AlignmentError, "sequence 0 has 2 label positions but 3 tokens")
def _(tmp_path):
    sl.data.SparseLabelDataset(_valid_file(tmp_path), tokens=np.zeros((4, 3), dtype=np.int32))


@row("dataset-fingerprint", "SparseLabelDataset[i]",
     "tokens of the right length but not the ones the labels were computed from (stored input fingerprints)",
     AlignmentError, "sequence 0: the tokens' input fingerprint is …, the labels were computed from input")
def _(tmp_path):
    ds = sl.data.SparseLabelDataset(_valid_file(tmp_path, fingerprints=True), tokens=np.zeros((4, 2), dtype=np.int32))
    ds[0]


@row("dataset-mask-length", "SparseLabelDataset", "a loss mask (`masks=`, `mask_column=`) of another length than "
     "its tokens", InputError, "sequence 1: 1 mask values for 2 tokens")
def _(tmp_path):
    sl.data.SparseLabelDataset(_valid_file(tmp_path), tokens=np.zeros((4, 2), dtype=np.int32),
                               masks=[np.ones(2, np.int64), np.ones(1, np.int64), np.ones(2, np.int64),
                                      np.ones(2, np.int64)])


@row("dataset-mask-values", "SparseLabelDataset[i], generate(mask_column=)",
     "a 0/1 mask value other than 0 or 1, or a `labels` value neither -100 nor the token there", InputError,
     "sequence 0, token 1: mask value 2 is not 0 or 1")
def _(tmp_path):
    masks = np.array([[1, 2], [1, 1], [1, 1], [1, 1]])
    sl.data.SparseLabelDataset(_valid_file(tmp_path), tokens=np.zeros((4, 2), dtype=np.int32), masks=masks)[0]


@row("packing-seq-len", "PackedDataset", "a document longer than `seq_len` (documents are never split)", InputError,
     "packing: document 0 has 2 positions, more than seq_len=1")
def _(tmp_path):
    sl.data.PackedDataset(sl.data.SparseLabelDataset(_valid_file(tmp_path)), seq_len=1)


@row("collate-options", "collate", "an integer option that is not one (`pad_to_multiple_of=-8`, `max_labels=2.5`): "
     "never rounded", InputError, "pad_to_multiple_of must be an integer >= 0 or None, got -8")
def _(tmp_path):
    ds = sl.data.SparseLabelDataset(_valid_file(tmp_path))
    sl.data.collate([ds[0], ds[1]], pad_to_multiple_of=-8)


@row("dataset-source", "SparseLabelDataset", "tokens of the same shape as the labels' but another source (the "
     "whole-source fingerprint the labels store), found at construction", AlignmentError,
     "the labels were computed from token source tokens-blake2b:…, but these tokens are tokens-blake2b:…")
def _(tmp_path):
    from sparselabels.data.identity import source_fingerprint

    path = tmp_path / "s.slbl"
    tokens = np.arange(8, dtype=np.int32).reshape(4, 2)
    with sl.LabelWriter(path, vocab_size=300, rounds=50,
                        metadata={"source_fingerprint": source_fingerprint(sl.data.open_tokens(tokens))}) as w:
        for _ in range(4):
            w.write([1, 2], [50, 50], [0, 1, 2])
    sl.data.SparseLabelDataset(path, tokens=tokens[::-1].copy())


@row("dataset-shifted", "SparseLabelDataset", "`labels_are_shifted=True` (a Hugging Face style shift) for labels "
     "stored as `next-token`", AlignmentError, "label_convention is 'next-token': labels position t is already the "
     "target of the logits at t")
def _(tmp_path):
    path = tmp_path / "c.slbl"
    with sl.LabelWriter(path, vocab_size=300, rounds=50, metadata={"label_convention": "next-token"}) as w:
        w.write([1, 2], [25, 25], [0, 2])
    sl.data.SparseLabelDataset(path, labels_are_shifted=True)


@row("tokenizer-mismatch", "check_tokenizer", "a student tokenizer other than the one the labels were made with",
     CompatibilityError, "were made with tokenizer files-blake2b:…, but … is files-blake2b:…")
def _(tmp_path):
    from pipeline_fixtures import save_tokenizer

    from sparselabels.pipeline.teacher import files_fingerprint, tokenizer_files

    save_tokenizer(tmp_path / "teacher", 300)
    save_tokenizer(tmp_path / "student", 299)
    path = tmp_path / "t.slbl"
    fp = files_fingerprint(tokenizer_files(tmp_path / "teacher"))
    with sl.LabelWriter(path, vocab_size=300, rounds=50, metadata={"tokenizer_fingerprint": fp}) as w:
        w.write([1], [50], [0, 1])
    sl.data.check_tokenizer(path, tmp_path / "student")


# -- labeling (generate): all checked before the teacher's weights load -------------------------------------------
def _broken_teacher(tmp_path: Path) -> Path:
    from pipeline_fixtures import config_only_model

    return config_only_model(tmp_path / "teacher", n_positions=16)  # garbage weights: loading them would fail


def _generate(tmp_path: Path, tokens, **kw):
    kw.setdefault("out", tmp_path / "out")
    out = kw.pop("out")
    return sl.pipeline.generate(_broken_teacher(tmp_path), tokens, out, dtype="float32", device="cpu",
                                progress=False, **kw)


@row("generate-context", "generate", "a sequence longer than the teacher's context (config `n_positions`, "
     "`max_position_embeddings`, ...)", InputError, "sequence 1 has 20 tokens, more than the teacher's context of 16 "
     "positions (config n_positions; 1 sequence(s) longer); pass max_length (--max-length) to label long sequences "
     "in windows")
def _(tmp_path):
    _generate(tmp_path, [np.arange(5), np.arange(20)])


@row("generate-windows", "generate", "`max_length` above the teacher's context, `window_overlap` not below "
     "`max_length` or without it", InputError, "max_length 32 is more than the teacher's context of 16 positions "
     "(config n_positions)")
def _(tmp_path):
    with pytest.raises(InputError, match="window_overlap must be below max_length"):
        _generate(tmp_path, [np.arange(20)], max_length=8, window_overlap=8)
    _generate(tmp_path, [np.arange(20)], max_length=32)


@row("generate-token-id", "generate", "a token id outside the model's vocabulary (from its config)", InputError,
     "tokens: sequence 1, position 5: token id 1000 is outside the teacher's input vocabulary 0..999")
def _(tmp_path):
    tokens = np.zeros((3, 8), dtype=np.int64)
    tokens[1, 5] = 1000
    _generate(tmp_path, tokens)


@row("generate-out-file", "generate", "`out` is an existing file", InputError,
     "is an existing file; generate writes a directory (shards and manifest.json)")
def _(tmp_path):
    (tmp_path / "f").write_text("x")
    _generate(tmp_path, np.zeros((2, 4), dtype=np.int64), out=tmp_path / "f")


@row("generate-seq-len", "generate / open_tokens", "`seq_len` with a source that is not a 1-D token stream (a 1-D "
     "`.npy` without it: `a 1-D token stream is read with seq_len`)", InputError,
     "seq_len cuts a 1-D token stream (an integer array or a 1-D .npy file), not a …")
def _(tmp_path):
    _generate(tmp_path, [np.arange(4)], seq_len=2)


@row("generate-model", "generate", "a `model` that is neither a directory nor a hub id in the local Hugging Face "
     "cache", InputError, "is neither a local directory nor a model in the local Hugging Face cache (…); download it "
     "first")
def _(tmp_path):
    sl.pipeline.generate("sparselabels-tests/not-in-any-cache", np.zeros((2, 4), dtype=np.int64), tmp_path / "o",
                         device="cpu")


@row("merge-shared-stream", "merge", "inputs that drew the same random numbers (the same tokens labeled twice with "
     "one seed, or one file given twice)", CompatibilityError,
     "drew the same random numbers (stream …, rows … in both)")
def _(tmp_path):
    stream = {"random_stream": {"key": "00000000000000ab", "first_row": 0}}
    for name in ("a.slbl", "b.slbl"):
        with sl.LabelWriter(tmp_path / name, vocab_size=300, rounds=50, metadata=stream) as w:
            w.write([1, 2], [25, 25], [0, 2])
    sl.merge(tmp_path / "m.slbl", [tmp_path / "a.slbl", tmp_path / "b.slbl"], copy=True)


# -- the sampler and the loss -------------------------------------------------------------------------------------
@row("sampler-logits", "sample_counts", "NaN or +inf logits, or a row without a finite logit", InputError,
     "logits row 1 has NaN at column 4; logits must be finite or -inf")
def _(tmp_path):
    import torch

    from sparselabels.sampling import sample_counts

    logits = torch.zeros(3, 10)
    logits[1, 4] = float("nan")
    sample_counts(logits, 50, seed=0)


@row("sampler-rounds", "sample_counts", "`rounds` outside 1..255", InputError,
     "rounds must be in 1..255 (counts are uint8), got 256")
def _(tmp_path):
    import torch

    from sparselabels.sampling import sample_counts

    sample_counts(torch.zeros(2, 10), 256, seed=0)


@row("sampler-arguments", "sample_counts", "a bad temperature, dtype, vocab_size, seed or backend", InputError,
     "temperature must be a positive finite number, got 0.0")
def _(tmp_path):
    import torch

    from sparselabels.sampling import sample_counts

    sample_counts(torch.zeros(2, 10), 50, temperature=0.0, seed=0)


@row("loss-target-ids", "sparse_kd_loss", "a target id outside the student's vocabulary", InputError,
     "target_ids at position (1, 2), slot 3: id 100 is outside the vocabulary [0, 100)")
def _(tmp_path):
    import torch

    from sparselabels.loss import sparse_kd_loss

    ids = torch.zeros(2, 4, 5, dtype=torch.int64)
    ids[1, 2, 3] = 100
    sparse_kd_loss(torch.zeros(2, 4, 100), ids, torch.full((2, 4, 5), 0.2))


@row("loss-target-weights", "sparse_kd_loss", "a negative, NaN or integer target weight", InputError,
     "target_weights at position (0, 1), slot 2: weight -0.5 must be finite and >= 0")
def _(tmp_path):
    import torch

    from sparselabels.loss import sparse_kd_loss

    weights = torch.full((2, 4, 5), 0.2)
    weights[0, 1, 2] = -0.5
    sparse_kd_loss(torch.zeros(2, 4, 100), torch.zeros(2, 4, 5, dtype=torch.int64), weights)


@row("loss-shapes", "sparse_kd_loss", "targets whose leading shape differs from the logits'", InputError,
     "target_ids must have shape [*student_logits.shape[:-1], K] = [2, 4, K], got [2, 3, 5]")
def _(tmp_path):
    import torch

    from sparselabels.loss import sparse_kd_loss

    sparse_kd_loss(torch.zeros(2, 4, 100), torch.zeros(2, 3, 5, dtype=torch.int64), torch.zeros(2, 3, 5))


def _sparse_targets(offsets: list[int], ids: list[int], shape: tuple[int, ...]):
    import torch

    from sparselabels.data import SparseTargets

    counts = torch.full((len(ids),), 25, dtype=torch.uint8)
    return SparseTargets(torch.tensor(offsets), torch.tensor(ids, dtype=torch.int32), counts=counts, rounds=50,
                         shape=shape, width=2)


@row("loss-csr-offsets", "sparse_kd_loss", "SparseTargets whose offsets decrease or overrun the labels", InputError,
     "SparseTargets.offsets decrease at position (0, 1): 2 -> 1")
def _(tmp_path):
    import torch

    from sparselabels.loss import sparse_kd_loss

    sparse_kd_loss(torch.zeros(1, 3, 100), _sparse_targets([0, 2, 1, 4], [1, 2, 3, 4], (1, 3)))


@row("loss-csr-ids", "sparse_kd_loss", "SparseTargets holding an id outside the student's vocabulary", InputError,
     "SparseTargets: label 3 (position (0, 2)): id 100 is outside the vocabulary [0, 100)")
def _(tmp_path):
    import torch

    from sparselabels.loss import sparse_kd_loss

    sparse_kd_loss(torch.zeros(1, 3, 100), _sparse_targets([0, 2, 2, 4], [1, 2, 3, 100], (1, 3)))


@row("loss-csr-shape", "sparse_kd_loss_from_hidden", "SparseTargets whose shape differs from the hidden states'",
     InputError, "SparseTargets of shape [3, 1] does not match hidden.shape[:-1] = [1, 3]")
def _(tmp_path):
    import torch

    from sparselabels.loss import sparse_kd_loss_from_hidden

    sparse_kd_loss_from_hidden(torch.zeros(1, 3, 8), torch.zeros(100, 8), _sparse_targets([0, 2, 2, 4], [1, 2, 3, 4],
                                                                                           (3, 1)))


# -- the tests -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row_id", list(ROWS))
def test_bad_input(row_id: str, tmp_path: Path) -> None:
    r = ROWS[row_id]
    if r.error is None:
        r.run(tmp_path)
        return
    with pytest.raises(r.error, match=r.pattern()) as info:
        r.run(tmp_path)
    if r.error is not ValueError:  # the documented class, not a parent that happens to match
        assert type(info.value) is r.error or r.error in (FormatError, SparseLabelsError, FileNotFoundError)


def test_a_rejected_write_changes_nothing(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.write([1, 2], [25, 25], [0, 2])
    for bad in (([7, 3], [25, 25], [0, 2]), ([1], [49], [0, 1]), ([[1]], [50], [0, 1])):
        with pytest.raises(InputError):
            w.write(*bad)
    assert w.write([4], [50], [0, 1]) == 1
    w.close()
    with sl.open_labels(tmp_path / "w.slbl") as f:
        assert len(f) == 2 and f[1].ids.tolist() == [4]


def render_table() -> str:
    lines = ["| Where | Bad input | Exception | Message (`…` varies) | Test |", "|---|---|---|---|---|"]
    for r in ROWS.values():
        error = "— (see message)" if r.error is None else f"`{r.error.__name__}`"
        message = r.message.replace("|", "\\|") if r.error is None else f"`{r.message}`"
        lines.append(f"| `{r.where}` | {r.bad_input} | {error} | {message} | `test_bad_input[{r.id}]` |")
    return "\n".join(lines) + "\n"


def test_document_lists_exactly_these_rows() -> None:
    text = DOC.read_text()
    assert TABLE_START + render_table() + TABLE_END in text, (
        "docs/errors.md's bad-input table is stale: python tests/test_bad_input.py --write rewrites it")


def write_table() -> None:
    """Replace the table between the markers in docs/errors.md with the one ``ROWS`` gives."""
    text = DOC.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    DOC.write_text(text[:start] + render_table() + text[end:])


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_table()
    else:
        print(render_table(), end="")

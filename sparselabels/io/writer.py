"""Streaming, crash-safe writing of one sparse-label file.

The writer appends chunks to ``<path>.partial`` and keeps in memory only the sequences of the chunk being
filled (about ``chunk_bytes``) plus the index columns, which spill to temporary files beyond a few MiB, so
memory stays bounded whatever the file's size. ``flush()`` makes everything written so far durable;
``close()`` appends the index and footer, fsyncs, and renames the file to ``<path>`` atomically, so the final
path only ever holds a complete file. After a crash, ``LabelWriter(path, ..., resume=True)`` keeps every
chunk of the partial file whose checksums verify and continues after the last one.

Only a file this writer holds locked is written: the partial file is created with ``O_EXCL`` (or opened with
``O_NOFOLLOW``; links are refused), and after the lock is taken its device and inode are compared with what
``<path>.partial`` names, so a writer whose lock came late never writes a file another writer finished. A
``write`` or ``flush`` that fails (a full disk: the error names the file) counts nothing, and the same call can
be made again; a ``close`` that fails leaves the partial file for ``resume=True``; after a failed fsync the writer
refuses to go on (``abort()``, then ``resume=True``).
"""

from __future__ import annotations

import fcntl
import operator
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sparselabels.codecs import DEFAULT_CODEC, ChunkInput, get_codec
from sparselabels.errors import (
    ClosedError,
    FormatError,
    InputError,
    OutputExistsError,
    SparseLabelsError,
    check_int,
)
from sparselabels.format import metadata as meta_format
from sparselabels.format.checks import MAX_ROUNDS, check_labels, too_many_labels
from sparselabels.format.layout import (
    CHUNK_HEADER_SIZE,
    DEFAULT_MAX_SEQUENCE_POSITIONS,
    FLAG_FINGERPRINTS,
    HEADER_SIZE,
    INDEX_COLUMNS,
    ChunkHeader,
    Footer,
    Header,
    crc32,
)
from sparselabels.format.values import VALUE_DTYPES, VALUE_KINDS
from sparselabels.io.remote import is_url

DEFAULT_CHUNK_BYTES = 16 << 20
_SPOOL_BYTES = 8 << 20
_COPY_BLOCK = 8 << 20


# what to do about a partial file found at the start (the CLI rewords it for commands without --resume)
PARTIAL_FILE_ADVICE = "pass resume=True to continue it or overwrite=True to start again"


def partial_path(path: str | os.PathLike) -> Path:
    """Where the writer of ``path`` keeps the unfinished file."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


class _Column:
    """An append-only uint64 column that spills to an anonymous temporary file beyond a few MiB."""

    def __init__(self, directory: Path) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, dir=directory)  # noqa: SIM115 - closed by close()
        self.count = 0

    def append(self, values) -> None:
        arr = np.ascontiguousarray(values, dtype="<u8")
        self._file.write(arr.tobytes())
        self.count += arr.size

    def copy_into(self, fd: int, offset: int, crc: int) -> tuple[int, int]:
        """Write the column at ``offset``; return (bytes written, running CRC)."""
        self._file.seek(0)
        written = 0
        while block := self._file.read(_COPY_BLOCK):
            _pwrite_all(fd, block, offset + written)
            crc = crc32(block, crc)
            written += len(block)
        return written, crc

    def close(self) -> None:
        self._file.close()


class _ChunkBuffer:
    """The sequences of the chunk being filled, in reusable arrays (no per-sequence allocation)."""

    def __init__(self, value_dtype: np.dtype) -> None:
        self.ids = np.empty(1 << 16, dtype="<u4")
        self.values = np.empty(1 << 16, dtype=value_dtype)
        self.lpp = np.empty(1 << 14, dtype=np.uint32)
        self.clear()

    def clear(self) -> None:
        self.seq_positions: list[int] = []
        self.seq_labels: list[int] = []
        self.fingerprints: list[int] = []
        self.num_positions = 0
        self.num_labels = 0

    @property
    def num_sequences(self) -> int:
        return len(self.seq_positions)

    @property
    def nbytes(self) -> int:
        """Input bytes held, the measure ``chunk_bytes`` is compared with."""
        return self.num_labels * (4 + self.values.itemsize) + self.num_positions * 4 + 32 * self.num_sequences

    @staticmethod
    def _fit(arr: np.ndarray, used: int, needed: int) -> np.ndarray:
        if needed <= arr.shape[0]:
            return arr
        grown = np.empty(max(needed, 2 * arr.shape[0]), dtype=arr.dtype)
        grown[:used] = arr[:used]
        return grown

    def append(self, ids: np.ndarray, values: np.ndarray, indptr: np.ndarray, fingerprint: int) -> None:
        m, t = ids.shape[0], indptr.shape[0] - 1
        self.ids = self._fit(self.ids, self.num_labels, self.num_labels + m)
        self.values = self._fit(self.values, self.num_labels, self.num_labels + m)
        self.lpp = self._fit(self.lpp, self.num_positions, self.num_positions + t)
        self.ids[self.num_labels : self.num_labels + m] = ids  # values were range-checked: the casts are exact
        self.values[self.num_labels : self.num_labels + m] = values
        np.subtract(indptr[1:], indptr[:-1], out=self.lpp[self.num_positions : self.num_positions + t],
                    casting="unsafe")
        self.seq_positions.append(t)
        self.seq_labels.append(m)
        self.fingerprints.append(fingerprint)
        self.num_positions += t
        self.num_labels += m

    def drop_last(self) -> None:
        """Forget the sequence appended last (its write failed)."""
        self.fingerprints.pop()
        self.num_positions -= self.seq_positions.pop()
        self.num_labels -= self.seq_labels.pop()


def record_crcs(table: np.ndarray, records: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Each record's CRC-32, taken over the chunk's table followed by the record: what one read decodes."""
    table_crc = crc32(table)
    out = np.empty(sizes.shape[0], dtype=np.uint64)
    at = 0
    for i, size in enumerate(sizes.tolist()):
        out[i] = crc32(records[at : at + size], table_crc)
        at += size
    return out


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        block = os.pread(fd, size - len(out), offset + len(out))
        if not block:
            break
        out += block
    return bytes(out)


def _fingerprint_value(fingerprint: Any, where: str) -> int:
    """An integer fingerprint in 0..2**64-1; a float or a string is refused, not truncated or parsed."""
    try:
        value = None if isinstance(fingerprint, bool) else operator.index(fingerprint)
    except TypeError:
        value = None
    if value is None or not 0 <= value < 1 << 64:
        raise InputError(f"{where}: fingerprint must be an integer in 0..2**64-1, got {fingerprint!r}")
    return value


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """A 1-D numpy array in native byte order (big-endian arrays from HDF5 hold valid values too)."""
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()  # numpy has no bfloat16; every bfloat16 value is exact in float32
        value = value.numpy()
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {arr.shape}")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _is_int(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "iu"  # not issubdtype(..., np.integer): that admits timedelta64


class LabelWriter:
    """Write sequences of sparse labels to ``path`` (see the module docstring for the crash-safety contract).

    Parameters: ``vocab_size`` (ids must be below it), ``rounds`` (N, the draws per position, 1..255; required
    for ``value_kind="count"``, absent for ``"prob"``), ``codec`` (``"rans"``, the default, about a third of
    ``"raw"``'s bytes; ``"raw"`` for zero-copy reads; see ``sparselabels.codecs.available()``), ``metadata``
    (extra msgpack-able keys: teacher, tokenizer_fingerprint, temperature, seed, ...), ``resume`` (continue
    ``<path>.partial``), ``overwrite`` (replace an existing ``path`` or partial file), ``chunk_bytes`` (input
    bytes buffered per chunk), ``durable`` (fsync in ``flush``/``close``; turn off only for scratch files),
    ``resumable`` (False: a writer that stops without finishing deletes its partial file, for jobs that cannot
    resume and must not leave one behind to block the next attempt, such as a merge; such a writer also starts
    afresh over a stale partial file that a killed process left, which it can lock, so no live writer uses it),
    ``max_sequence_positions`` (the longest sequence accepted: by default what readers accept by default, so
    that no file is written that they refuse; raise it on both sides for longer sequences).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        vocab_size: int,
        rounds: int | None = None,
        value_kind: str = "count",
        codec: str = DEFAULT_CODEC,
        metadata: dict[str, Any] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        durable: bool = True,
        resumable: bool = True,
        max_sequence_positions: int = DEFAULT_MAX_SEQUENCE_POSITIONS,
    ) -> None:
        if value_kind not in VALUE_KINDS:
            raise InputError(f"value_kind must be one of {list(VALUE_KINDS)}, got {value_kind!r}")
        if value_kind == "count" and rounds is None:
            raise InputError(f"rounds (draws per position, 1..{MAX_ROUNDS}) is required for value_kind 'count'")
        if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise InputError(f"chunk_bytes must be a positive integer, got {chunk_bytes!r}")
        if is_url(path):  # Path() would make it a local folder "s3:" and write there
            raise InputError(f"{path!r}: LabelWriter writes a local file; write it locally, then upload it (generate "
                             "and merge(copy=True) write to URLs that way)")
        self.path = Path(path)
        self.partial_path = partial_path(self.path)
        self.codec = get_codec(codec)
        self.value_kind = value_kind
        self.chunk_bytes = chunk_bytes
        self.durable = durable
        self.resumable = resumable
        self.max_sequence_positions = check_int("max_sequence_positions", max_sequence_positions, 1)
        self.metadata = meta_format.build(
            vocab_size=vocab_size, value_kind=value_kind, rounds=rounds, codec=codec, extra=metadata
        )  # checks vocab_size and rounds (InputError), turning numpy integers into ints
        self.vocab_size = int(self.metadata["vocab_size"])
        self.rounds = self.metadata["rounds"]
        self._meta_bytes = meta_format.encode(self.metadata)
        self._fd = -1
        self._closed = False
        self._failed: str | None = None  # why the writer cannot go on (its state on disk is unknown); see write()
        self._fingerprints: bool | None = None  # decided by the first sequence (or the recovered chunks)
        self._buffer = _ChunkBuffer(VALUE_DTYPES[value_kind])
        self._reset_counters()
        self._acquire(resume=resume, overwrite=overwrite)

    # -- set-up --------------------------------------------------------------------------------------------
    def _reset_counters(self) -> None:
        self._chunks = 0
        self._sequences = 0  # in chunks already written
        self._positions = 0
        self._labels = 0

    def _acquire(self, *, resume: bool, overwrite: bool) -> None:
        self._check_target()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(_LOCK_TRIES):
            if self.path.exists() and not overwrite:
                if resume:
                    raise SparseLabelsError(f"{self.path} is already complete; nothing to resume")
                raise OutputExistsError(f"{self.path} exists; pass overwrite=True to replace it", path=str(self.path))
            fd = _open_partial(self.partial_path)
            if fd is None:
                continue  # created or removed by another writer between the look and the open: look again
            try:
                _lock(fd)
            except BlockingIOError:
                os.close(fd)
                raise SparseLabelsError(f"{self.partial_path} is being written by another LabelWriter") from None
            if _is_at(fd, self.partial_path):
                break
            # another writer finished (renamed this file into place) or removed it between our open and our lock:
            # the locked file is no longer the partial file, and must not be written
            os.close(fd)
        else:
            raise SparseLabelsError(f"{self.partial_path} kept changing while this writer tried to lock it "
                                    f"({_LOCK_TRIES} tries): is another writer starting and finishing it?")
        self._fd = fd
        try:
            self._columns = {name: _Column(self.path.parent) for name in _COLUMN_ORDER}
            existing = os.fstat(fd).st_size
            if existing and resume:
                self._recover()
            elif existing and not overwrite and self.resumable:
                raise SparseLabelsError(f"{self.partial_path} holds an unfinished file; {PARTIAL_FILE_ADVICE}")
            else:  # a writer that cannot resume starts afresh over a stale partial file: it holds its lock
                self._start()
        except OSError as exc:  # a full disk while writing the header: say which file
            self._release()
            raise self._named(exc) from None
        except BaseException:
            self._release()
            raise

    def _check_target(self) -> None:
        """Refuse up front what would only fail at close(): a directory at the path, a name too long for the
        file system once ``.partial`` is appended."""
        if self.path.is_dir():
            raise InputError(f"{self.path} is a directory; a label file needs a file name")
        name_max = _name_max(self.path.parent)
        if len(os.fsencode(self.partial_path.name)) > name_max:
            raise InputError(f"{self.path.name!r}: the writer keeps the unfinished file as {self.partial_path.name!r}, "
                             f"longer than the {name_max} bytes a file name may have here; choose a shorter name")

    def _start(self) -> None:
        os.ftruncate(self._fd, 0)
        header = Header(metadata_size=len(self._meta_bytes), metadata_crc32=crc32(self._meta_bytes))
        head = header.pack() + self._meta_bytes
        head += bytes(header.data_offset - len(head))
        _pwrite_all(self._fd, head, 0)
        self._end = header.data_offset
        if self.durable:
            os.fsync(self._fd)
            _fsync_dir(self.path.parent)

    def _recover(self) -> None:
        """Keep every verified chunk of the partial file; cut what follows the last one."""
        fd = self._fd
        size = os.fstat(fd).st_size
        head = _pread_exact(fd, HEADER_SIZE, 0)
        try:
            header = Header.unpack(head)
        except FormatError as exc:
            if size < HEADER_SIZE + len(self._meta_bytes):
                self._start()  # the crash came before the header was complete: nothing was written yet
                return
            raise FormatError(f"{self.partial_path}: cannot resume: {exc}", path=str(self.partial_path)).at(
                **exc.location) from None
        meta_bytes = _pread_exact(fd, header.metadata_size, HEADER_SIZE)
        if len(meta_bytes) < header.metadata_size:
            self._start()
            return
        if crc32(meta_bytes) != header.metadata_crc32:
            raise FormatError(f"{self.partial_path}: cannot resume: metadata CRC-32 mismatch",
                              path=str(self.partial_path), field="metadata_crc32")
        stored = meta_format.decode(meta_bytes)
        meta_format.check_same_settings(stored, self.metadata, where=str(self.partial_path),
                                        stored_in="the partial file")
        self.metadata, self._meta_bytes = stored, meta_bytes
        # The padding after the metadata carries nothing and no CRC covers it; rewrite it rather than keep a
        # damaged one that would make the finished file unreadable.
        pad_at = HEADER_SIZE + header.metadata_size
        _pwrite_all(fd, bytes(header.data_offset - pad_at), pad_at)
        offset = header.data_offset
        while offset + CHUNK_HEADER_SIZE <= size:
            chunk = self._verified_chunk(offset, size)
            if chunk is None:
                break
            header_c, entries = chunk
            self._note_chunk(offset, header_c, entries)
            offset += header_c.total_size
        os.ftruncate(fd, offset)
        self._end = offset
        if self.durable:
            os.fsync(fd)

    def _verified_chunk(self, offset: int, size: int) -> tuple[ChunkHeader, np.ndarray] | None:
        try:
            header = ChunkHeader.unpack(_pread_exact(self._fd, CHUNK_HEADER_SIZE, offset), "resume")
        except FormatError:
            return None
        if header.chunk_index != self._chunks or header.first_sequence != self._sequences:
            return None
        if offset + header.total_size > size:
            return None
        if self._fingerprints is not None and bool(header.flags & FLAG_FINGERPRINTS) != self._fingerprints:
            return None
        crc, at, end = 0, offset + CHUNK_HEADER_SIZE, offset + header.total_size
        entries_raw = _pread_exact(self._fd, header.entries_size, at)
        while at < end:
            block = _pread_exact(self._fd, min(_COPY_BLOCK, end - at), at)
            crc = crc32(block, crc)
            at += len(block)
        if crc != header.payload_crc32:
            return None
        entries = np.frombuffer(entries_raw, dtype="<u8").reshape(header.num_sequences, -1)
        if not self._plausible_entries(entries, header):
            return None
        return header, entries

    def _plausible_entries(self, entries: np.ndarray, header: ChunkHeader) -> bool:
        """The entries obey the bounds a reader enforces on the index built from them (a matching CRC is not
        enough: the chunk may come from a faulty or hostile writer). Records are not decoded here."""
        counts = entries[:, :3]
        if counts.size and int(counts.max()) >= 1 << 63:
            return False
        if entries.size and int(entries[:, 3].max()) >= 1 << 32:  # record CRC-32s
            return False
        positions, labels, sizes = (counts[:, k].astype(np.int64) for k in range(3))
        if np.any(sizes % 8) or sum(sizes.tolist()) != header.records_size:
            return False
        return not np.any(self.codec.over_capacity(positions, labels, sizes)
                          | too_many_labels(positions, labels, self.value_kind, self.rounds))

    # -- writing -------------------------------------------------------------------------------------------
    @property
    def num_sequences(self) -> int:
        """Sequences accepted so far (written or buffered); the index the next ``write`` returns."""
        return self._sequences + self._buffer.num_sequences

    @property
    def num_positions(self) -> int:
        return self._positions + self._buffer.num_positions

    @property
    def num_labels(self) -> int:
        return self._labels + self._buffer.num_labels

    def write(self, ids, counts, indptr, fingerprint: int | None = None) -> int:
        """Append one sequence in CSR form and return its index. A rejected sequence changes nothing."""
        self._check_open()
        seq = self.num_sequences
        where = f"{self.path.name}: sequence {seq}"
        ids_a, values_a, indptr_a = self._coerce(ids, counts, indptr, where)
        if indptr_a.size - 1 > self.max_sequence_positions:  # by default: a file that readers refuse is not written
            raise InputError(f"{where}: {indptr_a.size - 1} positions, more than max_sequence_positions = "
                             f"{self.max_sequence_positions} (readers accept {DEFAULT_MAX_SEQUENCE_POSITIONS} by "
                             "default); split it into shorter sequences, or raise the limit here and when reading",
                             path=str(self.path), sequence=seq)
        if self.value_kind == "prob":  # check what will be stored: float16 rounding can reach 0
            with np.errstate(over="ignore", under="ignore"):
                values_a = values_a.astype(VALUE_DTYPES["prob"])
        problem = check_labels(ids_a, values_a, indptr_a, vocab_size=self.vocab_size, value_kind=self.value_kind,
                               rounds=self.rounds)
        if problem is None:
            problem = self.codec.unencodable(ids_a, indptr_a)
        if problem is not None:  # counts are checked before the cast to uint8, so 256 cannot wrap to 0
            raise InputError(f"{where}, {problem.describe()}", path=str(self.path), sequence=seq,
                             **problem.location())
        has_fp = fingerprint is not None
        fp_value = _fingerprint_value(fingerprint, where) if has_fp else 0
        if self._fingerprints is not None and has_fp != self._fingerprints:
            state = "have" if self._fingerprints else "have no"
            raise InputError(
                f"{where}: fingerprint is {'set' if has_fp else 'missing'}, but earlier sequences {state} "
                "fingerprint; a file stores one for every sequence or for none"
            )
        before = self._fingerprints
        self._fingerprints = has_fp
        self._buffer.append(ids_a, values_a, indptr_a, fp_value)
        if self._buffer.nbytes >= self.chunk_bytes:
            try:
                self._write_chunk()
            except BaseException:
                # not written: the writer is as before the call (or marked failed when that cannot be promised)
                self._buffer.drop_last()
                self._fingerprints = before
                raise
        return seq

    def _coerce(self, ids, counts, indptr, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids_a = _to_numpy(ids, f"{where}: ids")
        values_a = _to_numpy(counts, f"{where}: counts")
        indptr_a = _to_numpy(indptr, f"{where}: indptr")
        if ids_a.size and not _is_int(ids_a):
            raise InputError(f"{where}: ids must be integers, got dtype {ids_a.dtype}")
        if not _is_int(indptr_a) or indptr_a.size == 0:
            raise InputError(f"{where}: indptr must be a non-empty integer array (num_positions + 1 entries)")
        if values_a.shape != ids_a.shape:
            raise InputError(f"{where}: counts has {values_a.size} entries but ids has {ids_a.size}")
        if indptr_a.dtype == np.uint64 and indptr_a.max() >= 1 << 63:
            raise InputError(f"{where}: indptr holds values >= 2**63")
        if self.value_kind == "count" and values_a.size and not _is_int(values_a):
            raise InputError(f"{where}: counts must be integers for value_kind 'count', got {values_a.dtype}")
        if self.value_kind == "prob" and values_a.size and not np.issubdtype(values_a.dtype, np.floating):
            raise InputError(f"{where}: probabilities must be floating point, got {values_a.dtype}")
        if not ids_a.size:  # an empty list has float dtype in numpy; give it one the kernels accept
            ids_a = ids_a.astype(np.uint32)
            values_a = values_a.astype(VALUE_DTYPES[self.value_kind])
        return ids_a, values_a, indptr_a.astype(np.int64, copy=False)

    def _write_chunk(self) -> None:
        buf = self._buffer
        if not buf.num_sequences:
            return
        seq_positions = np.array(buf.seq_positions, dtype=np.int64)
        seq_labels = np.array(buf.seq_labels, dtype=np.int64)
        chunk = ChunkInput(
            ids=buf.ids[: buf.num_labels],
            values=buf.values[: buf.num_labels],
            labels_per_position=buf.lpp[: buf.num_positions],
            seq_positions=seq_positions,
            seq_labels=seq_labels,
            value_kind=self.value_kind,
            vocab_size=self.vocab_size,
        )
        encoded = self.codec.encode_chunk(chunk)
        sizes = np.asarray(encoded.record_sizes, dtype=np.int64)
        if (encoded.table.size % 8 or sizes.shape != seq_positions.shape or np.any(sizes % 8)
                or int(sizes.sum()) != encoded.records.size):
            raise SparseLabelsError(
                f"codec {self.codec.name!r} broke the codec contract: table and records must be padded to multiples "
                "of 8 and record_sizes must list one padded size per sequence, summing to the records' size"
            )
        flags = FLAG_FINGERPRINTS if self._fingerprints else 0
        columns = [seq_positions, seq_labels, sizes, record_crcs(encoded.table, encoded.records, sizes)]
        if flags:
            columns.append(np.array(buf.fingerprints, dtype=np.uint64))
        entries = np.stack([c.astype("<u8") for c in columns], axis=1)
        self._emit_chunk(entries, encoded.table, encoded.records, flags)
        buf.clear()

    def _emit_chunk(self, entries: np.ndarray, table: np.ndarray, records: np.ndarray, flags: int,
                    payload_crc: int | None = None) -> None:
        """Append one chunk (also used by merge to copy chunks verbatim)."""
        entries = np.ascontiguousarray(entries, dtype="<u8")
        if payload_crc is None:
            payload_crc = crc32(records, crc32(table, crc32(entries)))
        header = ChunkHeader(
            chunk_index=self._chunks,
            first_sequence=self._sequences,
            num_sequences=entries.shape[0],
            table_size=int(table.size),
            records_size=int(records.size),
            flags=flags,
            payload_crc32=payload_crc,
        )
        offset = self._end
        at = offset
        try:
            for part in (header.pack(), entries, table, records):
                size = len(part) if isinstance(part, bytes) else part.nbytes
                if size:
                    _pwrite_all(self._fd, part, at)
                at += size
        except OSError as exc:  # nothing is counted: the bytes past the end are overwritten or cut later
            raise self._named(exc) from None
        try:
            self._note_chunk(offset, header, entries)
        except BaseException as exc:  # counters and index columns may be half updated: no way back
            self._failed = f"noting a chunk failed ({exc!r})"
            if isinstance(exc, OSError):
                raise self._named(exc) from None
            raise
        self._end = at

    def _named(self, exc: OSError) -> OSError:
        """``exc`` naming the partial file (ENOSPC and EIO say nothing of which file otherwise)."""
        return type(exc)(exc.errno, exc.strerror, str(self.partial_path)) if exc.errno else exc

    def _sync(self) -> None:
        """fsync the partial file; a failure leaves its pages in an unknown state, so the writer stops."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._failed = f"fsync failed ({exc.strerror})"
            raise self._named(exc) from None

    def _note_chunk(self, offset: int, header: ChunkHeader, entries: np.ndarray) -> None:
        """Account for a chunk on disk: counters and index columns."""
        flags_fp = bool(header.flags & FLAG_FINGERPRINTS)
        if self._fingerprints is None:
            self._fingerprints = flags_fp
        positions = entries[:, 0].astype(np.int64)
        labels = entries[:, 1].astype(np.int64)
        sizes = entries[:, 2].astype(np.int64)
        c = self._columns
        c["position_start"].append(self._positions + np.concatenate(([0], np.cumsum(positions)[:-1])))
        c["label_start"].append(self._labels + np.concatenate(([0], np.cumsum(labels)[:-1])))
        table_offset = offset + CHUNK_HEADER_SIZE + header.entries_size
        records_at = table_offset + header.table_size
        c["record_offset"].append(records_at + np.concatenate(([0], np.cumsum(sizes)[:-1])))
        c["record_size"].append(sizes)
        c["record_crc32"].append(entries[:, 3])
        if flags_fp:
            c["fingerprint"].append(entries[:, 4])
        c["chunk_offset"].append([offset])
        c["chunk_first_sequence"].append([self._sequences])
        c["chunk_table_offset"].append([table_offset])
        c["chunk_table_size"].append([header.table_size])
        self._chunks += 1
        self._sequences += header.num_sequences
        self._positions += int(positions.sum())
        self._labels += int(labels.sum())

    def flush(self) -> None:
        """Write buffered sequences as a chunk and make everything written so far durable."""
        self._check_open()
        self._write_chunk()
        if self.durable:
            self._sync()

    def close(self) -> None:
        """Finish the file: write the index and footer, fsync, and rename to the final path atomically."""
        if self._closed:
            return
        self._check_open()
        try:
            self._write_chunk()
            self._finalize()
        except OSError as exc:
            self._drop_partial()
            raise self._named(exc) from None
        except BaseException:
            self._drop_partial()
            raise
        finally:
            self._release()
        self._closed = True

    def _finalize(self) -> None:
        c = self._columns
        c["position_start"].append([self._positions])
        c["label_start"].append([self._labels])
        index_offset = self._end
        c["chunk_offset"].append([index_offset])
        c["chunk_first_sequence"].append([self._sequences])
        flags = FLAG_FINGERPRINTS if self._fingerprints else 0
        at, crc = index_offset, 0
        for name in _COLUMN_ORDER:
            if name == "fingerprint" and not flags:
                continue
            written, crc = c[name].copy_into(self._fd, at, crc)
            at += written
        footer = Footer(index_offset, self._sequences, self._chunks, self._positions, self._labels, flags, crc)
        _pwrite_all(self._fd, footer.pack(), at)
        os.ftruncate(self._fd, at + len(footer.pack()))
        if self.durable:
            os.fsync(self._fd)
        os.replace(self.partial_path, self.path)
        if self.durable:
            _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Stop without finishing: buffered sequences are dropped; the partial file stays for ``resume`` (unless
        the writer is not ``resumable``)."""
        if not self._closed:
            self._drop_partial()
            self._release()
            self._closed = True

    def _drop_partial(self) -> None:
        if not self.resumable and self._fd >= 0:
            self.partial_path.unlink(missing_ok=True)  # while the lock is held: never another writer's file

    def _release(self) -> None:
        for column in getattr(self, "_columns", {}).values():
            column.close()
        if self._fd >= 0:
            os.close(self._fd)  # also releases the lock
            self._fd = -1

    def _check_open(self) -> None:
        if self._closed or self._fd < 0:
            raise ClosedError(f"LabelWriter for {self.path} is closed")
        if self._failed is not None:
            raise SparseLabelsError(f"LabelWriter for {self.path} stopped: {self._failed}; abort() it and continue "
                                    "with resume=True, which keeps the chunks that verify")

    def __enter__(self) -> LabelWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # An error escaped the block: keep what was accepted (durably) for resume, but never finalise.
        if not self._closed and self._fd >= 0:
            try:
                if self.resumable and self._failed is None:
                    self.flush()
            finally:
                self.abort()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"LabelWriter({str(self.path)!r}, {state}, sequences={self.num_sequences})"


_COLUMN_ORDER = tuple(name for name, _ in INDEX_COLUMNS)


_LOCK_TRIES = 8


def _lock(fd: int) -> None:
    """Take the writer's exclusive lock on an open partial file (a separate function: tests delay it)."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _open_partial(path: Path) -> int | None:
    """A descriptor of the regular file at ``path``, created by this call if there is none; None when the file
    appeared or vanished meanwhile. A symbolic link or a file with other hard links is refused: the writer
    truncates and writes the file it opens, and must never write through to another file."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        try:
            fd = os.open(path, flags | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if path.is_symlink():
                raise SparseLabelsError(f"{path} is a symbolic link; the writer only writes a partial file it "
                                        "created: remove the link") from None
            raise OSError(exc.errno, exc.strerror, str(path)) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(info.st_mode) else f"a file with {info.st_nlink} hard links"
        raise SparseLabelsError(f"{path} is {what}; the writer only writes a partial file it created: remove it")
    return fd


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is (still) the file at ``path``."""
    try:
        here = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino) and mine.st_nlink > 0


def _name_max(directory: Path) -> int:
    """The longest file name the file system of ``directory`` (or its nearest existing ancestor) allows."""
    for d in (directory, *directory.parents):
        try:
            return os.pathconf(d, "PC_NAME_MAX")
        except (OSError, ValueError):
            continue
    return 255


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

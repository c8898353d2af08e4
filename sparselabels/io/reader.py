"""Reading one sparse-label file: structural checks at open, then O(1) random access to any sequence.

Nothing read from the file is used as an offset or a size before it has been checked against the file's
size and against the other structures that must agree with it (spec/FORMAT.md, "What a reader checks").
"""

from __future__ import annotations

import abc
import operator
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from sparselabels.codecs import get_codec
from sparselabels.codecs.base import LabelRuleError
from sparselabels.errors import (
    ChecksumError,
    ClosedError,
    FormatError,
    IncompleteFileError,
    InputError,
    check_int,
    reworded,
)
from sparselabels.format import metadata as meta_format
from sparselabels.format.checks import check_labels, too_many_labels
from sparselabels.format.layout import (
    CHUNK_HEADER_SIZE,
    DEFAULT_MAX_SEQUENCE_POSITIONS,
    FLAG_FINGERPRINTS,
    FOOTER_SIZE,
    HEADER_SIZE,
    Footer,
    Header,
    column_lengths,
    crc32,
    entry_size,
)
from sparselabels.io.remote import is_url
from sparselabels.io.sequence import LabelSpan
from sparselabels.io.source import ByteSource, open_source
from sparselabels.io.verify import verify_full

VERIFY_LEVELS = ("structure", "index", "full")
_INT63 = np.uint64(1 << 63)


class Labels(abc.ABC):
    """What every label source offers: a file (:class:`LabelFile`) or a set of shards read as one."""

    metadata: dict[str, Any]

    @abc.abstractmethod
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> LabelSpan:
        return self.read(index)

    def _sequence_index(self, index: int, where: str = "") -> int:
        """``index`` as a sequence number in ``0..len-1`` (negative counts from the end); IndexError or TypeError
        otherwise. Booleans are refused: ``f[True]`` reading sequence 1 hides a bug."""
        if index.__class__ is bool or isinstance(index, np.bool_):
            raise TypeError(f"sequence index must be an integer, not {type(index).__name__}")
        n = len(self)
        index = operator.index(index)
        if not -n <= index < n:
            raise IndexError(f"sequence {index} out of range for {n} sequences{where}")
        return index % n

    @abc.abstractmethod
    def read(self, index: int, *, check: bool = True) -> LabelSpan:
        """Sequence ``index`` (negative counts from the end). With ``check`` (the default) the record's CRC-32 is
        verified before it is decoded and the labels are checked against the label rules, so a damaged file never
        reads back as different labels; ``check=False`` skips both, for data verified as a whole."""

    def prefetch(self, indices) -> None:  # noqa: B027 - local sources have nothing to start early
        """Start fetching the bytes of sequences ``indices`` without waiting (a remote store fetches them
        concurrently, coalesced; local files need nothing). A hint: bad indices are left to the reads."""

    def read_many(self, indices, *, check: bool = True) -> list[LabelSpan]:
        """Sequences ``indices`` (a batch), each as :meth:`read` returns it; their bytes are fetched together."""
        indices = list(indices)
        self.prefetch(indices)
        return [self.read(i, check=check) for i in indices]

    @property
    @abc.abstractmethod
    def num_positions(self) -> int: ...

    @property
    @abc.abstractmethod
    def num_labels(self) -> int: ...

    @property
    @abc.abstractmethod
    def sequence_lengths(self) -> np.ndarray:
        """int64[num_sequences]: positions in each sequence."""

    @property
    @abc.abstractmethod
    def fingerprints(self) -> np.ndarray | None:
        """uint64[num_sequences] input fingerprints, or None when the file stores none."""

    @abc.abstractmethod
    def _locate(self, position: int) -> tuple[int, int]:
        """(sequence, offset within it) of a global position index, 0 <= position < num_positions."""

    @property
    def num_sequences(self) -> int:
        return len(self)

    @property
    def vocab_size(self) -> int:
        return int(self.metadata["vocab_size"])

    @property
    def rounds(self) -> int | None:
        return self.metadata["rounds"]

    @property
    def value_kind(self) -> str:
        return str(self.metadata["value_kind"])

    def __iter__(self) -> Iterator[LabelSpan]:
        for i in range(len(self)):
            yield self[i]

    def positions(self, start: int, stop: int) -> LabelSpan:
        """Labels of global positions ``start..stop-1``, across sequence boundaries, as one CSR block.

        For pipelines that pack documents into fixed windows: position ``p`` is the ``p``-th position of the
        concatenation of all sequences in order.
        """
        total = self.num_positions
        start, stop = operator.index(start), operator.index(stop)
        if not 0 <= start <= stop <= total:
            raise IndexError(f"positions({start}, {stop}) out of range for {total} positions")
        kind_dtype = np.float16 if self.value_kind == "prob" else np.uint8
        if start == stop:
            return LabelSpan(np.zeros(0, np.uint32), np.zeros(0, kind_dtype), np.zeros(1, np.int64))
        ids_parts, val_parts, lpp_parts = [], [], []
        seq, offset = self._locate(start)
        remaining = stop - start
        while remaining > 0:
            s = self[seq]
            take = min(remaining, s.num_positions - offset)
            lo, hi = int(s.indptr[offset]), int(s.indptr[offset + take])
            ids_parts.append(s.ids[lo:hi])
            val_parts.append(s.values[lo:hi])
            lpp_parts.append(np.diff(s.indptr[offset : offset + take + 1]))
            remaining -= take
            seq, offset = seq + 1, 0
        indptr = np.zeros(stop - start + 1, dtype=np.int64)
        np.cumsum(np.concatenate(lpp_parts), out=indptr[1:])
        return LabelSpan(np.concatenate(ids_parts), np.concatenate(val_parts), indptr)

    def close(self) -> None:  # noqa: B027 - sources without resources need not override
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LabelFile(Labels):
    """One sparse-label file, opened read-only.

    ``mmap=True`` (default) maps the file and returns zero-copy views where the codec allows; ``mmap=False``
    uses positioned reads instead (for parallel file systems). ``verify`` chooses what is checked at open:
    ``"structure"`` (header, metadata, footer and every index invariant), ``"index"`` (also the index CRC;
    the default) or ``"full"`` (also every chunk checksum and every sequence, as ``validate`` does). Every
    read verifies its record's CRC-32 and the label rules whatever the level (see :meth:`read`).
    ``max_sequence_positions`` bounds what one read may allocate: a longer sequence is refused rather than
    trusted (the default, 2**24, is far above real documents; raise it for genuinely longer sequences).
    Instances pickle by path and reopen lazily in the receiving process (DataLoader workers). ``path`` may be
    a URL (``s3://...``; ``remote`` holds the fsspec options and caches, see :mod:`sparselabels.io.remote`).
    """

    def __init__(self, path: str | os.PathLike, *, mmap: bool = True, verify: str = "index",
                 max_sequence_positions: int = DEFAULT_MAX_SEQUENCE_POSITIONS, remote=None) -> None:
        if verify not in VERIFY_LEVELS:
            raise InputError(f"verify must be one of {VERIFY_LEVELS}, got {verify!r}")
        self.path = os.fspath(path)
        self._use_mmap = mmap
        self._verify = verify
        self.max_sequence_positions = check_int("max_sequence_positions", max_sequence_positions, 1)
        self._remote = remote
        self._source: ByteSource | None = None
        self._open()

    # -- opening -------------------------------------------------------------------------------------------
    def _fail(self, message: str, **where: Any) -> FormatError:
        return FormatError(f"file {self.path!r}: {message}", path=self.path, **where)

    def _open(self) -> None:
        if self._remote is not None or is_url(self.path):
            from sparselabels.io.remote import RemoteOptions, RemoteSource

            self._remote = self._remote or RemoteOptions()
            self._source = RemoteSource(self.path, self._remote)
        else:
            self._source = open_source(self.path, use_mmap=self._use_mmap)  # OSError (missing file...) passes through
        try:
            self._read_structure()
            if self._verify == "full":
                verify_full(self)  # the first problem, as the exception it was raised as (it names the file)
        except BaseException:
            self.close()
            raise

    def _read_structure(self) -> None:
        src = self._source
        assert src is not None
        size = src.size
        try:
            self.header = Header.unpack(src.view(0, min(HEADER_SIZE, size), "header"))
        except FormatError as exc:  # keeps its class: ChecksumError, IncompleteFileError
            raise reworded(exc, f"file {self.path!r}: {exc}", path=self.path) from None
        hdr = self.header
        if size < hdr.data_offset + FOOTER_SIZE:  # e.g. a writer stopped right after starting the file
            raise IncompleteFileError(
                f"file {self.path!r}: {size} bytes, too short for the header, {hdr.metadata_size} bytes of metadata "
                "and a footer (the writer did not finish, or the file was truncated)", path=self.path
            )
        raw_meta = src.view(HEADER_SIZE, hdr.metadata_size, "metadata")
        if crc32(raw_meta) != hdr.metadata_crc32:
            raise ChecksumError(f"file {self.path!r}: metadata: CRC-32 mismatch", path=self.path,
                                field="metadata_crc32")
        if np.any(src.view(HEADER_SIZE + hdr.metadata_size, hdr.data_offset - HEADER_SIZE - hdr.metadata_size,
                           "metadata padding")):
            raise self._fail("metadata padding is not zero")
        try:
            self.metadata = meta_format.decode(raw_meta.tobytes())
            self.codec = get_codec(self.metadata["codec"], for_reading=True)
            self.footer = Footer.unpack(src.view(size - FOOTER_SIZE, FOOTER_SIZE, "footer").tobytes())
        except FormatError as exc:
            raise reworded(exc, f"file {self.path!r}: {exc}", path=self.path) from None
        ftr = self.footer
        for name in ("num_sequences", "num_chunks", "num_positions", "num_labels"):
            if getattr(ftr, name) >= 1 << 63:
                raise self._fail(f"footer: {name} {getattr(ftr, name)} is out of range", field=name)
        if ftr.index_offset < hdr.data_offset or ftr.index_offset + ftr.index_size + FOOTER_SIZE != size:
            raise self._fail(
                f"footer: index at {ftr.index_offset} with {ftr.num_sequences} sequences and {ftr.num_chunks} "
                f"chunks ({ftr.index_size} bytes) does not end where the footer starts ({size - FOOTER_SIZE})"
            )
        index_bytes = src.view(ftr.index_offset, ftr.index_size, "index")
        if self._verify in ("index", "full") and crc32(index_bytes) != ftr.index_crc32:
            raise ChecksumError(f"file {self.path!r}: index: CRC-32 mismatch", path=self.path, field="index_crc32")
        self._columns = self._split_index(index_bytes)
        self._check_index()

    def _split_index(self, index_bytes: np.ndarray) -> dict[str, np.ndarray]:
        columns, at = {}, 0
        for name, n in column_lengths(self.footer.num_sequences, self.footer.num_chunks, self.footer.flags):
            col = index_bytes[at : at + 8 * n].view("<u8")
            at += 8 * n
            columns[name] = col
        return columns

    def _check_index(self) -> None:
        """Every invariant of the index (spec/FORMAT.md), checked with whole-array operations."""
        c = self._columns
        ftr, hdr = self.footer, self.header
        S, C = ftr.num_sequences, ftr.num_chunks
        for name in ("position_start", "label_start", "record_offset", "record_size", "chunk_offset",
                     "chunk_first_sequence", "chunk_table_offset", "chunk_table_size"):
            if c[name].size and c[name].max() >= _INT63:
                raise self._fail(f"index: {name} holds a value >= 2**63", field=name)
        if S and c["record_crc32"].max() >= np.uint64(1 << 32):
            raise self._fail("index: record_crc32 holds a value >= 2**32")
        col = {name: arr.view(np.int64) for name, arr in c.items() if name != "fingerprint"}

        def cumulative(name: str, total: int) -> np.ndarray:
            a = col[name]
            if a[0] != 0 or a[-1] != total:
                raise self._fail(f"index: {name} must run from 0 to {total}, runs from {a[0]} to {a[-1]}", field=name)
            d = np.diff(a)
            bad = np.flatnonzero(d < 0)
            if bad.size:
                raise self._fail(f"index: {name} decreases at sequence {bad[0]}", field=name, sequence=bad[0])
            return d

        self._lengths = cumulative("position_start", ftr.num_positions)
        label_counts = cumulative("label_start", ftr.num_labels)
        if (S == 0) != (C == 0):
            raise self._fail(f"index: {S} sequences in {C} chunks")
        chunk_offset, first_seq = col["chunk_offset"], col["chunk_first_sequence"]
        if chunk_offset[0] != hdr.data_offset or chunk_offset[-1] != ftr.index_offset:
            raise self._fail("index: chunks do not start at the data offset and end at the index")
        if first_seq[0] != 0 or first_seq[-1] != S:
            raise self._fail("index: chunk_first_sequence must run from 0 to the number of sequences")
        if C:
            if np.any(np.diff(chunk_offset) <= 0) or np.any(np.diff(first_seq) <= 0):
                raise self._fail("index: chunk offsets or first sequences are not strictly increasing")
            per_chunk = np.diff(first_seq)
            entries_end = chunk_offset[:-1] + CHUNK_HEADER_SIZE + per_chunk * entry_size(ftr.flags)
            table_offset, table_size = col["chunk_table_offset"], col["chunk_table_size"]
            bad = np.flatnonzero((table_offset != entries_end) | (table_size % 8 != 0) | (table_size < 0)
                                 | (table_offset + table_size > chunk_offset[1:]))
            if bad.size:
                raise self._fail(f"index: chunk {bad[0]} has an inconsistent table offset or size", chunk=bad[0])
            if not self.codec.uses_tables and np.any(table_size):
                bad = np.flatnonzero(table_size)
                raise self._fail(f"index: chunk {bad[0]} has a {table_size[bad[0]]}-byte table, but codec "
                                 f"{self.codec.name!r} has none", chunk=bad[0])
            rec_off, rec_size = col["record_offset"], col["record_size"]
            expected = np.empty(S, dtype=np.int64)
            expected[1:] = rec_off[:-1] + rec_size[:-1]
            expected[first_seq[:-1]] = table_offset + table_size
            bad = np.flatnonzero((rec_off != expected) | (rec_size % 8 != 0))
            if bad.size:
                raise self._fail(f"index: record of sequence {bad[0]} is not where its chunk layout puts it",
                                 sequence=bad[0])
            last = first_seq[1:] - 1
            bad = np.flatnonzero(rec_off[last] + rec_size[last] != chunk_offset[1:])
            if bad.size:
                raise self._fail(f"index: records of chunk {bad[0]} do not end where the next chunk starts",
                                 chunk=bad[0])
            bad = np.flatnonzero(too_many_labels(self._lengths, label_counts, self.value_kind, self.rounds))
            if bad.size:
                raise self._fail(f"index: sequence {bad[0]} claims {label_counts[bad[0]]} labels in "
                                 f"{self._lengths[bad[0]]} positions, more than the label rules allow", sequence=bad[0])
            bad = np.flatnonzero(self.codec.over_capacity(self._lengths, label_counts, rec_size))
            if bad.size:
                raise self._fail(
                    f"index: sequence {bad[0]} claims {self._lengths[bad[0]]} positions and {label_counts[bad[0]]} "
                    f"labels in a {rec_size[bad[0]]}-byte record, more than codec {self.codec.name!r} can hold",
                    sequence=bad[0])
        self._col = col
        self._has_tables = bool(C and np.any(col["chunk_table_size"]))

    # -- access --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.footer.num_sequences

    @property
    def num_positions(self) -> int:
        return self.footer.num_positions

    @property
    def num_labels(self) -> int:
        return self.footer.num_labels

    @property
    def num_chunks(self) -> int:
        return self.footer.num_chunks

    @property
    def file_size(self) -> int:
        return self._opened().size

    def _opened(self) -> ByteSource:
        if self._source is None:
            raise ClosedError(f"file {self.path!r} is closed", path=self.path)
        return self._source

    def _identity(self) -> tuple[int, ...]:
        """What must not change between opening a file and reopening it by path (pickling): its size and
        footer (index checksum and counts)."""
        f = self.footer
        return (self._opened().size, f.index_crc32, f.num_sequences, f.num_chunks, f.num_positions, f.num_labels)

    @property
    def codec_name(self) -> str:
        return self.codec.name

    @property
    def sequence_lengths(self) -> np.ndarray:
        return self._lengths

    @property
    def fingerprints(self) -> np.ndarray | None:
        return self._fingerprint_column(self._snapshot()[2])

    def _fingerprint_column(self, columns: dict[str, np.ndarray]) -> np.ndarray | None:
        return columns.get("fingerprint") if self.footer.flags & FLAG_FINGERPRINTS else None

    def index_column(self, name: str) -> np.ndarray:
        """A raw index column (uint64 view), for tools that work on the layout itself."""
        return self._snapshot()[2][name]

    def _index(self) -> dict[str, np.ndarray]:
        """The index columns (int64 views of the file), once the file is known to be open and unchanged: every
        access to the index or the records at read time goes through here (see MmapSource.check_unchanged)."""
        return self._snapshot()[1]

    def _snapshot(self) -> tuple[ByteSource, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(source, int64 columns, raw columns), taken together so that a read racing with close() from another
        thread either uses all three of the open file or gets ``ValueError: closed``: close() drops the source
        before the columns, so columns read before a source found open are that file's."""
        col, columns = self._col, self._columns
        source = self._opened()
        source.check_unchanged()
        return source, col, columns

    def _locate(self, position: int) -> tuple[int, int]:
        starts = self._index()["position_start"]
        seq = int(np.searchsorted(starts, position, side="right")) - 1
        return seq, position - int(starts[seq])

    def record_bytes(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(record, table) bytes of sequence ``index``: what the codec decodes."""
        src, col, _ = self._snapshot()
        return self._record_bytes(index, src, col)

    def _record_bytes(self, index: int, src: ByteSource, col: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        record = src.view(int(col["record_offset"][index]), int(col["record_size"][index]), f"sequence {index}")
        if self._has_tables:
            chunk = self._chunk_index(index, col)
            table = src.view(int(col["chunk_table_offset"][chunk]), int(col["chunk_table_size"][chunk]),
                             f"table of chunk {chunk}")
        else:
            table = _EMPTY
        return record, table

    def _chunk_index(self, index: int, col: dict[str, np.ndarray] | None = None) -> int:
        """The chunk holding sequence ``index``."""
        col = self._col if col is None else col
        return int(np.searchsorted(col["chunk_first_sequence"], index, side="right")) - 1

    def prefetch(self, indices) -> None:
        fetch = getattr(self._opened(), "prefetch", None)
        if fetch is None:
            return
        col, n = self._index(), len(self)
        ranges = []
        for i in indices:
            if -n <= i < n:
                i %= n
                ranges.append((int(col["record_offset"][i]), int(col["record_size"][i])))
                if self._has_tables:
                    c = self._chunk_index(i)
                    ranges.append((int(col["chunk_table_offset"][c]), int(col["chunk_table_size"][c])))
        fetch(ranges)

    def read(self, index: int, *, check: bool = True) -> LabelSpan:
        index = self._sequence_index(index, f" in {self.path!r}")
        src, col, columns = self._snapshot()
        record, table = self._record_bytes(index, src, col)
        num_pos = int(col["position_start"][index + 1] - col["position_start"][index])
        num_lab = int(col["label_start"][index + 1] - col["label_start"][index])
        if num_pos > self.max_sequence_positions:
            raise FormatError(
                f"file {self.path!r}, sequence {index}: {num_pos} positions, more than max_sequence_positions = "
                f"{self.max_sequence_positions} (raise it when opening the file if the sequence is genuine)",
                path=self.path, sequence=index)
        if check and crc32(record, crc32(table)) != int(col["record_crc32"][index]):
            raise ChecksumError(f"file {self.path!r}, sequence {index}: record CRC-32 mismatch", path=self.path,
                                sequence=index, field="record_crc32")
        # a codec that checks the label rules while decoding (Codec.checks_label_rules) saves the second pass
        inline = check and self.codec.checks_label_rules
        rules = {"vocab_size": self.vocab_size, "rounds": self.rounds} if inline else {}
        try:
            ids, values, indptr = self.codec.decode(record, table, num_pos, num_lab, self.value_kind, **rules)
        except LabelRuleError as exc:
            raise FormatError(f"file {self.path!r}, sequence {index}, {exc.problem.describe()}", path=self.path,
                              sequence=index, **exc.problem.location()) from None
        except FormatError as exc:
            # the chunk is named when decoding involves its table
            chunk = self._chunk_index(index, col) if self._has_tables else None
            where = f" (chunk {chunk})" if chunk is not None else ""
            raise FormatError(f"file {self.path!r}, sequence {index}{where}: {exc}",
                              path=self.path, sequence=index, chunk=chunk) from None
        if check and not inline:
            problem = check_labels(ids, values, indptr, vocab_size=self.vocab_size, value_kind=self.value_kind,
                                   rounds=self.rounds)
            if problem is not None:
                raise FormatError(f"file {self.path!r}, sequence {index}, {problem.describe()}", path=self.path,
                                  sequence=index, **problem.location())
        fps = self._fingerprint_column(columns)
        return LabelSpan(ids, values, indptr, int(fps[index]) if fps is not None else None, index)

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None
            # the index columns are views of the map: dropped, so it (and its descriptor) goes with the last
            # view a caller still holds, not with this object
            self._columns, self._col = {}, {}

    # -- pickling: by path, reopened in the receiving process ---------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "mmap": self._use_mmap, "verify": self._verify,
                "max_sequence_positions": self.max_sequence_positions, "identity": self._identity(),
                "remote": self._remote}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._use_mmap = state["mmap"]
        self.max_sequence_positions = state["max_sequence_positions"]
        self._remote = state.get("remote")
        self._verify = "structure"  # the sending process already verified the index
        self._source = None
        self._open()
        if "identity" in state and self._identity() != tuple(state["identity"]):  # (older pickles lack it)
            self.close()
            raise FormatError(f"file {self.path!r} changed after it was opened (size, index checksum or counts "
                              "differ from the sender's): reopen it rather than read another file's labels")

    def __repr__(self) -> str:
        if not hasattr(self, "footer"):
            return f"LabelFile({self.path!r}, not open)"
        return (f"LabelFile({self.path!r}, sequences={len(self)}, positions={self.num_positions}, "
                f"labels={self.num_labels}, codec={self.codec.name!r}, value_kind={self.value_kind!r})")


_EMPTY = np.zeros(0, dtype=np.uint8)
_EMPTY.flags.writeable = False

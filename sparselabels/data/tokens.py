"""Token sources: the input ids that labels were computed from, read by sequence index.

One small interface (:class:`TokenSource`) over the places pre-training pipelines keep tokens: an in-memory numpy
array, a ``.npy`` file (memory-mapped), Megatron-LM ``.bin``/``.idx`` files and a Hugging Face ``datasets`` column.
``src[i]`` is a 1-D integer array **in the stored dtype** (uint16/int32/... views of a memory map where the
source allows; cast with ``astype(np.int64)`` if you need int64 — :func:`sparselabels.data.collate` does).
Every source pickles by path and reopens lazily in the receiving process (DataLoader workers); in-memory arrays
and in-memory ``datasets`` pickle as data.

Megatron IndexedDataset format, as written by ``megatron/core/datasets/indexed_dataset.py`` (checked against the
public source; this is an independent reader): ``<prefix>.idx`` holds the 9-byte magic ``b"MMIDIDX\\x00\\x00"``,
a little-endian u64 version (1), a u8 dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
7 float32, 8 uint16), a u64 sequence count S and a u64 document count D, then int32 lengths[S], int64 byte
pointers[S] into the ``.bin`` and int64 document indices[D] (0, ..., S). ``<prefix>.bin`` holds the tokens,
no header. Both files are untrusted: sizes, dtype, lengths, pointers and document indices are all checked
before a single token is read, and the ``.bin`` must be exactly as long as the index says (a truncated or
grown ``.bin`` is an error, not a silent misread). Multimodal indexes (a trailing mode byte per sequence) are
refused: this reader is for text tokens.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from sparselabels.data.streams import StreamTokens
from sparselabels.data.token_source import TokenSource
from sparselabels.errors import FormatError, InputError

__all__ = [
    "ArrayTokens",
    "HFTokens",
    "MegatronTokens",
    "NpyTokens",
    "TokenSource",
    "open_tokens",
    "write_megatron_tokens",
]


def file_identity(path: str) -> tuple[int, ...]:
    """What must not change between opening a token file and reopening it by path in a worker: device, inode,
    size and modification time (a file replaced or rewritten differs in one of them)."""
    info = os.stat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def check_identity(paths: tuple[str, ...], expected: tuple | None, found: tuple) -> None:
    """Refuse token files that changed since the sending process opened them: labels would be paired with other
    tokens (without stored fingerprints, silently)."""
    if expected is not None and tuple(map(tuple, expected)) != tuple(map(tuple, found)):
        raise FormatError(f"token file {' / '.join(paths)!r} changed after it was opened (device, inode, size or "
                          "modification time differ from the sender's): reopen it rather than read other tokens")


def _check_integer(dtype: np.dtype, what: str) -> None:
    if dtype.kind not in "iu":  # issubdtype(..., np.integer) admits timedelta64
        raise InputError(f"{what}: token ids must be integers, got dtype {dtype}")


# ----------------------------------------------------------------------------------------------- arrays


class ArrayTokens(TokenSource):
    """An in-memory 2-D array (one row per sequence) or 1-D object array of 1-D integer arrays."""

    def __init__(self, array: np.ndarray | list | tuple, *, name: str = "array") -> None:
        if isinstance(array, list | tuple):
            obj = np.empty(len(array), dtype=object)
            for i, a in enumerate(array):
                obj[i] = np.asarray(a)
            array = obj
        if not isinstance(array, np.ndarray):
            raise InputError(f"ArrayTokens needs a numpy array, got {type(array).__name__}")
        if array.ndim == 2:
            _check_integer(array.dtype, name)
        elif array.ndim == 1 and array.dtype == object:
            for i, row in enumerate(array):
                if not isinstance(row, np.ndarray) or row.ndim != 1:
                    raise InputError(f"{name}: sequence {i} is not a 1-D numpy array")
                if row.size:
                    _check_integer(row.dtype, f"{name}: sequence {i}")
        else:
            raise InputError(
                f"{name}: token array must be 2-D (sequences x tokens) or a 1-D object array of 1-D arrays, got "
                f"shape {array.shape} and dtype {array.dtype}"
            )
        self._array = array
        self._name = name

    def __len__(self) -> int:
        return int(self._array.shape[0])

    def _get(self, index: int) -> np.ndarray:
        return self._array[index]

    def concatenated(self, lo: int, hi: int) -> np.ndarray | None:
        return self._array[lo:hi].reshape(-1) if self._array.ndim == 2 else None

    def lengths(self) -> np.ndarray:
        a = self._array
        if a.ndim == 2:
            return np.full(a.shape[0], a.shape[1], dtype=np.int64)
        return np.fromiter((row.shape[0] for row in a), dtype=np.int64, count=a.shape[0])

    def describe(self) -> str:
        return self._name


class NpyTokens(TokenSource):
    """A 2-D integer ``.npy`` file, memory-mapped read-only; pickles by path."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._array: np.ndarray | None = None
        self._identity: tuple[int, ...] | None = None  # set at open; a reopen must find the same
        self._open()

    def _open(self) -> np.ndarray:
        try:
            identity = file_identity(self.path)
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:  # object arrays need pickle, which a token file must not need
            raise FormatError(f"npy {self.path!r}: cannot memory-map ({exc})") from None
        except OSError as exc:
            raise InputError(f"npy {self.path!r}: cannot open ({exc})") from None
        if array.ndim != 2:
            hint = "; a 1-D token stream is read with seq_len (--seq-len)" if array.ndim == 1 else ""
            raise FormatError(f"npy {self.path!r}: token array must be 2-D (sequences x tokens), got "
                              f"{array.shape}{hint}")
        if array.dtype.kind not in "iu":  # issubdtype(..., np.integer) admits timedelta64
            raise FormatError(f"npy {self.path!r}: token ids must be integers, got dtype {array.dtype}")
        check_identity((self.path,), None if self._identity is None else (self._identity,), (identity,))
        self._identity = identity
        self._array = array
        return array

    @property
    def array(self) -> np.ndarray:
        return self._array if self._array is not None else self._open()

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def _get(self, index: int) -> np.ndarray:
        return self.array[index]

    def concatenated(self, lo: int, hi: int) -> np.ndarray | None:
        return self.array[lo:hi].reshape(-1)

    def lengths(self) -> np.ndarray:
        a = self.array
        return np.full(a.shape[0], a.shape[1], dtype=np.int64)

    def describe(self) -> str:
        return f"npy:{self.path}"

    def __getstate__(self) -> dict[str, Any]:
        if self._identity is None:
            self._open()
        return {"path": self.path, "identity": self._identity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._identity = state.get("identity")
        self._array = None  # reopened on first use in the receiving process, and checked against the identity


# -------------------------------------------------------------------------------------------- Megatron

MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_VERSION = 1
_MEGATRON_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count
MEGATRON_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype("<i2"),
    4: np.dtype("<i4"),
    5: np.dtype("<i8"),
    6: np.dtype("<f8"),
    7: np.dtype("<f4"),
    8: np.dtype("<u2"),
}
_CHECK_BLOCK = 1 << 20
_MEGATRON_CODES = {np.dtype(v).newbyteorder("="): k for k, v in MEGATRON_DTYPES.items()}


def megatron_prefix(path: str | os.PathLike) -> str:
    """The common prefix of ``x.bin``/``x.idx`` given either file or the prefix itself."""
    p = os.fspath(path)
    return p[:-4] if p.endswith((".bin", ".idx")) else p


class MegatronTokens(TokenSource):
    """Megatron-LM IndexedDataset token files (``<prefix>.idx`` + ``<prefix>.bin``), memory-mapped.

    Item ``i`` is Megatron's sequence ``i`` (what ``IndexedDataset[i]`` returns), in the stored dtype.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.prefix = megatron_prefix(path)
        self._identity: tuple | None = None
        self._open()

    @property
    def idx_path(self) -> str:
        return self.prefix + ".idx"

    @property
    def bin_path(self) -> str:
        return self.prefix + ".bin"

    def _fail(self, message: str) -> FormatError:
        return FormatError(f"megatron index {self.idx_path!r}: {message}")

    def _open(self) -> None:
        try:
            identity = (file_identity(self.idx_path), file_identity(self.bin_path))
            idx_size, bin_size = identity[0][2], identity[1][2]
            with open(self.idx_path, "rb") as f:
                header = f.read(_MEGATRON_HEADER.size)
                index = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if idx_size else b""
        except OSError as exc:
            raise InputError(f"megatron tokens {self.prefix!r}: cannot open ({exc})") from None
        if len(header) < _MEGATRON_HEADER.size:
            raise self._fail(f"{idx_size} bytes, shorter than the {_MEGATRON_HEADER.size}-byte header")
        magic, version, code, num_seq, num_doc = _MEGATRON_HEADER.unpack(header)
        if magic != MEGATRON_MAGIC:
            raise self._fail(f"bad magic {magic!r}, expected {MEGATRON_MAGIC!r}")
        if version != MEGATRON_VERSION:
            raise self._fail(f"version {version} is not supported (only {MEGATRON_VERSION})")
        if code not in MEGATRON_DTYPES:
            raise self._fail(f"unknown dtype code {code}")
        dtype = MEGATRON_DTYPES[code]
        if dtype.kind not in "iu":
            raise self._fail(f"dtype code {code} ({dtype}) is not an integer type; token ids must be integers")
        head = _MEGATRON_HEADER.size
        expected = head + 12 * num_seq + 8 * num_doc  # Python ints: no overflow whatever the header says
        if idx_size != expected:
            extra = " (a multimodal index with sequence modes is not supported)" if idx_size == expected + num_seq \
                else ""
            raise self._fail(
                f"{idx_size} bytes, but {num_seq} sequences and {num_doc} documents need exactly {expected}{extra}"
            )
        if num_seq >= 1 << 32:
            raise self._fail(f"{num_seq} sequences is more than this reader supports (2**32 - 1)")
        # Views of the memory-mapped index (shared by every process that opens it, never copied whole).
        buf = np.frombuffer(index, dtype=np.uint8)
        lengths = buf[head : head + 4 * num_seq].view("<i4")
        pointers = buf[head + 4 * num_seq : head + 12 * num_seq].view("<i8")
        documents = buf[head + 12 * num_seq :].view("<i8")
        total = self._check_layout(lengths, pointers, dtype.itemsize)
        need = total * dtype.itemsize
        if bin_size != need:
            raise FormatError(
                f"megatron data {self.bin_path!r}: {bin_size} bytes, but the index describes {total} tokens of "
                f"{dtype} ({need} bytes); the .bin is truncated or does not belong to this index"
            )
        if num_doc < 1 or documents[0] != 0 or documents[-1] != num_seq or np.any(np.diff(documents) < 0):
            raise self._fail(
                f"document indices must rise from 0 to the sequence count {num_seq} (found {num_doc} entries)"
            )
        check_identity((self.idx_path, self.bin_path), self._identity, identity)
        self._identity = identity
        self._dtype = dtype
        self._lengths = lengths
        self._pointers = pointers
        self._documents = documents
        self._tokens = self._map(need)

    def _check_layout(self, lengths: np.ndarray, pointers: np.ndarray, itemsize: int) -> int:
        """Lengths >= 0 and pointers exactly back to back, checked in blocks (bounded memory); returns the total
        number of tokens."""
        total = 0
        for lo in range(0, lengths.shape[0], _CHECK_BLOCK):
            block = lengths[lo : lo + _CHECK_BLOCK].astype(np.int64)
            bad = np.flatnonzero(block < 0)
            if bad.size:
                i = lo + int(bad[0])
                raise self._fail(f"sequence {i} has negative length {lengths[i]}")
            starts = np.empty_like(block)
            starts[0] = total
            np.cumsum(block[:-1], out=starts[1:])
            starts[1:] += total
            bad = np.flatnonzero(pointers[lo : lo + _CHECK_BLOCK] != starts * itemsize)
            if bad.size:
                i = lo + int(bad[0])
                raise self._fail(
                    f"sequence {i}: byte pointer {pointers[i]} is not where the lengths before it put it "
                    f"({starts[bad[0]] * itemsize}); the .bin must hold the sequences back to back"
                )
            total += int(block.sum())  # < 2**32 sequences of < 2**31 tokens: fits int64
        return total

    def _map(self, size: int) -> np.ndarray:
        if size == 0:
            return np.zeros(0, dtype=self._dtype)
        with open(self.bin_path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
        return np.frombuffer(mapped, dtype=self._dtype)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def document_indices(self) -> np.ndarray:
        """int64[D]: Megatron's document boundaries (sequence indices), as stored."""
        return self._documents

    def __len__(self) -> int:
        return int(self._lengths.shape[0])

    def _get(self, index: int) -> np.ndarray:
        start = int(self._pointers[index]) // self._dtype.itemsize
        return self._tokens[start : start + int(self._lengths[index])]

    def lengths(self) -> np.ndarray:
        return self._lengths.astype(np.int64)

    def concatenated(self, lo: int, hi: int) -> np.ndarray | None:
        if lo >= hi:
            return self._tokens[:0]
        start = int(self._pointers[lo]) // self._dtype.itemsize
        last = int(self._pointers[hi - 1]) // self._dtype.itemsize + int(self._lengths[hi - 1])
        return self._tokens[start:last]

    def describe(self) -> str:
        return f"megatron:{self.prefix}"

    def __getstate__(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "identity": self._identity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.prefix = state["prefix"]
        self._identity = state.get("identity")
        self._open()


def write_megatron_tokens(path: str | os.PathLike, sequences, *, dtype=np.int32, document_indices=None) -> str:
    """Write ``sequences`` (1-D integer arrays) as Megatron ``<prefix>.bin``/``.idx``; returns the prefix.

    A small writer for tests and examples. ``document_indices`` defaults to one document per sequence
    (``0, 1, ..., S``, as Megatron's builder writes for ``add_document`` per sequence).
    """
    prefix = megatron_prefix(path)
    dtype = np.dtype(dtype).newbyteorder("=")
    if dtype not in _MEGATRON_CODES:
        raise InputError(f"dtype {dtype} has no Megatron code")
    arrays = [np.asarray(s) for s in sequences]
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    if lengths.size and lengths.max() >= 1 << 31:
        raise InputError("a Megatron sequence holds fewer than 2**31 tokens")
    for i, a in enumerate(arrays):
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
            raise InputError(f"sequence {i}: must be a 1-D integer array")
        info = np.iinfo(dtype)
        if a.size and (int(a.min()) < info.min or int(a.max()) > info.max):
            raise InputError(f"sequence {i}: token ids do not fit {dtype}")
    docs = np.arange(len(arrays) + 1, dtype=np.int64) if document_indices is None else \
        np.asarray(document_indices, dtype=np.int64)
    pointers = np.zeros(len(arrays), dtype=np.int64)
    if len(arrays) > 1:
        np.cumsum(lengths[:-1] * dtype.itemsize, out=pointers[1:])
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)  # as np.save would need it to exist: make it
    with open(prefix + ".bin", "wb") as f:
        for a in arrays:
            f.write(np.ascontiguousarray(a, dtype=dtype.newbyteorder("<")).tobytes())
    with open(prefix + ".idx", "wb") as f:
        f.write(_MEGATRON_HEADER.pack(MEGATRON_MAGIC, MEGATRON_VERSION, _MEGATRON_CODES[dtype], len(arrays),
                                      docs.shape[0]))
        f.write(lengths.astype("<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(docs.astype("<i8").tobytes())
    return prefix


# ------------------------------------------------------------------------------------ Hugging Face datasets


def _is_hf_dataset(obj: Any) -> bool:
    return any(c.__module__.startswith("datasets") and c.__name__ == "Dataset" for c in type(obj).__mro__)


class HFTokens(TokenSource):
    """A list-of-integers column of a Hugging Face ``datasets.Dataset``.

    Reads go straight to the Arrow buffers (zero-copy numpy views of the memory-mapped cache files) for
    ``list``/``large_list`` columns; other column types fall back to ``dataset[i][column]``. A source opened
    from a ``save_to_disk`` directory pickles by path; a ``Dataset`` object pickles as ``datasets`` pickles it
    (memory-mapped tables by path).
    """

    def __init__(self, dataset: Any = None, *, column: str = "input_ids", path: str | os.PathLike | None = None):
        self.column = column
        self.path = os.fspath(path) if path is not None else None
        self._dataset = dataset
        self._fast: tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray | None] | None = None
        self._pinned: str | None = None  # a dataset on disk: its fingerprint at open, checked when reloaded
        self._prepare()

    @classmethod
    def from_disk(cls, path: str | os.PathLike, *, column: str = "input_ids") -> HFTokens:
        return cls(None, column=column, path=path)

    def _load(self) -> Any:
        import datasets

        if self.path is None:
            raise InputError("HFTokens needs a datasets.Dataset or the path of one saved with save_to_disk")
        try:
            ds = datasets.load_from_disk(self.path)
        except (FileNotFoundError, OSError, ValueError) as exc:
            raise InputError(f"hf dataset {self.path!r}: cannot load ({exc})") from None
        if not isinstance(ds, datasets.Dataset):
            raise InputError(f"hf dataset {self.path!r} holds several splits ({list(ds)}); pass one split's path")
        return ds

    def _prepare(self) -> None:
        if self._dataset is None:
            self._dataset = self._load()
            found = getattr(self._dataset, "_fingerprint", None)
            if self._pinned is not None and found != self._pinned:
                self._dataset = None
                raise FormatError(f"{self.describe()} changed after it was opened (dataset fingerprint {found!r}, "
                                  f"the sender's {self._pinned!r}): reopen it rather than read other tokens")
            self._pinned = found
        ds = self._dataset
        if not _is_hf_dataset(ds):
            raise InputError(f"HFTokens needs a datasets.Dataset, got {type(ds).__name__}")
        if self.column not in ds.column_names:
            raise InputError(f"{self.describe()}: no column {self.column!r} (columns: {ds.column_names})")
        self._fast = self._arrow_columns(ds)

    def _arrow_columns(self, ds: Any):
        import pyarrow as pa

        column = ds.data.table.column(self.column)
        offsets_list, values_list = [], []
        for c, chunk in enumerate(column.chunks):
            if not (pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type)):
                return None
            if not pa.types.is_integer(chunk.type.value_type):
                raise InputError(f"{self.describe()}: column {self.column!r} holds {chunk.type}, not integer lists")
            if chunk.null_count or chunk.values.null_count:
                raise InputError(f"{self.describe()}: column {self.column!r} has missing values (chunk {c})")
            offsets_list.append(np.asarray(chunk.offsets).astype(np.int64, copy=False))
            values_list.append(chunk.values.to_numpy(zero_copy_only=True))
        chunk_starts = np.zeros(len(column.chunks) + 1, dtype=np.int64)
        np.cumsum([len(ch) for ch in column.chunks], out=chunk_starts[1:])
        indices = getattr(ds, "_indices", None)  # a select/shuffle leaves a row mapping beside the table
        row_map = None if indices is None else np.asarray(indices.column(0).to_numpy(), dtype=np.int64)
        return offsets_list, values_list, chunk_starts, row_map

    @property
    def dataset(self) -> Any:
        if self._dataset is None:
            self._prepare()
        return self._dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def _row(self, index: int) -> int:
        row_map = self._fast[3]
        return index if row_map is None else int(row_map[index])

    def _get(self, index: int) -> np.ndarray:
        ds = self.dataset
        if self._fast is None:
            out = np.asarray(ds[index][self.column])
            if out.ndim != 1 or (out.size and out.dtype.kind not in "iu"):
                raise InputError(f"{self.describe()}: row {index} is not a list of integers")
            return out
        offsets_list, values_list, chunk_starts, _ = self._fast
        row = self._row(index)
        c = int(np.searchsorted(chunk_starts, row, side="right")) - 1
        local = row - int(chunk_starts[c])
        offsets = offsets_list[c]
        return values_list[c][offsets[local] : offsets[local + 1]]

    def lengths(self) -> np.ndarray:
        ds = self.dataset
        if self._fast is None:
            return np.fromiter((len(ds[i][self.column]) for i in range(len(ds))), dtype=np.int64, count=len(ds))
        offsets_list, _, _, row_map = self._fast
        per_row = np.concatenate([np.diff(o) for o in offsets_list]) if offsets_list else np.zeros(0, np.int64)
        return per_row if row_map is None else per_row[row_map]

    def describe(self) -> str:
        return f"hf:{self.path}[{self.column}]" if self.path else f"hf:<Dataset>[{self.column}]"

    def __getstate__(self) -> dict[str, Any]:
        state = {"column": self.column, "path": self.path, "pinned": self._pinned}
        if self.path is None:
            state["dataset"] = self._dataset
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.column = state["column"]
        self.path = state["path"]
        self._dataset = state.get("dataset")
        self._pinned = state.get("pinned")
        self._fast = None
        if self._dataset is not None:
            self._fast = self._arrow_columns(self._dataset)
        # a dataset on disk is loaded on first use, in the process that uses it


# ------------------------------------------------------------------------------------------------ opening


def open_tokens(source: Any, *, column: str = "input_ids", seq_len: int | None = None) -> TokenSource:
    """A :class:`TokenSource` for ``source``.

    ``source`` may be a TokenSource (returned as is), a numpy array (2-D, or a 1-D object array of 1-D arrays)
    or a list of 1-D arrays, a ``datasets.Dataset`` (``column`` is read), or a path: ``*.npy`` (memory-mapped),
    a Megatron ``*.bin``/``*.idx`` file or their common prefix, or a directory written by
    ``Dataset.save_to_disk``. With ``seq_len``, ``source`` is one 1-D token stream (an integer array or a 1-D
    ``.npy``) read as sequences of ``seq_len`` tokens (see :class:`~sparselabels.data.streams.StreamTokens`).
    """
    if seq_len is not None:
        if isinstance(source, np.ndarray) or (isinstance(source, str | os.PathLike)
                                              and Path(source).suffix == ".npy"):
            return StreamTokens(source, seq_len)
        raise InputError(f"seq_len cuts a 1-D token stream (an integer array or a 1-D .npy file), not a "
                         f"{type(source).__name__ if not isinstance(source, str | os.PathLike) else repr(str(source))}")
    if isinstance(source, TokenSource):
        return source
    if isinstance(source, np.ndarray | list | tuple):
        return ArrayTokens(source)
    if _is_hf_dataset(source):
        return HFTokens(source, column=column)
    if isinstance(source, str | os.PathLike):
        p = Path(source)
        if p.suffix == ".npy":
            return NpyTokens(p)
        if p.suffix in (".bin", ".idx") or Path(os.fspath(p) + ".idx").is_file():
            return MegatronTokens(p)
        if p.is_dir():
            return HFTokens.from_disk(p, column=column)
        raise InputError(
            f"token source {os.fspath(p)!r}: not a .npy file, a Megatron .bin/.idx prefix or a saved datasets "
            "directory"
        )
    raise InputError(f"cannot read tokens from a {type(source).__name__}")

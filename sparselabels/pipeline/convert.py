"""Dumped teacher outputs → label files: dense logits or log-probs from ``.npy``, HDF5 or safetensors.

Inputs are read ``chunk_rows`` rows at a time (``.npy`` memory-mapped, HDF5 and safetensors sliced), so a file
larger than memory converts in bounded memory. How rows become sequences:

- a 3-D array ``[N, T, V]``: one sequence per entry of the first axis, ``T`` positions each — or, with
  ``lengths``, the first ``lengths[i]`` positions of entry ``i`` (the rest is padding and is not read);
- a 2-D array ``[R, V]``: one sequence of ``R`` positions, or sequences of ``seq_len`` positions (``R`` must be
  a multiple), or consecutive sequences of ``lengths[i]`` positions (summing to ``R``).

Row ids for the sampler are global positions (cumulative lengths + t), exactly as ``generate`` uses, so the
same logits with the same seed give the same labels whichever way they reach the library, and the result does
not depend on ``chunk_rows``. Log-probs are logits up to a per-row constant (softmax is unchanged, at any
temperature); ``kind="logprobs"`` only adds a check that every row's probabilities sum to 1, to catch
mislabelled inputs. ``topk=K`` writes Top-K probability labels (``value_kind="prob"``) for baselines. The same
determinism makes ``resume=True`` exact: a rerun after a crash keeps the sequences already in the partial
file and labels the rest, and the file is the one an uninterrupted run writes. The kept sequences' input rows
are hashed again and compared with the digests recorded while they were converted (``row_journal``), so an
input replaced in between is refused rather than mixed into the file.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparselabels._extras import require
from sparselabels.codecs import DEFAULT_CODEC
from sparselabels.errors import AlignmentError, CompatibilityError, InputError, check_int
from sparselabels.format.fingerprint import input_fingerprint
from sparselabels.io.sequence import CsrLabels, concat_csr, split_csr
from sparselabels.io.writer import DEFAULT_CHUNK_BYTES, LabelWriter
from sparselabels.pipeline.progress import Progress
from sparselabels.pipeline.resume import check_finished
from sparselabels.pipeline.row_journal import RowJournal, row_digest
from sparselabels.pipeline.teacher import resolve_device

KINDS = ("logits", "logprobs")
DEFAULT_ROW_BYTES = 256 << 20  # of float32 rows handed to the sampler at a time
_LOGPROB_TOLERANCE = {2: 0.05, 4: 1e-3, 8: 1e-6}  # |logsumexp| allowed, by bytes per input element


# -- dense sources ------------------------------------------------------------------------------------------
class DenseSource(abc.ABC):
    """A 2-D ``[R, V]`` or 3-D ``[N, T, V]`` array of teacher outputs, read by slices."""

    shape: tuple[int, ...]
    name: str

    @property
    def width(self) -> int:
        return int(self.shape[-1])

    @property
    def itemsize(self) -> int:
        return 4

    @abc.abstractmethod
    def read(self, index: tuple[slice, ...]) -> Any:
        """The block at ``index`` (one slice per leading axis) as a torch tensor ``[..., V]``."""

    def close(self) -> None:  # noqa: B027 - sources without resources need not override
        pass

    def describe(self) -> dict:
        return {"file": Path(self.name).name, "shape": list(self.shape)}


_NUMPY_FLOATS = (np.float16, np.float32, np.float64)
# One row (a vocabulary's worth of outputs) is the least convert holds at a time, several times over while it
# samples: 256 MiB of float32 (a vocabulary of 64M entries) is far above any real one, and a declared shape
# beyond it (cheap to declare in an HDF5 file without storing any data) is refused before anything is read.
MAX_ROW_BYTES = 256 << 20
# HDF5 decompresses whole chunks: a chunk larger than this is refused for the same reason.
MAX_HDF5_CHUNK_BYTES = 256 << 20


def _native_float(dtype: np.dtype) -> np.dtype | None:
    """``dtype`` in native byte order if it is float16/32/64 in either byte order, else None."""
    native = np.dtype(dtype).newbyteorder("=")
    return native if native in _NUMPY_FLOATS else None


class NpySource(DenseSource):
    def __init__(self, path: Path) -> None:
        self.name = str(path)
        try:
            self._array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"npy {str(path)!r}: cannot memory-map ({exc})") from None
        self._native = _native_float(self._array.dtype)
        if self._native is None:
            raise InputError(f"npy {str(path)!r}: dtype {self._array.dtype} is not float16, float32 or float64")
        self.shape = tuple(self._array.shape)
        self.dtype = str(self._native)

    @property
    def itemsize(self) -> int:
        return self._array.dtype.itemsize

    def read(self, index):
        import torch

        # a private, writable copy of the mapped rows, in native byte order (torch has no other)
        return torch.from_numpy(np.array(self._array[index], dtype=self._native))


class Hdf5Source(DenseSource):
    def __init__(self, path: Path, key: str | None) -> None:
        require("convert of HDF5 input", "h5py")
        import h5py

        self.name = str(path)
        try:
            self._file = h5py.File(path, "r")
        except FileNotFoundError:
            raise
        except OSError as exc:  # h5py's word for "not an HDF5 file"
            raise InputError(f"hdf5 {str(path)!r}: cannot be opened as HDF5 ({exc})") from None
        try:
            if key is None:
                names: list[str] = []
                self._file.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
                if len(names) != 1:
                    raise InputError(f"hdf5 {str(path)!r} holds datasets {names}; name the one to convert with key")
                key = names[0]
            if key not in self._file or not isinstance(self._file[key], h5py.Dataset):
                raise InputError(f"hdf5 {str(path)!r}: no dataset {key!r}")
            self._dataset = self._file[key]
            self._native = _native_float(self._dataset.dtype)
            if self._native is None:
                raise InputError(f"hdf5 {str(path)!r}, dataset {key!r}: dtype {self._dataset.dtype} is not float16, "
                                 "float32 or float64")
            _check_hdf5_storage(self._file, self._dataset, f"hdf5 {str(path)!r}, dataset {key!r}")
        except BaseException:
            self._file.close()
            raise
        self.key = key
        self.shape = tuple(self._dataset.shape)
        self.dtype = str(self._native)

    @property
    def itemsize(self) -> int:
        return self._dataset.dtype.itemsize

    def read(self, index):
        import torch

        return torch.from_numpy(np.ascontiguousarray(self._dataset[index], dtype=self._native))

    def close(self) -> None:
        self._file.close()


def _check_hdf5_storage(file, dataset, where: str) -> None:
    """Refuse a dataset whose data lies outside the given file (external storage, a virtual dataset, a link to
    another file: convert must read only the file it was given) or whose chunks decompress to more than
    MAX_HDF5_CHUNK_BYTES."""
    if dataset.file.id != file.id:
        raise InputError(f"{where}: the dataset lives in another file ({dataset.file.filename!r}, through an "
                         "external link); convert that file itself")
    if dataset.is_virtual:
        raise InputError(f"{where}: a virtual dataset maps data from other files; convert the source files")
    if dataset.external:
        files = sorted({str(name) for name, *_ in dataset.external})
        raise InputError(f"{where}: its data is stored in external files {files}; convert reads only the HDF5 "
                         "file given")
    if dataset.chunks is not None:
        chunk_bytes = int(np.prod(dataset.chunks, dtype=np.int64)) * dataset.dtype.itemsize
        if chunk_bytes > MAX_HDF5_CHUNK_BYTES:
            raise InputError(f"{where}: chunks of {dataset.chunks} ({chunk_bytes} bytes) are more than the "
                             f"{MAX_HDF5_CHUNK_BYTES} bytes convert decompresses at a time")

    def describe(self) -> dict:
        return {**super().describe(), "key": self.key}


_SAFETENSORS_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


class SafetensorsSource(DenseSource):

    def __init__(self, path: Path, key: str | None) -> None:
        require("convert of safetensors input", "safetensors")
        from safetensors import SafetensorError, safe_open

        self.name = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {str(path)!r}")
        try:
            self._file = safe_open(str(path), framework="pt")
        except SafetensorError as exc:
            raise InputError(f"safetensors {str(path)!r}: cannot be opened as safetensors ({exc})") from None
        keys = list(self._file.keys())
        if key is None:
            if len(keys) != 1:
                raise InputError(f"safetensors {str(path)!r} holds tensors {keys}; name the one to convert with key")
            key = keys[0]
        if key not in keys:
            raise InputError(f"safetensors {str(path)!r}: no tensor {key!r} (tensors: {keys})")
        self._slice = self._file.get_slice(key)
        self.dtype = self._slice.get_dtype()
        if self.dtype not in _SAFETENSORS_ITEMSIZE:
            raise InputError(f"safetensors {str(path)!r}, tensor {key!r}: dtype {self.dtype} is not F16, BF16, F32 "
                             "or F64")
        self.key = key
        self.shape = tuple(self._slice.get_shape())

    @property
    def itemsize(self) -> int:
        return _SAFETENSORS_ITEMSIZE[self.dtype]

    def read(self, index):
        return self._slice[index]

    def describe(self) -> dict:
        return {**super().describe(), "key": self.key}


def open_dense(path: str | os.PathLike, *, key: str | None = None) -> DenseSource:
    """Open a dense teacher-output file by its suffix: ``.npy``, ``.h5``/``.hdf5``, ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input {str(path)!r} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if key is not None:
            raise InputError("key names a dataset or tensor; a .npy file holds a single array")
        source: DenseSource = NpySource(path)
    elif suffix in (".h5", ".hdf5"):
        source = Hdf5Source(path, key)
    elif suffix == ".safetensors":
        source = SafetensorsSource(path, key)
    else:
        raise InputError(f"input {str(path)!r}: unknown format (expected .npy, .h5/.hdf5 or .safetensors)")
    if len(source.shape) not in (2, 3) or source.width < 1:
        source.close()
        raise InputError(f"input {str(path)!r}: expected a [R, V] or [N, T, V] array, got shape {source.shape}")
    if source.width * max(source.itemsize, 4) > MAX_ROW_BYTES:  # rows are sampled as float32 at least
        source.close()
        raise InputError(f"input {str(path)!r}: rows of {source.width} values are more than the "
                         f"{MAX_ROW_BYTES >> 20} MiB per row convert holds at a time (a vocabulary of at most "
                         f"{MAX_ROW_BYTES // 4} entries)")
    return source


# -- rows → sequences ---------------------------------------------------------------------------------------
class Layout:
    """Where sequence ``i`` lives: ``lengths[i]`` positions, rows ``(i, 0..)`` of a 3-D input or the rows after
    those of the sequences before it in a 2-D input."""

    def __init__(self, lengths: np.ndarray, three_d: bool) -> None:
        self.lengths = lengths  # int64 [S]
        self.three_d = three_d
        self.offsets = np.zeros(len(lengths) + 1, dtype=np.int64)  # global position of each sequence's first row
        np.cumsum(lengths, out=self.offsets[1:])

    def rows(self, seq: int, t0: int, t1: int) -> tuple[slice, ...]:
        """The index of positions ``t0..t1-1`` of sequence ``seq`` in the source array."""
        if self.three_d:
            return (slice(seq, seq + 1), slice(t0, t1))
        start = int(self.offsets[seq])
        return (slice(start + t0, start + t1),)


def make_layout(shape: tuple[int, ...], *, seq_len: int | None, lengths) -> Layout:
    """Delimit sequences (see the module docstring); every mismatch is an error, nothing is dropped."""
    if seq_len is not None and lengths is not None:
        raise InputError("give seq_len or lengths, not both")
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or (lengths.size and lengths.dtype.kind not in "iu"):
            raise InputError(f"lengths must be a 1-D integer array, got {lengths.dtype} {lengths.shape}")
        lengths = lengths.astype(np.int64)
        if lengths.size and lengths.min() < 0:
            raise InputError(f"lengths: sequence {int(np.argmin(lengths))} has a negative length")
    if len(shape) == 3:
        n, t = int(shape[0]), int(shape[1])
        if seq_len is not None:
            raise InputError("seq_len applies to 2-D [R, V] inputs; a 3-D input has one sequence per first-axis entry")
        if lengths is None:
            return Layout(np.full(n, t, dtype=np.int64), True)
        if lengths.size != n:
            raise InputError(f"lengths has {lengths.size} entries but the input holds {n} sequences")
        if lengths.size and lengths.max() > t:
            raise InputError(f"lengths: sequence {int(np.argmax(lengths))} has {int(lengths.max())} positions, "
                             f"more than the input's {t}")
        return Layout(lengths, True)
    rows = int(shape[0])
    if seq_len is not None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise InputError(f"seq_len must be a positive integer, got {seq_len!r}")
        if rows % seq_len:
            raise InputError(f"the input's {rows} rows are not a multiple of seq_len {seq_len}; pass lengths instead")
        return Layout(np.full(rows // seq_len, seq_len, dtype=np.int64), False)
    if lengths is None:
        return Layout(np.array([rows], dtype=np.int64), False)
    if int(lengths.sum()) != rows:
        raise InputError(f"lengths sum to {int(lengths.sum())} but the input has {rows} rows")
    return Layout(lengths, False)


@dataclass(frozen=True)
class Piece:
    """Positions ``t0..t1-1`` of sequence ``seq``: a contiguous run of rows."""

    seq: int
    t0: int
    t1: int


def plan_chunks(lengths: np.ndarray, chunk_rows: int) -> Iterator[list[Piece]]:
    """Group consecutive positions into chunks of at most ``chunk_rows`` rows (sequences may span chunks)."""
    chunk: list[Piece] = []
    room = chunk_rows
    for seq, n in enumerate(lengths.tolist()):
        t = 0
        while t < n:
            take = min(room, n - t)
            chunk.append(Piece(seq, t, t + take))
            t += take
            room -= take
            if room == 0:
                yield chunk
                chunk, room = [], chunk_rows
        if n == 0:
            chunk.append(Piece(seq, 0, 0))
    if chunk:
        yield chunk


# -- the conversion -----------------------------------------------------------------------------------------
def check_logprobs(rows, tolerance: float, describe: Callable[[int], str]) -> None:
    """Rows of log-probabilities must log-sum-exp to 0; say which row does not (catches logits given as logprobs).
    ``describe(r)`` names row ``r`` of ``rows`` for the message."""
    import torch

    lse = torch.logsumexp(rows.to(torch.float32 if rows.dtype != torch.float64 else torch.float64), dim=-1)
    bad = torch.nonzero(~(lse.abs() <= tolerance))
    if bad.numel():
        r = int(bad[0, 0])
        raise InputError(f"{describe(r)}: log-probabilities sum to exp({float(lse[r]):.4g}) instead of 1 "
                         f"(tolerance {tolerance}); if the input holds logits, use kind='logits'")


def _label_chunk(rows, row_ids, *, topk: int | None, rounds: int, temperature: float, vocab_size: int,
                 seed: int) -> CsrLabels:
    if topk is not None:
        from sparselabels.sampling import topk_labels

        return topk_labels(rows, topk, temperature=temperature, vocab_size=vocab_size).numpy()
    from sparselabels.sampling import sample_counts

    return sample_counts(rows, rounds, temperature=temperature, vocab_size=vocab_size, seed=seed,
                         row_ids=row_ids).numpy()


def convert(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    kind: str = "logits",
    key: str | None = None,
    seq_len: int | None = None,
    lengths=None,
    rounds: int = 50,
    temperature: float = 1.0,
    seed: int = 0,
    topk: int | None = None,
    vocab_size: int | None = None,
    codec: str = DEFAULT_CODEC,
    device: str = "cpu",
    chunk_rows: int | None = None,
    tokens=None,
    column: str = "input_ids",
    teacher: str | None = None,
    teacher_fingerprint: str | None = None,
    tokenizer_fingerprint: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool = False,
    metadata: dict | None = None,
) -> Path:
    """Convert the dense teacher outputs in ``source`` into the label file ``out``; return ``out``.

    ``key``: the HDF5 dataset or safetensors tensor (default: the only one). ``seq_len``/``lengths``: how rows
    form sequences (module docstring). ``vocab_size``: ignore padded columns at or beyond it. ``tokens``: the
    input token sequences (anything ``open_tokens`` reads); their lengths must match and their fingerprints are
    stored. ``teacher``/``teacher_fingerprint``/``tokenizer_fingerprint`` are recorded as given.
    ``chunk_rows`` bounds the rows in memory (default: about 256 MiB of float32). ``resume=True`` continues after
    a crash or kill: the sequences in the verified chunks of ``out``'s partial file are kept and the rest are
    labeled again; sampling depends only on the seed and each row's global index, so the file is byte for byte
    the one an uninterrupted run writes; the kept sequences' input rows are read and checked to be the rows they
    were labeled from (CompatibilityError otherwise). An ``out`` already finished is checked against these
    arguments and kept. ``chunk_bytes``: input bytes per chunk of the label file (LabelWriter).
    """
    require("convert", "torch", extras="hf")
    import torch

    if kind not in KINDS:
        raise InputError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 1):
        raise InputError(f"topk must be a positive integer, got {topk!r}")
    from sparselabels.sampling.rng import check_seed

    seed = check_seed(check_int("seed", seed, 0))  # the sampler's rule, before anything is written
    if resume and overwrite:
        raise InputError("resume and overwrite exclude each other")
    if Path(out).resolve() == Path(source).resolve():
        raise InputError(f"the output {os.fspath(out)!r} is the input file; choose another path")
    src = open_dense(source, key=key)
    try:
        layout = make_layout(src.shape, seq_len=seq_len, lengths=lengths)
        width = src.width
        vocab = width if vocab_size is None else vocab_size
        if isinstance(vocab, bool) or not isinstance(vocab, int) or not 1 <= vocab <= width:
            raise InputError(f"vocab_size must be an integer in 1..{width} (the input's last dimension), "
                             f"got {vocab_size!r}")
        if topk is not None and topk > vocab:
            raise InputError(f"topk {topk} is more than the vocabulary ({vocab} tokens)")
        if chunk_rows is None:
            chunk_rows = max(1, DEFAULT_ROW_BYTES // (4 * width))
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise InputError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        fingerprints = _token_fingerprints(tokens, column, layout.lengths)
        # the layout is part of what a resumed run must agree on: other lengths would split rows differently
        lengths_digest = hashlib.sha256(layout.lengths.astype("<i8").tobytes()).hexdigest()
        meta: dict[str, Any] = {"temperature": float(temperature),
                                "converted_from": {**src.describe(), "kind": kind, "dtype": src.dtype,
                                                   "sequences": len(layout.lengths),
                                                   "lengths_sha256": lengths_digest}}
        if topk is None:
            meta["seed"] = seed
        else:
            meta["topk"] = topk
        for name, value in (("teacher", teacher), ("teacher_fingerprint", teacher_fingerprint),
                            ("tokenizer_fingerprint", tokenizer_fingerprint)):
            if value is not None:
                meta[name] = value
        if metadata:
            meta["user"] = metadata
        dev = resolve_device(device)
        tolerance = _LOGPROB_TOLERANCE.get(src.itemsize, 1e-3)
        settings = {"vocab_size": vocab, "rounds": None if topk else rounds,
                    "value_kind": "prob" if topk else "count", "codec": codec}
        num_sequences = len(layout.lengths)
        if resume and Path(out).exists():
            check_finished(Path(out), **settings, metadata=meta, num_sequences=num_sequences,
                           expected_from="the input")
            return Path(out)
        writer = LabelWriter(out, **settings, metadata=meta, overwrite=overwrite, resume=resume,
                             chunk_bytes=chunk_bytes)
        journal = None
        try:
            done = writer.num_sequences  # kept from a partial file when resuming
            if done > num_sequences:
                raise CompatibilityError(f"{writer.partial_path} holds {done} sequences but the input has only "
                                         f"{num_sequences}")
            journal = RowJournal(writer.partial_path, kept=done)
            if done:  # the kept labels must come from these very rows, not from an input since replaced
                _check_kept_rows(src, layout, chunk_rows, done, journal, where=str(writer.partial_path))
            digests: dict[int, Any] = {}
            with Progress(int(layout.offsets[-1]), done=int(layout.offsets[done]), enabled=progress,
                          label="convert") as meter:
                pending: list[CsrLabels] = []
                for planned in plan_chunks(layout.lengths, chunk_rows):
                    chunk = [p for p in planned if p.seq >= done]
                    if not chunk:
                        continue
                    blocks = []
                    for p in chunk:
                        if p.t1 > p.t0:
                            blocks.append(src.read(layout.rows(p.seq, p.t0, p.t1)).reshape(-1, width))
                            digests.setdefault(p.seq, row_digest()).update(_raw_bytes(blocks[-1]))
                    if blocks:
                        rows = torch.cat(blocks).to(dev) if len(blocks) > 1 else blocks[0].to(dev)
                        row_ids = torch.cat([torch.arange(p.t0, p.t1, dtype=torch.int64) + int(layout.offsets[p.seq])
                                             for p in chunk]).to(dev)
                        def describe(r: int, row_ids=row_ids) -> str:
                            position = int(row_ids[r])
                            seq = int(np.searchsorted(layout.offsets, position, side="right")) - 1
                            return (f"input {os.fspath(source)!r}, sequence {seq}, position "
                                    f"{position - int(layout.offsets[seq])} (row {position})")

                        try:
                            if kind == "logprobs":
                                check_logprobs(rows[:, :vocab], tolerance, describe)
                            csr = _label_chunk(rows, row_ids, topk=topk, rounds=rounds, temperature=temperature,
                                               vocab_size=vocab, seed=seed)
                        except InputError:  # a NaN/inf row first, named in the input's terms (only on this path)
                            from sparselabels.sampling.checks import as_rows, check_rows_finite

                            check_rows_finite(as_rows(rows, vocab), describe)
                            raise
                    else:
                        csr = concat_csr([])
                    pieces = [p.t1 - p.t0 for p in chunk]
                    for p, piece in zip(chunk, split_csr(csr, pieces), strict=True):
                        pending.append(piece)
                        if p.t1 == layout.lengths[p.seq]:  # the sequence is complete
                            ids, values, indptr = concat_csr(pending)
                            pending = []
                            journal.append((digests.pop(p.seq, None) or row_digest()).digest())
                            writer.write(ids, values, indptr,
                                         fingerprint=None if fingerprints is None else int(fingerprints[p.seq]))
                    meter.update(sum(pieces))
        except BaseException:
            writer.abort()
            if journal is not None:
                journal.close(remove=False)
            raise
        writer.close()
        journal.close(remove=True)
    finally:
        src.close()
    return Path(out)


def _raw_bytes(block) -> np.ndarray:
    """The bytes of a block of rows as read from the input (any dtype, bfloat16 included)."""
    import torch

    return block.contiguous().view(torch.uint8).numpy()


def _check_kept_rows(src: DenseSource, layout: Layout, chunk_rows: int, kept: int, journal: RowJournal,
                     where: str) -> None:
    """Hash the input rows of the ``kept`` sequences again (``chunk_rows`` at a time) and compare with the journal."""
    digests: dict[int, Any] = {}
    for planned in plan_chunks(layout.lengths[:kept], chunk_rows):
        for p in planned:
            digest = digests.setdefault(p.seq, row_digest())
            if p.t1 > p.t0:
                digest.update(_raw_bytes(src.read(layout.rows(p.seq, p.t0, p.t1))))
            if p.t1 == layout.lengths[p.seq]:
                journal.check(p.seq, digests.pop(p.seq).digest(), where)


def _token_fingerprints(tokens, column: str, lengths: np.ndarray) -> np.ndarray | None:
    """Input fingerprints of the token sequences the outputs came from, after checking they line up."""
    if tokens is None:
        return None
    from sparselabels.data.tokens import open_tokens

    src = open_tokens(tokens, column=column)
    token_lengths = np.asarray(src.lengths(), dtype=np.int64)
    if token_lengths.shape != lengths.shape:
        raise AlignmentError(f"tokens hold {len(token_lengths)} sequences but the input holds {len(lengths)}")
    bad = np.flatnonzero(token_lengths != lengths)
    if bad.size:
        i = int(bad[0])
        raise AlignmentError(f"sequence {i}: {token_lengths[i]} tokens but {lengths[i]} rows of teacher outputs")
    return np.array([input_fingerprint(np.asarray(src[i]), where=f"tokens, sequence {i}") for i in range(len(src))],
                    dtype=np.uint64)

"""Labels → HDF5, for tools that read HDF5 and not this format.

Layout of the HDF5 file (``format`` attribute ``"sparselabels-hdf5"``, ``format_version`` 1):

- ``ids`` uint32 [L]: every label's token id, in file order (ascending within a position);
- ``counts`` uint8 [L] (value kind "count"; weight = count / rounds) or ``probs`` float16 [L] (value kind "prob");
- ``indptr`` int64 [P+1]: position ``p`` owns labels ``indptr[p]:indptr[p+1]`` (positions of all sequences,
  concatenated);
- ``sequence_offsets`` int64 [S+1]: sequence ``i`` owns positions ``sequence_offsets[i]:sequence_offsets[i+1]``;
- ``fingerprints`` uint64 [S]: input fingerprints, when the labels store them;
- attributes: ``format``, ``format_version`` (this layout's), ``rounds`` (0 for probability labels),
  ``metadata_json`` (the whole metadata as JSON, bytes values written as hex strings), and every other scalar
  metadata key (``vocab_size``, ``value_kind``, ...); a metadata key named like one of the first four (the label
  file's own ``format_version``, say) is only in ``metadata_json``.

Datasets are chunked (optionally gzip/lzf-compressed) and written in slices as sequences are read, so memory
stays bounded; the file is written as ``OUT.partial`` and renamed when complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from sparselabels._extras import require
from sparselabels.errors import InputError, OutputExistsError, SparseLabelsError
from sparselabels.io.open import open_labels
from sparselabels.io.remote import is_url

EXPORT_FORMAT = "sparselabels-hdf5"
EXPORT_VERSION = 1
DEFAULT_CHUNK = 1 << 18  # elements per HDF5 chunk, and per written slice (at least)
COMPRESSIONS = (None, "gzip", "lzf")


def _json_default(value):
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dataset(h5, name: str, size: int, dtype, chunk: int, compression: str | None, level: int):
    options = {}
    if size > 0:
        options["chunks"] = (min(chunk, size),)
        if compression is not None:
            options["compression"] = compression
            if compression == "gzip":
                options["compression_opts"] = level
    return h5.create_dataset(name, shape=(size,), dtype=dtype, **options)


class _Appender:
    """Buffers 1-D pieces and writes them to an HDF5 dataset in slices of at least ``chunk`` elements."""

    def __init__(self, dataset, chunk: int) -> None:
        self._dataset = dataset
        self._chunk = chunk
        self._parts: list[np.ndarray] = []
        self._buffered = 0
        self.written = 0

    def add(self, values: np.ndarray) -> None:
        if values.size:
            self._parts.append(values)
            self._buffered += values.size
            if self._buffered >= self._chunk:
                self.flush()

    def flush(self) -> None:
        if self._buffered:
            block = np.concatenate(self._parts)
            self._dataset[self.written : self.written + block.size] = block
            self.written += block.size
            self._parts, self._buffered = [], 0


def export_hdf5(labels: str | os.PathLike, out: str | os.PathLike, *, compression: str | None = None,
                compression_level: int = 4, chunk: int = DEFAULT_CHUNK, overwrite: bool = False) -> Path:
    """Write the labels at ``labels`` (file, manifest or shard directory) to the HDF5 file ``out``."""
    require("export_hdf5", "h5py")
    import h5py

    if compression not in COMPRESSIONS:
        raise InputError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}")
    if not 0 <= compression_level <= 9:
        raise InputError(f"compression_level must be in 0..9, got {compression_level}")
    if is_url(out):
        raise InputError(f"{out!r} is a URL: export writes a local HDF5 file; write it locally, then upload it")
    out = Path(out)
    if out.resolve() == Path(labels).resolve():
        raise InputError(f"the output {str(out)!r} is the input; choose another path")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass overwrite=True to replace it")
    partial = out.with_name(out.name + ".partial")
    with open_labels(labels) as src:
        meta = src.metadata
        num_seq, num_pos, num_lab = len(src), src.num_positions, src.num_labels
        values_name, values_dtype = ("counts", np.uint8) if src.value_kind == "count" else ("probs", np.float16)
        fingerprints = src.fingerprints
        try:
            with h5py.File(partial, "w") as h5:
                reserved = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
                            "metadata_json": json.dumps(meta, default=_json_default, sort_keys=True),
                            "rounds": int(meta.get("rounds") or 0)}
                for key, value in meta.items():
                    if key not in reserved and _attribute_name(key) and _attribute_value(value):
                        h5.attrs[key] = value
                for key, value in reserved.items():
                    h5.attrs[key] = value
                ids = _Appender(_dataset(h5, "ids", num_lab, np.uint32, chunk, compression, compression_level), chunk)
                vals = _Appender(_dataset(h5, values_name, num_lab, values_dtype, chunk, compression,
                                          compression_level), chunk)
                indptr = _Appender(_dataset(h5, "indptr", num_pos + 1, np.int64, chunk, compression,
                                            compression_level), chunk)
                lengths = np.asarray(src.sequence_lengths, dtype=np.int64)
                offsets = np.zeros(num_seq + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                _dataset(h5, "sequence_offsets", num_seq + 1, np.int64, chunk, compression,
                         compression_level)[:] = offsets
                if fingerprints is not None:
                    _dataset(h5, "fingerprints", num_seq, np.uint64, chunk, compression,
                             compression_level)[:] = np.asarray(fingerprints, dtype=np.uint64)
                indptr.add(np.zeros(1, dtype=np.int64))
                base = 0
                for i in range(num_seq):
                    s = src[i]
                    # copies: a buffered view would keep an evicted shard's map (and descriptor) alive
                    ids.add(np.array(s.ids, dtype=np.uint32))
                    vals.add(np.array(s.counts, dtype=values_dtype))
                    indptr.add(np.asarray(s.indptr[1:], dtype=np.int64) + base)
                    base += s.num_labels
                for appender in (ids, vals, indptr):
                    appender.flush()
                if ids.written != num_lab or indptr.written != num_pos + 1:  # the source disagrees with itself
                    raise SparseLabelsError(f"{labels}: read {ids.written} labels and {indptr.written - 1} positions, "
                                            f"but its index says {num_lab} and {num_pos}")
            os.replace(partial, out)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return out


def _attribute_name(key: str) -> bool:
    """Names HDF5 takes for attributes (not empty, no NUL, short: an attribute lives in a 64 KiB object
    header); other keys stay in metadata_json only."""
    return 0 < len(key.encode("utf-8", "surrogatepass")) <= 1024 and "\x00" not in key


def _attribute_value(value) -> bool:
    """Scalars HDF5 stores as attributes (a string with a NUL byte is not one; it stays in metadata_json)."""
    if isinstance(value, str):
        return "\x00" not in value
    return isinstance(value, int | float | bool) and not (isinstance(value, int) and not -(1 << 63) <= value < 1 << 64)


def read_hdf5(path: str | os.PathLike, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequence ``index`` of an exported file as (ids, values, indptr): the obvious reader, for checks."""
    import h5py

    with h5py.File(path, "r") as h5:
        offsets = h5["sequence_offsets"]
        p0, p1 = int(offsets[index]), int(offsets[index + 1])
        indptr = h5["indptr"][p0 : p1 + 1]
        values = h5["counts"] if "counts" in h5 else h5["probs"]
        lo, hi = int(indptr[0]), int(indptr[-1])
        return h5["ids"][lo:hi], values[lo:hi], indptr - lo

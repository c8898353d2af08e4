"""The ``raw`` codec: each record is the sequence's arrays laid out as they are, so reads are zero-copy views.

Record layout (spec/FORMAT.md, "Codec raw"): labels-per-position (uint8 for counts, uint16 for
probabilities), zero padding to a multiple of 4, ids as uint32, values (uint8 counts or float16
probabilities), zero padding to a multiple of 8. Everything little-endian.
"""

from __future__ import annotations

import numba
import numpy as np

from sparselabels.codecs.base import VALUE_DTYPES, ChunkInput, Codec, EncodedChunk
from sparselabels.errors import FormatError

_LPP_DTYPES = {"count": np.dtype("<u1"), "prob": np.dtype("<u2")}


def record_layout(num_positions, num_labels, value_kind: str):
    """Byte offsets of (ids, values) and the padded record size; works on ints and on int64 arrays."""
    lpp_width = _LPP_DTYPES[value_kind].itemsize
    value_width = VALUE_DTYPES[value_kind].itemsize
    ids_at = (num_positions * lpp_width + 3) // 4 * 4
    values_at = ids_at + 4 * num_labels
    size = (values_at + value_width * num_labels + 7) // 8 * 8
    return ids_at, values_at, size


@numba.njit(cache=True, nogil=True)
def _fill_records(out, rec_offsets, lpp_bytes, ids_bytes, val_bytes, seq_positions, seq_labels, lw, vw):
    """Copy each sequence's three arrays into its record; padding stays as allocated (zero)."""
    pos_at = 0
    lab_at = 0
    for s in range(seq_positions.shape[0]):
        t = seq_positions[s]
        m = seq_labels[s]
        base = rec_offsets[s]
        n = t * lw
        out[base : base + n] = lpp_bytes[pos_at * lw : pos_at * lw + n]
        ids_at = base + (n + 3) // 4 * 4
        out[ids_at : ids_at + 4 * m] = ids_bytes[lab_at * 4 : lab_at * 4 + 4 * m]
        val_at = ids_at + 4 * m
        out[val_at : val_at + vw * m] = val_bytes[lab_at * vw : lab_at * vw + vw * m]
        pos_at += t
        lab_at += m


@numba.njit(cache=True, nogil=True)
def _indptr(lpp, padding_a, padding_b):
    """(indptr of ``lpp``, whether both padding ranges are all zero), in one call: a read's fixed costs are
    mostly per-call overhead."""
    clean = True
    for k in range(padding_a.shape[0]):
        clean &= padding_a[k] == 0
    for k in range(padding_b.shape[0]):
        clean &= padding_b[k] == 0
    indptr = np.empty(lpp.shape[0] + 1, dtype=np.int64)
    total = np.int64(0)
    indptr[0] = 0
    for p in range(lpp.shape[0]):
        total += np.int64(lpp[p])
        indptr[p + 1] = total
    return indptr, clean


class RawCodec(Codec):
    """Arrays as they are: the largest files, the fastest reads (no decoding at all)."""

    name = "raw"
    uses_tables = False  # spec/FORMAT.md section 9: table_size is 0
    max_positions_per_byte = 1
    max_labels_per_byte = 1

    def encode_chunk(self, chunk: ChunkInput) -> EncodedChunk:
        kind = chunk.value_kind
        seq_positions = np.asarray(chunk.seq_positions, dtype=np.int64)
        seq_labels = np.asarray(chunk.seq_labels, dtype=np.int64)
        _, _, sizes = record_layout(seq_positions, seq_labels, kind)
        offsets = np.zeros(len(sizes), dtype=np.int64)
        np.cumsum(sizes[:-1], out=offsets[1:])
        out = np.zeros(int(sizes.sum()), dtype=np.uint8)
        lpp = np.ascontiguousarray(chunk.labels_per_position, dtype=_LPP_DTYPES[kind])
        ids = np.ascontiguousarray(chunk.ids, dtype="<u4")
        values = np.ascontiguousarray(chunk.values, dtype=VALUE_DTYPES[kind])
        _fill_records(
            out,
            offsets,
            lpp.view(np.uint8),
            ids.view(np.uint8),
            values.view(np.uint8),
            seq_positions,
            seq_labels,
            lpp.itemsize,
            values.itemsize,
        )
        return EncodedChunk(table=np.zeros(0, dtype=np.uint8), records=out, record_sizes=sizes)

    def decode(self, record, table, num_positions, num_labels, value_kind):
        ids_at, values_at, size = record_layout(num_positions, num_labels, value_kind)
        if record.shape[0] != size:
            raise FormatError(
                f"raw record is {record.shape[0]} bytes; {num_positions} positions and {num_labels} labels "
                f"need exactly {size}"
            )
        lpp_dtype = _LPP_DTYPES[value_kind]
        value_dtype = VALUE_DTYPES[value_kind]
        lpp_end = num_positions * lpp_dtype.itemsize
        values_end = values_at + num_labels * value_dtype.itemsize
        indptr, clean = _indptr(record[:lpp_end].view(lpp_dtype), record[lpp_end:ids_at], record[values_end:])
        if not clean:
            raise FormatError("raw record: padding bytes are not zero")
        ids = record[ids_at:values_at].view("<u4")
        values = record[values_at:values_end].view(value_dtype)
        if indptr[-1] != num_labels:
            raise FormatError(
                f"raw record: labels per position sum to {int(indptr[-1])}, the index says {num_labels} labels"
            )
        return ids, values, indptr

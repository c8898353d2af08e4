"""The ``rans`` codec: gap buckets, counts and labels-per-position under per-chunk static rANS models.

Why this design (measured on the synthetic N=50 workload; see tools/explore_compact.py and the README):
sorted ids make gaps, and a gap's magnitude depends mostly on where the previous id lies (BPE vocabularies
put frequent tokens at low ids, loosely) and on how many labels the position has; counts are mostly 1 and
depend on the number of labels. Coding the *bit length* of each gap with an entropy coder conditioned on
those two things, and the remaining mantissa bits raw, costs ~11.5 bits per id; Elias-gamma costs ~17.8,
Rice with a per-position parameter ~14.2. rANS (rather than Huffman) keeps the skewed count and
labels-per-position symbols near their entropy (a count of 1 carries ~0.5 bit, Huffman would spend 1).
Models are per chunk (a few hundred bytes), chosen per chunk from a few context granularities by their
exact total size, so small chunks fall back to coarser contexts. Records are independent (random access
reads one record plus its chunk's table); parsed tables are cached by content.

The normative byte layout is spec/codecs/rans.md; the kernels are in ``_compact_kernels``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from sparselabels.codecs import _compact_kernels as K
from sparselabels.codecs.base import VALUE_DTYPES, ChunkInput, Codec, EncodedChunk
from sparselabels.errors import FormatError

_ERRORS = {
    K.ERR_RECORD_SIZE: "record size does not match its raw-bit and rANS word counts",
    K.ERR_RAW_OVERRUN: "raw bit stream is shorter than its symbols need",
    K.ERR_RANS_OVERRUN: "rANS stream is shorter than its symbols need",
    K.ERR_RANS_STATE: "an initial rANS state is outside [2^15, 2^31)",
    K.ERR_LABELS_OVERRUN: "positions hold more labels than the index says",
    K.ERR_NO_MODEL: "a symbol's context has no model in the chunk table",
    K.ERR_ID_RANGE: "an id exceeds 2^32 - 1",
    K.ERR_COUNT_RANGE: "an implied last count is outside 1..255",
    K.ERR_L_ESCAPE: "an escaped labels-per-position value is below 255 (non-canonical)",
    K.ERR_LABELS_SHORT: "positions hold fewer labels than the index says",
    K.ERR_RANS_END: "rANS stream does not end in the final state with every word used",
    K.ERR_RAW_END: "raw bit stream has unused words or non-zero unused bits",
    K.ERR_PADDING: "padding bytes are not zero",
    K.ERR_VALUE_KIND: "the chunk table implies counts, but the value kind is 'prob'",
}
_TABLE_ERRORS = {
    1: "truncated",
    2: "unknown version or probability precision",
    3: "bad flags or count sum",
    4: "bad dimensions or L model index",
    5: "a context map names a model that does not exist",
    6: "a model's symbol range is empty or exceeds 255",
    7: "a frequency is not a canonical 1- or 2-byte LEB128",
    8: "a model's frequencies do not sum to 2^prob_bits",
    9: "the table is not padded with fewer than 8 zero bytes to a multiple of 8",
    10: "a model emits symbols outside its context's alphabet",
    11: f"a frequency exceeds the maximum of {K.MAX_FREQ}",
}


class CompactCodec(Codec):
    """Context-modelled rANS over id gaps and counts: ~21 bytes per position at N=50, lossless."""

    name = "rans"
    # see MAX_FREQ in _compact_kernels: every valid record of B bytes holds <= 21.65 B positions and labels
    max_positions_per_byte = 22
    max_labels_per_byte = 22

    def __init__(self, cache_size: int = 64) -> None:
        self._cache: OrderedDict[bytes, tuple] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def __reduce__(self):  # picklable (the cache and its lock are rebuilt, not copied)
        return (type(self), (self._cache_size,))

    def encode_chunk(self, chunk: ChunkInput) -> EncodedChunk:
        is_count = chunk.value_kind == "count"
        ids = np.ascontiguousarray(chunk.ids, dtype=np.uint32)
        lpp = np.ascontiguousarray(chunk.labels_per_position, dtype=np.int64)
        seq_positions = np.ascontiguousarray(chunk.seq_positions, dtype=np.int64)
        seq_labels = np.ascontiguousarray(chunk.seq_labels, dtype=np.int64)
        if is_count:
            values = np.ascontiguousarray(chunk.values, dtype=np.uint8)
        else:
            values = np.ascontiguousarray(chunk.values, dtype=VALUE_DTYPES["prob"]).view(np.uint16)
        gap_hist, count_hist, last_hist, l_hist, raw, raw_start, count_sum = K.analyse_chunk(
            ids, values, lpp, seq_positions, is_count
        )
        # the last count of a position is implied when every non-empty position's counts share one sum
        implied = 0 < count_sum <= 0xFFFF
        flags = K.FLAG_IMPLIED_LAST if implied else 0
        if not implied:
            count_hist = count_hist + last_hist
        table, gap_model, count_model, freq = K.build_table(
            gap_hist, count_hist, l_hist, flags, count_sum if implied else 0
        )
        out = np.empty(int(K.record_bound(seq_positions, seq_labels, is_count).sum()), dtype=np.uint8)
        sizes = np.zeros(seq_positions.shape[0], dtype=np.int64)
        used = K.encode_records(
            ids, values, lpp, seq_positions, seq_labels, is_count, implied, gap_model.reshape(-1), count_model,
            K.encoder_symbols(freq), raw, raw_start, out, sizes,
        )
        return EncodedChunk(table=table, records=out[:used], record_sizes=sizes)

    def _parsed(self, table: np.ndarray) -> tuple:
        """The expanded decoding tables of a chunk table, cached by content (a chunk serves many reads)."""
        key = table.tobytes()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        err, flags, count_sum, gap_model, count_model, l_model, slots = K.parse_table(
            np.ascontiguousarray(table, dtype=np.uint8)
        )
        if err:
            raise FormatError(f"rans chunk table: {_TABLE_ERRORS.get(err - K.ERR_TABLE, 'invalid')}")
        parsed = (flags, count_sum, gap_model, count_model, l_model, slots)
        with self._lock:
            self._cache[key] = parsed
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return parsed

    def decode(self, record, table, num_positions, num_labels, value_kind):
        if value_kind not in VALUE_DTYPES:
            raise FormatError(f"unknown value kind {value_kind!r}")
        flags, count_sum, gap_model, count_model, l_model, slots = self._parsed(table)
        is_count = value_kind == "count"
        ids = np.empty(num_labels, dtype=np.uint32)
        counts = np.empty(num_labels if is_count else 0, dtype=np.uint8)
        indptr = np.empty(num_positions + 1, dtype=np.int64)
        err, values_at = K.decode_record(
            record, num_positions, num_labels, is_count, flags, count_sum, gap_model, count_model, l_model,
            slots, ids, counts, indptr,
        )
        if err:
            raise FormatError(f"rans record: {_ERRORS.get(err, 'invalid')}")
        if is_count:
            return ids, counts, indptr
        return ids, record[values_at : values_at + 2 * num_labels].view(VALUE_DTYPES["prob"]), indptr

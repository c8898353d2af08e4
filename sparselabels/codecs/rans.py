"""The ``rans`` codec: gap buckets, counts and labels-per-position under per-chunk static rANS models.

Why this design (measured on the synthetic N=50 workload; see tools/explore_rans.py and docs/codecs.md):
sorted ids make gaps, and a gap's magnitude depends mostly on where the previous id lies (BPE vocabularies
put frequent tokens at low ids, loosely) and on how many labels the position has; counts are mostly 1 and
depend on the number of labels. Coding the *bit length* of each gap with an entropy coder conditioned on
those two things, and the remaining mantissa bits raw, costs ~11.5 bits per id; Elias-gamma costs ~17.8,
Rice with a per-position parameter ~14.2. rANS (rather than Huffman) keeps the skewed count and
labels-per-position symbols near their entropy (a count of 1 carries ~0.5 bit, Huffman would spend 1).
Models are per chunk, chosen per chunk from a few context granularities by their
exact total size, so small chunks fall back to coarser contexts. Records are independent (random access
reads one record plus its chunk's table); parsed tables are compact (~0.35 KiB per model) and cached by
content. Reads check the label rules while decoding (``checks_label_rules``) instead of in a second pass.

The normative byte layout is spec/codecs/rans.md; the kernels are in ``_rans_kernels``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from sparselabels._forksafe import ForkSafeLock
from sparselabels.codecs import _rans_kernels as K
from sparselabels.codecs.base import VALUE_DTYPES, ChunkInput, Codec, EncodedChunk, LabelRuleError
from sparselabels.errors import FormatError, InputError
from sparselabels.format.checks import LabelProblem, check_labels

_ID_LIMIT = 1 << 32  # ids are u32: the format's own range, checked whether or not label rules are
_UNENCODABLE = 100  # LabelProblem code of a valid label this codec cannot store

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
    K.ERR_RESERVED: "the record header's reserved field is not zero",
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


class RansCodec(Codec):
    """Context-modelled rANS over id gaps and counts: ~21 bytes per position at N=50, lossless."""

    name = "rans"
    # see MAX_FREQ in _rans_kernels: every valid record of B bytes holds <= 19.9 B positions and labels
    max_positions_per_byte = 20
    max_labels_per_byte = 20
    checks_label_rules = True

    def __init__(self, cache_size: int = 64) -> None:
        self._cache: OrderedDict[bytes, tuple] = OrderedDict()
        self._cache_size = cache_size
        self._lock = ForkSafeLock()

    @classmethod
    def over_capacity(cls, positions, labels, record_sizes):
        """Stream 0 holds one symbol per position and one per label, <= 19.9 per byte of the record
        (spec/codecs/rans.md section 5): positions and labels together are bounded, not only each alone."""
        cap = np.asarray(record_sizes, dtype=np.int64) * cls.max_positions_per_byte
        positions, labels = np.asarray(positions, dtype=np.int64), np.asarray(labels, dtype=np.int64)
        # each alone first, then the sum as cap - labels: claims near 2**63 must not wrap past the check
        return (positions > cap) | (labels > cap) | (positions > cap - labels)

    def unencodable(self, ids, indptr):
        """A position whose first id is 2**32 - 1 (hence its only label): the gap from -1 is 2**32, one bit more
        than the largest gap bucket (31) holds (spec/codecs/rans.md section 4)."""
        if not ids.size or int(ids.max()) < _ID_LIMIT - 1:
            return None
        starts = np.asarray(indptr[:-1], dtype=np.int64)
        nonempty = np.flatnonzero(indptr[1:] > starts)
        bad = nonempty[np.asarray(ids)[starts[nonempty]] == _ID_LIMIT - 1]
        if not bad.size:
            return None
        return LabelProblem(_UNENCODABLE, int(bad[0]), 0, "ids",
                            f"id {_ID_LIMIT - 1} as a position's first id is beyond codec 'rans' (its gap from -1, "
                            "2**32, needs a 33-bit bucket); write this vocabulary with codec 'raw'")

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
        err, flags, count_sum, gap_ctx, count_ctx, l_ctx, dec = K.parse_table(
            np.ascontiguousarray(table, dtype=np.uint8)
        )
        if err:
            raise FormatError(f"rans chunk table: {_TABLE_ERRORS.get(err - K.ERR_TABLE, 'invalid')}")
        parsed = (flags, count_sum, gap_ctx, count_ctx, l_ctx, dec, dec.view("<u4"))
        with self._lock:
            self._cache[key] = parsed
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return parsed

    def decode(self, record, table, num_positions, num_labels, value_kind, *, vocab_size=None, rounds=None):
        """See Codec.decode. With ``vocab_size`` (and ``rounds`` for counts) the label rules are checked inline
        (ids below the vocabulary, each position's counts summing to ``rounds``; ascending ids and counts >= 1
        hold by construction, spec/codecs/rans.md section 4), without a second pass over the labels."""
        if value_kind not in VALUE_DTYPES:
            raise FormatError(f"unknown value kind {value_kind!r}")
        check = vocab_size is not None
        is_count = value_kind == "count"
        if check and is_count and rounds is None:
            raise InputError("rounds is required to check the label rules of counts")
        ids, values, indptr, err = self._decode(record, table, num_positions, num_labels, is_count,
                                                vocab_size if check else None, rounds if check and is_count else None)
        if err == K.ERR_LABEL_RULES:
            # the slow path, only for a bad record: decode without the inline checks and let the generic
            # check name the first problem, exactly as a codec without the capability would have it named
            ids, values, indptr, err = self._decode(record, table, num_positions, num_labels, is_count, None, None)
            problem = None if err else check_labels(ids, values, indptr, vocab_size=vocab_size,
                                                    value_kind=value_kind, rounds=rounds)
            if problem is not None:
                raise LabelRuleError(problem)
            if not err:  # the inline checks and check_labels disagree: a bug, but never read back such labels
                raise FormatError("rans record: labels break the label rules")
        if err:
            raise FormatError(f"rans record: {_ERRORS.get(err, 'invalid')}")
        if check and not is_count:  # probabilities are stored verbatim: the generic pass judges them
            problem = check_labels(ids, values, indptr, vocab_size=vocab_size, value_kind=value_kind, rounds=rounds)
            if problem is not None:
                raise LabelRuleError(problem)
        return ids, values, indptr

    def _decode(self, record, table, num_positions, num_labels, is_count, vocab_size, rounds):
        """(ids, values, indptr, kernel error code); ``vocab_size``/``rounds`` None: that check is off."""
        flags, count_sum, gap_ctx, count_ctx, l_ctx, dec, info = self._parsed(table)
        ids = np.empty(num_labels, dtype=np.uint32)
        counts = np.empty(num_labels if is_count else 0, dtype=np.uint8)
        indptr = np.empty(num_positions + 1, dtype=np.int64)
        record = np.ascontiguousarray(record, dtype=np.uint8)
        if record.shape[0] % 8:
            return ids, counts, indptr, K.ERR_RECORD_SIZE
        words64 = record.view("<u8")  # the kernel reads raw bits and stream words through these views
        id_limit = _ID_LIMIT if vocab_size is None else min(int(vocab_size), _ID_LIMIT)
        err, values_at = K.decode_record(
            record, words64.view("<u2"), words64, num_positions, num_labels, is_count, flags, count_sum, gap_ctx,
            count_ctx, l_ctx, dec, info, id_limit, -1 if rounds is None else int(rounds), ids, counts, indptr,
        )
        if is_count or err:
            return ids, counts, indptr, err
        return ids, record[values_at : values_at + 2 * num_labels].view(VALUE_DTYPES["prob"]), indptr, err

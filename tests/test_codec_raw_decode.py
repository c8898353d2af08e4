"""The raw codec's decode refuses non-zero padding and a label count that disagrees with the index."""

from __future__ import annotations

import numpy as np
import pytest

from sparselabels.codecs.base import ChunkInput
from sparselabels.codecs.raw import RawCodec, record_layout
from sparselabels.errors import FormatError


def one_record(value_kind: str):
    ids = np.array([3, 9, 4], np.uint32)
    values = np.array([2, 3, 5], np.uint8) if value_kind == "count" else np.array([0.5, 0.25, 1.0], np.float16)
    indptr = np.array([0, 2, 2, 3], np.int64)  # an empty position in the middle
    chunk = ChunkInput.from_sequences([(ids, values, indptr)], value_kind, 16)
    record = RawCodec().encode_chunk(chunk).records
    return record, ids, values, indptr


@pytest.mark.parametrize("value_kind", ["count", "prob"])
def test_decode_round_trips(value_kind):
    record, ids, values, indptr = one_record(value_kind)
    got = RawCodec().decode(record, np.zeros(0, np.uint8), 3, 3, value_kind)
    for a, b in zip(got, (ids, values, indptr), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value_kind", ["count", "prob"])
@pytest.mark.parametrize("where", ["after labels per position", "after values"])
def test_nonzero_padding_is_refused(value_kind, where):
    record, *_ = one_record(value_kind)
    ids_at, values_at, size = record_layout(3, 3, value_kind)
    width = 1 if value_kind == "count" else 2  # labels per position and values share the width here
    lpp_end, values_end = 3 * width, values_at + 3 * width
    at = lpp_end if where == "after labels per position" else size - 1
    assert ids_at > lpp_end and values_end < size  # both padding ranges exist in this record
    record = record.copy()
    record[at] = 1
    with pytest.raises(FormatError, match="raw record: padding bytes are not zero"):
        RawCodec().decode(record, np.zeros(0, np.uint8), 3, 3, value_kind)


def test_label_count_disagreeing_with_the_index_is_refused():
    record, *_ = one_record("count")
    record = record.copy()
    record[1] = 1  # the empty position now claims one label: 4 in all
    with pytest.raises(FormatError, match="labels per position sum to 4, the index says 3 labels"):
        RawCodec().decode(record, np.zeros(0, np.uint8), 3, 3, "count")

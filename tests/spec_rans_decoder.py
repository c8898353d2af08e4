"""An independent decoder of spec/codecs/rans.md, written from the spec alone (plain Python and numpy).

It imports nothing from sparselabels: the tests compare it with the library's numba decoder on random and
on mutated records, so the spec and the code cannot drift apart unnoticed. Slow (pure Python); small
inputs only. ``CODECS`` plugs it into tests/spec_reader.py, whose SpecError its errors are.
"""

from __future__ import annotations

import struct

import numpy as np
from spec_reader import SpecError

PROB_BITS = 8
SCALE = 1 << PROB_BITS
MAX_FREQ = 192
RANS_LOW = 1 << 15
RANS_HIGH = 1 << 31
L_ESCAPE = 255
NONE = 255


class SpecDecodeError(SpecError):
    """The record or table breaks a rule of spec/codecs/rans.md."""


def _lclass(num_labels: int) -> int:
    return min((num_labels - 1).bit_length(), 7)


class Model:
    def __init__(self, freq: list[int]) -> None:
        self.freq = freq
        self.cum = [0] * 257
        for s in range(256):
            self.cum[s + 1] = self.cum[s] + freq[s]

    def symbol_of(self, slot: int) -> int:
        for s in range(256):
            if self.cum[s] <= slot < self.cum[s + 1]:
                return s
        raise SpecDecodeError("slot outside the model")  # impossible when frequencies sum to SCALE


class Table:
    """Section 2 of the spec."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 9:
            raise SpecDecodeError("table too short")
        version, prob_bits, flags, num_models, count_sum, rows, classes, l_model = struct.unpack_from(
            "<BBBBHBBB", data, 0
        )
        if version != 1 or prob_bits != PROB_BITS:
            raise SpecDecodeError("table version / prob_bits")
        if flags & ~1 or not 1 <= num_models <= 254:
            raise SpecDecodeError("table flags / num_models")
        self.implied_last = bool(flags & 1)
        if self.implied_last != (count_sum != 0):
            raise SpecDecodeError("count_sum must be non-zero exactly when IMPLIED_LAST is set")
        if not (1 <= rows <= 34 and 1 <= classes <= 8) or l_model >= num_models:
            raise SpecDecodeError("table dimensions / l_model")
        at = 9
        if at + rows * classes + classes > len(data):
            raise SpecDecodeError("table truncated in the maps")
        gap_map = list(data[at : at + rows * classes])
        at += rows * classes
        count_map = list(data[at : at + classes])
        at += classes
        for m in gap_map + count_map:
            if m != NONE and m >= num_models:
                raise SpecDecodeError("map names a missing model")
        models = []
        for _ in range(num_models):
            if at + 3 > len(data):
                raise SpecDecodeError("table truncated in a model")
            first, n = struct.unpack_from("<BH", data, at)
            at += 3
            if n < 1 or first + n > 256:
                raise SpecDecodeError("model symbol range")
            freq = [0] * 256
            for j in range(n):
                if at >= len(data):
                    raise SpecDecodeError("table truncated in frequencies")
                byte0 = data[at]
                at += 1
                value = byte0 & 0x7F
                if byte0 & 0x80:
                    if at >= len(data):
                        raise SpecDecodeError("table truncated in frequencies")
                    byte1 = data[at]
                    at += 1
                    if byte1 == 0 or byte1 & 0x80:
                        raise SpecDecodeError("non-canonical LEB128")
                    value |= byte1 << 7
                if value > MAX_FREQ:
                    raise SpecDecodeError("frequency above MAX_FREQ")
                freq[first + j] = value
            if sum(freq) != SCALE:
                raise SpecDecodeError("frequencies do not sum to SCALE")
            models.append(Model(freq))
        padding = data[at:]
        if len(data) % 8 != 0 or len(padding) >= 8 or any(padding):
            raise SpecDecodeError("table padding")
        for m in gap_map:
            if m != NONE and any(models[m].freq[32:]):
                raise SpecDecodeError("gap model with a symbol above 31")
        for m in count_map:
            if m != NONE and models[m].freq[0]:
                raise SpecDecodeError("count model with symbol 0")
        self.count_sum = count_sum
        self.rows, self.classes = rows, classes
        self.gap_map, self.count_map, self.l_model, self.models = gap_map, count_map, l_model, models

    def gap_model(self, row: int, lclass: int) -> Model:
        if row >= self.rows or lclass >= self.classes or self.gap_map[row * self.classes + lclass] == NONE:
            raise SpecDecodeError(f"no gap model for row {row}, lclass {lclass}")
        return self.models[self.gap_map[row * self.classes + lclass]]

    def count_model(self, lclass: int) -> Model:
        if lclass >= self.classes or self.count_map[lclass] == NONE:
            raise SpecDecodeError(f"no count model for lclass {lclass}")
        return self.models[self.count_map[lclass]]


class Stream:
    """A rANS stream of section 3."""

    def __init__(self, words: list[int]) -> None:
        self.words = words
        self.x = words[0] + 65536 * words[1]
        if not RANS_LOW <= self.x < RANS_HIGH:
            raise SpecDecodeError("initial state out of range")
        self.next = 2

    def decode(self, model: Model) -> int:
        slot = self.x % SCALE
        s = model.symbol_of(slot)
        self.x = model.freq[s] * (self.x >> PROB_BITS) + slot - model.cum[s]
        if self.x < RANS_LOW:
            if self.next >= len(self.words):
                raise SpecDecodeError("rANS stream exhausted")
            self.x = (self.x << 16) + self.words[self.next]
            self.next += 1
        return s

    def finished(self) -> bool:
        return self.x == RANS_LOW and self.next == len(self.words)


class Bits:
    """The raw bit stream of section 3."""

    def __init__(self, words: list[int]) -> None:
        self.value = sum(w << (64 * i) for i, w in enumerate(words))
        self.limit = 64 * len(words)
        self.rp = 0

    def read(self, n: int) -> int:
        if self.rp + n > self.limit:
            raise SpecDecodeError("raw bit stream exhausted")
        out = (self.value >> self.rp) & ((1 << n) - 1)
        self.rp += n
        return out


def decode_rans(record: bytes, table: bytes, num_positions: int, num_labels: int, value_kind: str):
    """Section 4: (ids uint32[M], values, indptr int64[T+1]) or SpecDecodeError."""
    record, table = bytes(record), bytes(table)
    tab = Table(table)
    if tab.implied_last and value_kind == "prob":
        raise SpecDecodeError("IMPLIED_LAST with value kind prob")
    if len(record) < 16:
        raise SpecDecodeError("record shorter than its header")
    raw_words, words0, words1, reserved = struct.unpack_from("<IIII", record, 0)
    if reserved != 0 or words0 < 2 or words1 < 2:
        raise SpecDecodeError("record header")
    values_at = 16
    raw_at = 16 if value_kind == "count" else 16 + (2 * num_labels + 7) // 8 * 8
    s0 = raw_at + 8 * raw_words
    s1 = s0 + 2 * words0
    end = s1 + 2 * words1
    if len(record) != (end + 7) // 8 * 8:
        raise SpecDecodeError("record size")
    if any(record[end:]) or any(record[values_at + 2 * num_labels : raw_at] if value_kind == "prob" else b""):
        raise SpecDecodeError("padding")
    bits = Bits(list(struct.unpack_from(f"<{raw_words}Q", record, raw_at)))
    stream0 = Stream(list(struct.unpack_from(f"<{words0}H", record, s0)))
    stream1 = Stream(list(struct.unpack_from(f"<{words1}H", record, s1)))
    ids = np.zeros(num_labels, dtype=np.uint32)
    counts = np.zeros(num_labels, dtype=np.uint8)
    indptr = np.zeros(num_positions + 1, dtype=np.int64)
    k = 0
    for p in range(num_positions):
        n_labels = stream0.decode(tab.models[tab.l_model])
        if n_labels == L_ESCAPE:
            n_labels = bits.read(16)
            if n_labels < 255:
                raise SpecDecodeError("non-canonical L escape")
        if k + n_labels > num_labels:
            raise SpecDecodeError("more labels than num_labels")
        if n_labels > 0:
            c = _lclass(n_labels)
            prev, row, csum = -1, 0, 0
            for i in range(n_labels):
                b = stream0.decode(tab.gap_model(row, c))
                label_id = prev + (1 << b) + bits.read(b)
                if label_id > 2**32 - 1:
                    raise SpecDecodeError("id above 2^32 - 1")
                ids[k + i] = label_id
                prev, row = label_id, 1 + label_id.bit_length()
                if value_kind == "count":
                    if tab.implied_last and i == n_labels - 1:
                        count = tab.count_sum - csum
                        if not 1 <= count <= 255:
                            raise SpecDecodeError("implied count out of range")
                    else:
                        count = stream1.decode(tab.count_model(c))
                        csum += count
                    counts[k + i] = count
            k += n_labels
        indptr[p + 1] = k
    if k != num_labels:
        raise SpecDecodeError("fewer labels than num_labels")
    if not (stream0.finished() and stream1.finished()):
        raise SpecDecodeError("rANS streams not finished")
    if -(-bits.rp // 64) != raw_words or bits.value >> bits.rp:
        raise SpecDecodeError("raw bit stream not finished")
    if value_kind == "count":
        return ids, counts, indptr
    values = np.frombuffer(record, dtype="<f2", count=num_labels, offset=values_at).copy()
    return ids, values, indptr


# for tests/spec_reader.py: the decoder, the bound of section 5 (a record of B bytes holds at most 20·B positions
# and 20·B labels), and chunks have tables
CODECS = {"rans": (decode_rans, 20, True)}

"""numba kernels of the ``rans`` codec. spec/codecs/rans.md is the normative description; this is a summary.

Every position is coded as a few *symbols* under static per-chunk probability models (rANS, 32-bit states,
16-bit renormalisation, probabilities in units of 2^-PROB_BITS), plus *raw bits* in a separate bit stream:

* ``L``, the number of labels of the position: symbol ``min(L, 255)``; 255 is followed by L as 16 raw bits;
* for each label, the *bucket* ``b = bit_length(gap + 1) - 1`` of its gap (``gap = id - previous id - 1``,
  previous id = -1 for the first label), followed by the ``b`` low bits of ``gap + 1`` as raw bits. The model
  is chosen by ``row`` (0 for the first label, else ``1 + bit_length(previous id)``) and ``lclass =
  min(bit_length(L - 1), 7)``;
* for ``value_kind="count"``, each label's count (the symbol is the count), model chosen by ``lclass``. With
  the table's IMPLIED_LAST flag the last count of a position is not stored: it is ``count_sum`` minus the
  others.

L and gap symbols go through rANS stream 0, counts through stream 1 (two independent dependency chains, so
a CPU decodes them in parallel). Decoding is a security boundary: every field is range-checked, every read
is bounds-checked (or clamped and checked after each position), and the first inconsistency returns a
non-zero error code that the Python side turns into a FormatError. Work and memory are O(T + M).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

# 8-bit probabilities: a model's slot table is 256 bytes, so the ~100 models a read uses mostly stay in L1
# (decoding ~13% faster than with 10 bits, for ~0.08 bytes per position more; tools/explore_precision.py)
PROB_BITS = 8
PROB_SCALE = 1 << PROB_BITS
RANS_LOW = 1 << 15  # states live in [2^15, 2^31): the encoder's reciprocal division is exact there
RANS_HIGH = 1 << 31
# No symbol may have more than 3/4 of the probability (cost: ~0.002 bytes per position on the N=50 workload).
# Then decoding one symbol shrinks the rANS state by a factor >= 1/0.7559 (x' < 0.75 x + 192, x >= 2^15), i.e.
# it consumes >= 0.40 bit, so stream 0 (one symbol per position and per label) holds at most 19.9 symbols per
# byte: a record of B bytes holds at most 20 B positions and 20 B labels (RansCodec.max_*_per_byte).
MAX_FREQ = 192
NUM_ROWS = 34  # row 0: first label of a position; rows 1..33: 1 + bit_length(previous id)
NUM_LCLASSES = 8
L_ESCAPE = 255
UNUSED = 255  # model index meaning "this context has no model"
FLAG_IMPLIED_LAST = 1
TABLE_VERSION = 1
TABLE_FIXED_BYTES = 9
RECORD_HEADER_BYTES = 16
MAX_MODELS = 254

# Candidate groupings of the 8 lclasses into models; the encoder keeps the cheapest per chunk and alphabet.
LCLASS_GROUPINGS = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 2, 3, 3, 3],
        [0, 1, 2, 3, 4, 5, 6, 7],
    ],
    dtype=np.int64,
)
# -log2(f / PROB_SCALE) in units of 2^-16 bit, for f = 0..PROB_SCALE (entry 0 unused): integer costs make the
# encoder's model choice identical on every machine.
COST_Q16 = np.zeros(PROB_SCALE + 1, dtype=np.int64)
COST_Q16[1:] = np.round(-np.log2(np.arange(1, PROB_SCALE + 1) / PROB_SCALE) * 65536).astype(np.int64)

# error codes of decode_record / parse_table (the Python side maps them to messages)
ERR_RECORD_SIZE = 1
ERR_RAW_OVERRUN = 2
ERR_RANS_OVERRUN = 3
ERR_RANS_STATE = 4
ERR_LABELS_OVERRUN = 5
ERR_NO_MODEL = 6
ERR_ID_RANGE = 7
ERR_COUNT_RANGE = 8
ERR_L_ESCAPE = 9
ERR_LABELS_SHORT = 10
ERR_RANS_END = 11
ERR_RAW_END = 12
ERR_PADDING = 13
ERR_VALUE_KIND = 14
ERR_LABEL_RULES = 15  # an id >= vocab_size or counts not summing to rounds (inline label checks)
ERR_RESERVED = 16
ERR_TABLE = 20  # table errors are ERR_TABLE + detail


@nb.njit(cache=True, inline="always")
def bit_length(x):
    return 64 - leading_zeros(np.uint64(x))


@nb.njit(cache=True, inline="always")
def lclass_of(num_labels):
    return min(bit_length(num_labels - 1), NUM_LCLASSES - 1)


@nb.njit(cache=True, inline="always")
def _at(i):
    """An index known to be non-negative, typed unsigned so numba emits no negative-index wraparound."""
    return np.uint64(i)


# ------------------------------------------------------------------------------------------------ encoder


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _put_bits(raw, nraw, acc, nacc, value, nbits):
    """Append ``nbits`` (<= 32) bits of ``value`` to the bit accumulator; full 64-bit words go to raw[nraw]."""
    acc |= value << np.uint64(nacc)
    nacc += nbits
    full = np.int64(nacc >= 64)
    raw[nraw] = acc  # branch-free: always stored, kept only when the word is full
    nraw += full
    nacc -= full << 6
    spill = (value >> np.uint64((nbits - nacc) & 63)) if nacc > 0 else np.uint64(0)
    acc = spill if full else acc
    return nraw, acc, nacc


@nb.njit(cache=True, nogil=True, error_model="numpy")
def analyse_chunk(ids, values, lpp, seq_positions, is_count):
    """One pass over a chunk: symbol histograms, the common count sum and every record's raw bits.

    Returns (gap_hist [row, lclass, 32], count_hist of all but each position's last label [lclass, 256],
    count_hist of last labels [lclass, 256], L hist [256], raw, raw_start, count_sum):
    ``raw[raw_start[s]:raw_start[s + 1]]`` are record s's 64-bit words; ``count_sum`` is the count sum shared
    by every non-empty position (0 if there is none, -1 if sums differ or the kind is prob)."""
    # flat histograms; counts go to 4 interleaved copies (a run of equal counts would otherwise serialise on
    # one memory cell), summed at the end
    gap_hist = np.zeros(NUM_ROWS * NUM_LCLASSES * 32, dtype=np.int64)
    count4 = np.zeros(4 * NUM_LCLASSES * 256, dtype=np.int64)
    last_hist = np.zeros((NUM_LCLASSES, 256), dtype=np.int64)
    count_sum = 0 if is_count else -1
    l_hist = np.zeros(256, dtype=np.int64)
    raw = np.empty((16 * lpp.shape[0] + 31 * ids.shape[0]) // 64 + seq_positions.shape[0] + 1, dtype=np.uint64)
    raw_start = np.zeros(seq_positions.shape[0] + 1, dtype=np.int64)
    nraw = 0
    k = 0
    p = 0
    for s in range(seq_positions.shape[0]):
        acc = np.uint64(0)
        nacc = 0
        for _ in range(seq_positions[s]):
            n = np.int64(lpp[_at(p)])
            p += 1
            l_hist[_at(min(n, L_ESCAPE))] += 1
            if n >= L_ESCAPE:
                nraw, acc, nacc = _put_bits(raw, nraw, acc, nacc, np.uint64(n), 16)
            if n == 0:
                continue
            lc = lclass_of(n)
            prev = np.int64(-1)
            ctx = lc * 32  # (row 0, lclass) * 32
            for i in range(n):
                cur = np.int64(ids[_at(k + i)])
                v = cur - prev
                b = bit_length(v) - 1
                gap_hist[_at(ctx + b)] += 1
                nraw, acc, nacc = _put_bits(raw, nraw, acc, nacc, np.uint64(v - (np.int64(1) << b)), b)
                prev = cur
                ctx = ((1 + bit_length(cur)) * NUM_LCLASSES + lc) * 32
            if is_count:
                total = np.int64(0)
                for i in range(n - 1):
                    c = np.int64(values[_at(k + i)])
                    count4[_at(((i & 3) * NUM_LCLASSES + lc) * 256 + c)] += 1
                    total += c
                c = np.int64(values[_at(k + n - 1)])
                last_hist[lc, c] += 1
                total += c
                if count_sum == 0:
                    count_sum = total
                elif total != count_sum:
                    count_sum = -1
            k += n
        if nacc > 0:
            raw[nraw] = acc
            nraw += 1
        raw_start[s + 1] = nraw
    count_hist = count4.reshape((4, NUM_LCLASSES, 256)).sum(axis=0)
    gap_hist = gap_hist.reshape((NUM_ROWS, NUM_LCLASSES, 32))
    return gap_hist, count_hist, last_hist, l_hist, raw, raw_start, count_sum


@nb.njit(cache=True, nogil=True, error_model="numpy")
def normalize_frequencies(hist):
    """Frequencies summing to PROB_SCALE, >= 1 for every symbol seen, <= MAX_FREQ, close to ``hist``'s shape.

    A symbol that would exceed MAX_FREQ gives the excess to the next most frequent symbol (or, if it is the
    only one, to a neighbour that never occurs). An empty histogram gets symbols 0 and 1 (never used)."""
    a = hist.shape[0]
    freq = np.zeros(a, dtype=np.int64)
    total = 0
    for s in range(a):
        total += hist[s]
    if total == 0:
        freq[0] = MAX_FREQ
        freq[1] = PROB_SCALE - MAX_FREQ
        return freq
    fsum = 0
    top = 0
    for s in range(a):
        if hist[s] > 0:
            freq[s] = max(1, np.int64(np.floor(hist[s] * (PROB_SCALE / total) + 0.5)))
            fsum += freq[s]
            if hist[s] > hist[top]:
                top = s
    diff = PROB_SCALE - fsum
    if diff > 0:
        freq[top] += diff
    elif diff < 0:
        order = np.argsort(-freq, kind="mergesort")
        for s in order:
            if diff == 0:
                break
            take = min(freq[s] - 1, -diff)
            freq[s] -= take
            diff += take
    if freq[top] > MAX_FREQ:
        second = -1
        for s in range(a):
            if s != top and freq[s] > 0 and (second < 0 or freq[s] > freq[second]):
                second = s
        if second < 0:
            second = top + 1 if top + 1 < a else top - 1
        freq[second] += freq[top] - MAX_FREQ
        freq[top] = MAX_FREQ
    return freq


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _model_span(freq):
    first = 0
    while freq[first] == 0:
        first += 1
    last = freq.shape[0] - 1
    while freq[last] == 0:
        last -= 1
    return first, last


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _model_table_bytes(freq):
    first, last = _model_span(freq)
    n = 3
    for s in range(first, last + 1):
        n += 1 if freq[s] < 0x80 else 2
    return n


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _model_cost_q16(hist, freq):
    """Bits (in 2^-16 units) to code ``hist`` with ``freq``, plus the model's bytes in the table."""
    cost = 8 * 65536 * _model_table_bytes(freq)
    for s in range(hist.shape[0]):
        if hist[s] > 0:
            cost += hist[s] * COST_Q16[freq[s]]
    return cost


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _grouped(hist, grouping, first_model, models):
    """Models of ``hist[lead, lclass, symbol]`` with lclasses merged by ``grouping``.

    Writes the frequencies of new models to ``models[first_model:]``; returns (map[lead, lclass] -> model
    index or UNUSED, number of models, cost in 2^-16 bits)."""
    lead = hist.shape[0]
    groups = 0
    for c in range(NUM_LCLASSES):
        groups = max(groups, grouping[c] + 1)
    cmap = np.full((lead, NUM_LCLASSES), UNUSED, dtype=np.int64)
    count = 0
    cost = 0
    merged = np.zeros(hist.shape[2], dtype=np.int64)
    for r in range(lead):
        for g in range(groups):
            merged[:] = 0
            seen = False
            for c in range(NUM_LCLASSES):
                if grouping[c] == g:
                    for s in range(hist.shape[2]):
                        merged[s] += hist[r, c, s]
                        seen = seen or hist[r, c, s] > 0
            if not seen:
                continue
            m = first_model + count
            if m < models.shape[0]:
                freq = normalize_frequencies(merged)
                models[m, :] = 0
                models[m, : freq.shape[0]] = freq
                cost += _model_cost_q16(merged, freq)
                for c in range(NUM_LCLASSES):
                    if grouping[c] == g:
                        nz = False
                        for s in range(hist.shape[2]):
                            nz = nz or hist[r, c, s] > 0
                        if nz:
                            cmap[r, c] = m
            count += 1
    return cmap, count, cost


@nb.njit(cache=True, nogil=True, error_model="numpy")
def build_table(gap_hist, count_hist, l_hist, flags, count_sum):
    """Choose a chunk's models and serialise them.

    Returns (table bytes, gap_model[34, 8], count_model[8], freq[num_models, 256]); model 0 codes L. For each
    alphabet the cheapest lclass grouping (code bits plus table bytes) wins, so small chunks get coarse
    contexts and large chunks fine ones."""
    models = np.zeros((MAX_MODELS, 256), dtype=np.int64)
    models[0, :] = normalize_frequencies(l_hist)
    count_hist3 = count_hist.reshape((1, NUM_LCLASSES, 256))
    # count models first (at most 8), so that the gap models know how many indices remain
    best_c = -1
    best_c_cost = 0
    for g in range(LCLASS_GROUPINGS.shape[0]):
        _, n, cost = _grouped(count_hist3, LCLASS_GROUPINGS[g], 1, models)
        if best_c < 0 or cost < best_c_cost:
            best_c, best_c_cost = g, cost
    cmap, n_count, _ = _grouped(count_hist3, LCLASS_GROUPINGS[best_c], 1, models)
    best_g = -1
    best_g_cost = 0
    for g in range(LCLASS_GROUPINGS.shape[0]):
        _, n, cost = _grouped(gap_hist, LCLASS_GROUPINGS[g], 1 + n_count, models)
        if 1 + n_count + n <= MAX_MODELS and (best_g < 0 or cost < best_g_cost):
            best_g, best_g_cost = g, cost
    gmap, n_gap, _ = _grouped(gap_hist, LCLASS_GROUPINGS[best_g], 1 + n_count, models)
    num_models = 1 + n_count + n_gap
    rows = 1
    classes = 1
    for r in range(NUM_ROWS):
        for c in range(NUM_LCLASSES):
            if gmap[r, c] != UNUSED:
                rows = max(rows, r + 1)
                classes = max(classes, c + 1)
    for c in range(NUM_LCLASSES):
        if cmap[0, c] != UNUSED:
            classes = max(classes, c + 1)
    size = TABLE_FIXED_BYTES + rows * classes + classes
    for m in range(num_models):
        size += _model_table_bytes(models[m])
    out = np.zeros((size + 7) // 8 * 8, dtype=np.uint8)  # the container wants tables padded to 8 bytes
    out[0] = TABLE_VERSION
    out[1] = PROB_BITS
    out[2] = flags
    out[3] = num_models
    out[4] = count_sum & 0xFF
    out[5] = count_sum >> 8
    out[6] = rows
    out[7] = classes
    out[8] = 0  # the L model
    at = TABLE_FIXED_BYTES
    for r in range(rows):
        for c in range(classes):
            out[at] = gmap[r, c]
            at += 1
    for c in range(classes):
        out[at] = cmap[0, c]
        at += 1
    for m in range(num_models):
        first, last = _model_span(models[m])
        n = last - first + 1
        out[at] = first
        out[at + 1] = n & 0xFF
        out[at + 2] = n >> 8
        at += 3
        for s in range(first, last + 1):
            f = models[m, s]
            if f < 0x80:
                out[at] = f
                at += 1
            else:
                out[at] = (f & 0x7F) | 0x80
                out[at + 1] = f >> 7
                at += 2
    return out, gmap, cmap[0].copy(), models[:num_models].copy()


@nb.njit(cache=True, nogil=True, error_model="numpy")
def encoder_symbols(freq):
    """Per (model, symbol), packed in one int64: ``rcp | freq << 32 | rcp_shift << 43 | bias << 48``.

    Division-free rANS encoding with the reciprocal of ryg_rans (Alverson's method), exact for states below
    2^31; tests check it against plain division."""
    n = freq.shape[0]
    out = np.zeros(n * 256, dtype=np.int64)
    for m in range(n):
        start = 0
        for s in range(256):
            f = freq[m, s]
            if f == 0:
                continue
            if f < 2:
                rcp, shift, bias = np.int64(0xFFFFFFFF), 0, start + PROB_SCALE - 1
            else:
                shift = 0
                while f > (1 << shift):
                    shift += 1
                rcp = ((np.int64(1) << (shift + 31)) + f - 1) // f
                shift, bias = shift - 1, start
            out[m * 256 + s] = rcp | (f << 32) | (np.int64(shift) << 43) | (np.int64(bias) << 48)
            start += f
    return out


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _rans_put(x, e, words, nw):
    """Encode one symbol (``e`` from encoder_symbols) into state x; an emitted 16-bit word goes to words[nw]."""
    f = (e >> 32) & 0x7FF
    emit = np.int64(x >= (f << (31 - PROB_BITS)))  # branch-free: the word is always stored, kept if emitted
    words[nw] = x & 0xFFFF
    nw += emit
    x >>= emit << 4
    q = np.int64((np.uint64(x) * np.uint64(e & 0xFFFFFFFF)) >> np.uint64(32)) >> ((e >> 43) & 31)
    return x + (e >> 48) + q * (PROB_SCALE - f), nw


def record_bound(num_positions, num_labels, is_count):
    """Upper bound of the bytes of one record, padding included (ints or int64 arrays)."""
    raw_bits = 16 * num_positions + 31 * num_labels
    values = 0 if is_count else (2 * num_labels + 7) // 8 * 8
    words = 2 * (num_positions + num_labels) + 2 * num_labels + 8
    return RECORD_HEADER_BYTES + values + (raw_bits + 63) // 64 * 8 + words + 8


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _put_u32(out, at, v):
    out[at] = v & 0xFF
    out[at + 1] = (v >> 8) & 0xFF
    out[at + 2] = (v >> 16) & 0xFF
    out[at + 3] = (v >> 24) & 0xFF


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _flush_word(out, at, acc):
    for j in range(8):
        out[at + j] = (acc >> np.uint64(8 * j)) & np.uint64(0xFF)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _put_stream(out, at, x, words, nw):
    """Write a stream: its final state (two words, low first), then the emitted words in reverse order."""
    _put_u32(out, at, x)
    for j in range(nw):
        w = words[nw - 1 - j]
        out[at + 4 + 2 * j] = w & 0xFF
        out[at + 5 + 2 * j] = w >> 8
    return at + 4 + 2 * nw


@nb.njit(cache=True, nogil=True, error_model="numpy")
def encode_records(ids, values, lpp, seq_positions, seq_labels, is_count, implied_last, gap_model, count_model,
                   sym, raw, raw_start, out, record_sizes):
    """Encode every sequence of a chunk into ``out``; fill ``record_sizes``; return the bytes written.

    ``values``: uint8 counts, or the float16 probabilities' bits as uint16. ``sym``: encoder_symbols(freq);
    ``raw``, ``raw_start``: the records' raw bits from analyse_chunk. ``gap_model``: flat [row * 8 + lclass]."""
    words0 = np.empty(lpp.shape[0] + ids.shape[0] + 2, dtype=np.int64)
    words1 = np.empty(ids.shape[0] + 2, dtype=np.int64)
    at = 0
    pos0 = 0
    lab0 = 0
    for s in range(seq_positions.shape[0]):
        t_count = seq_positions[s]
        m_count = seq_labels[s]
        base = at
        head = base + RECORD_HEADER_BYTES
        if not is_count:  # float16 values as stored, padded to 8 bytes
            for j in range(m_count):
                v = values[lab0 + j]
                out[head + 2 * j] = v & 0xFF
                out[head + 2 * j + 1] = v >> 8
            vb = (2 * m_count + 7) // 8 * 8
            for j in range(2 * m_count, vb):
                out[head + j] = 0
            head += vb
        # raw bits, from analyse_chunk, as little-endian 64-bit words
        raw_at = head
        nraw = raw_start[s + 1] - raw_start[s]
        for w in range(nraw):
            _flush_word(out, raw_at + 8 * w, raw[raw_start[s] + w])
        # rANS, backwards over the symbols: stream 0 codes L and gaps, stream 1 codes counts
        x0 = np.int64(RANS_LOW)
        x1 = np.int64(RANS_LOW)
        nw0 = 0
        nw1 = 0
        k = lab0 + m_count
        for p in range(pos0 + t_count - 1, pos0 - 1, -1):
            n = np.int64(lpp[_at(p)])
            k -= n
            if n > 0:
                lc = lclass_of(n)
                cm = count_model[_at(lc)] * 256
                cur = np.int64(ids[_at(k + n - 1)])
                if is_count and not implied_last:
                    x1, nw1 = _rans_put(x1, sym[_at(cm + values[_at(k + n - 1)])], words1, nw1)
                for i in range(n - 1, 0, -1):
                    prev = np.int64(ids[_at(k + i - 1)])
                    gm = gap_model[_at((1 + bit_length(prev)) * NUM_LCLASSES + lc)] * 256
                    x0, nw0 = _rans_put(x0, sym[_at(gm + bit_length(cur - prev) - 1)], words0, nw0)
                    if is_count:
                        x1, nw1 = _rans_put(x1, sym[_at(cm + values[_at(k + i - 1)])], words1, nw1)
                    cur = prev
                gm = gap_model[_at(lc)] * 256
                x0, nw0 = _rans_put(x0, sym[_at(gm + bit_length(cur + 1) - 1)], words0, nw0)
            x0, nw0 = _rans_put(x0, sym[_at(min(n, L_ESCAPE))], words0, nw0)
        end = _put_stream(out, raw_at + 8 * nraw, x0, words0, nw0)
        end = _put_stream(out, end, x1, words1, nw1)
        size = (end - base + 7) // 8 * 8
        for j in range(end, base + size):
            out[j] = 0
        _put_u32(out, base, nraw)
        _put_u32(out, base + 4, 2 + nw0)
        _put_u32(out, base + 8, 2 + nw1)
        _put_u32(out, base + 12, 0)
        record_sizes[s] = size
        at = base + size
        pos0 += t_count
        lab0 += m_count
    return at


# ------------------------------------------------------------------------------------------------ table


@nb.njit(cache=True, nogil=True, error_model="numpy")
def parse_table(table):
    """Check and expand a chunk table. Returns (err, flags, count_sum, gap_ctx, count_ctx, l_ctx, dec).

    ``dec`` (uint8, a multiple of 4 bytes) holds one block per model at a 4-aligned offset ``o``: the symbol of
    each of the PROB_SCALE slots (``dec[o + slot]``, one byte each), then, as uint32 at ``o + PROB_SCALE``, one
    ``freq | cum << 16`` word per symbol ``0 .. first + n - 1``. ``gap_ctx[row * 8 + lclass]``, ``count_ctx
    [lclass]`` and ``l_ctx`` are the offsets ``o`` of a context's model (-1: the context has no model).

    Why this layout: decoding is latency-bound on loads from these blocks. At ~0.35 KiB per model (a uint32
    per slot, symbol and arithmetic in one load, takes 1 KiB and decodes slower) the ~120 models of a 16 MiB
    chunk of LM-like labels take ~45 KiB, so most loads of a read hit L1 (tools/bench_codec.py, random reads)."""
    gap_model = np.full((NUM_ROWS, NUM_LCLASSES), UNUSED, dtype=np.int64)
    count_model = np.full(NUM_LCLASSES, UNUSED, dtype=np.int64)
    empty = np.zeros(0, dtype=np.uint8)
    nob = np.zeros(0, dtype=np.int64)
    n = table.shape[0]
    if n < TABLE_FIXED_BYTES:
        return ERR_TABLE + 1, 0, 0, nob, nob, 0, empty
    if table[0] != TABLE_VERSION or table[1] != PROB_BITS:
        return ERR_TABLE + 2, 0, 0, nob, nob, 0, empty
    flags = np.int64(table[2])
    num_models = np.int64(table[3])
    count_sum = np.int64(table[4]) | (np.int64(table[5]) << 8)
    rows = np.int64(table[6])
    classes = np.int64(table[7])
    l_model = np.int64(table[8])
    if flags & ~FLAG_IMPLIED_LAST or num_models == 0 or num_models > MAX_MODELS:
        return ERR_TABLE + 3, 0, 0, nob, nob, 0, empty
    if ((flags & FLAG_IMPLIED_LAST) != 0) != (count_sum != 0):
        return ERR_TABLE + 3, 0, 0, nob, nob, 0, empty
    if not (1 <= rows <= NUM_ROWS and 1 <= classes <= NUM_LCLASSES) or l_model >= num_models:
        return ERR_TABLE + 4, 0, 0, nob, nob, 0, empty
    at = TABLE_FIXED_BYTES
    if at + rows * classes + classes > n:
        return ERR_TABLE + 1, 0, 0, nob, nob, 0, empty
    for r in range(rows):
        for c in range(classes):
            m = np.int64(table[at])
            at += 1
            if m != UNUSED and m >= num_models:
                return ERR_TABLE + 5, 0, 0, nob, nob, 0, empty
            gap_model[r, c] = m
    for c in range(classes):
        m = np.int64(table[at])
        at += 1
        if m != UNUSED and m >= num_models:
            return ERR_TABLE + 5, 0, 0, nob, nob, 0, empty
        count_model[c] = m
    # first pass: check every model, keep its frequencies (at most one per table byte)
    freq = np.empty(n, dtype=np.int64)
    freq_start = np.empty(num_models + 1, dtype=np.int64)
    first_symbol = np.empty(num_models, dtype=np.int64)
    max_symbol = np.zeros(num_models, dtype=np.int64)
    zero_used = np.zeros(num_models, dtype=np.bool_)
    nf = 0
    for m in range(num_models):
        if at + 3 > n:
            return ERR_TABLE + 1, 0, 0, nob, nob, 0, empty
        first = np.int64(table[at])
        count = np.int64(table[at + 1]) | (np.int64(table[at + 2]) << 8)
        at += 3
        if count < 1 or first + count > 256:
            return ERR_TABLE + 6, 0, 0, nob, nob, 0, empty
        first_symbol[m] = first
        freq_start[m] = nf
        c = 0
        for j in range(count):
            # LEB128, 1 or 2 bytes (values <= PROB_SCALE < 2^14), canonical
            if at >= n:
                return ERR_TABLE + 1, 0, 0, nob, nob, 0, empty
            f = np.int64(table[at] & 0x7F)
            more = table[at] & 0x80
            at += 1
            if more:
                if at >= n:
                    return ERR_TABLE + 1, 0, 0, nob, nob, 0, empty
                hi = np.int64(table[at])
                at += 1
                if hi == 0 or hi & 0x80:
                    return ERR_TABLE + 7, 0, 0, nob, nob, 0, empty
                f |= hi << 7
            if f > PROB_SCALE - c:
                return ERR_TABLE + 8, 0, 0, nob, nob, 0, empty
            if f > MAX_FREQ:
                return ERR_TABLE + 11, 0, 0, nob, nob, 0, empty
            freq[nf] = f
            nf += 1
            if f > 0:
                max_symbol[m] = first + j
                if first + j == 0:
                    zero_used[m] = True
            c += f
        if c != PROB_SCALE:
            return ERR_TABLE + 8, 0, 0, nob, nob, 0, empty
    freq_start[num_models] = nf
    if n - at >= 8 or n % 8 != 0:
        return ERR_TABLE + 9, 0, 0, nob, nob, 0, empty
    for j in range(at, n):
        if table[j] != 0:
            return ERR_TABLE + 9, 0, 0, nob, nob, 0, empty
    # second pass: the decoding blocks, back to back; every byte is written (the slots of a model are
    # covered exactly, as its frequencies sum to PROB_SCALE)
    offset = np.empty(num_models + 1, dtype=np.int64)
    offset[0] = 0
    for m in range(num_models):
        num_symbols = first_symbol[m] + freq_start[m + 1] - freq_start[m]
        offset[m + 1] = offset[m] + PROB_SCALE + 4 * num_symbols
    dec = np.empty(offset[num_models], dtype=np.uint8)
    for m in range(num_models):
        o = offset[m]
        info_at = o + PROB_SCALE
        for j in range(4 * first_symbol[m]):  # symbols below first: frequency 0, cum 0
            dec[info_at + j] = 0
        cum = 0
        for j in range(freq_start[m + 1] - freq_start[m]):
            sym = first_symbol[m] + j
            f = freq[freq_start[m] + j]
            dec[o + cum : o + cum + f] = sym  # a memset: much faster than a loop of byte stores
            w = f | (cum << 16)
            i = info_at + 4 * sym
            dec[i] = w & 0xFF
            dec[i + 1] = (w >> 8) & 0xFF
            dec[i + 2] = (w >> 16) & 0xFF
            dec[i + 3] = (w >> 24) & 0xFF
            cum += f
    # alphabet rules: gap models emit buckets 0..31; count models emit counts 1..255
    gap_ctx = np.full(NUM_ROWS * NUM_LCLASSES, -1, dtype=np.int64)
    count_ctx = np.full(NUM_LCLASSES, -1, dtype=np.int64)
    for r in range(NUM_ROWS):
        for c in range(NUM_LCLASSES):
            m = gap_model[r, c]
            if m != UNUSED:
                if max_symbol[m] > 31:
                    return ERR_TABLE + 10, 0, 0, nob, nob, 0, empty
                gap_ctx[r * NUM_LCLASSES + c] = offset[m]
    for c in range(NUM_LCLASSES):
        m = count_model[c]
        if m != UNUSED:
            if zero_used[m]:
                return ERR_TABLE + 10, 0, 0, nob, nob, 0, empty
            count_ctx[c] = offset[m]
    return 0, flags, count_sum, gap_ctx, count_ctx, offset[l_model], dec


# ------------------------------------------------------------------------------------------------ decoder


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _u32_at(buf, at):
    return (
        np.int64(buf[at])
        | (np.int64(buf[at + 1]) << 8)
        | (np.int64(buf[at + 2]) << 16)
        | (np.int64(buf[at + 3]) << 24)
    )


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _rans_get(x, ctx, dec, info):
    """Decode one symbol with the model at ``ctx`` (a parse_table offset): returns (symbol, new state)."""
    slot = x & (PROB_SCALE - 1)
    s = np.int64(dec[_at(ctx + slot)])
    fc = np.int64(info[_at((ctx >> 2) + (PROB_SCALE >> 2) + s)])
    return s, (fc & 0xFFFF) * (x >> PROB_BITS) + slot - (fc >> 16)


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _renorm(x, w, last, words16):
    """Renormalisation without a branch (a mispredicted one costs more than it saves): the next word is loaded
    from a clamped address and selected when x < 2^15. An overrun is caught after the position."""
    word = np.int64(words16[_at(min(w, last))])
    low = x < RANS_LOW
    return ((x << 16) | word) if low else x, w + np.int64(low)


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _raw_bits(words64, raw_base, rp, nbits):
    """``nbits`` (<= 32) bits of the raw stream from bit ``rp`` (the caller checked ``rp + nbits <= 64 W``).

    Loads the word holding bit ``rp`` and the one holding bit ``rp + 63`` (index ``<= raw_base + W``: within the
    record, as stream 0 follows the raw words); the second's bits are masked off unless the read spans both."""
    sh = np.uint64(rp & 63)
    lo = words64[_at(raw_base + (rp >> 6))] >> sh
    hi = (words64[_at(raw_base + ((rp + 63) >> 6))] << np.uint64(1)) << (np.uint64(63) - sh)
    return np.int64((lo | hi) & ((np.uint64(1) << np.uint64(nbits)) - np.uint64(1)))


@nb.njit(cache=True, nogil=True, error_model="numpy")
def decode_record(record, words16, words64, num_positions, num_labels, is_count, flags, count_sum, gap_ctx,
                  count_ctx, l_ctx, dec, info, id_limit, rounds, ids, counts, indptr):
    """Decode one record into ids[num_labels], counts[num_labels] (count kind) and indptr[num_positions + 1].

    ``words16``/``words64``: the record viewed as little-endian uint16/uint64 (its size is a multiple of 8).
    ``dec``/``info``: parse_table's blocks as uint8/uint32. Label rules, checked inline: an id ``>= id_limit``
    fails (id_limit = 2^32 checks only the format's range), and with ``rounds >= 0`` a non-empty position whose
    counts do not sum to ``rounds`` fails (ERR_LABEL_RULES); ascending ids and counts >= 1 hold by construction.
    Returns (err, values_at): err 0 on success; values_at is where the float16 values start (prob kind)."""
    implied = (flags & FLAG_IMPLIED_LAST) != 0
    if implied and not is_count:
        return ERR_VALUE_KIND, 0
    size = record.shape[0]
    if size < RECORD_HEADER_BYTES or size % 8 != 0 or words64.shape[0] * 8 != size:
        return ERR_RECORD_SIZE, 0
    raw_words = _u32_at(record, 0)
    words0 = _u32_at(record, 4)
    words1 = _u32_at(record, 8)
    if _u32_at(record, 12) != 0:
        return ERR_RESERVED, 0
    values_at = RECORD_HEADER_BYTES
    raw_at = values_at
    if not is_count:
        raw_at += (2 * num_labels + 7) // 8 * 8
    s0 = raw_at + 8 * raw_words
    s1 = s0 + 2 * words0
    end = s1 + 2 * words1
    if words0 < 2 or words1 < 2 or end > size or size - end >= 8:
        return ERR_RECORD_SIZE, 0
    for j in range(end, size):
        if record[j] != 0:
            return ERR_PADDING, 0
    for j in range(values_at + 2 * num_labels, raw_at):
        if record[j] != 0:
            return ERR_PADDING, 0
    x0 = _u32_at(record, s0)
    x1 = _u32_at(record, s1)
    if not (RANS_LOW <= x0 < RANS_HIGH and RANS_LOW <= x1 < RANS_HIGH):
        return ERR_RANS_STATE, 0
    raw_base = raw_at >> 3
    err, k, x0, x1, w0, w1, rp = _decode_positions(
        words16, words64, raw_base, raw_words, (s0 + 4) >> 1, s1 >> 1, (s1 + 4) >> 1, end >> 1, x0, x1,
        num_positions, num_labels, is_count, implied, count_sum, gap_ctx, count_ctx, l_ctx, dec, info, id_limit,
        rounds, ids, counts, indptr,
    )
    if err:
        return err, 0
    if k != num_labels:
        return ERR_LABELS_SHORT, 0
    if x0 != RANS_LOW or x1 != RANS_LOW or w0 != s1 >> 1 or w1 != end >> 1:
        return ERR_RANS_END, 0
    # every raw word is used, and the unused high bits of the last one are zero
    if (rp + 63) // 64 != raw_words:
        return ERR_RAW_END, 0
    if rp % 64 != 0 and (words64[_at(raw_base + (rp >> 6))] >> np.uint64(rp & 63)) != np.uint64(0):
        return ERR_RAW_END, 0
    return 0, values_at


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _decode_positions(words16, words64, raw_base, raw_words, w0, end0, w1, end1, x0, x1, num_positions,
                      num_labels, is_count, implied, count_sum, gap_ctx, count_ctx, l_ctx, dec, info, id_limit,
                      rounds, ids, counts, indptr):
    """The hot loop of decode_record; returns (err, labels, x0, x1, w0, w1, raw bit position).

    Stream positions ``w0``/``w1`` are in 16-bit words. A stream that runs past its end is caught after each
    position (reads meanwhile are clamped to its last word). Speed: decoding is a chain of dependent loads
    (state -> slot -> symbol -> state; id -> context -> model), so a label's gap (stream 0) and its count
    (stream 1) are decoded in the same loop iteration, where the CPU overlaps the two chains."""
    raw_limit = 64 * raw_words
    rp = np.int64(0)
    last0 = end0 - 1
    last1 = end1 - 1
    k = np.int64(0)
    # with IMPLIED_LAST every non-empty position's counts sum to count_sum: one comparison for the whole record
    sum_ok = rounds < 0 or not implied or count_sum == rounds
    indptr[0] = 0
    for p in range(num_positions):
        n, x0 = _rans_get(x0, l_ctx, dec, info)
        x0, w0 = _renorm(x0, w0, last0, words16)
        if n == L_ESCAPE:
            if rp + 16 > raw_limit:
                return ERR_RAW_OVERRUN, k, x0, x1, w0, w1, rp
            n = _raw_bits(words64, raw_base, rp, 16)
            rp += 16
            if n < L_ESCAPE:
                return ERR_L_ESCAPE, k, x0, x1, w0, w1, rp
        if n > num_labels - k:
            return ERR_LABELS_OVERRUN, k, x0, x1, w0, w1, rp
        if n > 0:
            if not sum_ok:
                return ERR_LABEL_RULES, k, x0, x1, w0, w1, rp
            lc = lclass_of(n)
            gb = gap_ctx[_at(lc)]  # row 0
            cur = np.int64(-1)
            # labels with a coded count: gap and count in one iteration; then those without (the implied last
            # count, or every label of kind prob)
            ncoded = (n - 1 if implied else n) if is_count else 0
            cb = count_ctx[_at(lc)]
            if ncoded > 0 and cb < 0:
                return ERR_NO_MODEL, k, x0, x1, w0, w1, rp
            csum = np.int64(0)
            for i in range(ncoded):
                if gb < 0:
                    return ERR_NO_MODEL, k, x0, x1, w0, w1, rp
                b, x0 = _rans_get(x0, gb, dec, info)
                x0, w0 = _renorm(x0, w0, last0, words16)
                if rp + b > raw_limit:
                    return ERR_RAW_OVERRUN, k, x0, x1, w0, w1, rp
                cur += (np.int64(1) << b) + _raw_bits(words64, raw_base, rp, b)
                rp += b
                if cur >= id_limit:
                    return ERR_ID_RANGE if cur > 0xFFFFFFFF else ERR_LABEL_RULES, k, x0, x1, w0, w1, rp
                ids[_at(k + i)] = cur
                gb = gap_ctx[_at((1 + bit_length(cur)) * NUM_LCLASSES + lc)]
                c, x1 = _rans_get(x1, cb, dec, info)
                x1, w1 = _renorm(x1, w1, last1, words16)
                csum += c
                counts[_at(k + i)] = c
            for i in range(ncoded, n):
                if gb < 0:
                    return ERR_NO_MODEL, k, x0, x1, w0, w1, rp
                b, x0 = _rans_get(x0, gb, dec, info)
                x0, w0 = _renorm(x0, w0, last0, words16)
                if rp + b > raw_limit:
                    return ERR_RAW_OVERRUN, k, x0, x1, w0, w1, rp
                cur += (np.int64(1) << b) + _raw_bits(words64, raw_base, rp, b)
                rp += b
                if cur >= id_limit:
                    return ERR_ID_RANGE if cur > 0xFFFFFFFF else ERR_LABEL_RULES, k, x0, x1, w0, w1, rp
                ids[_at(k + i)] = cur
                gb = gap_ctx[_at((1 + bit_length(cur)) * NUM_LCLASSES + lc)]
            if is_count:
                if implied:
                    c = count_sum - csum
                    if c < 1 or c > 255:
                        return ERR_COUNT_RANGE, k, x0, x1, w0, w1, rp
                    counts[_at(k + n - 1)] = c
                elif rounds >= 0 and csum != rounds:
                    return ERR_LABEL_RULES, k, x0, x1, w0, w1, rp
            k += n
        if w0 > end0 or w1 > end1:
            return ERR_RANS_OVERRUN, k, x0, x1, w0, w1, rp
        indptr[_at(p + 1)] = k
    return 0, k, x0, x1, w0, w1, rp

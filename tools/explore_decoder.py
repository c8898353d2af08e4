"""What limits the ``rans`` decoder: speed-only decoders of other designs, timed against the real one.

A random read of one ``rans`` sequence is ~2x a ``raw`` read, and nearly all of it is the decoder. This tool
asks which design change would make the decoder substantially faster, before anyone changes the format.
Each variant below is a *speed-only* decoder: it runs the loop of a candidate design over real ``rans``
records and real chunk tables, without error checks (reads are clamped instead). Decoding bytes written for
another design still yields realistic work, because rANS decoding of any bits draws symbols by the models'
probabilities: the number of labels per position, the gap buckets and counts follow the same distributions.
The output is labels decoded per second, not labels (only ``library`` decodes correctly).

- ``library``: ``RansCodec.decode`` with the label checks, as a read does.
- ``current``: today's loop without checks: one rANS state for L and gaps, one for counts, the gap's raw bits,
  the gap context from the previous id's bit length. ``current-gaps-only`` drops counts and raw bits.
- ``four-chains``: two gap states and two count states (labels alternate), each with its own word stream, and
  the gap context from the previous gap's bucket, so no step waits for the previous label's id.
  ``four-chains-gaps-only`` drops counts and raw bits.
- ``prefix-codes``: no rANS; an 8-bit peek of a bit stream indexes a 256-entry table (symbol, code length),
  gap codes and raw bits in one stream, counts in another (the tables are stand-ins of the same size).

    python tools/explore_decoder.py            # 64 sequences of 2,048 positions
    python tools/explore_decoder.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numba as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

from sparselabels import synthetic
from sparselabels.codecs import _rans_kernels as K
from sparselabels.codecs._rans_kernels import _at, bit_length, lclass_of
from sparselabels.codecs.base import ChunkInput
from sparselabels.codecs.rans import RansCodec

SCALE, BITS, LOW = K.PROB_SCALE, K.PROB_BITS, K.RANS_LOW
MAX_L = 40  # labels per position are capped so that a variant reading another design's bytes stays bounded


@nb.njit(inline="always")
def _get(x, ctx, dec, info):
    slot = x & (SCALE - 1)
    s = np.int64(dec[_at(ctx + slot)])
    fc = np.int64(info[_at((ctx >> 2) + (SCALE >> 2) + s)])
    return s, (fc & 0xFFFF) * (x >> BITS) + slot - (fc >> 16)


@nb.njit(inline="always")
def _renorm(x, w, last, words16):
    word = np.int64(words16[_at(min(w, last))])
    low = x < LOW
    return ((x << 16) | word) if low else x, w + np.int64(low)


@nb.njit(inline="always")
def _peek(raw, rp):
    """64 bits of the raw stream from bit ``rp``."""
    sh = np.uint64(rp & 63)
    return (raw[_at(rp >> 6)] >> sh) | ((raw[_at((rp + 63) >> 6)] << np.uint64(1)) << (np.uint64(63) - sh))


@nb.njit(inline="always")
def _low_bits(v, n):
    return np.int64(v & ((np.uint64(1) << np.uint64(n)) - np.uint64(1)))


@nb.njit(inline="always")
def _position(x, w, last, words16, l_ctx, dec, info):
    """A position's label count (capped) from stream state ``x``, and its lclass."""
    n, x = _get(x, l_ctx, dec, info)
    x, w = _renorm(x, w, last, words16)
    n = min(n, MAX_L)
    return n, lclass_of(max(n, 1)), x, w


@nb.njit(inline="always")
def _raw_and_count(raw, rp, raw_end, b, x, w, last, words16, cb, dec, info):
    """A label's tail: the gap's ``b`` raw bits (and the advanced bit position), and its count symbol."""
    bits = _low_bits(_peek(raw, rp), b)
    c, x = _get(x, cb, dec, info)
    x, w = _renorm(x, w, last, words16)
    return bits, min(rp + b, raw_end), c, x, w


@nb.njit(nogil=True)
def current(words16, raw, raw_end, T, gap_ctx, count_ctx, l_ctx, dec, info, ids, counts, gaps_only):
    last = words16.shape[0] - 1
    x0, x1, w0, w1, rp, k = np.int64(LOW + 7), np.int64(LOW + 9), np.int64(8), np.int64(last // 2), np.int64(0), 0
    for _ in range(T):
        n, lc, x0, w0 = _position(x0, w0, last, words16, l_ctx, dec, info)
        if k + n > ids.shape[0]:
            break
        gb, cb, cur = gap_ctx[lc], count_ctx[lc], np.int64(-1)
        for _ in range(n):
            b, x0 = _get(x0, gb, dec, info)
            x0, w0 = _renorm(x0, w0, last, words16)
            cur += np.int64(1) << b
            if not gaps_only:
                bits, rp, c, x1, w1 = _raw_and_count(raw, rp, raw_end, b, x1, w1, last, words16, cb, dec, info)
                cur += bits
                counts[_at(k)] = c
            ids[_at(k)] = cur
            gb = gap_ctx[_at(min(1 + bit_length(cur), K.NUM_ROWS - 1) * K.NUM_LCLASSES + lc)]
            k += 1
    return k


@nb.njit(nogil=True)
def four_chains(words16, raw, raw_end, T, gap_ctx, count_ctx, l_ctx, dec, info, ids, counts, gaps_only):
    last = words16.shape[0] - 1
    q = last // 4
    xa, xb, xc, xd = np.int64(LOW + 7), np.int64(LOW + 9), np.int64(LOW + 11), np.int64(LOW + 13)
    wa, wb, wc, wd, rp, k = np.int64(8), q, 2 * q, 3 * q, np.int64(0), 0
    for _ in range(T):
        n, lc, xa, wa = _position(xa, wa, last, words16, l_ctx, dec, info)
        if k + n > ids.shape[0]:
            break
        gb, cb, cur = gap_ctx[lc], count_ctx[lc], np.int64(-1)
        for i in range(0, n, 2):  # labels i (state b) and i + 1 (state a); the context is the previous bucket
            b0, xb = _get(xb, gb, dec, info)
            xb, wb = _renorm(xb, wb, last, words16)
            gb = gap_ctx[_at((1 + b0) * K.NUM_LCLASSES + lc)]
            cur += np.int64(1) << b0
            two = i + 1 < n
            if two:
                b1, xa = _get(xa, gb, dec, info)
                xa, wa = _renorm(xa, wa, last, words16)
                gb = gap_ctx[_at((1 + b1) * K.NUM_LCLASSES + lc)]
            if not gaps_only:
                bits, rp, c0, xc, wc = _raw_and_count(raw, rp, raw_end, b0, xc, wc, last, words16, cb, dec, info)
                cur += bits
                counts[_at(k)] = c0
            ids[_at(k)] = cur
            k += 1
            if two:
                cur += np.int64(1) << b1
                if not gaps_only:
                    bits, rp, c1, xd, wd = _raw_and_count(raw, rp, raw_end, b1, xd, wd, last, words16, cb, dec,
                                                          info)
                    cur += bits
                    counts[_at(k)] = c1
                ids[_at(k)] = cur
                k += 1
    return k


@nb.njit(nogil=True)
def prefix_codes(words16, raw, raw_end, T, gap_ctx, count_ctx, l_ctx, dec, info, ids, counts, gaps_only):
    rpa, rpb, k = np.int64(0), np.int64(raw_end // 2), 0
    for _ in range(T):
        n = np.int64(dec[_at(l_ctx + _low_bits(_peek(raw, rpa), 8))])
        rpa = min(rpa + 1 + (n & 7), raw_end)
        n = min(n, MAX_L)
        if k + n > ids.shape[0]:
            break
        lc = lclass_of(max(n, 1))
        gb, cb, cur = gap_ctx[lc], count_ctx[lc], np.int64(-1)
        for _ in range(n):
            v = _peek(raw, rpa)
            b = np.int64(dec[_at(gb + _low_bits(v, 8))])
            length = 1 + (b & 7)  # stand-in code length
            cur += (np.int64(1) << b) + _low_bits(v >> np.uint64(length), b)
            rpa = min(rpa + length + b, raw_end)
            ids[_at(k)] = cur
            gb = gap_ctx[_at(min(1 + bit_length(cur), K.NUM_ROWS - 1) * K.NUM_LCLASSES + lc)]
            c = np.int64(dec[_at(cb + _low_bits(_peek(raw, rpb), 8))])
            rpb = min(rpb + 1 + (c & 7), raw_end)
            counts[_at(k)] = c
            k += 1
    return k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchlib.add_common_args(parser, "explore_decoder")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    if args.quick:
        args.sequences, args.repeats = 4, 3
    ids, counts, indptr, lengths = synthetic.sample_labels(args.sequences, 2048, 50)
    sequences = synthetic.split_sequences(ids, counts, indptr, lengths)
    codec = RansCodec()
    encoded = codec.encode_chunk(ChunkInput.from_sequences(sequences, "count", 128_256))
    _, _, gap_ctx, count_ctx, l_ctx, dec, info = codec._parsed(encoded.table)
    # contexts without a model point at some model: the variants read bytes of another design
    fallback = int(gap_ctx[gap_ctx >= 0][0])
    gap_any = np.where(gap_ctx >= 0, gap_ctx, fallback)
    count_any = np.where(count_ctx >= 0, count_ctx, int(count_ctx[count_ctx >= 0][0]))
    offsets = np.concatenate([[0], np.cumsum(encoded.record_sizes)])
    records = [(np.ascontiguousarray(encoded.records[offsets[j] : offsets[j + 1]]), len(s[2]) - 1, len(s[0]))
               for j, s in enumerate(sequences)]

    def library(record, t, m):
        codec.decode(record, encoded.table, t, m, "count", vocab_size=128_256, rounds=50)
        return m

    def speed_only(kernel, gaps_only):
        def run(record, t, m):
            words64 = record.view("<u8")
            out_ids, out_counts = np.empty(m + 2 * MAX_L, np.uint32), np.empty(m + 2 * MAX_L, np.uint8)
            return kernel(words64.view("<u2"), words64, 64 * (words64.size - 1), t, gap_any, count_any, l_ctx, dec,
                          info, out_ids, out_counts, gaps_only)
        return run

    variants = {"library": library, "current": speed_only(current, False),
                "current-gaps-only": speed_only(current, True), "four-chains": speed_only(four_chains, False),
                "four-chains-gaps-only": speed_only(four_chains, True),
                "prefix-codes": speed_only(prefix_codes, False)}
    labels = {name: sum(fn(*r) for r in records) for name, fn in variants.items()}  # also compiles
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # variants take turns, so drift in machine speed hits all alike
        for name, fn in variants.items():
            start = time.thread_time()
            for r in records:
                fn(*r)
            seconds[name].append(time.thread_time() - start)
    base = min(seconds["current"]) / labels["current"]
    rows = [{"variant": name, "labels": labels[name],
             "ns_per_label_min": min(seconds[name]) / labels[name] * 1e9,
             "ns_per_label_median": statistics.median(seconds[name]) / labels[name] * 1e9,
             "vs_current": min(seconds[name]) / labels[name] / base} for name in variants]
    benchlib.print_table(rows, ["variant", "labels", "ns_per_label_min", "ns_per_label_median", "vs_current"],
                         title=f"{args.sequences} x 2,048 positions, N=50; thread CPU time, {args.repeats} turns")
    benchlib.write_json(args.out, {"benchmark": "explore_decoder", "sequences": args.sequences,
                                   "labels_in_workload": int(ids.size), "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()

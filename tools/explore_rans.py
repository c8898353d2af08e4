"""How the ``rans`` codec's design was chosen: code lengths of candidate layouts on the synthetic workload.

For each way of coding ids (sorted, so as gaps), counts and labels-per-position (L), this computes the bytes
per position it would take on RS-KD labels (N = 50, 2,048-position sequences): exactly for fixed codes
(Elias-gamma, Rice with a per-position parameter, fixed-width fields), and as the ideal static entropy
``sum(-log2 p)`` of a per-chunk model plus an estimate of the model's table for entropy-coded ones
(rANS gets within ~0.1% of that; see the ``rans (actual)`` row, which encodes for real).

    python tools/explore_rans.py            # 256 sequences (524,288 positions)
    python tools/explore_rans.py --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

from sparselabels import synthetic
from sparselabels.codecs.base import ChunkInput
from sparselabels.codecs.rans import RansCodec

TABLE_BITS_PER_ENTRY = 10  # estimated cost of one (context, symbol) frequency in a per-chunk table


def bit_length(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    out = np.zeros(x.shape, dtype=np.int64)
    nz = x > 0
    out[nz] = np.floor(np.log2(x[nz])).astype(np.int64) + 1
    return out


def entropy_bits(symbols, contexts, chunk_of_label, num_chunks) -> float:
    """Ideal code length of ``symbols`` under static per-(chunk, context) models, plus table estimates."""
    key = (chunk_of_label * (int(contexts.max()) + 1) + contexts) * 1024 + symbols
    _, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    ctx_key = chunk_of_label * (int(contexts.max()) + 1) + contexts
    _, cinv, ccnt = np.unique(ctx_key, return_inverse=True, return_counts=True)
    return float(-np.log2(cnt[inv] / ccnt[cinv]).sum()) + TABLE_BITS_PER_ENTRY * cnt.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchlib.add_common_args(parser, "explore_rans")
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--chunk-sequences", type=int, default=8, help="sequences per chunk (8 = a small flush)")
    args = parser.parse_args()
    if args.quick:
        args.sequences = 16
    ids, counts, indptr, lengths = synthetic.sample_labels(args.sequences, 2048, 50)
    P, M, V = indptr.size - 1, ids.size, 128_256
    L = np.diff(indptr)
    pos = np.repeat(np.arange(P), L)
    first = np.zeros(M, bool)
    first[indptr[:-1][L > 0]] = True
    last = np.zeros(M, bool)
    last[indptr[1:][L > 0] - 1] = True
    prev = np.where(first, -1, np.concatenate([[-1], ids[:-1].astype(np.int64)]))
    gap = ids.astype(np.int64) - prev - 1
    bucket = bit_length(gap + 1) - 1  # gap + 1 = 2^bucket + mantissa
    mantissa_bits = float(bucket.sum())
    lclass = np.minimum(bit_length(L[pos] - 1), 7)
    row = np.where(first, 0, 1 + bit_length(np.maximum(prev, 0)))
    chunk_positions = args.chunk_sequences * 2048
    chunk_label = pos // chunk_positions
    chunk_pos = np.arange(P) // chunk_positions
    n_chunks = int(chunk_pos.max()) + 1

    ids_rows = {
        "fixed 17-bit ids (paper)": 17.0 * M,
        "Elias-gamma gaps": float((2 * bucket + 1).sum()),
        "Rice gaps, k = log2(V / (L+1)) per position": float(
            ((gap >> (k := np.floor(np.log2(np.maximum(V / (L[pos] + 1), 1))).astype(np.int64))) + 1 + k).sum()
        ),
        "bucket entropy-coded, no context": entropy_bits(bucket, np.zeros(M, np.int64), chunk_label, n_chunks)
        + mantissa_bits,
        "bucket | L": entropy_bits(bucket, np.minimum(L[pos], 63), chunk_label, n_chunks) + mantissa_bits,
        "bucket | previous id's bit length": entropy_bits(bucket, row, chunk_label, n_chunks) + mantissa_bits,
        "bucket | previous bucket": entropy_bits(
            bucket, np.where(first, 40, np.concatenate([[0], bucket[:-1]])), chunk_label, n_chunks
        ) + mantissa_bits,
        "bucket | (label index, lclass)": entropy_bits(
            bucket, np.minimum(np.arange(M) - indptr[:-1][pos], 47) * 8 + lclass, chunk_label, n_chunks
        ) + mantissa_bits,
        "bucket | (previous id's bit length, lclass)  [chosen]": entropy_bits(
            bucket, row * 8 + lclass, chunk_label, n_chunks
        ) + mantissa_bits,
    }
    count_rows = {
        "7-bit counts (paper)": 7.0 * M,
        "Elias-gamma counts": float((2 * bit_length(counts) - 1).sum()),
        "gamma, last count implied by N": float((2 * bit_length(counts) - 1)[~last].sum()),
        "entropy-coded, all counts": entropy_bits(counts, np.zeros(M, np.int64), chunk_label, n_chunks),
        "entropy-coded | lclass, last implied  [chosen]": entropy_bits(
            counts[~last], lclass[~last], chunk_label[~last], n_chunks
        ),
    }
    l_rows = {
        "fixed 8-bit L": 8.0 * P,
        "entropy-coded L  [chosen]": entropy_bits(L, np.zeros(P, np.int64), chunk_pos, n_chunks),
    }
    rows = []
    for part, table in (("ids", ids_rows), ("counts", count_rows), ("labels/position", l_rows)):
        for name, bits in table.items():
            rows.append({"part": part, "scheme": name, "bits_per_label": bits / M, "bytes_per_position": bits / 8 / P})
    seqs = synthetic.split_sequences(ids, counts, indptr, lengths)
    actual = 0
    for lo in range(0, len(seqs), args.chunk_sequences):
        group = seqs[lo : lo + args.chunk_sequences]
        encoded = RansCodec().encode_chunk(ChunkInput.from_sequences(group, "count", V))
        actual += encoded.table.size + encoded.records.size
    rows.append({"part": "all", "scheme": "rans (actual records + tables)", "bits_per_label": 8 * actual / M,
                 "bytes_per_position": actual / P})
    benchlib.print_table(rows, ["part", "scheme", "bits_per_label", "bytes_per_position"],
                         title=f"{P:,} positions, {M / P:.2f} labels/position, chunks of {chunk_positions:,} positions")
    sensitivity = id_order_sensitivity(max(2, args.sequences // 16))
    benchlib.print_table(sensitivity, ["id_order", "id_scatter", "bytes_per_position"],
                         title="rans bytes/position (whole file) against how loosely ids follow token frequency")
    benchlib.write_json(args.out, {"benchmark": "explore_rans", "positions": int(P), "labels": int(M),
                                   "chunk_positions": chunk_positions, "rows": rows,
                                   "id_order_sensitivity": sensitivity})


def id_order_sensitivity(num_sequences: int) -> list[dict]:
    """Whole-file rans size when frequent tokens sit at low ids exactly, loosely (the default), or not at all.

    BPE vocabularies give frequent tokens low ids, loosely; the codec's gap coding profits from that, so this
    shows how much the size depends on it (``id_scatter``: the generator's noise on the frequency-to-id order).
    """
    import tempfile

    import sparselabels as sl

    rows = []
    cases = [("exact frequency order", 0.0), ("loose", 0.75), ("loose (default)", 1.5), ("looser", 3.0),
             ("random", 1e6)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, scatter in cases:
            model = synthetic.TeacherModel(id_scatter=scatter)
            ids, counts, indptr, lengths = synthetic.sample_labels(num_sequences, 2048, 50, model=model)
            path = Path(tmp) / "s.slbl"
            with sl.LabelWriter(path, vocab_size=model.vocab_size, rounds=50, codec="rans", overwrite=True) as w:
                for seq in synthetic.split_sequences(ids, counts, indptr, lengths):
                    w.write(*seq)
            rows.append({"id_order": name, "id_scatter": scatter,
                         "bytes_per_position": path.stat().st_size / (indptr.size - 1)})
    return rows


if __name__ == "__main__":
    main()

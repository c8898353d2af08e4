"""Packing efficiency against padding on ragged corpora: the share of row slots that hold real tokens.

For each corpus (document lengths drawn from a distribution, clipped to ``seq_len``) and ``seq_len``:

* ``packed``: :func:`sparselabels.data.packing.plan_rows` (best-fit decreasing, whole documents);
* ``pad_to_seq_len``: one document per row of ``seq_len`` (fixed shapes, what a static-shape loop does);
* ``pad_to_longest``: batches of ``--batch-size`` documents in a random order, each padded to its longest
  (what ``collate`` does unpacked);
* ``pad_to_longest_sorted``: the same over length-sorted batches (bucketing; changes the data order).

Efficiency = real tokens / slots; 1 / efficiency is the compute multiplier padding costs. Also the planning time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from benchlib import add_common_args, print_table, write_json

from sparselabels.data.packing import plan_rows


def corpus(kind: str, n: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "chat-lognormal":  # conversations: median ~ seq_len / 8, a long tail
        lengths = rng.lognormal(np.log(seq_len / 8), 0.9, size=n)
    elif kind == "web-pareto":  # web documents: many short, a few up to seq_len
        lengths = (rng.pareto(1.2, size=n) + 1) * seq_len / 20
    elif kind == "uniform":
        lengths = rng.uniform(1, seq_len, size=n)
    else:
        raise ValueError(kind)
    return np.clip(lengths.astype(np.int64), 1, seq_len)


def padded_longest(lengths: np.ndarray, batch_size: int) -> float:
    slots = sum(len(b) * int(b.max()) for b in np.array_split(lengths, max(1, -(-len(lengths) // batch_size))))
    return float(lengths.sum()) / slots


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "bench_packing")
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.documents, args.seq_lens = 2000, [1024]
    rows = []
    for seq_len in args.seq_lens:
        for kind in ("chat-lognormal", "web-pareto", "uniform"):
            lengths = corpus(kind, args.documents, seq_len, np.random.default_rng(args.seed))
            start = time.perf_counter()
            plan = plan_rows(lengths, seq_len)
            plan_s = time.perf_counter() - start
            tokens = int(lengths.sum())
            rows.append({
                "corpus": kind, "seq_len": seq_len, "documents": int(lengths.size),
                "mean_length": tokens / lengths.size,
                "rows": len(plan), "packed": tokens / (len(plan) * seq_len),
                "pad_to_seq_len": tokens / (lengths.size * seq_len),
                "pad_to_longest": padded_longest(lengths, args.batch_size),
                "pad_to_longest_sorted": padded_longest(np.sort(lengths), args.batch_size),
                "plan_seconds": plan_s,
            })
    print_table(rows, ["corpus", "seq_len", "documents", "mean_length", "rows", "packed", "pad_to_seq_len",
                       "pad_to_longest", "pad_to_longest_sorted", "plan_seconds"],
                title=f"real tokens / slots (batch size {args.batch_size} for padding to the longest)")
    payload = {"benchmark": "bench_packing", "batch_size": args.batch_size, "seed": args.seed, "results": rows}
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()

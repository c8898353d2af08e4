"""Write and read throughput of the raw codec, with np.save / np.load of the same arrays as the baseline.

Workload: LM-like RS-KD labels from ``sparselabels.synthetic`` (N = 50, ~12 labels per position), sequences
of 2,048 positions, at least 1M positions. Reported per method: write positions/s and MB/s (file bytes per
second, fsync included), read positions/s for every sequence in order and in random order (warm page cache,
and cold: the file evicted with POSIX_FADV_DONTNEED before the pass), and bytes per position on disk.

    python tools/bench_io.py            # full size
    python tools/bench_io.py --quick    # seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

import sparselabels as sl
from sparselabels import synthetic


def bench_library(directory: Path, ids, counts, indptr, lengths, order, repeats: int) -> dict:
    path = directory / "labels.slbl"

    def write():  # cutting the arrays into sequences is part of what is timed, as for np.save's single call
        with sl.LabelWriter(path, vocab_size=128256, rounds=50, codec="raw", overwrite=True) as w:
            for sequence in synthetic.split_sequences(ids, counts, indptr, lengths):
                w.write(*sequence)

    write_times = benchlib.time_call(write, repeats=repeats, warmup=0)
    size = path.stat().st_size
    f = sl.open_labels(path)
    codec = f.metadata["codec"]  # recorded: the row is named after it

    def read(seq_order, check=True):
        def run():
            total = 0
            for i in seq_order:
                s = f.read(int(i), check=check)
                total += s.indptr.shape[0]
            return total
        return run

    result = {"bytes": size, "codec": codec, "write_s": write_times}
    for name, seq_order in (("sequential", np.arange(lengths.size)), ("random", order)):
        result[f"read_{name}_s"] = benchlib.time_call(read(seq_order), repeats=repeats)
        result[f"read_{name}_unchecked_s"] = benchlib.time_call(read(seq_order, check=False), repeats=repeats)

    def cold():
        benchlib.evict(path)
        g = sl.open_labels(path)
        for i in order:
            g[int(i)]
        g.close()

    result["read_random_cold_s"] = benchlib.time_call(cold, repeats=repeats, warmup=0)
    f.close()
    return result


def bench_numpy(directory: Path, ids, counts, indptr, lengths, order, repeats: int) -> dict:
    starts = np.concatenate([[0], np.cumsum(lengths)])
    names = {"ids": ids, "counts": counts, "indptr": indptr}
    paths = {k: directory / f"{k}.npy" for k in names}

    def write():
        for k, arr in names.items():
            with open(paths[k], "wb") as fh:
                np.save(fh, arr)
                fh.flush()
                os.fsync(fh.fileno())

    write_times = benchlib.time_call(write, repeats=repeats, warmup=0)
    size = sum(p.stat().st_size for p in paths.values())

    def load_all():
        for p in paths.values():
            np.load(p)

    def read(seq_order):
        def run():
            a_ids = np.load(paths["ids"], mmap_mode="r")
            a_counts = np.load(paths["counts"], mmap_mode="r")
            a_indptr = np.load(paths["indptr"], mmap_mode="r")
            for i in seq_order:
                a, b = starts[i], starts[i + 1]
                lo, hi = a_indptr[a], a_indptr[b]
                _ = (a_ids[lo:hi], a_counts[lo:hi], a_indptr[a : b + 1] - lo)
        return run

    def cold():
        benchlib.evict(*paths.values())
        read(order)()

    return {
        "bytes": size,
        "write_s": write_times,
        "load_all_s": benchlib.time_call(load_all, repeats=repeats),
        "read_sequential_s": benchlib.time_call(read(np.arange(lengths.size)), repeats=repeats),
        "read_random_s": benchlib.time_call(read(order), repeats=repeats),
        "read_random_cold_s": benchlib.time_call(cold, repeats=repeats, warmup=0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchlib.add_common_args(parser, "bench_io")
    parser.add_argument("--positions", type=int, default=1_000_000, help="at least this many positions")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, help="where to write the files (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.quick:
        args.positions, args.repeats = 20_000, 2
    num_seq = -(-args.positions // args.seq_len)
    t0 = time.perf_counter()
    ids, counts, indptr, lengths = synthetic.sample_labels(num_seq, args.seq_len, rounds=50)
    print(f"generated {indptr.size - 1:,} positions, {ids.size:,} labels in {time.perf_counter() - t0:.1f}s "
          f"({ids.size / (indptr.size - 1):.2f} labels/position)")
    order = np.random.default_rng(0).permutation(num_seq)
    directory = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        lib = bench_library(directory, ids, counts, indptr, lengths, order, args.repeats)
        npy = bench_numpy(directory, ids, counts, indptr, lengths, order, args.repeats)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    positions = int(indptr.size - 1)
    med = benchlib.median
    rows = []
    for name, r in (("sparselabels raw", lib), ("np.save / np.load(mmap)", npy)):
        rows.append({
            "method": name,
            "bytes/pos": r["bytes"] / positions,
            "write Mpos/s": positions / med(r["write_s"]) / 1e6,
            "write MB/s": r["bytes"] / med(r["write_s"]) / 1e6,
            "read seq Mpos/s": positions / med(r["read_sequential_s"]) / 1e6,
            "read rand Mpos/s": positions / med(r["read_random_s"]) / 1e6,
            "read rand cold Mpos/s": positions / med(r["read_random_cold_s"]) / 1e6,
        })
    rows[0]["read rand unchecked Mpos/s"] = positions / med(lib["read_random_unchecked_s"]) / 1e6
    columns = ["method", "bytes/pos", "write Mpos/s", "write MB/s", "read seq Mpos/s", "read rand Mpos/s",
               "read rand unchecked Mpos/s", "read rand cold Mpos/s"]
    benchlib.print_table(rows, columns, title=f"{positions:,} positions, {ids.size / positions:.2f} labels/position, "
                         f"sequences of {args.seq_len}, median of {args.repeats}")
    print(f"\nnp.load of all arrays into memory: {positions / med(npy['load_all_s']) / 1e6:.1f} Mpos/s")
    ratios = {
        "write_speed_vs_numpy": med(npy["write_s"]) / med(lib["write_s"]),
        "random_read_speed_vs_numpy_mmap": med(npy["read_random_s"]) / med(lib["read_random_s"]),
        "bytes_vs_numpy": lib["bytes"] / npy["bytes"],
    }
    print("ratios (>1: sparselabels faster / larger):", {k: round(v, 3) for k, v in ratios.items()})
    benchlib.write_json(args.out, {
        "benchmark": "bench_io", "positions": positions, "labels": int(ids.size), "seq_len": args.seq_len,
        "repeats": args.repeats, "rows": rows, "ratios": ratios, "raw_seconds": {"sparselabels": lib, "numpy": npy},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())

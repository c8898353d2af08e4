"""Bytes per position and single-core speed of the codecs, with the paper's packing and zstd as baselines.

Workload: LM-like RS-KD labels from ``sparselabels.synthetic`` (N = 50, ~12 labels per position), sequences
of 2,048 positions, >= 1M positions (512 sequences) unless ``--quick``. Rows:

- ``raw`` and ``rans``: real files written with ``LabelWriter`` (16 MiB chunks); bytes per position count the
  whole file (header, metadata, chunk headers, tables, records, index, footer). Encode: ``encode_chunk`` on
  the writer's chunks; decode: ``decode`` of every record to CSR arrays; both single-threaded, throughput
  from the thread's CPU time (so other load on the machine does not count), median of repeats.
- ``paper-3B``: the paper's fixed packing, 3 bytes per label (17-bit id, 7-bit count), computed; no index.
- ``zstd-L``: zstandard at level L over each chunk's raw arrays (labels-per-position, ids, counts), plus a
  16-byte index entry per chunk; no random access below a chunk (~16 MiB of input).
- random access: the time to read one random sequence (``f[i]``, label checks included) from the file,
  warm (memory-mapped, in the page cache; wall and thread CPU time) and cold (positioned reads after
  evicting the file with POSIX_FADV_DONTNEED; wall time), median over the same random sequences for both
  codecs. The two codecs read each sequence back to back (taking turns at going first), and
  ``*_pair_ratio`` is the median of those per-sequence ratios to raw: the machine's speed drifts during a
  run, and this way the drift hits both codecs alike.

    python tools/bench_codec.py            # full size, writes tools/results/bench_codec.json
    python tools/bench_codec.py --quick    # seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

import sparselabels as sl
from sparselabels import synthetic
from sparselabels.codecs import get_codec
from sparselabels.codecs.base import ChunkInput
from sparselabels.io.writer import DEFAULT_CHUNK_BYTES as CHUNK_BYTES


def cpu_times(fn, repeats: int, warmup: bool = True) -> list[float]:
    """Thread CPU seconds of ``repeats`` calls (after one warm-up call)."""
    return benchlib.time_call(fn, repeats=repeats, warmup=int(warmup), clock=time.thread_time)


def writer_chunks(sequences, value_kind="count", vocab_size=128_256) -> list[ChunkInput]:
    """The ChunkInputs the writer would hand to a codec (sequences grouped until 16 MiB of input)."""
    chunks, group, nbytes = [], [], 0
    for seq in sequences:
        group.append(seq)
        nbytes += 5 * len(seq[0]) + 4 * (len(seq[2]) - 1) + 32  # the writer's measure, for 1-byte counts
        if nbytes >= CHUNK_BYTES:
            chunks.append(group)
            group, nbytes = [], 0
    if group:
        chunks.append(group)
    return [ChunkInput.from_sequences(group, value_kind, vocab_size) for group in chunks]


def random_reads(paths: dict, order, *, cold: bool) -> dict:
    """Per codec, the wall and thread-CPU seconds of reading each sequence of ``order`` once (cold: the file
    evicted before each read). The codecs take turns on the same sequence (which one goes first alternates),
    so a change in machine speed during the run hits both alike."""
    times = {name: ([], []) for name in paths}
    files = {name: sl.open_labels(path, mmap=not cold) for name, path in paths.items()}
    try:
        for f in files.values():
            f[int(order[0])]  # warm-up: compile, open
        names = list(paths)
        for k, i in enumerate(order):
            for name in names if k % 2 == 0 else names[::-1]:
                if cold:
                    benchlib.evict(paths[name])
                start, start_cpu = time.perf_counter(), time.thread_time()
                files[name][int(i)]
                times[name][1].append(time.thread_time() - start_cpu)
                times[name][0].append(time.perf_counter() - start)
    finally:
        for f in files.values():
            f.close()
    return times


def bench_codec(name, sequences, chunks, num_positions, path, args) -> dict:
    codec = get_codec(name)
    start = time.perf_counter()
    with sl.LabelWriter(path, vocab_size=128_256, rounds=args.rounds, codec=name, durable=False) as w:
        for s in sequences:
            w.write(*s)
    write_wall = time.perf_counter() - start
    file_bytes = path.stat().st_size
    encoded = [codec.encode_chunk(c) for c in chunks]
    enc = cpu_times(lambda: [codec.encode_chunk(c) for c in chunks], args.repeats)
    records = []
    for chunk, e in zip(chunks, encoded, strict=True):
        offsets = np.concatenate([[0], np.cumsum(e.record_sizes)])
        for j in range(len(e.record_sizes)):
            records.append((e.records[offsets[j] : offsets[j + 1]], e.table, int(chunk.seq_positions[j]),
                            int(chunk.seq_labels[j])))

    def decode_all():
        for record, table, t, m in records:
            codec.decode(record, table, t, m, "count")

    dec = cpu_times(decode_all, args.repeats)
    with sl.open_labels(path) as f:
        seq_read = cpu_times(lambda: [f.read(i) for i in range(len(f))], 1)
    row = {
        "method": name,
        "bytes_per_position": file_bytes / num_positions,
        "file_bytes": file_bytes,
        "encode_Mpos_s": num_positions / statistics.median(enc) / 1e6,
        "decode_Mpos_s": num_positions / statistics.median(dec) / 1e6,
        "read_all_Mpos_s": num_positions / statistics.median(seq_read) / 1e6,
        "writer_wall_Mpos_s": num_positions / write_wall / 1e6,
    }
    return row


def bench_zstd(level, chunks, num_positions, args) -> dict:
    import zstandard

    blobs = [
        np.concatenate([c.labels_per_position.astype(np.uint8), c.ids.view(np.uint8), c.values.view(np.uint8)])
        .tobytes()
        for c in chunks
    ]
    comp = zstandard.ZstdCompressor(level=level)
    start = time.thread_time()
    frames = [comp.compress(b) for b in blobs]
    enc = [time.thread_time() - start]  # slow levels (~65 s a pass at 19 on 1M positions) are timed on this one pass
    if level < 10:  # fast ones: this pass was the warm-up
        enc = cpu_times(lambda: [comp.compress(b) for b in blobs], max(1, args.repeats // 2), warmup=False)
    dctx = zstandard.ZstdDecompressor()
    dec = cpu_times(lambda: [dctx.decompress(f) for f in frames], args.repeats)
    total = sum(len(f) for f in frames) + 16 * len(frames)
    return {
        "method": f"zstd-{level}",
        "bytes_per_position": total / num_positions,
        "file_bytes": total,
        "encode_Mpos_s": num_positions / statistics.median(enc) / 1e6,
        "decode_Mpos_s": num_positions / statistics.median(dec) / 1e6,
        "note": "whole-chunk frames: reading one sequence decompresses its whole ~16 MiB chunk",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchlib.add_common_args(parser, "bench_codec")
    parser.add_argument("--sequences", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--random-reads", type=int, default=200)
    parser.add_argument("--zstd-levels", default="3,19")
    args = parser.parse_args()
    if args.quick:
        args.sequences, args.repeats, args.random_reads = 8, 2, 10
    start = time.perf_counter()
    ids, counts, indptr, lengths = synthetic.sample_labels(args.sequences, args.seq_len, args.rounds)
    gen_seconds = time.perf_counter() - start
    sequences = synthetic.split_sequences(ids, counts, indptr, lengths)
    num_positions, num_labels = int(indptr.size - 1), int(ids.size)
    chunks = writer_chunks(sequences)
    order = np.random.default_rng(0).integers(0, len(sequences), size=args.random_reads)
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMPDIR")) as tmp:
        paths = {name: Path(tmp) / f"{name}.slbl" for name in ("raw", "rans")}
        for name, path in paths.items():
            rows.append(bench_codec(name, sequences, chunks, num_positions, path, args))
        warm = random_reads(paths, order, cold=False)
        cold = random_reads(paths, order, cold=True)
    for row in rows:
        wall, cpu = warm[row["method"]]
        row["random_read_warm_us"] = statistics.median(wall) * 1e6
        row["random_read_warm_cpu_us"] = statistics.median(cpu) * 1e6
        row["random_read_cold_us"] = statistics.median(cold[row["method"]][0]) * 1e6
        # the median of per-sequence ratios: each pair was read back to back, so drift cancels
        for key, times in (("warm", warm), ("cold", cold)):
            row[f"random_read_{key}_pair_ratio"] = statistics.median(
                np.array(times[row["method"]][0]) / np.array(times["raw"][0]))
    rows.append({
        "method": "paper-3B",
        "bytes_per_position": 3 * num_labels / num_positions,
        "note": "computed: 3 bytes per label, no index, no lengths",
    })
    for level in (int(x) for x in args.zstd_levels.split(",") if x):
        rows.append(bench_zstd(level, chunks, num_positions, args))
    raw = rows[0]
    for row in rows:
        row["size_vs_raw"] = row["bytes_per_position"] / raw["bytes_per_position"]
        for key in ("random_read_warm_us", "random_read_warm_cpu_us", "random_read_cold_us"):
            if key in row:
                row[key.replace("_us", "_vs_raw")] = row[key] / raw[key]
    benchlib.print_table(
        rows,
        ["method", "bytes_per_position", "size_vs_raw", "encode_Mpos_s", "decode_Mpos_s", "read_all_Mpos_s",
         "random_read_warm_us", "random_read_warm_vs_raw", "random_read_warm_pair_ratio",
         "random_read_warm_cpu_us", "random_read_warm_cpu_vs_raw",
         "random_read_cold_us", "random_read_cold_vs_raw", "random_read_cold_pair_ratio"],
        title=(f"{num_positions:,} positions, {num_labels / num_positions:.2f} labels/position, N={args.rounds}; "
               "throughput per core (thread CPU time), random reads in wall time (median)"),
    )
    benchlib.write_json(args.out, {
        "benchmark": "bench_codec",
        "workload": {
            "generator": "sparselabels.synthetic.sample_labels (default TeacherModel)",
            "sequences": args.sequences, "seq_len": args.seq_len, "rounds": args.rounds,
            "positions": num_positions, "labels": num_labels, "labels_per_position": num_labels / num_positions,
            "generate_seconds": gen_seconds,
        },
        "settings": {"repeats": args.repeats, "random_reads": args.random_reads, "chunk_bytes": CHUNK_BYTES,
                     "quick": args.quick},
        "rows": rows,
    })


if __name__ == "__main__":
    main()

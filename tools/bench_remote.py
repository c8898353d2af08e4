"""Remote reads: random 16 x 2,048 batches from a local S3 server with a delay added to every request, against
the same store on local disk and against naive per-record GETs, in one run.

The store (``sparselabels.synthetic`` labels, sequences of 2,048 positions, rans codec, several shards and a
manifest) is uploaded to moto's S3 server on localhost; every request to it goes through a small asyncio TCP
proxy that holds it ``--latency`` seconds (20 ms by default: a cross-zone object store), so the numbers show
how much of the latency the reader hides. Every mode reads the same batches, an epoch in a random order (each
sequence once), with ``read_many`` (the dataset's ``__getitems__``), in one process:

* ``local``: the store on local disk (memory-mapped; the page cache is warm);
* ``remote, batched``: each batch's records fetched concurrently and coalesced, one batch at a time;
* ``remote, pipelined``: as above, with the fetches of the next ``--depth`` batches (default 4) started
  (``prefetch``) before this batch is decoded, as a loader running a few batches ahead of training does (a
  DataLoader's workers and ``prefetch_factor``); the target row;
* ``remote, naive``: one GET per record and per table, one at a time, no cache (a reader without coalescing,
  concurrency or caching; a few batches only, it is slow);
* ``remote, cached 2nd epoch``: a fresh open of the store with ``cache_dir`` after a first epoch filled the
  cache, as a new epoch's DataLoader workers see it (shard opens included).

Positions/s = positions read / wall seconds of the epoch. Targets: >= 1M positions/s pipelined with 20 ms per
request; the cached second epoch within 1.5x of the local time. moto reads a whole object per GET, so the
shards are kept small; a real object store serves ranges without that cost.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from benchlib import add_common_args, print_table, write_json
from s3_server import DelayProxy, MotoServer

import sparselabels as sl
from sparselabels.synthetic import TeacherModel, sample_labels, split_sequences

SEQ_LEN = 2048
BATCH = 16
TARGET_POSITIONS_PER_S = 1e6
TARGET_CACHED_RATIO = 1.5


def build_store(directory: Path, num_sequences: int, shards: int, seed: int) -> Path:
    directory.mkdir(parents=True)
    ids, counts, indptr, lengths = sample_labels(num_sequences, SEQ_LEN, 50, model=TeacherModel(seed=seed))
    seqs = split_sequences(ids, counts, indptr, lengths)
    per = -(-num_sequences // shards)
    for k in range(shards):
        with sl.LabelWriter(directory / f"part-{k:03d}.slbl", vocab_size=128_256, rounds=50, durable=False) as w:
            for a, b, c in seqs[k * per : (k + 1) * per]:
                w.write(a, b, c)
    sl.write_manifest(directory / "manifest.json", sorted(directory.glob("*.slbl")))
    return directory


def epoch(labels, batches: list[list[int]], *, depth: int = 0) -> float:
    """Wall seconds to read every batch with ``read_many``, the batches ``depth`` ahead already being fetched
    (``prefetch``), as a loader a few batches ahead of training does."""
    start = time.perf_counter()
    for k in range(min(depth, len(batches))):
        labels.prefetch(batches[k])
    for k, batch in enumerate(batches):
        if depth and k + depth < len(batches):
            labels.prefetch(batches[k + depth])
        labels.read_many(batch)
    return time.perf_counter() - start


def naive(labels, batches: list[list[int]]) -> float:
    start = time.perf_counter()
    for batch in batches:
        for i in batch:
            labels.read(i)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=1024, help="sequences of 2,048 positions (default 1024)")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds added to every request (default 0.02)")
    parser.add_argument("--naive-batches", type=int, default=4)
    parser.add_argument("--depth", type=int, default=4, help="batches fetched ahead when pipelined (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    add_common_args(parser, "bench_remote")
    args = parser.parse_args()
    if args.quick:
        args.sequences, args.shards, args.naive_batches = 128, 4, 1

    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    server = MotoServer()
    proxy = DelayProxy(server.port, args.latency)
    try:
        store = build_store(work / "store", args.sequences, args.shards, args.seed)
        import s3fs

        direct = s3fs.S3FileSystem(**server.storage_options())
        direct.mkdir("bench")
        for p in sorted(store.iterdir()):
            direct.put_file(str(p), f"bench/store/{p.name}")
        url, options = "s3://bench/store/", server.storage_options(proxy.endpoint)
        order = np.random.default_rng(args.seed).permutation(args.sequences)
        batches = [order[k : k + BATCH].tolist() for k in range(0, len(order), BATCH)]
        positions = args.sequences * SEQ_LEN

        local = sl.open_labels(store)
        epoch(local, batches[:2])  # opens every shard, compiles the decoder
        t_local = epoch(local, batches)
        rows = [{"mode": "local disk", "seconds": t_local, "positions_per_s": positions / t_local}]

        for name, depth in (("remote, batched", 0), (f"remote, pipelined ({args.depth} batches ahead)", args.depth)):
            before = proxy.requests
            t = epoch(sl.open_labels(url, storage_options=options), batches, depth=depth)
            rows.append({"mode": name, "seconds": t, "positions_per_s": positions / t,
                         "requests": proxy.requests - before})

        before = proxy.requests
        slow = sl.open_labels(url, storage_options=options, concurrency=1, memory_bytes=0)
        slow.read_many(batches[0][:1])  # the shard open is not what this row measures
        some = batches[: args.naive_batches]
        t = naive(slow, some)
        n = sum(len(b) for b in some) * SEQ_LEN
        rows.append({"mode": "remote, naive per-record GETs", "seconds": t, "positions_per_s": n / t,
                     "requests": proxy.requests - before})

        cache = work / "cache"
        epoch(sl.open_labels(url, storage_options=options, cache_dir=cache), batches, depth=args.depth)
        before = proxy.requests
        t_cached = epoch(sl.open_labels(url, storage_options=options, cache_dir=cache), batches, depth=args.depth)
        rows.append({"mode": "remote, cached 2nd epoch (cache_dir)", "seconds": t_cached,
                     "positions_per_s": positions / t_cached, "requests": proxy.requests - before})
    finally:
        proxy.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print_table(rows, ["mode", "seconds", "positions_per_s", "requests"],
                title=f"{args.sequences} x {SEQ_LEN} positions, {args.shards} shards, batches of {BATCH}, "
                      f"{args.latency * 1000:.0f} ms per request")
    pipelined_rate = rows[2]["positions_per_s"]
    ratio = t_cached / t_local
    goals = {
        "pipelined_positions_per_s": {"target": f">= {TARGET_POSITIONS_PER_S:.0f}", "value": pipelined_rate,
                                      "met": pipelined_rate >= TARGET_POSITIONS_PER_S},
        "cached_epoch_vs_local": {"target": f"<= {TARGET_CACHED_RATIO}x", "value": ratio,
                                  "met": ratio <= TARGET_CACHED_RATIO},
    }
    for name, goal in goals.items():
        print(f"{name}: {goal['value']:,.2f} (target {goal['target']}): {'met' if goal['met'] else 'NOT met'}")
    write_json(args.out, {"benchmark": "bench_remote", "sequences": args.sequences, "seq_len": SEQ_LEN,
                          "batch": BATCH, "shards": args.shards, "latency_s": args.latency, "depth": args.depth,
                          "quick": args.quick,
                          "rows": rows, "goals": goals})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

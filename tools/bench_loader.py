"""Loader throughput: random batches of padded sparse targets, sparselabels vs a Hugging Face datasets column.

Builds a label file of >= 1M positions (sequences of 2,048 positions, ~12 labels each, from
``sparselabels.synthetic``) in every available codec, then measures positions/s of random batches of
16 x 2,048 positions turned into ``target_ids``/``target_weights [B, T, K]``:

* ``SparseLabelDataset`` + ``collate`` in one process (one core: torch and numba use one thread), and through a
  ``DataLoader`` with 2 workers;
* the baseline, in the same run: the same labels stored as a ``datasets`` column pair
  ``ids: list<list<uint32>>``, ``counts: list<list<uint8>>`` (memory-mapped Arrow), rows read by random index
  and padded the usual way (a Python loop over positions filling numpy arrays), with Python-list rows and
  with numpy-formatted rows; the faster of the two is the baseline.

Positions/s = B x T / median seconds per batch (single process), or batches x B x T / wall time (workers); the
single-process rows also give the median CPU time of the measuring thread, which a busy machine does not inflate
(much). The "fresh shared memory" row is a floor for any DataLoader worker: the time to allocate and write one
batch's bytes in new shared memory, which every worker pays to hand a batch over (default_collate included).
The first batch of ours is checked equal to the baseline's, so both sides compute the same thing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import add_common_args, median, print_table, time_call, write_json

import sparselabels as sl
from sparselabels.codecs import available
from sparselabels.data import SparseLabelDataset, collate
from sparselabels.errors import SparseLabelsError
from sparselabels.synthetic import sample_labels, split_sequences

TARGET_RATIO = 20.0
TARGET_RAW_POSITIONS_PER_S = 5e6


def build_labels(num_sequences: int, seq_len: int, rounds: int, seed: int):
    model = sl.synthetic.TeacherModel(seed=seed)
    return sample_labels(num_sequences, seq_len, rounds, model=model)


def write_file(path: Path, csr, codec: str, rounds: int) -> Path:
    ids, counts, indptr, lengths = csr
    with sl.LabelWriter(path, vocab_size=128_256, rounds=rounds, codec=codec, overwrite=True, durable=False) as w:
        for a, b, c in split_sequences(ids, counts, indptr, lengths):
            w.write(a, b, c)
    return path


def write_hf(directory: Path, csr):
    """The same labels as a memory-mapped ``datasets`` table: ids/counts as list<list<...>> columns."""
    import datasets
    import pyarrow as pa

    ids, counts, indptr, lengths = csr
    pos_offsets = pa.array(indptr.astype(np.int32))  # < 2**31 labels in the benchmark file
    seq_offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    ids_col = pa.ListArray.from_arrays(seq_offsets, pa.ListArray.from_arrays(pos_offsets, pa.array(ids)))
    counts_col = pa.ListArray.from_arrays(seq_offsets, pa.ListArray.from_arrays(pos_offsets, pa.array(counts)))
    table = pa.table({"ids": ids_col, "counts": counts_col})
    path = directory / "labels.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=64)
    return datasets.Dataset.from_file(str(path))


def hf_collate(rows: list[dict], rounds: int) -> dict[str, torch.Tensor]:
    """Padding the usual way: loop over rows and positions, fill preallocated numpy arrays."""
    B = len(rows)
    T = max(len(r["ids"]) for r in rows)
    K = max(len(p) for r in rows for p in r["ids"])
    target_ids = np.zeros((B, T, K), dtype=np.int64)
    target_weights = np.zeros((B, T, K), dtype=np.float32)
    for b, row in enumerate(rows):
        for t, (pos_ids, pos_counts) in enumerate(zip(row["ids"], row["counts"], strict=True)):
            n = len(pos_ids)
            target_ids[b, t, :n] = pos_ids
            target_weights[b, t, :n] = np.asarray(pos_counts, dtype=np.float32) / np.float32(rounds)
    return {"target_ids": torch.from_numpy(target_ids), "target_weights": torch.from_numpy(target_weights)}


def time_interleaved(contestants: dict, batches: list[np.ndarray], rounds: int) -> dict[str, tuple[list, list]]:
    """Wall and CPU seconds per batch of each contestant ``name -> (make_batch, batches_per_round)``, measured in
    ``rounds`` rounds that take turns (a busy machine then slows every contestant alike). One warm-up batch each
    (JIT, page cache) is not timed."""
    for make_batch, _ in contestants.values():
        make_batch(batches[0])
    out: dict[str, tuple[list, list]] = {name: ([], []) for name in contestants}
    cursor = {name: 1 for name in contestants}
    for _ in range(rounds):
        for name, (make_batch, per_round) in contestants.items():
            for _ in range(per_round):
                idx = batches[cursor[name] % len(batches)]
                cursor[name] += 1
                start, start_cpu = time.perf_counter(), time.thread_time()
                make_batch(idx)
                out[name][1].append(time.thread_time() - start_cpu)
                out[name][0].append(time.perf_counter() - start)
    return out


def shared_memory_floor(nbytes: int, repeats: int) -> float:
    """Seconds to allocate and write ``nbytes`` of fresh shared memory: what any DataLoader worker pays to hand
    over a batch of that size (torch's default_collate included), before computing anything."""
    def fill():
        storage = torch.UntypedStorage._new_shared(nbytes)
        torch.empty(0, dtype=torch.uint8).set_(storage).fill_(0)

    return median(time_call(fill, repeats=repeats))


def worker_throughput(dataset, batches: list[np.ndarray], workers: int) -> float:
    """Batches/s through a DataLoader with ``workers`` processes, after the first batches (start-up) are out."""
    from torch.utils.data import DataLoader

    order = [int(i) for idx in batches for i in idx]
    batch_size = len(batches[0])
    loader = DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers, collate_fn=collate,
                        prefetch_factor=4, persistent_workers=False)
    warm = min(2 * workers, len(batches) // 3)
    it = iter(loader)
    for _ in range(warm):
        next(it)
    timed = len(batches) - warm
    start = time.perf_counter()
    for _ in range(timed):  # stop the clock at the last batch, before the loader shuts its workers down
        batch = next(it)
        assert batch["target_ids"].shape[0] == batch_size
    elapsed = time.perf_counter() - start
    for _ in it:
        pass
    return timed / elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "bench_loader")
    parser.add_argument("--sequences", type=int, default=512, help="sequences in the file (x seq-len positions)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=60, help="timed batches of each of ours (and for workers)")
    parser.add_argument("--hf-batches", type=int, default=6, help="timed batches of the (slow) baseline = rounds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the files (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sequences, args.seq_len, args.batch_size = 24, 256, 4
        args.batches, args.hf_batches = 8, 3

    torch.set_num_threads(1)  # "one core": numba kernels are single-threaded; keep torch from spreading
    tmp = tempfile.TemporaryDirectory(dir=args.workdir)
    workdir = Path(tmp.name)
    t0 = time.perf_counter()
    csr = build_labels(args.sequences, args.seq_len, args.rounds, seed=0)
    gen_s = time.perf_counter() - t0
    num_positions = int(csr[3].sum())
    mean_labels = float(csr[2][-1]) / num_positions
    print(f"labels: {args.sequences} sequences x {args.seq_len} = {num_positions:,} positions, "
          f"{mean_labels:.2f} labels/position (generated in {gen_s:.1f} s)")

    rng = np.random.default_rng(1)
    batches = [rng.integers(0, args.sequences, size=args.batch_size) for _ in range(args.batches + 1)]
    positions_per_batch = args.batch_size * args.seq_len

    rows, results, contestants, first_batch, datasets_by_codec = [], {}, {}, {}, {}
    per_round = max(1, -(-args.batches // args.hf_batches))  # ours take turns with the baseline, round by round
    for codec in available():
        try:
            path = write_file(workdir / f"labels-{codec}.slbl", csr, codec, args.rounds)
        except SparseLabelsError as exc:  # a codec still under construction: record it, measure the rest
            results[codec] = {"error": str(exc)}
            print(f"codec {codec!r}: cannot write the benchmark file ({exc})")
            continue
        size = path.stat().st_size
        results[codec] = {"file_bytes": size, "bytes_per_position": size / num_positions}
        for check in (True, False):  # check_labels=False: files already validated, skip the label-rule pass
            dataset = SparseLabelDataset(path, check_labels=check)
            datasets_by_codec.setdefault(codec, dataset)

            def ours(idx, dataset=dataset):
                return collate([dataset[int(i)] for i in idx])

            contestants[(codec, check)] = (ours, per_round)
        first_batch[codec] = collate([datasets_by_codec[codec][int(i)] for i in batches[0]])

    hf = write_hf(workdir, csr)
    for fmt, dataset in (("python lists", hf), ("numpy format", hf.with_format("numpy"))):
        def theirs(idx, dataset=dataset):
            return hf_collate([dataset[int(i)] for i in idx], args.rounds)

        reference = theirs(batches[0])
        for codec, out in first_batch.items():  # both sides compute the same tensors
            for key in ("target_ids", "target_weights"):
                if not torch.equal(reference[key], out[key]):
                    raise AssertionError(f"baseline ({fmt}) and {codec} disagree on {key}")
        contestants[("hf", fmt)] = (theirs, 1)

    timings = time_interleaved(contestants, batches, args.hf_batches)
    baselines = {}
    for (kind, variant), (wall, cpu) in timings.items():
        entry = {"median_batch_s": median(wall), "positions_per_s": positions_per_batch / median(wall),
                 "median_batch_cpu_s": median(cpu), "positions_per_cpu_s": positions_per_batch / median(cpu),
                 "batches_timed": len(wall)}
        if kind == "hf":
            baselines[variant] = entry
            name = f"HF datasets ({variant})"
        else:
            results[kind]["single_process" if variant else "single_process_check_labels_off"] = entry
            name = f"sparselabels {kind}" + ("" if variant else ", check_labels=False")
        rows.append({"reader": name, "mode": "1 process", "ms/batch": 1e3 * entry["median_batch_s"],
                     "cpu ms/batch": 1e3 * entry["median_batch_cpu_s"], "positions/s": entry["positions_per_s"]})
    for codec, dataset in datasets_by_codec.items():
        if args.workers:
            per_s = worker_throughput(dataset, batches, args.workers)
            results[codec]["workers"] = {"num_workers": args.workers, "positions_per_s": per_s * positions_per_batch}
            rows.append({"reader": f"sparselabels {codec}", "mode": f"{args.workers} workers",
                         "ms/batch": 1e3 / per_s, "positions/s": per_s * positions_per_batch})
    best_fmt = max(baselines, key=lambda k: baselines[k]["positions_per_s"])
    baseline = baselines[best_fmt]["positions_per_s"]

    baseline_cpu = baselines[best_fmt]["positions_per_cpu_s"]
    for r in results.values():
        if "error" in r:
            continue
        r["ratio_single_vs_baseline"] = r["single_process"]["positions_per_s"] / baseline
        r["ratio_single_cpu_vs_baseline_cpu"] = r["single_process"]["positions_per_cpu_s"] / baseline_cpu
        if "workers" in r:
            r["ratio_workers_vs_baseline"] = r["workers"]["positions_per_s"] / baseline
    for row in rows:
        row["x baseline"] = row["positions/s"] / baseline
    shm_floor = None
    if first_batch:
        out = next(iter(first_batch.values()))
        batch_bytes = sum(t.numel() * t.element_size() for t in out.values())
        shm_floor = {"batch_bytes": batch_bytes, "seconds": shared_memory_floor(batch_bytes, 3 if args.quick else 10)}
        rows.append({"reader": "floor: fresh shared memory", "mode": "per batch",
                     "ms/batch": 1e3 * shm_floor["seconds"], "positions/s": positions_per_batch / shm_floor["seconds"]})

    print_table(rows, ["reader", "mode", "ms/batch", "cpu ms/batch", "positions/s", "x baseline"],
                title=f"random batches of {args.batch_size} x {args.seq_len} positions "
                      f"(baseline: HF datasets, {best_fmt})")
    raw = results.get("raw", {})
    checks = {
        "raw_single_process_positions_per_s >= 5M (wall clock)": bool(
            raw and raw["single_process"]["positions_per_s"] >= TARGET_RAW_POSITIONS_PER_S),
        "raw_single_process_positions_per_cpu_s >= 5M (one core's CPU time)": bool(
            raw and raw["single_process"]["positions_per_cpu_s"] >= TARGET_RAW_POSITIONS_PER_S),
        "every codec >= 20x baseline (single process, wall clock)": all(
            r.get("ratio_single_vs_baseline", 0) >= TARGET_RATIO for r in results.values() if "error" not in r),
        "every codec >= 20x baseline (single process, CPU time)": all(
            r.get("ratio_single_cpu_vs_baseline_cpu", 0) >= TARGET_RATIO for r in results.values()
            if "error" not in r),
    }
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(f"note: load average {load:.1f} on {os.cpu_count()} cores: wall-clock rates include waiting for a core; "
              "the CPU-time rates do not")
    note = " (quick mode: sizes too small to judge)" if args.quick else ""
    for name, ok in checks.items():
        print(f"target {name}: {'met' if ok else 'NOT met'}{note}")
    payload = {
        "benchmark": "bench_loader",
        "quick": args.quick,
        "load_average_at_end": os.getloadavg(),
        "config": {"sequences": args.sequences, "seq_len": args.seq_len, "positions": num_positions,
                   "mean_labels_per_position": mean_labels, "batch_size": args.batch_size, "rounds": args.rounds,
                   "batches": args.batches, "hf_batches": args.hf_batches, "workers": args.workers,
                   "torch_threads": torch.get_num_threads()},
        "codecs": results,
        "baseline": {"best": best_fmt, "positions_per_s": baseline, "variants": baselines},
        "shared_memory_floor": shm_floor,
        "targets": {"ratio": TARGET_RATIO, "raw_positions_per_s": TARGET_RAW_POSITIONS_PER_S, "met": checks},
    }
    write_json(args.out, payload)
    tmp.cleanup()
    return payload


if __name__ == "__main__":
    main()

"""Loader throughput: random batches of sparse targets, sparselabels (padded and CSR) vs Hugging Face datasets.

Builds a label file of >= 1M positions (sequences of 2,048 positions, ~12 labels each, from
``sparselabels.synthetic``, N = 50 draws) in every available codec, then measures positions/s of random batches of
16 x 2,048 positions, in one run:

* ``SparseLabelDataset`` + ``collate`` in both layouts: ``padded`` (``target_ids``/``target_weights [B, T, K]``)
  and ``csr`` (``batch["targets"]``, a ``SparseTargets``), in one process (one core: torch and numba use one
  thread; with and without the reader's label-rule pass) and through a ``DataLoader`` with 2 workers;
* the bytes of one batch in each layout (what crosses from a worker and to the GPU);
* the baselines, in the same run, all producing the padded tensors:
  - nested: the labels as a ``datasets`` column pair ``ids: list<list<uint32>>``, ``counts: list<list<uint8>>``
    (memory-mapped Arrow), rows read by random index and padded with a Python loop over positions, with
    Python-list rows and with numpy-formatted rows (the faster is "the nested baseline");
  - careful: one row per sequence with flat ``ids``/``counts`` arrays and the sequence's CSR ``indptr``, numpy
    format, a batch of rows read in one call, padding vectorised per sequence (one fancy-index assignment).

Positions/s = B x T / median seconds per batch (single process), or batches x B x T / wall time (workers); the
single-process rows also give the median CPU time of the measuring thread, which a busy machine does not inflate
(much). The "fresh shared memory" rows are a floor for any DataLoader worker: the time to allocate and write one
batch's bytes in new shared memory. Every contestant's first batch is checked equal to ours, so all compute the
same thing. The goals of issue 17 are recorded in the JSON with whether each was met.
"""

from __future__ import annotations

import argparse
import itertools
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
from sparselabels.data import SparseLabelCollator, SparseLabelDataset, SparseTargets, collate
from sparselabels.errors import SparseLabelsError
from sparselabels.synthetic import sample_labels, split_sequences

LAYOUTS = ("padded", "csr")
TARGET_RATIO = 20.0  # padded, every codec, vs the nested baseline
TARGET_RAW_POSITIONS_PER_S = 5e6  # padded raw
# issue 17 (CSR): raw on one core, vs the careful baseline, 2 workers vs 1 process, bytes vs padded
TARGET_CSR_RAW_POSITIONS_PER_S = 20e6
TARGET_CSR_VS_CAREFUL = 4.0
TARGET_WORKER_SCALING = 1.5
TARGET_BYTES_FRACTION = 1 / 5


def build_labels(num_sequences: int, seq_len: int, rounds: int, seed: int):
    model = sl.synthetic.TeacherModel(seed=seed)
    return sample_labels(num_sequences, seq_len, rounds, model=model)


def write_file(path: Path, csr, codec: str, rounds: int) -> Path:
    ids, counts, indptr, lengths = csr
    with sl.LabelWriter(path, vocab_size=128_256, rounds=rounds, codec=codec, overwrite=True, durable=False) as w:
        for a, b, c in split_sequences(ids, counts, indptr, lengths):
            w.write(a, b, c)
    return path


def _arrow_file(directory: Path, name: str, table):
    import datasets
    import pyarrow as pa

    path = directory / name
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=64)
    return datasets.Dataset.from_file(str(path))


def write_hf(directory: Path, csr):
    """The same labels as a memory-mapped ``datasets`` table: ids/counts as list<list<...>> columns."""
    import pyarrow as pa

    ids, counts, indptr, lengths = csr
    pos_offsets = pa.array(indptr.astype(np.int32))  # < 2**31 labels in the benchmark file
    seq_offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    ids_col = pa.ListArray.from_arrays(seq_offsets, pa.ListArray.from_arrays(pos_offsets, pa.array(ids)))
    counts_col = pa.ListArray.from_arrays(seq_offsets, pa.ListArray.from_arrays(pos_offsets, pa.array(counts)))
    return _arrow_file(directory, "labels.arrow", pa.table({"ids": ids_col, "counts": counts_col}))


def write_hf_flat(directory: Path, csr):
    """The careful layout: one row per sequence, flat ``ids``/``counts`` and the sequence's own CSR ``indptr``."""
    import pyarrow as pa

    ids, counts, indptr, lengths = csr
    seq_pos = np.concatenate([[0], np.cumsum(lengths)])
    seq_labels = indptr[seq_pos].astype(np.int32)
    local = [indptr[a:b + 1] - indptr[a] for a, b in itertools.pairwise(seq_pos)]
    ptr_offsets = np.concatenate([[0], np.cumsum([len(p) for p in local])]).astype(np.int32)
    table = pa.table({
        "ids": pa.ListArray.from_arrays(pa.array(seq_labels), pa.array(ids)),
        "counts": pa.ListArray.from_arrays(pa.array(seq_labels), pa.array(counts)),
        "indptr": pa.ListArray.from_arrays(pa.array(ptr_offsets), pa.array(np.concatenate(local).astype(np.int32))),
    })
    return _arrow_file(directory, "labels-flat.arrow", table).with_format("numpy")


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


def hf_flat_collate(columns: dict[str, list[np.ndarray]], rounds: int) -> dict[str, torch.Tensor]:
    """The careful user's padding: per sequence, each label's (position, slot) computed with numpy and written in
    one fancy-index assignment."""
    ptrs = columns["indptr"]
    B = len(ptrs)
    T = max(len(p) - 1 for p in ptrs)
    K = max(max(int(np.diff(p).max(initial=0)) for p in ptrs), 1)
    target_ids = np.zeros((B, T, K), dtype=np.int64)
    target_weights = np.zeros((B, T, K), dtype=np.float32)
    scale = np.float32(rounds)
    for b, (ptr, ids, counts) in enumerate(zip(ptrs, columns["ids"], columns["counts"], strict=True)):
        n = np.diff(ptr)
        pos = np.repeat(np.arange(len(n)), n)
        slot = np.arange(len(ids)) - np.repeat(ptr[:-1], n)
        target_ids[b, pos, slot] = ids
        target_weights[b, pos, slot] = counts.astype(np.float32) / scale
    return {"target_ids": torch.from_numpy(target_ids), "target_weights": torch.from_numpy(target_weights)}


def batch_bytes(batch: dict) -> int:
    """Bytes of every tensor of a batch (a SparseTargets' parts included)."""
    total = 0
    for value in batch.values():
        if isinstance(value, SparseTargets):
            total += value.nbytes
        elif isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
    return total


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


def worker_throughput(dataset, batches: list[np.ndarray], workers: int, layout: str) -> tuple[float, float]:
    """Batches/s through a DataLoader with ``workers`` processes, after the first batches (start-up) are out, and
    the main process's CPU seconds per batch (receiving batches from the workers costs the main process CPU that
    the workers then do not have, which bounds the scaling on a machine with as many cores as workers)."""
    from torch.utils.data import DataLoader

    order = [int(i) for idx in batches for i in idx]
    batch_size = len(batches[0])
    loader = DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers,
                        collate_fn=SparseLabelCollator(layout=layout), prefetch_factor=4, persistent_workers=False)
    warm = min(2 * workers, len(batches) // 3)
    it = iter(loader)
    for _ in range(warm):
        next(it)
    timed = len(batches) - warm
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(timed):  # stop the clock at the last batch, before the loader shuts its workers down
        batch = next(it)
        assert batch["lengths"].shape[0] == batch_size
    elapsed, main_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    for _ in it:
        pass
    return timed / elapsed, main_cpu / timed


def _entry(wall: list, cpu: list, positions_per_batch: int) -> dict:
    return {"median_batch_s": median(wall), "positions_per_s": positions_per_batch / median(wall),
            "median_batch_cpu_s": median(cpu), "positions_per_cpu_s": positions_per_batch / median(cpu),
            "batches_timed": len(wall)}


def _check_same(reference: dict, padded: dict, what: str) -> None:
    for key in ("target_ids", "target_weights"):
        if not torch.equal(reference[key], padded[key]):
            raise AssertionError(f"{what} disagrees with sparselabels' padded batch on {key}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "bench_loader")
    parser.add_argument("--sequences", type=int, default=512, help="sequences in the file (x seq-len positions)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=60, help="timed batches of each of ours (and for workers)")
    parser.add_argument("--hf-batches", type=int, default=6, help="timed batches of the (slow) baselines = rounds")
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
    per_round = max(1, -(-args.batches // args.hf_batches))  # ours take turns with the baselines, round by round
    for codec in available():
        try:
            path = write_file(workdir / f"labels-{codec}.slbl", csr, codec, args.rounds)
        except SparseLabelsError as exc:  # a codec still under construction: record it, measure the rest
            results[codec] = {"error": str(exc)}
            print(f"codec {codec!r}: cannot write the benchmark file ({exc})")
            continue
        size = path.stat().st_size
        results[codec] = {"file_bytes": size, "bytes_per_position": size / num_positions,
                          "layouts": {layout: {} for layout in LAYOUTS}}
        for check in (True, False):  # check_labels=False: files already validated, skip the label-rule pass
            dataset = SparseLabelDataset(path, check_labels=check)
            datasets_by_codec.setdefault(codec, dataset)
            for layout in LAYOUTS:
                def ours(idx, dataset=dataset, layout=layout):
                    return collate([dataset[int(i)] for i in idx], layout=layout)

                contestants[(codec, layout, check)] = (ours, per_round)
        items = [datasets_by_codec[codec][int(i)] for i in batches[0]]
        first_batch[codec] = {layout: collate(items, layout=layout) for layout in LAYOUTS}
        ids, weights = first_batch[codec]["csr"]["targets"].to_padded()
        _check_same({"target_ids": ids, "target_weights": weights}, first_batch[codec]["padded"],
                    f"{codec} csr to_padded()")

    hf = write_hf(workdir, csr)
    hf_flat = write_hf_flat(workdir, csr)
    hf_numpy = hf.with_format("numpy")
    baselines_in_run = {
        "python lists": lambda idx: hf_collate([hf[int(i)] for i in idx], args.rounds),
        "numpy format": lambda idx: hf_collate([hf_numpy[int(i)] for i in idx], args.rounds),
        "careful flat arrays": lambda idx: hf_flat_collate(hf_flat[[int(i) for i in idx]], args.rounds),
    }
    for variant, theirs in baselines_in_run.items():
        reference = theirs(batches[0])
        for codec, out in first_batch.items():  # both sides compute the same tensors
            _check_same(reference, out["padded"], f"baseline ({variant}) vs {codec}")
        contestants[("hf", variant, None)] = (theirs, 1)

    timings = time_interleaved(contestants, batches, args.hf_batches)
    baselines = {}
    for (kind, variant, check), (wall, cpu) in timings.items():
        entry = _entry(wall, cpu, positions_per_batch)
        if kind == "hf":
            baselines[variant] = entry
            name, mode = f"HF datasets ({variant})", "1 process"
        else:
            results[kind]["layouts"][variant]["single_process" if check else "single_process_check_labels_off"] = entry
            name = f"sparselabels {kind} {variant}" + ("" if check else ", check_labels=False")
            mode = "1 process"
        rows.append({"reader": name, "mode": mode, "ms/batch": 1e3 * entry["median_batch_s"],
                     "cpu ms/batch": 1e3 * entry["median_batch_cpu_s"], "positions/s": entry["positions_per_s"],
                     "positions/cpu s": entry["positions_per_cpu_s"]})
    for codec, dataset in datasets_by_codec.items():
        for layout in LAYOUTS:
            r = results[codec]["layouts"][layout]
            out = first_batch[codec][layout]
            r["batch_bytes"] = batch_bytes(out)
            if args.workers:
                per_s, main_cpu_s = worker_throughput(dataset, batches, args.workers, layout)
                r["workers"] = {"num_workers": args.workers, "positions_per_s": per_s * positions_per_batch,
                                "main_process_cpu_s_per_batch": main_cpu_s}
                r["workers_vs_single_process"] = r["workers"]["positions_per_s"] / r["single_process"][
                    "positions_per_s"]
                rows.append({"reader": f"sparselabels {codec} {layout}", "mode": f"{args.workers} workers",
                             "ms/batch": 1e3 / per_s, "cpu ms/batch": 1e3 * main_cpu_s,
                             "positions/s": per_s * positions_per_batch})
        results[codec]["csr_bytes_vs_padded"] = (results[codec]["layouts"]["csr"]["batch_bytes"]
                                                 / results[codec]["layouts"]["padded"]["batch_bytes"])
    nested = {k: v for k, v in baselines.items() if k != "careful flat arrays"}
    best_fmt = max(nested, key=lambda k: nested[k]["positions_per_s"])
    baseline = nested[best_fmt]["positions_per_s"]
    baseline_cpu = nested[best_fmt]["positions_per_cpu_s"]
    careful = baselines["careful flat arrays"]
    for r in results.values():
        if "error" in r:
            continue
        for layout in LAYOUTS:
            lr = r["layouts"][layout]
            lr["ratio_single_vs_baseline"] = lr["single_process"]["positions_per_s"] / baseline
            lr["ratio_single_cpu_vs_baseline_cpu"] = lr["single_process"]["positions_per_cpu_s"] / baseline_cpu
            lr["ratio_single_vs_careful"] = lr["single_process"]["positions_per_s"] / careful["positions_per_s"]
            lr["ratio_single_cpu_vs_careful_cpu"] = (lr["single_process"]["positions_per_cpu_s"]
                                                     / careful["positions_per_cpu_s"])
            if "workers" in lr:
                lr["ratio_workers_vs_baseline"] = lr["workers"]["positions_per_s"] / baseline
    for row in rows:
        row["x nested HF"] = row["positions/s"] / baseline
        row["x careful HF"] = row["positions/s"] / careful["positions_per_s"]
    shm_floor = {}
    for layout in LAYOUTS:
        if first_batch:
            nbytes = batch_bytes(next(iter(first_batch.values()))[layout])
            seconds = shared_memory_floor(nbytes, 3 if args.quick else 10)
            shm_floor[layout] = {"batch_bytes": nbytes, "seconds": seconds}
            rows.append({"reader": f"floor: fresh shared memory, {layout} batch ({nbytes / 1e6:.1f} MB)",
                         "mode": "per batch", "ms/batch": 1e3 * seconds, "positions/s": positions_per_batch / seconds})

    print_table(rows, ["reader", "mode", "ms/batch", "cpu ms/batch", "positions/s", "positions/cpu s",
                       "x nested HF", "x careful HF"],
                title=f"random batches of {args.batch_size} x {args.seq_len} positions "
                      f"(nested HF baseline: {best_fmt})")
    goals = _goals(results, baseline, baseline_cpu)
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(f"note: load average {load:.1f} on {os.cpu_count()} cores: wall-clock rates include waiting for a core; "
              "the CPU-time rates do not; worker scaling needs free cores to mean anything")
    note = " (quick mode: sizes too small to judge)" if args.quick else ""
    for name, goal in goals.items():
        print(f"goal {name}: {'met' if goal['met'] else 'NOT met'} ({goal['value']:.3g}){note}")
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
        "careful_baseline": careful,
        "shared_memory_floor": shm_floor,
        "goals": goals,
    }
    write_json(args.out, payload)
    tmp.cleanup()
    return payload


def _goals(results: dict, baseline: float, baseline_cpu: float) -> dict[str, dict]:
    """Each goal: its value, the target, and whether it was met (single-process rates of the default dataset,
    i.e. with the reader's label-rule pass)."""
    goals: dict[str, dict] = {}

    def goal(name: str, value: float, target: float) -> None:
        goals[name] = {"value": value, "target": target, "met": bool(value >= target)}

    raw = results.get("raw", {}).get("layouts")
    if raw:
        pad, csr = raw["padded"], raw["csr"]
        goal("padded raw, 1 process >= 5M positions/s (wall clock)", pad["single_process"]["positions_per_s"],
             TARGET_RAW_POSITIONS_PER_S)
        goal("padded raw, 1 process >= 5M positions/s (one core's CPU time)",
             pad["single_process"]["positions_per_cpu_s"], TARGET_RAW_POSITIONS_PER_S)
        goal("csr raw, 1 process >= 20M positions/s (wall clock)", csr["single_process"]["positions_per_s"],
             TARGET_CSR_RAW_POSITIONS_PER_S)
        goal("csr raw, 1 process >= 20M positions/s (one core's CPU time)",
             csr["single_process"]["positions_per_cpu_s"], TARGET_CSR_RAW_POSITIONS_PER_S)
        goal("csr raw, 1 process, check_labels=False >= 20M positions/s (one core's CPU time)",
             csr["single_process_check_labels_off"]["positions_per_cpu_s"], TARGET_CSR_RAW_POSITIONS_PER_S)
        goal("csr raw >= 4x the careful HF baseline (wall clock)", csr["ratio_single_vs_careful"],
             TARGET_CSR_VS_CAREFUL)
        goal("csr raw >= 4x the careful HF baseline (CPU time)", csr["ratio_single_cpu_vs_careful_cpu"],
             TARGET_CSR_VS_CAREFUL)
        if "workers_vs_single_process" in csr:
            goal("csr raw, 2 workers >= 1.5x 1 process (wall clock)", csr["workers_vs_single_process"],
                 TARGET_WORKER_SCALING)
    for codec, r in results.items():
        if "error" in r:
            continue
        goal(f"padded {codec} >= 20x the nested HF baseline (wall clock)",
             r["layouts"]["padded"]["ratio_single_vs_baseline"], TARGET_RATIO)
        goal(f"padded {codec} >= 20x the nested HF baseline (CPU time)",
             r["layouts"]["padded"]["ratio_single_cpu_vs_baseline_cpu"], TARGET_RATIO)
        # a "<=" goal, recorded as padded/csr >= 5
        goal(f"csr {codec} bytes/batch <= 1/5 of padded (padded/csr >= 5)", 1 / r["csr_bytes_vs_padded"],
             1 / TARGET_BYTES_FRACTION)
    return goals


if __name__ == "__main__":
    main()

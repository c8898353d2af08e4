"""Many readers on files that other processes are writing, replacing and merging: readers see complete files only.

Forked processes run side by side for a few seconds in one directory:

* writers create new shards ``shard-<k>.slbl`` (LabelWriter: ``.partial``, then an atomic rename), and one of
  them keeps replacing ``hot.slbl`` (``overwrite=True``) with a new generation of different content;
* a merger writes manifests ``m-<a>-<b>-....json`` and copies ``m-<a>-<b>-....slbl`` of complete shards;
* readers loop: open ``hot.slbl`` (mmap and pread), every complete file and manifest they can list, and the
  shards that do not exist yet.

Every file a reader opens must read back exactly the content its name (or, for ``hot.slbl``, its generation
in the metadata) says. A path that is not there yet may raise FileNotFoundError; nothing else may fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import time
import traceback
from functools import cache
from pathlib import Path

import numpy as np

import sparselabels as sl
from sparselabels.codecs import get_codec

VOCAB = 50_000
ROUNDS = 50
RUN_SECONDS = 4.0
SHARDS_PER_WRITER = 40


@cache
def sequences(seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(rng.integers(3, 25))):
        lpp = rng.integers(0, 10, size=int(rng.integers(0, 30)))
        ids, counts = [], []
        for k in lpp.tolist():
            if k:
                ids.extend(np.sort(rng.choice(VOCAB, size=k, replace=False)).tolist())
                counts.extend((1 + rng.multinomial(ROUNDS - k, np.ones(k) / k)).tolist())
        out.append((np.array(ids, np.uint32), np.array(counts, np.uint8),
                    np.concatenate(([0], np.cumsum(lpp))).astype(np.int64)))
    return tuple(out)


@cache
def expected_digest(seeds: tuple[int, ...]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for seed in seeds:
        for ids, counts, indptr in sequences(seed):
            h.update(ids.tobytes() + b"|" + counts.tobytes() + b"|" + indptr.tobytes() + b";")
    return h.hexdigest()


def digest(labels: sl.Labels) -> str:
    h = hashlib.blake2b(digest_size=16)
    for s in labels:
        h.update(np.ascontiguousarray(s.ids, "<u4").tobytes() + b"|" + s.counts.tobytes() + b"|"
                 + s.indptr.tobytes() + b";")
    return h.hexdigest()


def write_file(path: Path, seed: int, *, overwrite: bool = False, generation: int | None = None) -> None:
    meta = {"user": {"generation": generation}} if generation is not None else None
    with sl.LabelWriter(path, vocab_size=VOCAB, rounds=ROUNDS, chunk_bytes=2000, overwrite=overwrite,
                        metadata=meta, durable=False) as w:
        for k, (ids, counts, indptr) in enumerate(sequences(seed)):
            w.write(ids, counts, indptr)
            if k % 7 == 6:
                w.flush()


def shard_seed(k: int) -> int:
    return 1000 + k


def hot_seed(generation: int) -> int:
    return 50_000 + generation


# -- the roles, each run in a forked process ----------------------------------------------------------------
def writer(directory: Path, first: int, step: int, deadline: float, hot: bool) -> dict:
    written, generations = 0, 0
    k = first
    start = time.monotonic()
    pace = (deadline - start) / (SHARDS_PER_WRITER + 1)  # shards keep appearing while the readers run
    while time.monotonic() < deadline and written < SHARDS_PER_WRITER:
        time.sleep(max(0.0, start + written * pace - time.monotonic()))
        write_file(directory / f"shard-{k}.slbl", shard_seed(k))
        written += 1
        k += step
        if hot:
            generations += 1
            write_file(directory / "hot.slbl", hot_seed(generations), overwrite=True, generation=generations)
    return {"shards": written, "generations": generations}


def merger(directory: Path, deadline: float, seed: int) -> dict:
    rng = random.Random(seed)
    manifests = copies = 0
    while time.monotonic() < deadline:
        ready = sorted(int(p.stem.split("-")[1]) for p in directory.glob("shard-*.slbl"))
        if len(ready) < 2:
            time.sleep(0.01)
            continue
        chosen = rng.sample(ready, min(len(ready), rng.randint(2, 4)))
        name = "m-" + "-".join(map(str, chosen))
        inputs = [directory / f"shard-{k}.slbl" for k in chosen]
        if rng.random() < 0.5:
            sl.merge(directory / f"{name}.json", inputs, overwrite=True)
            manifests += 1
        else:
            sl.merge(directory / f"{name}.slbl", inputs, copy=True, overwrite=True)
            copies += 1
    return {"manifests": manifests, "copies": copies}


def _seeds_of(path: Path) -> tuple[int, ...]:
    if path.name.startswith("m-"):
        return tuple(shard_seed(int(k)) for k in path.stem.split("-")[1:])
    return (shard_seed(int(path.stem.split("-")[1])),)


def _check(labels: sl.Labels, expected: str, what: str) -> None:
    found = digest(labels)
    if found != expected:
        raise AssertionError(f"{what}: content differs from what was written")


def reader(directory: Path, deadline: float, seed: int, total_shards: int) -> dict:
    rng = random.Random(seed)
    seen = {"hot": 0, "files": 0, "manifests": 0, "not_yet": 0, "generations": set()}
    while time.monotonic() < deadline:
        mmap = rng.random() < 0.5
        try:
            with sl.open_labels(directory / "hot.slbl", mmap=mmap) as f:
                generation = f.metadata["user"]["generation"]
                _check(f, expected_digest((hot_seed(generation),)), f"hot.slbl generation {generation}")
                seen["hot"] += 1
                seen["generations"].add(generation)
        except FileNotFoundError:
            seen["not_yet"] += 1
        for path in sorted(directory.glob("*.slbl")):
            if path.name == "hot.slbl":
                continue
            with sl.open_labels(path, mmap=mmap, verify=rng.choice(["structure", "index", "full"])) as f:
                _check(f, expected_digest(_seeds_of(path)), path.name)
            seen["files"] += 1
        for path in sorted(directory.glob("*.json")):
            with sl.open_labels(path, mmap=mmap) as f:
                _check(f, expected_digest(_seeds_of(path)), path.name)
            seen["manifests"] += 1
        # Paths that a writer will create later: absent (FileNotFoundError) or complete, never half-written.
        k = rng.randrange(total_shards)
        path = directory / f"shard-{k}.slbl"
        try:
            with sl.open_labels(path, mmap=mmap) as f:
                _check(f, expected_digest((shard_seed(k),)), path.name)
        except FileNotFoundError:
            seen["not_yet"] += 1
    seen["generations"] = len(seen["generations"])
    return seen


def _fork(role, *args) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_fd)
            result = {"ok": role(*args)}
        except BaseException as exc:
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        try:
            os.write(write_fd, json.dumps(result).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _collect(pid: int, fd: int, timeout: float) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
        return {"error": "did not finish in time"}
    with os.fdopen(fd, "rb") as pipe:
        data = pipe.read()
    if os.WIFSIGNALED(status):
        return {"error": f"killed by signal {os.WTERMSIG(status)}"}
    return json.loads(data)


def test_readers_see_only_complete_files(tmp_path: Path) -> None:
    write_file(tmp_path / "hot.slbl", hot_seed(0), generation=0)
    for k in range(4):
        write_file(tmp_path / f"shard-{k}.slbl", shard_seed(k))
    # warm up numba in the parent so every child starts compiled
    with sl.open_labels(tmp_path / "hot.slbl") as f:
        digest(f)
    deadline = time.monotonic() + RUN_SECONDS
    writers = 2
    total = 4 + writers * SHARDS_PER_WRITER
    roles = {
        "writer-0": _fork(writer, tmp_path, 4, writers, deadline, True),
        "writer-1": _fork(writer, tmp_path, 5, writers, deadline, False),
        "merger": _fork(merger, tmp_path, deadline, 11),
        **{f"reader-{r}": _fork(reader, tmp_path, deadline, 100 + r, total) for r in range(3)},
    }
    results = {name: _collect(pid, fd, RUN_SECONDS + 60) for name, (pid, fd) in roles.items()}
    errors = {name: r for name, r in results.items() if "error" in r}
    assert not errors, "\n".join(f"{name}: {r['error']}\n{r.get('traceback', '')}" for name, r in errors.items())
    out = {name: r["ok"] for name, r in results.items()}
    # The run really overlapped reading with writing, replacing and merging.
    assert out["writer-0"]["shards"] + out["writer-1"]["shards"] >= 4
    assert out["writer-0"]["generations"] >= 2
    assert out["merger"]["manifests"] + out["merger"]["copies"] >= 2
    readers = [out[f"reader-{r}"] for r in range(3)]
    assert sum(r["hot"] for r in readers) >= 3
    assert sum(r["files"] for r in readers) >= 10
    assert sum(r["not_yet"] for r in readers) >= 1
    # Everything left behind is complete: no partial files remain, every file validates.
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.tmp"))
    for path in tmp_path.glob("*.slbl"):
        report = sl.validate(path)
        assert report.ok, report.problems


def _read_first(labels) -> dict:
    signal.alarm(60)  # a lock inherited held would hang this child forever
    return {"ids": labels[0].ids.tolist()}


def test_a_fork_while_another_thread_holds_a_lock_does_not_hang_the_child(tmp_path: Path) -> None:
    """DataLoader workers are forked with the dataset as it is: a shard set's (or the rans table cache's) lock
    held by another thread of the parent at that moment must not stay held in the child."""
    import threading

    for k in range(2):
        write_file(tmp_path / f"shard-{k}.slbl", shard_seed(k))
    shards = sl.open_labels(tmp_path)
    want = shards[0].ids.tolist()
    assert shards.shard(0).codec_name == "rans"  # whose table cache is locked too
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with shards._lock, get_codec("rans")._lock:
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(60)
    try:
        pid, fd = _fork(_read_first, shards)
        result = _collect(pid, fd, timeout=90)
    finally:
        release.set()
        thread.join()
    assert result == {"ok": {"ids": want}}, result

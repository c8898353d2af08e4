"""Crash consistency of LabelWriter: SIGKILL at random moments and at precise points inside flush and close.

A forked child (the library already imported) writes a fixed stream of sequences with periodic ``flush()``
and a final ``close()``, and tells the parent through a pipe each time a flush returned. It dies by SIGKILL,
either after a random delay or from a hook that kills it inside ``_emit_chunk``, a ``pwrite`` (also halfway
through one), ``fsync``, ``ftruncate``, ``os.replace`` or the directory fsync. Afterwards exactly one of:

* the final path holds a file byte-for-byte equal to an uninterrupted run (complete, valid, right contents);
* the final path is absent, and ``LabelWriter(..., resume=True)`` keeps at least every flushed sequence, the
  kept prefix is byte-for-byte the uninterrupted run's, and replaying the rest of the same write/flush calls
  gives a file identical to the uninterrupted run.

Never a valid-looking file with wrong contents. Some runs crash twice (the resuming writer is killed too).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import sparselabels as sl
from sparselabels.format.layout import CHUNK_HEADER_SIZE, ChunkHeader, crc32
from sparselabels.io import writer as writer_module
from sparselabels.io.writer import partial_path

VOCAB = 32_000
ROUNDS = 50
SETTINGS = {"vocab_size": VOCAB, "rounds": ROUNDS, "metadata": {"teacher": "crash-test"}, "chunk_bytes": 3000}


@pytest.fixture
def scratch(tmp_path: Path):
    """A directory on tmpfs when there is one: a SIGKILL (unlike a power cut) keeps the page cache, so fsync
    timing does not change what survives, and tmpfs makes the ~100 forked writers fast."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        path = Path(tempfile.mkdtemp(prefix="sl-crash-", dir=shm))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path


def _sequence(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    num_positions = int(rng.integers(0, 40))
    ids, counts, indptr = [], [], [0]
    for _ in range(num_positions):
        k = int(rng.integers(0, 13))
        if k:
            ids.extend(np.sort(rng.choice(VOCAB, size=k, replace=False)).tolist())
            counts.extend((1 + rng.multinomial(ROUNDS - k, np.ones(k) / k)).tolist())
        indptr.append(len(ids))
    return (np.array(ids, dtype=np.uint32), np.array(counts, dtype=np.uint8), np.array(indptr, dtype=np.int64),
            int(rng.integers(0, 1 << 63)))


def _script(seed: int) -> tuple[list, list[tuple[str, int]]]:
    """The stream and the calls made on it: ("write", i) and ("flush", 0), in order."""
    rng = np.random.default_rng(seed)
    stream = [_sequence(rng) for _ in range(60)]
    actions: list[tuple[str, int]] = []
    for i in range(len(stream)):
        actions.append(("write", i))
        if rng.random() < 0.12:
            actions.append(("flush", 0))
    return stream, actions


def _play(w: sl.LabelWriter, stream: list, actions: list[tuple[str, int]], report_fd: int | None = None) -> None:
    for kind, i in actions:
        if kind == "write":
            assert w.write(*stream[i][:3], fingerprint=stream[i][3]) == i
        else:
            w.flush()
            if report_fd is not None:
                os.write(report_fd, f"{w.num_sequences}\n".encode())


def _remaining(actions: list[tuple[str, int]], recovered: int) -> list[tuple[str, int]]:
    """The calls after the write of sequence ``recovered - 1`` (flushes of an empty buffer write nothing)."""
    if recovered == 0:
        return actions
    at = actions.index(("write", recovered - 1))
    return actions[at + 1:]


# -- kill hooks, installed in the child only ---------------------------------------------------------------
def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_hook(point: str, nth: int, when: str) -> None:
    """SIGKILL the process at the ``nth`` call of ``point``, before or after the real call (or halfway)."""
    calls = {"n": 0}

    def wrap(real):
        def hooked(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == nth:
                if when == "before":
                    _die()
                if when == "halfway":  # a write cut short, as a kill during a large pwrite leaves it
                    fd, data, offset = args
                    view = memoryview(data).cast("B")
                    real(fd, view[: max(1, len(view) // 2)], offset)
                    _die()
                result = real(*args, **kwargs)
                _die()
                return result
            return real(*args, **kwargs)

        return hooked

    _patch(point, wrap)


def _patch(point: str, wrap) -> None:
    """Replace the function behind a hook point by ``wrap(function)`` (in a forked child only)."""
    if point == "pwrite":
        writer_module._pwrite_all = wrap(writer_module._pwrite_all)
    elif point == "emit_chunk":
        sl.LabelWriter._emit_chunk = wrap(sl.LabelWriter._emit_chunk)
    elif point == "finalize":
        sl.LabelWriter._finalize = wrap(sl.LabelWriter._finalize)
    elif point == "fsync_dir":
        writer_module._fsync_dir = wrap(writer_module._fsync_dir)
    else:  # os functions: the child is a dedicated process, patching the module is fine
        setattr(os, point, wrap(getattr(os, point)))


def _run_child(path: Path, stream: list, actions: list, *, resume: bool, hook: tuple | None,
               delay: float | None) -> tuple[bool, list[int]]:
    """Fork a writer; returns (whether it was killed, sequence counts reported after each flush)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_fd)
            if hook is not None:
                _install_hook(*hook)
            w = sl.LabelWriter(path, resume=resume, **SETTINGS)
            _play(w, stream, _remaining(actions, w.num_sequences) if resume else actions, write_fd)
            w.close()
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    os.close(write_fd)
    if delay is not None:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as pipe:
        flushed = [int(line) for line in pipe.read().split()]
    if os.WIFEXITED(status):
        assert os.WEXITSTATUS(status) == 0, "the writer child failed before it was killed"
    return os.WIFSIGNALED(status), flushed


def _reference(tmp_path: Path, seed: int) -> tuple[bytes, list, list, float]:
    stream, actions = _script(seed)
    with sl.LabelWriter(tmp_path / "warm-up.slbl", overwrite=True, **SETTINGS) as w:  # compile before forking
        _play(w, stream, actions[:5])
    path = tmp_path / f"reference-{seed}.slbl"
    start = time.perf_counter()
    killed, _ = _run_child(path, stream, actions, resume=False, hook=None, delay=None)
    assert not killed
    elapsed = time.perf_counter() - start
    return path.read_bytes(), stream, actions, elapsed


def _check_after_crash(path: Path, reference: bytes, stream: list, actions: list, flushed: int) -> str:
    """Apply the contract; return which branch held ('complete' or 'resumed')."""
    part = partial_path(path)
    if path.exists():
        assert path.read_bytes() == reference, "a file at the final path differs from the uninterrupted run"
        assert not part.exists()
        return "complete"
    w = sl.LabelWriter(path, resume=True, **SETTINGS)
    try:
        recovered = w.num_sequences
        assert recovered >= flushed, f"resume kept {recovered} sequences but {flushed} were flushed"
        kept = part.read_bytes()
        assert reference[: len(kept)] == kept, "the recovered prefix differs from the uninterrupted run"
        _play(w, stream, _remaining(actions, recovered))
        w.close()
    except BaseException:
        w.abort()
        raise
    assert path.read_bytes() == reference, "resumed and finished file differs from the uninterrupted run"
    assert not part.exists()
    report = sl.validate(path)
    assert report.ok, report.problems
    return "resumed"


HOOK_POINTS = ("pwrite", "emit_chunk", "fsync", "ftruncate", "replace", "fsync_dir", "finalize")


def _count_calls(path: Path, stream: list, actions: list) -> dict[str, int]:
    """How often an uninterrupted run calls each hook point (so the kill points adapt to the writer)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_fd)
            counts = dict.fromkeys(HOOK_POINTS, 0)
            for point in HOOK_POINTS:
                _install_counter(point, counts)
            w = sl.LabelWriter(path, **SETTINGS)
            _play(w, stream, actions)
            w.close()
            os.write(write_fd, json.dumps(counts).encode())
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as pipe:
        text = pipe.read().decode()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return json.loads(text)


def _install_counter(point: str, counts: dict[str, int]) -> None:
    def wrap(real):
        def counted(*args, **kwargs):
            counts[point] += 1
            return real(*args, **kwargs)

        return counted

    _patch(point, wrap)


def _hooks(counts: dict[str, int]) -> list[tuple[str, int, str]]:
    """Kill points spread over every call of every hook point: first, last and evenly in between."""
    hooks = []
    for point, n in counts.items():
        assert n >= 1, f"the writer never calls {point}; the test's view of the writer is out of date"
        picks = sorted({1, n, *np.linspace(1, n, 8).round().astype(int).tolist()}) if n > 1 else [1]
        whens = ("before", "halfway", "after") if point == "pwrite" else ("before", "after")
        hooks += [(point, k, when) for k in picks for when in whens]
    return hooks


def test_kills_at_precise_points_in_flush_and_close(scratch: Path) -> None:
    reference, stream, actions, _ = _reference(scratch, seed=1)
    counts = _count_calls(scratch / "counted.slbl", stream, actions)
    assert counts["finalize"] == 1 and counts["replace"] == 1
    assert counts["emit_chunk"] >= 5 and counts["fsync"] >= 4, counts  # several chunks and flushes
    outcomes = []
    for k, hook in enumerate(_hooks(counts)):
        path = scratch / f"hook{k}.slbl"
        killed, flushed = _run_child(path, stream, actions, resume=False, hook=hook, delay=None)
        assert killed, f"hook {hook} never fired: the writer made fewer such calls than the test assumes"
        outcomes.append(_check_after_crash(path, reference, stream, actions, max(flushed, default=0)))
    assert len(outcomes) >= 40
    # Both branches of the contract were exercised: kills after the rename leave the complete file.
    assert outcomes.count("complete") >= 2 and outcomes.count("resumed") >= 30


def test_kills_after_random_delays(scratch: Path) -> None:
    reference, stream, actions, elapsed = _reference(scratch, seed=2)
    rng = random.Random(7)
    kills = 0
    attempts = 0
    while kills < 30:
        attempts += 1
        assert attempts < 200, "the writer keeps finishing before the kill; the delays are miscalibrated"
        path = scratch / f"delay{attempts}.slbl"
        killed, flushed = _run_child(path, stream, actions, resume=False, hook=None,
                                     delay=rng.uniform(0.0, 1.2 * elapsed))
        kills += killed
        _check_after_crash(path, reference, stream, actions, max(flushed, default=0))


def test_crash_during_resume(scratch: Path) -> None:
    """The writer that resumes after a crash is killed too; a third writer still finishes the same file."""
    reference, stream, actions, _ = _reference(scratch, seed=3)
    for k, (first, second) in enumerate([(("pwrite", 6, "halfway"), ("pwrite", 2, "after")),
                                         (("fsync", 3, "before"), ("emit_chunk", 1, "after")),
                                         (("emit_chunk", 2, "after"), ("ftruncate", 1, "after")),
                                         (("replace", 1, "before"), ("fsync", 1, "after"))]):
        path = scratch / f"twice{k}.slbl"
        killed, flushed1 = _run_child(path, stream, actions, resume=False, hook=first, delay=None)
        assert killed
        killed, flushed2 = _run_child(path, stream, actions, resume=True, hook=second, delay=None)
        assert killed
        _check_after_crash(path, reference, stream, actions, max(flushed1 + flushed2, default=0))


def test_resume_refuses_other_settings_and_complete_files(scratch: Path) -> None:
    _, stream, actions, _ = _reference(scratch, seed=4)
    path = scratch / "x.slbl"
    killed, _ = _run_child(path, stream, actions, resume=False, hook=("fsync", 2, "after"), delay=None)
    assert killed
    with pytest.raises(sl.CompatibilityError, match=r"cannot resume: rounds is 50 in the partial file but 40"):
        sl.LabelWriter(path, resume=True, **{**SETTINGS, "rounds": 40})
    with pytest.raises(sl.SparseLabelsError, match=r"holds an unfinished file; pass resume=True"):
        sl.LabelWriter(path, **SETTINGS)
    done = scratch / "reference-4.slbl"
    with pytest.raises(sl.SparseLabelsError, match=r"is already complete; nothing to resume"):
        sl.LabelWriter(done, resume=True, **SETTINGS)


def test_resume_keeps_only_chunks_whose_entries_are_plausible(scratch: Path) -> None:
    """A chunk with a valid CRC but entries no reader would accept (2**63 labels) ends what resume keeps."""
    reference, stream, actions, _ = _reference(scratch, seed=5)
    path = scratch / "implausible.slbl"
    killed, _ = _run_child(path, stream, actions, resume=False, hook=("replace", 1, "before"), delay=None)
    assert killed and not path.exists()
    part = partial_path(path)
    data = bytearray(part.read_bytes())  # complete but for the rename; walk to its third chunk
    offsets = []
    meta_size = struct.unpack_from("<Q", data, 16)[0]
    at = (64 + meta_size + 7) // 8 * 8
    for _ in range(3):
        offsets.append(at)
        at += ChunkHeader.unpack(bytes(data[at:at + CHUNK_HEADER_SIZE]), "test").total_size
    third = ChunkHeader.unpack(bytes(data[offsets[2]:offsets[2] + CHUNK_HEADER_SIZE]), "test")
    struct.pack_into("<Q", data, offsets[2] + CHUNK_HEADER_SIZE + 8, 1 << 63)  # entry 0: labels
    payload = bytes(data[offsets[2] + CHUNK_HEADER_SIZE:offsets[2] + third.total_size])
    struct.pack_into("<I", data, offsets[2] + 52, crc32(payload))
    struct.pack_into("<I", data, offsets[2] + 60, crc32(bytes(data[offsets[2]:offsets[2] + 60])))
    part.write_bytes(bytes(data))
    w = sl.LabelWriter(path, resume=True, **SETTINGS)
    assert part.stat().st_size == offsets[2]  # cut before the implausible chunk
    recovered = w.num_sequences
    _play(w, stream, _remaining(actions, recovered))
    w.close()
    assert path.read_bytes() == reference


def test_resume_repairs_damaged_metadata_padding(scratch: Path) -> None:
    """No CRC covers the zero padding after the metadata; resume rewrites it instead of keeping damage that
    would make the finished file unreadable (found by tools/fuzz_format.py)."""
    from sparselabels.format import metadata as meta_format

    teacher = next(t for t in ("t" * n for n in range(1, 9)) if (64 + len(meta_format.encode(meta_format.build(
        vocab_size=VOCAB, value_kind="count", rounds=ROUNDS, codec="raw", extra={"teacher": t})))) % 8)
    settings = {**SETTINGS, "metadata": {"teacher": teacher}}
    stream, actions = _script(6)
    actions = [*actions[:20], ("flush", 0), *actions[20:]]
    with sl.LabelWriter(scratch / "reference.slbl", **settings) as w:
        _play(w, stream, actions)
    path = scratch / "padding.slbl"
    w = sl.LabelWriter(path, **settings)
    _play(w, stream, actions[:21])
    w.abort()
    part = partial_path(path)
    data = bytearray(part.read_bytes())
    meta_end = 64 + struct.unpack_from("<Q", data, 16)[0]
    data[meta_end] = 0xA5
    part.write_bytes(bytes(data))
    w = sl.LabelWriter(path, resume=True, **settings)
    _play(w, stream, _remaining(actions, w.num_sequences))
    w.close()
    assert path.read_bytes() == (scratch / "reference.slbl").read_bytes()

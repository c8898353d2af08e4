"""Teacher → label files: run a causal LM over token sequences and store RS-KD labels for every position.

Label convention: position ``t`` of a sequence holds the teacher's distribution of the token that follows input
token ``t`` (sampled from the logits at ``t``); every position is written, the last one included.

Determinism (what makes resume and multi-GPU runs byte-identical to one uninterrupted run):

- Draws come from ``sample_counts(..., seed=seed, row_ids=...)`` with the row id of position ``t`` of
  sequence ``i`` equal to its global position, ``offset[i] + t`` (offsets = cumulative sequence lengths), so a
  label depends only on (seed, sequence, position, logits row).
- Sequences meet the teacher in global batches (``sparselabels.pipeline.distributed``): batch ``k`` is always
  sequences ``k*B .. k*B+B-1``, right-padded to its longest member. The logits of a sequence are the same in
  every run, not merely close.
- The writer is flushed after every ``flush_every``-th global batch. It also cuts a chunk whenever its buffer
  reaches ``chunk_bytes``; both boundaries are functions of the sequence stream alone. After a kill, the
  writer keeps the chunks that verify; they end where the killed run's buffer was empty, so the resumed run
  reruns the batch holding the first missing sequence, skips the sequences already stored, and from there
  cuts exactly the chunks the uninterrupted run cuts.

Right padding needs no attention mask in a causal LM: a real position only attends to earlier, real ones.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparselabels._extras import require
from sparselabels.codecs import DEFAULT_CODEC
from sparselabels.errors import CompatibilityError, InputError, OutputExistsError, SparseLabelsError, check_int
from sparselabels.format.fingerprint import input_fingerprint
from sparselabels.io.sequence import CsrLabels, concat_csr, split_csr
from sparselabels.io.shards import run_shard_name
from sparselabels.io.writer import DEFAULT_CHUNK_BYTES, LabelWriter
from sparselabels.pipeline import distributed
from sparselabels.pipeline.masking import masked_labels, open_mask
from sparselabels.pipeline.progress import Progress
from sparselabels.pipeline.resume import check_finished
from sparselabels.pipeline.teacher import Teacher, load_teacher, resolve_device

LABEL_CONVENTION = "next-token: position t holds the teacher's distribution of the token after input token t"
ROW_IDS = "global position: cumulative length of the preceding sequences + t"
DEFAULT_MAX_ROWS = 32768


@dataclass(frozen=True)
class SamplingOptions:
    rounds: int
    temperature: float
    seed: int
    vocab_size: int
    max_rows: int = DEFAULT_MAX_ROWS


# -- one batch ----------------------------------------------------------------------------------------------
def teacher_logits(model, sequences: list[np.ndarray], device) -> Any:
    """Logits ``[B, T, V]`` for the sequences right-padded (with id 0) to the longest, ``T``."""
    import torch

    longest = max(len(s) for s in sequences)
    padded = np.zeros((len(sequences), longest), dtype=np.int64)
    for b, seq in enumerate(sequences):
        padded[b, : len(seq)] = seq
    ids = torch.from_numpy(padded)
    ids = ids.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else ids.to(device)
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


def sample_rows(logits, lengths: list[int], row_starts: list[int], opts: SamplingOptions) -> CsrLabels:
    """Sample every real position of a padded ``[B, T, V]`` batch; CSR over the rows in (sequence, t) order.

    The rows go to the sampler ``max_rows`` at a time: views when no sequence is padded, else gathered copies
    of at most ``max_rows`` rows, so no float32 or full-size copy of the logits is ever made.
    """
    import torch

    from sparselabels.sampling import sample_counts

    batch, longest, width = logits.shape
    device = logits.device
    flat = logits.reshape(batch * longest, width)
    padded = any(n != longest for n in lengths)
    row_index = None
    if padded:
        row_index = torch.cat([torch.arange(n, dtype=torch.int64) + b * longest for b, n in enumerate(lengths)])
    row_ids = torch.cat([torch.arange(n, dtype=torch.int64) + start for n, start in zip(lengths, row_starts,
                                                                                        strict=True)])
    total = int(row_ids.numel())
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for lo in range(0, total, opts.max_rows):
        hi = min(lo + opts.max_rows, total)
        rows = flat[lo:hi] if row_index is None else flat.index_select(0, row_index[lo:hi].to(device))
        sampled = sample_counts(rows, opts.rounds, temperature=opts.temperature, vocab_size=opts.vocab_size,
                                seed=opts.seed, row_ids=row_ids[lo:hi].to(device))
        parts.append(sampled.numpy())
    return concat_csr(parts)


def label_sequences(model, sequences: list[np.ndarray], row_starts: list[int], opts: SamplingOptions,
                    device) -> list[CsrLabels]:
    """Labels of a batch of token sequences: one teacher forward, then sampling of every real position."""
    lengths = [len(s) for s in sequences]
    if not any(lengths):
        return [(np.zeros(0, np.uint32), np.zeros(0, np.uint8), np.zeros(1, np.int64)) for _ in sequences]
    logits = teacher_logits(model, sequences, device)
    csr = sample_rows(logits, lengths, row_starts, opts)
    del logits
    return split_csr(csr, lengths)


# -- tokens -------------------------------------------------------------------------------------------------
def _open_tokens(tokens, column: str):
    from sparselabels.data.tokens import open_tokens

    return open_tokens(tokens, column=column)


def read_sequence(src, index: int, input_size: int) -> np.ndarray:
    """Sequence ``index`` as a 1-D int64 array, checked against the teacher's input vocabulary."""
    seq = np.asarray(src[index])
    if seq.ndim != 1 or (seq.size and not np.issubdtype(seq.dtype, np.integer)):
        raise InputError(f"tokens: sequence {index} must be a 1-D integer array, got {seq.dtype} {seq.shape}")
    if seq.size:
        bad = np.flatnonzero((seq < 0) | (seq >= input_size))
        if bad.size:
            t = int(bad[0])
            raise InputError(f"tokens: sequence {index}, position {t}: token id {int(seq[t])} is outside the "
                             f"teacher's input vocabulary 0..{input_size - 1}")
    return seq.astype(np.int64, copy=False)


def source_fingerprint(src, lengths: np.ndarray) -> str:
    """``tokens-blake2b:<hex>`` over the sequence count, every length, and the first, middle and last sequences.

    Cheap at any size; catches resuming or sharding against a different token source.
    """
    h = hashlib.blake2b(digest_size=16)
    n = len(lengths)
    h.update(n.to_bytes(8, "little"))
    h.update(np.ascontiguousarray(lengths, dtype="<i8").tobytes())
    for i in sorted({0, n // 2, n - 1}) if n else ():
        h.update(input_fingerprint(np.asarray(src[i]), where=f"tokens, sequence {i}").to_bytes(8, "little"))
    return f"tokens-blake2b:{h.hexdigest()}"


# -- write-behind -------------------------------------------------------------------------------------------
class WriteBehind:
    """Runs writer calls in order on one background thread, so host work overlaps the next teacher forward.

    At most ``depth`` batches wait. After a task fails, every later task is skipped (a gap would shift the
    sequences that follow) and the error is raised in the caller at its next call. ``enabled=False`` runs
    everything inline (the obvious twin).
    """

    def __init__(self, *, enabled: bool = True, depth: int = 2) -> None:
        self.enabled = enabled
        self._error: BaseException | None = None
        if enabled:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._loop, name="sparselabels-writer", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is None:
                    return
                if self._error is None:
                    task()
            except BaseException as exc:
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:  # sticky: nothing queued after a failed task may ever run
            raise self._error

    def submit(self, task: Callable[[], None]) -> None:
        if not self.enabled:
            task()
            return
        self._raise()
        self._queue.put(task)

    def drain(self) -> None:
        """Wait for every submitted task; raise the first error."""
        if self.enabled:
            self._queue.join()
            self._raise()

    def stop(self) -> None:
        """End the thread after the tasks already queued (they are skipped after an error)."""
        if self.enabled and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


# -- the run ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunOptions:
    """The settings of one ``generate`` call that the run itself needs (see ``generate`` for their meaning)."""

    batch_size: int
    dtype: str
    codec: str
    resume: bool
    overwrite: bool
    progress: bool
    flush_every: int
    chunk_bytes: int
    write_behind: bool
    metadata: dict | None
    log_interval: float
    mask_column: str | None = None


def _metadata(teacher: Teacher, sampling: SamplingOptions, run: RunOptions, *, source_fp: str, shard: dict) -> dict:
    meta: dict[str, Any] = {
        "teacher": teacher.name,
        "teacher_fingerprint": teacher.fingerprint,
        "temperature": float(sampling.temperature),
        "seed": int(sampling.seed),
        "source_fingerprint": source_fp,
        "generation": {"labels": LABEL_CONVENTION, "row_ids": ROW_IDS, "teacher_dtype": run.dtype,
                       "batch_size": run.batch_size, "teacher_output_size": teacher.output_size},
        "shard": shard,
    }
    if teacher.tokenizer_fingerprint is not None:
        meta["tokenizer_fingerprint"] = teacher.tokenizer_fingerprint
    if run.mask_column is not None:
        meta["generation"]["mask_column"] = run.mask_column
        meta["generation"]["masked_positions"] = "stored empty (no labels): the mask column's 0 / -100 tokens"
    if run.metadata:
        meta["user"] = run.metadata
    return meta


def _agree(world: distributed.World, **values: Any) -> None:
    """Every rank must see the same token source and teacher; say which rank differs if not."""
    gathered = distributed.all_gather(world, values)
    for rank, other in enumerate(gathered):
        for key, value in values.items():
            if other[key] != value:
                raise CompatibilityError(f"rank {rank} has {key}={other[key]!r} but rank {world.rank} has "
                                         f"{value!r}; every rank must read the same tokens and teacher")


def generate(
    model,
    tokens,
    out: str | os.PathLike,
    *,
    rounds: int = 50,
    temperature: float = 1.0,
    batch_size: int = 8,
    dtype: str = "bfloat16",
    device: str | None = None,
    codec: str = DEFAULT_CODEC,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    vocab_size: int | None = None,
    tokenizer: str | os.PathLike | None = None,
    column: str = "input_ids",
    teacher_name: str | None = None,
    teacher_fingerprint: str | None = None,
    flush_every: int = 1,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    max_rows: int = DEFAULT_MAX_ROWS,
    write_behind: bool = True,
    metadata: dict | None = None,
    log_interval: float = 60.0,
    mask_column: str | None = None,
) -> Path:
    """Label ``tokens`` with ``model`` into the directory ``out`` (one shard per rank and ``manifest.json``).

    ``model``: a local Hugging Face model directory or a loaded ``nn.Module``. ``tokens``: anything
    ``sparselabels.data.open_tokens`` opens (a 2-D array or ``.npy``, Megatron ``.bin/.idx``, a Hugging Face
    dataset or its saved path; ``column`` names the token column). Under ``torchrun`` every rank calls this
    with the same arguments and labels its own contiguous slice. ``resume=True`` continues after a kill
    (byte-identical to an uninterrupted run with the same settings); ``overwrite=True`` starts again over
    existing output. ``flush_every`` (batches between fsyncs) and ``chunk_bytes`` (the writer's chunk size)
    shape the file's chunks, not its labels; ``max_rows`` bounds the rows handed to the sampler at once;
    ``write_behind`` writes on a background thread while the teacher runs the next batch.
    ``vocab_size`` overrides the label vocabulary (default: the tokenizer's length when smaller than the
    output layer, else the output size); ``tokenizer`` is the tokenizer directory (default: the model's);
    ``teacher_name``/``teacher_fingerprint`` override the computed identity. ``metadata`` is stored under the
    ``"user"`` key. ``mask_column`` names a per-token column of a ``datasets`` source (0/1, or ``labels``
    with -100): only the positions it keeps are labeled, the others are stored empty, while the teacher still
    reads every token (see :mod:`sparselabels.pipeline.masking`). Returns ``out``.
    """
    require("generate", "torch", "transformers", extras="hf")
    # as Python ints from here on (numpy integers are accepted, but metadata stores only plain values)
    batch_size, flush_every, chunk_bytes = (check_int(name, value, 1) for name, value in (
        ("batch_size", batch_size), ("flush_every", flush_every), ("chunk_bytes", chunk_bytes)))
    max_rows, seed = check_int("max_rows", max_rows, 1), check_int("seed", seed, 0)
    from sparselabels.sampling.rng import check_seed

    check_seed(seed)  # and below 2**64, before anything is written
    if resume and overwrite:
        raise InputError("resume and overwrite exclude each other")
    run = RunOptions(batch_size, dtype, codec, resume, overwrite, progress, flush_every, chunk_bytes, write_behind,
                     metadata, log_interval, mask_column)
    world = distributed.init(resolve_device(device).type)
    try:
        teacher = load_teacher(model, dtype=dtype, device=device, tokenizer=tokenizer, vocab_size=vocab_size,
                               name=teacher_name, fingerprint=teacher_fingerprint)
        sampling = SamplingOptions(rounds, temperature, seed, teacher.vocab_size, max_rows)
        src = _open_tokens(tokens, column)
        mask = open_mask(src, mask_column)  # before any output: a bad column fails here
        _run(teacher, src, Path(out), world, sampling, run, mask)
    finally:
        distributed.finish(world)
    return Path(out)


def _run(teacher: Teacher, src, out: Path, world: distributed.World, sampling: SamplingOptions,
         run: RunOptions, mask=(None, "mask")) -> None:
    lengths = np.asarray(src.lengths(), dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    source_fp = source_fingerprint(src, lengths)
    _agree(world, source_fingerprint=source_fp, teacher_fingerprint=teacher.fingerprint,
           vocab_size=teacher.vocab_size, batch_size=run.batch_size, seed=sampling.seed)

    num_sequences = len(lengths)
    batches = distributed.batch_slice(-(-num_sequences // run.batch_size), world.rank, world.size)
    seq_lo = min(batches.start * run.batch_size, num_sequences)
    seq_hi = min(batches.stop * run.batch_size, num_sequences)
    shard_meta = {"rank": world.rank, "world_size": world.size, "first_sequence": seq_lo,
                  "num_sequences": seq_hi - seq_lo}
    meta = _metadata(teacher, sampling, run, source_fp=source_fp, shard=shard_meta)

    distributed.check_no_foreign_shards(out, world.size)
    shard = out / run_shard_name(world.rank, world.size)
    if shard.exists() and not (run.resume or run.overwrite):
        raise OutputExistsError(
            f"{shard} exists; pass resume=True to keep the finished shards or overwrite=True to start again"
        )
    if shard.exists() and run.resume:
        check_finished(shard, vocab_size=sampling.vocab_size, value_kind="count", rounds=sampling.rounds,
                       codec=run.codec, metadata=meta, num_sequences=seq_hi - seq_lo,
                       expected_from="this rank's slice")
    else:
        _write_shard(teacher, src, shard, world, sampling, run, meta, offsets, range(seq_lo, seq_hi), mask)
    distributed.barrier(world)
    if world.rank == 0:
        distributed.write_run_manifest(out, world.size)
    distributed.barrier(world)


def _is_tty() -> bool:
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _write_shard(teacher: Teacher, src, shard: Path, world: distributed.World, sampling: SamplingOptions,
                 run: RunOptions, meta: dict, offsets: np.ndarray, mine: range, mask=(None, "mask")) -> None:
    """Label this rank's sequences ``mine`` into ``shard``, continuing a partial shard when resuming."""
    writer = LabelWriter(shard, vocab_size=sampling.vocab_size, rounds=sampling.rounds, codec=run.codec,
                         metadata=meta, resume=run.resume, overwrite=run.overwrite, chunk_bytes=run.chunk_bytes)
    try:
        done = writer.num_sequences
        if done > len(mine):
            raise CompatibilityError(f"{writer.partial_path} holds {done} sequences but this rank's slice has only "
                                     f"{len(mine)}")
        todo = range(mine.start + done, mine.stop)
        show = run.progress and (world.rank == 0 or not _is_tty())
        label = f"generate [rank {world.rank}/{world.size}]" if world.distributed else "generate"
        total, done_tokens = offsets[mine.stop] - offsets[mine.start], offsets[todo.start] - offsets[mine.start]
        with Progress(int(total), done=int(done_tokens), enabled=show, interval=run.log_interval,
                      label=label) as meter:
            _label_range(teacher, src, writer, sampling, run, offsets, todo, meter, mask)
        if writer.num_sequences != len(mine):
            raise SparseLabelsError(f"{shard}: {writer.num_sequences} sequences written, expected {len(mine)} "
                                    "(an internal error)")
    except BaseException:
        # Drop what was not flushed: the chunks on disk then end where an uninterrupted run's do.
        writer.abort()
        raise
    writer.close()


def _label_range(teacher: Teacher, src, writer: LabelWriter, sampling: SamplingOptions, run: RunOptions,
                 offsets: np.ndarray, todo: range, progress: Progress, mask=(None, "mask")) -> None:
    """Label sequences ``todo`` (a tail of this rank's slice) global batch by global batch, writing as it goes."""
    if not todo:
        return
    size = run.batch_size
    behind = WriteBehind(enabled=run.write_behind)
    try:
        for k in range(todo.start // size, -(-todo.stop // size)):
            lo, hi = k * size, min((k + 1) * size, todo.stop)
            sequences = [read_sequence(src, i, teacher.input_size) for i in range(lo, hi)]
            labels = label_sequences(teacher.model, sequences, [int(offsets[i]) for i in range(lo, hi)], sampling,
                                     teacher.device)
            labels = masked_labels(*mask, lo, sequences, labels)
            skip = max(todo.start - lo, 0)  # a resumed run reruns the first batch whole and skips what is stored
            fps = [input_fingerprint(s, where=f"tokens, sequence {lo + skip + j}")
                   for j, s in enumerate(sequences[skip:])]
            behind.submit(_write_task(writer, labels[skip:], fps, flush=(k + 1) % run.flush_every == 0))
            progress.update(int(offsets[hi] - offsets[lo + skip]))
        behind.drain()
    finally:
        behind.stop()


def _write_task(writer: LabelWriter, labels: list[CsrLabels], fingerprints: list[int], flush: bool):
    def task() -> None:
        for (ids, counts, indptr), fp in zip(labels, fingerprints, strict=True):
            writer.write(ids, counts, indptr, fingerprint=fp)
        if flush:
            writer.flush()

    return task

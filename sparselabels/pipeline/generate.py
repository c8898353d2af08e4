"""Teacher → label files: run a causal LM over token sequences and store RS-KD labels for every position.

Label convention: position ``t`` of a sequence holds the teacher's distribution of the token that follows input
token ``t`` (sampled from the logits at ``t``); every position is written, the last one included.

Determinism (what makes resume and multi-GPU runs byte-identical to one uninterrupted run):

- Draws come from ``sample_counts(..., seed=key, row_ids=...)`` with the row id of position ``t`` of
  sequence ``i`` equal to its global position, ``offset[i] + t`` (offsets = cumulative sequence lengths), and
  ``key = stream_key(seed, source_fingerprint)`` (``sparselabels.sampling.rng``): a label depends only on
  (seed, token source, sequence, position, logits row), and two parts of a corpus labeled separately with one
  seed draw from different streams. The metadata records the stream (``random_stream``: key, first row), and
  ``merge`` refuses inputs whose rows share a stream.
- Sequences longer than ``max_length`` are labeled in windows (``sparselabels.pipeline.windows``); a position's
  row id is its global position whichever window labels it.
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

import itertools
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sparselabels._extras import require
from sparselabels.codecs import DEFAULT_CODEC
from sparselabels.data.identity import NEXT_TOKEN, source_fingerprint, stream_fingerprint
from sparselabels.errors import CompatibilityError, InputError, OutputExistsError, SparseLabelsError, check_int
from sparselabels.format.fingerprint import input_fingerprint
from sparselabels.io.remote import is_url
from sparselabels.io.sequence import CsrLabels, concat_csr, split_csr
from sparselabels.io.shards import run_shard_name
from sparselabels.io.writer import DEFAULT_CHUNK_BYTES, LabelWriter
from sparselabels.pipeline import distributed
from sparselabels.pipeline.masking import masked_labels, open_mask
from sparselabels.pipeline.prechecks import check_context, check_out, check_sequence_fits, check_token_ids
from sparselabels.pipeline.progress import Progress
from sparselabels.pipeline.resume import check_finished
from sparselabels.pipeline.teacher import Teacher, TeacherSpec, inspect_teacher, load_teacher, resolve_device
from sparselabels.pipeline.windows import Window, WindowPolicy

LABEL_CONVENTION = "next-token: position t holds the teacher's distribution of the token after input token t"
ROW_IDS = "global position: cumulative length of the preceding sequences + t"
STREAM_FROM = "stream_key(seed, source_fingerprint)"
DEFAULT_MAX_ROWS = 32768


@dataclass(frozen=True)
class SamplingOptions:
    rounds: int
    temperature: float
    seed: int
    vocab_size: int
    max_rows: int = DEFAULT_MAX_ROWS
    key: int | None = None  # the Philox key actually used: stream_key(seed, source); None: the seed itself

    @property
    def philox_key(self) -> int:
        return self.seed if self.key is None else self.key


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


def sample_rows(logits, lengths: list[int], row_starts: list[int], opts: SamplingOptions,
                firsts: list[int] | None = None) -> CsrLabels:
    """Sample rows ``firsts[b] .. firsts[b]+lengths[b]-1`` of each member ``b`` of a padded ``[B, T, V]`` batch
    (``firsts`` default 0: every real position); CSR over the rows in (member, t) order, row ids from
    ``row_starts[b]``.

    The rows go to the sampler ``max_rows`` at a time: views when they are the whole batch, else gathered copies
    of at most ``max_rows`` rows, so no float32 or full-size copy of the logits is ever made.
    """
    import torch

    from sparselabels.sampling import sample_counts

    batch, longest, width = logits.shape
    device = logits.device
    flat = logits.reshape(batch * longest, width)
    firsts = firsts or [0] * len(lengths)
    row_index = None
    if any(n != longest or f for n, f in zip(lengths, firsts, strict=True)):
        row_index = torch.cat([torch.arange(n, dtype=torch.int64) + f + b * longest
                               for b, (n, f) in enumerate(zip(lengths, firsts, strict=True))])
    row_ids = torch.cat([torch.arange(n, dtype=torch.int64) + start for n, start in zip(lengths, row_starts,
                                                                                        strict=True)])
    total = int(row_ids.numel())
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for lo in range(0, total, opts.max_rows):
        hi = min(lo + opts.max_rows, total)
        rows = flat[lo:hi] if row_index is None else flat.index_select(0, row_index[lo:hi].to(device))
        sampled = sample_counts(rows, opts.rounds, temperature=opts.temperature, vocab_size=opts.vocab_size,
                                seed=opts.philox_key, row_ids=row_ids[lo:hi].to(device))
        parts.append(sampled.numpy())
    return concat_csr(parts)


def _empty_labels() -> CsrLabels:
    return np.zeros(0, np.uint32), np.zeros(0, np.uint8), np.zeros(1, np.int64)


def label_sequences(model, sequences: list[np.ndarray], row_starts: list[int], opts: SamplingOptions,
                    device, windows: WindowPolicy | None = None) -> list[CsrLabels]:
    """Labels of a batch of token sequences: teacher forwards, then sampling of every real position.

    Without ``windows`` the batch is one forward. With ``windows`` every sequence is cut into its windows
    (one when it fits) and the windows, in order, go to the teacher ``len(sequences)`` at a time; each
    position is sampled from the window that labels it, with its global row id.
    """
    lengths = [len(s) for s in sequences]
    if not any(lengths):
        return [_empty_labels() for _ in sequences]
    if windows is None:
        logits = teacher_logits(model, sequences, device)
        csr = sample_rows(logits, lengths, row_starts, opts)
        del logits
        return split_csr(csr, lengths)
    pieces: list[tuple[int, Window]] = [(b, w) for b, n in enumerate(lengths) if n for w in windows.plan(n)]
    per_piece: list[CsrLabels] = []
    for lo in range(0, len(pieces), len(sequences)):
        group = pieces[lo : lo + len(sequences)]
        logits = teacher_logits(model, [sequences[b][w.start : w.stop] for b, w in group], device)
        counts = [w.stop - w.first for _, w in group]
        csr = sample_rows(logits, counts, [row_starts[b] + w.first for b, w in group], opts,
                          firsts=[w.first - w.start for _, w in group])
        del logits
        per_piece.extend(split_csr(csr, counts))
    out: list[list[CsrLabels]] = [[] for _ in sequences]
    for (b, _), labels in zip(pieces, per_piece, strict=True):
        out[b].append(labels)
    return [concat_csr(parts) if parts else _empty_labels() for parts in out]


# -- tokens -------------------------------------------------------------------------------------------------
def open_source(tokens, column: str, seq_len: int | None = None):
    """A TokenSource for ``tokens``, or a :class:`~sparselabels.data.streams.TokenStream` for an iterable one."""
    from sparselabels.data.streams import TokenStream, is_token_stream
    from sparselabels.data.tokens import open_tokens

    if is_token_stream(tokens):
        if seq_len is not None:
            raise InputError("seq_len cuts a 1-D token stream array; an iterable source yields whole sequences")
        return TokenStream(tokens, column=column)
    return open_tokens(tokens, column=column, seq_len=seq_len)


def read_sequence(src, index: int, input_size: int, seq: np.ndarray | None = None) -> np.ndarray:
    """Sequence ``index`` (``seq``, if already read) as a 1-D int64 array, checked against the teacher's input
    vocabulary."""
    seq = np.asarray(src[index] if seq is None else seq)
    if seq.ndim != 1 or (seq.size and not np.issubdtype(seq.dtype, np.integer)):
        raise InputError(f"tokens: sequence {index} must be a 1-D integer array, got {seq.dtype} {seq.shape}")
    if seq.size:
        bad = np.flatnonzero((seq < 0) | (seq >= input_size))
        if bad.size:
            t = int(bad[0])
            raise InputError(f"tokens: sequence {index}, position {t}: token id {int(seq[t])} is outside the "
                             f"teacher's input vocabulary 0..{input_size - 1}")
    return seq.astype(np.int64, copy=False)


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
    windows: WindowPolicy | None = None
    mask_column: str | None = None


def _metadata(teacher: Teacher, sampling: SamplingOptions, run: RunOptions, *, source_fp: str, shard: dict,
              first_row: int) -> dict:
    generation: dict[str, Any] = {"labels": LABEL_CONVENTION, "row_ids": ROW_IDS, "teacher_dtype": run.dtype,
                                  "batch_size": run.batch_size, "teacher_output_size": teacher.output_size}
    if run.windows is not None:
        generation["windows"] = run.windows.describe()
    meta: dict[str, Any] = {
        "teacher": teacher.name,
        "teacher_fingerprint": teacher.fingerprint,
        "temperature": float(sampling.temperature),
        "seed": int(sampling.seed),
        "source_fingerprint": source_fp,
        "label_convention": NEXT_TOKEN,
        # the rows this file draws: first_row .. first_row + its positions - 1 of the stream named by key
        "random_stream": {"key": f"{sampling.philox_key:016x}", "from": STREAM_FROM, "first_row": int(first_row)},
        "generation": generation,
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
    seq_len: int | None = None,
    max_length: int | None = None,
    window_overlap: int | None = None,
    teacher_name: str | None = None,
    teacher_fingerprint: str | None = None,
    flush_every: int = 1,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    max_rows: int = DEFAULT_MAX_ROWS,
    write_behind: bool = True,
    metadata: dict | None = None,
    log_interval: float = 60.0,
    mask_column: str | None = None,
    storage_options: dict | None = None,
) -> Path | str:
    """Label ``tokens`` with ``model`` into the directory ``out`` (one shard per rank and ``manifest.json``).

    ``model``: a local Hugging Face model directory, a hub id already in the local Hugging Face cache (never
    downloaded), or a loaded ``nn.Module``. ``tokens``: anything ``sparselabels.data.open_tokens`` opens (a 2-D
    array or ``.npy``, Megatron ``.bin/.idx``, a Hugging Face dataset or its saved path; ``column`` names the
    token column), a 1-D token stream with ``seq_len`` (sequences of ``seq_len`` tokens, the last one shorter
    if they do not divide), or an iterable source (``datasets.IterableDataset``, torch ``IterableDataset``, a
    generator; one process only). Under ``torchrun`` every rank calls this with the same arguments and labels
    its own contiguous slice.

    Labels position ``t`` holds the teacher's distribution of the token after input token ``t`` (no shift at
    training time). A sequence longer than the teacher's context (``config.max_position_embeddings``,
    ``n_positions``, ...) is an error unless ``max_length`` is given: then longer sequences are labeled in
    windows of ``max_length`` tokens overlapping by ``window_overlap`` (default ``max_length // 2``), each
    position from the window that gives it the most left context (``sparselabels.pipeline.windows``).

    Everything that does not need the weights (options, ``out``, the tokens' paths, shapes and dtypes, their
    ids against the config's vocabulary, their lengths against its context) is checked before they load.
    The random stream is derived from ``seed`` and the token source's fingerprint, so parts of a corpus
    labeled separately with one seed never reuse draws (recorded as ``random_stream``).

    ``resume=True`` continues after a kill (byte-identical to an uninterrupted run with the same settings);
    ``overwrite=True`` starts again over existing output. ``flush_every`` (batches between fsyncs) and
    ``chunk_bytes`` (the writer's chunk size) shape the file's chunks, not its labels; ``max_rows`` bounds the
    rows handed to the sampler at once; ``write_behind`` writes on a background thread while the teacher runs
    the next batch. ``vocab_size`` overrides the label vocabulary (default: the tokenizer's length when smaller
    than the output layer, else the output size); ``tokenizer`` is the tokenizer directory (default: the
    model's); ``teacher_name``/``teacher_fingerprint`` override the computed identity. ``metadata`` is stored
    under the ``"user"`` key. ``mask_column`` names a per-token column of a ``datasets`` source (0/1, or
    ``labels`` with -100): only the positions it keeps are labeled, the others are stored empty, while the
    teacher still reads every token (see :mod:`sparselabels.pipeline.masking`).

    ``out`` may be a URL (``s3://bucket/labels``; ``storage_options`` go to fsspec): each shard is written to a
    local staging directory (:func:`sparselabels.io.upload.staging_dir`), uploaded when complete, and the
    manifest last; ``resume=True`` continues from the staging directory and uploads what is missing. Returns
    ``out``.
    """
    require("generate", "torch", "transformers", extras="hf")
    from sparselabels.data.streams import TokenStream
    from sparselabels.options import check_rounds, check_temperature
    from sparselabels.sampling.rng import check_seed

    # as Python ints from here on (numpy integers are accepted, but metadata stores only plain values)
    batch_size, flush_every, chunk_bytes = (check_int(name, value, 1) for name, value in (
        ("batch_size", batch_size), ("flush_every", flush_every), ("chunk_bytes", chunk_bytes)))
    max_rows, seed = check_int("max_rows", max_rows, 1), check_int("seed", seed, 0)
    check_seed(seed)  # and below 2**64, before anything is written
    check_rounds(rounds)
    check_temperature(temperature)
    if resume and overwrite:
        raise InputError("resume and overwrite exclude each other")
    if window_overlap is not None and max_length is None:
        raise InputError("window_overlap applies to windows: pass max_length too")
    windows = WindowPolicy.make(max_length, window_overlap) if max_length is not None else None
    target = None
    if is_url(out):
        from sparselabels.io.upload import RemoteTarget

        target = RemoteTarget(out, storage_options)
        out = target.staging
    elif storage_options is not None:
        raise InputError("storage_options apply to an output URL (s3://...), not to a local directory")
    out = check_out(out)
    src = open_source(tokens, column, seq_len)
    spec = inspect_teacher(model)
    run = RunOptions(batch_size, dtype, codec, resume, overwrite, progress, flush_every, chunk_bytes, write_behind,
                     metadata, log_interval, windows, mask_column)

    def load() -> Teacher:
        return load_teacher(spec, dtype=dtype, device=device, tokenizer=tokenizer, vocab_size=vocab_size,
                            name=teacher_name, fingerprint=teacher_fingerprint)

    world = distributed.init(resolve_device(device).type)
    try:
        if isinstance(src, TokenStream):
            if mask_column is not None:
                raise InputError("mask_column applies to an indexed datasets source, not to an iterable one")
            _run_stream(spec, load, src, out, world, SamplingOptions(rounds, temperature, seed, 0, max_rows), run,
                        target)
        else:
            lengths = np.asarray(src.lengths(), dtype=np.int64)
            check_context(lengths, spec, windows, src.describe())
            check_token_ids(src, _rank_sequences(len(lengths), batch_size, world), spec.input_size)
            mask = open_mask(src, mask_column)  # every mask checked: a bad column fails here
            shard = _claim_shard(out, world, run, target)  # output not ours, or existing without resume/overwrite
            teacher = load()
            sampling = SamplingOptions(rounds, temperature, seed, teacher.vocab_size, max_rows)
            _run(teacher, src, out, world, sampling, run, mask, lengths=lengths, target=target, shard=shard)
    finally:
        distributed.finish(world)
    return target.url if target is not None else out


def _rank_sequences(num_sequences: int, batch_size: int, world: distributed.World) -> range:
    """The sequences this rank labels: its contiguous run of whole global batches."""
    batches = distributed.batch_slice(-(-num_sequences // batch_size), world.rank, world.size)
    return range(min(batches.start * batch_size, num_sequences), min(batches.stop * batch_size, num_sequences))


def _run(teacher: Teacher, src, out: Path, world: distributed.World, sampling: SamplingOptions,
         run: RunOptions, mask=(None, "mask"), lengths: np.ndarray | None = None, target=None,
         shard: Path | None = None) -> None:
    """Label this rank's sequences into its shard (``shard``: already claimed by the caller) and finish the run."""
    from sparselabels.sampling.rng import stream_key

    if lengths is None:
        lengths = np.asarray(src.lengths(), dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    source_fp = source_fingerprint(src, lengths)
    sampling = replace(sampling, key=stream_key(sampling.seed, source_fp))
    _agree(world, source_fingerprint=source_fp, teacher_fingerprint=teacher.fingerprint,
           vocab_size=teacher.vocab_size, batch_size=run.batch_size, seed=sampling.seed)

    mine = _rank_sequences(len(lengths), run.batch_size, world)
    shard_meta = {"rank": world.rank, "world_size": world.size, "first_sequence": mine.start,
                  "num_sequences": len(mine)}
    meta = _metadata(teacher, sampling, run, source_fp=source_fp, shard=shard_meta,
                     first_row=int(offsets[mine.start]))
    if shard is None:
        shard = _claim_shard(out, world, run, target)
    if shard.exists() and run.resume:
        check_finished(shard, vocab_size=sampling.vocab_size, value_kind="count", rounds=sampling.rounds,
                       codec=run.codec, metadata=meta, num_sequences=len(mine), expected_from="this rank's slice")
    else:
        _write_shard(teacher, src, shard, world, sampling, run, meta, offsets, mine, mask)
    _finish_run(out, world, target)


def _claim_shard(out: Path, world: distributed.World, run: RunOptions, target=None) -> Path:
    """This rank's shard path, after refusing output that is not this run's or exists without resume/overwrite
    (with a ``target``, a URL's RemoteTarget, ``out`` is its local staging directory and the URL is checked too)."""
    distributed.check_no_foreign_shards(out, world.size)
    if target is not None:
        target.check_run_output(world.size, resume=run.resume, overwrite=run.overwrite, rank=world.rank)
    shard = out / run_shard_name(world.rank, world.size)
    if shard.exists() and not (run.resume or run.overwrite):
        raise OutputExistsError(
            f"{shard} exists; pass resume=True to keep the finished shards or overwrite=True to start again"
        )
    return shard


def _finish_run(out: Path, world: distributed.World, target=None) -> None:
    """The manifest over every rank's shard, by rank 0 once all are done. With a ``target`` (a URL's
    RemoteTarget), each rank first uploads its finished shard, and the manifest, built from the uploaded shards
    (ranks on other nodes included), is uploaded last."""
    if target is not None:
        target.upload(out / run_shard_name(world.rank, world.size))
    distributed.barrier(world)
    if world.rank == 0 and target is not None:
        target.write_manifest([run_shard_name(r, world.size) for r in range(world.size)])
    elif world.rank == 0:
        distributed.write_run_manifest(out, world.size)
    distributed.barrier(world)


def _is_tty() -> bool:
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _open_writer(shard: Path, sampling: SamplingOptions, run: RunOptions, meta: dict) -> LabelWriter:
    return LabelWriter(shard, vocab_size=sampling.vocab_size, rounds=sampling.rounds, codec=run.codec,
                       metadata=meta, resume=run.resume, overwrite=run.overwrite, chunk_bytes=run.chunk_bytes)


def _write_shard(teacher: Teacher, src, shard: Path, world: distributed.World, sampling: SamplingOptions,
                 run: RunOptions, meta: dict, offsets: np.ndarray, mine: range, mask=(None, "mask")) -> None:
    """Label this rank's sequences ``mine`` into ``shard``, continuing a partial shard when resuming."""
    writer = _open_writer(shard, sampling, run, meta)
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
            skip = max(todo.start - lo, 0)  # a resumed run reruns the first batch whole and skips what is stored
            _label_batch(teacher, sequences, lo, [int(offsets[i]) for i in range(lo, hi)], skip, k, sampling, run,
                         writer, behind, mask)
            progress.update(int(offsets[hi] - offsets[lo + skip]))
        behind.drain()
    finally:
        behind.stop()


def _label_batch(teacher: Teacher, sequences: list[np.ndarray], lo: int, row_starts: list[int], skip: int, k: int,
                 sampling: SamplingOptions, run: RunOptions, writer: LabelWriter, behind: WriteBehind,
                 mask=(None, "mask")) -> None:
    """Label global batch ``k`` (sequences ``lo ..``) and queue the writes of all but its first ``skip``; the
    positions a loss mask drops are stored empty."""
    labels = label_sequences(teacher.model, sequences, row_starts, sampling, teacher.device, run.windows)
    labels = masked_labels(*mask, lo, sequences, labels)
    fps = [input_fingerprint(s, where=f"tokens, sequence {lo + skip + j}") for j, s in enumerate(sequences[skip:])]
    behind.submit(_write_task(writer, labels[skip:], fps, flush=(k + 1) % run.flush_every == 0))


def _write_task(writer: LabelWriter, labels: list[CsrLabels], fingerprints: list[int], flush: bool):
    def task() -> None:
        for (ids, counts, indptr), fp in zip(labels, fingerprints, strict=True):
            writer.write(ids, counts, indptr, fingerprint=fp)
        if flush:
            writer.flush()

    return task


# -- iterable sources ---------------------------------------------------------------------------------------
def _run_stream(spec: TeacherSpec, load: Callable[[], Teacher], stream, out: Path, world: distributed.World,
                sampling: SamplingOptions, run: RunOptions, target=None) -> None:
    """Label a source read once, in order: one process, batches of ``batch_size`` as they come.

    The stream is identified by its first batch (``stream-blake2b``); a resumed run reads past the sequences
    already stored (nothing else is known of a stream before it is read) and is byte-identical as above.
    """
    from sparselabels.sampling.rng import stream_key

    if world.distributed:
        raise InputError(f"{stream.describe()}: an iterable token source is read by one process; run without "
                         "torchrun, or label an indexed source (.npy, Megatron, a saved datasets directory)")
    sequences = iter(stream)
    head = [_checked_stream_sequence(spec, run, i, s) for i, s in enumerate(itertools.islice(sequences,
                                                                                            run.batch_size))]
    source_fp = stream_fingerprint(head)
    shard = _claim_shard(out, world, run, target)
    teacher = load()
    sampling = replace(sampling, vocab_size=teacher.vocab_size, key=stream_key(sampling.seed, source_fp))
    meta = _metadata(teacher, sampling, run, source_fp=source_fp, first_row=0,
                     shard={"rank": 0, "world_size": 1, "first_sequence": 0})
    if shard.exists() and run.resume:  # finished: its settings must be these (its length cannot be known)
        check_finished(shard, vocab_size=sampling.vocab_size, value_kind="count", rounds=sampling.rounds,
                       codec=run.codec, metadata=meta, num_sequences=None, expected_from="the stream")
    else:
        all_sequences = itertools.chain(head, (_checked_stream_sequence(spec, run, run.batch_size + i, s)
                                               for i, s in enumerate(sequences)))
        writer = _open_writer(shard, sampling, run, meta)
        try:
            with Progress(None, enabled=run.progress, interval=run.log_interval, label="generate") as meter:
                _label_stream(teacher, all_sequences, writer, sampling, run, meter)
        except BaseException:
            writer.abort()
            raise
        writer.close()
    _finish_run(out, world, target)


def _checked_stream_sequence(spec: TeacherSpec, run: RunOptions, index: int, seq: np.ndarray) -> np.ndarray:
    check_sequence_fits(index, len(seq), spec, run.windows, "stream")
    if spec.input_size is not None:
        seq = read_sequence(None, index, spec.input_size, seq)
    return seq


def _label_stream(teacher: Teacher, sequences, writer: LabelWriter, sampling: SamplingOptions, run: RunOptions,
                  progress: Progress) -> None:
    done, row, seen = writer.num_sequences, 0, 0
    behind = WriteBehind(enabled=run.write_behind)
    try:
        for k in itertools.count():
            lo = k * run.batch_size
            batch = [read_sequence(None, lo + j, teacher.input_size, s)
                     for j, s in enumerate(itertools.islice(sequences, run.batch_size))]
            if not batch:
                break
            seen += len(batch)
            starts = (row + np.concatenate(([0], np.cumsum([len(s) for s in batch])))).tolist()
            row = starts[-1]
            skip = min(max(done - lo, 0), len(batch))
            if skip < len(batch):  # batches wholly stored are read past, not labeled again
                _label_batch(teacher, batch, lo, starts[:-1], skip, k, sampling, run, writer, behind)
                progress.update(sum(len(s) for s in batch[skip:]))
        behind.drain()
    finally:
        behind.stop()
    if seen < done:
        raise CompatibilityError(f"{writer.partial_path} holds {done} sequences but the stream has only {seen}")

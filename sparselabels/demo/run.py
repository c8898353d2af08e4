"""``sparselabels demo``: teacher → label files → four students, on a laptop-class CPU, with nothing downloaded.

The pipeline, each step through the library's public functions:

1. **Corpus**: the Python standard library's sources, a byte-level BPE tokenizer (:mod:`.corpus`); held-out text
   is whole files the tokenizer and the models never see.
2. **Teacher**: a small Llama-style model trained with cross-entropy on the training files (:mod:`.models`).
   Corpus, tokenizer and teacher are cached under ``cache_dir``, so a second run starts at step 3.
3. **Labels** for a split of training sequences: RS-KD (N = 50 draws, counts) with :func:`sparselabels.generate`
   and Top-K (the 12 most probable ids, probabilities) with :func:`sparselabels.convert` on the teacher's
   dumped logits; both files are checked with :func:`sparselabels.validate`.
4. **Students**: four copies of one smaller model (same initial weights, same sequence order, same steps, same
   optimiser), trained on the labeled split with

   - *CE*: cross-entropy on the next token (no teacher);
   - *Top-K 12*: :func:`sparselabels.loss.topk_kd_loss` on the Top-K file, renormalised as is usual;
   - *RS-KD*: :func:`sparselabels.loss.sparse_kd_loss_from_hidden` on the RS-KD file (fused with the LM head);
   - *full KD*: :func:`sparselabels.loss.full_kd_loss_from_logits` on the teacher's whole softmax, computed
     online (the teacher runs beside the student: the cost offline labels avoid).

   The sparse students read their labels through :class:`sparselabels.data.SparseLabelDataset`,
   :class:`~sparselabels.data.ResumableSampler` and :class:`~sparselabels.data.SparseLabelCollator`.
   Every student sees the positions 0..T-2 of each sequence (those with a next token for CE).
5. **Table**: held-out LM loss and ECE (:mod:`.metrics`) of each student and of the teacher, bytes per position
   and labels per position of each label file, labeling tokens/s; PNG plots of the held-out loss during training
   and of the reliability diagram (:mod:`.plots`); everything also in ``results.json``.

Nothing is tuned toward an ordering: the table reports whatever the run gives.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparselabels import _machine
from sparselabels.demo.corpus import Corpus, load_corpus
from sparselabels.demo.metrics import ECE_BINS, Evaluation, evaluate
from sparselabels.demo.models import (
    Optimizer,
    TrainSettings,
    build_model,
    count_parameters,
    final_hidden_states,
    fixed_windows,
    llama_config,
    lm_head_weight,
    train_or_load,
)
from sparselabels.errors import InputError, SparseLabelsError

DEFAULT_OUT = "sparselabels-demo"
RANS_CODEC = "rans"
#: The four students, in table order: what each is trained on.
STUDENT_KINDS = ("ce", "topk", "rskd", "full")
Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run; :data:`FULL` (the default) and :data:`QUICK` (for tests)."""

    corpus_bytes: int
    vocab_size: int
    teacher_hidden: int
    teacher_layers: int
    teacher_heads: int
    teacher_train: TrainSettings
    student_hidden: int
    student_layers: int
    student_heads: int
    student_train: TrainSettings  # batch_size and seq_len also fix the labeled sequences' shape
    label_sequences: int  # training sequences labeled (students cycle through them)
    label_batch: int  # sequences per teacher forward while labeling
    rounds: int = 50
    topk: int = 12
    eval_batches: int = 16  # held-out windows of student_train.seq_len tokens, eval_batch_size per batch
    eval_batch_size: int = 16
    curve_points: int = 10  # held-out evaluations during training, for the loss-curve plot
    curve_batches: int = 4  # held-out batches per curve point (the final numbers use all eval_batches)


#: Sized to finish in under 10 minutes on 2 CPU cores from nothing (measured 6-10 minutes on a shared 2-core AMD
#: EPYC, about half of it teacher training) while leaving the comparison meaningful: a 4,096-token vocabulary, so
#: Top-12 truncation drops real mass; a student half the teacher's size; enough steps for KD to show.
FULL = DemoSettings(
    corpus_bytes=2_000_000,
    vocab_size=4096,
    teacher_hidden=192,
    teacher_layers=3,
    teacher_heads=6,
    teacher_train=TrainSettings(steps=500, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=30, seed=0),
    student_hidden=128,
    student_layers=2,
    student_heads=4,
    student_train=TrainSettings(steps=200, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=20, seed=0),
    label_sequences=512,
    label_batch=32,
)

QUICK = DemoSettings(
    corpus_bytes=150_000,
    vocab_size=512,
    teacher_hidden=32,
    teacher_layers=1,
    teacher_heads=2,
    teacher_train=TrainSettings(steps=6, batch_size=4, seq_len=32, warmup_steps=2, seed=0),
    student_hidden=16,
    student_layers=1,
    student_heads=2,
    student_train=TrainSettings(steps=4, batch_size=4, seq_len=32, warmup_steps=2, seed=0),
    label_sequences=8,
    label_batch=4,
    eval_batches=2,
    eval_batch_size=4,
    curve_points=2,
    curve_batches=1,
)


def student_names(settings: DemoSettings) -> dict[str, str]:
    """The table's name of each student kind, e.g. ``{"topk": "Top-K 12", "rskd": "RS-KD (N=50)", ...}``."""
    return {"ce": "CE only", "topk": f"Top-K {settings.topk}", "rskd": f"RS-KD (N={settings.rounds})",
            "full": "full KD (online)"}


STUDENTS = tuple(student_names(FULL).values())


@dataclass
class StudentResult:
    """One row of the table."""

    kind: str  # one of STUDENT_KINDS
    name: str
    heldout_loss: float
    ece: float  # a fraction; the table prints percent
    train_seconds: float
    curve: list[tuple[int, float]]  # (step, held-out loss on the curve batches)
    parameters: int = 0
    label_file: str | None = None
    label_bytes_per_position: float | None = None  # raw codec (what the student reads)
    compact_bytes_per_position: float | None = None  # the same labels in the rans codec
    labels_per_position: float | None = None
    labeling_tokens_per_second: float | None = None


@dataclass
class DemoResult:
    """Everything the demo measured; :meth:`table` is what ``sparselabels demo`` prints."""

    out_dir: Path
    teacher: dict[str, Any]
    students: list[StudentResult]
    files: dict[str, str]
    timings: dict[str, float]
    settings: dict[str, Any]
    machine: dict[str, Any]
    reliability: dict[str, dict[str, list]] = field(repr=False, default_factory=dict)

    def ordering(self, metric: str = "heldout_loss") -> list[str]:
        """Student names from best (lowest) to worst by ``metric`` ("heldout_loss" or "ece")."""
        return [row.name for row in sorted(self.students, key=lambda r: getattr(r, metric))]

    def table(self) -> str:
        return format_table(self)

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "teacher": self.teacher,
            "students": [asdict(row) for row in self.students],
            "ordering": {"heldout_loss": self.ordering("heldout_loss"), "ece": self.ordering("ece")},
            "files": self.files,
            "timings": self.timings,
            "settings": self.settings,
            "machine": self.machine,
            "reliability": self.reliability,
        }


# -- the run ------------------------------------------------------------------------------------------------
def run_demo(
    out_dir: str | os.PathLike = DEFAULT_OUT,
    *,
    quick: bool = False,
    device: str = "cpu",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    settings: DemoSettings | None = None,
    log: Log | None = print,
) -> DemoResult:
    """Run the whole demo into ``out_dir`` and return its numbers (see the module docstring).

    ``cache_dir`` (default ``out_dir/cache``) keeps the corpus, tokenizer and teacher between runs. ``settings``
    overrides the sizes chosen by ``quick``. ``log`` receives progress lines (None: silent).
    """
    say = log or (lambda _line: None)
    settings = settings or (QUICK if quick else FULL)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    dev = _resolve_device(device)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else out / "cache"
    wall, cpu = time.perf_counter(), time.process_time()
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other work sharing the cores
    timings: dict[str, float] = {}

    # 1. corpus
    started = time.perf_counter()
    corpus = load_corpus(cache_dir=cache, max_bytes=settings.corpus_bytes, vocab_size=settings.vocab_size)
    timings["corpus_s"] = time.perf_counter() - started
    say(f"[1/5] corpus {corpus.fingerprint}: Python {platform.python_version()} standard library, "
        f"{len(corpus.files)} files, {len(corpus.train_ids):,} training / {len(corpus.heldout_ids):,} held-out "
        f"tokens, BPE vocabulary {corpus.vocab_size:,} ({timings['corpus_s']:.0f} s)")

    # 2. teacher
    started = time.perf_counter()
    teacher_config = llama_config(corpus.vocab_size, hidden_size=settings.teacher_hidden,
                                  num_layers=settings.teacher_layers, num_heads=settings.teacher_heads)
    if not quick:
        say(f"[2/5] teacher: training {settings.teacher_train.steps} steps on {dev.type} (cached after this run)...")
    teacher, teacher_record = train_or_load(
        teacher_config, corpus.train_ids, _seeded(settings.teacher_train, seed), cache_dir=cache,
        tag=corpus.fingerprint, init_seed=seed, log_every=0 if quick else 100, device=dev)
    timings["teacher_s"] = time.perf_counter() - started
    eval_batches = fixed_windows(corpus.heldout_ids, batch_size=settings.eval_batch_size,
                                 seq_len=settings.student_train.seq_len, count=settings.eval_batches, seed=1234)
    teacher_eval = evaluate(teacher, eval_batches)
    how = "loaded from cache" if teacher_record.get("cached") else f"trained in {timings['teacher_s']:.0f} s"
    say(f"[2/5] teacher: {count_parameters(teacher):,} parameters, {how}; held-out loss {teacher_eval.loss:.3f}, "
        f"ECE {100 * teacher_eval.ece:.2f}%")

    # 3. labels
    tokens_path = out / "tokens.npy"
    tokens = label_split(corpus, settings.label_sequences, settings.student_train.seq_len, seed=seed)
    np.save(tokens_path, tokens)
    labels = make_labels(teacher, tokens_path, out, settings, seed=seed, say=say)
    timings.update({"label_rskd_s": labels["rskd"]["seconds"], "label_topk_s": labels["topk"]["seconds"]})

    # 4. students
    students, evaluations = train_students(corpus, teacher, labels, tokens_path, settings, eval_batches,
                                           seed=seed, device=dev, say=say)
    evaluations["teacher"] = teacher_eval

    # 5. results
    from sparselabels.demo.plots import COLOURS, SMOKE_TEST_NOTE, plot_loss_curves, plot_reliability

    diagrams = {name: ev.reliability for name, ev in evaluations.items()}
    colours = {**{row.name: colour for row, colour in zip(students, COLOURS, strict=False)}, "teacher": "#7f7f7f"}
    files = {"out_dir": str(out), "cache_dir": str(cache), "tokens": str(tokens_path),
             "labels_rskd": str(labels["rskd"]["path"]), "labels_topk": str(labels["topk"]["path"]),
             "labels_rskd_compact": str(labels["rskd"]["compact_path"]),
             "labels_topk_compact": str(labels["topk"]["compact_path"])}
    files["loss_curves_png"] = str(plot_loss_curves(
        {row.name: ([s for s, _ in row.curve], [v for _, v in row.curve]) for row in students},
        out / "loss_curves.png", reference={"teacher": teacher_eval.loss},
        title=f"Held-out loss of the students (first {settings.curve_batches} eval batches)", colours=colours,
        note=SMOKE_TEST_NOTE if quick else None))
    files["reliability_png"] = str(plot_reliability(diagrams, out / "reliability.png", colours=colours,
                                                    note=SMOKE_TEST_NOTE if quick else None))
    timings["students_s"] = sum(row.train_seconds for row in students)
    timings["total_wall_s"] = time.perf_counter() - wall
    timings["total_cpu_s"] = time.process_time() - cpu
    result = DemoResult(
        out_dir=out,
        teacher={"parameters": count_parameters(teacher), "heldout_loss": teacher_eval.loss, "ece": teacher_eval.ece,
                 "trained_steps": settings.teacher_train.steps, "cached": bool(teacher_record.get("cached")),
                 "train_seconds": teacher_record.get("seconds")},
        students=students,
        files=files,
        timings=timings,
        settings={**asdict(settings), "quick": quick, "seed": seed, "device": str(dev),
                  "student_parameters": students[0].parameters,
                  "heldout_predictions": teacher_eval.predictions, "ece_bins": ECE_BINS,
                  "corpus_fingerprint": corpus.fingerprint},
        machine={**machine_info(dev), "load_average_1min_at_start": load_at_start},
        reliability={name: {"counts": rel.counts.tolist(), "confidence": _nan_to_none(rel.confidence),
                            "accuracy": _nan_to_none(rel.accuracy)} for name, rel in diagrams.items()},
    )
    files["results_json"] = str(out / "results.json")
    (out / "results.json").write_text(json.dumps(result.to_json(), indent=2))
    say(f"[5/5] plots and results: {files['loss_curves_png']}, {files['reliability_png']}, {files['results_json']}")
    return result


def train_students(corpus: Corpus, teacher: torch.nn.Module, labels: dict[str, dict[str, Any]], tokens_path: Path,
                   settings: DemoSettings, eval_batches: list[torch.Tensor], *, seed: int, device: torch.device,
                   say: Log) -> tuple[list[StudentResult], dict[str, Evaluation]]:
    """Train and evaluate the four students: same initial weights, same sequence order, same steps."""
    config = llama_config(corpus.vocab_size, hidden_size=settings.student_hidden, num_layers=settings.student_layers,
                          num_heads=settings.student_heads)
    train_settings = _seeded(settings.student_train, seed)
    curve_every = max(1, train_settings.steps // max(1, settings.curve_points))
    names = student_names(settings)
    students: list[StudentResult] = []
    evaluations: dict[str, Evaluation] = {}
    orders: dict[str, str] = {}
    for kind in STUDENT_KINDS:
        model = build_model(config, seed=seed + 1).to(device)
        if not students:
            say(f"[4/5] students: 4 x {count_parameters(model):,} parameters (teacher "
                f"{count_parameters(teacher):,}), {train_settings.steps} steps of {train_settings.batch_size} x "
                f"{train_settings.seq_len} tokens each, on {settings.label_sequences} labeled sequences")
        store = labels["topk" if kind == "topk" else "rskd"]["path"]  # CE and full KD read only its tokens
        seconds, curve, orders[kind] = train_student(
            model, store, tokens_path, student_loss(kind, teacher), train_settings, curve_every=curve_every,
            curve_batches=eval_batches[: settings.curve_batches], device=device)
        result = evaluations[names[kind]] = evaluate(model, eval_batches)
        row = StudentResult(kind, names[kind], result.loss, result.ece, seconds, curve, count_parameters(model))
        if kind in labels:
            info = labels[kind]
            row.label_file = str(info["path"])
            row.label_bytes_per_position = info["bytes"] / info["positions"]
            row.compact_bytes_per_position = info["compact_bytes"] / info["positions"]
            row.labels_per_position = info["labels"] / info["positions"]
            row.labeling_tokens_per_second = info["positions"] / info["seconds"]
        students.append(row)
        say(f"[4/5] {row.name}: held-out loss {result.loss:.3f}, ECE {100 * result.ece:.2f}% ({seconds:.0f} s)")
    if len(set(orders.values())) != 1:
        raise SparseLabelsError(f"the students did not see the same sequences in the same order: {orders}")
    return students, evaluations


def label_split(corpus: Corpus, count: int, seq_len: int, *, seed: int) -> np.ndarray:
    """``[count, seq_len]`` int32 training sequences: non-overlapping windows of the training tokens, ``count`` of
    them chosen at random (seeded) so that the split samples the whole training set."""
    windows = len(corpus.train_ids) // seq_len
    if count > windows:
        raise InputError(f"asked for {count} sequences of {seq_len} tokens but the training split holds {windows}")
    chosen = np.sort(np.random.default_rng(seed).choice(windows, size=count, replace=False))
    return np.stack([corpus.train_ids[w * seq_len : (w + 1) * seq_len] for w in chosen]).astype(np.int32)


def make_labels(teacher: torch.nn.Module, tokens_path: Path, out: Path, settings: DemoSettings, *, seed: int,
                say: Log) -> dict[str, dict[str, Any]]:
    """Write, validate and measure the RS-KD and Top-K label files for the sequences in ``tokens_path``."""
    import sparselabels as sl

    device = next(teacher.parameters()).device
    tokens = np.load(tokens_path)
    positions = int(tokens.size)

    rskd_path = out / "labels-rskd"
    started = time.perf_counter()
    # Students read the raw codec (fastest to decode); the rans copies below measure what storing costs.
    sl.generate(teacher, tokens_path, rskd_path, rounds=settings.rounds, batch_size=settings.label_batch,
                dtype="float32", device=str(device), seed=seed, codec="raw", overwrite=True, progress=False,
                teacher_name="sparselabels-demo-teacher", metadata={"demo": "sparselabels demo"})
    rskd_seconds = time.perf_counter() - started

    # Top-K: the baseline's usual route — dump the teacher's logits, then convert them (sl.convert(topk=K)).
    topk_path = out / f"labels-top{settings.topk}.slbl"
    logits_path = out / "teacher-logits.npy"
    started = time.perf_counter()
    dump_logits(teacher, tokens, logits_path, batch_size=settings.label_batch)
    with sl.open_labels(rskd_path) as rskd:
        teacher_fingerprint = rskd.metadata.get("teacher_fingerprint")
    sl.convert(logits_path, topk_path, topk=settings.topk, tokens=tokens_path, teacher="sparselabels-demo-teacher",
               teacher_fingerprint=teacher_fingerprint, codec="raw", overwrite=True,
               metadata={"demo": "sparselabels demo"})
    topk_seconds = time.perf_counter() - started
    logits_bytes = logits_path.stat().st_size
    logits_path.unlink()  # S x T x V float32: by far the largest file; the labels are what is kept

    result: dict[str, dict[str, Any]] = {}
    for key, path, seconds in (("rskd", rskd_path, rskd_seconds), ("topk", topk_path, topk_seconds)):
        report = _validated(path, positions)
        # The same labels in the rans codec (students read the raw files: fastest to decode).
        compact = sl.merge(out / f"{path.stem}.{RANS_CODEC}.slbl", [path], copy=True, codec=RANS_CODEC,
                           overwrite=True)
        _validated(compact, positions)
        result[key] = {"path": path, "seconds": seconds, "bytes": _stored_bytes(path), "positions": positions,
                       "labels": report.num_labels, "sequences": report.num_sequences, "compact_path": compact,
                       "compact_bytes": _stored_bytes(compact)}
        name = "RS-KD" if key == "rskd" else f"Top-K {settings.topk}"
        say(f"[3/5] {name} labels: {path} ({report.num_sequences} sequences, {positions:,} positions, "
            f"{report.num_labels / positions:.1f} labels per position, {result[key]['bytes'] / positions:.1f} "
            f"bytes per position raw, {result[key]['compact_bytes'] / positions:.1f} in {RANS_CODEC}; "
            f"{positions / seconds:,.0f} tokens/s) - valid")
    result["topk"]["dumped_logits_bytes"] = logits_bytes
    return result


def _validated(path: Path, positions: int):
    """The validation report of a label file or store the demo wrote; an invalid one is an error."""
    import sparselabels as sl

    report = sl.validate(path)
    if not report.ok:
        raise SparseLabelsError(f"the demo wrote an invalid label file {path}: {[str(p) for p in report.problems]}")
    if report.num_positions != positions:
        raise SparseLabelsError(f"{path} holds {report.num_positions} positions, expected {positions}")
    return report


def _stored_bytes(path: Path) -> int:
    """Bytes on disk of a label file, or of every file of a shard directory (shards and manifest)."""
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


@torch.inference_mode()
def dump_logits(teacher: torch.nn.Module, tokens: np.ndarray, path: Path, *, batch_size: int) -> Path:
    """The teacher's float32 logits ``[S, T, V]`` for every token sequence, written to a ``.npy`` file."""
    device = next(teacher.parameters()).device
    vocab = teacher.get_output_embeddings().weight.shape[0]
    dump = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(*tokens.shape, vocab))
    try:
        for lo in range(0, len(tokens), batch_size):
            ids = torch.from_numpy(tokens[lo : lo + batch_size].astype(np.int64)).to(device)
            dump[lo : lo + len(ids)] = teacher(input_ids=ids, use_cache=False).logits.float().cpu().numpy()
        dump.flush()
    finally:
        del dump
    return path


# -- students -----------------------------------------------------------------------------------------------
StudentLoss = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def student_loss(kind: str, teacher: torch.nn.Module) -> StudentLoss:
    """The loss of one student kind on a collated batch (positions 0..T-2 of every sequence)."""
    from sparselabels.loss import full_kd_loss_from_logits, sparse_kd_loss_from_hidden, topk_kd_loss

    def cross_entropy(model, batch):
        ids = batch["input_ids"]
        logits = model(input_ids=ids).logits[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    def top_k(model, batch):
        logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
        target_ids, target_weights = batch["targets"].to_padded()  # the Top-K loss takes padded targets
        return topk_kd_loss(logits, target_ids[:, :-1], target_weights[:, :-1])

    def rs_kd(model, batch):
        hidden = final_hidden_states(model, batch["input_ids"])
        mask = torch.ones(hidden.shape[:-1], dtype=torch.bool, device=hidden.device)
        mask[:, -1] = False  # positions 0..T-2, as the other students (the CSR targets are not sliced)
        return sparse_kd_loss_from_hidden(hidden, lm_head_weight(model), batch["targets"], mask=mask)

    def full_kd(model, batch):
        ids = batch["input_ids"]
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids, use_cache=False).logits[:, :-1]
        return full_kd_loss_from_logits(model(input_ids=ids).logits[:, :-1], teacher_logits)

    return dict(zip(STUDENT_KINDS, (cross_entropy, top_k, rs_kd, full_kd), strict=True))[kind]


def student_batches(labels: str | os.PathLike, tokens: str | os.PathLike, settings: TrainSettings,
                    device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """``settings.steps`` collated batches from a label store joined to its tokens, epoch after epoch, in the
    order of a :class:`~sparselabels.data.ResumableSampler` seeded with ``settings.seed`` (the same order for any
    two stores of the same length)."""
    from torch.utils.data import DataLoader

    from sparselabels.data import ResumableSampler, SparseLabelCollator, SparseLabelDataset

    dataset = SparseLabelDataset(labels, tokens)
    if len(dataset) < settings.batch_size:
        raise InputError(f"{len(dataset)} labeled sequences are fewer than one batch of {settings.batch_size}")
    sampler = ResumableSampler(len(dataset), seed=settings.seed)
    loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler,
                        collate_fn=SparseLabelCollator(layout="csr"), drop_last=True)
    step, epoch = 0, 0
    while True:
        sampler.set_epoch(epoch)
        for batch in loader:
            yield {k: v.to(device) for k, v in batch.items()}
            step += 1
            if step == settings.steps:
                return
        epoch += 1


def train_student(model: torch.nn.Module, labels: str | os.PathLike, tokens: str | os.PathLike, loss_fn: StudentLoss,
                  settings: TrainSettings, *, curve_every: int, curve_batches: list[torch.Tensor],
                  device: torch.device) -> tuple[float, list[tuple[int, float]], str]:
    """Train with the same optimiser and schedule as the teacher's trainer (AdamW, warm-up, cosine decay).

    Returns the training seconds (held-out evaluations excluded), the loss curve and a digest of the sequence
    order seen (equal for students fed the same order).
    """
    model.train()
    optimizer = Optimizer(model, settings)
    order = hashlib.blake2b(digest_size=8)
    curve: list[tuple[int, float]] = []
    seconds = 0.0
    started = time.perf_counter()
    for step, batch in enumerate(student_batches(labels, tokens, settings, device), start=1):
        order.update(batch["indices"].cpu().numpy().tobytes())
        loss = loss_fn(model, batch)
        if not torch.isfinite(loss.detach()):
            raise SparseLabelsError(f"student loss became {float(loss)} at step {step}")
        optimizer.step(loss)
        if step % curve_every == 0 or step == settings.steps:
            seconds += time.perf_counter() - started
            curve.append((step, evaluate(model, curve_batches).loss))  # evaluate restores train mode
            started = time.perf_counter()
    seconds += time.perf_counter() - started
    model.eval()
    return seconds, curve, order.hexdigest()


# -- reporting ----------------------------------------------------------------------------------------------
def format_table(result: DemoResult) -> str:
    """The table ``sparselabels demo`` prints (Markdown, so it pastes into a README as is)."""
    t = result.teacher
    lines = [
        f"| student | held-out LM loss | ECE | labels/position | label bytes/position (raw / {RANS_CODEC}) | "
        "labeling tokens/s | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result.students:
        stored = "-" if row.label_bytes_per_position is None else \
            f"{row.label_bytes_per_position:.1f} / {row.compact_bytes_per_position:.1f}"
        lines.append(f"| {row.name} | {row.heldout_loss:.3f} | {100 * row.ece:.2f}% | "
                     f"{_fmt(row.labels_per_position, '.1f')} | {stored} | "
                     f"{_fmt(row.labeling_tokens_per_second, ',.0f')} | {row.train_seconds:.0f} |")
    lines.append(f"| *teacher (reference)* | {t['heldout_loss']:.3f} | {100 * t['ece']:.2f}% | - | - | - | - |")
    settings = result.settings
    lines += [
        "",
        f"Held-out loss, best first: {' < '.join(result.ordering('heldout_loss'))}.",
        f"ECE, best first: {' < '.join(result.ordering('ece'))}.",
        f"Teacher {t['parameters']:,} parameters, students {settings['student_parameters']:,}; vocabulary "
        f"{settings['vocab_size']:,}; {settings['student_train']['steps']} student steps of "
        f"{settings['student_train']['batch_size']} x {settings['student_train']['seq_len']} tokens; "
        f"held-out: {settings['heldout_predictions']:,} next-token predictions, ECE over {settings['ece_bins']} bins.",
        "Labeling tokens/s includes the teacher's forward pass (RS-KD: sl.generate; Top-K: forward, logits dump "
        "and sl.convert).",
    ]
    return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def machine_info(device: torch.device) -> dict[str, Any]:
    """What ran the demo: date, CPU model, cores, torch threads, versions, and the GPU when one was used."""
    info = _machine.machine_info(("torch",))
    info["torch_threads"] = torch.get_num_threads()
    info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _resolve_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device must be cpu or cuda, got {device!r}")
    return dev


def _seeded(settings: TrainSettings, seed: int) -> TrainSettings:
    from dataclasses import replace

    return replace(settings, seed=settings.seed + seed)


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]

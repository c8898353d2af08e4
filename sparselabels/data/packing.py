"""Sequence packing: whole labeled documents packed into rows of ``seq_len`` positions.

``PackedDataset(dataset, seq_len)`` plans the rows once, from the sequence lengths alone (no labels are read):
best-fit decreasing — documents longest first (ties: lower index first), each into the row with the least room that
still fits it, else a new row. The plan is a pure function of the lengths and ``seq_len``, so any process and any
run gets the same rows; item ``r`` is row ``r``, so :class:`~sparselabels.data.ResumableSampler` (or any sampler)
orders and resumes rows exactly as it does sequences. Inside a row the documents keep ascending index order.

A document is never split: one longer than ``seq_len`` is refused with an InputError naming it (splitting would
train its second part without the context the teacher saw). Empty documents take no room and are left out.

:meth:`PackedDataset.collator` collates rows like :func:`~sparselabels.data.collate` (padded to ``seq_len``) and
adds what attention needs to keep documents apart:

* ``position_ids`` int64 ``[B, T]``: 0, 1, ... restarting at every document; a row's padding tail is its own
  segment (restarting at 0);
* ``cu_seq_lens`` int32 ``[S + 1]``: segment boundaries over the flattened ``B * T`` tokens (documents and padding
  tails), for varlen (flash) attention; ``max_length``: the longest segment (a Python int);
* ``document_lengths`` int64 ``[B, D]`` (0 past a row's last document) and ``documents`` int64 ``[B, D]``
  (source indices, -1 past the last).

Labels, input ids and loss masks stay with their tokens: a row is its documents' CSR labels concatenated.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass

import numpy as np
import torch.utils.data

from sparselabels.data.collate import SparseLabelCollator
from sparselabels.errors import InputError, check_int


def plan_rows(lengths: np.ndarray, seq_len: int) -> list[np.ndarray]:
    """Best-fit decreasing: the source indices of each row, ascending within a row (see the module docstring)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    too_long = np.flatnonzero(lengths > seq_len)
    if too_long.size:
        i = int(too_long[0])
        raise InputError(f"packing: document {i} has {int(lengths[i])} positions, more than seq_len={seq_len} "
                         f"({too_long.size} documents are longer); documents are never split: raise seq_len or "
                         "leave the long documents out")
    order = np.argsort(-lengths, kind="stable")
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row) sorted: the best fit is the first with room >= length
    for i in order.tolist():
        n = int(lengths[i])
        if n == 0:
            continue
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, row = free.pop(at)
        else:
            room, row = seq_len, len(rows)
            rows.append([])
        rows[row].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, row))
    return [np.sort(np.asarray(r, dtype=np.int64)) for r in rows]


def packing_efficiency(lengths: np.ndarray, seq_len: int) -> float:
    """Real positions / row slots of the packing plan (1.0 = no padding)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    rows = plan_rows(lengths, seq_len)
    return float(lengths.sum()) / max(len(rows) * seq_len, 1)


@dataclass(frozen=True, slots=True)
class PackedItem:
    """One packed row: its documents' labels concatenated (CSR), input ids and loss mask alike."""

    index: int
    ids: np.ndarray
    values: np.ndarray
    indptr: np.ndarray
    input_ids: np.ndarray | None
    rounds: int | None
    vocab_size: int
    loss_mask: np.ndarray | None
    documents: np.ndarray  # int64: source indices
    document_lengths: np.ndarray  # int64

    @property
    def num_positions(self) -> int:
        return int(self.indptr.shape[0] - 1)


def _concat_items(row: int, items: list, documents: np.ndarray) -> PackedItem:
    lengths = np.array([it.indptr.shape[0] - 1 for it in items], dtype=np.int64)
    label_counts = [int(it.indptr[-1]) for it in items]
    starts = np.concatenate([[0], np.cumsum(label_counts)[:-1]]).astype(np.int64)
    indptr = np.concatenate([np.zeros(1, np.int64)] + [it.indptr[1:].astype(np.int64) + s
                                                        for it, s in zip(items, starts, strict=True)])
    values = np.concatenate([getattr(it, "values", None) if getattr(it, "values", None) is not None else it.counts
                             for it in items])
    have_ids = [it.input_ids is not None for it in items]
    input_ids = np.concatenate([np.asarray(it.input_ids) for it in items]) if all(have_ids) else None
    masks = [getattr(it, "loss_mask", None) for it in items]
    loss_mask = None
    if any(m is not None for m in masks):
        loss_mask = np.concatenate([np.ones(n, np.bool_) if m is None else np.asarray(m, np.bool_)
                                    for m, n in zip(masks, lengths, strict=True)])
    first = items[0]
    return PackedItem(row, np.concatenate([it.ids for it in items]), values, indptr, input_ids,
                      getattr(first, "rounds", None), first.vocab_size, loss_mask, documents, lengths)


class PackedDataset(torch.utils.data.Dataset):
    """Rows of ``seq_len`` positions, each holding whole documents of ``dataset`` (see the module docstring).

    ``dataset``: a :class:`~sparselabels.data.SparseLabelDataset` (or any map-style dataset of items with
    ``ids``/``values``/``indptr`` and a ``labels.sequence_lengths``; pass ``lengths`` for others).
    """

    def __init__(self, dataset, seq_len: int, *, lengths: SequenceABC[int] | np.ndarray | None = None) -> None:
        self.seq_len = check_int("seq_len", seq_len, 1)
        self.dataset = dataset
        if lengths is None:
            labels = getattr(dataset, "labels", None)
            if labels is None:
                raise InputError("PackedDataset needs the documents' lengths: pass lengths= for this dataset")
            lengths = labels.sequence_lengths
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.shape != (len(dataset),):
            raise InputError(f"PackedDataset: {self.lengths.shape[0]} lengths for {len(dataset)} documents")
        self.rows = plan_rows(self.lengths, self.seq_len)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> PackedItem:
        documents = self.rows[index]
        read_many = getattr(self.dataset, "__getitems__", None)  # a row's documents read together where possible
        items = read_many(documents.tolist()) if read_many else [self.dataset[int(i)] for i in documents]
        for it, i in zip(items, documents.tolist(), strict=True):
            if it.indptr.shape[0] - 1 != self.lengths[i]:
                raise InputError(f"PackedDataset: document {i} has {it.indptr.shape[0] - 1} positions, the plan "
                                 f"expected {int(self.lengths[i])}")
        return _concat_items(int(index), items, documents)

    @property
    def efficiency(self) -> float:
        """Real positions / row slots (1.0 = no padding)."""
        return float(self.lengths.sum()) / max(len(self.rows) * self.seq_len, 1)

    def collator(self, **options) -> PackedCollator:
        """A :class:`PackedCollator` padding to ``seq_len``; ``options`` as :class:`SparseLabelCollator`'s."""
        options.setdefault("pad_to", self.seq_len)
        return PackedCollator(**options)

    def __repr__(self) -> str:
        return (f"PackedDataset({self.dataset!r}, seq_len={self.seq_len}, rows={len(self)}, "
                f"efficiency={self.efficiency:.3f})")


def packing_keys(document_lengths: list[np.ndarray], T: int) -> dict[str, torch.Tensor | int]:
    """``position_ids``, ``cu_seq_lens``, ``max_length``, ``document_lengths`` of rows padded to ``T``."""
    B = len(document_lengths)
    D = max((d.shape[0] for d in document_lengths), default=0)
    positions = np.zeros((B, T), dtype=np.int64)
    doc_lengths = np.zeros((B, max(D, 1)), dtype=np.int64)
    segments: list[int] = []
    for b, lens in enumerate(document_lengths):
        start = 0
        for n in lens.tolist():
            positions[b, start : start + n] = np.arange(n)
            segments.append(n)
            start += n
        if start < T:
            positions[b, start:] = np.arange(T - start)
            segments.append(T - start)
        doc_lengths[b, : lens.shape[0]] = lens
    cu = np.zeros(len(segments) + 1, dtype=np.int32)
    np.cumsum(segments, out=cu[1:])
    return {"position_ids": torch.from_numpy(positions), "cu_seq_lens": torch.from_numpy(cu),
            "max_length": int(max(segments, default=0)), "document_lengths": torch.from_numpy(doc_lengths)}


def _in_documents(exc: InputError, batch: SequenceABC) -> InputError:
    """A collate error at (row, position) of a packed batch, said as the document and its position there: the
    row's index is not a sequence of the source."""
    rows = [item for item in batch if getattr(item, "index", None) == exc.sequence]
    if exc.position is None or len(rows) != 1 or getattr(rows[0], "document_lengths", None) is None:
        return exc
    row, at = rows[0], exc.position
    ends = np.cumsum(row.document_lengths)
    d = int(np.searchsorted(ends, at, side="right"))
    if d >= len(row.documents):
        return exc
    doc, pos = int(row.documents[d]), at - (int(ends[d - 1]) if d else 0)
    said = f"sequence {exc.sequence}, position {at}:"
    message = str(exc)
    message = (message.replace(said, f"packed row {exc.sequence}, position {at} (document {doc}, position {pos}):", 1)
               if said in message else f"{message} (packed row {exc.sequence}, position {at}: document {doc}, "
                                       f"position {pos})")
    location = {k: v for k, v in exc.location.items() if k not in ("sequence", "position")}
    return type(exc)(message, sequence=doc, position=pos, **location)


class PackedCollator(SparseLabelCollator):
    """:class:`SparseLabelCollator` for :class:`PackedItem` rows, adding the packing keys (module docstring)."""

    def __call__(self, batch: SequenceABC) -> dict[str, torch.Tensor]:
        try:
            out = super().__call__(batch)
        except InputError as exc:
            raise _in_documents(exc, batch) from None
        T = int(out["attention_mask"].shape[1])
        for item in batch:
            if getattr(item, "document_lengths", None) is None:
                raise InputError(f"PackedCollator: item {getattr(item, 'index', '?')} is not a packed row")
        out.update(packing_keys([np.asarray(item.document_lengths, np.int64) for item in batch], T))
        D = out["document_lengths"].shape[1]
        documents = np.full((len(batch), D), -1, dtype=np.int64)
        for b, item in enumerate(batch):
            documents[b, : len(item.documents)] = item.documents
        out["documents"] = torch.from_numpy(documents)
        return out

    def __repr__(self) -> str:
        return "Packed" + super().__repr__()

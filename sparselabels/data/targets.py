"""``SparseTargets``: a batch's teacher labels in CSR form, the compact alternative to padded ``[B, T, K]`` targets.

The labels of the row-major ``[B, T]`` grid of positions are stored as

* ``offsets`` int64 ``[B*T + 1]``: position ``p = b*T + t`` holds labels ``offsets[p]:offsets[p+1]`` (padding
  positions hold none);
* ``ids`` int32 ``[L]``: token ids, ascending within a position;
* ``counts`` uint8 ``[L]`` with ``rounds`` (weight = count / rounds) for count labels, or ``probs`` float32
  ``[L]`` for probability labels.

That is ~5 bytes per label for counts against ~33 for padded int64 ids and float32 weights at LM-like padding
factors. Weights are formed where the targets sit (on the GPU after ``.to("cuda")``), from a 256-entry table, so
they have the same bits as the padded collate's ``count / rounds``.

The parts are usually views of one buffer (``collate(..., layout="csr")`` allocates them so): then ``.to()`` and
``.pin_memory()`` move that buffer once, and pickling sends it as one piece (one shared-memory block per batch
out of a DataLoader worker).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from sparselabels.errors import InputError, check_int

_PARTS = ("offsets", "ids", "counts", "probs")
_DTYPES = {"offsets": torch.int64, "ids": torch.int32, "counts": torch.uint8, "probs": torch.float32}


# Padding every position to the widest one is refused when it would take this many slots (12 bytes each:
# id and weight) and more than _MAX_PADDING times the labels there are: one position of 65,535 labels in a
# 4,000-position sequence (a valid 400 KB file) would otherwise take 3 GB.
_PADDING_FREE_SLOTS = 1 << 24
_MAX_PADDING = 64


def padding_is_unbounded(slots: int, labels: int) -> bool:
    """Whether ``slots`` padded slots for ``labels`` labels is past the bound (the padded collate and
    :meth:`SparseTargets.to_padded` refuse it)."""
    return slots > _PADDING_FREE_SLOTS and slots > _MAX_PADDING * max(labels, 1)


class SparseTargets:
    """Sparse teacher targets of a ``[B, T]`` batch in CSR form. See the module docstring.

    Args:
        offsets: int64 ``[B*T + 1]``.
        ids: int32 ``[L]``.
        counts: uint8 ``[L]`` (with ``rounds``), or
        probs: float32 ``[L]`` — exactly one of the two.
        rounds: draws per position, for counts.
        shape: ``(B, T)`` (any leading shape whose product is ``len(offsets) - 1``).
        width: the most labels at one position (the ``K`` of :meth:`to_padded`); computed when not given.
    """

    __slots__ = ("counts", "ids", "offsets", "probs", "rounds", "shape", "width")

    def __init__(self, offsets: torch.Tensor, ids: torch.Tensor, *, counts: torch.Tensor | None = None,
                 probs: torch.Tensor | None = None, rounds: int | None = None, shape: tuple[int, ...],
                 width: int | None = None) -> None:
        if (counts is None) == (probs is None):
            raise InputError("SparseTargets needs exactly one of counts (with rounds) or probs")
        shape = tuple(check_int("shape", d, 0) for d in shape)
        parts = {"offsets": offsets, "ids": ids, "counts": counts, "probs": probs}
        for name, tensor in parts.items():
            if tensor is None:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise InputError(f"SparseTargets.{name} must be a torch.Tensor, got {type(tensor).__name__}")
            if tensor.dtype != _DTYPES[name] or tensor.dim() != 1:
                raise InputError(f"SparseTargets.{name} must be 1-D {_DTYPES[name]}, got {tensor.dtype} "
                                 f"{list(tensor.shape)}")
            if tensor.device != offsets.device:
                raise InputError(f"SparseTargets.{name} is on {tensor.device} but offsets are on {offsets.device}")
        if offsets.shape[0] != math.prod(shape) + 1:
            raise InputError(f"SparseTargets: {offsets.shape[0]} offsets for shape {list(shape)}; "
                             f"need {math.prod(shape) + 1} (one per position, plus one)")
        values = counts if counts is not None else probs
        if values.shape[0] != ids.shape[0]:
            raise InputError(f"SparseTargets: {ids.shape[0]} ids but {values.shape[0]} "
                             f"{'counts' if counts is not None else 'probs'}")
        if counts is not None:
            rounds = check_int("rounds", rounds, 1)
        elif rounds is not None:
            raise InputError("SparseTargets: rounds is for counts; probs are weights already")
        self.offsets, self.ids, self.counts, self.probs = offsets, ids, counts, probs
        self.rounds, self.shape = rounds, shape
        self.width = check_int("width", width, 0) if width is not None else self._widest()

    # ------------------------------------------------------------------------------------------------ views

    @property
    def device(self) -> torch.device:
        return self.offsets.device

    @property
    def num_positions(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def num_labels(self) -> int:
        return self.ids.shape[0]

    @property
    def values(self) -> torch.Tensor:
        """The stored values: counts or probs."""
        return self.counts if self.counts is not None else self.probs

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._parts().values())

    def labels_per_position(self) -> torch.Tensor:
        """int64 ``[*shape]``: how many labels each position holds."""
        return (self.offsets[1:] - self.offsets[:-1]).reshape(self.shape)

    def row_index(self) -> torch.Tensor:
        """int64 ``[L]``: the flat position ``b*T + t`` of each label (no host sync)."""
        counts = self.offsets[1:] - self.offsets[:-1]
        return torch.repeat_interleave(torch.arange(self.num_positions, device=self.device), counts,
                                       output_size=self.num_labels)

    def weights(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[L]`` weights on the targets' device: ``count / rounds`` (a table lookup, the same bits as the padded
        collate's float32 weights) or the probabilities."""
        if self.probs is not None:
            return self.probs.to(dtype)
        table = count_weight_table(self.rounds, self.device)
        return torch.index_select(table, 0, self.counts.to(torch.int32)).to(dtype)

    def check(self, vocab_size: int | None = None) -> None:
        """Offsets start at 0, never decrease and end at ``L``; no position holds more than ``width`` labels; ids in
        ``[0, vocab_size)``; probs finite and ``>= 0``. One reduction and one host sync on a GPU; InputError naming
        the first bad position or label."""
        offsets = self.offsets
        steps = offsets[1:] - offsets[:-1]
        bad_ids = None
        if vocab_size is not None and self.num_labels:
            bad_ids = (self.ids < 0) | (self.ids >= vocab_size)
        flags = [offsets[:1] != 0, offsets[-1:] != self.num_labels, (steps < 0).any(dim=0, keepdim=True),
                 (steps > self.width).any(dim=0, keepdim=True)]
        if bad_ids is not None:
            flags.append(bad_ids.any(dim=0, keepdim=True))
        if self.probs is not None and self.num_labels:
            flags.append((~torch.isfinite(self.probs) | (self.probs < 0)).any(dim=0, keepdim=True))
        if not bool(torch.cat(flags).any()):
            return
        if int(offsets[0]) != 0:
            raise InputError(f"SparseTargets.offsets[0] must be 0, got {int(offsets[0])}")
        if bool((steps < 0).any()):
            p = int(torch.nonzero(steps < 0)[0, 0])
            raise InputError(f"SparseTargets.offsets decrease at position {self._position(p)}: "
                             f"{int(offsets[p])} -> {int(offsets[p + 1])}")
        if int(offsets[-1]) != self.num_labels:
            raise InputError(f"SparseTargets.offsets end at {int(offsets[-1])} but there are {self.num_labels} "
                             f"labels (offsets overrun or fall short of the ids)")
        if bool((steps > self.width).any()):
            p = int(torch.nonzero(steps > self.width)[0, 0])
            raise InputError(f"SparseTargets.width is {self.width} but position {self._position(p)} holds "
                             f"{int(steps[p])} labels (width must be the most labels at one position)")
        if bad_ids is not None and bool(bad_ids.any()):
            j = int(torch.nonzero(bad_ids)[0, 0])
            p = int(torch.searchsorted(offsets, torch.tensor(j, device=self.device), right=True)) - 1
            raise InputError(f"SparseTargets: label {j} (position {self._position(p)}): id {int(self.ids[j])} is "
                             f"outside the vocabulary [0, {vocab_size})")
        j = int(torch.nonzero(~torch.isfinite(self.probs) | (self.probs < 0))[0, 0])
        raise InputError(f"SparseTargets: label {j}: probability {float(self.probs[j])!r} must be finite and >= 0")

    def _position(self, flat: int) -> int | tuple[int, ...]:
        if len(self.shape) <= 1:
            return flat
        return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), self.shape))

    def _widest(self) -> int:
        if self.num_positions == 0:
            return 0
        return int((self.offsets[1:] - self.offsets[:-1]).max())

    # ------------------------------------------------------------------------------------------------ conversion

    def to_padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(target_ids int64 [*shape, K], target_weights float32 [*shape, K])`` as the padded collate makes
        them (K = ``max(width, 1)``; id 0 and weight 0 in empty slots), on the targets' device."""
        K = max(self.width, 1)
        R = self.num_positions
        if padding_is_unbounded(R * K, self.num_labels):
            raise InputError(f"SparseTargets.to_padded: padding {self.num_labels:,} labels to the widest position, "
                             f"{K} labels, takes {R:,} x {K} = {R * K:,} slots ({12 * R * K / 2**30:.1f} GiB); use "
                             f"the CSR targets directly, or collate with max_labels")
        out_ids = torch.zeros((R, K), dtype=torch.int64, device=self.device)
        out_w = torch.zeros((R, K), dtype=torch.float32, device=self.device)
        if self.num_labels:
            rows = self.row_index()
            column = torch.arange(self.num_labels, device=self.device) - self.offsets[rows]
            out_ids[rows, column] = self.ids.to(torch.int64)
            out_w[rows, column] = self.weights()
        return out_ids.reshape(*self.shape, K), out_w.reshape(*self.shape, K)

    def _parts(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in _PARTS if getattr(self, name) is not None}

    def _with_parts(self, parts: dict[str, torch.Tensor]) -> SparseTargets:
        return SparseTargets(parts["offsets"], parts["ids"], counts=parts.get("counts"), probs=parts.get("probs"),
                             rounds=self.rounds, shape=self.shape, width=self.width)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SparseTargets:
        """The targets on ``device``: one copy of their buffer when the parts share one (they do out of
        ``collate``), else one copy per part."""
        device = torch.device(device)
        if device == self.device:
            return self
        return self._with_parts(_move_together(self._parts(), lambda t: t.to(device, non_blocking=non_blocking)))

    def cuda(self, device: int | str | torch.device | None = None, non_blocking: bool = False) -> SparseTargets:
        target = torch.device("cuda", device) if isinstance(device, int) else torch.device(device or "cuda")
        return self.to(target, non_blocking=non_blocking)

    def cpu(self) -> SparseTargets:
        return self.to("cpu")

    def pin_memory(self, device: Any = None) -> SparseTargets:
        """The targets in page-locked memory, one buffer (``DataLoader(pin_memory=True)`` calls this)."""
        if self.is_pinned():
            return self
        return self._with_parts(_move_together(self._parts(), lambda t: t.pin_memory()))

    def is_pinned(self) -> bool:
        return all(t.is_pinned() for t in self._parts().values())

    def share_memory_(self) -> SparseTargets:
        for t in self._parts().values():
            t.share_memory_()
        return self

    # ------------------------------------------------------------------------------------------------ pickling

    def __reduce__(self):
        base, views = _pack(self._parts())
        return _rebuild_targets, (base, views, self._meta())

    def _meta(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "shape": self.shape, "width": self.width}

    def __repr__(self) -> str:
        kind = f"counts, rounds={self.rounds}" if self.counts is not None else "probs"
        return (f"SparseTargets(shape={self.shape}, labels={self.num_labels}, width={self.width}, {kind}, "
                f"device={self.device})")


def _rebuild_targets(base: torch.Tensor | None, views: list, meta: dict[str, Any]) -> SparseTargets:
    parts = _unpack(base, views)
    return SparseTargets(parts["offsets"], parts["ids"], counts=parts.get("counts"), probs=parts.get("probs"),
                         **meta)


@functools.lru_cache(maxsize=16)
def count_weights(rounds: int) -> np.ndarray:
    """float32[256]: the weight of each possible count, ``float32(c) / float32(rounds)`` (IEEE division, so the
    same bits as ``LabelSpan.weights``); read-only, shared by the padded collate and the device table below."""
    table = np.arange(256, dtype=np.float32) / np.float32(rounds)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=32)
def _table(rounds: int, device: str) -> torch.Tensor:
    return torch.from_numpy(count_weights(rounds).copy()).to(device)


def count_weight_table(rounds: int, device: torch.device) -> torch.Tensor:
    """float32 ``[256]`` on ``device``: the weight ``float32(c) / float32(rounds)`` of every count (IEEE division on
    the host, then copied: a GPU division by a scalar multiplies by the reciprocal, which can differ in the last
    bit)."""
    return _table(int(rounds), str(device))


# ------------------------------------------------------------------------------------------------ one buffer


def _span(parts: dict[str, torch.Tensor]) -> tuple[torch.UntypedStorage, int, int] | None:
    """(storage, first byte, end byte) when every part is a contiguous view of one storage, else None."""
    storages = {t.untyped_storage().data_ptr() for t in parts.values()}
    if len(storages) != 1 or not all(t.is_contiguous() for t in parts.values()):
        return None
    storage = next(iter(parts.values())).untyped_storage()
    starts = [t.storage_offset() * t.element_size() for t in parts.values()]
    ends = [s + t.numel() * t.element_size() for s, t in zip(starts, parts.values(), strict=True)]
    first = min(starts)
    # each part must stay aligned to its element size once the span starts a new buffer
    if any((s - first) % t.element_size() for s, t in zip(starts, parts.values(), strict=True)):
        return None
    return storage, first, max(ends)


def _byte_view(storage: torch.UntypedStorage, start: int, end: int) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage, start, (end - start,))


def _views_in(parts: dict[str, torch.Tensor], first: int) -> list:
    return [(name, t.dtype, t.storage_offset() * t.element_size() - first, tuple(t.shape))
            for name, t in parts.items()]


def _unpack(base: torch.Tensor | None, views: list) -> dict[str, torch.Tensor]:
    """Tensors from ``views`` of ``base`` (uint8), or ``views`` itself when it already holds the tensors."""
    if base is None:
        return dict(views)
    storage = base.untyped_storage()
    start = base.storage_offset()
    return {name: torch.empty(0, dtype=dtype, device=base.device).set_(storage, (start + byte) // dtype.itemsize,
                                                                        shape)
            for name, dtype, byte, shape in views}


def _pack(parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, list]:
    """One uint8 tensor covering all parts plus their layout, or (None, [(name, tensor)...]) when they do not
    share a buffer."""
    span = _span(parts)
    if span is None:
        return None, list(parts.items())
    storage, first, end = span
    return _byte_view(storage, first, end), _views_in(parts, first)


def _move_together(parts: dict[str, torch.Tensor], move) -> dict[str, torch.Tensor]:
    """Apply ``move`` (a copy to a device, a pin) to the parts' shared buffer once, else to each part."""
    span = _span(parts)
    if span is None:
        return {name: move(t) for name, t in parts.items()}
    storage, first, end = span
    moved = move(_byte_view(storage, first, end))
    return _unpack(moved, _views_in(parts, first))

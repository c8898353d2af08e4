"""Collate: a batch of sparse-label sequences into padded ``[B, T, K]`` targets, in one numba pass.

Output (a :class:`SparseBatch`: a dict of CPU tensors that are views of one storage):

* ``target_ids`` int64 ``[B, T, K]`` and ``target_weights`` float32 ``[B, T, K]``: the labels of position
  ``t`` of sequence ``b`` in their stored order (ascending id), weight ``count / rounds`` for counts or the stored
  probability; id 0 and weight 0 wherever there is no label (shorter sequences, positions with fewer labels).
  ``K`` is the largest label count of any position in the batch (or ``max_labels``, see below).
* ``num_labels`` int32 ``[B, T]``: labels kept per position; ``attention_mask`` bool ``[B, T]``: True at real
  positions; ``lengths`` int64 ``[B]``; ``indices`` int64 ``[B]``: the sequences' indices (-1 if unknown).
* ``input_ids`` int64 ``[B, T]`` (``pad_token_id`` in padding) when the items carry input ids.
* ``loss_mask`` bool ``[B, T]``: the positions to train (False in padding) when any item carries a ``loss_mask``
  (see :mod:`sparselabels.data.masks`).
* with ``max_labels`` set: ``dropped_labels`` int32 ``[B, T]`` and ``dropped_mass`` float32 ``[B, T]``, what the
  overflow policy removed (all zero when nothing was).

With ``layout="csr"`` the labels come as ``targets``, a :class:`~sparselabels.data.SparseTargets` (offsets int64
``[B*T + 1]``, ids int32 ``[L]``, counts uint8 ``[L]`` with rounds or probs float32 ``[L]``, shape ``(B, T)``) in
place of ``target_ids``/``target_weights``/``num_labels``: no padding to K, ~5 bytes per label for counts. Its parts
are views of the batch's one buffer, copied from the items back to back. Everything else is as below.

Labels are never dropped silently: with ``max_labels`` set, a position holding more labels follows
``on_overflow``: ``"error"`` (default) raises InputError naming the sequence and position; ``"drop_smallest"``
keeps the ``max_labels`` largest weights (ties: the lower id) and ``"truncate"`` keeps the first
``max_labels`` stored (the lowest ids), both reporting what they removed. Weights are never renormalised.
Every id is checked against ``vocab_size`` inside the kernel (a GPU gather would otherwise read out of range).

In a DataLoader worker the outputs are allocated in shared memory directly, as one block (no copy on the way to
the main process, one file descriptor per batch); ``pin_memory=True`` allocates page-locked memory in the main
process (with workers, use ``DataLoader(pin_memory=True)`` instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence as SequenceABC
from typing import Any

import numba as nb
import numpy as np
import torch
from numba import types
from numba.extending import overload

from sparselabels.data.masks import with_loss_mask
from sparselabels.data.targets import SparseTargets, count_weights, padding_is_unbounded
from sparselabels.errors import InputError, check_int

OVERFLOW_POLICIES = ("error", "drop_smallest", "truncate")
LAYOUTS = ("padded", "csr")
_POLICY_CODE = {"error": 0, "drop_smallest": 1, "truncate": 2}

_OK, _BAD_ID, _OVERFLOW, _BAD_TOKEN = 0, 1, 2, 3


# ------------------------------------------------------------------------------------------------ kernels


@nb.njit(cache=True, nogil=True)
def _max_labels(indptr, ptr_start, label_start, lengths):
    """Largest labels-per-position of the batch, or -1-b when sequence b's indptr is inconsistent."""
    best = 0
    for b in range(lengths.shape[0]):
        p0 = ptr_start[b]
        n_lab = label_start[b + 1] - label_start[b]
        if indptr[p0] != 0 or indptr[p0 + lengths[b]] != n_lab:
            return -1 - b
        for t in range(lengths[b]):
            n = indptr[p0 + t + 1] - indptr[p0 + t]
            if n < 0:
                return -1 - b
            if n > best:
                best = n
    return best


def _weight(value, lut):
    """Target weight of one stored value: ``lut[count]`` (= count / rounds) for counts, the value for probs."""
    return lut[value] if isinstance(value, int | np.integer) else np.float32(value)


@overload(_weight, inline="always")
def _weight_impl(value, lut):
    if isinstance(value, types.Integer):
        return lambda value, lut: lut[value]
    return lambda value, lut: np.float32(value)


@nb.njit(cache=True, nogil=True)
def _first_bad_id(ids, lo, n, vocab_size, b, t):
    for j in range(lo, lo + n):
        if np.int64(ids[j]) >= vocab_size:
            return _BAD_ID, b, t, np.int64(ids[j])
    return _OK, 0, 0, 0


@nb.njit(cache=True, nogil=True)
def _overflow_keep(values, lut, lo, n, cap, policy):
    """Which ``cap`` of a position's ``n`` labels (stored at ``lo``) stay, ascending; all ``n`` weights; the weight
    dropped. drop_smallest (policy 1) keeps the largest (a stable sort on -w keeps the lower id among equals),
    truncate the first ``cap``."""
    w_all = np.empty(n, dtype=np.float32)
    for k in range(n):
        w_all[k] = _weight(values[lo + k], lut)
    keep = np.sort(np.argsort(-w_all, kind="mergesort")[:cap]) if policy == 1 else np.arange(cap)
    kept = np.zeros(n, dtype=np.bool_)
    for k in range(cap):
        kept[keep[k]] = True
    dropped = 0.0
    for k in range(n):
        if not kept[k]:
            dropped += w_all[k]
    return keep, w_all, dropped


@nb.njit(cache=True, nogil=True)
def _fill_targets(ids, values, lut, vocab_size, indptr, ptr_start, label_start, lengths, policy,
                  out_ids, out_w, out_n, drop_n, drop_mass):
    """Fill ``out_*`` completely (padding included). Returns (code, batch slot, position, value).

    Zero everything first (a vectorised memset), then scatter each position's labels into its row: faster
    than padding row by row, because rows hold ~12 labels in ~40+ slots.
    """
    B, T, K = out_ids.shape
    flat_ids = out_ids.reshape(-1)
    flat_w = out_w.reshape(-1)
    flat_n = out_n.reshape(-1)
    flat_ids[:] = 0
    flat_w[:] = 0.0
    flat_n[:] = 0
    if policy >= 0:
        drop_n[:] = 0
        drop_mass[:] = 0.0
    for b in range(B):
        p0 = ptr_start[b]
        base = label_start[b]
        for t in range(lengths[b]):
            lo = base + indptr[p0 + t]
            n = base + indptr[p0 + t + 1] - lo
            row = b * T + t
            o = row * K
            if n <= K:
                bad = False
                for k in range(n):  # copy and check in one loop; find the culprit only when there is one
                    v = np.int64(ids[lo + k])
                    bad |= v >= vocab_size
                    flat_ids[o + k] = v
                    flat_w[o + k] = _weight(values[lo + k], lut)
                if bad:
                    return _first_bad_id(ids, lo, n, vocab_size, b, t)
                flat_n[row] = n
                continue
            bad_id = _first_bad_id(ids, lo, n, vocab_size, b, t)
            if bad_id[0] != _OK:
                return bad_id
            if policy == 0:
                return _OVERFLOW, b, t, n
            keep, w_all, dropped = _overflow_keep(values, lut, lo, n, K, policy)
            for k in range(K):
                j = keep[k]
                flat_ids[o + k] = ids[lo + j]
                flat_w[o + k] = w_all[j]
            flat_n[row] = K
            drop_n[b, t] = n - K
            drop_mass[b, t] = dropped
    return _OK, 0, 0, 0


@nb.njit(cache=True, nogil=True)
def _fill_tokens(tokens, token_start, lengths, pad_token_id, out):
    """Fill input ids ``out[B, T]``; returns (code, sequence slot, position, value)."""
    B, T = out.shape
    for b in range(B):
        s = token_start[b]
        L = lengths[b]
        for t in range(L):
            v = np.int64(tokens[s + t])
            if v < 0 or v > 0xFFFFFFFF:
                return _BAD_TOKEN, b, t, v
            out[b, t] = v
        for t in range(L, T):
            out[b, t] = pad_token_id
    return _OK, 0, 0, 0


@nb.njit(cache=True, nogil=True)
def _csr_plan(indptr, ptr_start, label_start, lengths, cap):
    """(widest position, labels kept when positions are capped at ``cap`` labels; cap < 0: no cap), or
    (-1-b, 0) when sequence b's indptr is inconsistent."""
    best = 0
    kept = 0
    for b in range(lengths.shape[0]):
        p0 = ptr_start[b]
        n_lab = label_start[b + 1] - label_start[b]
        if indptr[p0] != 0 or indptr[p0 + lengths[b]] != n_lab:
            return -1 - b, 0
        for t in range(lengths[b]):
            n = indptr[p0 + t + 1] - indptr[p0 + t]
            if n < 0:
                return -1 - b, 0
            if n > best:
                best = n
            kept += n if cap < 0 or n <= cap else cap
    return best, kept


@nb.njit(cache=True, nogil=True)
def _fill_offsets(indptr, ptr_start, lengths, T, cap, out):
    """CSR offsets of the row-major [B, T] grid (padding positions empty), positions capped at ``cap`` labels."""
    running = 0
    for b in range(lengths.shape[0]):
        p0 = ptr_start[b]
        row = b * T
        for t in range(lengths[b]):
            out[row + t] = running
            n = indptr[p0 + t + 1] - indptr[p0 + t]
            running += n if cap < 0 or n <= cap else cap
        for t in range(lengths[b], T):
            out[row + t] = running
    out[lengths.shape[0] * T] = running


@nb.njit(cache=True, nogil=True)
def _fill_csr_capped(ids, values, lut, vocab_size, indptr, ptr_start, label_start, lengths, policy,
                     out_ids, out_values, drop_n, drop_mass, cap):
    """The labels of a batch with positions over ``cap`` labels, kept as ``policy`` says (the padded kernel's
    rules: error, drop_smallest, truncate), stored values copied. Returns (code, batch slot, position, value)."""
    drop_n[:] = 0
    drop_mass[:] = 0.0
    o = 0
    for b in range(lengths.shape[0]):
        p0 = ptr_start[b]
        base = label_start[b]
        for t in range(lengths[b]):
            lo = base + indptr[p0 + t]
            n = base + indptr[p0 + t + 1] - lo
            bad_id = _first_bad_id(ids, lo, n, vocab_size, b, t)
            if bad_id[0] != _OK:
                return bad_id
            if n <= cap:
                for k in range(n):
                    out_ids[o + k] = ids[lo + k]
                    out_values[o + k] = values[lo + k]
                o += n
                continue
            if policy == 0:
                return _OVERFLOW, b, t, n
            keep, _, dropped = _overflow_keep(values, lut, lo, n, cap, policy)
            for k in range(cap):
                j = keep[k]
                out_ids[o + k] = ids[lo + j]
                out_values[o + k] = values[lo + j]
            o += cap
            drop_n[b, t] = n - cap
            drop_mass[b, t] = dropped
    return _OK, 0, 0, 0


# ------------------------------------------------------------------------------------------------ helpers


_NO_LUT = np.zeros(0, dtype=np.float32)


def _in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


_ALIGN = 64


def _allocate(specs: dict[str, tuple[tuple[int, ...], torch.dtype]], *, shared: bool, pinned: bool) -> SparseBatch:
    """Uninitialised tensors for ``specs``, all views of ONE storage: in shared memory inside DataLoader workers
    (one file descriptor per batch instead of one per tensor, which costs a round trip each), page-locked when
    asked, ordinary memory otherwise."""
    offsets, total = {}, 0
    for name, (shape, dtype) in specs.items():
        total = -(-total // _ALIGN) * _ALIGN
        offsets[name] = total
        total += math.prod(shape) * dtype.itemsize
    total = max(total, 1)
    if shared:
        try:
            storage = torch.UntypedStorage._new_shared(total)
        except AttributeError:  # a torch without it: allocate, then move to shared memory
            storage = torch.empty(total, dtype=torch.uint8).share_memory_().untyped_storage()
    else:
        storage = torch.empty(total, dtype=torch.uint8, pin_memory=pinned).untyped_storage()
    batch = SparseBatch()
    for name, (shape, dtype) in specs.items():
        batch[name] = torch.empty(0, dtype=dtype).set_(storage, offsets[name] // dtype.itemsize, shape)
    return batch


class SparseBatch(dict):
    """The dict :func:`collate` returns. Its tensors (a :class:`SparseTargets`' parts included) share one storage,
    and it pickles as that one storage plus their layout, so a DataLoader worker hands a whole batch to the main
    process in one piece (one shared-memory block, one file descriptor)."""

    def _layout(self) -> tuple[torch.Tensor | None, list, dict]:
        base, views, others = None, [], {}

        def in_base(t: torch.Tensor) -> bool:
            nonlocal base
            if not t.is_contiguous():
                return False
            if base is None:
                storage = t.untyped_storage()
                base = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),))
            return t.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()

        for name, t in self.items():
            if isinstance(t, SparseTargets) and t.device.type == "cpu":
                parts = t._parts()
                if all(in_base(p) for p in parts.values()):
                    views.extend(((name, part), p.dtype, p.storage_offset() * p.element_size(), tuple(p.shape))
                                 for part, p in parts.items())
                    others[name] = _TargetsLayout(t._meta())
                    continue
            if isinstance(t, torch.Tensor) and t.device.type == "cpu" and in_base(t):
                views.append((name, t.dtype, t.storage_offset() * t.element_size(), tuple(t.shape)))
            else:
                others[name] = t
        return base, views, others

    def __reduce__(self):
        base, views, others = self._layout()
        return _rebuild_batch, (base, views, others)

    def __copy__(self) -> SparseBatch:
        return SparseBatch(self)

    def _moved(self, move) -> SparseBatch:
        """The batch with ``move`` (a pin, a copy to a device) applied to its one buffer once, other values one by
        one."""
        base, views, others = self._layout()
        others = {name: value if isinstance(value, _TargetsLayout) or not hasattr(value, "to") else move(value)
                  for name, value in others.items()}
        return _rebuild_batch(None if base is None else move(base), views, others)

    def pin_memory(self, device: Any = None) -> SparseBatch:
        """The batch in page-locked memory: one allocation and one copy (``DataLoader(pin_memory=True)`` calls this
        on torch versions that look for a ``pin_memory`` method before treating a batch as a dict)."""
        return self._moved(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SparseBatch:
        """The batch on ``device``: its buffer crosses in one copy."""
        device = torch.device(device)
        return self._moved(lambda t: t if t.device == device else t.to(device, non_blocking=non_blocking))


class _TargetsLayout:
    """Stands for a SparseTargets in a pickled SparseBatch whose parts travel as views of the batch's buffer."""

    def __init__(self, meta: dict) -> None:
        self.meta = meta


def _rebuild_batch(base: torch.Tensor | None, views: list, others: dict) -> SparseBatch:
    batch = SparseBatch()
    parts: dict[str, dict[str, torch.Tensor]] = {}
    if base is not None:
        storage = base.untyped_storage()
        for name, dtype, byte_offset, shape in views:
            t = torch.empty(0, dtype=dtype, device=base.device).set_(storage, byte_offset // dtype.itemsize, shape)
            if isinstance(name, tuple):
                parts.setdefault(name[0], {})[name[1]] = t
            else:
                batch[name] = t
    for name, value in others.items():
        if isinstance(value, _TargetsLayout):
            p = parts[name]
            value = SparseTargets(p["offsets"], p["ids"], counts=p.get("counts"), probs=p.get("probs"), **value.meta)
        batch[name] = value
    return batch


def _values_of(item: Any) -> np.ndarray:
    values = getattr(item, "values", None)
    return values if values is not None else item.counts


def _item_field(batch: SequenceABC, name: str, default: Any) -> list:
    return [getattr(item, name, default) for item in batch]


def _common(values: list, name: str, given: Any) -> Any:
    known = {v for v in values if v is not None}
    if len(known) > 1:
        raise InputError(f"collate: the batch mixes items with different {name} ({sorted(known)})")
    found = known.pop() if known else None
    return found if given is None else given


def _checked_options(**options: Any) -> dict[str, Any]:
    """collate's options with every integer checked (a wrong one raises InputError; none is silently rounded)."""
    if options["on_overflow"] not in OVERFLOW_POLICIES:
        raise InputError(f"on_overflow must be one of {OVERFLOW_POLICIES}, got {options['on_overflow']!r}")
    # pad_to_multiple_of 0 means none, as None does
    for name, low in (("max_labels", 1), ("vocab_size", 1), ("rounds", 1), ("pad_to", 0), ("pad_to_multiple_of", 0)):
        options[name] = check_int(name, options[name], low, optional=True)
    # any int64 (-100 is common); None (a tokenizer without a pad token) serves items without input ids
    pad = options["pad_token_id"] = check_int("pad_token_id", options["pad_token_id"], None, optional=True)
    if pad is not None and not -(1 << 63) <= pad < 1 << 63:
        raise InputError(f"pad_token_id {pad} does not fit int64")
    if options["layout"] not in LAYOUTS:
        raise InputError(f"layout must be one of {LAYOUTS}, got {options['layout']!r}")
    if not isinstance(options["pin_memory"], bool):
        raise InputError(f"pin_memory must be True or False, got {options['pin_memory']!r}")
    return options


def _check_padding(B: int, T: int, K: int, labels: int, indices: np.ndarray) -> None:
    slots = B * T * K
    if padding_is_unbounded(slots, labels):
        raise InputError(
            f"collate: padding the batch (sequences {indices.tolist()[:8]}{'...' if B > 8 else ''}) to its widest "
            f"position, {K} labels, takes [{B}, {T}, {K}] = {slots:,} slots ({12 * slots / 2**30:.1f} GiB) for "
            f"{labels:,} labels; bound K with max_labels (and on_overflow='drop_smallest' or 'truncate')")


def _padded_length(longest: int, pad_to: int | None, multiple: int | None) -> int:
    T = longest
    if pad_to is not None:
        if longest > pad_to:
            raise InputError(f"collate: a sequence of {longest} positions is longer than pad_to={pad_to}")
        T = pad_to
    if multiple:
        T = -(-T // multiple) * multiple
    return T


# ------------------------------------------------------------------------------------------------ public


def collate(
    batch: SequenceABC,
    *,
    max_labels: int | None = None,
    on_overflow: str = "error",
    vocab_size: int | None = None,
    rounds: int | None = None,
    pad_to: int | None = None,
    pad_to_multiple_of: int | None = None,
    pad_token_id: int | None = 0,
    pin_memory: bool = False,
    layout: str = "padded",
) -> SparseBatch:
    """Pad a list of items (SparseItem, or anything with ``ids``/``values``/``indptr``) into target tensors.

    ``vocab_size`` (default: the items') is the bound every id is checked against, e.g. the student's
    vocabulary; ``rounds`` is needed only for items that do not carry it. ``layout="csr"`` gives the labels as
    ``batch["targets"]``, a :class:`SparseTargets`, instead of padded ``target_ids``/``target_weights``. See the
    module docstring.
    """
    return with_loss_mask(batch, _collate(batch, **_checked_options(
        max_labels=max_labels, on_overflow=on_overflow, vocab_size=vocab_size, rounds=rounds, pad_to=pad_to,
        pad_to_multiple_of=pad_to_multiple_of, pad_token_id=pad_token_id, pin_memory=pin_memory, layout=layout)))


def _collate(batch: SequenceABC, *, max_labels: int | None, on_overflow: str, vocab_size: int | None,
             rounds: int | None, pad_to: int | None, pad_to_multiple_of: int | None, pad_token_id: int | None,
             pin_memory: bool, layout: str = "padded") -> SparseBatch:
    """:func:`collate` with its options already checked (a :class:`SparseLabelCollator` checks them once)."""
    if len(batch) == 0:
        raise InputError("collate: the batch is empty")
    B = len(batch)
    ids_parts = [item.ids for item in batch]
    val_parts = [_values_of(item) for item in batch]
    ptr_parts = [item.indptr for item in batch]
    indices = np.array([-1 if i is None else int(i) for i in _item_field(batch, "index", None)], dtype=np.int64)
    vocab = _common(_item_field(batch, "vocab_size", None), "vocab_size", vocab_size)
    if vocab is None:
        raise InputError("collate: vocab_size is needed (the items do not carry it)")

    kinds = {v.dtype for v in val_parts if v.size} or {val_parts[0].dtype}
    if len(kinds) > 1:
        raise InputError(f"collate: the batch mixes value dtypes {sorted(map(str, kinds))}")
    kind = kinds.pop()
    is_count = np.issubdtype(kind, np.integer)
    if is_count:
        item_rounds = _common(_item_field(batch, "rounds", None), "rounds", None)
        if rounds is not None and item_rounds is not None and rounds != item_rounds:
            raise InputError(f"collate: rounds={rounds} given, but the items were drawn with rounds={item_rounds}")
        rounds = item_rounds if item_rounds is not None else rounds
        if not rounds:
            raise InputError("collate: counts need rounds (draws per position) to become weights")
        if kind != np.uint8:
            raise InputError(f"collate: counts must be uint8 (draw counts), got dtype {kind}")
    elif np.issubdtype(kind, np.floating):
        rounds = 1
    else:
        raise InputError(f"collate: values of dtype {kind} are neither counts nor probabilities")

    lengths = np.array([p.shape[0] - 1 for p in ptr_parts], dtype=np.int64)
    label_start = np.zeros(B + 1, dtype=np.int64)
    np.cumsum([a.shape[0] for a in ids_parts], out=label_start[1:])
    ptr_start = np.zeros(B, dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=ptr_start[1:])
    indptr = np.concatenate(ptr_parts).astype(np.int64, copy=False)
    if any(v.shape[0] != a.shape[0] for v, a in zip(val_parts, ids_parts, strict=True)):
        raise InputError("collate: an item has different numbers of ids and values")
    if layout == "csr":
        return _collate_csr(batch, ids_parts, val_parts, indptr, lengths, ptr_start, label_start, indices,
                            vocab=int(vocab), rounds=int(rounds) if is_count else None, max_labels=max_labels,
                            on_overflow=on_overflow, pad_to=pad_to, pad_to_multiple_of=pad_to_multiple_of,
                            pad_token_id=pad_token_id, pin_memory=pin_memory)
    values = (np.concatenate(val_parts) if is_count
              else np.concatenate(val_parts, dtype=np.float32, casting="same_kind"))
    ids = _concat_ids(ids_parts, vocab)

    widest = int(_max_labels(indptr, ptr_start, label_start, lengths))
    if widest < 0:
        b = -1 - widest
        raise InputError(f"collate: sequence {indices[b]} (batch slot {b}) has an inconsistent indptr")
    K = max(1, widest if max_labels is None else min(widest, int(max_labels)))
    T = _padded_length(int(lengths.max()), pad_to, pad_to_multiple_of)
    _check_padding(B, T, K, int(ids.shape[0]), indices)
    tokens = _batch_tokens(batch, lengths, indices)
    if tokens is not None and pad_token_id is None:
        raise InputError("collate: the items carry input ids, so pad_token_id is needed to pad them (it is None)")
    shared = _shared_placement(pin_memory)

    policy = -1 if max_labels is None else _POLICY_CODE[on_overflow]
    specs = {"target_ids": ((B, T, K), torch.int64), "target_weights": ((B, T, K), torch.float32),
             "num_labels": ((B, T), torch.int32), "attention_mask": ((B, T), torch.bool),
             "lengths": ((B,), torch.int64), "indices": ((B,), torch.int64)}
    if policy >= 0:
        specs["dropped_labels"] = ((B, T), torch.int32)
        specs["dropped_mass"] = ((B, T), torch.float32)
    if tokens is not None:
        specs["input_ids"] = ((B, T), torch.int64)
    out = _allocate(specs, shared=shared, pinned=pin_memory)

    if policy >= 0:
        drop_n, drop_mass = out["dropped_labels"].numpy(), out["dropped_mass"].numpy()
    else:
        drop_n, drop_mass = np.zeros((0, 0), np.int32), np.zeros((0, 0), np.float32)
    lut = count_weights(int(rounds)) if is_count else _NO_LUT
    code, b, t, value = _fill_targets(ids, values, lut, int(vocab), indptr, ptr_start, label_start, lengths, policy,
                                      out["target_ids"].numpy(), out["target_weights"].numpy(),
                                      out["num_labels"].numpy(), drop_n, drop_mass)
    _check_filled(code, b, t, value, indices, vocab, max_labels)
    _fill_positions(out, lengths, indices, tokens, pad_token_id)
    return out


def _check_filled(code: int, b: int, t: int, value: int, indices: np.ndarray, vocab: int,
                  max_labels: int | None) -> None:
    """Raise what a fill kernel of either layout found at position ``t`` of batch slot ``b`` (nothing for _OK)."""
    if code == _BAD_ID:
        raise InputError(f"collate: sequence {indices[b]}, position {t}: id {value} is outside the vocabulary "
                         f"(vocab_size {vocab})", **_where(indices, b, t))
    if code == _OVERFLOW:
        raise InputError(f"collate: sequence {indices[b]}, position {t}: {value} labels, more than max_labels="
                         f"{max_labels}; pass on_overflow='drop_smallest' or 'truncate' to drop (reported) labels",
                         **_where(indices, b, t))


def _where(indices: np.ndarray, b: int, t: int) -> dict[str, int | None]:
    """The location attributes of an error at position ``t`` of batch slot ``b`` (the sequence where known)."""
    return {"sequence": int(indices[b]) if indices[b] >= 0 else None, "position": int(t)}


def _shared_placement(pin_memory: bool) -> bool:
    """Whether the batch goes to shared memory (inside a DataLoader worker); pin_memory checked against it."""
    shared = _in_worker()
    if pin_memory and shared:
        raise InputError("collate: pin_memory=True inside a DataLoader worker; use DataLoader(pin_memory=True)")
    if pin_memory and not torch.cuda.is_available():
        raise InputError("collate: pin_memory=True needs a CUDA device")
    return shared


def _fill_positions(out: SparseBatch, lengths: np.ndarray, indices: np.ndarray, tokens: np.ndarray | None,
                    pad_token_id: int | None) -> None:
    """attention_mask, lengths, indices and input_ids of either layout."""
    B, T = out["attention_mask"].shape
    np.less(np.arange(T)[None, :], lengths[:, None], out=out["attention_mask"].numpy())
    out["lengths"].numpy()[:] = lengths
    out["indices"].numpy()[:] = indices
    if tokens is not None:
        token_start = np.zeros(B, dtype=np.int64)
        np.cumsum(lengths[:-1], out=token_start[1:])
        code, b, t, value = _fill_tokens(tokens, token_start, lengths, int(pad_token_id), out["input_ids"].numpy())
        if code == _BAD_TOKEN:
            raise InputError(f"collate: sequence {indices[b]}, position {t}: input id {value} is outside 0..2**32-1",
                             **_where(indices, b, t))


def _concat_ids(ids_parts: list[np.ndarray], vocab: int) -> np.ndarray:
    """The items' ids as one uint32 array; ids of another integer dtype are range-checked, never wrapped."""
    ids = np.concatenate(ids_parts)
    if ids.dtype != np.uint32:  # the reader gives uint32
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"collate: ids must be integers, got dtype {ids.dtype}")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= min(int(vocab), 1 << 32)):
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise InputError(f"collate: id {bad} is outside the vocabulary (vocab_size {vocab})")
        ids = ids.astype(np.uint32)
    return ids


def _collate_csr(batch: SequenceABC, ids_parts: list, val_parts: list, indptr: np.ndarray, lengths: np.ndarray,
                 ptr_start: np.ndarray, label_start: np.ndarray, indices: np.ndarray, *, vocab: int,
                 rounds: int | None, max_labels: int | None, on_overflow: str, pad_to: int | None,
                 pad_to_multiple_of: int | None, pad_token_id: int | None, pin_memory: bool) -> SparseBatch:
    """The ``layout="csr"`` batch: offsets from the items' indptr, ids and values copied sequence by sequence
    (a concatenation into the batch's buffer) unless positions over ``max_labels`` must be cut."""
    if vocab > 1 << 31:
        raise InputError(f"collate: layout='csr' stores ids as int32, which cannot hold vocab_size {vocab}")
    B = len(batch)
    cap = -1 if max_labels is None else int(max_labels)
    widest, kept = _csr_plan(indptr, ptr_start, label_start, lengths, cap)
    if widest < 0:
        b = -1 - widest
        raise InputError(f"collate: sequence {indices[b]} (batch slot {b}) has an inconsistent indptr")
    T = _padded_length(int(lengths.max()), pad_to, pad_to_multiple_of)
    tokens = _batch_tokens(batch, lengths, indices)
    if tokens is not None and pad_token_id is None:
        raise InputError("collate: the items carry input ids, so pad_token_id is needed to pad them (it is None)")
    shared = _shared_placement(pin_memory)

    value_name, value_dtype = ("counts", torch.uint8) if rounds is not None else ("probs", torch.float32)
    specs = {"offsets": ((B * T + 1,), torch.int64), "ids": ((int(kept),), torch.int32),
             value_name: ((int(kept),), value_dtype), "attention_mask": ((B, T), torch.bool),
             "lengths": ((B,), torch.int64), "indices": ((B,), torch.int64)}
    if cap >= 0:
        specs["dropped_labels"] = ((B, T), torch.int32)
        specs["dropped_mass"] = ((B, T), torch.float32)
    if tokens is not None:
        specs["input_ids"] = ((B, T), torch.int64)
    out = _allocate(specs, shared=shared, pinned=pin_memory)
    _fill_offsets(indptr, ptr_start, lengths, T, cap, out["offsets"].numpy())
    out_ids, out_values = out["ids"].numpy(), out[value_name].numpy()
    if cap < 0 or widest <= cap:  # nothing to cut: the labels are the items' labels, back to back
        if all(part.dtype == np.uint32 for part in ids_parts):
            np.concatenate(ids_parts, out=out_ids.view(np.uint32))
        else:
            out_ids.view(np.uint32)[:] = _concat_ids(ids_parts, vocab)
        np.concatenate(val_parts, out=out_values, casting="unsafe" if rounds is not None else "same_kind")
        if kept and int(out_ids.view(np.uint32).max()) >= vocab:
            j = int(np.argmax(out_ids.view(np.uint32) >= vocab))
            b = int(np.searchsorted(label_start, j, side="right")) - 1
            p0 = ptr_start[b]
            t = int(np.searchsorted(indptr[p0:p0 + lengths[b] + 1], j - label_start[b], side="right")) - 1
            raise InputError(f"collate: sequence {indices[b]}, position {t}: id {int(out_ids.view(np.uint32)[j])} "
                             f"is outside the vocabulary (vocab_size {vocab})", **_where(indices, b, t))
        if cap >= 0:
            out["dropped_labels"].numpy()[:] = 0
            out["dropped_mass"].numpy()[:] = 0
    else:
        lut = count_weights(rounds) if rounds is not None else _NO_LUT
        values = (np.concatenate(val_parts) if rounds is not None
                  else np.concatenate(val_parts, dtype=np.float32, casting="same_kind"))
        code, b, t, value = _fill_csr_capped(
            _concat_ids(ids_parts, vocab), values, lut, vocab, indptr, ptr_start, label_start, lengths,
            _POLICY_CODE[on_overflow], out_ids, out_values, out["dropped_labels"].numpy(),
            out["dropped_mass"].numpy(), cap)
        _check_filled(code, b, t, value, indices, vocab, max_labels)
    _fill_positions(out, lengths, indices, tokens, pad_token_id)
    targets = SparseTargets(out.pop("offsets"), out.pop("ids"), counts=out.pop("counts", None),
                            probs=out.pop("probs", None), rounds=rounds, shape=(B, T),
                            width=widest if cap < 0 else min(widest, cap))
    return SparseBatch(targets=targets, **out)


def _as_array(tokens: Any) -> np.ndarray:
    """Input ids as numpy: arrays as they are, torch tensors (any device) and lists converted."""
    if isinstance(tokens, torch.Tensor):
        return tokens.detach().cpu().numpy()
    return np.asarray(tokens)


def _batch_tokens(batch: SequenceABC, lengths: np.ndarray, indices: np.ndarray) -> np.ndarray | None:
    """The items' input ids concatenated as int64 (None when no item has any), lengths checked."""
    token_parts = _item_field(batch, "input_ids", None)
    have = sum(p is not None for p in token_parts)
    if not have:
        return None
    if have != len(batch):
        raise InputError("collate: some items carry input ids and some do not")
    token_parts = [_as_array(p) for p in token_parts]
    for b, (p, n) in enumerate(zip(token_parts, lengths, strict=True)):
        if p.ndim != 1 or p.shape[0] != n:
            raise InputError(f"collate: sequence {indices[b]}: {p.shape} input ids for {n} label positions")
        if p.size and not np.issubdtype(p.dtype, np.integer):
            raise InputError(f"collate: sequence {indices[b]}: input ids of dtype {p.dtype} are not integers")
    tokens = np.concatenate(token_parts)
    if tokens.dtype == np.uint64 and tokens.size and int(tokens.max()) >= 1 << 63:
        raise InputError("collate: input ids >= 2**63 do not fit int64")
    return tokens.astype(np.int64, copy=False)


class SparseLabelCollator:
    """:func:`collate` with its options fixed, for ``DataLoader(collate_fn=SparseLabelCollator(...))``."""

    def __init__(self, *, max_labels: int | None = None, on_overflow: str = "error", vocab_size: int | None = None,
                 rounds: int | None = None, pad_to: int | None = None, pad_to_multiple_of: int | None = None,
                 pad_token_id: int | None = 0, pin_memory: bool = False, layout: str = "padded") -> None:
        self.options = _checked_options(max_labels=max_labels, on_overflow=on_overflow, vocab_size=vocab_size,
                                        rounds=rounds, pad_to=pad_to, pad_to_multiple_of=pad_to_multiple_of,
                                        pad_token_id=pad_token_id, pin_memory=pin_memory, layout=layout)

    def __call__(self, batch: SequenceABC) -> dict[str, torch.Tensor]:
        return with_loss_mask(batch, _collate(batch, **self.options))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"SparseLabelCollator({opts})"


def collate_reference(batch: SequenceABC, *, max_labels: int | None = None, on_overflow: str = "error",
                      vocab_size: int | None = None, rounds: int | None = None) -> dict[str, np.ndarray]:
    """The slow, obviously correct twin of :func:`collate` (Python loops), for tests. numpy arrays out."""
    B = len(batch)
    vocab = vocab_size if vocab_size is not None else batch[0].vocab_size
    lengths = [item.indptr.shape[0] - 1 for item in batch]
    T = max(lengths)
    per_pos: list[list[list[tuple[int, float]]]] = []
    for item in batch:
        r = getattr(item, "rounds", None) or rounds
        values = _values_of(item)
        rows = []
        for t in range(item.indptr.shape[0] - 1):
            lo, hi = int(item.indptr[t]), int(item.indptr[t + 1])
            row = []
            for j in range(lo, hi):
                if int(item.ids[j]) >= vocab:
                    raise InputError(f"id {int(item.ids[j])} outside vocabulary")
                v = values[j]
                w = np.float32(v) / np.float32(r) if values.dtype == np.uint8 else np.float32(v)
                row.append((int(item.ids[j]), float(w)))
            rows.append(row)
        per_pos.append(rows)
    widest = max((len(row) for rows in per_pos for row in rows), default=0)
    K = max(1, widest if max_labels is None else min(widest, max_labels))
    out_ids = np.zeros((B, T, K), np.int64)
    out_w = np.zeros((B, T, K), np.float32)
    num = np.zeros((B, T), np.int32)
    drop_n = np.zeros((B, T), np.int32)
    drop_mass = np.zeros((B, T), np.float32)
    for b, rows in enumerate(per_pos):
        for t, row in enumerate(rows):
            kept = row
            if len(row) > K:
                if on_overflow == "error":
                    raise InputError(f"sequence slot {b}, position {t}: overflow")
                if on_overflow == "drop_smallest":
                    order = sorted(range(len(row)), key=lambda j, row=row: (-row[j][1], row[j][0]))[:K]
                    kept = [row[j] for j in sorted(order)]
                else:
                    kept = row[:K]
                drop_n[b, t] = len(row) - K
                drop_mass[b, t] = sum(w for j, (_, w) in enumerate(row) if row[j] not in kept)
            for k, (i, w) in enumerate(kept):
                out_ids[b, t, k] = i
                out_w[b, t, k] = w
            num[b, t] = len(kept)
    mask = np.zeros((B, T), bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    out = {"target_ids": out_ids, "target_weights": out_w, "num_labels": num, "attention_mask": mask,
           "lengths": np.array(lengths, np.int64)}
    if max_labels is not None:
        out["dropped_labels"] = drop_n
        out["dropped_mass"] = drop_mass
    if getattr(batch[0], "input_ids", None) is not None:
        ids = np.zeros((B, T), np.int64)
        for b, item in enumerate(batch):
            ids[b, : lengths[b]] = item.input_ids
        out["input_ids"] = ids
    return out

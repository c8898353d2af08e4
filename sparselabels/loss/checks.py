"""Input checks shared by every loss in :mod:`sparselabels.loss`.

Shape and dtype checks are free (metadata only). The value check (ids inside the vocabulary, weights finite and
non-negative) needs one reduction and **one host sync per call** on a GPU; it is on by default because an
out-of-range id would otherwise surface as an opaque device-side assert. Pass ``check_inputs=False`` to the losses
to skip it in a tuned training loop once the data pipeline is trusted. The offending element is only located
(a second, slow pass) after the check has failed.
"""

from __future__ import annotations

import torch

from sparselabels.data.targets import SparseTargets
from sparselabels.errors import InputError, where

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str, allowed: tuple[str, ...] = REDUCTIONS) -> None:
    if reduction not in allowed:
        raise InputError(f"reduction must be one of {allowed}, got {reduction!r}")


def check_target_tensors(
    leading_shape: torch.Size,
    target_ids: torch.Tensor,
    target_weights: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    device: torch.device,
    source: str,
) -> None:
    """Shapes, dtypes and devices of sparse targets against the ``leading_shape`` of ``source`` (logits or hidden)."""
    for name, tensor in (("target_ids", target_ids), ("target_weights", target_weights)):
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if target_ids.dtype not in (torch.int64, torch.int32):
        raise InputError(f"target_ids must be int64 or int32, got {target_ids.dtype}")
    if not target_weights.is_floating_point():
        raise InputError(
            f"target_weights must be floating point (counts divided by rounds, or probabilities), "
            f"got {target_weights.dtype}; divide integer counts by the number of rounds first"
        )
    if target_ids.dim() < 1 or tuple(target_ids.shape[:-1]) != tuple(leading_shape):
        raise InputError(
            f"target_ids must have shape [*{source}.shape[:-1], K] = [{_dims(leading_shape)}, K], "
            f"got {list(target_ids.shape)}"
        )
    if target_weights.shape != target_ids.shape:
        raise InputError(
            f"target_weights shape {list(target_weights.shape)} differs from target_ids shape {list(target_ids.shape)}"
        )
    for name, tensor in (("target_ids", target_ids), ("target_weights", target_weights)):
        if tensor.device != device:
            raise InputError(f"{name} is on {tensor.device} but {source} is on {device}")
    if mask is not None:
        check_position_tensor("mask", mask, leading_shape, device=device, source=source, dtype=torch.bool)


def check_sparse_targets(
    leading_shape: torch.Size,
    targets: object,
    extra: object,
    mask: torch.Tensor | None,
    *,
    device: torch.device,
    source: str,
    vocab_size: int,
    check_values: bool,
) -> SparseTargets:
    """A :class:`SparseTargets` given in place of ``(target_ids, target_weights)``: alone, of ``source``'s leading
    shape, on its device; with ``check_values``, its offsets, ids and probabilities (one host sync on GPU)."""
    if not isinstance(targets, SparseTargets):
        raise InputError(f"target_weights is missing: pass (target_ids, target_weights) or one SparseTargets, got "
                         f"{type(targets).__name__} alone")
    if extra is not None:
        raise InputError("a SparseTargets carries its own weights: pass it without target_weights")
    if tuple(targets.shape) != tuple(leading_shape):
        raise InputError(f"SparseTargets of shape {list(targets.shape)} does not match {source}.shape[:-1] = "
                         f"{list(leading_shape)}")
    if targets.device != device:
        raise InputError(f"SparseTargets is on {targets.device} but {source} is on {device}")
    if mask is not None:
        check_position_tensor("mask", mask, leading_shape, device=device, source=source, dtype=torch.bool)
    if check_values:
        targets.check(vocab_size)
    return targets


def check_position_tensor(
    name: str,
    tensor: torch.Tensor,
    leading_shape: torch.Size,
    *,
    device: torch.device,
    source: str,
    dtype: torch.dtype | tuple[torch.dtype, ...],
) -> None:
    """A per-position tensor (mask, labels) must have exactly the leading shape of ``source``."""
    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    if tensor.dtype not in dtypes:
        raise InputError(f"{name} must have dtype {' or '.join(map(str, dtypes))}, got {tensor.dtype}")
    if tuple(tensor.shape) != tuple(leading_shape):
        raise InputError(
            f"{name} must have shape {list(leading_shape)} (= {source}.shape[:-1]), got {list(tensor.shape)}"
        )
    if tensor.device != device:
        raise InputError(f"{name} is on {tensor.device} but {source} is on {device}")


def check_target_values(target_ids: torch.Tensor, target_weights: torch.Tensor, vocab_size: int) -> None:
    """Ids in ``[0, vocab_size)``, weights finite and ``>= 0``: one fused reduction, one host sync."""
    if target_ids.numel() == 0:
        return
    bad = (target_ids < 0) | (target_ids >= vocab_size) | ~torch.isfinite(target_weights) | (target_weights < 0)
    if not bool(bad.any()):
        return
    bad_id = (target_ids < 0) | (target_ids >= vocab_size)
    if bool(bad_id.any()):
        index = _first_index(bad_id)
        raise InputError(
            f"target_ids {_slot(index)}: id {int(target_ids[index])} is outside the vocabulary [0, {vocab_size})"
        )
    index = _first_index(~torch.isfinite(target_weights) | (target_weights < 0))
    raise InputError(f"target_weights {_slot(index)}: weight {float(target_weights[index])!r} must be finite and >= 0")


def check_label_values(labels: torch.Tensor, vocab_size: int, ignore_index: int) -> None:
    """Labels in ``[0, vocab_size)`` or equal to ``ignore_index``: one host sync."""
    if labels.numel() == 0:
        return
    bad = ((labels < 0) | (labels >= vocab_size)) & (labels != ignore_index)
    if bool(bad.any()):
        index = _first_index(bad)
        raise InputError(
            f"labels at {where(position=_position(index))}: label {int(labels[index])} is outside the vocabulary "
            f"[0, {vocab_size}) and is not ignore_index={ignore_index}"
        )


def _first_index(flags: torch.Tensor) -> tuple[int, ...]:
    flat = int(torch.nonzero(flags.reshape(-1))[0, 0])
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), flags.shape))


def _slot(index: tuple[int, ...]) -> str:
    return "at " + where(position=_position(index[:-1]), slot=index[-1])


def _position(index: tuple[int, ...]) -> int | tuple[int, ...] | None:
    """A flat position prints as ``3``, a batched one as ``(1, 3)``."""
    if not index:
        return None
    return index[0] if len(index) == 1 else index


def _dims(shape: torch.Size) -> str:
    return ", ".join(str(d) for d in shape) if len(shape) else ""

"""Turn CSR label rows (the stored form: ids, values, indptr) into the padded ``[R, K]`` targets the losses take."""

from __future__ import annotations

import numpy as np
import torch

from sparselabels.errors import InputError, check_int, where


def csr_to_padded(
    ids: torch.Tensor | np.ndarray,
    weights: torch.Tensor | np.ndarray,
    indptr: torch.Tensor | np.ndarray,
    *,
    rounds: int | None = None,
    pad_to: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR rows → ``(target_ids int64 [R, K], target_weights float32 [R, K])``, padded with id 0 and weight 0.

    Args:
        ids: ``[M]`` integer token ids (row r holds ``ids[indptr[r]:indptr[r+1]]``).
        weights: ``[M]`` floating weights, or integer counts when ``rounds`` is given (then divided by it).
        indptr: ``[R+1]`` integer row offsets, ``indptr[0] == 0``, non-decreasing, ``indptr[-1] == M``.
        rounds: the number of draws N; required to turn integer counts into weights count / N.
        pad_to: K; defaults to the longest row (at least 1). A row longer than ``pad_to`` is an error, never cut.
    """
    ids_t = _as_tensor(ids, "ids")
    weights_t = _as_tensor(weights, "weights")
    indptr_t = _as_tensor(indptr, "indptr")
    if ids_t.dim() != 1 or weights_t.dim() != 1 or indptr_t.dim() != 1:
        raise InputError(
            f"ids, weights and indptr must be 1-D, got shapes {list(ids_t.shape)}, {list(weights_t.shape)}, "
            f"{list(indptr_t.shape)}"
        )
    if ids_t.is_floating_point() or ids_t.dtype == torch.bool:
        raise InputError(f"ids must be integers, got {ids_t.dtype}")
    if indptr_t.is_floating_point() or indptr_t.dtype == torch.bool:
        raise InputError(f"indptr must be integers, got {indptr_t.dtype}")
    if ids_t.shape != weights_t.shape:
        raise InputError(f"ids has {ids_t.numel()} entries but weights has {weights_t.numel()}")
    weights_t = _to_weights(weights_t, rounds)
    device = ids_t.device
    indptr_t = indptr_t.to(device=device, dtype=torch.int64)
    num_rows = _check_indptr(indptr_t, ids_t.numel())
    lengths = indptr_t[1:] - indptr_t[:-1]
    longest = int(lengths.max()) if num_rows else 0
    width = max(longest, 1) if pad_to is None else check_int("pad_to", pad_to, 1)
    if longest > width:
        row = int(torch.argmax(lengths))
        raise InputError(f"{where(row=row)} holds {longest} labels, more than pad_to={width}; nothing is truncated")
    out_ids = torch.zeros((num_rows, width), dtype=torch.int64, device=device)
    out_weights = torch.zeros((num_rows, width), dtype=torch.float32, device=device)
    if ids_t.numel():
        row_of = torch.repeat_interleave(torch.arange(num_rows, device=device), lengths)
        column = torch.arange(ids_t.numel(), device=device) - indptr_t[row_of]
        out_ids[row_of, column] = ids_t.to(device=device, dtype=torch.int64)
        out_weights[row_of, column] = weights_t.to(device)
    return out_ids, out_weights


def _as_tensor(value: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint32:  # torch has no uint32 arithmetic on every build: widen losslessly
            value = value.astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(value))
    raise InputError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def _to_weights(values: torch.Tensor, rounds: int | None) -> torch.Tensor:
    if rounds is None:
        if not values.is_floating_point():
            raise InputError(
                f"weights are integers ({values.dtype}); pass rounds= to turn counts into count / rounds"
            )
        return values.to(torch.float32)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InputError(f"rounds must be a positive int, got {rounds!r}")
    if values.is_floating_point():
        raise InputError(f"rounds= was given but weights are already floating point ({values.dtype})")
    return values.to(torch.float32) / rounds


def _check_indptr(indptr: torch.Tensor, num_entries: int) -> int:
    if indptr.numel() < 1:
        raise InputError("indptr must have at least one entry (R + 1 offsets)")
    if int(indptr[0]) != 0:
        raise InputError(f"indptr[0] must be 0, got {int(indptr[0])}")
    if int(indptr[-1]) != num_entries:
        raise InputError(f"indptr[-1] = {int(indptr[-1])} but there are {num_entries} ids")
    steps = indptr[1:] - indptr[:-1]
    if bool((steps < 0).any()):
        row = int(torch.nonzero(steps < 0)[0, 0])
        raise InputError(f"indptr decreases at {where(row=row)}: {int(indptr[row])} -> {int(indptr[row + 1])}")
    return indptr.numel() - 1

"""Input validation shared by every sampler backend (reference, Triton) and by ``topk_labels``.

One place decides what a valid call is, so the backends cannot drift apart: options are checked on the host
before any work; logits are checked for NaN / +inf / all-``-inf`` rows with one device reduction and one host
read (the Triton backend gets the same per-row status from its kernel instead, for free, and calls
:func:`raise_for_bad_row` to word the error). Rows are the logits flattened over their leading dimensions in C
order; an error names the flattened row and, for multi-dimensional input, the original index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from sparselabels.errors import InputError, check_int
from sparselabels.options import check_rounds, check_temperature

from .rng import check_seed

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def scaled_logits(x: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """``x / temperature`` in ``dtype``, rows shifted by their maximum first where the division would overflow
    (a tiny temperature or huge logits: +inf - inf is NaN, which sampled id 0 and gave NaN probabilities).
    Other rows are computed exactly as before, so draws do not change for inputs that never overflowed."""
    x = x.to(dtype)
    scaled = x / temperature
    top = scaled.amax(-1, keepdim=True) if x.shape[-1] else scaled
    overflow = torch.isposinf(top)
    if bool(overflow.any()):
        shifted = (x - x.amax(-1, keepdim=True)) / temperature
        scaled = torch.where(overflow, shifted, scaled)
    return scaled


def check_logits(logits: object) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise InputError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in LOGIT_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in LOGIT_DTYPES)
        raise InputError(f"logits must have a floating dtype ({names}), got {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise InputError(f"logits must have shape [..., V] with V >= 1, got {tuple(logits.shape)}")
    return logits


def resolve_vocab_size(vocab_size: int | None, width: int) -> int:
    """``None`` means every column; otherwise columns at or beyond ``vocab_size`` (padding) are ignored."""
    if vocab_size is None:
        return width
    value = check_int("vocab_size", vocab_size, None)
    if not 1 <= value <= width:
        raise InputError(f"vocab_size must be in 1..{width} (the logits' last dimension), got {value}")
    return value


def check_row_ids(row_ids: torch.Tensor | None, num_rows: int, device: torch.device) -> torch.Tensor:
    """Default ``arange(R)``; otherwise a non-negative integer tensor of R ids (moved to the logits' device)."""
    if row_ids is None:
        return torch.arange(num_rows, dtype=torch.int64, device=device)
    if not isinstance(row_ids, torch.Tensor):
        raise InputError(f"row_ids must be a torch.Tensor of int64, got {type(row_ids).__name__}")
    if row_ids.dtype.is_floating_point or row_ids.dtype.is_complex or row_ids.dtype == torch.bool:
        raise InputError(f"row_ids must be an integer tensor, got {row_ids.dtype}")
    if row_ids.dim() != 1 or row_ids.shape[0] != num_rows:
        raise InputError(f"row_ids must have shape [{num_rows}] (one id per row), got {tuple(row_ids.shape)}")
    row_ids = row_ids.to(device=device, dtype=torch.int64)
    if num_rows and bool((row_ids < 0).any()):
        first = int(torch.nonzero(row_ids < 0)[0, 0])
        raise InputError(f"row_ids must be non-negative; row {first} has {int(row_ids[first])}")
    return row_ids.contiguous()


@dataclass(frozen=True)
class Rows:
    """Validated logits as a ``[R, width]`` matrix, with what is needed to sample or report errors."""

    matrix: torch.Tensor  # [R, width] view (or copy) of the logits, rows in C order
    leading_shape: tuple[int, ...]  # the logits' shape without its last dimension
    vocab_size: int  # columns [0, vocab_size) take part

    @property
    def num_rows(self) -> int:
        return self.matrix.shape[0]

    @property
    def valid(self) -> torch.Tensor:
        """The columns that take part, ``[R, vocab_size]`` (a view)."""
        return self.matrix[:, : self.vocab_size]

    def describe_row(self, row: int) -> str:
        if len(self.leading_shape) <= 1:
            return f"logits row {row}"
        index = tuple(int(i) for i in np.unravel_index(row, self.leading_shape))
        return f"logits row {row} (index {index})"


def as_rows(logits: torch.Tensor, vocab_size: int | None) -> Rows:
    logits = check_logits(logits)
    width = logits.shape[-1]
    vocab = resolve_vocab_size(vocab_size, width)
    return Rows(logits.reshape(-1, width), tuple(logits.shape[:-1]), vocab)


def check_rows_finite(rows: Rows, describe: Callable[[int], str] | None = None) -> None:
    """Raise :class:`InputError` for the first row with NaN, +inf, or no finite logit (one host sync);
    ``describe(row)`` names the row in the error, when the caller knows it better than its index in ``rows``."""
    if rows.num_rows == 0:
        return
    x = rows.valid
    bad = torch.isnan(x).any(-1) | torch.isposinf(x).any(-1) | ~(x > float("-inf")).any(-1)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise_for_bad_row(rows, row, where=describe(row) if describe is not None else None)


def raise_for_bad_row(rows: Rows, row: int, *, note: str = "", where: str | None = None) -> None:
    """Word the error for a row already known to be unusable (``where``: the row's name, if the caller knows
    better than its index in ``rows``)."""
    x = rows.valid[row]
    where = where or rows.describe_row(row)
    nan = torch.nonzero(torch.isnan(x))
    if nan.numel():
        raise InputError(f"{where} has NaN at column {int(nan[0, 0])}; logits must be finite or -inf")
    posinf = torch.nonzero(torch.isposinf(x))
    if posinf.numel():
        raise InputError(f"{where} has +inf at column {int(posinf[0, 0])}; logits must be finite or -inf")
    if not bool((x > float("-inf")).any()):
        raise InputError(
            f"{where} has no finite logit among its first {rows.vocab_size} columns (vocab_size); "
            "at least one token must have positive probability"
        )
    raise InputError(f"{where} could not be sampled{': ' + note if note else ''}")


@dataclass(frozen=True)
class SamplingRequest:
    """Every argument of ``sample_counts``, validated; what each backend receives."""

    rows: Rows
    rounds: int
    temperature: float
    seed: int
    row_ids: torch.Tensor  # int64 [R] on the logits' device


def prepare_sampling(
    logits: torch.Tensor,
    rounds: int,
    temperature: float,
    vocab_size: int | None,
    seed: int | None,
    row_ids: torch.Tensor | None,
) -> SamplingRequest:
    """Validate the options (host only; the logits' values are checked by the backend)."""
    rounds = check_rounds(rounds)
    temperature = check_temperature(temperature)
    rows = as_rows(logits, vocab_size)
    ids = check_row_ids(row_ids, rows.num_rows, rows.matrix.device)
    return SamplingRequest(rows, rounds, temperature, check_seed(seed), ids)

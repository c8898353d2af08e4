"""What the samplers return: the labels of R rows in CSR form, on the logits' device.

Row r's labels are ``ids[indptr[r]:indptr[r+1]]`` (ascending token ids) with the matching values — counts
(``SampledLabels``) or probabilities (``TopKLabels``). This is exactly the shape ``LabelWriter.write(ids, values,
indptr)`` takes for one sequence, so a batch of rows that forms a sequence goes to the writer as
``writer.write(*labels.rows(start, stop).numpy())``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sparselabels.errors import InputError


class _CsrRows:
    """Row access and conversions shared by the two label kinds (``values`` is counts or probs)."""

    ids: torch.Tensor
    indptr: torch.Tensor

    @property
    def values(self) -> torch.Tensor:
        raise NotImplementedError

    def _replace(self, ids: torch.Tensor, values: torch.Tensor, indptr: torch.Tensor):
        return type(self)(ids, values, indptr)

    def _check(self, value_dtype: torch.dtype, value_name: str) -> None:
        if self.ids.dtype != torch.int32 or self.ids.dim() != 1:
            raise InputError(f"ids must be a 1-D int32 tensor, got {self.ids.dtype} {tuple(self.ids.shape)}")
        if self.values.dtype != value_dtype or self.values.shape != self.ids.shape:
            raise InputError(
                f"{value_name} must be a {value_dtype} tensor shaped like ids {tuple(self.ids.shape)}, "
                f"got {self.values.dtype} {tuple(self.values.shape)}"
            )
        if self.indptr.dtype != torch.int64 or self.indptr.dim() != 1 or self.indptr.shape[0] < 1:
            raise InputError(f"indptr must be a 1-D int64 tensor of R+1 offsets, got {self.indptr.dtype}")

    @property
    def num_rows(self) -> int:
        return self.indptr.shape[0] - 1

    @property
    def num_labels(self) -> int:
        return self.ids.shape[0]

    @property
    def device(self) -> torch.device:
        return self.ids.device

    def row(self, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, values) of row ``r`` (negative indexes count from the end)."""
        n = self.num_rows
        if not -n <= r < n:
            raise IndexError(f"row {r} out of range for {n} rows")
        r %= n
        start, stop = self.indptr[r : r + 2].tolist()
        return self.ids[start:stop], self.values[start:stop]

    def rows(self, start: int, stop: int):
        """Rows ``[start, stop)`` as labels of the same kind, with ``indptr`` rebased to start at 0."""
        if not 0 <= start <= stop <= self.num_rows:
            raise IndexError(f"rows [{start}, {stop}) out of range for {self.num_rows} rows")
        lo, hi = self.indptr[[start, stop]].tolist()
        indptr = self.indptr[start : stop + 1] - lo
        return self._replace(self.ids[lo:hi], self.values[lo:hi], indptr)

    def to(self, device: torch.device | str):
        return self._replace(self.ids.to(device), self.values.to(device), self.indptr.to(device))

    def numpy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids as uint32, values, indptr as int64)`` on the host: the argument order of ``LabelWriter.write``."""
        ids = self.ids.cpu().numpy().view(np.uint32)  # ids are non-negative: the view keeps every value
        return ids, self.values.cpu().numpy(), self.indptr.cpu().numpy()


@dataclass(frozen=True)
class SampledLabels(_CsrRows):
    """RS-KD labels: per row, distinct sampled ids (int32, ascending) and their counts (uint8, >= 1, summing to
    ``rounds``); ``indptr`` (int64, R+1) starts at 0."""

    ids: torch.Tensor
    counts: torch.Tensor
    indptr: torch.Tensor

    def __post_init__(self) -> None:
        self._check(torch.uint8, "counts")

    @property
    def values(self) -> torch.Tensor:
        return self.counts


@dataclass(frozen=True)
class TopKLabels(_CsrRows):
    """Top-k baseline labels: per row, ids (int32, ascending) and their probabilities under the full softmax
    (float16, not renormalised over the kept ids); ``indptr`` (int64, R+1) starts at 0."""

    ids: torch.Tensor
    probs: torch.Tensor
    indptr: torch.Tensor

    def __post_init__(self) -> None:
        self._check(torch.float16, "probs")

    @property
    def values(self) -> torch.Tensor:
        return self.probs

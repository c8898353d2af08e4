"""What a read returns: one sequence's labels (or a range of positions) in CSR form, as a LabelSpan."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparselabels.errors import InputError

CsrLabels = tuple[np.ndarray, np.ndarray, np.ndarray]  # ids, values, indptr of consecutive positions


@dataclass(frozen=True)
class LabelSpan:
    """Labels of consecutive positions (one sequence, or a range of positions read with ``positions()``): position
    ``t`` owns ``ids[indptr[t]:indptr[t+1]]`` and the same slice of ``values``.

    ``ids`` are uint32, ascending within a position; ``values`` are uint8 draw counts (value kind "count") or
    float16 probabilities ("prob"); ``indptr`` is int64 with ``indptr[0] == 0``. ``fingerprint`` and ``index``
    are the sequence's input fingerprint and number when it is one whole sequence. Arrays may be read-only views
    into a memory-mapped file: copy them before writing to them.
    """

    ids: np.ndarray
    values: np.ndarray
    indptr: np.ndarray
    fingerprint: int | None = None
    index: int | None = None

    @property
    def counts(self) -> np.ndarray:
        """The same array as ``values`` (the name reads better for count-valued files)."""
        return self.values

    @property
    def num_positions(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def num_labels(self) -> int:
        return int(self.ids.shape[0])

    def __len__(self) -> int:
        return self.num_positions

    def position(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """The (ids, values) of position ``t``."""
        if not -self.num_positions <= t < self.num_positions:
            raise IndexError(f"position {t} out of range for {self.num_positions} positions")
        t %= self.num_positions
        lo, hi = int(self.indptr[t]), int(self.indptr[t + 1])
        return self.ids[lo:hi], self.values[lo:hi]

    def weights(self, rounds: int | None) -> np.ndarray:
        """Target weights as float32: count / rounds for counts, the stored probability otherwise."""
        if self.values.dtype == np.uint8:
            if not rounds:
                raise InputError("rounds is needed to turn counts into weights")
            return self.values.astype(np.float32) / np.float32(rounds)
        return self.values.astype(np.float32)


def __getattr__(name: str) -> Any:
    if name == "Sequence":  # the name LabelSpan had in sparselabels 0.1; it shadowed collections.abc.Sequence
        warnings.warn("sparselabels.io.sequence.Sequence is deprecated; use sparselabels.LabelSpan",
                      DeprecationWarning, stacklevel=2)
        return LabelSpan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def concat_csr(parts: list[CsrLabels]) -> CsrLabels:
    """Join CSR blocks of consecutive rows into one."""
    if not parts:
        return np.zeros(0, np.uint32), np.zeros(0, np.uint8), np.zeros(1, np.int64)
    if len(parts) == 1:
        return parts[0]
    ids = np.concatenate([p[0] for p in parts])
    values = np.concatenate([p[1] for p in parts])
    indptrs, base = [parts[0][2]], int(parts[0][2][-1])
    for p in parts[1:]:
        indptrs.append(p[2][1:] + base)
        base += int(p[2][-1])
    return ids, values, np.concatenate(indptrs)


def split_csr(csr: CsrLabels, lengths: list[int]) -> list[CsrLabels]:
    """Cut a CSR block of consecutive rows into consecutive sequences of the given lengths."""
    ids, values, indptr = csr
    out, row = [], 0
    for n in lengths:
        lo, hi = int(indptr[row]), int(indptr[row + n])
        out.append((ids[lo:hi], values[lo:hi], indptr[row : row + n + 1] - lo))
        row += n
    return out

"""What a read returns: one sequence's labels (or a range of positions) in CSR form."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparselabels.errors import InputError


@dataclass(frozen=True)
class Sequence:
    """Labels of consecutive positions: position ``t`` owns ``ids[indptr[t]:indptr[t+1]]`` and the same slice of
    ``counts``.

    ``ids`` are uint32, ascending within a position; ``counts`` are uint8 draw counts (value kind "count") or
    float16 probabilities ("prob"); ``indptr`` is int64 with ``indptr[0] == 0``. Arrays may be read-only views
    into a memory-mapped file: copy them before writing to them.
    """

    ids: np.ndarray
    counts: np.ndarray
    indptr: np.ndarray
    fingerprint: int | None = None
    index: int | None = None

    @property
    def values(self) -> np.ndarray:
        """Alias of ``counts`` that reads better for probability-valued files."""
        return self.counts

    @property
    def num_positions(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def num_labels(self) -> int:
        return int(self.ids.shape[0])

    def __len__(self) -> int:
        return self.num_positions

    def position(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """The (ids, counts) of position ``t``."""
        if not -self.num_positions <= t < self.num_positions:
            raise IndexError(f"position {t} out of range for {self.num_positions} positions")
        t %= self.num_positions
        lo, hi = int(self.indptr[t]), int(self.indptr[t + 1])
        return self.ids[lo:hi], self.counts[lo:hi]

    def weights(self, rounds: int | None) -> np.ndarray:
        """Target weights as float32: count / rounds for counts, the stored probability otherwise."""
        if self.counts.dtype == np.uint8:
            if not rounds:
                raise InputError("rounds is needed to turn counts into weights")
            return self.counts.astype(np.float32) / np.float32(rounds)
        return self.counts.astype(np.float32)

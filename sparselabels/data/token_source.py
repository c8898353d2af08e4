"""``TokenSource``: what every token source offers (indexed sequences of token ids), apart from the sources."""

from __future__ import annotations

import abc
import operator

import numpy as np


class TokenSource(abc.ABC):
    """Token ids of ``len(src)`` sequences; ``src[i]`` is sequence ``i`` as a 1-D integer array."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def _get(self, index: int) -> np.ndarray:
        """Sequence ``index`` with 0 <= index < len(self)."""

    @abc.abstractmethod
    def lengths(self) -> np.ndarray:
        """int64[len(self)]: tokens per sequence, read from an index where the source has one."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short name for errors and metadata, e.g. ``npy:/data/tokens.npy``."""

    def concatenated(self, lo: int, hi: int) -> np.ndarray | None:
        """Sequences ``lo .. hi-1`` back to back as one 1-D array (a view where the source allows), or None
        where the source does not hold them that way. Lets whole-range checks run in blocks, not per sequence."""
        return None

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self)
        index = operator.index(index)
        if not -n <= index < n:
            raise IndexError(f"sequence {index} out of range for {n} sequences in {self.describe()}")
        return self._get(index % n)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r}, sequences={len(self)})"

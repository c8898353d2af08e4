"""Token sources without a per-sequence index: a 1-D token stream cut into sequences, and iterable datasets.

- :class:`StreamTokens`: one long 1-D array of token ids (``.npy``, memory-mapped, or in memory) read as
  sequences of ``seq_len`` tokens, as ``convert --seq-len`` reads rows; a shorter remainder is the last
  sequence (nothing is dropped). A full :class:`~sparselabels.data.token_source.TokenSource`.
- :class:`TokenStream`: sequences read once, in order, from an iterable (a ``datasets.IterableDataset``, a
  ``torch.utils.data.IterableDataset``, a generator). Nothing is known before reading, so only ``generate``
  takes it (it reads in order anyway); training needs an indexed source.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from sparselabels.data.token_source import TokenSource
from sparselabels.errors import FormatError, InputError, check_int


class StreamTokens(TokenSource):
    """A 1-D integer token stream as sequences of ``seq_len`` tokens (the last one shorter if they do not divide).

    ``stream``: a 1-D numpy array or the path of a 1-D ``.npy`` file (memory-mapped; pickles by path).
    """

    def __init__(self, stream: np.ndarray | str | os.PathLike, seq_len: int) -> None:
        self.seq_len = check_int("seq_len", seq_len, 1)
        self.path = None if isinstance(stream, np.ndarray) else os.fspath(stream)
        self._array = stream if isinstance(stream, np.ndarray) else None
        self._check(self.array)

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            try:
                self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise FormatError(f"npy {self.path!r}: cannot memory-map ({exc})") from None
            except OSError as exc:
                raise InputError(f"npy {self.path!r}: cannot open ({exc})") from None
        return self._array

    def _check(self, array: np.ndarray) -> None:
        if array.ndim != 1:
            raise InputError(f"{self.describe()}: seq_len cuts a 1-D token stream, got shape {array.shape}")
        if not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"{self.describe()}: token ids must be integers, got dtype {array.dtype}")

    def __len__(self) -> int:
        return -(-int(self.array.shape[0]) // self.seq_len)

    def _get(self, index: int) -> np.ndarray:
        return self.array[index * self.seq_len : (index + 1) * self.seq_len]

    def lengths(self) -> np.ndarray:
        n, total = len(self), int(self.array.shape[0])
        out = np.full(n, self.seq_len, dtype=np.int64)
        if n:
            out[-1] = total - (n - 1) * self.seq_len
        return out

    def concatenated(self, lo: int, hi: int) -> np.ndarray:
        return self.array[lo * self.seq_len : hi * self.seq_len]

    def describe(self) -> str:
        where = f"npy:{self.path}" if self.path else "array"
        return f"{where}[stream, seq_len={self.seq_len}]"

    def __getstate__(self) -> dict[str, Any]:
        state = {"path": self.path, "seq_len": self.seq_len}
        if self.path is None:
            state["array"] = self._array
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.seq_len = state["path"], state["seq_len"]
        self._array = state.get("array")


def is_token_stream(source: Any) -> bool:
    """Whether ``source`` is read by iterating only: an iterable dataset (``datasets`` or torch) or an iterator."""
    if isinstance(source, Iterator):
        return True
    for cls in type(source).__mro__:
        if cls.__name__ == "IterableDataset" and cls.__module__.startswith(("datasets", "torch.utils.data")):
            return True
    return False


class TokenStream:
    """The sequences of an iterable source, in order; each item a 1-D integer array-like or a mapping holding one
    under ``column``."""

    def __init__(self, source: Any, *, column: str = "input_ids") -> None:
        if not is_token_stream(source):
            raise InputError(f"a token stream needs an iterable dataset or an iterator, got {type(source).__name__}")
        self.source = source
        self.column = column

    def __iter__(self) -> Iterator[np.ndarray]:
        for index, item in enumerate(self.source):
            if isinstance(item, Mapping):
                if self.column not in item:
                    raise InputError(f"{self.describe()}: item {index} has no column {self.column!r} "
                                     f"(keys: {sorted(item)})")
                item = item[self.column]
            if hasattr(item, "numpy") and callable(item.numpy):  # a torch tensor
                item = item.numpy()
            seq = np.asarray(item)
            if seq.ndim != 1 or (seq.size and not np.issubdtype(seq.dtype, np.integer)):
                raise InputError(f"{self.describe()}: sequence {index} must be a 1-D list of integer token ids, got "
                                 f"{seq.dtype} {seq.shape}")
            yield seq

    def describe(self) -> str:
        return f"stream:<{type(self.source).__name__}>[{self.column}]"

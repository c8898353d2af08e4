"""Byte sources for the reader: a memory map (zero-copy views) or positioned reads (no mmap).

The pread mode exists for parallel file systems where thousands of memory maps exhaust the process's map
count or behave badly; it copies each record it reads. Both check every range against the file size
before touching it, so a hostile offset becomes a FormatError, never an out-of-bounds access.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat

import numpy as np

from sparselabels.errors import FormatError

_TAIL_BYTES = 64  # what check_unchanged compares: a label file's footer


class ByteSource:
    """Read-only access to a file's bytes as numpy uint8 arrays."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size

    def check_range(self, offset: int, length: int, what: str) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FormatError(
                f"file {self.path!r}: {what} spans bytes {offset}..{offset + length}, past the end of the "
                f"{self.size}-byte file"
            )

    def view(self, offset: int, length: int, what: str) -> np.ndarray:
        raise NotImplementedError

    def check_unchanged(self) -> None:
        """Raise FormatError if the file is now shorter than when it was opened (no-op where that is safe)."""

    def close(self) -> None:
        pass


class MmapSource(ByteSource):
    """Zero-copy views into a read-only memory map of the whole file."""

    def __init__(self, path: str, fd: int, size: int) -> None:
        super().__init__(path, size)
        self._map = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None
        self._array = (
            np.frombuffer(self._map, dtype=np.uint8) if self._map is not None else np.zeros(0, np.uint8)
        )
        self._tail = bytes(self._map[max(0, size - _TAIL_BYTES) :]) if self._map is not None else b""

    def view(self, offset: int, length: int, what: str) -> np.ndarray:
        self.check_range(offset, length, what)
        return self._array[offset : offset + length]

    def check_unchanged(self) -> None:
        """A page of a map past the end of its file kills the process (SIGBUS) when touched, and a file rewritten
        in place (``cp`` over it) shows its new bytes through the old map. So a file whose size or last bytes
        (a label file's footer, with the index checksum) changed since it was mapped is refused before a read
        touches the map. (A change racing with a read can still crash it, and views already handed out see the
        new bytes: use ``mmap=False`` for files that may change while open.)"""
        if self._map is None:
            return
        size = self._map.size()  # fstat: the file's size now
        if size != self.size or self._map[self.size - len(self._tail) : self.size] != self._tail:
            raise FormatError(
                f"file {self.path!r}: now {size} bytes ({self.size} when opened) or other last bytes: truncated or "
                "overwritten while open; reopen it"
            )

    def close(self) -> None:
        # Views handed out keep the buffer alive; dropping our references lets the map close when they go.
        self._array = np.zeros(0, np.uint8)
        self._map = None


class PreadSource(ByteSource):
    """Positioned reads; every view is a fresh array."""

    def __init__(self, path: str, fd: int, size: int) -> None:
        super().__init__(path, size)
        self._fd = os.dup(fd)

    def view(self, offset: int, length: int, what: str) -> np.ndarray:
        self.check_range(offset, length, what)
        out = np.empty(length, dtype=np.uint8)
        done = 0
        mv = memoryview(out)
        while done < length:
            n = os.preadv(self._fd, [mv[done:]], offset + done)
            if n <= 0:
                raise FormatError(f"file {self.path!r}: {what}: file ended early (was it truncated while open?)")
            done += n
        return out

    def close(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # a shard set drops evicted files unclosed (another thread may still read one)
        with contextlib.suppress(Exception):
            self.close()


def open_source(path: str, *, use_mmap: bool) -> ByteSource:
    """Open ``path`` for reading with the chosen access method.

    Only regular files are label files: a FIFO would block the open (hence O_NONBLOCK, which changes nothing
    for regular files), a directory or a device has no meaningful size.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FormatError(f"file {path!r}: not a regular file")
        return MmapSource(path, fd, info.st_size) if use_mmap else PreadSource(path, fd, info.st_size)
    finally:
        os.close(fd)

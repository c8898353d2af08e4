"""Byte sources for the reader: a memory map (zero-copy views) or positioned reads (no mmap).

The pread mode exists for parallel file systems where thousands of memory maps exhaust the process's map
count or behave badly; it copies each record it reads. Both check every range against the file size
before touching it, so a hostile offset becomes a FormatError, never an out-of-bounds access; a mapped file
that changed since it was opened is refused before it is read (see :meth:`MmapSource.check_unchanged`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat

import numpy as np

from sparselabels._forksafe import ForkSafeLock
from sparselabels.errors import ClosedError, FormatError


class ByteSource:
    """Read-only access to a file's bytes as numpy uint8 arrays."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size

    def check_range(self, offset: int, length: int, what: str) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FormatError(
                f"file {self.path!r}: {what} spans bytes {offset}..{offset + length}, past the end of the "
                f"{self.size}-byte file", path=self.path
            )

    def view(self, offset: int, length: int, what: str) -> np.ndarray:
        raise NotImplementedError

    def check_unchanged(self) -> None:
        """Raise FormatError if the file changed since it was opened, where that matters (see MmapSource)."""

    def close(self) -> None:
        pass

    def __del__(self) -> None:  # a shard set drops evicted files unclosed (another thread may still read one)
        with contextlib.suppress(Exception):
            self.close()


class MmapSource(ByteSource):
    """Zero-copy views into a read-only memory map of the whole file (the map holds the only descriptor)."""

    def __init__(self, path: str, fd: int, size: int) -> None:
        super().__init__(path, size)
        self._map = mmap.mmap(fd, self.size, access=mmap.ACCESS_READ) if self.size else None
        self._array = (
            np.frombuffer(self._map, dtype=np.uint8) if self._map is not None else np.zeros(0, np.uint8)
        )
        self._tail = self._last_bytes()

    def _last_bytes(self) -> bytes:
        """The file's last 64 bytes (its footer, in a complete file) as they are now."""
        return self._map[max(self.size - 64, 0) : self.size] if self._map is not None else b""

    def view(self, offset: int, length: int, what: str) -> np.ndarray:
        self.check_range(offset, length, what)
        array = self._array  # before the map: close() drops the map first, so a live map means a live array
        if self._map is None and self.size:
            raise _closed(self.path)
        return array[offset : offset + length]

    def check_unchanged(self) -> None:
        """Refuse a file truncated, extended or rewritten (``cp`` over it) since it was mapped: a page of the map
        past the file's new end kills the process (SIGBUS) when touched, and another file's bytes would be read
        through the old index. A reader calls this before each read touches the index: the file's size (one
        fstat of the map's descriptor, ~1 us), then its last 64 bytes, the footer, which holds the index's CRC
        and offsets, so another file of the same size differs there. Metadata changes (``touch``, ``rsync -t``)
        and a copy of the same bytes pass. (A change racing with a read can still crash it, and views already
        handed out see the new bytes: use ``mmap=False`` for files that may change while open. Positioned reads
        need no check per read, which parallel file systems would make costly: a shorter file ends a read
        early, an error, and a record's CRC catches other bytes.)"""
        mapped = self._map  # one reference for both checks: close() may drop the attribute meanwhile
        if mapped is None:
            if self.size:
                raise _closed(self.path)
            return
        size = mapped.size()
        if size != self.size or mapped[max(self.size - 64, 0) : self.size] != self._tail:
            raise FormatError(
                f"file {self.path!r}: now {size} bytes ({self.size} when opened)"
                f"{', other footer bytes' if size == self.size else ''}: truncated or overwritten while open; "
                "reopen it", path=self.path)

    def close(self) -> None:
        # Views handed out keep the buffer alive; dropping our references lets the map close when they go. The map
        # goes first: a reader that still finds it also found the whole array (see view).
        self._map = None
        self._array = np.zeros(0, np.uint8)


class PreadSource(ByteSource):
    """Positioned reads through a descriptor of its own; every view is a fresh array."""

    def __init__(self, path: str, fd: int, size: int) -> None:
        super().__init__(path, size)
        self._fd = os.dup(fd)
        # reads in flight, so that close() from another thread never closes (and frees for reuse) the descriptor a
        # read is using: the last read out closes it
        self._guard = ForkSafeLock()
        self._readers = 0
        self._closing = False

    def close(self) -> None:
        guard = getattr(self, "_guard", None)
        if guard is None:
            return
        with guard:
            self._closing = True
            if self._readers == 0 and self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def view(self, offset: int, length: int, what: str) -> np.ndarray:
        self.check_range(offset, length, what)
        with self._guard:
            if self._closing:
                raise _closed(self.path)
            self._readers += 1
        try:
            out = np.empty(length, dtype=np.uint8)
            done = 0
            mv = memoryview(out)
            while done < length:
                n = os.preadv(self._fd, [mv[done:]], offset + done)
                if n <= 0:
                    raise FormatError(f"file {self.path!r}: {what}: file ended early (was it truncated while open?)",
                                      path=self.path)
                done += n
            return out
        finally:
            with self._guard:
                self._readers -= 1
                if self._closing and self._readers == 0 and self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1


def _closed(path: str) -> ClosedError:
    return ClosedError(f"file {path!r} is closed", path=path)


def open_source(path: str, *, use_mmap: bool) -> ByteSource:
    """Open ``path`` for reading with the chosen access method.

    Only regular files are label files: a FIFO would block the open (hence O_NONBLOCK, which changes nothing
    for regular files), a directory or a device has no meaningful size.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FormatError(f"file {path!r}: not a regular file", path=path)
        return MmapSource(path, fd, info.st_size) if use_mmap else PreadSource(path, fd, info.st_size)
    finally:
        os.close(fd)

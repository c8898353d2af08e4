"""A local directory of blocks fetched from object storage, shared by the processes of one node.

One file per block, ``<dir>/<object identity>/<block>``; the identity hashes the object's URL, size, ETag and
footer (see :class:`~sparselabels.io.remote.RemoteSource`), so a replaced object is a new directory and old
blocks are never served for it. Files appear only complete: written under a name of their own, then renamed
into place (``os.replace`` is atomic), so DataLoader workers and ranks sharing the directory never read half a
block and never need a lock. The total is bounded: a process that has written an eighth of the bound since it
last looked lists the directory and deletes the least recently used files (reads refresh a file's mtime) down
to three quarters of the bound (so between two looks it may exceed the bound by that eighth); a file deleted
under a reader is just a miss. Each file ends with the block's CRC-32, checked on every read: a damaged cache file
is a miss (and is deleted), never bytes blamed on the object or, with ``check=False``, read as labels.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
import zlib
from pathlib import Path

from sparselabels._forksafe import ForkSafeLock

_STALE_TMP_SECONDS = 3600


class DiskCache:
    def __init__(self, directory: str | os.PathLike, max_bytes: int) -> None:
        self.root = Path(directory)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = ForkSafeLock()
        self._written = 0
        self._dirs: set[str] = set()

    def _path(self, key: str, block: int) -> Path:
        return self.root / key / f"{block:012d}"

    def get(self, key: str, block: int) -> bytes | None:
        path = self._path(key, block)
        try:
            with open(path, "rb") as f:
                stored = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        data, crc = stored[:-4], stored[-4:]
        if len(stored) < 4 or zlib.crc32(data).to_bytes(4, "little") != crc:
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least recently *used*, not written, goes first
        return data

    def put(self, key: str, block: int, data: bytes) -> None:
        """Store a block (best effort: a full disk or a vanished directory only costs the cache entry)."""
        path = self._path(key, block)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            if key not in self._dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._dirs.add(key)
            with open(tmp, "xb") as f:
                f.write(data)
                f.write(zlib.crc32(data).to_bytes(4, "little"))
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._dirs.discard(key)
            return
        with self._lock:
            self._written += len(data)
            trim = self._written > self.max_bytes // 8
            if trim:
                self._written = 0
        if trim:
            self.trim()

    def trim(self) -> int:
        """Delete least recently used blocks until the directory holds at most 3/4 of ``max_bytes``; return the
        bytes it holds then. Leftover temporary files of killed writers are deleted once an hour old."""
        entries, total, now = [], 0, time.time()
        for sub in list(os.scandir(self.root)):
            if not sub.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):
                for e in os.scandir(sub.path):
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if e.name.endswith(".tmp"):
                        if now - st.st_mtime > _STALE_TMP_SECONDS:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(e.path)
                        continue
                    entries.append((st.st_mtime, st.st_size, e.path))
                    total += st.st_size
        if total <= self.max_bytes:
            return total
        entries.sort()
        for _, size, path in entries:
            if total <= self.max_bytes * 3 // 4:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= size
        return total

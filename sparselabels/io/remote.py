"""Label files in object storage (``s3://``, ``gs://``, ``https://``, any fsspec URL): a byte source of ranged reads.

The reader needs a file's header, footer and index once, then one record (and its chunk's table) per read; the
format gives every byte range, so nothing else is fetched. Bytes are fetched in aligned blocks of
``block_size``; a read's missing blocks are coalesced into as few ranges as possible, several ranges of a batch
(:meth:`RemoteSource.prefetch`, what ``Labels.read_many`` and the dataset's ``__getitems__`` call) are in flight
at once on a small thread pool, and fetched blocks stay in a bounded in-memory cache (and, with ``cache_dir``,
in a local directory, see :mod:`sparselabels.io.remote_cache`), so latency, not bandwidth, is what is hidden.

Every check a local read makes runs on these bytes. An object replaced while open is refused: S3 reads are
conditional on the ETag seen at open (``If-Match``), other stores have the file's last 64 bytes (its footer,
which holds the index CRC) fetched again beside every fetch and compared, and a cache entry is keyed by the
object's identity (URL, size, ETag, footer), so a replaced object never serves stale bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparselabels._extras import MissingExtraError
from sparselabels._forksafe import ForkSafeLock
from sparselabels.errors import ClosedError, FormatError, InputError, check_int
from sparselabels.format.layout import FOOTER_SIZE
from sparselabels.io.source import ByteSource

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
EXTRA_HINT = "install the remote extra: pip install 'sparselabels[remote]' (fsspec, plus s3fs/gcsfs for s3:// or gs://)"
DEFAULT_BLOCK_SIZE = 128 << 10
DEFAULT_MEMORY_BYTES = 256 << 20
DEFAULT_CONCURRENCY = 32
DEFAULT_CACHE_DIR_BYTES = 16 << 30
OPEN_TAIL_BLOCKS = 4  # fetched at open with the footer: the whole index of up to ~8,000 sequences by default


def is_url(path: object) -> bool:
    """True for ``scheme://...`` strings (what fsspec opens); local paths and ``os.PathLike`` objects are not."""
    return isinstance(path, str) and bool(_URL_RE.match(path))


def require_fsspec():
    """The fsspec module, or ImportError naming the extra that provides it."""
    try:
        import fsspec
    except ImportError:
        raise MissingExtraError(f"reading or writing a URL needs fsspec: {EXTRA_HINT}", name="fsspec") from None
    return fsspec


def url_join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def url_parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0]


def filesystem(url: str, storage_options: dict | None):
    """(fsspec filesystem, path within it) for ``url``; an unknown protocol's missing package is named."""
    fsspec = require_fsspec()
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:  # e.g. gcsfs for gs://
        raise MissingExtraError(f"{url!r}: {exc} ({EXTRA_HINT})", name=exc.name) from None
    except ValueError as exc:  # "Protocol not known"
        raise InputError(f"{url!r}: {exc}") from None


def filesystem_path(fs, url: str) -> str:
    """``url`` as a path of ``fs`` (what ``url_to_fs`` returns beside the filesystem)."""
    return fs._strip_protocol(url)


@dataclass
class RemoteOptions:
    """How a remote store is read (one instance is shared by every shard of a store, and pickled with it).

    ``storage_options``: passed to fsspec (endpoint, credentials, ...). ``cache_dir``: a local directory keeping
    fetched blocks for later epochs and other processes (bounded by ``cache_dir_bytes``). ``memory_bytes``:
    the in-memory block cache of one process. ``block_size``: the unit fetched and cached. ``concurrency``:
    ranges in flight at once.
    """

    storage_options: dict = field(default_factory=dict)
    cache_dir: str | None = None
    cache_dir_bytes: int = DEFAULT_CACHE_DIR_BYTES
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    block_size: int = DEFAULT_BLOCK_SIZE
    concurrency: int = DEFAULT_CONCURRENCY

    def __post_init__(self) -> None:
        if not isinstance(self.storage_options, dict):
            raise InputError(f"storage_options must be a dict, got {type(self.storage_options).__name__}")
        self.cache_dir = None if self.cache_dir is None else os.fspath(self.cache_dir)
        check_int("cache_dir_bytes", self.cache_dir_bytes, 1)
        check_int("memory_bytes", self.memory_bytes, 0)
        check_int("block_size", self.block_size, 4096)
        check_int("concurrency", self.concurrency, 1)
        self._runtime: _Runtime | None = None

    def runtime(self) -> _Runtime:
        """This process's pool and caches (a forked or unpickled copy makes its own)."""
        rt = self._runtime
        if rt is None or rt.pid != os.getpid():
            rt = self._runtime = _Runtime(self)
        return rt

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_runtime"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._runtime = None


class _Runtime:
    """Per process: the fetch pool, the in-memory block cache, blocks in flight, and counters."""

    def __init__(self, options: RemoteOptions) -> None:
        self.pid = os.getpid()
        self.pool = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="sparselabels-fetch")
        self.lock = ForkSafeLock()
        self.memory: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self.memory_used = 0
        self.memory_bytes = options.memory_bytes
        self.inflight: dict[tuple[str, int], Future] = {}
        self.stats = {"requests": 0, "bytes_fetched": 0, "memory_hits": 0, "disk_hits": 0}
        self._options = options
        self._fs = None
        self.disk = None
        if options.cache_dir is not None:
            from sparselabels.io.remote_cache import DiskCache

            self.disk = DiskCache(options.cache_dir, options.cache_dir_bytes)

    def filesystem(self, url: str):
        """(filesystem, path) for ``url``: one filesystem object per store and process (creating an S3 client
        costs a good fraction of a second)."""
        with self.lock:  # shards opened concurrently share the one filesystem made first
            if self._fs is None:
                self._fs = filesystem(url, self._options.storage_options)[0]
        return self._fs, filesystem_path(self._fs, url)

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.stats[name] += n

    def remember(self, key: tuple[str, int], data: bytes) -> None:
        """Keep a block in memory, dropping the least recently used beyond ``memory_bytes``."""
        with self.lock:
            if key in self.memory or len(data) > self.memory_bytes:
                return
            self.memory[key] = data
            self.memory_used += len(data)
            while self.memory_used > self.memory_bytes:
                _, old = self.memory.popitem(last=False)
                self.memory_used -= len(old)


class RemoteSource(ByteSource):
    """A label file in object storage read by ranges (see the module docstring)."""

    def __init__(self, url: str, options: RemoteOptions) -> None:
        self.options = options
        details = self._connect(url)
        super().__init__(url, int(details["size"]))
        self.block_size = options.block_size
        self.etag = _etag(details)
        # S3 files read with If-Match on the ETag seen at open: no footer check needed beside each fetch
        self._conditional = bool(getattr(self._file, "read_kw", {}).get("IfMatch"))
        self._footer = b""
        self._key = ""
        # The cache key: URL, size and ETag where the store gives one (S3 gives every new object a new ETag), so
        # the tail too may come from the cache; else also the footer bytes, fetched now (the tail, in one request)
        tail_start = max(self.size - OPEN_TAIL_BLOCKS * self.block_size, 0)
        if self.etag:
            self._key = _digest(url, str(self.size), self.etag)
            self.prefetch([(tail_start, self.size - tail_start)])
            at = max(self.size - FOOTER_SIZE, 0)
            self._footer = self.view(at, self.size - at, "footer").tobytes()
        else:
            tail = self._get(tail_start, self.size)
            self._footer = tail[-FOOTER_SIZE:]
            self._key = _digest(url, str(self.size), "", self._footer.hex())
            self._blocks_tail(tail_start, tail)

    def _connect(self, url: str) -> dict:
        """Open the object in this process (its pool, filesystem and file object); return its details."""
        self._pid = os.getpid()
        self.rt = self.options.runtime()
        self._fs, self._fspath = self.rt.filesystem(url)
        try:
            self._file = self._fs.open(self._fspath, "rb", cache_type="none", block_size=self.options.block_size)
        except FileNotFoundError:
            raise FileNotFoundError(f"{url!r}: no such object") from None
        details = getattr(self._file, "details", None) or self._fs.info(self._fspath)
        if details.get("type", "file") != "file":
            raise FormatError(f"file {url!r}: not a file (a directory or prefix)", path=url)
        if details.get("size") is None:  # e.g. an HTTP server that sends no Content-Length
            self._file.close()
            raise FormatError(f"file {url!r}: the store does not report the object's size, which ranged reads need",
                              path=url)
        self._ranged = hasattr(self._file, "_fetch_range")
        return details

    def _here(self) -> None:
        """In a forked child (a DataLoader worker given an open store), the parent's threads and connections are
        gone: connect again, and refuse an object that is no longer the one opened."""
        if self._pid != os.getpid():
            details = self._connect(self.path)
            if int(details["size"]) != self.size or _etag(details) != self.etag:
                raise self._changed(f"now {details['size']} bytes, ETag {_etag(details)!r}")

    # -- identity and change -----------------------------------------------------------------------------
    @property
    def identity(self) -> str:
        """What a cache entry of this object is keyed by: URL, size, ETag and footer bytes."""
        return self._key

    def _changed(self, detail: str) -> FormatError:
        return FormatError(f"file {self.path!r}: the object changed while open ({detail}); reopen it")

    def _get(self, start: int, end: int) -> bytes:
        """Bytes ``start..end-1`` from the store (one request), refusing an object replaced since open."""
        self._here()
        file = self._file
        if file is None:  # closed by another thread after this read took the source: as a local read says
            raise ClosedError(f"file {self.path!r} is closed", path=self.path)
        self.rt.count("requests")
        try:
            if self._ranged:  # a buffered fsspec file: the store's own ranged GET (conditional on S3)
                data = file._fetch_range(start, end)
            else:
                data = self._fs.cat_file(self._fspath, start=start, end=end)
        except OSError as exc:
            if type(exc).__name__ == "FileExpired":  # s3fs: the If-Match on the ETag seen at open failed
                raise self._changed("its ETag differs") from None
            raise
        self.rt.count("bytes_fetched", len(data))
        if len(data) != end - start:
            raise self._changed(f"{len(data)} bytes at {start}..{end}, expected {end - start}")
        return data

    def _check_footer(self) -> None:
        if self._footer and self._get(max(self.size - FOOTER_SIZE, 0), self.size) != self._footer:
            raise self._changed("other footer bytes")

    # -- blocks --------------------------------------------------------------------------------------------
    def _blocks_tail(self, start: int, data: bytes) -> None:
        """Keep the whole blocks inside the tail fetched at open."""
        B = self.block_size
        first = -(-start // B)
        for b in range(first, -(-self.size // B)):
            lo, hi = b * B, min((b + 1) * B, self.size)
            if lo >= start:
                self.rt.remember((self._key, b), data[lo - start : hi - start])

    def _block_range(self, b: int) -> tuple[int, int]:
        return b * self.block_size, min((b + 1) * self.block_size, self.size)

    def _fetch_run(self, first: int, last: int, check: Future | None) -> dict[int, bytes]:
        """Blocks ``first..last`` in one request, kept only once ``check`` (the footer fetched beside this batch,
        where reads are not conditional) found the object unchanged. ``check`` was submitted to the pool before
        this task, so it is running or done: waiting for it cannot starve the pool."""
        lo, hi = self._block_range(first)[0], self._block_range(last)[1]
        data = self._get(lo, hi)
        if check is not None:
            check.result()
        out = {}
        for b in range(first, last + 1):
            s, e = self._block_range(b)
            out[b] = data[s - lo : e - lo]
            self.rt.remember((self._key, b), out[b])
            if self.rt.disk is not None:
                self.rt.disk.put(self._key, b, out[b])
        return out

    def _request(self, blocks: list[int]) -> dict[int, bytes | Future]:
        """Each block from memory or disk, or the future fetching it (started here if none is in flight)."""
        self._here()
        rt = self.rt
        found: dict[int, bytes | Future] = {}
        missing = []
        with rt.lock:
            for b in blocks:
                key = (self._key, b)
                data = rt.memory.get(key)
                if data is not None:
                    rt.memory.move_to_end(key)
                    rt.stats["memory_hits"] += 1
                    found[b] = data
                elif key in rt.inflight:
                    found[b] = rt.inflight[key]
                else:
                    missing.append(b)
        if rt.disk is not None and missing:
            still = []
            for b in missing:
                data = rt.disk.get(self._key, b)
                if data is None or len(data) != self._block_range(b)[1] - self._block_range(b)[0]:
                    still.append(b)
                else:
                    rt.count("disk_hits")
                    rt.remember((self._key, b), data)
                    found[b] = data
            missing = still
        runs = _runs(missing)
        check = rt.pool.submit(self._check_footer) if runs and not self._conditional else None
        for first, last in runs:
            with rt.lock:
                fut = rt.pool.submit(self._fetch_run, first, last, check)
                for b in range(first, last + 1):
                    rt.inflight[(self._key, b)] = fut
            fut.add_done_callback(lambda _f, first=first, last=last: self._landed(first, last))
            for b in range(first, last + 1):
                found[b] = fut
        return found

    def _landed(self, first: int, last: int) -> None:
        with self.rt.lock:
            for b in range(first, last + 1):
                self.rt.inflight.pop((self._key, b), None)

    def _blocks_of(self, offset: int, length: int) -> list[int]:
        if length == 0:
            return []
        return list(range(offset // self.block_size, (offset + length - 1) // self.block_size + 1))

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Start fetching the blocks of ``(offset, length)`` ranges (not waiting): a batch's reads then find them
        in memory or in flight. Ranges past the end are left to the read that checks them."""
        blocks = sorted({b for off, n in ranges if off >= 0 and off + n <= self.size for b in self._blocks_of(off, n)})
        if blocks:
            self._request(blocks)

    def view(self, offset: int, length: int, what: str) -> np.ndarray:
        self.check_range(offset, length, what)
        blocks = self._blocks_of(offset, length)
        found = self._request(blocks)
        parts = []
        for b in blocks:
            data = found[b]
            if isinstance(data, Future):
                data = data.result()[b]
            parts.append(data)
        start = offset - (blocks[0] * self.block_size if blocks else 0)
        buf = parts[0] if len(parts) == 1 else b"".join(parts)
        return np.frombuffer(buf, dtype=np.uint8, count=length, offset=start) if length else np.zeros(0, np.uint8)

    def close(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None:
            self._file = None
            f.close()


def _etag(details: dict) -> str:
    return str(details.get("ETag") or details.get("etag") or "")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


def _runs(blocks: list[int]) -> list[tuple[int, int]]:
    """Sorted block numbers as (first, last) runs of consecutive blocks."""
    runs: list[tuple[int, int]] = []
    for b in sorted(blocks):
        if runs and b == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((b, b))
    return runs


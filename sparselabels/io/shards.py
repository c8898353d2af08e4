"""Shard sets: several label files read as one, described by a manifest (``io.manifest``) or by a directory.

Shards open lazily and at most ``max_open`` (default 256) stay mapped at a time, so a set of
thousands of shards does not exhaust the process's descriptors or memory maps; a shard dropped for another
is reopened on its next read (~0.3 ms), so random reads over more shards than that cost more.
"""

from __future__ import annotations

import bisect
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sparselabels._forksafe import ForkSafeLock
from sparselabels.errors import ClosedError, CompatibilityError, FormatError, check_int
from sparselabels.io.manifest import (
    MANIFEST_NAME,
    check_compatible,
    check_fingerprints_agree,
    common_metadata,
    footer_crc32,
    read_manifest,
)
from sparselabels.io.reader import DEFAULT_MAX_SEQUENCE_POSITIONS, LabelFile, Labels
from sparselabels.io.sequence import LabelSpan

SHARD_SUFFIX = ".slbl"
# The shards of one labeling run (one per rank); a directory holding some of them must hold all of them.
RUN_SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})" + re.escape(SHARD_SUFFIX) + r"(\.partial)?$")
DEFAULT_MAX_OPEN = 256  # one descriptor each: well within the usual limit of 1,024 per process


class LabelShards(Labels):
    """Several label files presented as one sequence of sequences, in shard order.

    Safe to read from several threads: opening and evicting shards is locked, and an evicted shard is dropped
    rather than closed, so a read in progress on it finishes (its file closes when the last reader lets go).
    """

    def __init__(self, shards: list[dict], *, root: Path, metadata: dict, mmap: bool = True,
                 verify: str = "index", max_open: int = DEFAULT_MAX_OPEN, source: str | None = None,
                 opened: dict[int, LabelFile] | None = None,
                 max_sequence_positions: int = DEFAULT_MAX_SEQUENCE_POSITIONS) -> None:
        self._entries = shards
        self._root = root
        self.metadata = metadata
        self._mmap = mmap
        self._verify = verify
        self._max_open = check_int("max_open", max_open, 1)
        self._max_sequence_positions = check_int("max_sequence_positions", max_sequence_positions, 1)
        self._source = source
        self._closed = False
        self._lock = ForkSafeLock()
        self._open: OrderedDict[int, LabelFile] = OrderedDict(opened or {})
        self._verified: set[int] = set(self._open)  # shards whose index CRC was checked (once is enough)
        self._evict()
        self._seq_starts = np.concatenate(([0], np.cumsum([e["num_sequences"] for e in shards]))).astype(np.int64)
        self._pos_starts = np.concatenate(([0], np.cumsum([e["num_positions"] for e in shards]))).astype(np.int64)
        self._num_labels = sum(e["num_labels"] for e in shards)

    @classmethod
    def from_manifest(cls, path: str | os.PathLike, **kwargs) -> LabelShards:
        body = read_manifest(path)
        root = Path(path).parent
        for k, entry in enumerate(body["shards"]):  # one stat each: the sizes the counts were bounded by are real
            shard = root / entry["path"]
            try:
                info = shard.stat()
            except (FileNotFoundError, NotADirectoryError):  # (the latter: a path through a file)
                raise FormatError(f"shard {k} ({str(shard)!r}): file is missing", path=str(shard)) from None
            if not stat.S_ISREG(info.st_mode):
                raise FormatError(f"shard {k} ({str(shard)!r}): not a regular file", path=str(shard))
            size = info.st_size
            if size != entry["bytes"]:
                raise FormatError(f"shard {k} ({str(shard)!r}): bytes is {size}, the manifest says {entry['bytes']}; "
                                  "the shard changed", path=str(shard), field="bytes")
        return cls(body["shards"], root=root, metadata=body["metadata"], source=os.fspath(path), **kwargs)

    @classmethod
    def from_files(cls, paths: list[Path], **kwargs) -> LabelShards:
        """Open every file now (their footers and indexes give the counts) and check they agree."""
        keep = check_int("max_open", kwargs.get("max_open", DEFAULT_MAX_OPEN), 1)
        opened: OrderedDict[int, LabelFile] = OrderedDict()
        entries, metas, fingerprints = [], [], []
        try:
            for i, p in enumerate(paths):
                f = LabelFile(p, mmap=kwargs.get("mmap", True), verify=kwargs.get("verify", "index"),
                              max_sequence_positions=kwargs.get("max_sequence_positions",
                                                                DEFAULT_MAX_SEQUENCE_POSITIONS))
                opened[i] = f
                if metas:
                    check_compatible(metas[0], f.metadata, what=f"shard {str(p)!r}", reference_name=str(paths[0]))
                metas.append(f.metadata)
                if len(f):
                    fingerprints.append(f.fingerprints is not None)
                entries.append({"path": p.name, "bytes": f.file_size, "num_sequences": len(f),
                                "num_positions": f.num_positions, "num_labels": f.num_labels,
                                "footer_crc32": footer_crc32(f)})
                while len(opened) > keep:  # at most max_open at a time, even while listing (descriptors)
                    opened.popitem(last=False)[1].close()
            check_fingerprints_agree(fingerprints)
        except BaseException:
            for f in opened.values():
                f.close()
            raise
        shards = cls(entries, root=paths[0].parent, metadata=common_metadata(metas), opened=dict(opened), **kwargs)
        shards._verified.update(range(len(paths)))
        return shards

    # -- shard management ----------------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return len(self._entries)

    def shard_paths(self) -> list[Path]:
        return [self._shard_location(k) for k in range(self.num_shards)]

    def _shard_location(self, k: int):
        """Where shard ``k`` lives (a remote shard set gives URLs)."""
        return self._root / self._entries[k]["path"]

    def _new_file(self, location, verify: str) -> LabelFile:
        return LabelFile(location, mmap=self._mmap, verify=verify, max_sequence_positions=self._max_sequence_positions)

    def shard(self, k: int) -> LabelFile:
        """Shard ``k``, opened (and checked against its manifest entry) on first use."""
        with self._lock:
            if self._closed:
                raise ClosedError(f"{self!r} is closed")
            f = self._open.get(k)
            if f is not None:
                self._open.move_to_end(k)
                return f
        # opened outside the lock (checking a shard's index takes a while; reads of other shards go on), so two
        # threads may both open shard k: the first to come back keeps its copy
        opened = self._open_shard(k)
        with self._lock:
            if self._closed:
                opened.close()
                raise ClosedError(f"{self!r} is closed")
            f = self._open.setdefault(k, opened)
            self._open.move_to_end(k)
            self._evict()
        if f is not opened:
            opened.close()
        return f

    def _evict(self) -> None:
        """Drop the least recently used shards beyond ``max_open`` (not closed: see the class docstring)."""
        while len(self._open) > self._max_open:
            self._open.popitem(last=False)

    def _open_shard(self, k: int) -> LabelFile:
        entry = self._entries[k]
        path = self._shard_location(k)
        where = f"shard {k} ({str(path)!r})"
        # reopened after eviction: the footer (which holds the index CRC) is compared with the entry below, so
        # the index CRC need not be computed again; the structure is always checked
        verify = "structure" if k in self._verified and self._verify == "index" else self._verify
        try:
            f = self._new_file(path, verify)
        except (FileNotFoundError, NotADirectoryError):
            raise FormatError(f"{where}: file is missing", path=str(path)) from None
        found = {"bytes": f.file_size, "num_sequences": len(f), "num_positions": f.num_positions,
                 "num_labels": f.num_labels, "footer_crc32": footer_crc32(f)}
        for key, value in found.items():
            if entry[key] != value:
                f.close()
                raise FormatError(f"{where}: {key} is {value}, the manifest says {entry[key]}; the shard changed",
                                  path=str(path), field=key)
        try:
            check_compatible(self.metadata, f.metadata, what=where, reference_name="the manifest")
        except CompatibilityError:
            f.close()
            raise
        self._verified.add(k)
        return f

    # -- Labels --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._seq_starts[-1])

    @property
    def num_positions(self) -> int:
        return int(self._pos_starts[-1])

    @property
    def num_labels(self) -> int:
        return self._num_labels

    def locate_sequence(self, index: int) -> tuple[int, int]:
        """(shard, index within the shard) of a global sequence index."""
        k = bisect.bisect_right(self._seq_starts, index) - 1
        return k, index - int(self._seq_starts[k])

    def read(self, index: int, *, check: bool = True) -> LabelSpan:
        index = self._sequence_index(index)
        k, local = self.locate_sequence(index)
        s = self.shard(k).read(local, check=check)
        return LabelSpan(s.ids, s.values, s.indptr, s.fingerprint, index)

    def prefetch(self, indices) -> None:
        """Group ``indices`` by shard and start each shard's fetches (see :meth:`Labels.prefetch`)."""
        for k, local in self._by_shard(indices).items():
            self.shard(k).prefetch(local)

    def _by_shard(self, indices) -> dict[int, list[int]]:
        n, groups = len(self), {}
        for i in indices:
            if -n <= i < n:
                k, local = self.locate_sequence(i % n)
                groups.setdefault(k, []).append(local)
        return groups

    def _locate(self, position: int) -> tuple[int, int]:
        k = int(np.searchsorted(self._pos_starts, position, side="right")) - 1
        seq, offset = self.shard(k)._locate(position - int(self._pos_starts[k]))
        return int(self._seq_starts[k]) + seq, offset

    @property
    def sequence_lengths(self) -> np.ndarray:
        return np.concatenate([self.shard(k).sequence_lengths for k in range(self.num_shards)])

    @property
    def fingerprints(self) -> np.ndarray | None:
        parts = []
        for k in range(self.num_shards):
            shard = self.shard(k)
            fps = shard.fingerprints
            if fps is None and len(shard):
                return None
            parts.append(fps if fps is not None else np.zeros(0, dtype="<u8"))  # an empty shard stores no flag
        return np.concatenate(parts) if parts else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for f in self._open.values():
                f.close()
            self._open.clear()

    def __getstate__(self) -> dict[str, Any]:
        if self._closed:
            raise ClosedError(f"{self!r} is closed")
        state = {k: v for k, v in self.__dict__.items() if k not in ("_open", "_lock")}
        state["_verify"] = "structure"
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open = OrderedDict()
        self._lock = ForkSafeLock()

    def __repr__(self) -> str:
        return (f"LabelShards({self._source or str(self._root)!r}, shards={self.num_shards}, sequences={len(self)}, "
                f"positions={self.num_positions})")


def run_shard_name(rank: int, world_size: int) -> str:
    return f"shard-{rank:05d}-of-{world_size:05d}{SHARD_SUFFIX}"


def shard_files(directory: Path) -> list[Path]:
    """The shard files of a directory without a manifest, in name order.

    Refused while any of them is unfinished (a ``.partial`` file: a writer is running or was interrupted) or
    when the shards of a labeling run (``shard-RRRRR-of-WWWWW``) are not all there: the directory would read as
    a dataset silently missing sequences."""
    names = {p.name for p in directory.iterdir()}
    files = {n for n in names if n.endswith(SHARD_SUFFIX) and (directory / n).is_file()}

    def what(name: str) -> str:
        return "a link to a missing file" if (directory / name).is_symlink() else "not a regular file"

    return [directory / n for n in shard_names(names, files, str(directory), describe=what)]


def shard_names(names: Iterable[str], files: Iterable[str], directory: str, *,
                describe: Callable[[str], str] = lambda name: "not a regular file") -> list[str]:
    """The shard file names among a directory's ``names`` (``files``: those that are regular files), in order,
    checked as :func:`shard_files` describes; ``describe`` words what an entry that is not a file is."""
    files = set(files)
    unreadable = sorted(n for n in names if n.endswith(SHARD_SUFFIX) and n not in files)
    if unreadable:  # a dangling link, a directory, a prefix ``x.slbl/`` in a bucket: skipping it would read as a
        # smaller dataset
        raise FormatError(f"directory {directory!r} holds {unreadable[0]}, {describe(unreadable[0])}: restore or "
                          "remove it before reading the directory")
    unfinished = sorted(n for n in names if n.endswith(SHARD_SUFFIX + ".partial"))
    if unfinished:
        raise FormatError(f"directory {directory!r} holds {unfinished[0]}, an unfinished label file (a writer "
                          "is running or was interrupted): finish or resume it before reading the directory")
    found = sorted(n for n in files if n.endswith(SHARD_SUFFIX))
    if not found:
        raise FormatError(f"directory {directory!r} holds no {MANIFEST_NAME} and no *{SHARD_SUFFIX} files")
    runs: dict[int, set[int]] = {}
    for name in found:
        m = RUN_SHARD_RE.match(name)
        if m:
            runs.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    for world_size, ranks in runs.items():
        missing = sorted(set(range(world_size)) - ranks)
        stray = sorted(r for r in ranks if r >= world_size)
        if missing or stray or len(runs) > 1:
            what = (f"shard {missing[0]} is missing" if missing else f"a shard numbered {stray[0]}" if stray
                    else f"shards of runs with {sorted(runs)} ranks")
            raise FormatError(f"directory {directory!r} holds the shards of a {world_size}-rank labeling run "
                              f"but not as one complete run ({what})")
    return found

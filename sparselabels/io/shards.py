"""Shard sets: several label files read as one, described by a JSON manifest or by a directory.

A manifest lists shard files by path *relative to the manifest's directory* (absolute paths and ``..`` are
refused), with each shard's size, counts and footer checksum, so a stale or swapped shard is caught when it
is opened. Shards open lazily and at most ``max_open`` (default 256) stay mapped at a time, so a set of
thousands of shards does not exhaust the process's descriptors or memory maps; a shard dropped for another
is reopened on its next read (~0.3 ms), so random reads over more shards than that cost more.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import re
import secrets
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from sparselabels._forksafe import ForkSafeLock
from sparselabels.errors import CompatibilityError, FormatError, InputError, check_int
from sparselabels.format.metadata import COMPATIBILITY_KEYS, check_common_metadata
from sparselabels.io.reader import DEFAULT_MAX_SEQUENCE_POSITIONS, LabelFile, Labels
from sparselabels.io.remote import is_url
from sparselabels.io.sequence import Sequence

MANIFEST_FORMAT = "sparselabels-manifest"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_SUFFIX = ".slbl"
MAX_MANIFEST_BYTES = 256 << 20
# The shards of one labeling run (one per rank); a directory holding some of them must hold all of them.
RUN_SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})" + re.escape(SHARD_SUFFIX) + r"(\.partial)?$")
_SHARD_FIELDS = {"path": str, "bytes": int, "num_sequences": int, "num_positions": int, "num_labels": int,
                 "footer_crc32": int}


def footer_crc32(f: LabelFile) -> int:
    """The CRC-32 stored in an open file's footer (checked at open): a cheap identity of its whole index."""
    return int.from_bytes(f.footer.pack()[-4:], "little")


def check_compatible(reference: dict, other: dict, *, what: str, reference_name: str) -> None:
    """Raise CompatibilityError naming the first key that must agree between two files and does not."""
    for key in COMPATIBILITY_KEYS:
        if reference.get(key) != other.get(key):
            raise CompatibilityError(
                f"{what}: {key} is {other.get(key)!r}, but {reference_name} has {reference.get(key)!r}"
            )


def check_fingerprints_agree(stored: Iterable[bool]) -> None:
    """Files read as one must all store input fingerprints or none (``stored``: one flag per non-empty file;
    an empty file stores none either way): a mixed set would read back with no fingerprints at all."""
    if len(set(stored)) > 1:
        raise CompatibilityError("some inputs store input fingerprints and others do not; they cannot be read as "
                                 "one dataset")


def common_metadata(metas: list[dict]) -> dict:
    """The keys whose values are identical in every metadata dict."""
    first = metas[0]
    return {k: v for k, v in first.items() if all(k in m and m[k] == v for m in metas[1:])}


def _confined(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise FormatError(f"{where}: shard path {name!r} is not a non-empty relative path")
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or ".." in parts or (parts and parts[0].endswith(":")):
        raise FormatError(f"{where}: shard path {name!r} leaves the manifest's directory")
    return name


def check_manifest_name(path: Path, hint: str = "") -> None:
    """A manifest is named ``*.json``: under a label file's name, a directory holding it would not read."""
    if path.suffix != ".json":
        raise InputError(f"{path}: a manifest is JSON; name it *.json{hint}")


def manifest_body(named: Iterable[tuple[str, str, Callable[[], LabelFile]]]) -> dict:
    """A manifest's content for shards given as (path relative to the manifest, name for messages, opener),
    checked compatible; each shard is opened in turn and closed again."""
    entries, metas, first_name, with_fingerprints = [], [], None, []
    for rel, name, opener in named:
        with opener() as f:
            if metas:
                check_compatible(metas[0], f.metadata, what=f"shard {name!r}", reference_name=first_name)
            else:
                first_name = name
            metas.append(f.metadata)
            if len(f):
                with_fingerprints.append(f.fingerprints is not None)
            entries.append({
                "path": rel,
                "bytes": f.file_size,
                "num_sequences": len(f),
                "num_positions": f.num_positions,
                "num_labels": f.num_labels,
                "footer_crc32": footer_crc32(f),
            })
    if not entries:
        raise CompatibilityError("a manifest needs at least one shard")
    check_fingerprints_agree(with_fingerprints)
    return {
        "format": MANIFEST_FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "num_sequences": sum(e["num_sequences"] for e in entries),
        "num_positions": sum(e["num_positions"] for e in entries),
        "num_labels": sum(e["num_labels"] for e in entries),
        "metadata": common_metadata(metas),
        "shards": entries,
    }


def write_manifest(path: str | os.PathLike, shards: list[str | os.PathLike]) -> Path:
    """Write a manifest at ``path`` (``*.json``) for shard files that live in its directory tree (checked
    compatible)."""
    path = Path(path)
    check_manifest_name(path)
    root = path.parent.resolve()
    named = []
    for shard in shards:
        shard_path = Path(shard).resolve()
        try:
            rel = shard_path.relative_to(root)
        except ValueError:
            raise CompatibilityError(
                f"shard {str(shard)!r} is outside the manifest's directory {str(root)!r}; a manifest may only "
                "list files beside or below it (or merge with copy=True)"
            ) from None
        named.append((rel.as_posix(), str(shard), lambda p=shard_path: LabelFile(p)))
    body = manifest_body(named)
    # A temporary name of its own (two merges writing one manifest must not write into each other's file),
    # synced before the rename so that readers only ever see a complete manifest.
    # (os.open rather than mkstemp, whose files are 0600: other users of a shared cluster must read the manifest
    # as they read the label files, which are created 0644 less the umask)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(body, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_manifest(path: str | os.PathLike) -> dict:
    """Load and check a manifest (structure, types, confinement of shard paths)."""
    path = Path(path)
    where = f"manifest {str(path)!r}"
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise FormatError(f"{where}: {size} bytes, more than the limit of {MAX_MANIFEST_BYTES}")
    return parse_manifest(path.read_bytes(), where)


def parse_manifest(data: bytes, where: str) -> dict:
    """Check a manifest's bytes (at most MAX_MANIFEST_BYTES, read by the caller) as :func:`read_manifest` does."""
    # a manifest needs one map per shard and a few more: 64 MB of "{}," would decode to 1.7 GB of dicts
    if data.count(b"{") + data.count(b"[") > len(data) // 32 + 64:
        raise FormatError(f"{where}: more maps and arrays than a manifest's shard entries need")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise FormatError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != MANIFEST_FORMAT:
        raise FormatError(f"{where}: not a sparselabels manifest (format must be {MANIFEST_FORMAT!r})")
    if body.get("manifest_version") != MANIFEST_VERSION:
        raise FormatError(f"{where}: manifest_version {body.get('manifest_version')!r} is not supported")
    shards = body.get("shards")
    if not isinstance(shards, list) or not shards:
        raise FormatError(f"{where}: 'shards' must be a non-empty list")
    if not isinstance(body.get("metadata"), dict):
        raise FormatError(f"{where}: 'metadata' must be a map")
    try:  # what readers of a shard set use without opening a shard (vocab_size, value_kind, rounds, ...)
        check_common_metadata(body["metadata"])
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict):
            raise FormatError(f"{where}: shard {i} is not a map")
        for key, typ in _SHARD_FIELDS.items():
            value = entry.get(key)
            if not isinstance(value, typ) or isinstance(value, bool) or (typ is int and not 0 <= value < 1 << 63):
                raise FormatError(f"{where}: shard {i}: field {key!r} is missing or invalid ({value!r})")
        _confined(entry["path"], f"{where}: shard {i}")
        # what a file of that size can hold (>= 64 bytes of index and entries per sequence; <= 20 positions or
        # labels per byte in any codec), so a manifest cannot make len() and the samplers built on it huge
        if entry["num_sequences"] * 64 > entry["bytes"] or max(entry["num_positions"], entry["num_labels"]) > (
                20 * entry["bytes"]):
            raise FormatError(f"{where}: shard {i}: counts {entry['num_sequences']}, {entry['num_positions']}, "
                              f"{entry['num_labels']} are more than a {entry['bytes']}-byte file holds")
    for key in ("num_sequences", "num_positions", "num_labels"):
        if body.get(key) != sum(e[key] for e in shards):
            raise FormatError(f"{where}: {key} does not equal the sum over its shards")
        if body[key] >= 1 << 63:  # the shard set's int64 prefix sums must not wrap
            raise FormatError(f"{where}: {key} {body[key]} is out of range (>= 2**63)")
    return body


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
            except FileNotFoundError:
                raise FormatError(f"shard {k} ({str(shard)!r}): file is missing") from None
            if not stat.S_ISREG(info.st_mode):
                raise FormatError(f"shard {k} ({str(shard)!r}): not a regular file")
            size = info.st_size
            if size != entry["bytes"]:
                raise FormatError(f"shard {k} ({str(shard)!r}): bytes is {size}, the manifest says {entry['bytes']}; "
                                  "the shard changed")
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
                raise ValueError(f"{self!r} is closed")
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
                raise ValueError(f"{self!r} is closed")
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
        except FileNotFoundError:
            raise FormatError(f"{where}: file is missing") from None
        found = {"bytes": f.file_size, "num_sequences": len(f), "num_positions": f.num_positions,
                 "num_labels": f.num_labels, "footer_crc32": footer_crc32(f)}
        for key, value in found.items():
            if entry[key] != value:
                f.close()
                raise FormatError(f"{where}: {key} is {value}, the manifest says {entry[key]}; the shard changed")
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

    def read(self, index: int, *, check: bool = True) -> Sequence:
        index = self._sequence_index(index)
        k, local = self.locate_sequence(index)
        s = self.shard(k).read(local, check=check)
        return Sequence(s.ids, s.counts, s.indptr, s.fingerprint, index)

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
            raise ValueError(f"{self!r} is closed")
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
    unreadable = sorted(n for n in names if n.endswith(SHARD_SUFFIX) and n not in files)
    if unreadable:  # a dangling link or a directory: skipping it would read as a smaller dataset
        what = "a link to a missing file" if (directory / unreadable[0]).is_symlink() else "not a regular file"
        raise FormatError(f"directory {str(directory)!r} holds {unreadable[0]}, {what}: restore or remove it before "
                          "reading the directory")
    return [directory / n for n in shard_names(names, files, str(directory))]


def shard_names(names: Iterable[str], files: Iterable[str], directory: str) -> list[str]:
    """The shard file names among a directory's ``names`` (``files``: those that are regular files), in order,
    checked as :func:`shard_files` describes."""
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


def open_labels(path: str | os.PathLike, *, mmap: bool = True, verify: str = "index", max_open: int = DEFAULT_MAX_OPEN,
                max_sequence_positions: int = DEFAULT_MAX_SEQUENCE_POSITIONS, storage_options: dict | None = None,
                cache_dir: str | os.PathLike | None = None, **remote_options: Any) -> Labels:
    """Open a label file, a manifest (``*.json``) or a directory of shards (its manifest.json if present).

    ``max_open``: shards kept open at a time; ``mmap``, ``verify`` and ``max_sequence_positions``: as for
    :class:`LabelFile`, applied to every shard. ``path`` may be a URL (``s3://bucket/labels/``, any fsspec
    URL; needs the ``[remote]`` extra): ``storage_options`` go to fsspec, ``cache_dir`` keeps fetched bytes
    locally, and ``remote_options`` tune the reads (see :class:`~sparselabels.io.remote.RemoteOptions`)."""
    if is_url(path):
        from sparselabels.io.remote_store import open_remote_labels

        return open_remote_labels(path, verify=verify, max_open=max_open, max_sequence_positions=max_sequence_positions,
                                  storage_options=storage_options, cache_dir=cache_dir, **remote_options)
    if storage_options is not None or cache_dir is not None or remote_options:
        given = sorted([*remote_options, *(["storage_options"] if storage_options is not None else []),
                        *(["cache_dir"] if cache_dir is not None else [])])
        raise InputError(f"{given} apply to URLs (s3://..., gs://...), not to the local path {os.fspath(path)!r}")
    path = Path(path)
    shard_options = {"mmap": mmap, "verify": verify, "max_open": max_open,
                     "max_sequence_positions": max_sequence_positions}
    if path.is_dir():
        manifest = path / MANIFEST_NAME
        if manifest.is_file():
            return LabelShards.from_manifest(manifest, **shard_options)
        return LabelShards.from_files(shard_files(path), **shard_options)
    if path.suffix == ".json":
        return LabelShards.from_manifest(path, **shard_options)
    return LabelFile(path, mmap=mmap, verify=verify, max_sequence_positions=max_sequence_positions)

"""Manifests: the JSON file that describes a shard set, and what its shards must share.

A manifest lists shard files by path *relative to the manifest's directory* (absolute paths and ``..`` are
refused), with each shard's size, counts and footer checksum, so a stale or swapped shard is caught when it
is opened. Reading one checks its structure, its types, the confinement of its paths and that its counts fit
the sizes it claims, before any shard is opened.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from sparselabels.errors import CompatibilityError, FormatError, InputError, reworded
from sparselabels.format.metadata import COMPATIBILITY_KEYS, check_common_metadata
from sparselabels.io.reader import LabelFile

MANIFEST_FORMAT = "sparselabels-manifest"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 256 << 20
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


def _is_int(value: Any) -> bool:
    """A JSON integer: true/false (ints to Python) and floats such as 1.0 are not."""
    return isinstance(value, int) and not isinstance(value, bool)


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
    # as label files are opened: O_NONBLOCK so that a FIFO cannot block the open, and only a regular file is read
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FormatError(f"{where}: not a regular file", path=os.fspath(path))
        if info.st_size > MAX_MANIFEST_BYTES:
            raise FormatError(f"{where}: {info.st_size} bytes, more than the limit of {MAX_MANIFEST_BYTES}",
                              path=os.fspath(path))
        data = f.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:  # grew since the look
        raise FormatError(f"{where}: more than the limit of {MAX_MANIFEST_BYTES} bytes", path=os.fspath(path))
    return parse_manifest(data, where, path=os.fspath(path))


def parse_manifest(data: bytes, where: str, *, path: str | None = None) -> dict:
    """Check a manifest's bytes (at most MAX_MANIFEST_BYTES, read by the caller) as :func:`read_manifest` does;
    ``path`` (the manifest's path or URL) becomes the ``path`` of a FormatError."""
    try:
        return _parse_manifest(data, where)
    except FormatError as exc:
        exc.at(path=path)
        raise


def _parse_manifest(data: bytes, where: str) -> dict:
    # a manifest needs one map per shard and a few more: 64 MB of "{}," would decode to 1.7 GB of dicts
    if data.count(b"{") + data.count(b"[") > len(data) // 32 + 64:
        raise FormatError(f"{where}: more maps and arrays than a manifest's shard entries need")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise FormatError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != MANIFEST_FORMAT:
        raise FormatError(f"{where}: not a sparselabels manifest (format must be {MANIFEST_FORMAT!r})")
    if not _is_int(body.get("manifest_version")) or body["manifest_version"] != MANIFEST_VERSION:
        raise FormatError(f"{where}: manifest_version {body.get('manifest_version')!r} is not supported",
                          field="manifest_version")
    shards = body.get("shards")
    if not isinstance(shards, list) or not shards:
        raise FormatError(f"{where}: 'shards' must be a non-empty list")
    if not isinstance(body.get("metadata"), dict):
        raise FormatError(f"{where}: 'metadata' must be a map")
    try:  # what readers of a shard set use without opening a shard (vocab_size, value_kind, rounds, ...)
        check_common_metadata(body["metadata"])
    except FormatError as exc:
        raise reworded(exc, f"{where}: {exc}") from None
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict):
            raise FormatError(f"{where}: shard {i} is not a map")
        for key, typ in _SHARD_FIELDS.items():
            value = entry.get(key)
            if not isinstance(value, typ) or isinstance(value, bool) or (typ is int and not 0 <= value < 1 << 63):
                raise FormatError(f"{where}: shard {i}: field {key!r} is missing or invalid ({value!r})", field=key)
        # resolved lexically as spec §2 says ("./a.slbl", "sub//b.slbl"), so a URL's listing finds what a disk does
        entry["path"] = PurePosixPath(_confined(entry["path"], f"{where}: shard {i}")).as_posix()
        # what a file of that size can hold (>= 64 bytes of index and entries per sequence; <= 20 positions or
        # labels per byte in any codec), so a manifest cannot make len() and the samplers built on it huge
        if entry["num_sequences"] * 64 > entry["bytes"] or max(entry["num_positions"], entry["num_labels"]) > (
                20 * entry["bytes"]):
            raise FormatError(f"{where}: shard {i}: counts {entry['num_sequences']}, {entry['num_positions']}, "
                              f"{entry['num_labels']} are more than a {entry['bytes']}-byte file holds")
    for key in ("num_sequences", "num_positions", "num_labels"):
        if not _is_int(body.get(key)) or body[key] != sum(e[key] for e in shards):
            raise FormatError(f"{where}: {key} does not equal the sum over its shards", field=key)
        if body[key] >= 1 << 63:  # the shard set's int64 prefix sums must not wrap
            raise FormatError(f"{where}: {key} {body[key]} is out of range (>= 2**63)", field=key)
    return body

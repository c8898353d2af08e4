"""Opening a label store at a URL: one file, a manifest, or a "directory" (prefix) of shards, as locally.

A manifest is read once (bounded, checked as locally) and its shards are found by one listing of its prefix
(sizes compared with the manifest's); a prefix without a manifest is listed and its shards checked by the same
rules as a local directory (no unfinished ``.partial`` file, complete labeling runs). Shards open lazily, each
with its footer and index fetched once; a batch touching several unopened shards opens them concurrently.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sparselabels.errors import FormatError
from sparselabels.io.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, manifest_body, parse_manifest
from sparselabels.io.reader import DEFAULT_MAX_SEQUENCE_POSITIONS, LabelFile, Labels
from sparselabels.io.remote import RemoteOptions, filesystem, url_join, url_parent
from sparselabels.io.shards import DEFAULT_MAX_OPEN, LabelShards, shard_names

_OPEN_THREADS = 16


class RemoteShards(LabelShards):
    """A shard set whose shards are objects under ``root_url`` (pickles with its URL and options)."""

    def __init__(self, shards: list[dict], *, root_url: str, remote: RemoteOptions, **kwargs: Any) -> None:
        self._root_url = root_url.rstrip("/")
        self._remote = remote
        super().__init__(shards, root=None, mmap=False, **kwargs)  # type: ignore[arg-type]

    def _shard_location(self, k: int) -> str:
        return url_join(self._root_url, self._entries[k]["path"])

    def _new_file(self, location, verify: str) -> LabelFile:
        return LabelFile(location, verify=verify, max_sequence_positions=self._max_sequence_positions,
                         remote=self._remote)

    def prefetch(self, indices) -> None:
        groups = self._by_shard(indices)
        with self._lock:
            closed = [k for k in groups if k not in self._open]
        if len(closed) > 1:  # each open is a few round trips: overlap them
            with ThreadPoolExecutor(min(len(closed), _OPEN_THREADS)) as pool:
                list(pool.map(self.shard, closed))
        for k, local in groups.items():
            self.shard(k).prefetch(local)

    def remote_stats(self) -> dict[str, int]:
        """Requests, bytes fetched and cache hits of this process's reads of the store."""
        return dict(self._remote.runtime().stats)

    def __repr__(self) -> str:
        return f"RemoteShards({self._source or self._root_url!r}, shards={self.num_shards}, sequences={len(self)})"


def _listing(fs, path: str, *, recursive: bool) -> dict[str, dict]:
    """Object path -> info under ``path`` (fresh: fsspec's listing cache is dropped first)."""
    fs.invalidate_cache(path)
    found = fs.find(path, detail=True) if recursive else {e["name"]: e for e in fs.ls(path, detail=True)}
    return {name.rstrip("/"): info for name, info in found.items()}


def open_remote_labels(url: str, *, verify: str = "index", max_open: int = DEFAULT_MAX_OPEN,
                       max_sequence_positions: int = DEFAULT_MAX_SEQUENCE_POSITIONS,
                       storage_options: dict | None = None, cache_dir: str | os.PathLike | None = None,
                       **remote_options: Any) -> Labels:
    """What :func:`~sparselabels.open_labels` returns for a URL."""
    options = RemoteOptions(storage_options=dict(storage_options or {}), cache_dir=cache_dir, **remote_options)
    fs, path = filesystem(url, options.storage_options)
    shard_options = {"verify": verify, "max_open": max_open, "max_sequence_positions": max_sequence_positions}
    if url.endswith(".json"):
        return _from_manifest(url, fs, path, options, shard_options)
    fs.invalidate_cache(path)
    try:
        kind = fs.info(path).get("type")
    except FileNotFoundError:
        raise FileNotFoundError(f"{url!r}: no such object or prefix") from None
    if kind != "directory":
        return LabelFile(url, verify=verify, max_sequence_positions=max_sequence_positions, remote=options)
    listing = _listing(fs, path, recursive=False)
    names = {name.rsplit("/", 1)[-1]: info for name, info in listing.items()}
    if MANIFEST_NAME in names and names[MANIFEST_NAME].get("type") == "file":
        return _from_manifest(url_join(url, MANIFEST_NAME), fs, path.rstrip("/") + "/" + MANIFEST_NAME, options,
                              shard_options)
    files = {n for n, info in names.items() if info.get("type") == "file"}
    return _from_listing(url, shard_names(names, files, url), options, shard_options)


def _from_manifest(url: str, fs, path: str, options: RemoteOptions, shard_options: dict) -> RemoteShards:
    where = f"manifest {url!r}"
    fs.invalidate_cache(path)
    try:
        size = fs.size(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: no such object") from None
    if size > MAX_MANIFEST_BYTES:
        raise FormatError(f"{where}: {size} bytes, more than the limit of {MAX_MANIFEST_BYTES}", path=url)
    body = parse_manifest(fs.cat_file(path, start=0, end=size), where, path=url)
    root_url, root = url_parent(url), path.rsplit("/", 1)[0]
    found = _listing(fs, root, recursive=True)
    for k, entry in enumerate(body["shards"]):  # one listing: every shard is there, with the manifest's size
        shard_url, info = url_join(root_url, entry["path"]), found.get(root + "/" + entry["path"])
        if info is None or info.get("type", "file") != "file":
            raise FormatError(f"shard {k} ({shard_url!r}): file is missing", path=shard_url)
        if int(info["size"]) != entry["bytes"]:
            raise FormatError(f"shard {k} ({shard_url!r}): bytes is {info['size']}, the manifest says "
                              f"{entry['bytes']}; the shard changed", path=shard_url, field="bytes")
    return RemoteShards(body["shards"], root_url=root_url, remote=options, metadata=body["metadata"], source=url,
                        **shard_options)


def _from_listing(url: str, names: list[str], options: RemoteOptions, shard_options: dict) -> RemoteShards:
    """Open every shard of a prefix now (concurrently) and check they agree, as a local directory is."""
    urls = [url_join(url, n) for n in names]

    def open_one(u: str) -> LabelFile:
        return LabelFile(u, verify=shard_options["verify"], remote=options,
                         max_sequence_positions=shard_options["max_sequence_positions"])

    opened: dict[int, LabelFile] = {}
    try:
        with ThreadPoolExecutor(min(len(urls), _OPEN_THREADS)) as pool:
            for i, f in enumerate(pool.map(open_one, urls)):
                opened[i] = f
        body = manifest_body((n, u, lambda f=opened[i]: contextlib.nullcontext(f))
                             for i, (n, u) in enumerate(zip(names, urls, strict=True)))
        for i in list(opened)[shard_options["max_open"]:]:
            opened.pop(i).close()
    except BaseException:
        for f in opened.values():
            f.close()
        raise
    shards = RemoteShards(body["shards"], root_url=url, remote=options, metadata=body["metadata"], source=url,
                          opened=opened, **shard_options)
    shards._verified.update(range(len(urls)))
    return shards


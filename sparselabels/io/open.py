"""``open_labels``: one entry point for a label file, a manifest or a directory of shards, local or at a URL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sparselabels.errors import InputError
from sparselabels.io.manifest import MANIFEST_NAME
from sparselabels.io.reader import DEFAULT_MAX_SEQUENCE_POSITIONS, LabelFile, Labels
from sparselabels.io.remote import is_url
from sparselabels.io.remote_store import open_remote_labels
from sparselabels.io.shards import DEFAULT_MAX_OPEN, LabelShards, shard_files


def refuse_remote_options(path: str | os.PathLike, given: list[str]) -> None:
    """InputError naming the options ``given`` that only a URL takes, for the local ``path``."""
    if given:
        raise InputError(f"{sorted(given)} apply to URLs (s3://..., gs://...), not to the local path "
                         f"{os.fspath(path)!r}")


def open_labels(path: str | os.PathLike, *, mmap: bool = True, verify: str = "index", max_open: int = DEFAULT_MAX_OPEN,
                max_sequence_positions: int = DEFAULT_MAX_SEQUENCE_POSITIONS, storage_options: dict | None = None,
                cache_dir: str | os.PathLike | None = None, **remote_options: Any) -> Labels:
    """Open a label file, a manifest (``*.json``) or a directory of shards (its manifest.json if present).

    ``max_open``: shards kept open at a time; ``mmap``, ``verify`` and ``max_sequence_positions``: as for
    :class:`LabelFile`, applied to every shard. ``path`` may be a URL (``s3://bucket/labels/``, any fsspec
    URL; needs the ``[remote]`` extra): ``storage_options`` go to fsspec, ``cache_dir`` keeps fetched bytes
    locally, and ``remote_options`` tune the reads (see :class:`~sparselabels.io.remote.RemoteOptions`)."""
    if is_url(path):
        return open_remote_labels(path, verify=verify, max_open=max_open, max_sequence_positions=max_sequence_positions,
                                  storage_options=storage_options, cache_dir=cache_dir, **remote_options)
    refuse_remote_options(path, [*remote_options, *(["storage_options"] if storage_options is not None else []),
                                 *(["cache_dir"] if cache_dir is not None else [])])
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

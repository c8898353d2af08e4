"""``open_labels``: one entry point for a label file, a manifest or a directory of shards."""

from __future__ import annotations

import os
from pathlib import Path

from sparselabels.io.manifest import MANIFEST_NAME
from sparselabels.io.reader import DEFAULT_MAX_SEQUENCE_POSITIONS, LabelFile, Labels
from sparselabels.io.shards import DEFAULT_MAX_OPEN, LabelShards, shard_files


def open_labels(path: str | os.PathLike, *, mmap: bool = True, verify: str = "index", max_open: int = DEFAULT_MAX_OPEN,
                max_sequence_positions: int = DEFAULT_MAX_SEQUENCE_POSITIONS) -> Labels:
    """Open a label file, a manifest (``*.json``) or a directory of shards (its manifest.json if present).

    ``max_open``: shards kept open at a time; ``mmap``, ``verify`` and ``max_sequence_positions``: as for
    :class:`LabelFile`, applied to every shard."""
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

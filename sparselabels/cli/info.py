"""``sparselabels info FILE``: what a label file (or shard set) holds and what it costs per position."""

from __future__ import annotations

import argparse
import json
import os

from sparselabels.io.open import open_labels
from sparselabels.io.reader import LabelFile


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="header, metadata, counts and bytes/position of a file or shard set")
    p.add_argument("path", help="label file, manifest (.json) or shard directory; or a URL (s3://...)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def describe(path: str) -> dict:
    """The facts ``info`` prints, as a dict."""
    with open_labels(path) as labels:
        # each shard's facts, not the shards: a set of thousands keeps at most max_open of them open
        shards = [] if isinstance(labels, LabelFile) else [_shard_facts(labels.shard(k))
                                                            for k in range(labels.num_shards)]
        total_bytes = labels.file_size if isinstance(labels, LabelFile) else sum(s["bytes"] for s in shards)
        positions = labels.num_positions
        out = {
            "path": path,
            "kind": "file" if isinstance(labels, LabelFile) else "shards",
            "sequences": len(labels),
            "positions": positions,
            "labels": labels.num_labels,
            "bytes": total_bytes,
            "bytes_per_position": total_bytes / positions if positions else None,
            "labels_per_position": labels.num_labels / positions if positions else None,
            "metadata": labels.metadata,
        }
        if isinstance(labels, LabelFile):
            hdr = labels.header
            out.update({
                "format_version": f"{hdr.version_major}.{hdr.version_minor}",
                "codec": labels.codec.name,
                "chunks": labels.num_chunks,
                "fingerprints": labels.fingerprints is not None,
            })
        else:
            out["shards"] = shards
        return out


def _shard_facts(f: LabelFile) -> dict:
    return {"path": os.fspath(f.path), "sequences": len(f), "positions": f.num_positions, "bytes": f.file_size,
            "codec": f.codec.name}


def _jsonable(value):
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    info = _jsonable(describe(args.path))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    meta = info.pop("metadata")
    shards = info.pop("shards", None)
    for key, value in info.items():
        if isinstance(value, float):
            value = f"{value:.3f}"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        print(f"{key:>20}: {value}")
    print(f"{'metadata':>20}:")
    for key, value in meta.items():
        print(f"{key:>24}  {value!r}")
    for shard in shards or []:
        print(f"  shard {shard['path']}: {shard['sequences']:,} sequences, {shard['positions']:,} positions, "
              f"{shard['bytes']:,} bytes, codec {shard['codec']}")
    return 0

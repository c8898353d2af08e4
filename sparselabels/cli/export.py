"""``sparselabels export LABELS OUT.h5``: labels to HDF5 (ids, counts or probs, indptr, sequence offsets)."""

from __future__ import annotations

import argparse

_DESCRIPTION = """Write labels (a file, a manifest or a shard directory) to HDF5: datasets ids (uint32), counts (uint8)
or probs (float16), indptr (int64, per position), sequence_offsets (int64), fingerprints (uint64, when
stored); the metadata as attributes and as JSON in the metadata_json attribute."""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="write labels (file, manifest or shard directory) to HDF5 for other tools",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("labels", help="label file, manifest (.json) or shard directory")
    p.add_argument("out", help="output HDF5 file")
    p.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none", help="HDF5 filter")
    p.add_argument("--level", type=int, default=4, help="gzip level 0..9 (default 4)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return p


def run(args: argparse.Namespace) -> int:
    from sparselabels.pipeline.export import export_hdf5

    out = export_hdf5(args.labels, args.out, compression=None if args.compression == "none" else args.compression,
                      compression_level=args.level, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
